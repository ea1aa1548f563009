// Every resource limit, reached on purpose: the documented errno (see the
// table in RELIABILITY.md), the connection still in sync afterwards, nothing
// leaked, and memory bounded (never an out-of-memory crash).
import { strict as assert } from 'node:assert';
import { describe, test } from 'node:test';
import { VfioUserClient } from '../src/client/client.js';
import { createSample } from '../src/devices/sample.js';
import { native } from '../src/native/index.js';
import { Command, Errno, Feature, FeatureFlag, HEADER_SIZE, HeaderFlag, PciRegion } from '../src/protocol/constants.js';
import { writeHeader } from '../src/protocol/header.js';
import { DeviceInfoStruct } from '../src/protocol/messages/device.js';
import { DmaAccessStruct } from '../src/protocol/messages/dma.js';
import { FeatureStruct, LoggingControlStruct, LoggingReportStruct } from '../src/protocol/messages/feature.js';
import { RegionAccessStruct } from '../src/protocol/messages/region.js';
import { version } from '../src/protocol/messages/version.js';
import { VfioUserDevice } from '../src/server/device.js';
import { NativeEndpoint } from '../src/transport/native-endpoint.js';
import { rawSession } from './helpers/raw.js';
import { fdCount, rejectsWith, serve, until } from './helpers/server.js';

const n = native!;

/** Stops or restarts an endpoint's reading (a peer that does not read). */
function reading(ep: NativeEndpoint, on: boolean): void {
  const inner = ep as unknown as { n: { pollUpdate: (h: unknown, e: number) => void }; poll: unknown };
  inner.n.pollUpdate(inner.poll, on ? 1 : 0);
}
const getInfo = (): Buffer => DeviceInfoStruct.encode({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 });

/** A device with a 1 MiB memory BAR0 and a BAR2 whose reads wait for `gate`. */
function bigDevice(): { dev: VfioUserDevice; open: () => void } {
  const dev = new VfioUserDevice({ pci: { vendorId: 1, deviceId: 2 } });
  let release: () => void = () => {};
  let gate = new Promise<void>((r) => (release = r));
  dev.addRegion(PciRegion.BAR0, { size: 1 << 20, memory: true });
  dev.addRegion(PciRegion.BAR2, {
    size: 8,
    access: {
      read: async (_o, out) => {
        await gate;
        out.fill(7);
      },
    },
  });
  return {
    dev,
    open: () => {
      release();
      gate = Promise.resolve();
    },
  };
}

describe('DMA limits', () => {
  test('max_dma_maps: the mapping beyond the cap is EINVAL (as libvfio-user), advertised in VERSION', async () => {
    const dev = createSample();
    const srv = await serve(dev.device, { dmaLimits: { maxMappings: 4 } });
    const c = await srv.connect();
    assert.equal(c.serverCaps.maxDmaMaps, 4);
    for (let i = 0; i < 5; i++) c.memory.add(0x10000 * (i + 1), 0x1000);
    for (let i = 0; i < 4; i++) await c.dmaMap({ iova: 0x10000 * (i + 1), size: 0x1000 });
    await rejectsWith(c.dmaMap({ iova: 0x50000, size: 0x1000 }), Errno.EINVAL);
    await c.dmaMap({ iova: 0x10000, size: 0x1000 }); // the same mapping again is not a new one
    await c.dmaUnmap(0x10000, 0x1000);
    await c.dmaMap({ iova: 0x50000, size: 0x1000 });
    assert.equal(dev.device.dma.count, 4);
    await srv.close();
  });

  test('total and single mapping size: ENOSPC', async () => {
    const dev = createSample();
    const srv = await serve(dev.device, { dmaLimits: { maxTotalSize: 0x3000, maxMappingSize: 0x2000 } });
    const c = await srv.connect();
    c.memory.add(0x10000, 0x10000);
    await rejectsWith(c.dmaMap({ iova: 0x10000, size: 0x3000 }), Errno.ENOSPC);
    await c.dmaMap({ iova: 0x10000, size: 0x2000 });
    await c.dmaMap({ iova: 0x12000, size: 0x1000 });
    await rejectsWith(c.dmaMap({ iova: 0x13000, size: 0x1000 }), Errno.ENOSPC);
    assert.equal(dev.device.dma.totalSize, 0x3000);
    await srv.close();
  });
});

