// Dirty page bitmaps against a naive per-page model written here: one byte
// per tracked page, and the report definition applied literally (output bit n
// is set iff a dirty tracked page overlaps report page n clipped to the range).
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import fc from 'fast-check';
import { Errno } from '../src/protocol/constants.js';
import { VfuError } from '../src/protocol/errors.js';
import { DirtyBitmap, DirtyLog, bitmapSize } from '../src/migration/dirty.js';
import { native } from '../src/native/index.js';

class Model {
  readonly dirty: Uint8Array;
  constructor(readonly iova: number, readonly length: number, readonly t: number) {
    this.dirty = new Uint8Array(Math.ceil(length / t));
  }
  mark(addr: number, len: number): void {
    const a = Math.max(addr, this.iova) - this.iova;
    const e = Math.min(addr + len, this.iova + this.length) - this.iova;
    if (len <= 0 || e <= a) return;
    for (let k = Math.floor(a / this.t); k < Math.ceil(e / this.t); k++) this.dirty[k] = 1;
  }
  report(iova: number, length: number, p: number): Buffer {
    const r = iova - this.iova;
    const n = Math.ceil(length / p);
    const out = Buffer.alloc(Math.ceil(n / 64) * 8);
    for (let i = 0; i < n; i++) {
      const lo = r + i * p;
      const hi = Math.min(r + (i + 1) * p, r + length);
      for (let k = Math.floor(lo / this.t); k < Math.ceil(hi / this.t); k++)
        if (this.dirty[k]) {
          out[i >> 3]! |= 1 << (i & 7);
          break;
        }
    }
    for (let k = 0; k < this.dirty.length; k++) {
      const start = k * this.t;
      const end = Math.min((k + 1) * this.t, this.length);
      if (start >= r && end <= r + length) this.dirty[k] = 0;
    }
    return out;
  }
  count(): number {
    return this.dirty.reduce((a, b) => a + b, 0);
  }
}

function errno(fn: () => unknown, expected: number): void {
  assert.throws(fn, (e: unknown) => e instanceof VfuError && e.errno === expected, `expected errno ${expected}`);
}

function setBits(buf: Buffer): number[] {
  const out: number[] = [];
  for (let i = 0; i < buf.length; i++) if (buf[i]) for (let b = 0; b < 8; b++) if (buf[i]! & (1 << b)) out.push(i * 8 + b);
  return out;
}

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

test('bitmapSize rounds pages up, then to u64 words', () => {
  assert.equal(bitmapSize(0, 4096), 0);
  assert.equal(bitmapSize(1, 4096), 8);
  assert.equal(bitmapSize(4096 * 64, 4096), 8);
  assert.equal(bitmapSize(4096 * 64 + 1, 4096), 16);
  assert.equal(bitmapSize(64 * GiB, 4096), 2 * MiB);
  assert.equal(bitmapSize(64 * GiB, 512), 16 * MiB);
  assert.equal(bitmapSize(64 * GiB, 2 * MiB), 4 * KiB);
  errno(() => bitmapSize(4096, 3000), Errno.EINVAL);
  errno(() => bitmapSize(-1, 4096), Errno.EINVAL);
});

test('bit indices far past 256 do not wrap (100k pages, every ratio)', () => {
  const pages = 100_000;
  const iova = 0x10_0000_0000;
  const marked = [0, 1, 255, 256, 257, 300, 511, 512, 65535, 65536, 77777, 99_999];
  for (const p of [512, 1024, 2048, 4096, 8192, 65536, 2 * MiB]) {
    const bm = new DirtyBitmap(iova, pages * 4096, 4096);
    for (const k of marked) bm.mark(iova + k * 4096 + 7, 1);
    assert.equal(bm.dirtyCount(), marked.length);
    const out = Buffer.alloc(bitmapSize(pages * 4096, p));
    bm.report(iova, pages * 4096, p, out);
    const expect = new Set<number>();
    for (const k of marked) {
      if (p <= 4096) for (let j = 0; j < 4096 / p; j++) expect.add((k * 4096) / p + j);
      else expect.add(Math.floor((k * 4096) / p));
    }
    assert.deepEqual(setBits(out), [...expect].sort((a, b) => a - b), `page size ${p}`);
    assert.equal(bm.dirtyCount(), 0, 'a full report clears everything');
  }
});

