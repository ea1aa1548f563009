// The client against a scripted hostile server: the replies the fuzzer
// (test/fuzz/client-harness.ts) found mishandled, one test each.
import { strict as assert } from 'node:assert';
import { describe, test } from 'node:test';
import { VfioUserClient } from '../src/client/client.js';
import { native } from '../src/native/index.js';
import { Command, Errno, HEADER_SIZE, HeaderFlag } from '../src/protocol/constants.js';
import { writeHeader } from '../src/protocol/header.js';
import { version } from '../src/protocol/messages/version.js';
import { NativeEndpoint } from '../src/transport/native-endpoint.js';
import { fdCount as openFdCount, rejectsWith } from './helpers/server.js';

const n = native!;

/** A client on one end of a socket pair, a scripted server on the other. */
async function hostile(answer: (cmd: number, id: number, ep: NativeEndpoint) => void, opts = {}): Promise<{ connect: Promise<VfioUserClient>; server: NativeEndpoint }> {
  const [a, b] = n.socketpair();
  const server = new NativeEndpoint(b, { maxMessageSize: 1 << 20, maxFds: 16 });
  server.onFrame = (f) => {
    for (const fd of f.fds) n.close(fd);
    answer(f.cmd, f.msgId, server);
  };
  const ep = new NativeEndpoint(a, { maxMessageSize: 1 << 20, maxFds: 16 });
  return { connect: VfioUserClient.fromEndpoint(ep, { replyTimeoutMs: 2000, ...opts }), server };
}

function versionReply(id: number, caps: object): Buffer {
  const body = version.encode({ major: 0, minor: 2, json: JSON.stringify({ capabilities: caps }), nul: true });
  const b = Buffer.alloc(HEADER_SIZE + body.length);
  writeHeader(b, id, Command.VERSION, b.length, HeaderFlag.TYPE_REPLY, 0);
  body.copy(b, HEADER_SIZE);
  return b;
}

describe('hostile replies found by the fuzzer', () => {
  test('a twin socket that is not a socket: EPROTO, and the descriptor is closed', async () => {
    const fds0 = openFdCount();
    const memfd = n.memfdCreate('not-a-socket', 4096, true);
    const h = await hostile((_cmd, id, ep) => {
      ep.send(versionReply(id, { max_msg_fds: 16, twin_socket: { supported: true, fd_index: 0 } }), null, [memfd]);
    }, { twinSocket: true });
    await rejectsWith(h.connect, Errno.EPROTO);
    n.close(memfd);
    h.server.close();
    await new Promise((r) => setImmediate(r));
    assert.equal(openFdCount(), fds0);
  });

  test('GET_REGION_IO_FDS answered with garbage and descriptors: EPROTO, the descriptors closed', async () => {
    const h = await hostile((cmd, id, ep) => {
      const body = cmd === Command.VERSION ? version.encode({ major: 0, minor: 2, json: '{"capabilities":{"max_msg_fds":16}}', nul: true }) : Buffer.alloc(5);
      const b = Buffer.alloc(HEADER_SIZE + body.length);
      writeHeader(b, id, cmd, b.length, HeaderFlag.TYPE_REPLY, 0);
      body.copy(b, HEADER_SIZE);
      if (cmd === Command.VERSION) ep.send(b, null, null);
      else {
        const fd = n.eventfd(0, 1);
        ep.send(b, null, [fd]);
        void ep.whenDrained().then(() => n.close(fd));
      }
    });
    const c = await h.connect;
    await new Promise((r) => setImmediate(r));
    const fds0 = openFdCount();
    await rejectsWith(c.regionIoFds(1), Errno.EPROTO);
    await new Promise((r) => setImmediate(r));
    assert.equal(openFdCount(), fds0);
    c.close();
    h.server.close();
  });

  test('a refused negotiation closes the connection', async () => {
    const fds0 = openFdCount();
    const h = await hostile((cmd, id, ep) => {
      const b = Buffer.alloc(HEADER_SIZE);
      writeHeader(b, id, cmd, HEADER_SIZE, HeaderFlag.TYPE_REPLY | HeaderFlag.ERROR, Errno.EBUSY);
      ep.send(b, null, null);
    });
    await rejectsWith(h.connect, Errno.EBUSY);
    h.server.close();
    await new Promise((r) => setImmediate(r));
    assert.equal(openFdCount(), fds0, 'the client closed its end');
  });
});
