import { Errno } from '../constants.js';
import { VfuError } from '../errors.js';

/** Encoder/decoder pair for one message body (the bytes after the header). */
export interface Codec<T> {
  decode(payload: Buffer): T;
  encode(value: T): Buffer;
}

/** Decode failure: always EINVAL on the wire. */
export function malformed(what: string): VfuError {
  return new VfuError(Errno.EINVAL, what);
}

export function need(payload: Buffer, n: number, what: string): void {
  if (payload.length < n) throw malformed(`${what}: ${payload.length} bytes, need ${n}`);
}

/** Bytes after `n`, copied (so decoded messages never alias socket buffers). */
export function tail(payload: Buffer, n: number): Buffer {
  return Buffer.from(payload.subarray(n));
}

export function concat(parts: Buffer[]): Buffer {
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
}

/** A body with no defined fields; stray bytes are kept so they round-trip. */
export interface EmptyBody {
  extra?: Buffer;
}
export const emptyBody: Codec<EmptyBody> = {
  decode: (p) => (p.length ? { extra: Buffer.from(p) } : {}),
  encode: (v) => (v.extra ? Buffer.from(v.extra) : Buffer.alloc(0)),
};

/**
 * A fixed struct followed by a variable tail of bytes kept under `key`
 * (`data` for message data, `extra` for bytes the format does not describe).
 */
export function withTail<T extends object, K extends string>(
  s: { size: number; read(b: Buffer, at?: number): T; encode(v: T): Buffer },
  what: string,
  key: K,
): Codec<T & { [P in K]?: Buffer }> {
  return {
    decode(p) {
      need(p, s.size, what);
      const v = s.read(p) as unknown as Record<string, unknown>;
      if (p.length > s.size) v[key] = tail(p, s.size);
      return v as T & { [P in K]?: Buffer };
    },
    encode(v) {
      const head = s.encode(v);
      const t = (v as Record<string, unknown>)[key] as Buffer | undefined;
      return t ? Buffer.concat([head, t]) : head;
    },
  };
}
