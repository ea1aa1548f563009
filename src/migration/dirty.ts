// Dirty page logging for DMA_LOGGING_START / _REPORT / _STOP.
//
// A DirtyBitmap tracks one logged IOVA range at the tracking page size, one
// bit per page in a Uint32Array.  A report may ask for any sub-range at any
// power-of-two page size, so report() converts: output bit n is set iff a
// dirty tracked page overlaps [iova + n*P, iova + (n+1)*P) clipped to the
// reported range.  All conversions work on whole 32-bit words (shifts, byte
// lookup tables, word fills); nothing in a hot loop walks single bits.
//
// Tracked page k of a range covers [iova + k*T, iova + (k+1)*T), counted from
// the range's own start; the last page may be partial (it ends with the range).

import { endianness } from 'node:os';
import { native } from '../native/index.js';
import { Errno } from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';
import { SortedMap } from '../util/sorted-map.js';

const LITTLE_ENDIAN = endianness() === 'LE';
/** Bit indices stay below 2^32 so `>>> 5` and `& 31` are exact. */
const MAX_TRACKED_PAGES = 2 ** 32 - 64;
/** A report's output is capped at 2^32 bits (512 MiB), for the same reason. */
const MAX_REPORT_BITS = 2 ** 32 - 64;
/**
 * Default cap on the tracking bitmaps of one DirtyLog (8 TiB of IOVA at
 * 4 KiB pages), and on one report's bitmap.
 */
export const DEFAULT_MAX_BITMAP_BYTES = 256 * 1024 * 1024;
/** Largest report bitmap in bytes (MAX_REPORT_BITS, rounded to u64 words). */
export const MAX_REPORT_BYTES = 512 * 1024 * 1024;

function isPow2(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}

function checkPageSize(pageSize: number): void {
  if (!isPow2(pageSize)) throw new VfuError(Errno.EINVAL, `page size ${pageSize} is not a power of two`);
}

function checkSpan(iova: number, length: number, what: string): void {
  if (!Number.isSafeInteger(iova) || !Number.isSafeInteger(length) || iova < 0 || length <= 0 || !Number.isSafeInteger(iova + length))
    throw new VfuError(Errno.EINVAL, `${what} [${iova}, +${length}) is not a valid range`);
}

/**
 * Bytes of a dirty bitmap for `length` bytes at `pageSize` (one bit per page,
 * a partial last page counts), rounded up to whole u64 words as on the wire.
 */
export function bitmapSize(length: number, pageSize: number): number {
  checkPageSize(pageSize);
  if (!Number.isSafeInteger(length) || length < 0) throw new VfuError(Errno.EINVAL, `bad length ${length}`);
  return Math.ceil(Math.ceil(length / pageSize) / 64) * 8;
}

/** Bytes DirtyBitmap allocates for a range (u32 granularity). */
function trackedBytes(length: number, pageSize: number): number {
  return Math.ceil(Math.ceil(length / pageSize) / 32) * 4;
}

// ---------------------------------------------------------------------------
// Word-level bit range helpers (bit indices < 2^32).

function setRange(w: Uint32Array, a: number, b: number): void {
  if (a >= b) return;
  const wa = a >>> 5;
  const wb = (b - 1) >>> 5;
  const ma = (0xffffffff << (a & 31)) >>> 0;
  const mb = 0xffffffff >>> (31 - ((b - 1) & 31));
  if (wa === wb) {
    w[wa]! |= ma & mb;
    return;
  }
  w[wa]! |= ma;
  if (wb > wa + 1) w.fill(0xffffffff, wa + 1, wb);
  w[wb]! |= mb;
}

function clearRange(w: Uint32Array, a: number, b: number): void {
  if (a >= b) return;
  const wa = a >>> 5;
  const wb = (b - 1) >>> 5;
  const ma = (0xffffffff << (a & 31)) >>> 0;
  const mb = 0xffffffff >>> (31 - ((b - 1) & 31));
  if (wa === wb) {
    w[wa]! &= ~(ma & mb);
    return;
  }
  w[wa]! &= ~ma;
  if (wb > wa + 1) w.fill(0, wa + 1, wb);
  w[wb]! &= ~mb;
}

function popcount32(x: number): number {
  x -= (x >>> 1) & 0x55555555;
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  x = (x + (x >>> 4)) & 0x0f0f0f0f;
  return Math.imul(x, 0x01010101) >>> 24;
}

// ---------------------------------------------------------------------------
// Lookup tables, built once per ratio on first use.

