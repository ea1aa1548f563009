// Fault injection.  Device callbacks that throw (region access, migration
// transition, readData/writeData, reset, quiesce, DMA map/unmap): each gives
// an error reply with the callback's errno and leaves the connection usable,
// and a client leaving while every callback throws still releases
// everything.  A client lost in the middle of a migration leaves the device
// back in RUNNING with its state intact.  (Process-level faults, SIGKILL
// and a cut TCP stream, are further down.)
import { strict as assert } from 'node:assert';
import { type Socket, connect as connectTcp, createServer } from 'node:net';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { VfioUserClient } from '../src/client/client.js';
import { LocalTarget, MigrationError, migrate } from '../src/client/migrate.js';
import { ChunkType } from '../src/client/tcp-stream.js';
import { createSample, BAR1_SIZE } from '../src/devices/sample.js';
import { native } from '../src/native/index.js';
import { Errno, IrqIndex, MigState, PciRegion } from '../src/protocol/constants.js';
import { DeviceStateLostError } from '../src/migration/controller.js';
import { VfuError } from '../src/protocol/errors.js';
import { type Holdings, type Proc, backTo, cli, holdings, line, root, start, startServer } from './helpers/procs.js';
import { fdCount, once, rejectsWith, serve, tempDir, until } from './helpers/server.js';

const n = native!;

function boom(errno: number, what: string): never {
  throw new VfuError(errno, `injected: ${what}`);
}