test('clear on read: fully covered pages clear, partly covered pages survive', () => {
  const iova = 1 << 20;
  const bm = new DirtyBitmap(iova, 16 * 4096, 4096);
  bm.mark(iova + 4096 + 10, 1); // page 1
  bm.mark(iova + 2 * 4096, 4096); // page 2
  const out = Buffer.alloc(8);
  // [4096+100, 8192+100) touches pages 1 and 2 but covers neither; at 2 KiB
  // the report pages are [4196,6244) [6244,8292) -> pages 1 | 1,2.
  bm.report(iova + 4096 + 100, 4096, 2048, out);
  assert.deepEqual(setBits(out), [0, 1]);
  bm.report(iova + 4096 + 100, 4096, 4096, out);
  assert.deepEqual(setBits(out), [0], 'nothing was cleared');
  bm.report(iova + 4096 + 100, 2048, 1024, out); // [4196, 6244): page 1 only
  assert.deepEqual(setBits(out), [0, 1]);
  // [4096, 8192) covers page 1 exactly.
  bm.report(iova + 4096, 4096, 4096, out);
  assert.deepEqual(setBits(out), [0]);
  bm.report(iova + 4096, 4096, 4096, out);
  assert.deepEqual(setBits(out), []);
  assert.equal(bm.dirtyCount(), 1, 'page 2 is still dirty');
  bm.report(iova, 16 * 4096, 4096, out);
  assert.deepEqual(setBits(out), [2]);
  bm.report(iova, 16 * 4096, 4096, out);
  assert.deepEqual(setBits(out), [], 'second full report is empty');
  bm.mark(iova + 15 * 4096, 1);
  bm.report(iova, 16 * 4096, 4096, out);
  assert.deepEqual(setBits(out), [15], 're-marked after a report');
});

test('a partial last tracked page counts, and reaching the range end covers it', () => {
  const bm = new DirtyBitmap(0, 10_000, 4096); // pages [0,4096) [4096,8192) [8192,10000)
  assert.equal(bm.pages, 3);
  bm.mark(9_999, 100); // clipped to the range
  bm.mark(10_000, 5); // outside
  bm.mark(-50, 10); // outside
  assert.equal(bm.dirtyCount(), 1);
  const out = Buffer.alloc(8);
  bm.report(8192, 1808, 512, out);
  assert.deepEqual(setBits(out), [0, 1, 2, 3]); // 1808 bytes = 4 report pages, all in tracked page 2
  assert.equal(bm.dirtyCount(), 0);
  bm.markAll();
  assert.equal(bm.dirtyCount(), 3);
  bm.report(0, 10_000, 8192, out);
  assert.deepEqual(setBits(out), [0, 1]);
  bm.markAll();
  bm.clear();
  assert.equal(bm.dirtyCount(), 0);
});

test('output words: trailing bits zero, garbage overwritten, unaligned offsets', () => {
  const bm = new DirtyBitmap(0, 200 * 4096, 4096);
  bm.markAll();
  for (const off of [0, 1, 3, 4, 5, 8]) {
    bm.markAll();
    const out = Buffer.alloc(off + bitmapSize(200 * 4096, 4096) + 4, 0xa5);
    bm.report(0, 200 * 4096, 4096, out, off);
    assert.ok(out.subarray(0, off).every((b) => b === 0xa5), 'prefix untouched');
    assert.ok(out.subarray(off + 32).every((b) => b === 0xa5), 'suffix untouched');
    const words = [0, 1, 2, 3].map((i) => out.readBigUInt64LE(off + i * 8));
    assert.deepEqual(words, [2n ** 64n - 1n, 2n ** 64n - 1n, 2n ** 64n - 1n, 2n ** 8n - 1n]);
  }
});

test('DirtyBitmap argument errors', () => {
  errno(() => new DirtyBitmap(0, 4096, 3000), Errno.EINVAL);
  errno(() => new DirtyBitmap(0, 0, 4096), Errno.EINVAL);
  errno(() => new DirtyBitmap(-4096, 4096, 4096), Errno.EINVAL);
  errno(() => new DirtyBitmap(2 ** 53, 4096, 4096), Errno.EINVAL);
  errno(() => new DirtyBitmap(0, 2 ** 52, 1), Errno.ENOMEM);
  const bm = new DirtyBitmap(0x1000, 64 * 4096, 4096);
  const out = Buffer.alloc(64);
  for (const p of [0, -4096, 3000, 1.5, NaN, 4097]) errno(() => bm.report(0x1000, 4096, p, out), Errno.EINVAL);
  errno(() => bm.report(0, 4096, 4096, out), Errno.EINVAL); // starts before
  errno(() => bm.report(0x1000 + 63 * 4096, 4097, 4096, out), Errno.EINVAL); // runs past
  errno(() => bm.report(0x1000, 0, 4096, out), Errno.EINVAL);
  errno(() => bm.report(0x1000, 64 * 4096, 512, Buffer.alloc(63)), Errno.EINVAL); // needs 64 bytes
  errno(() => bm.report(0x1000, 64 * 4096, 512, out, 1), Errno.EINVAL);
  bm.report(0x1000, 64 * 4096, 512, out);
});