/** Coarsening by g in {2,4,8}: byte -> 8/g bits, each the OR of a g-bit group. */
const orLuts = new Map<number, Uint8Array>();
function orLut(g: number): Uint8Array {
  let t = orLuts.get(g);
  if (!t) {
    t = new Uint8Array(256);
    const gm = (1 << g) - 1;
    for (let b = 0; b < 256; b++) {
      let v = 0;
      for (let i = 0; i < 8 / g; i++) if ((b >>> (i * g)) & gm) v |= 1 << i;
      t[b] = v;
    }
    orLuts.set(g, t);
  }
  return t;
}

/**
 * Refining by d in {2..32}: the byte b with every bit repeated d times, as
 * 8d/32 words at [b * words, ...) (d = 2: one 16-bit value per byte).
 */
const spreadLuts = new Map<number, Uint32Array>();
function spreadLut(d: number): Uint32Array {
  let t = spreadLuts.get(d);
  if (!t) {
    const words = Math.max(1, d / 4);
    t = new Uint32Array(256 * words);
    for (let b = 0; b < 256; b++)
      for (let i = 0; i < 8; i++) {
        if (!((b >>> i) & 1)) continue;
        // Bits [i*d, i*d+d) of the byte's expansion.
        for (let j = i * d; j < i * d + d; j++) t[b * words + (j >>> 5)]! |= 1 << (j & 31);
      }
    spreadLuts.set(d, t);
  }
  return t;
}

/**
 * Refining by 8 (4 KiB tracking to 512-byte reports, the common finest
 * case), as 64-bit words: entry b is byte b with every bit repeated 8
 * times.  Read as Float64 values only to be stored again, so 8 bytes move
 * per load and store: the patterns' NaNs are all quiet (a set bit 6 of b
 * makes byte 6 0xff, so bit 51 is set), and typed arrays store the bits of
 * a value they load unchanged.  A module constant: the JIT then knows its
 * length and drops the bounds checks of the lookups, which a table passed
 * in as an argument keeps (measured: 1.55 ms against 1.96 for 16 MiB).
 */
const SPREAD8 = new Float64Array(spreadLut(8).buffer.slice(0));

/** dst[4i..4i+3] = SPREAD8 of the four bytes of src[i], for i < n. */
function spread8(src: Uint32Array, dst: Float64Array, n: number): void {
  for (let i = 0, o = 0; i < n; i++, o += 4) {
    const v = src[i]!;
    dst[o] = SPREAD8[v & 0xff]!;
    dst[o + 1] = SPREAD8[(v >>> 8) & 0xff]!;
    dst[o + 2] = SPREAD8[(v >>> 16) & 0xff]!;
    dst[o + 3] = SPREAD8[v >>> 24]!;
  }
}

/** dst = for each byte of src[0..n), its f 64-bit words from `t` (d = 8f > 8). */
function spreadWide(src: Uint32Array, dst: Float64Array, t: Float64Array, f: number, n: number): void {
  for (let i = 0; i < n; i++) {
    const v = src[i]!;
    for (let j = 0; j < 4; j++) {
      const from = ((v >>> (j * 8)) & 0xff) * f;
      const at = (i * 4 + j) * f;
      for (let x = 0; x < f; x++) dst[at + x] = t[from + x]!;
    }
  }
}

// ---------------------------------------------------------------------------
// Conversions.  `src` is the window of tracked bits the report touches, bit 0
// being the tracked page holding the report's first byte; words past its end
// read as zero.  Each converter writes output words in order from word 0 and
// returns how many it wrote; convert() zeroes the rest, so the caller's
// buffer needs no clearing pass of its own.

/** src[j] |= src[j+1] as one bit stream: bit j then covers tracked pages j and j+1. */
function orNextBit(src: Uint32Array): void {
  const last = src.length - 1;
  for (let i = 0; i < last; i++) src[i] = src[i]! | (src[i]! >>> 1) | (src[i + 1]! << 31);
  if (last >= 0) src[last] = src[last]! | (src[last]! >>> 1);
}

