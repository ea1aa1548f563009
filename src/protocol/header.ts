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

export interface HeaderFields {
  msgId: number;
  cmd: number;
  msgSize: number;
  flags: number;
  errorNo: number;
}

export function isReply(flags: number): boolean {
  return (flags & HeaderFlag.TYPE_MASK) === HeaderFlag.TYPE_REPLY;
}
export function isCommand(flags: number): boolean {
  return (flags & HeaderFlag.TYPE_MASK) === HeaderFlag.TYPE_COMMAND;
}

/** Writes a header into `buf` at `at` (no allocation). */
export function writeHeader(
  buf: Buffer,
  msgId: number,
  cmd: number,
  msgSize: number,
  flags: number,
  errorNo: number,
  at = 0,
): void {
  buf.writeUInt16LE(msgId & 0xffff, at);
  buf.writeUInt16LE(cmd & 0xffff, at + 2);
  buf.writeUInt32LE(msgSize >>> 0, at + 4);
  buf.writeUInt32LE(flags >>> 0, at + 8);
  buf.writeUInt32LE(errorNo >>> 0, at + 12);
}

export function encodeHeader(h: HeaderFields): Buffer {
  const b = Buffer.allocUnsafe(HEADER_SIZE);
  writeHeader(b, h.msgId, h.cmd, h.msgSize, h.flags, h.errorNo);
  return b;
}