test('DirtyLog: start/stop, errors and errnos', () => {
  const log = new DirtyLog({ maxBitmapBytes: 1024 });
  assert.equal(log.active, false);
  assert.equal(log.pageSize, 0);
  log.mark(0, 4096); // not logging: ignored
  const out = Buffer.alloc(1024);
  errno(() => log.report(0, 4096, 4096, out), Errno.EINVAL);
  errno(() => log.start(4096, []), Errno.EINVAL);
  errno(() => log.start(3000, [{ iova: 0, length: 4096 }]), Errno.EINVAL);
  errno(() => log.start(4096, [{ iova: 0, length: 0 }]), Errno.EINVAL);
  errno(() => log.start(4096, [{ iova: 0, length: 8192 }, { iova: 4096, length: 4096 }]), Errno.EINVAL);
  errno(() => log.start(4096, [{ iova: 1 << 30, length: 1 << 20 }, { iova: 0, length: 1 << 30 }]), Errno.ENOMEM); // 32 KiB > 1 KiB
  assert.equal(log.active, false, 'failed starts leave it stopped');
  // Adjacent ranges are fine, given in any order.
  log.start(4096, [{ iova: 1 << 20, length: 1 << 20 }, { iova: 0, length: 1 << 20 }, { iova: 8 << 20, length: 4096 }]);
  assert.equal(log.active, true);
  assert.equal(log.pageSize, 4096);
  assert.equal(log.bitmapBytes, 32 + 32 + 4);
  assert.deepEqual(log.ranges, [{ iova: 0, length: 1 << 20 }, { iova: 1 << 20, length: 1 << 20 }, { iova: 8 << 20, length: 4096 }]);
  // Again at the same page size: nothing changes (libvfio-user); another page size: EINVAL.
  log.start(4096, [{ iova: 0, length: 4096 }]);
  assert.equal(log.ranges.length, 3, 'the ranges of the first start stay');
  errno(() => log.start(8192, [{ iova: 0, length: 4096 }]), Errno.EINVAL);
  errno(() => log.start(8192, null), Errno.EINVAL);
  assert.equal(log.pageSize, 4096);
  errno(() => log.report(2 << 20, 4096, 4096, out), Errno.ENOENT); // in a gap
  errno(() => log.report((1 << 20) - 4096, 8192, 4096, out), Errno.ENOENT); // straddles two ranges
  errno(() => log.report((8 << 20) + 4096, 1, 4096, out), Errno.ENOENT); // past the last
  errno(() => log.report(2 << 20, 4096, 1000, out), Errno.EINVAL); // bad page size wins
  errno(() => log.report(0, 4096, 4096, Buffer.alloc(4)), Errno.EINVAL);
  // Marks spanning a range boundary and a gap land in both ranges.
  log.mark((1 << 20) - 1, 2);
  log.mark((2 << 20) - 1, 8 << 20); // end of range 2, the gap, all of range 3
  log.mark(100, 1); // lastHit fast path switches ranges correctly
  log.mark((1 << 20) + 5 * 4096, 1);
  log.mark(200, 1);
  assert.equal(log.dirtyCount(), 6);
  log.report(0, 1 << 20, 1 << 20, out);
  assert.deepEqual(setBits(out.subarray(0, 8)), [0]);
  log.report(1 << 20, 1 << 20, 4096, out);
  assert.deepEqual(setBits(out.subarray(0, 32)), [0, 5, 255]);
  log.report(8 << 20, 4096, 4096, out);
  assert.deepEqual(setBits(out.subarray(0, 8)), [0]);
  assert.equal(log.dirtyCount(), 0);
  log.markAll();
  assert.equal(log.dirtyCount(), 256 + 256 + 1);
  log.stop();
  assert.equal(log.active, false);
  assert.equal(log.bitmapBytes, 0);
  errno(() => log.report(0, 4096, 4096, out), Errno.EINVAL);
  log.start(512, [{ iova: 0, length: 4096 }]);
  assert.equal(log.pageSize, 512);
});

