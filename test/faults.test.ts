// Fault injection.  Device callbacks that throw (region access, migration
// transition, readData/writeData, reset, quiesce, DMA map/unmap): each gives
// an error reply with the callback's errno and leaves the connection usable,
// and a client leaving while every callback throws still releases
// everything.  A client lost in the middle of a migration leaves the device
// back in RUNNING with its state intact.  (Process-level faults, SIGKILL
// and a cut TCP stream, are further down.)
import { strict as assert } from 'node:assert';
import { describe, test } from 'node:test';
import { createSample, BAR1_SIZE } from '../src/devices/sample.js';
import { native } from '../src/native/index.js';
import { Errno, IrqIndex, MigState, PciRegion } from '../src/protocol/constants.js';
import { VfuError } from '../src/protocol/errors.js';
import { fdCount, once, rejectsWith, serve, until } from './helpers/server.js';

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
      throw Object.assign(new VfuError(Errno.EIO, 'injected: fatal'), { enterError: true });
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