/** Output bit n = OR of source bits [n*g, n*g+g), for g in {2,4,8,16}. */
function coarsenSmall(src: Uint32Array, o: Uint32Array, nOut: number, g: number): number {
  const per = 32 / g; // output bits per source word
  const inWords = Math.min(src.length, Math.ceil(nOut / per));
  let acc = 0;
  let pos = 0;
  let oi = 0;
  if (g === 16) {
    for (let i = 0; i < inWords; i++) {
      const x = src[i]!;
      if (x !== 0) acc |= (((x & 0xffff) !== 0 ? 1 : 0) | ((x >>> 16) !== 0 ? 2 : 0)) << pos;
      pos += 2;
      if (pos === 32) {
        o[oi++] = acc;
        acc = 0;
        pos = 0;
      }
    }
  } else {
    const t = orLut(g);
    const pb = 8 / g; // output bits per source byte
    for (let i = 0; i < inWords; i++) {
      const x = src[i]!;
      if (x !== 0) {
        const c = t[x & 0xff]! | (t[(x >>> 8) & 0xff]! << pb) | (t[(x >>> 16) & 0xff]! << (2 * pb)) | (t[x >>> 24]! << (3 * pb));
        acc |= c << pos;
      }
      pos += per;
      if (pos === 32) {
        o[oi++] = acc;
        acc = 0;
        pos = 0;
      }
    }
  }
  if (pos !== 0) o[oi++] = acc;
  return oi;
}

/** Output bit n = OR of source words [n*gw, n*gw+gw) (groups of >= 32 bits). */
function coarsenWords(src: Uint32Array, o: Uint32Array, nOut: number, gw: number): number {
  const len = src.length;
  // Output bits past the window's end are zero: stop there.
  const n1 = Math.min(nOut, Math.ceil(len / gw));
  let acc = 0;
  let n = 0;
  for (; n < n1; n++) {
    let i = n * gw;
    const e = Math.min(i + gw, len);
    // With any realistic dirty rate the first word decides; stop at the first hit.
    for (; i < e; i++) {
      if (src[i] !== 0) {
        acc |= 1 << (n & 31);
        break;
      }
    }
    if ((n & 31) === 31) {
      o[n >>> 5] = acc;
      acc = 0;
    }
  }
  if (n % 32 !== 0) o[n >>> 5] = acc; // the partly filled last word
  return Math.ceil(n / 32);
}

/** dst = src with every bit repeated d times, first dstWords words only. */
function expand(src: Uint32Array, dst: Uint32Array, d: number, dstWords: number): number {
  if (d === 1) {
    const n = Math.min(src.length, dstWords);
    dst.set(src.subarray(0, n));
    return n;
  }
  const inWords = Math.min(src.length, Math.ceil(dstWords / d));
  if (d >= 32) {
    // Each source bit becomes d/32 whole words of ones: visit set bits only.
    dst.fill(0, 0, dstWords);
    const wpb = d / 32;
    for (let i = 0; i < inWords; i++) {
      let v = src[i]!;
      while (v !== 0) {
        const low = v & -v;
        v ^= low;
        const s = (i * 32 + 31 - Math.clz32(low)) * wpb;
        if (s >= dstWords) break;
        if (wpb === 1) dst[s] = 0xffffffff;
        else dst.fill(0xffffffff, s, Math.min(s + wpb, dstWords));
      }
    }
    return dstWords;
  }
  const t = spreadLut(d);
  // Below 32 every output word is written, zero or not: a zero test per
  // byte mispredicts on sparse maps and costs more than the stores.
  if (d === 2) {
    // 16 source bits per output word: two byte lookups of 16 bits each.
    for (let i = 0; i < inWords; i++) {
      const v = src[i]!;
      const o = i * 2;
      dst[o] = t[v & 0xff]! | (t[(v >>> 8) & 0xff]! << 16);
      if (o + 1 < dstWords) dst[o + 1] = t[(v >>> 16) & 0xff]! | (t[v >>> 24]! << 16);
    }
    return Math.min(dstWords, inWords * 2);
  }
  // d >= 4: each source byte becomes d/4 whole words, copied from the table.
  const wpb = d / 4;
  const full = Math.min(inWords, Math.floor(dstWords / d)); // words whose output fits whole
  if (wpb >= 2 && dst.byteOffset % 8 === 0) {
    // d >= 8 into an 8-aligned output: 64-bit stores, half as many.
    const df = new Float64Array(dst.buffer, dst.byteOffset, full * d / 2);
    if (d === 8) spread8(src, df, full);
    else spreadWide(src, df, new Float64Array(t.buffer, t.byteOffset, t.length / 2), wpb / 2, full);
  } else if (wpb === 1) {
    for (let i = 0; i < full; i++) {
      const v = src[i]!;
      const o = i * 4;
      dst[o] = t[v & 0xff]!;
      dst[o + 1] = t[(v >>> 8) & 0xff]!;
      dst[o + 2] = t[(v >>> 16) & 0xff]!;
      dst[o + 3] = t[v >>> 24]!;
    }
  } else if (wpb === 2) {
    for (let i = 0; i < full; i++) {
      const v = src[i]!;
      const o = i * 8;
      let b = (v & 0xff) << 1;
      dst[o] = t[b]!;
      dst[o + 1] = t[b + 1]!;
      b = ((v >>> 8) & 0xff) << 1;
      dst[o + 2] = t[b]!;
      dst[o + 3] = t[b + 1]!;
      b = ((v >>> 16) & 0xff) << 1;
      dst[o + 4] = t[b]!;
      dst[o + 5] = t[b + 1]!;
      b = (v >>> 24) << 1;
      dst[o + 6] = t[b]!;
      dst[o + 7] = t[b + 1]!;
    }
  } else {
    for (let i = 0; i < full; i++) {
      const v = src[i]!;
      for (let j = 0; j < 4; j++) {
        const from = ((v >>> (j * 8)) & 0xff) * wpb;
        const at = (i * 4 + j) * wpb;
        for (let x = 0; x < wpb; x++) dst[at + x] = t[from + x]!;
      }
    }
  }
  // At most one source word is left, whose output is cut by dstWords.
  for (let i = full; i < inWords; i++) {
    const v = src[i]!;
    for (let j = 0; j < 4; j++) {
      const from = ((v >>> (j * 8)) & 0xff) * wpb;
      const at = (i * 4 + j) * wpb;
      const lim = Math.min(wpb, dstWords - at);
      for (let x = 0; x < lim; x++) dst[at + x] = t[from + x]!;
    }
  }
  return Math.min(dstWords, inWords * d);
}