test('64 GiB at 4 KiB: spot checks of 2 MiB and 512 B reports', () => {
  const iova = 0x1_0000_0000;
  const len = 64 * GiB;
  const log = new DirtyLog();
  log.start(4096, [{ iova, length: len }]);
  assert.equal(log.bitmapBytes, 2 * MiB);
  const pages = [0, 1, 511, 512, 4_000_000, 16 * 1024 * 1024 - 1];
  for (const k of pages) log.mark(iova + k * 4096, 4096);
  const big = Buffer.alloc(bitmapSize(len, 2 * MiB));
  log.report(iova, len, 2 * MiB, big);
  assert.deepEqual(setBits(big), [...new Set(pages.map((k) => Math.floor(k / 512)))]);
  for (const k of pages) log.mark(iova + k * 4096, 4096);
  const small = Buffer.alloc(bitmapSize(len, 512));
  log.report(iova, len, 512, small);
  assert.deepEqual(setBits(small), pages.flatMap((k) => [0, 1, 2, 3, 4, 5, 6, 7].map((j) => k * 8 + j)));
});

test('exhaustive: one dirty page at every position, every ratio, awkward starts', () => {
  // Single set bits are what expose word-boundary carries (bit 31 <- bit 32).
  const t = 4096;
  const pages = 100;
  const length = pages * t - 1000; // partial last page
  const iova = 0x7_0000_0000 + 3 * t;
  let n = 0;
  for (const p of [512, 1024, 2048, 4096, 8192, 16384, 65536, 128 * KiB, 256 * KiB]) {
    for (const start of [0, 1, 511, 512, 513, 4095, 4096, 4097, 31 * t + 100, 32 * t - 1, 33 * t, 64 * t + 2047]) {
      for (const rest of [true, false]) {
        const len = rest ? length - start : Math.min(length - start, 40 * t + 1234);
        for (let k = 0; k < pages; k++) {
          const bm = new DirtyBitmap(iova, length, t);
          const model = new Model(iova, length, t);
          bm.mark(iova + k * t, 1);
          model.mark(iova + k * t, 1);
          const want = model.report(iova + start, len, p);
          const got = Buffer.alloc(want.length, 0xff);
          bm.report(iova + start, len, p, got);
          if (!got.equals(want)) assert.deepEqual(setBits(got), setBits(want), `p=${p} start=${start} len=${len} page ${k}`);
          assert.equal(bm.dirtyCount(), model.count(), `p=${p} start=${start} len=${len} page ${k}: clearing`);
          n++;
        }
      }
    }
  }
  assert.equal(n, 9 * 12 * 2 * 100);
});

// ---------------------------------------------------------------------------
// Property tests against the model.

type Op =
  | { kind: 'mark'; at: number; len: number }
  | { kind: 'page'; at: number; len: number }
  | { kind: 'report'; pExp: number; mode: number; u1: number; u2: number; outOff: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('page' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 3 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('mark' as const), at: fc.double({ min: -0.05, max: 1.05, noNaN: true }), len: fc.oneof(fc.integer({ min: 1, max: 5000 }), fc.integer({ min: 1, max: 2 ** 30 })) }) },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('report' as const),
      pExp: fc.integer({ min: 9, max: 22 }),
      mode: fc.integer({ min: 0, max: 4 }),
      u1: fc.nat(),
      u2: fc.nat(),
      outOff: fc.integer({ min: 0, max: 9 }),
    }),
  },
);

const scenarioArb = fc.record({
  tExp: fc.integer({ min: 9, max: 21 }),
  pages: fc.oneof(fc.integer({ min: 1, max: 40 }), fc.integer({ min: 200, max: 3000 })),
  partial: fc.nat(),
  iovaMode: fc.integer({ min: 0, max: 2 }),
  iovaU: fc.integer({ min: 0, max: 2 ** 20 }),
  ops: fc.array(opArb, { minLength: 1, maxLength: 16 }),
});

/** Report sub-range for a mode: full, tracked-aligned, report-aligned, or arbitrary. */
function subRange(length: number, t: number, p: number, op: Extract<Op, { kind: 'report' }>): [number, number] {
  let start: number;
  switch (op.mode) {
    case 0:
      return [0, length];
    case 1:
      start = (op.u1 % Math.ceil(length / t)) * t;
      break;
    case 2:
      start = Math.min((op.u1 % Math.ceil(length / p)) * p, length - 1);
      break;
    default:
      start = op.u1 % length;
  }
  const rest = length - start;
  const len = op.mode === 4 ? rest : 1 + (op.u2 % rest);
  return [start, len];
}

