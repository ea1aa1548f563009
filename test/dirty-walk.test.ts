// The walk's two ways of moving the final pages: send() hands runs to a sink
// (a remote target), copyTo() copies them into a destination view in this
// process, a batch of runs per call to the addon.  Same pages, same bytes,
// same flags taken, for any mix of device bitmap, pending marks and host
// writes, at any logging page size and mapping offset.
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { test } from 'node:test';
import fc from 'fast-check';
import { MappingWalk } from '../src/client/dirty-walk.js';
import type { GuestRange } from '../src/client/guest-memory.js';
import { PAGE_SIZE } from '../src/native/index.js';
import { root } from './helpers/procs.js';

function range(flags: number): GuestRange {
  const size = flags * PAGE_SIZE;
  const bytes = Buffer.alloc(size);
  for (let i = 0; i < size; i += 97) bytes[i] = (i >> 7) & 0xff;
  return { iova: 0x10_0000, size, bytes, fd: -1, messageDirty: new Uint8Array(flags), cpuDirty: new Uint8Array(flags) };
}

test('copyTo moves the same pages as send() with a copying sink, and takes the same flags', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom(PAGE_SIZE, 2 * PAGE_SIZE, PAGE_SIZE / 2, PAGE_SIZE / 8),
      fc.integer({ min: 0, max: 9 }), // mapping starts this many flags into the range
      fc.integer({ min: 1, max: 200 }), // mapping size in flags
      fc.array(fc.nat(), { maxLength: 60 }), // device bits
      fc.array(fc.nat(), { maxLength: 30 }), // pending (from an earlier collect)
      fc.array(fc.nat(), { maxLength: 30 }), // host writes
      fc.boolean(), // with a device bitmap at all
      async (pageSize, off, len, bits, pend, host, withBitmap) => {
        const flags = off + len + 3;
        const ranges = [range(flags), range(flags)];
        const walks = ranges.map((r) => new MappingWalk(r.iova + off * PAGE_SIZE, len * PAGE_SIZE, pageSize, r));
        const pages = walks[0]!.pages;
        const bitmap = (list: number[]): Buffer => {
          const b = Buffer.alloc(Math.ceil(pages / 8));
          for (const x of list) b[(x % pages) >> 3]! |= 1 << (x % pages & 7);
          return b;
        };
        ranges.forEach((r, i) => {
          walks[i]!.collect(bitmap(pend));
          for (const h of host) (h & 1 ? r.cpuDirty : r.messageDirty)[h % flags] = 1;
        });
        const bm = withBitmap ? bitmap(bits) : null;
        const dsts = [Buffer.alloc(len * PAGE_SIZE, 0xee), Buffer.alloc(len * PAGE_SIZE, 0xee)];
        const viaSink = await walks[0]!.send(bm, (iova, data) => void dsts[0]!.set(data, iova - walks[0]!.iova));
        const viaCopy = await walks[1]!.copyTo(bm, dsts[1]!);
        assert.deepEqual(viaCopy, viaSink);
        assert.ok(dsts[1]!.equals(dsts[0]!));
        assert.deepEqual(ranges[1]!.cpuDirty, ranges[0]!.cpuDirty);
        assert.deepEqual(ranges[1]!.messageDirty, ranges[0]!.messageDirty);
        assert.equal(walks[1]!.pendingPages, walks[0]!.pendingPages);
      },
    ),
    { numRuns: 300 },
  );
});

test('copyAllTo copies the whole mapping and clears its marks, as sendAll does', async () => {
  const r = range(40);
  const w = new MappingWalk(r.iova + 3 * PAGE_SIZE, 30 * PAGE_SIZE, PAGE_SIZE, r);
  r.cpuDirty.fill(1);
  r.messageDirty.fill(1);
  const dst = Buffer.alloc(30 * PAGE_SIZE);
  assert.deepEqual(w.copyAllTo(dst), [30, 30 * PAGE_SIZE]);
  assert.ok(dst.equals(r.bytes.subarray(3 * PAGE_SIZE, 33 * PAGE_SIZE)));
  assert.deepEqual([...r.cpuDirty.subarray(3, 33)], new Array(30).fill(0));
  assert.equal(r.cpuDirty[2], 1, 'flags outside the mapping stay');
  assert.deepEqual(await w.copyTo(null, dst), [0, 0], 'nothing dirty afterwards');
});

test('warm only reads: the pending pages, the flags and both sides stay as they were', async () => {
  const r = range(64);
  const w = new MappingWalk(r.iova + 2 * PAGE_SIZE, 60 * PAGE_SIZE, PAGE_SIZE, r);
  const bm = Buffer.alloc(8);
  bm[0] = 0b1010_0110;
  bm[5] = 0xff;
  w.collect(bm);
  r.cpuDirty[40] = 1;
  const dst = Buffer.alloc(60 * PAGE_SIZE, 3);
  const before = [Buffer.from(r.bytes), Buffer.from(dst), Uint8Array.from(r.cpuDirty), w.pendingPages] as const;
  assert.equal(typeof w.warm(dst), 'number');
  assert.equal(typeof w.warm(null), 'number');
  assert.ok(r.bytes.equals(before[0]) && dst.equals(before[1]));
  assert.deepEqual(r.cpuDirty, before[2]);
  assert.equal(w.pendingPages, before[3]);
  // and the walk still sends exactly those pages
  const [pages] = await w.copyTo(null, dst);
  assert.equal(pages, before[3] + 1);
});