describe('device callbacks that throw', () => {
  test('region access: sync throw and async rejection give the errno; the connection goes on', async () => {
    const dev = createSample();
    const srv = await serve(dev.device);
    const c = await srv.connect();
    const access = dev.device.region(PciRegion.BAR1)!.access!;
    const read = access.read!;
    const write = access.write!;
    access.read = () => boom(Errno.EIO, 'read');
    access.write = async () => {
      await new Promise((r) => setTimeout(r, 1));
      boom(Errno.ENOSPC, 'write');
    };
    await rejectsWith(c.regionRead(PciRegion.BAR1, 0, 4), Errno.EIO);
    await rejectsWith(c.regionWrite(PciRegion.BAR1, 0, Buffer.from('x')), Errno.ENOSPC);
    access.read = () => {
      throw new Error('no errno at all');
    };
    await rejectsWith(c.regionRead(PciRegion.BAR1, 0, 4), Errno.EINVAL);
    access.read = read;
    access.write = write;
    await c.regionWrite(PciRegion.BAR1, 0, Buffer.from('fine'));
    assert.equal((await c.regionRead(PciRegion.BAR1, 0, 4)).toString(), 'fine');
    await srv.close();
  });

  test('migration transition, readData and writeData: errno replies, state where the walk stopped, ERROR only when asked', async () => {
    const dev = createSample();
    const mig = dev.device.migration!;
    const cb = mig.callbacks;
    const transition = cb.transition.bind(cb);
    const srv = await serve(dev.device);
    const c = await srv.connect();
    cb.transition = (from, to) => (to === MigState.STOP_COPY ? boom(Errno.EBUSY, 'transition') : transition(from, to));
    // RUNNING -> STOP_COPY walks RUNNING -> STOP -> STOP_COPY: the second arc fails
    await rejectsWith(c.setMigrationState(MigState.STOP_COPY), Errno.EBUSY);
    assert.equal(await c.migrationState(), MigState.STOP);
    cb.transition = transition;
    await c.setMigrationState(MigState.RUNNING);
    cb.transition = () => {
      throw new DeviceStateLostError(Errno.EIO, 'injected: fatal');
    };
    await rejectsWith(c.setMigrationState(MigState.STOP), Errno.EIO);
    assert.equal(await c.migrationState(), MigState.ERROR);
    cb.transition = transition;
    await c.reset(); // the only way out of ERROR
    assert.equal(await c.migrationState(), MigState.RUNNING);

    await c.setMigrationState(MigState.PRE_COPY);
    const readData = cb.readData.bind(cb);
    cb.readData = () => boom(Errno.ENOMEM, 'readData');
    await rejectsWith(c.migDataRead(1024), Errno.ENOMEM);
    cb.readData = readData;
    assert.equal((await c.migDataRead(1024)).length, 1024);
    await c.setMigrationState(MigState.RUNNING);

    await c.setMigrationState(MigState.RESUMING);
    const writeData = cb.writeData.bind(cb);
    cb.writeData = async () => boom(Errno.EBADMSG, 'writeData');
    await rejectsWith(c.migDataWrite(Buffer.alloc(16)), Errno.EBADMSG);
    cb.writeData = writeData;
    await c.setMigrationState(MigState.RUNNING);
    assert.equal((await c.deviceInfo()).numRegions, 9, 'still talking');
    await srv.close();
  });

  test('reset and quiesce: errno replies, and the device is not left quiesced', async () => {
    const dev = createSample();
    let failReset = true;
    let failQuiesce = false;
    dev.device.onReset(() => (failReset ? boom(Errno.EIO, 'reset') : undefined));
    dev.device.onQuiesce(() => (failQuiesce ? boom(Errno.EAGAIN, 'quiesce') : undefined));
    const srv = await serve(dev.device);
    const c = await srv.connect();
    c.memory.add(0x10000, 0x1000);
    await rejectsWith(c.reset(), Errno.EIO);
    await c.dmaMap({ iova: 0x10000, size: 0x1000 });
    dev.device.dma.writeSync(0x10000, Buffer.from('not quiesced')); // EBUSY if the failed reset had left it quiesced
    failReset = false;
    await c.reset();
    failQuiesce = true;
    await rejectsWith(c.dmaUnmap(0x10000, 0x1000), Errno.EAGAIN);
    assert.equal(dev.device.dma.count, 1, 'nothing changed without the quiesce');
    dev.device.dma.writeSync(0x10000, Buffer.from('still usable'));
    failQuiesce = false;
    await c.dmaUnmap(0x10000, 0x1000);
    await srv.close();
  });

  test('a client leaving while every callback throws: everything is released, the next client is served', async () => {
    const dev = createSample();
    const srv = await serve(dev.device);
    await until(() => srv.server.session === null);
    const fds0 = fdCount();
    const maps0 = n.liveMappings();
    const c = await srv.connect();
    c.memory.add(0x10000, 0x4000);
    c.memory.add(0x20000, 0x4000);
    await c.dmaMap({ iova: 0x10000, size: 0x4000 });
    await c.dmaMap({ iova: 0x20000, size: 0x4000 });
    await c.enableInterrupts(IrqIndex.INTX, 1);
    await c.startDirtyLogging(4096);
    await c.setMigrationState(MigState.PRE_COPY);
    dev.device.onQuiesce(() => boom(Errno.EIO, 'quiesce'));
    dev.device.onReset(() => boom(Errno.EIO, 'reset'));
    dev.device.dma.onUnmap = () => boom(Errno.EIO, 'onUnmap');
    const cb = dev.device.migration!.callbacks;
    const transition = cb.transition.bind(cb);
    let failures = 0;
    cb.transition = (from, to) => (failures++ === 0 ? boom(Errno.EIO, 'transition') : transition(from, to));
    const warnings: string[] = [];
    dev.device.on('log', (level: string, m: string) => level === 'warn' && warnings.push(m));
    const gone = once(srv.server, 'disconnected');
    c.close();
    await gone;
    assert.equal(dev.device.dma.count, 0);
    assert.equal(dev.device.irqs.fdCount, 0);
    assert.equal(dev.device.logging.active, false);
    assert.equal(dev.device.migration!.state, MigState.RUNNING, 'the second attempt got back to RUNNING');
    assert.equal(fdCount(), fds0);
    assert.equal(n.liveMappings(), maps0);
    for (const what of ['quiesce', 'transition', 'reset']) assert.ok(warnings.some((w) => w.includes(what)), `${what} failure logged`);
    const next = await srv.connect();
    assert.equal((await next.deviceInfo()).numIrqs, 5);
    await srv.close();
  });
});

