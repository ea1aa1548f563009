// DMA_LOGGING_REPORT conversion speed: a 64 GiB range tracked at 4 KiB (a
// 2 MiB bitmap, 5% of pages dirty at random) reported at 2 MiB and at 512 B
// pages.  Throughput is given for the bitmap read (input) and the bitmap
// written (output); the baseline is a bit-by-bit conversion run in this
// process on the same data.  Standalone: node dist/bench/dirty.js
import { pathToFileURL } from 'node:url';
import { performance } from 'node:perf_hooks';
import { DirtyBitmap, bitmapSize } from '../src/migration/dirty.js';
import { formatRows, type BenchRow } from './rows.js';

const GiB = 2 ** 30;
const IOVA = 0x1_0000_0000;
const LENGTH = 64 * GiB;
const TRACK = 4096;
const DIRTY_RATE = 0.05;

/** Deterministic page choice so runs compare (xorshift32). */
function dirtyPages(pages: number, rate: number): Uint32Array {
  const out: number[] = [];
  let s = 0x9e3779b9;
  for (let k = 0; k < pages; k++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    if ((s >>> 0) / 2 ** 32 < rate) out.push(k);
  }
  return Uint32Array.from(out);
}

/** The definition, one output bit and one tracked bit at a time. */
function naiveReport(bits: Uint32Array, t: number, r: number, length: number, p: number, out: Buffer): void {
  out.fill(0);
  const n = Math.ceil(length / p);
  for (let i = 0; i < n; i++) {
    const lo = r + i * p;
    const hi = Math.min(lo + p, r + length);
    const k1 = Math.ceil(hi / t);
    for (let k = Math.floor(lo / t); k < k1; k++) {
      if ((bits[k >>> 5]! >>> (k & 31)) & 1) {
        out[i >>> 3]! |= 1 << (i & 7);
        break;
      }
    }
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export async function benchDirty(): Promise<BenchRow[]> {
  const pages = LENGTH / TRACK;
  const dirty = dirtyPages(pages, DIRTY_RATE);
  const bits = new Uint32Array(pages / 32);
  for (const k of dirty) bits[k >>> 5]! |= 1 << (k & 31);
  const inputBytes = bits.byteLength;
  const bm = new DirtyBitmap(IOVA, LENGTH, TRACK);
  const refill = () => {
    bm.clear();
    for (const k of dirty) bm.mark(IOVA + k * TRACK, 1);
  };

  const rows: BenchRow[] = [];
  for (const [label, p] of [['2 MiB', 2 * 2 ** 20], ['512 B', 512]] as const) {
    const outBytes = bitmapSize(LENGTH, p);
    const out = Buffer.alloc(outBytes);
    const ref = Buffer.alloc(outBytes);

    // Same answer first, or the figures mean nothing.
    refill();
    bm.report(IOVA, LENGTH, p, out);
    naiveReport(bits, TRACK, 0, LENGTH, p, ref);
    if (!out.equals(ref)) throw new Error(`report at ${label} differs from the bit-by-bit conversion`);

    const fast: number[] = [];
    for (let i = 0; i < 9; i++) {
      refill();
      const t0 = performance.now();
      bm.report(IOVA, LENGTH, p, out);
      fast.push((performance.now() - t0) / 1000);
    }
    const slow: number[] = [];
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      naiveReport(bits, TRACK, 0, LENGTH, p, ref);
      slow.push((performance.now() - t0) / 1000);
    }
    const tf = median(fast);
    const ts = median(slow);
    const name = `dirty report 64 GiB @4 KiB (5% dirty) -> ${label}`;
    const base = 'bit-by-bit';
    for (const [what, bytes] of [['input', inputBytes], ['output', outBytes]] as const) {
      const v = bytes / tf / 1e9;
      const b = bytes / ts / 1e9;
      rows.push({ name: `${name}, ${what} ${fmtBytes(bytes)}`, value: v, unit: 'GB/s', baseline: { name: base, value: b }, ratio: v / b, better: 'higher' });
    }
    rows.push({ name: `${name}, time`, value: tf * 1000, unit: 'ms', baseline: { name: base, value: ts * 1000 }, ratio: tf / ts, better: 'lower' });
    if (p === 512) {
      // Reports that start inside a tracked page (shifted), or inside a
      // report page too (each output bit straddles two tracked pages).
      for (const [what, skip] of [['starting 512 B in', 512], ['starting 100 B in', 100], ['starting 4 KiB in', 4096]] as const) {
        const check = Buffer.alloc(bitmapSize(LENGTH - skip, p));
        refill();
        bm.report(IOVA + skip, LENGTH - skip, p, check);
        naiveReport(bits, TRACK, skip, LENGTH - skip, p, ref);
        if (!check.equals(ref.subarray(0, check.length))) throw new Error(`report at ${label} ${what} differs from the bit-by-bit conversion`);
        const times: number[] = [];
        for (let i = 0; i < 9; i++) {
          refill();
          const t0 = performance.now();
          bm.report(IOVA + skip, LENGTH - skip, p, check);
          times.push((performance.now() - t0) / 1000);
        }
        const tu = median(times);
        rows.push({
          name: `${name}, ${what}, input ${fmtBytes(inputBytes)}`,
          value: inputBytes / tu / 1e9,
          unit: 'GB/s',
          baseline: { name: 'aligned', value: inputBytes / tf / 1e9 },
          ratio: tf / tu,
          better: 'higher',
        });
      }
    }
  }
  return rows;
}

function fmtBytes(n: number): string {
  return n >= 2 ** 20 ? `${n / 2 ** 20} MiB` : `${n / 1024} KiB`;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  benchDirty().then(
    (rows) => console.log(formatRows(rows)),
    (e: unknown) => {
      console.error(e);
      process.exit(1);
    },
  );
}