test('property: report() equals the per-page model for random marks, sub-ranges and page sizes', () => {
  let reports = 0;
  let beyond256 = 0;
  fc.assert(
    fc.property(scenarioArb, (sc) => {
      const t = 2 ** sc.tExp;
      const length = sc.partial % 2 === 0 ? sc.pages * t : (sc.pages - 1) * t + 1 + (sc.partial % (t - 1));
      const iova = sc.iovaMode === 0 ? 0 : sc.iovaMode === 1 ? sc.iovaU * t : sc.iovaU * 4099 + 12345;
      const bm = new DirtyBitmap(iova, length, t);
      const model = new Model(iova, length, t);
      for (const op of sc.ops) {
        if (op.kind === 'mark' || op.kind === 'page') {
          // 'page' dirties exactly one tracked page: sparse bitmaps find carry bugs.
          const at = iova + (op.kind === 'mark' ? Math.floor(op.at * length) : (op.at % Math.ceil(length / t)) * t);
          bm.mark(at, op.len);
          model.mark(at, op.len);
        } else {
          const p = 2 ** op.pExp;
          let [start, len] = subRange(length, t, p, op);
          // Keep the model's per-bit loop affordable (still far past 256 bits).
          len = Math.min(len, p * 200_000);
          const want = model.report(iova + start, len, p);
          const out = Buffer.alloc(op.outOff + want.length + 3, 0x5a);
          bm.report(iova + start, len, p, out, op.outOff);
          const got = out.subarray(op.outOff, op.outOff + want.length);
          assert.ok(out.subarray(0, op.outOff).every((b) => b === 0x5a));
          assert.ok(out.subarray(op.outOff + want.length).every((b) => b === 0x5a));
          if (!got.equals(want)) {
            assert.deepEqual(setBits(got), setBits(want), `t=${t} p=${p} iova=${iova} length=${length} report [${start}, +${len})`);
          }
          reports++;
          if (Math.ceil(len / p) > 256) beyond256++;
        }
        assert.equal(bm.dirtyCount(), model.count());
      }
    }),
    { numRuns: 400 },
  );
  assert.ok(beyond256 > reports / 10, `${beyond256} of ${reports} reports went past 256 bits`);
  console.log(`# ${reports} reports compared, ${beyond256} of them past 256 bits`);
});

test('property: DirtyLog over several ranges matches one model per range', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 9, max: 16 }),
      fc.array(fc.record({ gap: fc.integer({ min: 0, max: 3 }), pages: fc.integer({ min: 1, max: 600 }), extra: fc.nat({ max: 511 }) }), { minLength: 1, maxLength: 5 }),
      fc.array(fc.tuple(fc.double({ min: 0, max: 1, noNaN: true }), fc.integer({ min: 1, max: 1 << 18 })), { maxLength: 30 }),
      fc.integer({ min: 9, max: 18 }),
      (tExp, spec, marks, pExp) => {
        const t = 2 ** tExp;
        const ranges: { iova: number; length: number }[] = [];
        let at = 0x4000_0000;
        for (const s of spec) {
          at += s.gap * t;
          const length = s.pages * t + s.extra;
          ranges.push({ iova: at, length });
          at += length;
        }
        const log = new DirtyLog();
        log.start(t, [...ranges].reverse());
        const models = ranges.map((r) => new Model(r.iova, r.length, t));
        const span = at - ranges[0]!.iova;
        for (const [u, len] of marks) {
          const a = ranges[0]!.iova + Math.floor(u * span);
          log.mark(a, len);
          for (const m of models) m.mark(a, len);
        }
        const p = 2 ** pExp;
        for (const [i, r] of ranges.entries()) {
          const want = models[i]!.report(r.iova, r.length, p);
          const out = Buffer.alloc(want.length);
          log.report(r.iova, r.length, p, out);
          assert.ok(out.equals(want), `range ${i}`);
        }
        assert.equal(log.dirtyCount(), 0);
      },
    ),
    { numRuns: 150 },
  );
});

