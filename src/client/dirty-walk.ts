// The walk over one DMA mapping's dirty pages, in the orchestrator's logging
// page size: the device's dirty bitmap (DMA_LOGGING_REPORT, one bit a page)
// merged with the guest's own and message writes (GuestMemory's flags, one
// byte per 4 KiB page, taken and cleared as they are read) and with pages
// found dirty earlier and not sent yet.  Each run of adjacent dirty pages is
// handed on as soon as the run ends, so the first pages are on their way
// before the end of the bitmap is read.  The arrays are made once, when the
// migration is set up, not in the downtime window.
import { PAGE_SIZE, native } from '../native/index.js';
import type { GuestRange } from './guest-memory.js';

/**
 * Where a run of dirty pages goes: guest address and the bytes (a view of
 * guest memory).  A sink that is done at once returns nothing (no promise
 * to wait for per run).
 */
export type RunSink = (iova: number, data: Buffer) => void | Promise<void>;

/** Runs found before they are handed on: a batch goes out while the rest of the bitmap waits. */
export const RUN_BATCH = 64;

/** Pages the full pass sends one at a time (see sendAll). */
export const WARM_RUNS = 2048;

/** A run is handed on whole up to this size, then in pieces (a sink's message need not grow with the guest). */
export const MAX_RUN_BYTES = 4 << 20;

/** Clean groups of eight pages in a row after which skip() goes on in blocks (see skipBlocks). */
const BLOCKS_AFTER = 32;
/** The largest block skipBlocks() compares at once, in pages; zeros to compare with. */
const MAX_BLOCK = 64 * 1024;
const ZEROS = Buffer.alloc(MAX_BLOCK);

/** The dirty state of one mapping [iova, iova+size) inside guest range `range`. */
export class MappingWalk {
  /** Logging pages in the mapping. */
  readonly pages: number;
  /** Pages found dirty by an earlier sync and not sent since. */
  readonly pending: Uint8Array;
  private pendingCount = 0;
  /** The mapping's first byte within its guest range. */
  private readonly offset: number;
  // Eight pages at a time are skipped when all their flags are zero: these
  // are the flag arrays seen as words (host flags only when a logging page
  // is one 4 KiB flag and the mapping starts on a word of them).
  private readonly pending32: Uint32Array;
  /** scan()'s output: RUN_BATCH [from, to) pairs and where to go on. */
  private readonly runs = new Int32Array(2 * RUN_BATCH + 1);
  private readonly host32: [Uint32Array, Uint32Array, number] | null;
  /** copyDirty's answer: pages, bytes, pending marks taken. */
  private readonly copyOut = new Float64Array(3);

  constructor(
    readonly iova: number,
    readonly size: number,
    readonly pageSize: number,
    readonly range: GuestRange,
  ) {
    this.pages = Math.ceil(size / pageSize);
    const padded = Math.ceil(this.pages / 8) * 8;
    this.pending = new Uint8Array(padded).subarray(0, this.pages);
    this.pending32 = new Uint32Array(this.pending.buffer, 0, padded / 4);
    this.offset = iova - range.iova;
    const first = this.offset / PAGE_SIZE;
    const cpu = range.cpuDirty;
    const msg = range.messageDirty;
    const aligned = pageSize === PAGE_SIZE && first % 8 === 0 && cpu.byteOffset % 4 === 0 && msg.byteOffset % 4 === 0;
    this.host32 = aligned
      ? [new Uint32Array(cpu.buffer, cpu.byteOffset, cpu.length >> 2), new Uint32Array(msg.buffer, msg.byteOffset, msg.length >> 2), first / 4]
      : null;
  }

  /** From page p (a multiple of 8), the first group of eight that may hold a dirty page. */
  private skip(p: number, bitmap: Buffer | null): number {
    const h = this.host32;
    if (h === null) return p;
    const [cpu, msg, base] = h;
    const words = cpu.length;
    let clean = 0;
    for (; p + 8 <= this.pages; p += 8) {
      const g = p >> 2;
      if (bitmap !== null && bitmap[p >> 3] !== 0) break;
      if (this.pending32[g]! | this.pending32[g + 1]!) break;
      const w = base + g;
      if (w + 1 >= words || cpu[w]! | cpu[w + 1]! | msg[w]! | msg[w + 1]!) break;
      if (++clean === BLOCKS_AFTER) {
        clean = 0;
        p = this.skipBlocks(p + 8, bitmap) - 8;
      }
    }
    return p;
  }

