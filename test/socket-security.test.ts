// Socket security: the listening socket is created mode 0600 (or the mode
// asked for) by its owner, whatever the umask, under both transports, and
// is listed under its own path in /proc/net/unix (what `ss -xl` shows);
// bind and connect errors name the path.  A second client while one is
// attached is refused cleanly (EBUSY with a message that says why, its
// descriptors closed as they arrive, a silent one dropped after a second),
// never disturbing the first, and leaves nothing behind.  A client that
// connects while the previous one is still being cleaned up has its
// messages read only once its session exists, and answered in order.
import { strict as assert } from 'node:assert';
import { lstatSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { createSample } from '../src/devices/sample.js';
import { native } from '../src/native/index.js';
import { Command, Errno, HEADER_SIZE, HeaderFlag, PciRegion } from '../src/protocol/constants.js';
import { writeHeader } from '../src/protocol/header.js';
import { RegionAccessStruct } from '../src/protocol/messages/region.js';
import { VfioUserClient } from '../src/client/client.js';
import { version } from '../src/protocol/messages/version.js';
import { VfioUserServer } from '../src/server/server.js';
import { NativeEndpoint } from '../src/transport/native-endpoint.js';
import { FrameQueue, turns } from './helpers/endpoints.js';
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

function rawConnect(path: string): { ep: NativeEndpoint; q: FrameQueue } {
  const fd = n.connect(path);
  assert.ok(fd >= 0);
  const ep = new NativeEndpoint(fd, { maxMessageSize: 1 << 20, maxFds: 16 });
  return { ep, q: new FrameQueue(ep) };
}

/** Paths of the listening UNIX sockets in /proc/net/unix (flag __SO_ACCEPTCON). */
function listeningPaths(): string[] {
  return readFileSync('/proc/net/unix', 'utf8')
    .split('\n')
    .slice(1)
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f.length >= 8 && (parseInt(f[3]!, 16) & 0x10000) !== 0)
    .map((f) => f[7]!);
}

describe('the socket as the system lists it, and errors about it', () => {
  for (const transport of ['native', 'net'] as const) {
    test(`${transport}: /proc/net/unix (ss -xl) lists the listening socket under its path`, async () => {
      const t = tempDir();
      try {
        const path = join(t.dir, 'listed.sock');
        const srv = await VfioUserServer.listen(createSample().device, path, { transport });
        const mine = listeningPaths().filter((p) => p.startsWith(t.dir));
        assert.deepEqual(mine, [path]);
        await srv.close();
      } finally {
        t.cleanup();
      }
    });

    test(`${transport}: bind and connect errors name the path`, async () => {
      const t = tempDir();
      try {
        const path = join(t.dir, 'no-such-dir', 'x.sock');
        await assert.rejects(VfioUserServer.listen(createSample().device, path, { transport }), (e: Error & { errno?: number }) => {
          assert.ok(e.message.includes(path), e.message);
          // libuv reports a bind in a missing directory as EACCES
          assert.equal(e.errno, transport === 'native' ? Errno.ENOENT : Errno.EACCES);
          return true;
        });
        await assert.rejects(VfioUserClient.connect(path, { transport }), (e: Error & { errno?: number }) => {
          assert.ok(e.message.includes(path), e.message);
          assert.equal(e.errno, Errno.ENOENT);
          return true;
        });
      } finally {
        t.cleanup();
      }
    });
  }
});

