// DMA dirty page logging in the server, over real sockets: DMA_LOGGING_START
// over every mapping (also later ones) or explicit ranges, REPORT of any
// sub-range at any page size against a reference computed here, clear on
// read, what marks pages (device DMA) and what does not (DMA_WRITE messages,
// which the client tracks), a 1 TiB range, and every error case.
import { strict as assert } from 'node:assert';
import { after, before, describe, test } from 'node:test';
import type { VfioUserClient } from '../src/client/client.js';
import { Command, DmaMapFlag, Errno, Feature, FeatureFlag, PciRegion } from '../src/protocol/constants.js';
import { DmaMapStruct } from '../src/protocol/messages/dma.js';
import { FeatureStruct, LoggingControlStruct, LoggingRangeStruct, LoggingReportStruct } from '../src/protocol/messages/feature.js';
import { VfioUserDevice } from '../src/server/device.js';
import { rejectsWith, serve, until, type Served } from './helpers/server.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const TiB = 2 ** 40;

/**
 * The reference: dirty tracked pages per logged range (sparse), and the
 * report definition applied literally: output bit n is set iff a dirty
 * tracked page overlaps [iova + n*P, iova + (n+1)*P) clipped to the report;
 * pages wholly inside the report are cleared.
 */
class Reference {
  private readonly ranges: { iova: number; length: number; dirty: Set<number> }[] = [];
  constructor(readonly t: number) {}

  addRange(iova: number, length: number): void {
    this.ranges.push({ iova, length, dirty: new Set() });
  }

  removeRange(iova: number): void {
    const i = this.ranges.findIndex((r) => r.iova === iova);
    if (i >= 0) this.ranges.splice(i, 1);
  }

  mark(addr: number, len: number): void {
    for (const r of this.ranges) {
      const a = Math.max(addr, r.iova) - r.iova;
      const e = Math.min(addr + len, r.iova + r.length) - r.iova;
      if (e <= a) continue;
      for (let k = Math.floor(a / this.t); k < Math.ceil(e / this.t); k++) r.dirty.add(k);
    }
  }

  report(iova: number, length: number, p: number): Buffer {
    const r = this.ranges.find((x) => x.iova <= iova && iova + length <= x.iova + x.length);
    if (!r) throw new Error('reference: not in a logged range');
    const n = Math.ceil(length / p);
    const out = Buffer.alloc(Math.ceil(n / 64) * 8);
    const end = iova + length;
    for (const k of [...r.dirty]) {
      const ps = r.iova + k * this.t;
      const pe = Math.min(ps + this.t, r.iova + r.length);
      const lo = Math.max(ps, iova);
      const hi = Math.min(pe, end);
      if (hi <= lo) continue;
      for (let b = Math.floor((lo - iova) / p); b <= Math.floor((hi - 1 - iova) / p); b++) out[b >> 3]! |= 1 << (b & 7);
      if (ps >= iova && pe <= end) r.dirty.delete(k);
    }
    return out;
  }
}

function setBits(buf: Buffer): number[] {
  const out: number[] = [];
  const w = new Uint32Array(buf.buffer, buf.byteOffset, buf.length >> 2);
  for (let i = 0; i < w.length; i++) {
    if (w[i] === 0) continue;
    for (let b = 0; b < 32; b++) if (w[i]! & (1 << b)) out.push(i * 32 + b);
  }
  return out;
}

/** Tiny deterministic PRNG for the randomised rounds. */
function rng(seed: number): (n: number) => number {
  let x = seed >>> 0 || 1;
  return (n: number) => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x % n;
  };
}

function loggingStartRaw(c: VfioUserClient, pageSize: number, ranges: { iova: number; length: number }[], numRanges = ranges.length, argsz?: number) {
  const data = Buffer.alloc(LoggingControlStruct.size + ranges.length * LoggingRangeStruct.size);
  LoggingControlStruct.write(data, { pageSize: BigInt(pageSize), numRanges, reserved: 0 });
  ranges.forEach((r, i) =>
    LoggingRangeStruct.write(data, { iova: BigInt(r.iova), length: BigInt(r.length) }, LoggingControlStruct.size + i * LoggingRangeStruct.size),
  );
  const flags = Feature.DMA_LOGGING_START | FeatureFlag.SET;
  return c.conn.request(Command.DEVICE_FEATURE, Buffer.concat([FeatureStruct.encode({ argsz: argsz ?? 8 + data.length, flags }), data]));
}