/**
 * o = bits [m0, m0 + nOut) of x; with `foldNext`, output bit n also ORs in
 * bit n+1 (a report page straddling two tracked pages).  x must have two
 * words of zero padding past the last bit read.
 */
function shiftOut(x: Uint32Array, m0: number, o: Uint32Array, nOut: number, foldNext: boolean): number {
  const ws = Math.floor(m0 / 32);
  const sh = m0 % 32;
  const nw = Math.ceil(nOut / 32);
  // One plain loop per case (a closure choosing per word ran at ~0.2 GB/s).
  if (sh === 0) {
    if (!foldNext) o.set(x.subarray(ws, ws + nw));
    else {
      let cur = x[ws]!;
      for (let j = 0; j < nw; j++) {
        const nxt = x[ws + j + 1]!;
        o[j] = cur | (cur >>> 1) | (nxt << 31);
        cur = nxt;
      }
    }
    return nw;
  }
  const back = 32 - sh;
  let lo = x[ws]!;
  let hi = x[ws + 1]!;
  let cur = (lo >>> sh) | (hi << back);
  for (let j = 0; j < nw; j++) {
    lo = hi;
    hi = x[ws + j + 2]!;
    const nxt = (lo >>> sh) | (hi << back);
    o[j] = foldNext ? cur | (cur >>> 1) | (nxt << 31) : cur;
    cur = nxt;
  }
  return nw;
}

/**
 * Fills o (any prior content) with the report bitmap.  t: tracking page
 * size, p: report page size, r: report start relative to the tracked range,
 * w: tracked bits from floor(r/t), masked at the report's end; owned: w may
 * be modified.
 */
function convert(w: Uint32Array, owned: boolean, o: Uint32Array, nOut: number, t: number, p: number, r: number): void {
  const nw = Math.ceil(nOut / 32);
  let written: number;
  if (p >= t) {
    // Report page n covers tracked pages [n*g, n*g+g) of the window, or
    // [n*g, n*g+g] when the report does not start on a tracked page boundary.
    let src = w;
    if (r % t !== 0) {
      if (!owned) src = w.slice();
      orNextBit(src);
    }
    const g = p / t;
    if (g === 1) {
      written = Math.min(src.length, nw);
      o.set(src.subarray(0, written));
    } else if (g < 32) written = coarsenSmall(src, o, nOut, g);
    else written = coarsenWords(src, o, nOut, g / 32);
  } else {
    // Report page n lies in tracked page floor((m0+n)/d), and also touches
    // the next one when the report start is not on a report-page boundary.
    const d = t / p;
    const m0 = Math.floor(r / p) % d;
    const e = r % p;
    if (m0 === 0 && e === 0) written = expand(w, o, d, nw);
    else {
      const x = new Uint32Array(Math.ceil((m0 + nOut + 1) / 32) + 2);
      expand(w, x, d, x.length);
      written = shiftOut(x, m0, o, nOut, e !== 0);
    }
  }
  finish(o, written, nOut);
}

