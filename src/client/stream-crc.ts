// The migration stream's checksums.  CRC-32 (zlib's, in Node) was the only
// one; CRC-32C is what a sender with the native addon uses: the addon's runs
// three chains of the CPU's crc32 instruction at once and copies while it
// sums, so a chunk costs one pass over guest memory instead of a copy and a
// CRC.  Without the addon CRC-32C is computed here, table-driven (slow, but
// only a receiver without the addon talking to a sender with it needs it).
import { native } from '../native/index.js';

let table: Uint32Array | null = null;

function makeTable(): Uint32Array {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[i] = c >>> 0;
  }
  return (table = t);
}

/** CRC-32C (Castagnoli) of `buf`, continuing `crc` (0 to start), as zlib's crc32 chains. */
export function crc32c(buf: Uint8Array, crc = 0): number {
  return native ? native.crc32c(buf, crc) : crc32cTable(buf, crc);
}

/** CRC-32C computed here, a byte at a time (without the addon). @internal */
export function crc32cTable(buf: Uint8Array, crc = 0): number {
  const t = table ?? makeTable();
  let c = ~crc >>> 0;
  for (let i = 0; i < buf.length; i++) c = t[(c ^ buf[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

/**
 * Copies `src` into `dst` at `at` and returns the CRC-32C of what was
 * written (continuing `crc`): the CRC of the copy even if `src` changes
 * meanwhile.
 */
export function copyCrc32c(dst: Uint8Array, at: number, src: Uint8Array, crc = 0): number {
  if (native) return native.copyCrc32c(dst, at, src, crc);
  dst.set(src, at);
  return crc32c(dst.subarray(at, at + src.length), crc);
}