describe('a second client while one is attached', () => {
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

  test('our client says what EBUSY means: the server already has a client', async () => {
    const srv = await serve(createSample().device);
    const first = await srv.connect();
    await assert.rejects(srv.connect(), (e: Error & { errno?: number }) => {
      assert.equal(e.errno, Errno.EBUSY);
      assert.match(e.message, new RegExp(`the server at ${srv.path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} already has a client \\(vfio-user servers take one at a time\\)`));
      return true;
    });
    first.close();
    await srv.close();
  });

  test('its descriptors are closed as they arrive, before its first message is complete', async () => {
    const dev = createSample();
    // a refused client that says nothing is kept for a minute: only closing
    // the descriptors on arrival lets the probe see them all closed
    const srv = await serve(dev.device, { refusalTimeoutMs: 60_000 });
    const first = await srv.connect();
    const crowd = Array.from({ length: 8 }, () => rawConnect(srv.path));
    const [give, keep] = n.socketpair();
    const probe = new FrameQueue(new NativeEndpoint(keep, { maxMessageSize: 4096, maxFds: 0 }));
    const h = Buffer.alloc(HEADER_SIZE);
    writeHeader(h, 5, Command.VERSION, HEADER_SIZE + 100, HeaderFlag.TYPE_COMMAND, 0);
    for (const c of crowd) {
      c.ep.send(h, Buffer.alloc(10), Array.from({ length: 16 }, () => give)); // 90 bytes short
      await c.ep.whenDrained();
    }
    n.close(give);
    assert.equal(await probe.whenClosed(), null, 'every copy closed');
    for (const c of crowd) assert.equal(c.q.closed, undefined, 'still waiting for the rest of its message');
    for (const c of crowd) {
      c.ep.send(Buffer.alloc(90), null, null);
      const r = await c.q.next();
      assert.deepEqual([r.msgId, r.errorNo], [5, Errno.EBUSY]);
      assert.equal(await c.q.whenClosed(), null);
    }
    assert.equal((await first.deviceInfo()).numIrqs, 5);
    first.close();
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

describe('a client that connects while the previous one is still being cleaned up', () => {
  for (const hook of ['reset', 'quiesce'] as const) {
    test(`slow ${hook} hook: nothing is read before its session exists; its messages are then answered in order`, async () => {
      const dev = createSample();
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      let cleaning = false;
      const slow = async (): Promise<void> => {
        cleaning = true;
        await gate;
      };
      if (hook === 'reset') dev.device.onReset(async (reason) => (reason === 'lost-connection' ? slow() : undefined));
      else dev.device.onQuiesce(() => (cleaning ? undefined : slow()));
      const srv = await serve(dev.device);
      const first = await srv.connect();
      await first.regionWrite(PciRegion.BAR1, 0, Buffer.from('kept'));
      first.close();
      await until(() => cleaning);
      const fds0 = fdCount();
      const next = rawConnect(srv.path);
      const [give, keep] = n.socketpair();
      const probe = new FrameQueue(new NativeEndpoint(keep, { maxMessageSize: 4096, maxFds: 0 }));
      const msg = (id: number, cmd: number, body: Buffer, fds: number[] | null = null): void => {
        const h = Buffer.alloc(HEADER_SIZE);
        writeHeader(h, id, cmd, HEADER_SIZE + body.length, HeaderFlag.TYPE_COMMAND, 0);
        next.ep.send(h, body, fds);
      };
      msg(1, Command.VERSION, version.encode({ major: 0, minor: 2, json: '{"capabilities":{"max_msg_fds":8}}', nul: true }));
      msg(2, Command.DEVICE_GET_INFO, Buffer.from([16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), [give]);
      msg(3, Command.REGION_READ, RegionAccessStruct.encode({ offset: 0n, region: PciRegion.BAR1, count: 4 }));
      await next.ep.whenDrained();
      n.close(give);
      // the server accepted it (its end counts here too) and had turns to read
      await until(() => fdCount() >= fds0 + 2);
      await turns(20);
      assert.equal(next.q.frames.length, 0, 'no reply before the clean-up ends');
      release();
      const [v, info, data] = await next.q.count(3);
      assert.deepEqual([v!.msgId, info!.msgId, data!.msgId], [1, 2, 3]);
      assert.equal(v!.flags & HeaderFlag.ERROR, 0, 'VERSION answered');
      assert.equal(data!.flags & HeaderFlag.ERROR, 0);
      assert.equal(data!.payload.subarray(RegionAccessStruct.size).toString(), 'kept');
      assert.equal(await probe.whenClosed(), null, 'the descriptor it sent was not leaked');
      next.ep.close();
      await srv.close();
    });
  }
});