test('DirtyLog: every mapping logged, mappings added and removed while logging', () => {
  const log = new DirtyLog({ maxBitmapBytes: 64 });
  const out = Buffer.alloc(64);
  log.onMap(0, 4096); // not logging: nothing to do
  log.start(4096, null, [{ iova: 1 << 20, length: 32 * 4096 }]);
  assert.equal(log.bitmapBytes, 4);
  log.checkMap(1 << 20, 32 * 4096); // the same mapping again costs nothing
  log.onMap(1 << 20, 32 * 4096);
  assert.equal(log.ranges.length, 1);
  errno(() => log.checkMap(0, 512 * 4096), Errno.ENOMEM); // 64 more bytes > 64 - 4
  log.checkMap(0, 4096);
  log.onMap(0, 4096);
  assert.deepEqual(log.ranges, [{ iova: 0, length: 4096 }, { iova: 1 << 20, length: 32 * 4096 }]);
  log.mark(0, (1 << 20) + 4096); // both ranges, across the gap
  assert.equal(log.dirtyCount(), 2);
  log.onUnmap(0, 8192); // not that extent: kept
  assert.equal(log.ranges.length, 2);
  log.onUnmap(0, 4096);
  assert.equal(log.bitmapBytes, 4);
  errno(() => log.report(0, 4096, 4096, out), Errno.ENOENT);
  log.report(1 << 20, 32 * 4096, 4096, out);
  assert.deepEqual(setBits(out.subarray(0, 8)), [0]);
  log.onUnmapAll();
  assert.equal(log.ranges.length, 0);
  assert.equal(log.bitmapBytes, 0);
  assert.equal(log.active, true, 'logging stays on for later mappings');
  log.onMap(8192, 4096);
  log.mark(8192, 1);
  log.report(8192, 4096, 4096, out);
  assert.deepEqual(setBits(out.subarray(0, 8)), [0]);
  log.stop();
  // Given ranges: mappings come and go without touching them.
  log.start(4096, [{ iova: 0, length: 4096 }]);
  log.onMap(1 << 20, 4096);
  log.onUnmap(0, 4096);
  log.onUnmapAll();
  assert.deepEqual(log.ranges, [{ iova: 0, length: 4096 }]);
});

test('property: DirtyLog logging every mapping through maps and unmaps matches one model per mapping', () => {
  // What the server does: start over the current mappings, then DMA_MAP /
  // DMA_UNMAP / UNMAP_ALL while the device writes, with reports between.
  const t = 4096;
  const slot = 64 * t; // slot i holds at most one mapping, at i * slot
  const op = fc.oneof(
    fc.record({ k: fc.constant('map' as const), i: fc.nat({ max: 15 }), pages: fc.integer({ min: 1, max: 64 }) }),
    fc.record({ k: fc.constant('unmap' as const), i: fc.nat({ max: 15 }) }),
    fc.record({ k: fc.constant('unmapAll' as const) }),
    fc.record({ k: fc.constant('mark' as const), at: fc.nat({ max: 16 * slot }), len: fc.integer({ min: 1, max: 3 * slot }) }),
    fc.record({ k: fc.constant('report' as const), i: fc.nat({ max: 15 }), pExp: fc.integer({ min: 9, max: 16 }) }),
  );
  fc.assert(
    fc.property(fc.array(fc.nat({ max: 15 }), { maxLength: 5 }), fc.array(op, { maxLength: 60 }), (initial, ops) => {
      const mapped = new Map<number, Model>();
      for (const i of new Set(initial)) mapped.set(i, new Model(i * slot, 8 * t, t));
      const log = new DirtyLog();
      log.start(t, null, [...mapped.values()].map((m) => ({ iova: m.iova, length: m.length })));
      for (const o of ops) {
        if (o.k === 'map') {
          if (mapped.has(o.i)) continue; // the table refuses overlaps before the log sees them
          log.checkMap(o.i * slot, o.pages * t);
          log.onMap(o.i * slot, o.pages * t);
          mapped.set(o.i, new Model(o.i * slot, o.pages * t, t));
        } else if (o.k === 'unmap') {
          const m = mapped.get(o.i);
          if (m === undefined) continue;
          log.onUnmap(m.iova, m.length);
          mapped.delete(o.i);
        } else if (o.k === 'unmapAll') {
          log.onUnmapAll();
          mapped.clear();
        } else if (o.k === 'mark') {
          log.mark(o.at, o.len);
          for (const m of mapped.values()) m.mark(o.at, o.len);
        } else {
          const m = mapped.get(o.i);
          const p = 2 ** o.pExp;
          if (m === undefined) {
            errno(() => log.report(o.i * slot, t, p, Buffer.alloc(8)), Errno.ENOENT);
            continue;
          }
          const want = m.report(m.iova, m.length, p);
          const got = Buffer.alloc(want.length, 0xff);
          log.report(m.iova, m.length, p, got);
          assert.ok(got.equals(want), `report of mapping ${o.i} at ${p}`);
        }
        assert.deepEqual(
          log.ranges,
          [...mapped.entries()].sort((a, b) => a[0] - b[0]).map(([, m]) => ({ iova: m.iova, length: m.length })),
        );
      }
      let n = 0;
      for (const m of mapped.values()) n += m.count();
      assert.equal(log.dirtyCount(), n);
    }),
    { numRuns: 300 },
  );
});

