// Socket security: the listening socket is created mode 0600 (or the mode
// asked for) by its owner, whatever the umask, under both transports; a
// second client while one is attached is refused cleanly (EBUSY, its
// descriptors closed, a silent one dropped after a second), never disturbing
// the first, and leaves nothing behind.
import { strict as assert } from 'node:assert';
import { lstatSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { createSample } from '../src/devices/sample.js';
import { native } from '../src/native/index.js';
import { Command, Errno, HeaderFlag, PciRegion } from '../src/protocol/constants.js';
import { version } from '../src/protocol/messages/version.js';
import { VfioUserServer } from '../src/server/server.js';
import { NativeEndpoint } from '../src/transport/native-endpoint.js';
import { FrameQueue } from './helpers/endpoints.js';
import { fdCount, once, rejectsWith, serve, tempDir, until } from './helpers/server.js';

const n = native!;

describe('the socket file', () => {
  for (const transport of ['native', 'net'] as const) {
    test(`${transport}: mode 0600 and our uid even with umask 0, or the mode asked for`, async () => {
      const t = tempDir();
      const old = process.umask(0);
      try {
        for (const [mode, want] of [
          [undefined, 0o600],
          [0o660, 0o660],
        ] as const) {
          const dev = createSample();
          const path = join(t.dir, `s-${want.toString(8)}.sock`);
          const srv = await VfioUserServer.listen(dev.device, path, { transport, ...(mode !== undefined ? { mode } : {}) });
          const st = lstatSync(path);
          assert.ok(st.isSocket());
          assert.equal(st.mode & 0o777, want, `mode ${(st.mode & 0o777).toString(8)}`);
          assert.equal(st.uid, process.getuid!());
          await srv.close();
          assert.throws(() => lstatSync(path), { code: 'ENOENT' }, 'removed on close');
        }
      } finally {
        process.umask(old);
        t.cleanup();
      }
    });
  }
});

describe('a second client while one is attached', () => {
  function rawConnect(path: string): { ep: NativeEndpoint; q: FrameQueue } {
    const fd = n.connect(path);
    assert.ok(fd >= 0);
    const ep = new NativeEndpoint(fd, { maxMessageSize: 1 << 20, maxFds: 16 });
    return { ep, q: new FrameQueue(ep) };
  }

  test('is refused with EBUSY, its descriptors closed, the first client untouched; then served once the first leaves', async () => {
    const dev = createSample();
    const srv = await serve(dev.device);
    const first = await srv.connect();
    await first.regionWrite(PciRegion.BAR1, 0, Buffer.from('first'));
    const fds0 = fdCount();
    const second = rawConnect(srv.path);
    const efd = n.eventfd(0, 1);
    const body = version.encode({ major: 0, minor: 2, json: '{"capabilities":{}}', nul: true });
    const h = Buffer.alloc(16);
    h.writeUInt16LE(7, 0);
    h.writeUInt16LE(Command.VERSION, 2);
    h.writeUInt32LE(16 + body.length, 4);
    second.ep.send(h, body, [efd]);
    await second.ep.whenDrained();
    n.close(efd);
    const r = await second.q.next();
    assert.deepEqual([r.msgId, r.flags, r.errorNo], [7, HeaderFlag.TYPE_REPLY | HeaderFlag.ERROR, Errno.EBUSY]);
    assert.equal(await second.q.whenClosed(), null, 'then the server hangs up');
    await until(() => fdCount() === fds0, 2000);
    assert.equal((await first.regionRead(PciRegion.BAR1, 0, 5)).toString(), 'first');
    first.close();
    await once(srv.server, 'disconnected');
    const third = await srv.connect();
    assert.equal((await third.regionRead(PciRegion.BAR1, 0, 5)).toString(), 'first');
    await srv.close();
  });

  test('a silent second client is dropped after a second; a crowd of them leaves nothing behind', async () => {
    const dev = createSample();
    const srv = await serve(dev.device);
    const first = await srv.connect();
    const fds0 = fdCount();
    const silent = rawConnect(srv.path);
    const t0 = Date.now();
    assert.equal(await silent.q.whenClosed(3000), null);
    const waited = Date.now() - t0;
    assert.ok(waited >= 900 && waited < 2500, `dropped after ${waited} ms`);
    let refused = 0;
    srv.server.on('refused', () => refused++);
    const crowd = await Promise.allSettled(Array.from({ length: 20 }, () => srv.connect()));
    assert.ok(crowd.every((c) => c.status === 'rejected' && (c.reason as { errno?: number }).errno === Errno.EBUSY));
    assert.equal(refused, 20);
    assert.equal((await first.deviceInfo()).numIrqs, 5);
    await until(() => fdCount() === fds0, 3000);
    await rejectsWith(srv.connect(), Errno.EBUSY);
    await srv.close();
  });
});
