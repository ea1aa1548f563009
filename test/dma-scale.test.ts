// Many DMA mappings: 20,000 of them with dirty logging on every mapping,
// made over a socket in a shuffled order and removed by one UNMAP_ALL (with
// the linear scans the table and the log had, this took minutes at 65,535);
// the default mapping limit under vm.max_map_count; pread/pwrite on the
// thread pool never reaching a descriptor closed by an unmap.
import { strict as assert } from 'node:assert';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { createSample } from '../src/devices/sample.js';
import { native } from '../src/native/index.js';
import { DmaMapFlag } from '../src/protocol/constants.js';
import { DmaController, defaultDmaLimits } from '../src/server/dma.js';
import { fdCount, serve, until } from './helpers/server.js';

const RW = DmaMapFlag.READ | DmaMapFlag.WRITE;

describe('DMA mappings at scale', () => {
  test('default max_dma_maps leaves room under vm.max_map_count (one memory area per mmap()ed mapping)', () => {
    const limit = Number(readFileSync('/proc/sys/vm/max_map_count', 'utf8'));
    assert.ok(defaultDmaLimits.maxMappings <= 65535);
    assert.ok(defaultDmaLimits.maxMappings <= limit - 4096, `${defaultDmaLimits.maxMappings} mappings against a limit of ${limit} areas`);
    assert.ok(defaultDmaLimits.maxMappings >= Math.min(65535, limit / 2), 'not needlessly low');
  });

  test('20,000 DMA_MAPs in a shuffled order with dirty logging on every mapping, a report, then one UNMAP_ALL', async () => {
    const N = 20_000;
    const SIZE = 0x2000;
    const dev = createSample();
    const srv = await serve(dev.device);
    const c = await srv.connect();
    try {
      const base = 0x1_0000_0000;
      c.memory.add(base, N * 2 * SIZE, { shared: false }); // message mode: the table, not mmap, is measured
      assert.equal(await c.startDirtyLogging(4096), 4096); // num_ranges 0: every mapping, later ones too
      const order = Array.from({ length: N }, (_, i) => i);
      let s = 12345;
      for (let i = N - 1; i > 0; i--) {
        s = (Math.imul(s, 1103515245) + 12345) >>> 0;
        const j = s % (i + 1);
        [order[i], order[j]] = [order[j]!, order[i]!];
      }
      // Pipelined in batches under the server's queue limit (1024 commands).
      for (let i = 0; i < N; i += 512) {
        await Promise.all(order.slice(i, i + 512).map((k) => c.dmaMap({ iova: base + k * 2 * SIZE, size: SIZE, withFd: false })));
      }
      const dma = dev.device.dma;
      const log = dev.device.logging;
      assert.equal(dma.count, N);
      assert.equal(log.ranges.length, N, 'every mapping is logged');
      const ivs = dma.mappings.map((m) => m.iova);
      assert.ok(ivs.every((v, i) => i === 0 || v > ivs[i - 1]!), 'in IOVA order');
      // The device writes into one mapping in the middle; its report says so.
      const mid = base + 7_777 * 2 * SIZE;
      dma.markDirty(mid + 0x1000, 1);
      const bm = await c.dirtyReport(mid, SIZE, 4096);
      assert.deepEqual([...bm.subarray(0, 1)], [0b10]);
      await c.dmaUnmapAll();
      assert.equal(dma.count, 0);
      assert.equal(log.ranges.length, 0);
      assert.equal(log.bitmapBytes, 0);
      assert.equal(log.active, true, 'logging stays on for later mappings');
      await c.dmaMap({ iova: base, size: SIZE, withFd: false });
      assert.equal(log.ranges.length, 1);
    } finally {
      await srv.close();
    }
  });

  test('an unmap while a pwrite is on the thread pool: the write finishes on its own file, the descriptor is closed after it', async () => {
    const n = native!;
    const dma = new DmaController();
    const memfd = n.memfdCreate('t', 1 << 20, false); // unsealed: reached with pread/pwrite
    const before = fdCount();
    dma.map({ iova: 0x10000, size: 1 << 20, fileOffset: 0, flags: RW, fd: n.dup(memfd) });
    assert.equal(dma.find(0x10000)!.mode, 'file');
    assert.equal(fdCount(), before + 1);
    const w = dma.write(0x10000, Buffer.alloc(1 << 20, 0x5a));
    dma.unmap(0x10000, 1 << 20); // while the pwrite is (or is about to be) on the thread pool
    await w.catch(() => {}); // it may have been refused at its next step; it never reaches another file
    await until(() => fdCount() === before);
    // Whatever was written went to the memfd it was meant for.
    const back = Buffer.alloc(16);
    const ab = n.mmap(memfd, 0, 1 << 20, 1);
    Buffer.from(ab).copy(back, 0, 0, 16);
    n.munmap(ab);
    assert.ok(back.equals(Buffer.alloc(16, 0x5a)) || back.equals(Buffer.alloc(16)));
    n.close(memfd);
  });
});