describe('message limits', () => {
  test('a message above max_data_xfer_size: EINVAL, its body skipped, its descriptors closed, in sync after', async () => {
    const dev = createSample();
    const srv = await serve(dev.device, { maxDataXferSize: 4096 });
    const s = await rawSession(srv.path);
    await until(() => srv.server.session !== null);
    const fds0 = fdCount();
    const fd = n.eventfd(0, 1);
    const big = Buffer.alloc(64 * 1024, 0x41); // 64 KiB > 4096 + 4096
    const id = s.send(Command.REGION_WRITE, big, { fds: [fd] });
    await s.ep.whenDrained();
    n.close(fd);
    const r = await s.q.next();
    assert.deepEqual([r.msgId, r.flags & HeaderFlag.ERROR ? r.errorNo : 0], [id, Errno.EINVAL]);
    const probe = s.send(Command.DEVICE_GET_INFO, getInfo());
    const p = await s.q.next();
    assert.equal(p.msgId, probe);
    assert.equal(p.flags & HeaderFlag.ERROR, 0, 'the bytes of the big message were not parsed as messages');
    assert.equal(fdCount(), fds0, 'the descriptor that came with it is closed');
    s.close();
    await srv.close();
  });

  test('more descriptors than max_msg_fds: EINVAL and every one of them closed', async () => {
    const dev = createSample();
    const srv = await serve(dev.device, { maxMsgFds: 2 });
    const s = await rawSession(srv.path);
    await until(() => srv.server.session !== null);
    const fds0 = fdCount();
    const fds = [n.eventfd(0, 1), n.eventfd(0, 1), n.eventfd(0, 1)];
    const id = s.send(Command.DEVICE_SET_IRQS, Buffer.alloc(20), { fds });
    await s.ep.whenDrained();
    for (const fd of fds) n.close(fd);
    const r = await s.q.next();
    assert.deepEqual([r.msgId, r.errorNo], [id, Errno.EINVAL]);
    assert.equal(fdCount(), fds0);
    s.send(Command.DEVICE_GET_INFO, getInfo());
    assert.equal((await s.q.next()).flags & HeaderFlag.ERROR, 0);
    s.close();
    await srv.close();
  });

  test('commands queued behind a slow one: EBUSY beyond maxQueuedCommands or maxQueuedBytes', async () => {
    for (const limit of [{ maxQueuedCommands: 3 }, { maxQueuedBytes: 3 * 4096 }]) {
      const b = bigDevice();
      const srv = await serve(b.dev, limit);
      const s = await rawSession(srv.path);
      const slow = s.send(Command.REGION_READ, RegionAccessStruct.encode({ offset: 0n, region: PciRegion.BAR2, count: 8 }));
      const ids: number[] = [];
      for (let i = 0; i < 5; i++) {
        const w = Buffer.concat([RegionAccessStruct.encode({ offset: BigInt(i * 4096), region: PciRegion.BAR0, count: 4096 - 16 }), Buffer.alloc(4096 - 16, i)]);
        ids.push(s.send(Command.REGION_WRITE, w));
      }
      // the two beyond the limit are refused at once, before the slow one ends
      const early = [await s.q.next(), await s.q.next()];
      assert.deepEqual(
        early.map((f) => [f.msgId, f.errorNo]),
        ids.slice(3).map((id) => [id, Errno.EBUSY]),
        JSON.stringify(limit),
      );
      b.open();
      const rest = [await s.q.next(), await s.q.next(), await s.q.next(), await s.q.next()];
      assert.deepEqual(
        rest.map((f) => [f.msgId, f.flags & HeaderFlag.ERROR]),
        [slow, ...ids.slice(0, 3)].map((id) => [id, 0]),
      );
      s.close();
      await srv.close();
    }
  });

  test('a client that never reads its replies: the server stops reading at maxSendQueueBytes, loses nothing', async () => {
    const b = bigDevice();
    b.open();
    const srv = await serve(b.dev, { maxSendQueueBytes: 4 << 20 });
    const s = await rawSession(srv.path);
    await until(() => srv.server.session !== null);
    const server = srv.server.session!.conn.main;
    const N = 64; // 64 MiB of replies
    reading(s.ep, false); // replies pile up on the server's side
    for (let i = 0; i < N; i++) s.send(Command.REGION_READ, RegionAccessStruct.encode({ offset: 0n, region: PciRegion.BAR0, count: 1 << 20 }));
    let peak = 0;
    const t0 = Date.now();
    while (Date.now() - t0 < 300) {
      peak = Math.max(peak, server.queuedBytes);
      await new Promise((r) => setTimeout(r, 5));
    }
    assert.ok(peak > 0, 'replies did pile up');
    assert.ok(peak <= (4 << 20) + (1 << 20) + 4096, `server queue peaked at ${peak} bytes`);
    reading(s.ep, true);
    for (let i = 0; i < N; i++) {
      const f = await s.q.next();
      assert.equal(f.flags & HeaderFlag.ERROR, 0);
      assert.equal(f.payload.length, 16 + (1 << 20));
    }
    s.close();
    await srv.close();
  });
});

