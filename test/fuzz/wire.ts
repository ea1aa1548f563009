// A model of how the server's framer cuts a byte stream into messages, used
// to know which replies a fuzz case must get and how many bytes the server
// still expects when the case stops (a truncated message, or the body of a
// refused oversize one it is skipping).
import { HEADER_SIZE, HeaderFlag } from '../../src/protocol/constants.js';

export interface WireMessage {
  msgId: number;
  cmd: number;
  msgSize: number;
  flags: number;
  /** Refused by size (below 16 or above the limit). */
  rejected: boolean;
}

export interface WireState {
  messages: WireMessage[];
  /** Bytes of an unfinished header at the end (0..15). */
  partialHeader: number;
  /** Bytes still owed to complete the last message (or its skipped body). */
  owed: number;
}

export function parseWire(stream: Buffer, maxMessageSize: number): WireState {
  const messages: WireMessage[] = [];
  let at = 0;
  while (at < stream.length) {
    if (stream.length - at < HEADER_SIZE) return { messages, partialHeader: stream.length - at, owed: HEADER_SIZE - (stream.length - at) };
    const msgId = stream.readUInt16LE(at);
    const cmd = stream.readUInt16LE(at + 2);
    const msgSize = stream.readUInt32LE(at + 4);
    const flags = stream.readUInt32LE(at + 8);
    if (msgSize < HEADER_SIZE) {
      messages.push({ msgId, cmd, msgSize, flags, rejected: true });
      at += HEADER_SIZE;
      continue;
    }
    const rejected = msgSize > maxMessageSize;
    messages.push({ msgId, cmd, msgSize, flags, rejected });
    if (stream.length - at < msgSize) return { messages, partialHeader: 0, owed: msgSize - (stream.length - at) };
    at += msgSize;
  }
  return { messages, partialHeader: 0, owed: 0 };
}

/** Whether the server must answer this message (a command without No_reply). */
export function expectsReply(m: WireMessage): boolean {
  return (m.flags & HeaderFlag.TYPE_MASK) !== HeaderFlag.TYPE_REPLY && (m.flags & HeaderFlag.NO_REPLY) === 0;
}

/** A command the server may have applied without telling us (No_reply). */
export function silentCommand(m: WireMessage): boolean {
  return (m.flags & HeaderFlag.TYPE_MASK) === HeaderFlag.TYPE_COMMAND && (m.flags & HeaderFlag.NO_REPLY) !== 0 && !m.rejected;
}