/** Zeroes o past the `written` words a converter wrote, and past bit nOut. */
function finish(o: Uint32Array, written: number, nOut: number): void {
  o.fill(0, written);
  if (nOut % 32 !== 0) o[Math.floor(nOut / 32)]! &= 0xffffffff >>> (32 - (nOut % 32));
}

/**
 * Output words (64-bit) from which refining by 8 is handed to the addon,
 * when loaded: its loop runs at 2-3x the JS one (16 MiB out in ~0.6 ms
 * against ~1.6), a gain that pays for the call's fixed cost from a few
 * words on.  Its bytes are little-endian words, as ours on such a host.
 */
const NATIVE_REFINE8_MIN_WORDS = 256;
// (the JS loops without the addon; the loader refuses an addon lacking it)
const spreadBits8 = LITTLE_ENDIAN && native !== null ? native.spreadBits8.bind(native) : null;

/**
 * convert() for report pages 8 to a tracked page (4 KiB tracking, 512-byte
 * reports), by the addon straight from the tracking bitmap `words` (tracked
 * bits [b0, b1) hold the report): no window copy, whose fresh pages cost
 * more than the conversion itself.  False when the addon is not loaded or
 * the report is too small for it to pay; o is then untouched.
 */
function refine8(words: Uint32Array, o: Uint32Array, nOut: number, p: number, r: number, b0: number, b1: number): boolean {
  const n = o.length / 2;
  if (spreadBits8 === null || n < NATIVE_REFINE8_MIN_WORDS) return false;
  // report page n lies in tracked page floor((m0+n)/8) of the window, and
  // also touches the next one when the report does not start on a page
  if (spreadBits8(words, o, n, 8 * b0 + (Math.floor(r / p) % 8), r % p !== 0, b1) !== n) return false;
  finish(o, Math.ceil(nOut / 32), nOut);
  return true;
}

// ---------------------------------------------------------------------------

/** Dirty-page state of one logged IOVA range. */
export class DirtyBitmap {
  /** First address tracked. */
  readonly iova: number;
  /** Bytes tracked. */
  readonly length: number;
  /** Tracking page size. */
  readonly pageSize: number;
  /** Number of tracked pages (a partial last page counts). */
  readonly pages: number;
  private readonly words: Uint32Array;

  /** A clean bitmap over [iova, iova+length) at `pageSize` granularity. */
  constructor(iova: number, length: number, pageSize: number) {
    checkPageSize(pageSize);
    checkSpan(iova, length, 'logged range');
    const pages = Math.ceil(length / pageSize);
    if (pages > MAX_TRACKED_PAGES) throw new VfuError(Errno.ENOMEM, `${pages} tracked pages is too many`);
    this.iova = iova;
    this.length = length;
    this.pageSize = pageSize;
    this.pages = pages;
    try {
      this.words = new Uint32Array(Math.ceil(pages / 32));
    } catch {
      throw new VfuError(Errno.ENOMEM, `cannot allocate a bitmap for ${pages} pages`);
    }
  }

  /** Memory held by the tracking bitmap. */
  get bytes(): number {
    return this.words.byteLength;
  }

  /** Marks every tracked page overlapping [addr, addr+len), clipped to the range. */
  mark(addr: number, len: number): void {
    let a = addr - this.iova;
    let e = a + len;
    // Written so that NaN falls out as "no overlap".
    if (!(e > 0 && a < this.length && len > 0)) return;
    if (a < 0) a = 0;
    if (e > this.length) e = this.length;
    const k0 = Math.floor(a / this.pageSize);
    const k1 = Math.ceil(e / this.pageSize);
    if (k1 - k0 === 1) this.words[k0 >>> 5]! |= 1 << (k0 & 31);
    else setRange(this.words, k0, k1);
  }

  /** Marks every page dirty. */
  markAll(): void {
    this.words.fill(0xffffffff);
    const rem = this.pages % 32;
    if (rem !== 0) this.words[this.words.length - 1] = 0xffffffff >>> (32 - rem);
  }

  /** Marks every page clean. */
  clear(): void {
    this.words.fill(0);
  }

  /** Number of dirty tracked pages. */
  dirtyCount(): number {
    let n = 0;
    const w = this.words;
    for (let i = 0; i < w.length; i++) if (w[i] !== 0) n += popcount32(w[i]!);
    return n;
  }