describe('a client lost in the middle of a migration', () => {
  for (const state of [MigState.PRE_COPY, MigState.STOP_COPY, MigState.STOP] as const) {
    test(`source in state ${state}: back to RUNNING with its state intact`, async () => {
      const dev = createSample();
      const srv = await serve(dev.device);
      const c = await srv.connect();
      const pattern = Buffer.alloc(BAR1_SIZE);
      for (let i = 0; i < pattern.length; i++) pattern[i] = (i * 13) & 0xff;
      await c.regionWrite(PciRegion.BAR1, 0, pattern);
      await c.setMigrationState(state);
      if (state === MigState.PRE_COPY) await c.migDataRead(4096);
      const gone = once(srv.server, 'disconnected');
      c.close();
      await gone;
      assert.equal(dev.device.migration!.state, MigState.RUNNING);
      const again = await srv.connect();
      assert.equal(await again.migrationState(), MigState.RUNNING);
      assert.ok((await again.regionRead(PciRegion.BAR1, 0, BAR1_SIZE)).equals(pattern), 'BAR1 intact');
      await srv.close();
    });
  }

  test('destination in RESUMING with part of a stream: the data is dropped, the device RUNNING as it was', async () => {
    const dev = createSample();
    const srv = await serve(dev.device);
    const c = await srv.connect();
    await c.regionWrite(PciRegion.BAR1, 0, Buffer.from('destination before'));
    await c.setMigrationState(MigState.RESUMING);
    await c.migDataWrite(Buffer.alloc(5000, 0xee)); // less than a whole image
    const warnings: string[] = [];
    dev.device.on('log', (level: string, m: string) => level === 'warn' && warnings.push(m));
    const gone = once(srv.server, 'disconnected');
    c.close();
    await gone;
    assert.equal(dev.device.migration!.state, MigState.RUNNING);
    assert.ok(warnings.some((w) => w.includes('incomplete device state')), 'the refused restore was logged');
    assert.equal(dev.bar1.subarray(0, 18).toString(), 'destination before');
    await srv.close();
  });
});

// ------------------------------------------------------------ processes

