// The cost of the mapping table with dirty logging on, as the server's
// DMA_MAP / DMA_UNMAP / UNMAP_ALL handlers drive it (the log's checkMap and
// onMap around DmaController.map, onUnmap after unmap, onUnmapAll before
// unmapAll), in one process, without the socket: 20,000 mappings made in a
// shuffled order (sorted arrays pay most for that), a translate() of every
// one, half of them unmapped one by one and mapped again, then UNMAP_ALL.
// The baseline is the same sequence, in the same run, on what the table and
// the log were before (issue #10 §6): sorted arrays kept with splice, and
// the log's linear some/findIndex per map and unmap (a model of them here,
// as bench/dirty.ts models the bit-by-bit report).  Mappings without a
// descriptor (message mode): no mmap, only the table.
// Standalone: node dist/bench/dma-maps.js
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { DirtyLog } from '../src/migration/dirty.js';
import { DmaMapFlag } from '../src/protocol/constants.js';
import { DmaController, defaultDmaLimits } from '../src/server/dma.js';
import { type BenchRow, formatRows } from './rows.js';

const SIZE = 64 * 1024;
const RW = DmaMapFlag.READ | DmaMapFlag.WRITE;

interface Cost {
  /** µs per map, lookup, unmap+remap; µs per mapping of UNMAP_ALL. */
  map: number;
  lookup: number;
  unmapRemap: number;
  unmapAll: number;
}

/** Deterministic shuffle (xorshift32), so runs compare. */
function shuffled(n: number): number[] {
  const a = Array.from({ length: n }, (_, i) => i);
  let s = 0x2545f491;
  for (let i = n - 1; i > 0; i--) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    const j = (s >>> 0) % (i + 1);
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

/** The old structures: arrays sorted by iova, O(n) per map and unmap. */
function onceArrays(n: number): Cost {
  const table: { iova: number; size: number }[] = [];
  const logged: { iova: number; length: number }[] = [];
  const order = shuffled(n);
  const lowerBound = (iova: number): number => {
    let lo = 0;
    let hi = table.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (table[mid]!.iova + table[mid]!.size <= iova) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
  const map = (k: number): void => {
    const iova = k * 2 * SIZE;
    if (logged.some((r) => r.iova === iova && r.length === SIZE)) return; // checkMap
    const i = lowerBound(iova);
    table.splice(i, 0, { iova, size: SIZE });
    if (logged.some((r) => r.iova === iova && r.length === SIZE)) return; // onMap
    const j = logged.findIndex((r) => r.iova > iova);
    logged.splice(j < 0 ? logged.length : j, 0, { iova, length: SIZE });
  };
  const unmap = (iova: number): void => {
    const m = table[lowerBound(iova)]!;
    table.splice(table.indexOf(m), 1);
    const j = logged.findIndex((r) => r.iova === iova && r.length === SIZE);
    if (j >= 0) logged.splice(j, 1);
  };
  let t = performance.now();
  for (const k of order) map(k);
  const tMap = performance.now() - t;
  t = performance.now();
  let found = 0;
  for (const k of order) if (table[lowerBound(k * 2 * SIZE + 100)]!.iova === k * 2 * SIZE) found++;
  const tLookup = performance.now() - t;
  if (found !== n) throw new Error('lookup missed');
  t = performance.now();
  for (let i = 0; i < n; i += 2) unmap(order[i]! * 2 * SIZE);
  for (let i = 0; i < n; i += 2) map(order[i]!);
  const tUnmapRemap = performance.now() - t;
  t = performance.now();
  for (const m of [...table]) unmap(m.iova);
  const tAll = performance.now() - t;
  const half = Math.ceil(n / 2);
  return { map: (tMap * 1000) / n, lookup: (tLookup * 1000) / n, unmapRemap: (tUnmapRemap * 1000) / half, unmapAll: (tAll * 1000) / n };
}

function once(n: number): Cost {
  const dma = new DmaController({ ...defaultDmaLimits, maxMappings: n });
  const log = new DirtyLog();
  log.start(4096, null, []);
  const order = shuffled(n);
  const map = (k: number): void => {
    const iova = k * 2 * SIZE; // gaps between mappings
    log.checkMap(iova, SIZE);
    const m = dma.map({ iova, size: SIZE, fileOffset: 0, flags: RW, fd: null });
    log.onMap(m.iova, m.size);
  };
  let t = performance.now();
  for (const k of order) map(k);
  const tMap = performance.now() - t;

  t = performance.now();
  let found = 0;
  for (const k of order) if (dma.translate(k * 2 * SIZE + 100, 8).length === 1) found++;
  const tLookup = performance.now() - t;
  if (found !== n) throw new Error('lookup missed');

  t = performance.now();
  for (let i = 0; i < n; i += 2) {
    const iova = order[i]! * 2 * SIZE;
    dma.unmap(iova, SIZE);
    log.onUnmap(iova, SIZE);
  }
  for (let i = 0; i < n; i += 2) map(order[i]!);
  const tUnmapRemap = performance.now() - t;
  if (dma.count !== n || log.ranges.length !== n) throw new Error('table and log disagree');

  t = performance.now();
  log.onUnmapAll();
  dma.unmapAll();
  const tAll = performance.now() - t;
  if (dma.count !== 0) throw new Error('UNMAP_ALL left mappings');
  const half = Math.ceil(n / 2);
  return { map: (tMap * 1000) / n, lookup: (tLookup * 1000) / n, unmapRemap: (tUnmapRemap * 1000) / half, unmapAll: (tAll * 1000) / n };
}

/**
 * Best of the rounds (on a shared machine a round is slowed by preemption,
 * never sped up); the baseline, some seconds a round, once after a warm-up.
 */
export function benchDmaMaps(n = 20_000, rounds = 5): BenchRow[] {
  once(1000); // warm-up (JIT)
  onceArrays(1000);
  const a: Cost[] = [];
  for (let r = 0; r < rounds; r++) a.push(once(n));
  const b = [onceArrays(n)];
  const rows: BenchRow[] = [];
  const what: [keyof Cost, string][] = [
    ['map', 'DMA_MAP (table + dirty log), µs per map'],
    ['lookup', 'translate(), µs per lookup'],
    ['unmapRemap', 'DMA_UNMAP + DMA_MAP again, µs per pair'],
    ['unmapAll', 'UNMAP_ALL, µs per mapping'],
  ];
  for (const [k, label] of what) {
    const v = Math.min(...a.map((c) => c[k]));
    const base = Math.min(...b.map((c) => c[k]));
    rows.push({
      name: `${n} mappings, dirty logging on: ${label}`,
      value: v,
      unit: 'µs',
      baseline: { name: 'sorted arrays + linear scans (before)', value: base },
      ratio: v / base,
      better: 'lower',
    });
  }
  // The whole sequence, per mapping: the "seconds, not minutes".
  const total = (c: Cost): number => (c.map * n + c.lookup * n + c.unmapRemap * Math.ceil(n / 2) + c.unmapAll * n) / 1000;
  const v = Math.min(...a.map(total));
  const base = total(b[0]!);
  rows.push({ name: `${n} mappings, dirty logging on: the whole sequence`, value: v, unit: 'ms', baseline: { name: 'sorted arrays + linear scans (before)', value: base }, ratio: v / base, better: 'lower', target: '≤ 1 s', met: v <= 1000 });
  return rows;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  console.log(formatRows(benchDmaMaps()));
}