  /**
   * Writes the dirty bitmap of [iova, iova+length) at `pageSize` into out at
   * outOffset (bitmapSize(length, pageSize) bytes, little-endian u64 words,
   * bits past the range zero), then clears the tracked pages the range fully
   * covers; a page only partly inside stays dirty for a later report.
   * Throws EINVAL for a bad page size, a range not inside this one, or an
   * output buffer too small; E2BIG past 2^32 output bits.
   */
  report(iova: number, length: number, pageSize: number, out: Buffer, outOffset = 0): void {
    checkPageSize(pageSize);
    checkSpan(iova, length, 'report range');
    const r = iova - this.iova;
    if (r < 0 || r + length > this.length)
      throw new VfuError(Errno.EINVAL, `report range [${iova}, +${length}) is outside [${this.iova}, +${this.length})`);
    const nOut = Math.ceil(length / pageSize);
    if (nOut > MAX_REPORT_BITS) throw new VfuError(Errno.E2BIG, `report of ${nOut} pages is too large`);
    const outBytes = Math.ceil(nOut / 64) * 8;
    if (!Number.isSafeInteger(outOffset) || outOffset < 0 || outOffset + outBytes > out.length)
      throw new VfuError(Errno.EINVAL, `output needs ${outBytes} bytes at offset ${outOffset}, buffer has ${out.length}`);

    const t = this.pageSize;
    const b0 = Math.floor(r / t);
    const b1 = Math.ceil((r + length) / t);

    // Write straight into the caller's buffer when it can be viewed as u32s.
    const at = out.byteOffset + outOffset;
    const direct = LITTLE_ENDIAN && at % 4 === 0;
    const o = direct ? new Uint32Array(out.buffer, at, outBytes / 4) : new Uint32Array(outBytes / 4);
    if (t !== pageSize * 8 || !refine8(this.words, o, nOut, pageSize, r, b0, b1)) {
      const { w, owned } = this.window(b0, b1);
      convert(w, owned, o, nOut, t, pageSize, r);
    }
    if (!direct) {
      if (LITTLE_ENDIAN) out.set(new Uint8Array(o.buffer, 0, outBytes), outOffset);
      else for (let i = 0; i < o.length; i++) out.writeUInt32LE(o[i]!, outOffset + i * 4);
    }

    // Clear only pages wholly inside the report; the last (partial) tracked
    // page ends with the range, so reaching the range's end covers it.
    const c0 = Math.ceil(r / t);
    const c1 = r + length === this.length ? this.pages : Math.floor((r + length) / t);
    clearRange(this.words, c0, c1);
  }

  /** Tracked bits [b0, b1) as words starting at bit b0, zero past b1. */
  private window(b0: number, b1: number): { w: Uint32Array; owned: boolean } {
    const src = this.words;
    // Bits past `pages` are always zero, so a window that runs to the end of
    // the range and starts on a word can be the bitmap itself.
    if (b0 % 32 === 0 && b1 === this.pages) return { w: src.subarray(b0 / 32), owned: false };
    const nb = b1 - b0;
    const nw = Math.ceil(nb / 32);
    const w = new Uint32Array(nw);
    const s = b0 >>> 5;
    const sh = b0 & 31;
    if (sh === 0) w.set(src.subarray(s, s + nw));
    else {
      const last = src.length - 1;
      for (let i = 0; i < nw; i++) {
        const hi = s + i + 1 <= last ? src[s + i + 1]! : 0;
        w[i] = (src[s + i]! >>> sh) | (hi << (32 - sh));
      }
    }
    if (nb % 32 !== 0) w[nw - 1]! &= 0xffffffff >>> (32 - (nb % 32));
    return { w, owned: true };
  }
}

/** Options of a DirtyLog. */
export interface DirtyLogOptions {
  /** Cap on the tracking bitmaps (ENOMEM beyond). Default DEFAULT_MAX_BITMAP_BYTES. */
  maxBitmapBytes?: number;
}

/** An IOVA range to log. */
export interface LogRange {
  /** First address. */
  iova: number;
  /** Bytes. */
  length: number;
}

/**
 * The device's dirty page log (DMA_LOGGING_START / _REPORT / _STOP and the
 * v1 DIRTY_PAGES command): a DirtyBitmap per logged range, kept in IOVA
 * order in a SortedMap so that marking, reporting and (when every mapping is
 * logged) adding or removing a mapping cost O(log n) in the number of
 * ranges.
 *
 * Starting again while logging, with the same page size, succeeds and
 * changes nothing (the ranges of the first start stay); another page size
 * is EINVAL.  That is libvfio-user's answer (dma.c, dirty page logging
 * start), which QEMU's vfio-user client meets; the kernel's drivers answer
 * EINVAL to any second start (mlx5), and nothing answers EBUSY, which an
 * earlier copy of this class did.
 *
 * Errnos: EINVAL for a bad page size or bad arguments (and REPORT while not
 * logging), ENOENT for a report range that is not inside one logged range
 * (libvfio-user likewise answers ENOENT for IOVAs it has no mapping for),
 * ENOMEM when the tracking bitmaps would exceed maxBitmapBytes.
 */
