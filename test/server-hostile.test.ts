// A hostile or careless client against the server: descriptors and values
// that used to stop the event loop or misfire.
import { strict as assert } from 'node:assert';
import { after, describe, test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { createSample } from '../src/devices/sample.js';
import { native } from '../src/native/index.js';
import { Command, Errno, IrqIndex, IrqSetFlag, PciRegion } from '../src/protocol/constants.js';
import { IrqSetStruct } from '../src/protocol/messages/device.js';
import { openSync, readFileSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VfioUserClient } from '../src/client/client.js';
import { startServer } from './helpers/procs.js';
import { fdCount, rejectsWith, serve, tempDir, until } from './helpers/server.js';

const n = native!;

/** The counter of an eventfd, read without consuming it. */
function eventfdCount(fd: number, pid: number | 'self' = 'self'): bigint {
  return BigInt(/eventfd-count:\s*([0-9a-f]+)/.exec(readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'))![1]!.replace(/^/, '0x'));
}

function isBlocking(fd: number): boolean {
  return (parseInt(/flags:\s+(\d+)/.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1]!, 8) & 0o4000) === 0;
}

const FULL = 0xfffffffffffffffen;
const setIrqs = (flags: number, index: number, start: number, count: number): Buffer => IrqSetStruct.encode({ argsz: 20, flags, index, start, count });
const ATTACH = IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_TRIGGER;
const RAISE = IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_TRIGGER;

describe('interrupts into an eventfd whose counter is full', () => {
  test('a real client over a real socket: the server keeps answering, the interrupt arrives once the counter is drained', async () => {
    const t = tempDir();
    const path = join(t.dir, 's.sock');
    const srv = await startServer(path);
    const c = await VfioUserClient.connect(path, { replyTimeoutMs: 10_000 });
    try {
      const efd = n.eventfd(0, 0); // blocking, as QEMU's and libvfio-user's are
      assert.equal(n.eventfdWrite(efd, -2), 0);
      assert.equal(eventfdCount(efd), FULL, 'counter at 0xfffffffffffffffe: a write of 1 would sleep');
      await c.conn.request(Command.DEVICE_SET_IRQS, setIrqs(ATTACH, IrqIndex.INTX, 0, 1), { fds: [efd] });
      // Before: the first of these froze the server inside write() (or, when
      // its poll came first, the interrupt was dropped for good).
      for (let i = 0; i < 20; i++) await c.conn.request(Command.DEVICE_SET_IRQS, setIrqs(RAISE, IrqIndex.INTX, 0, 1));
      assert.equal((await c.deviceInfo()).numIrqs, 5, 'the server answers');
      assert.equal(eventfdCount(efd), FULL, 'nothing written while full');
      assert.ok(n.eventfdRead(efd) > 0, 'the client drains the counter');
      await until(() => eventfdCount(efd) !== 0n);
      assert.equal(eventfdCount(efd), 1n, 'the waiting interrupts arrive, as one (eventfds add up)');
      assert.equal(n.eventfdRead(efd), 1);
      await c.conn.request(Command.DEVICE_SET_IRQS, setIrqs(RAISE, IrqIndex.INTX, 0, 1));
      await until(() => eventfdCount(efd) === 1n);
      assert.ok(isBlocking(efd), 'the shared file was left blocking');
      n.close(efd);
    } finally {
      c.close();
      srv.child.kill('SIGTERM');
      await srv.exited;
      t.cleanup();
    }
  });

  test('a client racing the server (drains and refills its counter from another thread): every request answered, then the interrupt arrives', async () => {
    const t = tempDir();
    const path = join(t.dir, 's.sock');
    const srv = await startServer(path);
    const c = await VfioUserClient.connect(path, { replyTimeoutMs: 10_000 });
    const efd = n.eventfd(0, 0);
    const stop = new Int32Array(new SharedArrayBuffer(8));
    // The attack: drain, refill to 0xfffffffffffffffe at once, so that a
    // server woken by the drain finds the counter full when it writes.  The
    // old server slept in write() within a second of this.
    const url = new URL('../src/native/index.js', import.meta.url).href;
    const w = new Worker(
      `const { parentPort, workerData: { fd, stop } } = require('node:worker_threads');
      import(${JSON.stringify(url)}).then(({ native: n }) => {
        parentPort.postMessage('ready');
        while (Atomics.load(stop, 0) === 0) {
          n.eventfdRead(fd); // blocks until the server (or the test) writes
          if (Atomics.load(stop, 0) === 0) n.eventfdWrite(fd, -2);
          Atomics.add(stop, 1, 1);
        }
      });`,
      { eval: true, workerData: { fd: efd, stop } },
    );
    const exited = new Promise((r) => w.once('exit', r));
    try {
      await new Promise((r, j) => w.once('message', r).once('error', j));
      await c.conn.request(Command.DEVICE_SET_IRQS, setIrqs(ATTACH, IrqIndex.INTX, 0, 1), { fds: [efd] });
      for (let i = 0; i < 300 || Atomics.load(stop, 1) < 1000; i++) {
        await c.conn.request(Command.DEVICE_SET_IRQS, setIrqs(RAISE, IrqIndex.INTX, 0, 1));
        if (i % 30 === 0) assert.equal((await c.deviceInfo()).numIrqs, 5);
      }
      assert.ok(Atomics.load(stop, 1) > 0, 'the racer ran');
    } finally {
      Atomics.store(stop, 0, 1);
      n.eventfdWrite(efd, 1); // wakes the racer if it waits in read()
      await exited;
    }
    if (eventfdCount(efd) !== 0n) n.eventfdRead(efd);
    await c.conn.request(Command.DEVICE_SET_IRQS, setIrqs(RAISE, IrqIndex.INTX, 0, 1));
    await until(() => eventfdCount(efd) !== 0n);
    assert.equal((await c.deviceInfo()).numIrqs, 5, 'the server still answers');
    assert.ok(isBlocking(efd));
    n.close(efd);
    c.close();
    srv.child.kill('SIGTERM');
    await srv.exited;
    t.cleanup();
  });

  test('the device raises at will: trigger() returns at once, and one interrupt waits per vector', async () => {
    const dev = createSample();
    const srv = await serve(dev.device);
    const c = await srv.connect();
    const efd = n.eventfd(0, 0);
    n.eventfdWrite(efd, -2);
    await c.conn.request(Command.DEVICE_SET_IRQS, setIrqs(ATTACH, IrqIndex.INTX, 0, 1), { fds: [efd] });
    for (let i = 0; i < 100_000; i++) assert.equal(dev.device.trigger(IrqIndex.INTX, 0), true, 'taken');
    assert.equal(dev.device.irqs.isStalled(IrqIndex.INTX, 0), true);
    assert.equal(dev.device.irqs.fdCount, 2, 'its eventfd and the epoll set that waits for room');
    n.eventfdRead(efd);
    await until(() => !dev.device.irqs.isStalled(IrqIndex.INTX, 0));
    assert.equal(eventfdCount(efd), 1n);
    assert.equal(dev.device.irqs.fdCount, 1, 'the epoll set is gone with the last waiting interrupt');
    n.close(efd);
    c.close();
    await srv.close();
  });

  test('a vector whose eventfd is replaced or dropped while an interrupt waits releases everything', async () => {
    const dev = createSample();
    const srv = await serve(dev.device);
    const c = await srv.connect();
    const full = (): number => {
      const fd = n.eventfd(0, 0);
      n.eventfdWrite(fd, -2);
      return fd;
    };
    const a = full();
    await c.conn.request(Command.DEVICE_SET_IRQS, setIrqs(ATTACH, IrqIndex.INTX, 0, 1), { fds: [a] });
    dev.device.trigger(IrqIndex.INTX, 0);
    const b = n.eventfd(0, 0);
    await c.conn.request(Command.DEVICE_SET_IRQS, setIrqs(ATTACH, IrqIndex.INTX, 0, 1), { fds: [b] });
    assert.equal(dev.device.irqs.isStalled(IrqIndex.INTX, 0), false);
    assert.equal(dev.device.irqs.fdCount, 1);
    assert.equal(eventfdCount(a), FULL);
    const d = full();
    await c.conn.request(Command.DEVICE_SET_IRQS, setIrqs(ATTACH, IrqIndex.INTX, 0, 1), { fds: [d] });
    dev.device.trigger(IrqIndex.INTX, 0);
    assert.equal(dev.device.irqs.fdCount, 2);
    c.close();
    await until(() => srv.server.session === null);
    assert.equal(dev.device.irqs.fdCount, 0, 'client gone: eventfd and epoll set closed');
    for (const fd of [a, b, d]) n.close(fd);
    await srv.close();
  });
});

describe('SET_IRQS descriptors that are not eventfds', () => {
  const kinds: [string, () => number[]][] = [
    ['a socket nobody reads', () => n.socketpair()],
    ['a regular file', () => [openSync(join(tmpdir(), `vfu-irq-${process.pid}`), 'w+')]],
    ['a memfd', () => [n.memfdCreate('irq', 4096, true)]],
    ['/dev/null', () => [openSync('/dev/null', 'r+')]],
    ['an epoll set (an anonymous inode, not an eventfd)', () => [n.epollCreate()]],
  ];
  for (const [kind, make] of kinds) {
    test(`${kind}: refused with EINVAL and closed`, async () => {
      const dev = createSample();
      const srv = await serve(dev.device);
      const c = await srv.connect();
      const fds = make();
      const before = fdCount();
      for (const flags of [ATTACH, IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_MASK]) {
        await rejectsWith(c.conn.request(Command.DEVICE_SET_IRQS, setIrqs(flags, IrqIndex.INTX, 0, 1), { fds: [fds[0]!] }), Errno.EINVAL);
      }
      assert.equal(fdCount(), before, 'the received copy was closed');
      assert.equal(dev.device.irqs.hasEventfd(IrqIndex.INTX, 0), false);
      assert.equal((await c.deviceInfo()).numIrqs, 5, 'and the server still answers');
      for (const fd of fds) n.close(fd);
      await srv.close();
    });
  }
  after(() => unlinkSync(join(tmpdir(), `vfu-irq-${process.pid}`)));
});

test('sample device: a BAR0 time weeks ahead does not fire at once (setTimeout overflow)', async () => {
  const dev = createSample();
  const srv = await serve(dev.device);
  const c = await srv.connect();
  await c.enableInterrupts(IrqIndex.INTX, 1);
  let fired = 0;
  c.on('interrupt', () => fired++);
  const warnings: Error[] = [];
  const onWarning = (w: Error): number => warnings.push(w);
  process.on('warning', onWarning);
  const t = Buffer.alloc(8);
  t.writeBigInt64LE(BigInt(Math.floor(Date.now() / 1000) + 40 * 24 * 3600));
  await c.regionWrite(PciRegion.BAR0, 0, t);
  // The device armed its timer while handling the write (same process).  An
  // overflowed delay is clamped to 1 ms, and Node runs timers in order of
  // expiry, so a 2 ms timer armed after it fires after it: by then the bug
  // would have shown (the overflow warning is emitted on an earlier tick).
  await new Promise((r) => setTimeout(r, 2));
  process.off('warning', onWarning);
  assert.equal(fired, 0);
  assert.equal(dev.interrupts, 0);
  assert.deepEqual(warnings.map((w) => w.name), []);
  await srv.close();
});