describe('process faults: SIGKILL and a cut migration stream', () => {
  const pattern = Buffer.alloc(BAR1_SIZE);
  for (let i = 0; i < pattern.length; i++) pattern[i] = (i * 31 + 7) & 0xff;

  /** Two `vfu serve sample` processes, the source's BAR1 set to `pattern`. */
  async function servers(): Promise<{ t: ReturnType<typeof tempDir>; src: Proc; dst: Proc; srcPath: string; dstPath: string; srcRest: Holdings; dstRest: Holdings; stop: () => Promise<void> }> {
    const t = tempDir('vfu-faults-');
    const srcPath = join(t.dir, 'src.sock');
    const dstPath = join(t.dir, 'dst.sock');
    const src = await startServer(srcPath);
    const dst = await startServer(dstPath);
    const srcRest = holdings(src.pid);
    const dstRest = holdings(dst.pid);
    const c = await VfioUserClient.connect(srcPath);
    await c.regionWrite(PciRegion.BAR1, 0, pattern);
    c.close();
    // at rest: the server has released this client's resources
    await backTo(src.pid, srcRest);
    const stop = async (): Promise<void> => {
      for (const p of [src, dst]) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGTERM');
      const codes = await Promise.all([src.exited, dst.exited]);
      for (const [code, sig] of codes) assert.ok(code === 0 || sig === 'SIGKILL', `server exit ${code} ${sig}`);
      t.cleanup();
    };
    return { t, src, dst, srcPath, dstPath, srcRest, dstRest, stop };
  }

  async function expectIntact(path: string, state: number = MigState.RUNNING): Promise<VfioUserClient> {
    const c = await VfioUserClient.connect(path);
    assert.equal(await c.migrationState(), state);
    return c;
  }

  for (const point of ['pre-copy', 'stop-copy', 'resume'] as const) {
    test(`SIGKILL of the orchestrator during ${point}: source RUNNING and intact after a reconnect, destination RUNNING, nothing held`, { timeout: 60_000 }, async () => {
      const s = await servers();
      const child = start([join(root, 'dist', 'test', 'fixtures', 'migrate-child.js'), s.srcPath, s.dstPath, point]);
      await line(child, new RegExp(`AT ${point}`));
      child.child.kill('SIGKILL');
      assert.deepEqual(await child.exited, [null, 'SIGKILL']);
      await backTo(s.src.pid, s.srcRest);
      await backTo(s.dst.pid, s.dstRest);
      const c = await expectIntact(s.srcPath);
      assert.ok((await c.regionRead(PciRegion.BAR1, 0, BAR1_SIZE)).equals(pattern), 'source BAR1 intact');
      c.close();
      const d = await expectIntact(s.dstPath);
      d.close();
      await backTo(s.src.pid, s.srcRest);
      await backTo(s.dst.pid, s.dstRest);
      await s.stop();
    });
  }

  test('SIGKILL of the destination server during resume: the orchestrator rolls the source back to RUNNING', { timeout: 60_000 }, async () => {
    const s = await servers();
    const src = await VfioUserClient.connect(s.srcPath);
    const dst = await VfioUserClient.connect(s.dstPath);
    src.memory.add(0x100000, 1 << 20).bytes.fill(0x33);
    await src.dmaMap({ iova: 0x100000, size: 1 << 20 });
    const target = new LocalTarget(dst);
    target.finish = async () => {
      await dst.setMigrationState(MigState.STOP);
      s.dst.child.kill('SIGKILL');
      await s.dst.exited;
      await dst.setMigrationState(MigState.RUNNING);
    };
    await assert.rejects(migrate(src, target, { maxRounds: 1 }), (e: unknown) => {
      assert.ok(e instanceof MigrationError);
      assert.equal(e.step, 'resuming the destination');
      return true;
    });
    assert.equal(await src.migrationState(), MigState.RUNNING);
    assert.ok((await src.regionRead(PciRegion.BAR1, 0, BAR1_SIZE)).equals(pattern));
    assert.equal(src.memory.view(0x100000, 4).toString('hex'), '33333333');
    src.close();
    dst.close();
    await backTo(s.src.pid, s.srcRest);
    assert.deepEqual(await s.dst.exited, [null, 'SIGKILL']);
    await s.stop();
  });

  test('the TCP migration stream cut mid-chunk: vfu migrate rolls back, vfu receive resets the destination, both exit', { timeout: 60_000 }, async () => {
    const s = await servers();
    const recv = start([cli, 'receive', '--listen', 'tcp://127.0.0.1:0', '--to', s.dstPath, '--json']);
    await until(() => /listening on tcp:\/\/127\.0\.0\.1:\d+/.test(recv.stderr()), 10_000, 'vfu receive');
    const receivePort = Number(/listening on tcp:\/\/127\.0\.0\.1:(\d+)/.exec(recv.stderr())![1]);
    // a proxy that forwards the stream and cuts it 4 KiB into the first PAGES chunk
    let cutAt = -1;
    const proxy = createServer((a: Socket) => {
      const b = connectTcp({ host: '127.0.0.1', port: receivePort });
      let seen = Buffer.alloc(0);
      let forwarded = 0;
      a.on('data', (d: Buffer) => {
        seen = Buffer.concat([seen, d]);
        if (cutAt < 0) {
          for (let at = 0; at + 16 <= seen.length; ) {
            const type = seen.readUInt8(at + 4);
            const len = seen.readUInt32LE(at + 8);
            if (type === ChunkType.PAGES) {
              cutAt = at + 16 + 4096;
              break;
            }
            at += 16 + len;
          }
        }
        const limit = cutAt < 0 ? seen.length : Math.min(seen.length, cutAt);
        if (limit > forwarded) b.write(seen.subarray(forwarded, limit));
        forwarded = limit;
        if (cutAt >= 0 && seen.length >= cutAt) {
          b.end(() => b.destroy());
          a.destroy();
        }
      });
      b.on('data', (d: Buffer) => a.write(d));
      for (const x of [a, b]) x.on('error', () => {});
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
    const proxyPort = (proxy.address() as { port: number }).port;
    // 32 MiB of guest: more than the sender's socket buffers and send buffers
    // hold, so the reset always finds it still in round 0's pages
    const mig = start([cli, 'migrate', '--from', s.srcPath, '--to', `tcp://127.0.0.1:${proxyPort}`, '--guest-mib', '32', '--quiet']);
    const [code] = await mig.exited;
    assert.equal(code, 1, `vfu migrate: ${mig.stdout()}${mig.stderr()}`);
    assert.match(mig.stderr(), /migration failed at pre-copy round 0/);
    assert.deepEqual(await recv.exited, [1, null], recv.stderr());
    const result = JSON.parse(recv.stdout().trim().split('\n').pop()!) as { ok: boolean; error: string };
    assert.equal(result.ok, false);
    assert.match(result.error, /cut mid-chunk/);
    assert.ok(cutAt > 0);
    proxy.close();
    await backTo(s.src.pid, s.srcRest);
    await backTo(s.dst.pid, s.dstRest);
    const c = await expectIntact(s.srcPath);
    assert.ok((await c.regionRead(PciRegion.BAR1, 0, BAR1_SIZE)).equals(pattern));
    c.close();
    (await expectIntact(s.dstPath)).close();
    await s.stop();
  });
});