export class DirtyLog {
  /** Cap on the tracking bitmaps' bytes (ServeOptions.maxDirtyBitmapBytes). */
  maxBitmapBytes: number;
  private maps = new SortedMap<DirtyBitmap>();
  /** Bytes of the tracking bitmaps (what maxBitmapBytes caps). */
  private bytes = 0;
  /** Logging every DMA mapping (num_ranges 0, v1 START): later mappings join. */
  private everyMapping = false;
  private lastHit: DirtyBitmap | undefined;
  private tracking = 0;
  /** Where reports are built (see reportBuffer). */
  private reportBuf: Buffer | null = null;

  /** An inactive log. */
  constructor(opts: DirtyLogOptions = {}) {
    this.maxBitmapBytes = opts.maxBitmapBytes ?? DEFAULT_MAX_BITMAP_BYTES;
  }

  /** Whether logging is on. */
  get active(): boolean {
    return this.tracking !== 0;
  }

  /** Tracking page size, 0 when not logging. */
  get pageSize(): number {
    return this.tracking;
  }

  /** Total bytes of the tracking bitmaps. */
  get bitmapBytes(): number {
    return this.bytes;
  }

  /** Largest report bitmap (bytes): maxBitmapBytes, within what a report can index. */
  get maxReportBytes(): number {
    return Math.min(this.maxBitmapBytes, MAX_REPORT_BYTES);
  }

  /**
   * A buffer of `bytes` to build a report in (E2BIG above maxReportBytes).
   * Always the same memory: one buffer per log, reserved at maxReportBytes
   * of address space, whose pages become resident as reports write them, so
   * reports cost at most the largest one made, however many are asked for.
   * The caller must not ask again until the previous report has been sent
   * (the server waits for its send queue to drain: Session.dirtyBitmapReply).
   */
  reportBuffer(bytes: number): Buffer {
    const max = this.maxReportBytes;
    if (bytes > max) throw new VfuError(Errno.E2BIG, `a bitmap of ${bytes} bytes is too large (limit ${max})`);
    if (this.reportBuf === null || this.reportBuf.length < bytes) {
      try {
        this.reportBuf = Buffer.allocUnsafeSlow(max);
      } catch {
        throw new VfuError(Errno.ENOMEM, `cannot reserve ${max} bytes for dirty reports`);
      }
    }
    return this.reportBuf.subarray(0, bytes);
  }

  /** The logged ranges, ascending. */
  get ranges(): LogRange[] {
    return this.maps.values().map((m) => ({ iova: m.iova, length: m.length }));
  }

  /**
   * Starts logging `ranges` at `pageSize`, or, with `ranges` null, every
   * range in `mapped` (the DMA mappings) and every mapping added later (see
   * onMap).  Given ranges must be non-empty and must not overlap.
   */
  start(pageSize: number, ranges: readonly LogRange[] | null, mapped: readonly LogRange[] = []): void {
    checkPageSize(pageSize);
    if (this.active) {
      if (pageSize === this.tracking) return;
      throw new VfuError(Errno.EINVAL, `dirty page logging already started at ${this.tracking}-byte pages`);
    }
    if (ranges !== null && ranges.length === 0) throw new VfuError(Errno.EINVAL, 'no ranges to log');
    const list = ranges ?? mapped;
    for (const r of list) checkSpan(r.iova, r.length, 'logged range');
    const sorted = [...list].sort((a, b) => a.iova - b.iova);
    for (let i = 1; i < sorted.length; i++)
      if (sorted[i - 1]!.iova + sorted[i - 1]!.length > sorted[i]!.iova)
        throw new VfuError(Errno.EINVAL, `logged ranges overlap at ${sorted[i]!.iova}`);
    let total = 0;
    for (const r of sorted) total += this.costOf(r.length, pageSize);
    if (total > this.maxBitmapBytes)
      throw new VfuError(Errno.ENOMEM, `dirty bitmaps need ${total} bytes, limit ${this.maxBitmapBytes}`);
    const maps = new SortedMap<DirtyBitmap>();
    for (const r of sorted) maps.insert(r.iova, new DirtyBitmap(r.iova, r.length, pageSize));
    this.maps = maps;
    this.bytes = total;
    this.everyMapping = ranges === null;
    this.tracking = pageSize;
    this.lastHit = undefined;
  }