  /**
   * A long clean stretch from page p (a multiple of 8): skipped in blocks
   * (4096 pages, then MAX_BLOCK), each compared with zeros at once
   * (memcmp) in every flag array, where the loop in skip() reads eight
   * pages at a time (an empty final dirty set of a 256 MiB mapping cost
   * 55-75 us of the downtime window that way).  Returns the first page of
   * the block that is not all clean (skip() looks into it), or where the
   * stretch ends.  Only after BLOCKS_AFTER clean groups in a row: densely
   * dirty memory never pays for a compare.
   */
  private skipBlocks(p: number, bitmap: Buffer | null): number {
    const cpu = this.range.cpuDirty;
    const msg = this.range.messageDirty;
    const host = this.offset / PAGE_SIZE;
    // the host flags' last word stays with skip() (its bound above)
    const end = Math.min(this.pages, cpu.length - host - 8, msg.length - host - 8) & ~7;
    for (let n = 4096; p < end; n = MAX_BLOCK) {
      const m = Math.min(n, end - p);
      // (nothing pending: nothing to compare, 1 byte a page)
      if (this.pendingCount > 0 && ZEROS.compare(this.pending, p, p + m, 0, m) !== 0) break;
      if (bitmap !== null && ZEROS.compare(bitmap, p >> 3, (p + m) >> 3, 0, m >> 3) !== 0) break;
      if (ZEROS.compare(cpu, host + p, host + p + m, 0, m) !== 0 || ZEROS.compare(msg, host + p, host + p + m, 0, m) !== 0) break;
      p += m;
    }
    return p;
  }

  /** Pages pending (found dirty, not yet sent). */
  get pendingPages(): number {
    return this.pendingCount;
  }

  /**
   * Whether page `p` is dirty by the guest's CPUs or by message DMA; takes
   * (clears) those flags.  A logging page may span several 4 KiB flags, or
   * share one with its neighbours (then a dirty flag dirties each of them;
   * it is cleared by the last).
   */
  private hostDirty(p: number): boolean {
    const cpu = this.range.cpuDirty;
    const msg = this.range.messageDirty;
    const start = this.offset + p * this.pageSize;
    const first = Math.floor(start / PAGE_SIZE);
    const last = Math.floor((Math.min(start + this.pageSize, this.offset + this.size) - 1) / PAGE_SIZE);
    let dirty = false;
    for (let k = first; k <= last; k++) {
      if (cpu[k] || msg[k]) {
        dirty = true;
        // a flag shared with the next logging page stays for it
        if ((k + 1) * PAGE_SIZE <= start + this.pageSize || p === this.pages - 1) cpu[k] = msg[k] = 0;
      }
    }
    return dirty;
  }

  /** Whether page p is dirty in any source; takes the host flags and the pending mark. */
  private take(p: number, bitmap: Buffer | null): boolean {
    let d = this.pending[p] !== 0;
    if (d) {
      this.pending[p] = 0;
      this.pendingCount--;
    }
    if (bitmap !== null && (bitmap[p >> 3]! & (1 << (p & 7))) !== 0) d = true;
    if (this.host32 !== null) {
      // one flag per page, at a fixed distance
      const k = this.offset / PAGE_SIZE + p;
      const cpu = this.range.cpuDirty;
      const msg = this.range.messageDirty;
      if (cpu[k] !== 0 || msg[k] !== 0) {
        cpu[k] = msg[k] = 0;
        d = true;
      }
    } else if (this.hostDirty(p)) d = true;
    return d;
  }

