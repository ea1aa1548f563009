// Live migration end to end: the demo (two server processes, a guest writing
// device memory and DMA-mapped RAM throughout) must converge with dirty pages
// re-sent and identical state on both sides; failures at each step roll back.
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { LocalTarget, MigrationError, migrate, type MigrationReport } from '../src/client/migrate.js';
import { createSample, BAR1_SIZE } from '../src/devices/sample.js';
import { Errno, IrqIndex, MigState, PciRegion } from '../src/protocol/constants.js';
import { VfuError } from '../src/protocol/errors.js';
import { serve } from './helpers/server.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

test('vfu demo: live migration between two processes, verified by checksum', { timeout: 60_000 }, () => {
  const r = spawnSync(process.execPath, [join(root, 'dist', 'src', 'cli', 'main.js'), 'demo', '--json', '--guest-mib', '16'], {
    encoding: 'utf8',
    timeout: 50_000,
  });
  assert.equal(r.status, 0, r.stderr);
  const report = JSON.parse(r.stdout) as MigrationReport;
  assert.ok(report.preCopy);
  assert.equal(report.sourceChecksum, report.destinationChecksum);
  assert.ok(report.rounds.length >= 2, 'at least one round after the first full pass');
  assert.equal(report.rounds[0]!.dirtyPages, 16 * 256, 'round 0 sends all of RAM');
  assert.ok(report.rounds.slice(1).some((x) => x.dirtyPages > 0), 'pages dirtied during pre-copy are re-sent');
  assert.ok(report.deviceBytes >= 2 * BAR1_SIZE, 'pre-copy and stop-copy device data');
  assert.ok(report.downtimeMs > 0 && report.downtimeMs < report.totalMs);
});

describe('migration in one process', () => {
  async function pair(opts: { dstFails?: 'write' | 'finish' } = {}) {
    const a = createSample();
    const b = createSample();
    if (opts.dstFails === 'write') {
      const ctrl = b.device.migration!;
      ctrl.callbacks.writeData = () => {
        throw new VfuError(Errno.EIO, 'injected: destination rejects data');
      };
    }
    const sa = await serve(a.device);
    const sb = await serve(b.device);
    const src = await sa.connect();
    const dst = await sb.connect();
    src.memory.add(0x10000, 0x40000);
    await src.dmaMap({ iova: 0x10000, size: 0x40000 });
    await src.enableInterrupts(IrqIndex.INTX, 1);
    src.memory.write(0x10000, Buffer.from('guest data'));
    await src.regionWrite(PciRegion.BAR1, 0, Buffer.from('device memory'));
    return { a, b, sa, sb, src, dst, close: async () => (await sa.close(), await sb.close()) };
  }

  test('migrates device state, guest memory, mappings and interrupts', async () => {
    const p = await pair();
    const report = await migrate(p.src, new LocalTarget(p.dst), { maxRounds: 2 });
    assert.equal(await p.dst.migrationState(), MigState.RUNNING);
    assert.equal(await p.src.migrationState(), MigState.STOP);
    assert.equal((await p.dst.regionRead(PciRegion.BAR1, 0, 13)).toString(), 'device memory');
    assert.equal(p.dst.memory.view(0x10000, 10).toString(), 'guest data');
    assert.equal(p.b.device.dma.count, 1, 'destination device has the mapping');
    assert.ok(p.b.device.irqs.hasEventfd(IrqIndex.INTX, 0), 'and the interrupt');
    assert.ok(report.phases.some((x) => x.phase === 'pre-copy'));
    await p.close();
  });

  test('a destination that rejects the data: source back to RUNNING, destination reset', async () => {
    const p = await pair({ dstFails: 'write' });
    await assert.rejects(migrate(p.src, new LocalTarget(p.dst)), (e: unknown) => {
      assert.ok(e instanceof MigrationError);
      assert.equal(e.errno, Errno.EIO);
      assert.match(e.message, /pre-copy round 0|stop-copy data/);
      return true;
    });
    assert.equal(await p.src.migrationState(), MigState.RUNNING);
    assert.equal(await p.dst.migrationState(), MigState.RUNNING);
    assert.equal(p.b.device.dma.count, 0);
    // the source device is intact and usable
    assert.equal((await p.src.regionRead(PciRegion.BAR1, 0, 13)).toString(), 'device memory');
    await p.close();
  });

  test('incomplete data at RESUMING -> STOP: the destination is reset (RUNNING went with the refused STOP), source RUNNING', async () => {
    const p = await pair();
    const target = new LocalTarget(p.dst);
    const real = target.deviceData.bind(target);
    let n = 0;
    target.deviceData = async (c) => {
      if (n++ === 0) await real(c.subarray(0, 100)); // drop bytes on the floor
    };
    const resets: string[] = [];
    p.b.device.on('reset', (why) => resets.push(why));
    await assert.rejects(migrate(p.src, target, { noPreCopy: true }), /resuming the destination/);
    assert.equal(await p.src.migrationState(), MigState.RUNNING);
    assert.equal(await p.dst.migrationState(), MigState.RUNNING);
    // whatever the refused STOP left (RUNNING came in the same write), the
    // destination device is reset
    assert.deepStrictEqual(resets, ['client']);
    await p.close();
  });

  test('the destination server vanishes mid-migration: source rolls back', async () => {
    const p = await pair();
    const target = new LocalTarget(p.dst);
    const real = target.deviceData.bind(target);
    target.deviceData = async (c) => {
      await p.sb.server.close(); // the destination dies
      return real(c);
    };
    await assert.rejects(migrate(p.src, target), MigrationError);
    assert.equal(await p.src.migrationState(), MigState.RUNNING);
    assert.equal((await p.src.regionRead(PciRegion.BAR1, 0, 13)).toString(), 'device memory');
    await p.sa.close();
  });
});