test('without the addon a local migration still converges: the warm-up measures the walk the final pages take then', () => {
  // (the warm-up once measured only copyTo's native path, so without the
  // addon the page cost was Infinity, and so was every predicted downtime)
  const at = (f: string): string => pathToFileURL(join(root, 'dist', f)).href;
  const script = `
    import { LocalTarget, migrate } from '${at('src/client/migrate.js')}';
    import { createBigState } from '${at('src/devices/bigstate.js')}';
    import { serve } from '${at('test/helpers/server.js')}';
    const a = createBigState({ stateMib: 1, precopyMib: 1 });
    const b = createBigState({ stateMib: 1, precopyMib: 1, seed: 2 });
    const sa = await serve(a.device);
    const sb = await serve(b.device);
    const src = await sa.connect({ migSizing: true });
    src.memory.add(0x100000, 4 << 20).bytes.fill(0x33);
    await src.dmaMap({ iova: 0x100000, size: 4 << 20 });
    const r = await migrate(src, new LocalTarget(await sb.connect()), {});
    console.log(JSON.stringify({ converged: r.converged, pageMs: r.rates.pageMs, same: b.state.equals(a.state) }));
    await sa.close();
    await sb.close();`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, VFU_NO_NATIVE: '1' }, encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { converged: boolean; pageMs: number; same: boolean };
  assert.ok(out.converged && Number.isFinite(out.pageMs) && out.same, r.stdout);
});

test('long clean stretches (skipped in blocks) lose no dirty page, wherever the few dirty ones lie', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom(0, 8, 3), // mapping starts this many flags into the range (8: the host flags seen as words)
      fc.integer({ min: 300, max: 140_000 }), // mapping size in pages (4 KiB)
      fc.array(fc.nat(), { maxLength: 12 }), // device bits
      fc.array(fc.nat(), { maxLength: 6 }), // pending
      fc.array(fc.nat(), { maxLength: 12 }), // host writes
      fc.array(fc.constantFrom(256, 264, 512, 768, 4096, 4352, 32_768, 36_864, 65_536, 69_632, 131_072), { maxLength: 4 }), // pages at block edges
      async (off, len, bits, pend, host, edges) => {
        const flags = off + len + 3;
        const r = range(flags);
        const w = new MappingWalk(r.iova + off * PAGE_SIZE, len * PAGE_SIZE, PAGE_SIZE, r);
        const want = new Set<number>();
        const bitmap = Buffer.alloc(Math.ceil(len / 64) * 8);
        const pending = Buffer.alloc(Math.ceil(len / 64) * 8);
        for (const x of [...bits, ...edges.map((e) => e - 1)]) {
          const p = x % len;
          bitmap[p >> 3]! |= 1 << (p & 7);
          want.add(p);
        }
        for (const x of pend) {
          const p = x % len;
          pending[p >> 3]! |= 1 << (p & 7);
          want.add(p);
        }
        w.collect(pending);
        for (const [i, x] of [...host, ...edges].entries()) {
          const p = x % len;
          (i & 1 ? r.cpuDirty : r.messageDirty)[off + p] = 1;
          want.add(p);
        }
        const got = new Set<number>();
        await w.send(bitmap, (iova, data) => {
          for (let a = iova; a < iova + data.length; a += PAGE_SIZE) got.add((a - w.iova) / PAGE_SIZE);
        });
        assert.deepEqual([...got].sort((a, b) => a - b), [...want].sort((a, b) => a - b));
        assert.equal(w.pendingPages, 0);
        assert.ok(r.cpuDirty.every((f) => f === 0) && r.messageDirty.every((f) => f === 0), 'every flag taken');
      },
    ),
    { numRuns: 150 },
  );
});

test('send() over a clean mapping answers at once (no promise), one with a dirty page only once it is handed on', async () => {
  const r = range(70_000);
  const w = new MappingWalk(r.iova, 70_000 * PAGE_SIZE, PAGE_SIZE, r);
  const got: number[] = [];
  const sink = (iova: number): void => void got.push((iova - w.iova) / PAGE_SIZE);
  const clean = w.send(Buffer.alloc(70_000 / 8), sink);
  assert.ok(!(clean instanceof Promise), 'an empty final set costs no promise');
  assert.deepEqual(clean, [0, 0]);
  r.cpuDirty[69_999] = 1;
  const dirty = w.send(null, sink);
  assert.ok(dirty instanceof Promise);
  assert.deepEqual(await dirty, [1, PAGE_SIZE]);
  assert.deepEqual(got, [69_999]);
});