  /** For the warm-up: a few pages as if written by the guest's CPUs and by message DMA. */
  markHost(seed: number): void {
    const first = Math.ceil(this.offset / PAGE_SIZE);
    const flags = Math.floor((this.offset + this.size) / PAGE_SIZE) - first;
    for (let k = seed % 7; k < Math.min(flags, 512); k += 61) this.range.cpuDirty[first + k] = 1;
    for (let k = seed % 5; k < Math.min(flags, 512); k += 97) this.range.messageDirty[first + k] = 1;
  }

  /** Syncs without sending: every dirty page becomes pending.  Returns the pending count. */
  collect(bitmap: Buffer | null): number {
    for (let p = 0; p < this.pages; p++) {
      if ((p & 7) === 0) {
        const q = this.skip(p, bitmap);
        if (q >= this.pages) break;
        p = q;
      }
      if (this.take(p, bitmap)) {
        this.pending[p] = 1;
        this.pendingCount++;
      }
    }
    return this.pendingCount;
  }

  /**
   * Walks the pages, handing the runs of dirty ones to `sink` a batch at a
   * time (RUN_BATCH runs): the first go out before the rest of the bitmap
   * is read.  Returns [pages, bytes] sent: at once when no page is dirty
   * (no promise, whose turns cost 20 us of the window for an empty final
   * set), else once the last batch is handed on.
   */
  send(bitmap: Buffer | null, sink: RunSink): [number, number] | Promise<[number, number]> {
    const runs = this.runs;
    for (let at = 0; at < this.pages; ) {
      const n = this.scan(bitmap, at, runs);
      at = runs[2 * RUN_BATCH]!;
      if (n > 0) return this.sendFrom(bitmap, sink, n, at);
    }
    return [0, 0];
  }

  /** send() from a batch of `n` runs found (in this.runs), the walk to go on at page `at`. */
  private async sendFrom(bitmap: Buffer | null, sink: RunSink, n: number, at: number): Promise<[number, number]> {
    const runs = this.runs;
    let pages = 0;
    let bytes = 0;
    for (;;) {
      for (let i = 0; i < n; i++) pages += runs[2 * i + 1]! - runs[2 * i]!;
      bytes += await this.deliver(n, sink);
      if (at >= this.pages) return [pages, bytes];
      n = this.scan(bitmap, at, runs);
      at = runs[2 * RUN_BATCH]!;
    }
  }

  /** Whether copyTo() is one call to the addon (with it, a 4 KiB flag a page), not send() with a copying sink. */
  get copiesNatively(): boolean {
    return native !== null && this.pageSize === PAGE_SIZE && this.offset % PAGE_SIZE === 0;
  }

  /**
   * send() into memory of this process: `dst` is the destination's view of
   * this mapping.  With a 4 KiB flag a page the walk is one call to the
   * addon (copyDirty: the scan and the copy; no views, no promise, no call
   * per run); else, or without the addon, send() with a copying sink.
   * Returns [pages, bytes].
   */
  copyTo(bitmap: Buffer | null, dst: Buffer): [number, number] | Promise<[number, number]> {
    // other logging page sizes (rare): run by run, as send() hands them on
    if (native === null || !this.copiesNatively) return this.send(bitmap, copySink(this, dst));
    const src = this.range.bytes.subarray(this.offset, this.offset + this.size);
    const out = this.copyOut;
    const r = native.copyDirty(dst, src, this.pending, bitmap, this.range.cpuDirty, this.range.messageDirty, this.offset / PAGE_SIZE, this.pageSize, out);
    if (r < 0) throw new RangeError(`copyDirty: ${dst.length}-byte destination for a ${this.size}-byte mapping`);
    this.pendingCount -= out[2]!;
    return [out[0]!, out[1]!];
  }

  /**
   * Hands the first `n` runs of this.runs to `sink`, waiting only for a sink
   * that returns a promise.  The one loop every page goes through, the
   * first full pass's included, so it is warm with the real sink by the
   * time the final pages go.
   */
  private async deliver(n: number, sink: RunSink): Promise<number> {
    const runs = this.runs;
    const limit = this.offset + this.size;
    let bytes = 0;
    for (let i = 0; i < n; i++) {
      const start = this.offset + runs[2 * i]! * this.pageSize;
      const end = Math.min(limit, this.offset + runs[2 * i + 1]! * this.pageSize);
      const done = sink(this.range.iova + start, this.range.bytes.subarray(start, end));
      if (done !== undefined) await done;
      bytes += end - start;
    }
    return bytes;
  }

