// The migration stream's CRC-32C (client/stream-crc.ts): the addon's (three
// interleaved chains of the CPU's crc32 instruction, copying as it sums)
// against the plain table-driven definition, on any length and any split.
import { strict as assert } from 'node:assert';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { copyCrc32c, crc32c, crc32cTable } from '../src/client/stream-crc.js';
import { native } from '../src/native/index.js';

/** The definition, bit by bit (reflected polynomial 0x82f63b78). */
function reference(b: Uint8Array, crc = 0): number {
  let c = ~crc >>> 0;
  for (const x of b) {
    c ^= x;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  }
  return ~c >>> 0;
}

describe('CRC-32C', () => {
  test('the check value of "123456789" is 0xe3069283, with and without the addon', () => {
    const b = Buffer.from('123456789');
    assert.equal(crc32c(b), 0xe3069283);
    assert.equal(crc32cTable(b), 0xe3069283);
    assert.equal(reference(b), 0xe3069283);
  });

  test('any buffer, split anywhere and chained, gives the definition; the copy is exact', () => {
    // lengths around the addon's 3 x 4 KiB blocks and its 8-byte words
    const len = fc.oneof(fc.integer({ min: 0, max: 64 }), fc.integer({ min: 12_280, max: 12_300 }), fc.integer({ min: 0, max: 40_000 }));
    fc.assert(
      fc.property(len, fc.nat(), fc.nat(), fc.integer({ min: 0, max: 7 }), (n, seed, cut, skew) => {
        const b = Buffer.alloc(n + skew);
        for (let i = 0; i < b.length; i++) b[i] = (seed * 31 + i * 17 + (i >> 5)) & 0xff;
        const data = b.subarray(skew); // unaligned starts too
        const want = reference(data);
        assert.equal(crc32c(data), want);
        assert.equal(crc32cTable(data), want);
        const at = n === 0 ? 0 : cut % (n + 1);
        assert.equal(crc32c(data.subarray(at), crc32c(data.subarray(0, at))), want);
        const dst = Buffer.alloc(n + 9, 0xee);
        assert.equal(copyCrc32c(dst, 3, data, 0), want);
        assert.deepEqual(dst.subarray(3, 3 + n), data);
        assert.ok(dst.subarray(0, 3).every((x) => x === 0xee) && dst.subarray(3 + n).every((x) => x === 0xee), 'nothing written outside');
      }),
      { numRuns: 200 },
    );
  });

  test('the addon refuses a copy that does not fit', { skip: native === null }, () => {
    assert.throws(() => native!.copyCrc32c(Buffer.alloc(10), 5, Buffer.alloc(6), 0), /range/);
    assert.throws(() => native!.copyCrc32c(Buffer.alloc(10), -1, Buffer.alloc(1), 0), /range/);
  });
});