test('the addon\'s spreadBits8 (4 KiB -> 512 B refinement) matches the bit-by-bit definition at every shift and end, folded or not; bad arguments are refused', (t) => {
  if (native === null) return t.skip('no native addon: the JS loop alone is in use');
  const n = native;
  fc.assert(
    fc.property(
      fc.uint32Array({ maxLength: 80 }),
      fc.integer({ min: 0, max: 330 }),
      fc.oneof(fc.integer({ min: 0, max: 7 }), fc.integer({ min: 0, max: 3000 })),
      fc.boolean(),
      fc.oneof(fc.constant(2 ** 40), fc.integer({ min: -1, max: 2700 })),
      (src, words, shift, fold, bits) => {
        const dst = new Uint8Array(words * 8 + 8).fill(0x5a);
        assert.equal(n.spreadBits8(src, dst, words, shift, fold, bits), words);
        const bytes = new Uint8Array(src.buffer, src.byteOffset, src.byteLength);
        // bit q of the expansion: source bit floor(q / 8), zero from `bits` on and past the end
        const e = (q: number): number => {
          const j = Math.floor(q / 8);
          return j < bits && j >>> 3 < bytes.length ? (bytes[j >>> 3]! >>> (j & 7)) & 1 : 0;
        };
        for (let k = 0; k < words * 64; k++) {
          const want = e(k + shift) | (fold ? e(k + shift + 1) : 0);
          assert.equal((dst[k >>> 3]! >>> (k & 7)) & 1, want, `bit ${k}`);
        }
        for (let k = words * 8; k < dst.length; k++) assert.equal(dst[k], 0x5a, 'nothing written past n words');
      },
    ),
    { numRuns: 300 },
  );
  const src = new Uint32Array(4).fill(0xffffffff);
  const all = 2 ** 40;
  assert.equal(n.spreadBits8(src, new Uint8Array(127), 16, 0, false, all), -Errno.EINVAL, 'dst one byte short');
  assert.equal(n.spreadBits8(src, new Uint8Array(128), -1, 0, false, all), -Errno.EINVAL);
  assert.equal(n.spreadBits8(src, new Uint8Array(128), 16, -1, true, all), -Errno.EINVAL, 'negative shift');
  assert.equal(n.spreadBits8(src.subarray(1), new Float64Array(16).subarray(5), 12, 0, false, all), -Errno.EINVAL, 'views count from their own start');
  assert.equal(n.spreadBits8(src.subarray(1), new Float64Array(16).subarray(5), 11, 0, false, all), 11);
  const gone = new Uint32Array(new ArrayBuffer(64));
  structuredClone(gone.buffer, { transfer: [gone.buffer] }); // detached: read as empty
  const out = new Uint8Array(64).fill(1);
  assert.equal(n.spreadBits8(gone, out, 8, 0, false, all), 8);
  assert.ok(out.every((b) => b === 0));
  assert.equal(n.spreadBits8(src, gone, 1, 0, false, all), -Errno.EINVAL);
});

test('512 B reports of a 4 KiB-tracked range with random dirt, large enough for the addon\'s loop, at aligned and awkward starts', () => {
  const t = 4096;
  const pages = 70_000; // ~2200 words of tracked bits
  const iova = 0x2_0000_0000;
  const length = pages * t - 123;
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 64, maxLength: 64 }), fc.constantFrom(0, 0, 512, 3 * 512, 4096 + 7), (seed, skip) => {
      const bm = new DirtyBitmap(iova, length, t);
      const model = new Model(iova, length, t);
      // a pseudo-random ~6% of pages, with runs, from the seed
      let x = (seed[0]! | (seed[1]! << 8) | (seed[2]! << 16)) + 1;
      for (let k = 0; k < pages; k++) {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        if ((x >>> 0) % 100 < seed[3]! % 12) {
          bm.mark(iova + k * t, 1);
          model.mark(iova + k * t, 1);
        }
      }
      const want = model.report(iova + skip, length - skip, 512);
      const got = Buffer.alloc(want.length, 0xff);
      bm.report(iova + skip, length - skip, 512, got);
      assert.ok(got.equals(want));
    }),
    { numRuns: 20 },
  );
});

