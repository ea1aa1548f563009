import { HEADER_SIZE, HeaderFlag } from './constants.js';
import { defineStruct } from './struct.js';

/** The 16-byte header in front of every message. */
export const Header = defineStruct('vfio_user_header', {
  msgId: 'u16',
  cmd: 'u16',
  msgSize: 'u32',
  flags: 'u32',
  errorNo: 'u32',
});

/** The 16-byte vfio-user message header, decoded. */
export interface HeaderFields {
  /** Message id (a reply carries its request's). */
  msgId: number;
  /** Command (Command). */
  cmd: number;
  /** Bytes of the whole message, header included. */
  msgSize: number;
  /** HeaderFlag bits (type, no-reply, error). */
  flags: number;
  /** The errno of an error reply. */
  errorNo: number;
}

/** Whether a header's flags mark a reply. */
export function isReply(flags: number): boolean {
  return (flags & HeaderFlag.TYPE_MASK) === HeaderFlag.TYPE_REPLY;
}
/** Whether a header's flags mark a command (a request). */
export function isCommand(flags: number): boolean {
  return (flags & HeaderFlag.TYPE_MASK) === HeaderFlag.TYPE_COMMAND;
}

/**
 * Writes a header into `buf` at `at` (no allocation).  Byte stores rather
 * than Buffer#writeUInt*LE: this runs for every message, and the methods'
 * argument checks (and calls, where the JIT does not inline them) cost more
 * than the stores; the range check is done once here instead.
 */
export function writeHeader(
  buf: Buffer,
  msgId: number,
  cmd: number,
  msgSize: number,
  flags: number,
  errorNo: number,
  at = 0,
): void {
  if (at < 0 || at + HEADER_SIZE > buf.length) throw new RangeError(`header at ${at} outside a ${buf.length}-byte buffer`);
  buf[at] = msgId;
  buf[at + 1] = msgId >>> 8;
  buf[at + 2] = cmd;
  buf[at + 3] = cmd >>> 8;
  putU32(buf, at + 4, msgSize);
  putU32(buf, at + 8, flags);
  putU32(buf, at + 12, errorNo);
}

/** Little-endian u32 store (Uint8Array stores truncate to the low byte). */
function putU32(b: Buffer, at: number, v: number): void {
  b[at] = v;
  b[at + 1] = v >>> 8;
  b[at + 2] = v >>> 16;
  b[at + 3] = v >>> 24;
}

export function encodeHeader(h: HeaderFields): Buffer {
  const b = Buffer.allocUnsafe(HEADER_SIZE);
  writeHeader(b, h.msgId, h.cmd, h.msgSize, h.flags, h.errorNo);
  return b;
}