  /**
   * From page `at`, finds up to RUN_BATCH runs of dirty pages (taking their
   * flags) into `runs` as [from, to) pairs; the page to go on from is left
   * in runs[2 * RUN_BATCH].  Returns the number of runs.  Sends nothing,
   * so a warm-up can run it on scratch memory.
   */
  scan(bitmap: Buffer | null, at: number, runs: Int32Array): number {
    const maxRun = Math.max(1, Math.floor(MAX_RUN_BYTES / this.pageSize));
    let n = 0;
    let run = -1;
    let p = at;
    for (; p <= this.pages; p++) {
      if (run < 0 && (p & 7) === 0) p = this.skip(p, bitmap);
      const dirty = p < this.pages && this.take(p, bitmap);
      if (dirty && run < 0) run = p;
      if (run >= 0 && (!dirty || p - run === maxRun)) {
        runs[2 * n] = run;
        runs[2 * n + 1] = p;
        n++;
        run = dirty ? p : -1;
        if (n === RUN_BATCH) {
          // a run just begun at p is taken up again from p
          if (dirty) this.untake(p);
          break;
        }
      }
    }
    runs[2 * RUN_BATCH] = n === RUN_BATCH ? p : this.pages;
    return n;
  }

  /** Gives page p back its dirty mark (the scan stopped on it). */
  private untake(p: number): void {
    this.pending[p] = 1;
    this.pendingCount++;
  }

  /**
   * Reads the pending pages, a byte of every cache line, and a byte of each
   * of their pages in `dst` (the destination's view of this mapping, if
   * any): called once switching over is decided, while the guest still
   * runs, so that the window's copy finds the lines it reads in the cache
   * and the page walks of both sides done.  Returns a sum of what it read
   * (so the reads are not optimised away).
   */
  warm(dst: Buffer | null): number {
    const src = this.range.bytes;
    const end = this.offset + this.size;
    let sum = 0;
    for (let p = 0; p < this.pages; p++) {
      if (this.pending[p] === 0) continue;
      const s = this.offset + p * this.pageSize;
      const e = Math.min(s + this.pageSize, end);
      for (let i = s; i < e; i += 64) sum += src[i]!;
      if (dst !== null) sum += dst[s - this.offset]!;
    }
    return sum;
  }

  /** Clears every dirty mark of the mapping: pending, and the host's flags (a write from now on is seen by the next walk). */
  private clearAll(): void {
    this.pending.fill(0);
    this.pendingCount = 0;
    const first = Math.floor(this.offset / PAGE_SIZE);
    const last = Math.ceil((this.offset + this.size) / PAGE_SIZE);
    this.range.cpuDirty.fill(0, first, last);
    this.range.messageDirty.fill(0, first, last);
  }

  /** sendAll() into memory of this process: `dst` is the destination's view of this mapping (see copyTo). */
  copyAllTo(dst: Buffer): [number, number] {
    this.clearAll();
    dst.set(this.range.bytes.subarray(this.offset, this.offset + this.size));
    return [this.pages, this.size];
  }

  /**
   * Sends every page, the flags cleared first (a write from then on is seen
   * by the next walk).  The first WARM_RUNS pages go one page a run: not a
   * byte more than the full pass, and the loop that delivers runs, with the
   * real sink behind it, is compiled by the time the final pages go.
   * Returns [pages, bytes].
   */
  async sendAll(sink: RunSink): Promise<[number, number]> {
    this.clearAll();
    const step = Math.max(1, Math.floor(MAX_RUN_BYTES / this.pageSize));
    const single = Math.min(this.pages, WARM_RUNS);
    let bytes = 0;
    for (let p = 0; p < this.pages; ) {
      let n = 0;
      for (; n < RUN_BATCH && p < this.pages; n++) {
        const to = p < single ? p + 1 : Math.min(this.pages, p + step);
        this.runs[2 * n] = p;
        this.runs[2 * n + 1] = to;
        p = to;
      }
      bytes += await this.deliver(n, sink);
    }
    return [this.pages, bytes];
  }
}

