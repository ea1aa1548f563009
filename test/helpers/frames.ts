// Building raw vfio-user messages and collecting framer output in tests.
import { HEADER_SIZE } from '../../src/protocol/constants.js';
import { writeHeader } from '../../src/protocol/header.js';
import type { Frame } from '../../src/transport/framer.js';

export interface RawMsg {
  msgId: number;
  cmd: number;
  flags: number;
  errorNo: number;
  payload: Buffer;
  /** Overrides the header's msg_size (invalid sizes); default 16 + payload. */
  msgSize?: number;
}

/** Header plus payload; with msgSize overridden the payload is sent as given. */
export function encodeMsg(m: RawMsg): Buffer {
  const b = Buffer.allocUnsafe(HEADER_SIZE + m.payload.length);
  writeHeader(b, m.msgId, m.cmd, m.msgSize ?? HEADER_SIZE + m.payload.length, m.flags, m.errorNo);
  m.payload.copy(b, HEADER_SIZE);
  return b;
}

/** A copy of a frame that outlives the callback. */
export interface SavedFrame {
  msgId: number;
  cmd: number;
  msgSize: number;
  flags: number;
  errorNo: number;
  payload: Buffer;
  fds: number[];
  rejected?: number;
  fdsTruncated?: boolean;
}

export function saveFrame(f: Frame): SavedFrame {
  const s: SavedFrame = {
    msgId: f.msgId,
    cmd: f.cmd,
    msgSize: f.msgSize,
    flags: f.flags,
    errorNo: f.errorNo,
    payload: Buffer.from(f.payload),
    fds: [...f.fds],
  };
  if (f.rejected !== undefined) s.rejected = f.rejected;
  if (f.fdsTruncated) s.fdsTruncated = true;
  return s;
}

/** Deterministic bytes for payloads (cheap to build and to compare). */
export function pattern(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}
