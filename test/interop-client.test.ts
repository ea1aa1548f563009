// Interoperability of our client with the real C server, nutanix/libvfio-user:
// the scenario of its samples/client (device and region info with sparse
// mmap, config space, reset, DMA with descriptors, an INTx eventfd, dirty
// logging, BAR0 timer, the server's own DMA — direct and by message — then a
// live migration to a second samples/server) run by our VfioUserClient and
// orchestrator against libvfio-user's samples/server, checked by BAR1's CRC.
// Needs LIBVFIO_USER_BUILD (a built tree); skipped otherwise.
import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { crc32 } from 'node:zlib';
import { LocalTarget, migrate } from '../src/client/migrate.js';
import { IrqIndex, MigState, PciRegion, RegionFlag } from '../src/protocol/constants.js';
import { connectWhenListening, once, tempDir, until } from './helpers/server.js';

const build = process.env.LIBVFIO_USER_BUILD;
const sampleServer = build ? [join(build, 'samples', 'server'), join(build, 'build', 'samples', 'server')].find(existsSync) : undefined;
const skip = !build
  ? 'LIBVFIO_USER_BUILD is not set: skipping our client against libvfio-user samples/server'
  : !sampleServer
    ? `no samples/server under ${build}`
    : false;

function startServer(path: string): ChildProcess {
  const p = spawn(sampleServer!, [path], { stdio: ['ignore', 'ignore', 'pipe'] });
  p.stderr!.on('data', () => {});
  return p;
}

test('our client drives libvfio-user samples/server through its whole scenario and a live migration', { skip, timeout: 120_000 }, async () => {
  const t = tempDir('vfu-interop-client-');
  const srcPath = join(t.dir, 'src.sock');
  const dstPath = join(t.dir, 'dst.sock');
  const servers = [startServer(srcPath)];
  try {
    const c = await connectWhenListening(srcPath, { maxDataXferSize: 1024 });
    const info = await c.deviceInfo();
    assert.equal(info.numRegions, 9);
    const bar1 = await c.regionInfo(PciRegion.BAR1);
    assert.ok(bar1.flags & RegionFlag.MMAP);
    assert.deepEqual(bar1.sparse, [
      { offset: 0, size: 0x1000 },
      { offset: 0x2000, size: 0x1000 },
    ]);
    for (const a of c.mapRegion(bar1)) a.unmap();
    const cfg = await c.regionRead(PciRegion.CONFIG, 0, 64);
    assert.deepEqual([cfg.readUInt16LE(0), cfg.readUInt16LE(2), cfg.readUInt16LE(0x2c), cfg.readUInt16LE(0x2e)], [0xdead, 0xbeef, 0xcafe, 0xbabe]);
    await c.reset();

    // DMA: one page per mapping, twice the server's max_msg_fds of them
    const n = c.serverCaps.maxMsgFds * 2;
    for (let i = 0; i < n; i++) {
      c.memory.add(i * 0x1000, 0x1000);
      await c.dmaMap({ iova: i * 0x1000, size: 0x1000 });
    }
    await c.enableInterrupts(IrqIndex.INTX, 1);
    assert.equal(await c.startDirtyLogging(4096), 4096);

    // BAR0: an absolute time at which the device interrupts and does DMA
    const irq = once(c, 'interrupt', 10_000);
    const t0 = Buffer.alloc(8);
    t0.writeBigInt64LE(BigInt(Math.floor(Date.now() / 1000) + 1));
    await c.regionWrite(PciRegion.BAR0, 0, t0);
    await irq;
    // the server writes 4 KiB into region 1 directly and into region 0 by message
    await until(() => c.memory.view(0, 1024).every((b) => b === 0x41) && c.memory.view(0x1000 + 3072, 1024).every((b) => b === 0x44), 10_000);
    const dirty = [];
    for (let i = 0; i < n; i++) dirty.push((await c.dirtyReport(i * 0x1000, 0x1000, 4096))[0]! & 1);
    assert.equal(dirty[1], 1, 'the page the server wrote directly is reported dirty');
    assert.deepEqual(c.memory.takeMessageDirty(c.memory.find(0)!), [0], 'the page written by message is ours to track');
    await c.stopDirtyLogging();
    for (let i = 0; i < n / 2; i++) await c.dmaUnmap(i * 0x1000, 0x1000);

    // arm the timer for after the migration, then migrate while a "guest" writes BAR1
    const t1 = Buffer.alloc(8);
    t1.writeBigInt64LE(BigInt(Math.floor(Date.now() / 1000) + 10));
    await c.regionWrite(PciRegion.BAR0, 0, t1);
    servers.push(startServer(dstPath));
    const d = await connectWhenListening(dstPath, { maxDataXferSize: 1024 });
    let last = Buffer.alloc(0);
    let writing = true;
    const guest = (async () => {
      while (writing) {
        const b = randomBytes(0x3000);
        await c.regionWrite(PciRegion.BAR1, 0, b);
        last = b;
        await new Promise((r) => setTimeout(r, 2));
      }
    })();
    const report = await migrate(c, new LocalTarget(d), {
      maxRounds: 2,
      roundDelayMs: 20,
      discardPrecopyDeviceData: true,
      pauseGuest: async () => {
        writing = false;
        await guest;
      },
    });
    assert.equal(await d.migrationState(), MigState.RUNNING);
    assert.equal(crc32(await d.regionRead(PciRegion.BAR1, 0, 0x3000)), crc32(last), 'BAR1 CRC matches after migration');
    assert.ok(report.deviceBytes >= 0x3000 + 8);
    // the destination delivers the timer interrupt armed on the source, then does its DMA
    await once(d, 'interrupt', 15_000);
    await until(() => d.memory.view(0x8000 + 3072, 1024).every((b) => b === 0x44), 10_000);
    await d.dmaUnmapAll();
    c.close();
    d.close();
  } finally {
    for (const s of servers) s.kill('SIGKILL');
    t.cleanup();
  }
});