function reportRaw(c: VfioUserClient, iova: number, length: number, pageSize: number, argsz: number) {
  const flags = Feature.DMA_LOGGING_REPORT | FeatureFlag.GET;
  const data = LoggingReportStruct.encode({ iova: BigInt(iova), length: BigInt(length), pageSize: BigInt(pageSize) });
  return c.conn.request(Command.DEVICE_FEATURE, Buffer.concat([FeatureStruct.encode({ argsz, flags }), data]));
}

describe('DMA dirty page logging', () => {
  let device: VfioUserDevice;
  let srv: Served;
  let c: VfioUserClient;
  const A = 0x100000;
  const B = 0x200000;
  const C = 0x400000;
  const D = 0x800000;
  const P = 0x1000000; // private (message) memory
  before(async () => {
    device = new VfioUserDevice({ name: 'logging', pci: { vendorId: 0x1234, deviceId: 0x0003 } });
    device.addRegion(PciRegion.BAR0, { size: 0x1000, memory: true });
    device.setupDma();
    srv = await serve(device);
    c = await srv.connect();
    c.memory.add(A, 64 * KiB);
    c.memory.add(B, 32 * KiB);
    c.memory.add(C, 16 * KiB);
    c.memory.add(D, 1 * MiB);
    c.memory.add(P, 64 * KiB, { shared: false });
    await c.dmaMap({ iova: A, size: 64 * KiB });
    await c.dmaMap({ iova: B, size: 32 * KiB });
  });
  after(async () => {
    await srv.close();
  });

  test('num_ranges 0 logs every mapped region, including ones mapped later', async () => {
    const ref = new Reference(4096);
    assert.equal(await c.startDirtyLogging(4096), 4096, 'page size echoed');
    ref.addRange(A, 64 * KiB);
    ref.addRange(B, 32 * KiB);
    const w = (iova: number, len: number) => {
      device.dma.writeSync(iova, Buffer.alloc(len, 1));
      ref.mark(iova, len);
    };
    w(A + 0x1005, 10);
    w(B + 0x6ff0, 32); // two pages
    await c.dmaMap({ iova: C, size: 16 * KiB });
    ref.addRange(C, 16 * KiB);
    w(C + 0x3fff, 1);
    // DMA_MAP and DMA_UNMAP of other regions do not disturb the logs
    await c.dmaMap({ iova: D, size: 1 * MiB });
    ref.addRange(D, 1 * MiB);
    await c.dmaUnmap(D, 1 * MiB);
    ref.removeRange(D);
    for (const [iova, len] of [
      [A, 64 * KiB],
      [B, 32 * KiB],
      [C, 16 * KiB],
    ] as const) {
      const expected = ref.report(iova, len, 4096);
      const got = await c.dirtyReport(iova, len, 4096);
      assert.ok(got.equals(expected), `range 0x${iova.toString(16)}`);
      assert.ok(setBits(got).length > 0);
    }
    assert.deepEqual(setBits(await c.dirtyReport(A, 64 * KiB, 4096)), [], 'cleared on read');
    assert.deepEqual(setBits(await c.dirtyReport(B, 32 * KiB, 4096)), []);
    // an unmapped region is no longer logged
    await c.dmaUnmap(C, 16 * KiB);
    await rejectsWith(c.dirtyReport(C, 16 * KiB, 4096), Errno.ENOENT);
    await rejectsWith(c.dirtyReport(D, 4096, 4096), Errno.ENOENT);
    // a report must lie inside one mapping
    await rejectsWith(c.dirtyReport(A + 60 * KiB, 8 * KiB, 4096), Errno.ENOENT);
    await c.stopDirtyLogging();
    await rejectsWith(c.dirtyReport(A, 4096, 4096), Errno.EINVAL);
  });

  test('mapping the same region again while logging, then unmapping it, leaves no stale log', async () => {
    await c.startDirtyLogging(4096);
    const bytes0 = device.logging.bitmapBytes;
    await c.dmaMap({ iova: A, size: 64 * KiB }); // identical: accepted, nothing new
    assert.equal(device.dma.count, 2);
    assert.equal(device.logging.bitmapBytes, bytes0);
    device.dma.writeSync(A + 0x3000, Buffer.alloc(1));
    assert.deepEqual(setBits(await c.dirtyReport(A, 64 * KiB, 4096)), [3]);
    await c.dmaUnmap(A, 64 * KiB);
    await rejectsWith(c.dirtyReport(A, 64 * KiB, 4096), Errno.ENOENT);
    await c.dmaMap({ iova: A, size: 64 * KiB });
    assert.deepEqual(setBits(await c.dirtyReport(A, 64 * KiB, 4096)), [], 'a fresh log for the new mapping');
    await c.stopDirtyLogging();
  });

  test('a mapping whose log would exceed the bitmap cap is refused (ENOMEM), not silently unlogged', async () => {
    await c.startDirtyLogging(4096);
    // 8 TiB served by messages (no descriptor): 256 MiB of bitmap at 4 KiB
    const big = 0x1000_0000_0000;
    const map = (size: number) =>
      c.conn.request(
        Command.DMA_MAP,
        DmaMapStruct.encode({ argsz: DmaMapStruct.size, flags: DmaMapFlag.READ | DmaMapFlag.WRITE, offset: 0n, addr: BigInt(big), size: BigInt(size) }),
      );
    await rejectsWith(map(8 * TiB), Errno.ENOMEM);
    assert.equal(device.dma.find(big), undefined, 'not mapped');
    await c.stopDirtyLogging();
    // without logging the same mapping is fine
    await map(8 * TiB);
    await rejectsWith(c.startDirtyLogging(4096), Errno.ENOMEM);
    await c.startDirtyLogging(2 * MiB);
    assert.deepEqual(setBits(await c.dirtyReport(big, 8 * TiB, 1 << 30)), []);
    await c.stopDirtyLogging();
    await c.dmaUnmap(big, 8 * TiB);
  });

  test('explicit ranges are honoured: nothing logged outside them', async () => {
    await c.dmaMap({ iova: C, size: 16 * KiB });
    const ref = new Reference(4096);
    const ranges = [
      { iova: A + 0x4000, length: 0x4000 },
      { iova: B, length: 0x1000 },
      { iova: B + 0x3000, length: 0x3000 },
    ];
    await c.startDirtyLogging(4096, ranges);
    for (const r of ranges) ref.addRange(r.iova, r.length);
    for (const at of [A + 0x1000, A + 0x5000, A + 0x7fff, A + 0x8000, B + 0x10, B + 0x2000, B + 0x4800, C]) {
      device.dma.writeSync(at, Buffer.alloc(2, 2));
      ref.mark(at, 2);
    }
    // D mapped while logging explicit ranges: not logged
    await c.dmaMap({ iova: D, size: 1 * MiB });
    device.dma.writeSync(D, Buffer.alloc(8));
    await rejectsWith(c.dirtyReport(D, 4096, 4096), Errno.ENOENT);
    for (const [iova, len] of [
      [A, 0x1000],
      [A + 0x3000, 0x2000], // straddles a range's start
      [A + 0x7000, 0x2000], // straddles its end
      [B + 0x1000, 0x1000],
      [B, 0x4000], // spans two ranges and the gap
      [C, 0x1000],
    ] as const) {
      await rejectsWith(c.dirtyReport(iova, len, 4096), Errno.ENOENT);
    }
    for (const r of ranges) {
      assert.ok((await c.dirtyReport(r.iova, r.length, 4096)).equals(ref.report(r.iova, r.length, 4096)));
    }
    assert.deepEqual(setBits(ref.report(A + 0x4000, 0x4000, 4096)), [], 'reference cleared too');
    await c.stopDirtyLogging();
    await c.dmaUnmap(D, 1 * MiB);
    await c.dmaUnmap(C, 16 * KiB);
  });

  for (const t of [4096, 16 * KiB, 64 * KiB]) {
    test(`any sub-range at page sizes around the tracking size ${t / KiB} KiB matches the reference`, async () => {
      await c.dmaMap({ iova: D, size: 1 * MiB });
      const ref = new Reference(t);
      await c.startDirtyLogging(t, t === 16 * KiB ? [{ iova: D, length: 1 * MiB }] : []);
      ref.addRange(A, 64 * KiB);
      ref.addRange(B, 32 * KiB);
      ref.addRange(D, 1 * MiB);
      if (t === 16 * KiB) {
        // explicit range: only D
        ref.removeRange(A);
        ref.removeRange(B);
      }
      const r = rng(t);
      const pageSizes = [512, 1024, 4096, 8192, 16 * KiB, 64 * KiB, 256 * KiB, 2 * MiB, 1 << 30];
      let nonEmpty = 0;
      for (let round = 0; round < 300; round++) {
        for (let k = r(4); k >= 0; k--) {
          const len = 1 + r(3 * t);
          const at = D + r(1 * MiB - len);
          device.dma.writeSync(at, Buffer.alloc(len, round & 0xff));
          ref.mark(at, len);
        }
        const p = pageSizes[r(pageSizes.length)]!;
        const len = 1 + r(1 * MiB);
        const iova = D + r(1 * MiB - len + 1);
        const expected = ref.report(iova, len, p);
        const got = await c.dirtyReport(iova, len, p);
        assert.ok(got.equals(expected), `round ${round}: [0x${iova.toString(16)}, +0x${len.toString(16)}) @${p}`);
        if (setBits(got).length) nonEmpty++;
      }
      assert.ok(nonEmpty > 100, 'most reports had dirty pages');
      // bits past the requested range stay zero, even with dirty pages there
      for (const p of [512, 4096, t]) {
        ref.report(D, 1 * MiB, 512);
        await c.dirtyReport(D, 1 * MiB, 512);
        device.dma.writeSync(D, Buffer.alloc(1 * MiB, 3)); // everything dirty
        ref.mark(D, 1 * MiB);
        const len = 5 * p + 1; // not a multiple of 64 pages
        const got = await c.dirtyReport(D + 2 * t, len, p);
        assert.ok(got.equals(ref.report(D + 2 * t, len, p)));
        assert.deepEqual(setBits(got), Array.from({ length: Math.ceil(len / p) }, (_, i) => i));
      }
      await c.stopDirtyLogging();
      await c.dmaUnmap(D, 1 * MiB);
    });
  }

  test('device writes mark pages; DMA_WRITE messages do not (the client tracks those)', async () => {
    await c.dmaMap({ iova: P, size: 64 * KiB });
    await c.startDirtyLogging(4096);
    const dma = device.dma;
    const priv = c.memory.find(P)!;
    const shared = c.memory.find(A)!;
    c.memory.takeMessageDirty(priv);
    c.memory.takeMessageDirty(shared);

    dma.writeSync(A + 0x0000, Buffer.alloc(4, 1)); // page 0
    await dma.write(A + 0x1ffe, Buffer.alloc(4, 2)); // pages 1, 2
    dma.view(A + 0x3000, 16, DmaMapFlag.READ | DmaMapFlag.WRITE).fill(3); // page 3
    dma.view(A + 0x4000, 16).readUInt8(0); // read-only view: not dirty
    dma.view(A + 0x5000, 16, DmaMapFlag.READ | DmaMapFlag.WRITE); // page 5 (marked at once)
    dma.markDirty(A + 0x6000, 0x1001); // pages 6, 7
    dma.readSync(A + 0x8000, Buffer.alloc(16)); // a read: not dirty
    await dma.read(A + 0x9000, Buffer.alloc(16));
    await dma.write(A + 0xa000, Buffer.alloc(16, 4), { messages: true }); // by message: not ours to log
    assert.deepEqual(setBits(await c.dirtyReport(A, 64 * KiB, 4096)), [0, 1, 2, 3, 5, 6, 7]);
    assert.deepEqual(c.memory.takeMessageDirty(shared), [10], 'the client saw its DMA_WRITE');
    assert.equal(shared.bytes[0xa000], 4);

    // a mapping without a descriptor: every write is a message
    assert.equal(dma.find(P)!.mode, 'message');
    await dma.write(P + 0x2100, Buffer.alloc(0x2000, 5));
    assert.deepEqual(setBits(await c.dirtyReport(P, 64 * KiB, 4096)), []);
    assert.deepEqual(c.memory.takeMessageDirty(priv), [2, 3, 4]);
    assert.equal(priv.bytes[0x2100], 5);
    // marking by hand works there too
    dma.markDirty(P + 0x8000, 1);
    assert.deepEqual(setBits(await c.dirtyReport(P, 64 * KiB, 4096)), [8]);
    await c.stopDirtyLogging();
    await c.dmaUnmap(P, 64 * KiB);
  });

  test('errors: page sizes, not logging, restarts, overlaps, argsz', async () => {
    await rejectsWith(c.dirtyReport(A, 4096, 4096), Errno.EINVAL); // not logging
    for (const bad of [3, 4097, 6144, 0]) await rejectsWith(c.startDirtyLogging(bad), Errno.EINVAL);
    await rejectsWith(c.dirtyReport(A, 4096, 4096), Errno.EINVAL); // still not logging
    assert.equal(await c.startDirtyLogging(8192), 8192);
    assert.equal(await c.startDirtyLogging(8192), 8192, 'the same page size again is a no-op');
    await rejectsWith(c.startDirtyLogging(4096), Errno.EINVAL); // another page size while logging
    for (const bad of [3, 1000, 4097, 0]) await rejectsWith(c.dirtyReport(A, 64 * KiB, bad), Errno.EINVAL);
    await rejectsWith(c.dirtyReport(A, 64 * KiB, 2 ** 41), Errno.EINVAL);
    await rejectsWith(c.dirtyReport(0x7000_0000, 4096, 4096), Errno.ENOENT); // never mapped
    await rejectsWith(c.dirtyReport(A, 0, 4096), Errno.EINVAL);
    // argsz without room for the bitmap
    await rejectsWith(reportRaw(c, A, 64 * KiB, 4096, 8 + 24), Errno.EINVAL);
    await rejectsWith(reportRaw(c, A, 64 * KiB, 4096, 8 + 24 + 7), Errno.EINVAL);
    const ok = await reportRaw(c, A, 64 * KiB, 4096, 8 + 24 + 8);
    assert.equal(ok.payload.length, 8 + 24 + 8);
    assert.equal(ok.payload.readUInt32LE(0), 8 + 24 + 8);
    // a range beyond 2^53, or wrapping
    await rejectsWith(reportRaw(c, 2 ** 60, 4096, 4096, 4096), Errno.EINVAL);
    await c.stopDirtyLogging();
    await c.stopDirtyLogging(); // stopping twice is harmless
    // STOP then START with another page size
    assert.equal(await c.startDirtyLogging(4096), 4096);
    device.dma.writeSync(A + 0x2000, Buffer.alloc(1));
    assert.deepEqual(setBits(await c.dirtyReport(A, 64 * KiB, 4096)), [2]);
    await c.stopDirtyLogging();
    // malformed START requests
    await rejectsWith(loggingStartRaw(c, 4096, [{ iova: A, length: 0x2000 }, { iova: A + 0x1000, length: 0x2000 }]), Errno.EINVAL); // overlap
    await rejectsWith(loggingStartRaw(c, 4096, [{ iova: A, length: 0 }]), Errno.EINVAL);
    await rejectsWith(loggingStartRaw(c, 4096, [{ iova: A, length: 0x1000 }], 2), Errno.EINVAL); // num_ranges says 2
    await rejectsWith(loggingStartRaw(c, 4096, [{ iova: A, length: 0x1000 }], 0), Errno.EINVAL); // says 0, carries 1
    await rejectsWith(loggingStartRaw(c, 4096, [{ iova: 2 ** 62, length: 0x1000 }]), Errno.EINVAL);
    await rejectsWith(loggingStartRaw(c, 4096, [{ iova: A, length: 0x1000 }], 1, 8), Errno.EINVAL); // argsz
    await rejectsWith(c.conn.request(Command.DEVICE_FEATURE, FeatureStruct.encode({ argsz: 8, flags: Feature.DMA_LOGGING_START | FeatureFlag.SET })), Errno.EINVAL);
    // none of that started anything
    await rejectsWith(c.dirtyReport(A, 4096, 4096), Errno.EINVAL);
    assert.equal(device.logging.active, false);
    assert.equal((await c.deviceInfo()).numRegions, 9);
  });

  test('the bitmap memory cap: ENOMEM, and nothing started', async () => {
    // 16 TiB at 4 KiB needs 512 MiB of bitmap: over the 256 MiB cap
    await rejectsWith(c.startDirtyLogging(4096, [{ iova: 0, length: 16 * TiB }]), Errno.ENOMEM);
    // so do two ranges that are each fine alone
    await rejectsWith(
      c.startDirtyLogging(4096, [
        { iova: 0, length: 6 * TiB },
        { iova: 8 * TiB, length: 6 * TiB },
      ]),
      Errno.ENOMEM,
    );
    await rejectsWith(c.startDirtyLogging(1, [{ iova: 0, length: 4 * 1024 * MiB }]), Errno.ENOMEM);
    assert.equal(device.logging.active, false);
    await c.startDirtyLogging(4096);
    assert.deepEqual(setBits(await c.dirtyReport(A, 64 * KiB, 4096)), []);
    await c.stopDirtyLogging();
  });

  test('1 TiB logged with an explicit range: bit indices far beyond 256', async () => {
    const base = TiB; // [1 TiB, 2 TiB)
    const pages = [300, 256, 257, 65_536 + 3, 2 ** 27 + 5, 2 ** 28 - 1];
    // a few pages of it are mapped; most are not
    for (const k of [300, 2 ** 27 + 5, 2 ** 28 - 1]) {
      c.memory.add(base + k * 4096, 4096);
      await c.dmaMap({ iova: base + k * 4096, size: 4096 });
    }
    await c.startDirtyLogging(4096, [{ iova: base, length: TiB }]);
    const markAll = () => {
      for (const k of pages) {
        if (device.dma.find(base + k * 4096)) device.dma.writeSync(base + k * 4096 + 100, Buffer.alloc(8, 9));
        else device.logging.mark(base + k * 4096, 1); // what device DMA to an unmapped page would log
      }
    };
    markAll();
    const whole = await c.dirtyReport(base, TiB, 4096);
    assert.equal(whole.length, 32 * MiB);
    assert.deepEqual(setBits(whole), [...pages].sort((a, b) => a - b));
    assert.deepEqual(setBits(await c.dirtyReport(base, TiB, 4096)), [], 'cleared');
    markAll();
    // sub-ranges far in, at other page sizes
    assert.deepEqual(setBits(await c.dirtyReport(base + 256 * 4096, 64 * 4096, 4096)), [0, 1, 44]);
    assert.deepEqual(setBits(await c.dirtyReport(base + (2 ** 27) * 4096, 16 * 4096, 1024)), [20, 21, 22, 23]);
    markAll();
    assert.deepEqual(setBits(await c.dirtyReport(base, TiB, 2 * MiB)), [0, 128, 2 ** 18, 2 ** 19 - 1]);
    markAll();
    assert.deepEqual(setBits(await c.dirtyReport(base, TiB, 1 << 30)), [0, 512, 1023]);
    markAll();
    assert.deepEqual(setBits(await c.dirtyReport(base, TiB, TiB)), [0]);
    await c.stopDirtyLogging();
    for (const k of [300, 2 ** 27 + 5, 2 ** 28 - 1]) await c.dmaUnmap(base + k * 4096, 4096);
  });
});

describe('DMA logging: the client\'s bitmap limit', () => {
  let srv: Served;
  let device: VfioUserDevice;
  before(async () => {
    device = new VfioUserDevice({ name: 'logging2', pci: { vendorId: 0x1234, deviceId: 0x0004 } });
    device.setupDma();
    srv = await serve(device);
  });
  after(async () => {
    await srv.close();
  });

  test('a report larger than the client\'s max_bitmap_size is E2BIG', async () => {
    const c = await srv.connect({ maxBitmapSize: 4096 });
    await c.startDirtyLogging(4096, [{ iova: 0, length: 1 << 30 }]); // 32 KiB of bitmap
    await rejectsWith(c.dirtyReport(0, 1 << 30, 4096), Errno.E2BIG);
    assert.equal((await c.dirtyReport(0, 4096 * 8 * 4096, 4096)).length, 4096);
    device.logging.mark(5 * 4096, 1);
    assert.deepEqual(setBits(await c.dirtyReport(0, 1 << 30, 1 << 20)), [0]);
    c.close();
    // a client that goes away stops logging
    await until(() => srv.server.session === null);
    assert.equal(device.logging.active, false);
  });
});
