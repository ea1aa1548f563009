import { Errno, errnoName } from './constants.js';

/**
 * An error that carries the errno to put on the wire.  Device callbacks throw
 * it (or any Error with a numeric `errno`) to choose the reply's errno.
 */
export class VfuError extends Error {
  /** The errno (Errno) to put on the wire. */
  readonly errno: number;
  /** An error with `errno` and, optionally, a message (the errno's name is appended). */
  constructor(errno: number, message?: string) {
    // The errno is named once, even when the message already ends with it
    // (an error wrapping another's message).
    const name = errnoName(errno);
    super(message ? (message.endsWith(`(${name})`) ? message : `${message} (${name})`) : name);
    this.name = 'VfuError';
    this.errno = errno;
  }
}

/** The errno to report for an arbitrary thrown value. */
export function errnoOf(e: unknown, fallback: number = Errno.EIO): number {
  if (e !== null && typeof e === 'object' && 'errno' in e) {
    const n = (e as { errno: unknown }).errno;
    // Node's system errors carry negative errno values.
    if (typeof n === 'number' && Number.isInteger(n) && n !== 0) return Math.min(Math.abs(n), 4095);
  }
  return fallback;
}

/** A VfuError with EINVAL: the reply to a malformed request. */
/** A VfuError with EINVAL. */
export function einval(message: string): VfuError {
  return new VfuError(Errno.EINVAL, message);
}