test("the addon's copyDirty copies exactly the pages marked, at any destination alignment and mapping end, and takes the marks", (t) => {
  if (native === null) return t.skip('no native addon: the walk copies run by run in JS');
  const n = native;
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 40 }), // pages
      fc.integer({ min: 0, max: 4095 }), // the last page's shortfall
      fc.integer({ min: 0, max: 15 }), // dst misalignment (streaming stores need 16)
      fc.integer({ min: 0, max: 9 }), // host flags' base
      fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 3 })), { maxLength: 30 }), // marks: pending, bit, cpu, msg
      (pages, short, skew, base, marks) => {
        const size = Math.max(1, pages * 4096 - short);
        const src = Buffer.alloc(size);
        for (let i = 0; i < size; i++) src[i] = (i * 131 + 7) & 0xff;
        const dst = Buffer.alloc(size + skew + 8, 0xee).subarray(skew, skew + size);
        const pend = new Uint8Array(pages);
        const bm = Buffer.alloc(Math.ceil(pages / 8));
        const cpu = new Uint8Array(base + pages + 2);
        const msg = new Uint8Array(base + pages + 2);
        cpu[base + pages] = 1; // past the mapping: stays
        const dirty = new Set<number>();
        for (const [x, kind] of marks) {
          const p = x % pages;
          dirty.add(p);
          if (kind === 0) pend[p] = 1;
          else if (kind === 1) bm[p >> 3]! |= 1 << (p & 7);
          else (kind === 2 ? cpu : msg)[base + p] = 1;
        }
        const want = Buffer.from(dst);
        let bytes = 0;
        for (const p of dirty) {
          const e = Math.min(size, (p + 1) * 4096);
          src.copy(want, p * 4096, p * 4096, e);
          bytes += e - p * 4096;
        }
        const marked = pend.reduce((a, b) => a + b, 0);
        const noBits = !marks.some(([, k]) => k === 1); // then null does as well as an empty bitmap
        const out = new Float64Array(3);
        assert.equal(n.copyDirty(dst, src, pend, noBits && marks.length % 2 === 0 ? null : bm, cpu, msg, base, 4096, out), 0);
        assert.deepEqual([...out], [dirty.size, bytes, marked]);
        assert.ok(dst.equals(want));
        assert.ok(pend.every((b) => b === 0) && cpu.subarray(base, base + pages).every((b) => b === 0) && msg.every((b) => b === 0));
        assert.equal(cpu[base + pages], 1);
      },
    ),
    { numRuns: 300 },
  );
});

test("the addon's copyDirty refuses arrays that do not fit together, touching nothing (its walk is checked against the JS one in dirty-walk.test.ts)", (t) => {
  if (native === null) return t.skip('no native addon: the walk scans in JS');
  const n = native;
  const src = Buffer.alloc(8 * 4096, 1);
  const dst = Buffer.alloc(8 * 4096);
  const pending = new Uint8Array(8).fill(1);
  const cpu = new Uint8Array(16).fill(1);
  const msg = new Uint8Array(16);
  const out = new Float64Array(3);
  const refused = (what: string, a: Partial<{ dst: Uint8Array; src: Uint8Array; pending: Uint8Array; cpu: Uint8Array; base: number; ps: number; out: Float64Array }>): void => {
    const r = n.copyDirty(a.dst ?? dst, a.src ?? src, a.pending ?? pending, null, a.cpu ?? cpu, msg, a.base ?? 0, a.ps ?? 4096, a.out ?? out);
    assert.equal(r, -Errno.EINVAL, what);
    assert.ok(dst.every((b) => b === 0) && pending.every((b) => b === 1) && cpu.every((b) => b === 1), `${what}: nothing touched`);
  };
  refused('lengths differ', { dst: dst.subarray(1) });
  refused('too few pages for the mapping', { pending: pending.subarray(0, 7) });
  refused('a page past the mapping', { pending: new Uint8Array(9).fill(1) });
  refused('host flags past their array', { base: 9 });
  refused('a page size of 0', { ps: 0 });
  refused('a short out', { out: new Float64Array(2) });
  assert.equal(n.copyDirty(dst, src, pending, null, cpu, msg, 8, 4096, out), 0);
  assert.deepEqual([...out], [8, 8 * 4096, 8]);
  assert.ok(dst.equals(src) && pending.every((b) => b === 0) && cpu.subarray(8).every((b) => b === 0) && cpu.subarray(0, 8).every((b) => b === 1));
});