/** A sink that copies runs of `w`'s guest range into `dst`, the destination's view of `w`'s mapping. */
function copySink(w: MappingWalk, dst: Buffer): RunSink {
  return (iova, data) => void dst.set(data, iova - w.iova);
}

/**
 * Runs the walk on scratch memory until V8 has compiled it, every branch it
 * takes later included (code never run is compiled to bail out when first
 * reached), so that the walk in the downtime window does not run
 * interpreted in a fresh process.  Sends nothing.  Measures meanwhile, warm,
 * the walk over a clean page and the walk and copy of a scattered dirty one
 * (ms): the cheapest pass of several, as a pass the scheduler cut into does
 * not measure the code.  `local`: the pages are copied by copyTo (a target
 * in this process), else handed to a sink as views.
 */
export function warmUpWalk(pageSize: number, local = false): { walkPageMs: number; pageMs: number } {
  const pages = 8192;
  const size = pages * pageSize;
  const flags = Math.ceil(size / PAGE_SIZE);
  const range: GuestRange = { iova: 0, size, bytes: Buffer.alloc(size), fd: -1, messageDirty: new Uint8Array(flags), cpuDirty: new Uint8Array(flags) };
  const into = Buffer.alloc(size);
  const w = new MappingWalk(0, size, pageSize, range);
  const runs = new Int32Array(2 * RUN_BATCH + 1);
  let walkPageMs = Infinity;
  let pageMs = Infinity;
  // copyTo in the addon, else the final pages take the JS walk below
  const copies = local && w.copiesNatively;
  for (let i = 0; i < 16; i++) {
    const a = Buffer.alloc(Math.ceil(pages / 8));
    const b = Buffer.alloc(a.length);
    for (let p = i & 3; p < pages; p += 4) a[p >> 3]! |= 1 << (p & 7);
    for (let p = (i + 2) & 3; p < pages; p += 8) b[p >> 3]! |= 1 << (p & 7);
    w.collect(a); // pending: every 4th page
    // warm() too: compiled now, not by a background job that runs into the
    // window (it is called just before it, and its loop is found hot there)
    w.warm(i & 1 ? into : null);
    w.markHost(i); // and a few CPU and message writes
    const bm = i % 3 === 0 ? null : b;
    const t0 = performance.now();
    let sent = 0;
    // a target in this process: the final pages go through copyTo, every
    // other pass here; the scan in JavaScript still runs in the others (it
    // shares take() and skip() with collect(), which the switch-over runs)
    const viaCopy = copies && (i & 1) === 1;
    if (viaCopy) sent = (w.copyTo(bm, into) as [number, number])[0];
    for (let at = viaCopy ? pages : 0; at < pages; ) {
      const n = w.scan(bm, at, runs);
      at = runs[2 * RUN_BATCH]!;
      for (let k = 0; k < n; k++) {
        const from = runs[2 * k]! * pageSize;
        const to = runs[2 * k + 1]! * pageSize;
        // views and a copy, as deliver() and a local target make them; the
        // runs reach the buffer's end too (Buffer#subarray takes another
        // branch there: code compiled without it is thrown away when the
        // full pass's last run gets there, and compiled again, maybe in
        // the downtime window)
        into.subarray(from, to).set(range.bytes.subarray(from, to));
        sent += (to - from) / pageSize;
      }
    }
    const t1 = performance.now();
    w.collect(null);
    const t2 = performance.now();
    if (i >= 8) {
      const clean = (t2 - t1) / pages;
      walkPageMs = Math.min(walkPageMs, clean);
      if (sent > 0 && viaCopy === copies) pageMs = Math.min(pageMs, Math.max(0, t1 - t0 - clean * pages) / sent);
    }
  }
  return { walkPageMs, pageMs };
}
