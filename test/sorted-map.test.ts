// SortedMap against a plain sorted array of keys: inserts, deletes, floor and
// ceiling searches, and the neighbour links, under random operation mixes.
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import fc from 'fast-check';
import { SortedMap } from '../src/util/sorted-map.js';

function check(map: SortedMap<string>, keys: number[]): void {
  assert.equal(map.size, keys.length);
  const walked: number[] = [];
  for (let e = map.first; e !== null; e = e.next) {
    walked.push(e.key);
    assert.equal(e.value, `v${e.key}`);
    if (e.next !== null) assert.equal(e.next.prev, e);
  }
  assert.deepEqual(walked, keys);
  const back: number[] = [];
  for (let e = map.last; e !== null; e = e.prev) back.push(e.key);
  assert.deepEqual(back.reverse(), keys);
  assert.deepEqual(map.values(), keys.map((k) => `v${k}`));
}

test('property: SortedMap matches a sorted array', () => {
  const op = fc.oneof(
    fc.record({ k: fc.constant('insert' as const), key: fc.integer({ min: -50, max: 50 }) }),
    fc.record({ k: fc.constant('delete' as const), key: fc.integer({ min: -50, max: 50 }) }),
    fc.record({ k: fc.constant('query' as const), key: fc.double({ min: -60, max: 60, noNaN: true }) }),
  );
  fc.assert(
    fc.property(fc.array(op, { maxLength: 300 }), (ops) => {
      const map = new SortedMap<string>();
      let keys: number[] = [];
      for (const o of ops) {
        if (o.k === 'insert') {
          if (keys.includes(o.key)) {
            assert.throws(() => map.insert(o.key, 'dup'));
            continue;
          }
          const e = map.insert(o.key, `v${o.key}`);
          assert.equal(e.key, o.key);
          keys = [...keys, o.key].sort((a, b) => a - b);
        } else if (o.k === 'delete') {
          const had = keys.includes(o.key);
          const held = map.get(o.key);
          assert.equal(map.delete(o.key), had);
          if (had) assert.equal(held?.key, o.key);
          keys = keys.filter((k) => k !== o.key);
        } else {
          const below = keys.filter((k) => k <= o.key);
          const above = keys.filter((k) => k >= o.key);
          assert.equal(map.floor(o.key)?.key, below.length ? below[below.length - 1] : undefined);
          assert.equal(map.ceiling(o.key)?.key, above.length ? above[0] : undefined);
          // the key as stored: a query for -0 finds the entry of 0
          assert.equal(map.get(o.key)?.key, keys.find((k) => k === o.key));
        }
        check(map, keys);
        assert.ok(map.height <= 1.4405 * Math.log2(keys.length + 2), `height ${map.height} for ${keys.length} keys`);
      }
      map.clear();
      check(map, []);
    }),
    { numRuns: 300 },
  );
});

test('SortedMap: an entry stays the entry for its key while other keys come and go', () => {
  const map = new SortedMap<string>();
  for (let k = 0; k < 100; k++) map.insert(k, `v${k}`);
  const held = map.get(50)!;
  for (let k = 0; k < 100; k++) if (k !== 50) map.delete(k);
  assert.equal(map.get(50), held);
  assert.equal(map.size, 1);
  check(map, [50]);
});

test('SortedMap: 100,000 ascending, descending and interleaved inserts and deletes stay logarithmic', () => {
  // A tree that degenerated into a list would take minutes here.
  const map = new SortedMap<number>();
  const n = 100_000;
  for (let k = 0; k < n; k++) map.insert(k, k);
  for (let k = -1; k >= -n; k--) map.insert(k, k);
  assert.equal(map.size, 2 * n);
  // An AVL tree of n nodes is at most 1.4405 log2(n + 2) high: lookups stay O(log n).
  assert.ok(map.height <= 1.4405 * Math.log2(2 * n + 2), `height ${map.height}`);
  for (let k = -n; k < n; k += 2) assert.equal(map.delete(k), true);
  assert.equal(map.size, n);
  assert.equal(map.floor(-n)?.key, undefined);
  assert.equal(map.floor(0)?.key, -1);
  assert.equal(map.ceiling(0)?.key, 1);
  for (let k = n - 1; k >= -n; k -= 2) assert.equal(map.delete(k), true);
  assert.equal(map.size, 0);
  assert.equal(map.first, null);
});
