// Access to memory shared with another process (a guest's, through a
// mapping).
//
// A full memory barrier: x86 lets a load pass an earlier store to another
// address, which breaks "store mine, then read theirs" handshakes such as
// NVMe's shadow doorbells and EventIdx.  A locked instruction orders both;
// Atomics on any word gives one.
//
// A word read in one load: Buffer.readUInt32LE reads its four bytes one by
// one (bytes 0, 3, 1, 2), so a store the other side makes in between yields
// a value that never existed: with an NVMe completion entry, the previous
// lap's command id under the new phase tag.

import { endianness } from 'node:os';

const word = new Int32Array(new SharedArrayBuffer(4));

/** Orders every load and store before it against every one after it. */
export function memoryBarrier(): void {
  Atomics.add(word, 0, 1);
}

const bigEndianHost = endianness() === 'BE';

/**
 * The little-endian 32-bit word at `offset` of `buf`, read with one load
 * (never torn by a concurrent store of the word) that later loads do not
 * pass.  `buf.byteOffset + offset` must be a multiple of 4.
 */
export function loadShared32(buf: Buffer, offset: number): number {
  const v = Atomics.load(new Uint32Array(buf.buffer, buf.byteOffset + offset, 1), 0);
  return bigEndianHost ? ((v >>> 24) | ((v >>> 8) & 0xff00) | ((v & 0xff00) << 8) | (v << 24)) >>> 0 : v;
}
