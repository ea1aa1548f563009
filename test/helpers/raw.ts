// A raw vfio-user client for tests that need bytes the real client would
// never send: it negotiates, then sends whatever it is given and collects
// the server's messages (copied) in arrival order.
import { native } from '../../src/native/index.js';
import { Command, HEADER_SIZE } from '../../src/protocol/constants.js';
import { writeHeader } from '../../src/protocol/header.js';
import { version } from '../../src/protocol/messages/version.js';
import { NativeEndpoint } from '../../src/transport/native-endpoint.js';
import { FrameQueue } from './endpoints.js';

export interface RawSession {
  ep: NativeEndpoint;
  q: FrameQueue;
  /** Sends one message (header built here unless `msgSize` overrides its size). */
  send(cmd: number, payload: Buffer, opts?: { id?: number; flags?: number; fds?: number[]; msgSize?: number }): number;
  close(): void;
}

export async function rawSession(path: string, caps: object = { max_msg_fds: 16 }): Promise<RawSession> {
  const fd = native!.connect(path);
  if (fd < 0) throw new Error(`connect ${path}: ${-fd}`);
  const ep = new NativeEndpoint(fd, { maxMessageSize: 256 * 1024 * 1024, maxFds: 253 });
  const q = new FrameQueue(ep);
  let nextId = 1;
  const send: RawSession['send'] = (cmd, payload, opts = {}) => {
    const id = opts.id ?? nextId++;
    const h = Buffer.alloc(HEADER_SIZE);
    writeHeader(h, id, cmd, opts.msgSize ?? HEADER_SIZE + payload.length, opts.flags ?? 0, 0);
    ep.send(h, payload.length ? payload : null, opts.fds ?? null);
    return id;
  };
  send(Command.VERSION, version.encode({ major: 0, minor: 2, json: JSON.stringify({ capabilities: caps }), nul: true }));
  const v = await q.next();
  for (const x of v.fds) native!.close(x);
  if (v.flags & 0x20) throw new Error(`VERSION refused: errno ${v.errorNo}`);
  return { ep, q, send, close: () => ep.close() };
}