describe('dirty page tracking memory', () => {
  test('bitmaps beyond maxDirtyBitmapBytes: ENOMEM at start and at a later DMA_MAP; huge reports E2BIG', async () => {
    const dev = createSample();
    const srv = await serve(dev.device, { maxDirtyBitmapBytes: 64 });
    const c = await srv.connect({ maxBitmapSize: 4096 });
    c.memory.add(0x100000, 0x400000);
    await c.dmaMap({ iova: 0x100000, size: 0x200000 }); // 512 pages: 64 bytes of bitmap
    await c.startDirtyLogging(4096);
    await rejectsWith(c.dmaMap({ iova: 0x300000, size: 0x1000 }), Errno.ENOMEM);
    await c.stopDirtyLogging();
    await rejectsWith(c.startDirtyLogging(2048), Errno.ENOMEM);
    // page size 1 over 2 MiB: a 2 Mi-bit tracking bitmap, refused before allocation
    const ctl = LoggingControlStruct.encode({ pageSize: 1n, numRanges: 0, reserved: 0 });
    const head = FeatureStruct.encode({ argsz: FeatureStruct.size + ctl.length, flags: Feature.DMA_LOGGING_START | FeatureFlag.SET });
    await rejectsWith(c.conn.request(Command.DEVICE_FEATURE, Buffer.concat([head, ctl])), Errno.ENOMEM);
    await c.startDirtyLogging(4096);
    // a report bigger than the client's max_bitmap_size (4096 bytes): E2BIG, not an allocation
    const rep = LoggingReportStruct.encode({ iova: 0x100000n, length: 0x200000n, pageSize: 1n });
    const rh = FeatureStruct.encode({ argsz: 1 << 30, flags: Feature.DMA_LOGGING_REPORT | FeatureFlag.GET });
    await rejectsWith(c.conn.request(Command.DEVICE_FEATURE, Buffer.concat([rh, rep])), Errno.E2BIG);
    assert.equal((await c.dirtyReport(0x100000, 0x200000, 4096)).length, 64);
    await srv.close();
  });
});

