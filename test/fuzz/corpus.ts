// The recorded sessions in test/vectors as fuzzing seeds: every message the
// client side sent (commands, and its replies to the server's DMA requests),
// with the kind of each descriptor that came with it.
import { HEADER_SIZE } from '../../src/protocol/constants.js';
import { writeHeader } from '../../src/protocol/header.js';
import { messages, traceFiles } from '../helpers/traces.js';

/** `eventfd-full`: blocking, its counter at 0xfffffffffffffffe (no room for a signal). */
export type FdKind = 'memfd' | 'memfd-unsealed' | 'eventfd' | 'eventfd-blocking' | 'eventfd-full' | 'devnull' | 'socket' | 'dir' | 'tmpfile';

export interface FdSpec {
  kind: FdKind;
  /** File size for memfds and temporary files. */
  size?: number;
}

export interface SeedMessage {
  msgId: number;
  cmd: number;
  flags: number;
  errorNo: number;
  payload: Buffer;
  fds: FdSpec[];
  /** Where it came from (file:seq), for reports. */
  origin: string;
}

function fdFor(description: string): FdSpec {
  if (description.includes('eventfd')) return { kind: 'eventfd' };
  const m = /size=(\d+)/.exec(description);
  return { kind: 'memfd', size: m ? Number(m[1]) : 65536 };
}

let cache: { commands: SeedMessage[]; replies: SeedMessage[] } | null = null;

/** Client-to-server messages of every recorded session (payloads complete). */
export function corpus(): { commands: SeedMessage[]; replies: SeedMessage[] } {
  if (cache) return cache;
  const commands: SeedMessage[] = [];
  const replies: SeedMessage[] = [];
  for (const file of traceFiles()) {
    const name = file.split('/').pop()!;
    for (const m of messages(file)) {
      if (m.dir !== 'c2s' || m.payload_truncated) continue;
      const s: SeedMessage = {
        msgId: m.msg_id,
        cmd: m.cmd,
        flags: m.flags,
        errorNo: m.error_no,
        payload: Buffer.from(m.payload, 'hex'),
        fds: m.fds.map(fdFor),
        origin: `${name}:${m.seq}`,
      };
      (m.type === 'command' ? commands : replies).push(s);
    }
  }
  cache = { commands, replies };
  return cache;
}

/** Header plus payload; `msgSize` overrides the header's size field. */
export function encode(m: { msgId: number; cmd: number; flags: number; errorNo: number; payload: Buffer }, msgSize?: number): Buffer {
  const b = Buffer.allocUnsafe(HEADER_SIZE + m.payload.length);
  writeHeader(b, m.msgId, m.cmd, msgSize ?? HEADER_SIZE + m.payload.length, m.flags, m.errorNo);
  m.payload.copy(b, HEADER_SIZE);
  return b;
}
