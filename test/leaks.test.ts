// 1000 connect-map-disconnect cycles against one server in this process:
// afterwards the process has exactly the descriptors it had before, and
// exactly the same file-backed lines in /proc/self/maps (memfds of DMA
// mappings and region memory included).  Anonymous mappings (the JS heap's
// pages, malloc arenas) are the garbage collector's business: they are
// compared after full collections with an allowance, and reported.
import { strict as assert } from 'node:assert';
import { readFileSync, readdirSync } from 'node:fs';
import { test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { VfioUserClient } from '../src/client/client.js';
import { createSample } from '../src/devices/sample.js';
import { native } from '../src/native/index.js';
import { IrqIndex, PciRegion } from '../src/protocol/constants.js';
import { once, serve, until } from './helpers/server.js';

const CYCLES = Number(process.env.VFU_LEAK_CYCLES ?? 1000);

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** Full collections until the heap stops shrinking (V8 returns pages lazily). */
async function settle(): Promise<void> {
  for (let i = 0; i < 4; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 20));
  }
}

function fds(): number {
  return readdirSync('/proc/self/fd').length;
}

/** A mapping with no file behind it (heap pages, arenas, guard regions). */
function anonymous(line: string): boolean {
  const path = line.split(/\s+/).slice(5).join(' ');
  return path === '' || path === '[heap]' || path.startsWith('[anon');
}

function mapsLines(): string[] {
  return readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l !== '');
}

test(`${CYCLES} connect-map-disconnect cycles: descriptors and mappings back to where they were`, { timeout: 300_000 }, async () => {
  const dev = createSample();
  const srv = await serve(dev.device);
  const cycle = async (i: number): Promise<void> => {
    // not srv.connect(): the helper keeps its clients for closing later
    const c = await VfioUserClient.connect(srv.path, { twinSocket: i % 2 === 0 });
    c.memory.add(0x100000, 0x10000);
    c.memory.add(0x200000, 0x4000, { shared: false });
    await c.dmaMap({ iova: 0x100000, size: 0x10000 });
    await c.dmaMap({ iova: 0x200000, size: 0x4000 });
    await c.enableInterrupts(IrqIndex.INTX, 1);
    const bar1 = await c.regionInfo(PciRegion.BAR1);
    const areas = c.mapRegion(bar1);
    areas[0]!.bytes[0] = i & 0xff;
    for (const a of areas) a.unmap();
    dev.device.dma.writeSync(0x100000, Buffer.from([i & 0xff]));
    await dev.device.dma.write(0x200000, Buffer.from([i & 0xff]));
    if (i % 3 === 0) await c.dmaUnmap(0x100000, 0x10000);
    const gone = once(srv.server, 'disconnected');
    c.close();
    await gone;
  };
  for (let i = 0; i < 20; i++) await cycle(i); // warm up (lazy allocations, pools)
  await settle();
  const fds0 = fds();
  const maps0 = mapsLines();
  const live0 = native!.liveMappings();
  for (let i = 0; i < CYCLES; i++) await cycle(i);
  await until(() => srv.server.session === null);
  await settle();
  assert.equal(dev.device.dma.count, 0);
  assert.equal(dev.device.irqs.fdCount, 0);
  assert.equal(fds(), fds0, 'descriptors');
  assert.equal(native!.liveMappings(), live0, 'mappings made by the addon');
  const maps1 = mapsLines();
  const named = (ls: string[]): string[] => ls.filter((l) => !anonymous(l)).map((l) => l.replace(/^\S+\s+/, '')).sort();
  assert.deepEqual(named(maps1), named(maps0), 'file-backed mappings (memfds included)');
  const anon0 = maps0.filter(anonymous).length;
  const anon1 = maps1.filter(anonymous).length;
  console.log(`# /proc/self/maps: ${maps0.length} lines before, ${maps1.length} after (anonymous ${anon0} -> ${anon1}); fds ${fds0} -> ${fds()}`);
  assert.ok(anon1 <= anon0 + 128, `anonymous mappings ${anon0} -> ${anon1}`);
  await srv.close();
});