describe('client limits', () => {
  async function hostile(onRequest: (f: { msgId: number; cmd: number; payload: Buffer }, ep: NativeEndpoint) => void, opts = {}): Promise<{ c: VfioUserClient; ep: NativeEndpoint }> {
    const [a, b] = n.socketpair();
    const ep = new NativeEndpoint(b, { maxMessageSize: 1 << 24, maxFds: 16 });
    ep.onFrame = (f) => {
      if (f.cmd === Command.VERSION) {
        const body = version.encode({ major: 0, minor: 2, json: '{"capabilities":{"max_msg_fds":16}}', nul: true });
        const h = Buffer.alloc(HEADER_SIZE);
        writeHeader(h, f.msgId, f.cmd, HEADER_SIZE + body.length, HeaderFlag.TYPE_REPLY, 0);
        ep.send(h, body, null);
        return;
      }
      if (f.flags & HeaderFlag.TYPE_REPLY) return;
      onRequest({ msgId: f.msgId, cmd: f.cmd, payload: Buffer.from(f.payload) }, ep);
    };
    const c = await VfioUserClient.fromEndpoint(new NativeEndpoint(a, { maxMessageSize: 1 << 30, maxFds: 16 }), { replyTimeoutMs: 5000, ...opts });
    return { c, ep };
  }

  function reply(ep: NativeEndpoint, f: { msgId: number; cmd: number }, payload: Buffer): void {
    const h = Buffer.alloc(HEADER_SIZE);
    writeHeader(h, f.msgId, f.cmd, HEADER_SIZE + payload.length, HeaderFlag.TYPE_REPLY, 0);
    ep.send(h, payload, null);
  }

  test('a reply above the client limit: EMSGSIZE, its body skipped, the next request answered', async () => {
    let first = true;
    const h = await hostile(
      (f, ep) => {
        if (first) reply(ep, f, Buffer.alloc(64 * 1024, 0x55)); // max(4096, 4096) + 4096 < 64 KiB
        else reply(ep, f, DeviceInfoStruct.encode({ argsz: 16, flags: 3, numRegions: 9, numIrqs: 5 }));
        first = false;
      },
      { maxDataXferSize: 4096, maxBitmapSize: 4096 },
    );
    await rejectsWith(h.c.deviceInfo(), Errno.EMSGSIZE);
    assert.equal((await h.c.deviceInfo()).numRegions, 9);
    h.c.close();
    h.ep.close();
  });

  test('requests in flight beyond maxPendingRequests: ENOSPC', async () => {
    const held: { msgId: number; cmd: number }[] = [];
    const h = await hostile((f) => void held.push(f), { maxPendingRequests: 2 });
    const a = h.c.deviceInfo();
    const b = h.c.deviceInfo();
    await rejectsWith(h.c.deviceInfo(), Errno.ENOSPC);
    await until(() => held.length === 2);
    for (const f of held) reply(h.ep, f, DeviceInfoStruct.encode({ argsz: 16, flags: 3, numRegions: 9, numIrqs: 5 }));
    await Promise.all([a, b]);
    h.c.close();
    h.ep.close();
  });

  test('a server flooding DMA_READs without reading the answers: the client stops reading at maxSendQueueBytes', async () => {
    const h = await hostile((f, ep) => f.cmd === Command.DMA_MAP && reply(ep, f, Buffer.alloc(0)), { maxSendQueueBytes: 1 << 20, maxDataXferSize: 64 * 1024 });
    h.c.memory.add(0x10000, 0x10000, { shared: false });
    await h.c.dmaMap({ iova: 0x10000, size: 0x10000 });
    reading(h.ep, false); // the hostile server never reads the answers
    const req = Buffer.alloc(HEADER_SIZE + DmaAccessStruct.size);
    for (let i = 0; i < 200; i++) {
      writeHeader(req, 0x8000 + i, Command.DMA_READ, req.length, 0, 0);
      DmaAccessStruct.write(req, { addr: 0x10000n, count: 0x10000n }, HEADER_SIZE);
      h.ep.send(req, null, null);
    }
    let peak = 0;
    const t0 = Date.now();
    while (Date.now() - t0 < 300) {
      peak = Math.max(peak, h.c.conn.main.queuedBytes);
      await new Promise((r) => setTimeout(r, 5));
    }
    assert.ok(peak > 0 && peak <= (1 << 20) + 0x10000 + 64, `client queue peaked at ${peak} bytes (200 answers are 12.5 MiB)`);
    h.c.close();
    h.ep.close();
  });
});
