// The server framework over real sockets with the project's client, against
// the `sample` device: every command, its error cases, DMA both ways, IRQs,
// reset, reconnect without leaks.
import { strict as assert } from 'node:assert';
import { describe, test } from 'node:test';
import { native } from '../src/native/index.js';
import { Command, DmaMapFlag, Errno, IrqIndex, PciRegion, RegionFlag } from '../src/protocol/constants.js';
import { RegionAccessStruct } from '../src/protocol/messages/region.js';
import { BAR1_SIZE } from '../src/devices/sample.js';
import { sampleForSuite } from './helpers/sample-suite.js';
import { fdCount, once, rejectsWith, until } from './helpers/server.js';

describe('server with the sample device', () => {
  const suite = sampleForSuite();

  test('negotiation, device and region info', async () => {
    const c = await suite.srv.connect();
    assert.equal(c.serverVersion.major, 0);
    assert.ok(c.serverCaps.maxMsgFds > 0);
    assert.equal(c.serverCaps.maxDataXferSize, 1 << 20);
    assert.equal(c.serverCaps.migration?.pgsize, 4096);
    const info = await c.deviceInfo();
    assert.deepEqual(info, { flags: 3, numRegions: 9, numIrqs: 5 });
    const bar0 = await c.regionInfo(PciRegion.BAR0);
    assert.equal(bar0.size, 8);
    assert.equal(bar0.flags, RegionFlag.READ | RegionFlag.WRITE);
    const bar1 = await c.regionInfo(PciRegion.BAR1);
    assert.equal(bar1.size, BAR1_SIZE);
    assert.ok(bar1.flags & RegionFlag.MMAP && bar1.flags & RegionFlag.CAPS);
    assert.deepEqual(bar1.sparse, [
      { offset: 0, size: 0x1000 },
      { offset: 0x2000, size: 0x1000 },
    ]);
    assert.ok(bar1.fd >= 0);
    // the mapping and the server see the same memory
    const areas = c.mapRegion(bar1);
    areas[1]!.bytes.write('hello', 0);
    assert.equal(suite.dev.bar1.subarray(0x2000, 0x2005).toString(), 'hello');
    for (const a of areas) a.unmap();
    const cfg = await c.regionInfo(PciRegion.CONFIG);
    assert.equal(cfg.size, 256);
    const rom = await c.regionInfo(PciRegion.ROM);
    assert.equal(rom.size, 0);
    assert.equal(rom.flags, 0);
    await rejectsWith(c.regionInfo(9), Errno.EINVAL);
    c.close();
  });

  test('config space and region access, with their errors', async () => {
    const c = await suite.srv.connect();
    const hdr = await c.regionRead(PciRegion.CONFIG, 0, 64);
    assert.equal(hdr.readUInt16LE(0), 0xdead);
    assert.equal(hdr.readUInt16LE(2), 0xbeef);
    assert.equal(hdr.readUInt16LE(0x2c), 0xcafe);
    assert.equal(hdr.readUInt16LE(0x2e), 0xbabe);
    const pattern = Buffer.alloc(BAR1_SIZE);
    for (let i = 0; i < pattern.length; i++) pattern[i] = (i * 7) & 0xff;
    await c.regionWrite(PciRegion.BAR1, 0, pattern);
    assert.ok((await c.regionRead(PciRegion.BAR1, 0, BAR1_SIZE)).equals(pattern));
    assert.ok((await c.regionRead(PciRegion.BAR1, 100, 10)).equals(pattern.subarray(100, 110)));
    await rejectsWith(c.regionRead(0xdeadbeef, 0, 4), Errno.EINVAL);
    await rejectsWith(c.regionRead(PciRegion.BAR1, BAR1_SIZE - 4, 8), Errno.EINVAL);
    await rejectsWith(c.regionRead(PciRegion.BAR0, 0, 4), Errno.EINVAL); // the device wants 8 bytes
    await rejectsWith(c.regionRead(PciRegion.VGA, 0, 1), Errno.EINVAL);
    // offsets near 2^64 (overflow) and counts over the limit, raw
    const raw = RegionAccessStruct.encode({ offset: 0xfffffffffffffff8n, region: PciRegion.BAR1, count: 16 });
    await rejectsWith(c.conn.request(Command.REGION_READ, raw), Errno.EINVAL);
    const big = RegionAccessStruct.encode({ offset: 0n, region: PciRegion.BAR1, count: (1 << 20) + 1 });
    await rejectsWith(c.conn.request(Command.REGION_READ, big), Errno.EINVAL);
    const short = RegionAccessStruct.encode({ offset: 0n, region: PciRegion.BAR1, count: 8 });
    await rejectsWith(c.conn.request(Command.REGION_WRITE, short, { extra: Buffer.alloc(4) }), Errno.EINVAL);
    await rejectsWith(c.conn.request(Command.REGION_READ, Buffer.alloc(8)), Errno.EINVAL);
    await rejectsWith(c.conn.request(99, Buffer.alloc(8)), Errno.EINVAL);
    await rejectsWith(c.conn.request(Command.VERSION, Buffer.alloc(8)), Errno.EINVAL);
    // still in sync after all that
    assert.equal((await c.deviceInfo()).numRegions, 9);
    c.close();
  });

  test('posted writes get no reply, even when they fail', async () => {
    const c = await suite.srv.connect();
    await c.regionWrite(PciRegion.BAR1, 0, Buffer.from('posted'), { posted: true });
    const bad = RegionAccessStruct.encode({ offset: 0n, region: 0xdead, count: 1 });
    await c.conn.request(Command.REGION_WRITE, bad, { extra: Buffer.from([1]), noReply: true });
    assert.equal((await c.regionRead(PciRegion.BAR1, 0, 6)).toString(), 'posted');
    c.close();
  });

  test('DMA with descriptors and by messages, and the device sees both', async () => {
    const c = await suite.srv.connect({ maxDataXferSize: 1024 });
    const shared = c.memory.add(0x10000, 0x4000);
    const priv = c.memory.add(0x100000, 0x4000, { shared: false });
    await c.dmaMap({ iova: 0x10000, size: 0x4000 });
    await c.dmaMap({ iova: 0x100000, size: 0x4000 });
    const dma = suite.dev.device.dma;
    assert.equal(dma.count, 2);
    assert.equal(dma.find(0x10000)!.mode, 'mmap');
    assert.equal(dma.find(0x100000)!.mode, 'message');
    dma.writeSync(0x10100, Buffer.from('direct'));
    assert.equal(shared.bytes.subarray(0x100, 0x106).toString(), 'direct');
    const data = Buffer.alloc(3000, 0x5a);
    await dma.write(0x100800, data);
    assert.ok(priv.bytes.subarray(0x800, 0x800 + 3000).equals(data));
    assert.deepEqual(c.memory.takeMessageDirty(priv), [0, 1]);
    const back = Buffer.alloc(3000);
    await dma.read(0x100800, back);
    assert.ok(back.equals(data));
    // errors: overlap, unmapped, partial unmap, outside guest memory
    await rejectsWith(c.dmaMap({ iova: 0x11000, size: 0x1000 }), Errno.EINVAL);
    await rejectsWith(c.dmaUnmap(0x20000, 0x1000), Errno.ENOENT);
    await rejectsWith(c.dmaUnmap(0x10000, 0x1000), Errno.ENOENT);
    assert.throws(() => dma.writeSync(0x14000, Buffer.alloc(1)), { errno: Errno.ENOENT });
    assert.throws(() => dma.readSync(0x13fff, Buffer.alloc(2)), { errno: Errno.ENOENT });
    await c.dmaUnmap(0x10000, 0x4000);
    assert.equal(dma.count, 1);
    await c.dmaUnmapAll();
    assert.equal(dma.count, 0);
    c.close();
  });

  test('twin-socket mode: server requests on the twin, client requests on the main socket', async () => {
    const c = await suite.srv.connect({ twinSocket: true, maxDataXferSize: 1024 });
    assert.equal(c.serverCaps.twinSocket?.supported, true);
    const session = suite.srv.server.session!;
    assert.notEqual(session.conn.requestEndpoint, session.conn.main, 'server requests go on the twin');
    assert.equal(c.conn.requestEndpoint, c.conn.main, 'client requests stay on the main socket');
    const priv = c.memory.add(0x200000, 0x2000, { shared: false });
    await c.dmaMap({ iova: 0x200000, size: 0x2000 });
    const data = Buffer.alloc(3000, 0x33);
    await suite.dev.device.dma.write(0x200100, data);
    assert.ok(priv.bytes.subarray(0x100, 0x100 + 3000).equals(data));
    assert.equal((await c.regionRead(PciRegion.CONFIG, 0, 2)).readUInt16LE(0), 0xdead);
    await c.dmaUnmapAll();
    c.close();
  });

  test('a read-only mapping refuses device writes', async () => {
    const c = await suite.srv.connect();
    c.memory.add(0x40000, 0x1000);
    await c.dmaMap({ iova: 0x40000, size: 0x1000, prot: DmaMapFlag.READ });
    assert.throws(() => suite.dev.device.dma.writeSync(0x40000, Buffer.alloc(4)), { errno: Errno.EACCES });
    await c.dmaUnmapAll();
    c.close();
  });

  test('interrupts through eventfds, masking and pending delivery', async () => {
    const c = await suite.srv.connect();
    const intx = await c.irqInfo(IrqIndex.INTX);
    assert.equal(intx.count, 1);
    assert.ok(intx.flags & 2, 'MASKABLE reported');
    assert.equal((await c.irqInfo(IrqIndex.ERR)).count, 1);
    await rejectsWith(c.irqInfo(5), Errno.EINVAL);
    await c.enableInterrupts(IrqIndex.INTX, 1);
    const got = once<[number, number]>(c, 'interrupt');
    assert.equal(suite.dev.device.trigger(IrqIndex.INTX, 0), true);
    assert.deepEqual((await got).slice(0, 2), [IrqIndex.INTX, 0]);
    await c.maskInterrupts(IrqIndex.INTX, 0, 1, true);
    assert.equal(suite.dev.device.trigger(IrqIndex.INTX, 0), false);
    const later = once<[number, number]>(c, 'interrupt');
    await c.maskInterrupts(IrqIndex.INTX, 0, 1, false);
    await later;
    await rejectsWith(c.enableInterrupts(IrqIndex.MSI, 1), Errno.EINVAL);
    await c.disableInterrupts(IrqIndex.INTX);
    assert.equal(suite.dev.device.irqs.fdCount, 0);
    c.close();
  });

  test('the timer interrupt and the DMA the sample device then performs', async () => {
    const c = await suite.srv.connect({ maxDataXferSize: 1024 });
    for (let i = 0; i < 4; i++) c.memory.add(i * 0x1000, 0x1000);
    for (let i = 0; i < 4; i++) await c.dmaMap({ iova: i * 0x1000, size: 0x1000 });
    await c.enableInterrupts(IrqIndex.INTX, 1);
    const before = suite.dev.dmaChecks.ok;
    const irq = once(c, 'interrupt', 5000);
    const t = Buffer.alloc(8);
    t.writeBigInt64LE(BigInt(Math.floor(Date.now() / 1000) + 1));
    await c.regionWrite(PciRegion.BAR0, 0, t);
    await irq;
    await until(() => suite.dev.dmaChecks.ok === before + 2);
    assert.equal(suite.dev.dmaChecks.failed, 0);
    assert.equal(c.memory.view(0, 4).toString(), 'AAAA'); // slot 0 written by messages
    assert.equal(c.memory.view(0x1000 + 3072, 2).toString(), 'DD'); // slot 1 written directly
    await c.dmaUnmapAll();
    c.close();
  });

  test('reset calls the device and keeps the connection', async () => {
    const c = await suite.srv.connect();
    const reset = once<[string]>(suite.dev.device, 'reset');
    await c.reset();
    assert.deepEqual(await reset, ['client']);
    c.close();
  });

  test('a second client is refused while one is attached', async () => {
    const c1 = await suite.srv.connect();
    await rejectsWith(suite.srv.connect(), Errno.EBUSY);
    assert.equal((await c1.deviceInfo()).numIrqs, 5);
    c1.close();
  });

  test('reconnect after the client vanishes: mappings and fds dropped, state kept', async () => {
    await until(() => suite.srv.server.session === null);
    const fds0 = fdCount();
    const maps0 = native!.liveMappings();
    for (let round = 0; round < 20; round++) {
      const c = await suite.srv.connect();
      c.memory.add(0, 0x2000);
      await c.dmaMap({ iova: 0, size: 0x2000 });
      await c.enableInterrupts(IrqIndex.INTX, 1);
      await c.regionWrite(PciRegion.BAR1, 0x10, Buffer.from(`round ${round}`));
      const gone = once(suite.srv.server, 'disconnected');
      c.close();
      await gone;
      assert.equal(suite.dev.device.dma.count, 0);
      assert.equal(suite.dev.device.irqs.fdCount, 0);
    }
    const c = await suite.srv.connect();
    assert.equal((await c.regionRead(PciRegion.BAR1, 0x10, 8)).toString(), 'round 19');
    c.close();
    await once(suite.srv.server, 'disconnected');
    assert.equal(fdCount(), fds0);
    assert.equal(native!.liveMappings(), maps0);
  });
});