  /** Stops logging and drops the bitmaps. */
  stop(): void {
    this.maps = new SortedMap();
    this.bytes = 0;
    this.everyMapping = false;
    this.lastHit = undefined;
    this.tracking = 0;
  }

  /** Tracking bytes for a range; ENOMEM past the page count a bitmap can index. */
  private costOf(length: number, pageSize: number): number {
    if (Math.ceil(length / pageSize) > MAX_TRACKED_PAGES) throw new VfuError(Errno.ENOMEM, 'logged range too large');
    return trackedBytes(length, pageSize);
  }

  /** Whether [iova, +length) is logged as one range of exactly that extent. */
  private logs(iova: number, length: number): boolean {
    const e = this.maps.get(iova);
    return e !== null && e.value.length === length;
  }

  /**
   * Before a DMA mapping is added: ENOMEM when every mapping is logged and
   * this one's bitmap would exceed the cap (a mapping we could not log would
   * silently lose dirty pages).  The same range again needs nothing new.
   */
  checkMap(iova: number, length: number): void {
    if (!this.everyMapping || this.logs(iova, length)) return;
    checkSpan(iova, length, 'mapping');
    const more = this.costOf(length, this.tracking);
    if (this.bytes + more > this.maxBitmapBytes)
      throw new VfuError(Errno.ENOMEM, `logging the new mapping needs ${more} more bytes of bitmap (limit ${this.maxBitmapBytes})`);
  }

  /** A DMA mapping was added: logged from now on when every mapping is. */
  onMap(iova: number, length: number): void {
    // An identical DMA_MAP again is the same mapping: one log.
    if (!this.everyMapping || this.logs(iova, length)) return;
    const bm = new DirtyBitmap(iova, length, this.tracking);
    this.maps.insert(iova, bm);
    this.bytes += bm.bytes;
  }

  /** A DMA mapping was removed: so is its log, when every mapping is logged. */
  onUnmap(iova: number, length: number): void {
    if (!this.everyMapping || !this.logs(iova, length)) return;
    const bm = this.maps.get(iova)!.value;
    this.maps.delete(iova);
    this.bytes -= bm.bytes;
    if (this.lastHit === bm) this.lastHit = undefined;
  }

  /** Every DMA mapping was removed (UNMAP_ALL): linear, whatever the count. */
  onUnmapAll(): void {
    if (!this.everyMapping) return;
    this.maps.clear();
    this.bytes = 0;
    this.lastHit = undefined;
  }

  /** Records a device write to [addr, addr+len); a no-op when not logging. */
  mark(addr: number, len: number): void {
    const l = this.lastHit;
    // Devices tend to write into the same buffer over and over.
    if (l !== undefined && addr >= l.iova && addr + len <= l.iova + l.length) {
      l.mark(addr, len);
      return;
    }
    if (this.maps.size === 0 || !(len > 0)) return;
    // The range holding addr, or else the first one after it.
    let e = this.maps.floor(addr);
    if (e === null) e = this.maps.first;
    else if (e.value.iova + e.value.length <= addr) e = e.next;
    const end = addr + len;
    for (; e !== null && e.value.iova < end; e = e.next) {
      e.value.mark(addr, len);
      this.lastHit = e.value;
    }
  }

  /** Marks everything logged (e.g. when the device cannot track its writes). */
  markAll(): void {
    for (const m of this.maps) m.markAll();
  }

  /** Number of dirty tracked pages over all ranges. */
  dirtyCount(): number {
    let n = 0;
    for (const m of this.maps) n += m.dirtyCount();
    return n;
  }

  /**
   * DMA_LOGGING_REPORT: see DirtyBitmap.report.  [iova, iova+length) must lie
   * inside one logged range (ENOENT otherwise); EINVAL when not logging, for
   * a bad page size or a bad/short output buffer.
   */
  report(iova: number, length: number, pageSize: number, out: Buffer, outOffset = 0): void {
    if (!this.active) throw new VfuError(Errno.EINVAL, 'dirty page logging not started');
    checkPageSize(pageSize);
    checkSpan(iova, length, 'report range');
    const m = this.maps.floor(iova)?.value;
    if (m === undefined || iova + length > m.iova + m.length)
      throw new VfuError(Errno.ENOENT, `[0x${iova.toString(16)}, +0x${length.toString(16)}) is not inside one logged range`);
    m.report(iova, length, pageSize, out, outOffset);
  }
}
