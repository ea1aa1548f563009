// The downtime, taken apart and predicted: the report's parts add up to the
// downtime; switch-over waits for the device's initial data (sizing
// extension or not); a migration that cannot converge says so and rolls
// back.  (The prediction on the bench scenario: migrate-prediction.test.ts.)
import { strict as assert } from 'node:assert';
import { describe, test } from 'node:test';
import type { VfioUserClient } from '../src/client/client.js';
import { LocalTarget, MigrationNotConvergedError, migrate, type MigrationReport } from '../src/client/migrate.js';
import { createBigState } from '../src/devices/bigstate.js';
import { MigState, type MigStateId, PciRegion } from '../src/protocol/constants.js';
import { VfioUserDevice } from '../src/server/device.js';
import { serve } from './helpers/server.js';

const MiB = 1024 * 1024;

async function pair(opts: { stateMib: number; guestMib: number; sizing?: boolean }) {
  const a = createBigState({ stateMib: opts.stateMib, precopyMib: opts.stateMib });
  const b = createBigState({ stateMib: opts.stateMib, precopyMib: opts.stateMib, seed: 2 });
  const sa = await serve(a.device);
  const sb = await serve(b.device);
  const src = await sa.connect({ migSizing: opts.sizing ?? true });
  const dst = await sb.connect();
  const ram = { iova: 0x100000, size: opts.guestMib * MiB };
  src.memory.add(ram.iova, ram.size).bytes.fill(0x33);
  await src.dmaMap(ram);
  return { a, b, src, dst, ram, close: async () => (await sa.close(), await sb.close()) };
}

/** A guest that writes `pct`% of its pages (one 4 KiB page in every 100/pct) each time it is called. */
function dirtier(src: VfioUserClient, ram: { iova: number; size: number }, pct: number): () => void {
  let n = 0;
  const step = Math.max(1, Math.round(100 / pct));
  return () => {
    n++;
    for (let p = n % step; p < ram.size / 4096; p += step) src.memory.write(ram.iova + p * 4096, Buffer.from([n & 0xff]));
  };
}

const sum = (r: MigrationReport): number => Object.values(r.downtimeParts).reduce((x, y) => x + y, 0);

/** A device whose migration stream is `state`, made by streamDevice(). */
interface StreamDevice {
  device: VfioUserDevice;
  state: Buffer;
  /** Bytes read since the stream last restarted. */
  sent: () => number;
}

/**
 * A device whose migration stream is `state`: read from its start again on
 * entering `restartOn`, at most `limit(state)` bytes in all by then (after
 * `beforeRead`, when given), and written back from RESUMING on.
 */
function streamDevice(
  name: string,
  state: Buffer,
  o: {
    restartOn: MigStateId;
    limit: (mig: MigStateId) => number;
    beforeRead?: (max: number, mig: MigStateId) => unknown;
    precopyInfo: () => { initialBytes: number; dirtyBytes: number };
    stopCopySize: () => number;
  },
): StreamDevice {
  const device = new VfioUserDevice({ name, pci: { vendorId: 0x1234, deviceId: 0x0003 } });
  device.addRegion(PciRegion.BAR0, { size: 0x1000, memory: true });
  device.setupDma();
  let sent = 0;
  let got = 0;
  const read = (max: number): Buffer => {
    const n = Math.max(0, Math.min(max, o.limit(device.migration!.state) - sent));
    sent += n;
    return state.subarray(sent - n, sent);
  };
  device.setupMigration({
    features: { preCopy: true },
    transition: (_from: MigStateId, to: MigStateId) => {
      if (to === o.restartOn) sent = 0;
      if (to === MigState.RESUMING) got = 0;
    },
    readData: (max: number) => {
      const w = o.beforeRead?.(max, device.migration!.state);
      return w instanceof Promise ? w.then(() => read(max)) : read(max);
    },
    writeData: (data: Buffer) => {
      data.copy(state, got);
      got += data.length;
    },
    precopyInfo: o.precopyInfo,
    stopCopySize: o.stopCopySize,
  });
  return { device, state, sent: () => sent };
}

describe('downtime parts and switch-over', () => {
  test('the parts add up to the downtime; prediction, rates and verification are reported', async () => {
    const p = await pair({ stateMib: 4, guestMib: 4 });
    const guest = dirtier(p.src, p.ram, 5);
    // what the source is asked, and what it does
    const asked: number[] = [];
    const set = p.src.setMigrationState.bind(p.src);
    p.src.setMigrationState = (st: number) => (asked.push(st), set(st));
    const arcs: string[] = [];
    p.a.device.on('migration', (from: number, to: number) => arcs.push(`${from}->${to}`));
    const r = await migrate(p.src, new LocalTarget(p.dst, async () => 'same'), {
      onProgress: (e) => e.remainingEstimate !== undefined && guest(),
      sourceChecksum: async () => 'same',
    });
    assert.ok(r.downtimeMs > 0);
    for (const [k, v] of Object.entries(r.downtimeParts)) assert.ok(v >= 0, `${k} = ${v}`);
    assert.ok(Math.abs(sum(r) - r.downtimeMs) <= 1e-9 * Math.max(1, r.downtimeMs), `parts ${sum(r)} vs ${r.downtimeMs}`);
    assert.ok(r.downtimeParts.destinationStopMs > 0 && r.downtimeParts.sourceStopCopyMs > 0);
    assert.ok(r.converged && r.overlapped);
    assert.ok(r.predictedDowntimeMs !== null && r.predictedDowntimeMs > 0);
    assert.equal(r.maxDowntimeMs, 300);
    assert.ok(r.rates !== null && r.rates.guestBytesPerMs > 0 && r.rates.deviceBytesPerMs > 0 && r.rates.roundTripMs > 0);
    assert.equal(r.sourceChecksum, 'same');
    assert.equal(r.destinationChecksum, 'same');
    // PRE_COPY again just before the pause (a no-op: no arc), STOP_COPY, and
    // one STOP (for verification; the release does not send a second)
    assert.deepStrictEqual(asked, [MigState.PRE_COPY, MigState.PRE_COPY, MigState.STOP_COPY, MigState.STOP]);
    assert.deepStrictEqual(arcs, [`${MigState.RUNNING}->${MigState.PRE_COPY}`, `${MigState.PRE_COPY}->${MigState.STOP_COPY}`, `${MigState.STOP_COPY}->${MigState.STOP}`]);
    const last = r.rounds[r.rounds.length - 1]!;
    assert.ok(last.dirtyPages >= (p.ram.size / 4096) * 0.05 - 1, 'the final round carries what the guest wrote after the last sync');
    assert.ok(p.src.memory.view(p.ram.iova, p.ram.size).equals(p.dst.memory.view(p.ram.iova, p.ram.size)));
    assert.equal(p.b.state.equals(p.a.state), true);
    await p.close();
  });

  for (const sizing of [true, false]) {
    test(`switch-over waits for the device's initial data (${sizing ? 'precopy_info and data_size' : 'no sizing extension: what it streams'})`, async () => {
      const p = await pair({ stateMib: 8, guestMib: 1, sizing });
      // 64 KiB chunks: a pre-copy round reads at most ~4 MiB, so the 8 MiB
      // of initial data take more than the first round
      const r = await migrate(p.src, new LocalTarget(p.dst), { chunkSize: 64 * 1024 });
      const pre = r.rounds.slice(0, -1).reduce((n, x) => n + x.deviceBytes, 0);
      assert.equal(pre, 8 * MiB, 'all initial data went before switching over');
      assert.ok(r.rounds.length >= 3, `rounds: ${r.rounds.length}`);
      assert.equal(r.rounds[r.rounds.length - 1]!.deviceBytes, 0);
      assert.equal(r.stopCopyBytesExpected, sizing ? 0 : null);
      assert.ok(p.b.state.equals(p.a.state));
      await p.close();
    });
  }

  test('a guest dirtying faster than it can converge: the migration says so and rolls back', async () => {
    const p = await pair({ stateMib: 1, guestMib: 2 });
    const guest = dirtier(p.src, p.ram, 100);
    await assert.rejects(
      migrate(p.src, new LocalTarget(p.dst), { maxDowntimeMs: 0, maxRounds: 3, onProgress: (e) => e.remainingEstimate !== undefined && guest() }),
      (e: unknown) => {
        assert.ok(e instanceof MigrationNotConvergedError);
        assert.match(e.message, /cannot converge: after 3 rounds/);
        assert.match(e.message, /the guest dirties [\d.]+ MB\/s, pages move at [\d.]+ MB\/s/);
        assert.equal(e.report.rounds.length, 4);
        assert.equal(e.report.converged, false);
        assert.ok(e.report.rates !== null && e.report.rates.dirtyBytesPerMs > 0);
        return true;
      },
    );
    assert.equal(await p.src.migrationState(), MigState.RUNNING);
    assert.equal(await p.dst.migrationState(), MigState.RUNNING);
    assert.equal(p.b.device.dma.count, 0, 'destination released');
    await p.close();
  });

  test('timeoutMs gives up pre-copy the same way', async () => {
    const p = await pair({ stateMib: 1, guestMib: 1 });
    await assert.rejects(migrate(p.src, new LocalTarget(p.dst), { maxDowntimeMs: 0, timeoutMs: 0 }), MigrationNotConvergedError);
    assert.equal(await p.src.migrationState(), MigState.RUNNING);
    await p.close();
  });
});

test('a device with little pre-copy data and slow reads still converges: a short read measures latency, not throughput', async () => {
  // Each read takes 20 ms (a device that answers slowly, or a loaded
  // machine); pre-copy moves 1 KiB of the 256 KiB state.  Taken as a rate,
  // 1 KiB in 40 ms would predict seconds for the rest and never switch over.
  const make = (fill: number) => {
    const d: StreamDevice = streamDevice('slow', Buffer.alloc(256 * 1024, fill), {
      restartOn: MigState.PRE_COPY,
      limit: (mig) => (mig === MigState.STOP_COPY ? d.state.length : 1024),
      beforeRead: () => new Promise((r) => setTimeout(r, 20)), // the slow device itself
      precopyInfo: () => ({ initialBytes: Math.max(0, 1024 - d.sent()), dirtyBytes: 0 }),
      stopCopySize: () => d.state.length - d.sent(),
    });
    return d;
  };
  const a = make(0x5a);
  const b = make(0);
  const sa = await serve(a.device);
  const sb = await serve(b.device);
  const r = await migrate(await sa.connect({ migSizing: true }), new LocalTarget(await sb.connect()), {});
  assert.ok(r.converged);
  assert.ok(b.state.equals(a.state));
  await sa.close();
  await sb.close();
});

describe('stop-copy reads sized by data_size', () => {
  // The device's stop-copy stream is `actual` bytes; data_size says
  // `reported`.  A read past the end comes back padded to its size, so the
  // read that finds the end should be small, whatever the device said.
  const run = async (actual: number, reported: number) => {
    const asked: number[] = [];
    const make = (fill: number) => {
      const state = Buffer.alloc(actual, fill);
      for (let i = 0; i < state.length; i += 4096) state[i] = (i >> 12) & 0xff;
      return streamDevice('sized', state, {
        restartOn: MigState.STOP_COPY,
        limit: (mig) => (mig === MigState.STOP_COPY ? state.length : 0),
        beforeRead: (max, mig) => void (mig === MigState.STOP_COPY && asked.push(max)),
        precopyInfo: () => ({ initialBytes: 0, dirtyBytes: 0 }),
        stopCopySize: () => reported,
      });
    };
    const a = make(0x5a);
    const b = make(0);
    const sa = await serve(a.device);
    const sb = await serve(b.device);
    try {
      const r = await migrate(await sa.connect({ migSizing: true }), new LocalTarget(await sb.connect()), { chunkSize: MiB });
      assert.equal(r.stopCopyBytesExpected, reported);
      assert.ok(b.state.equals(a.state), 'the whole stream arrived');
      return asked;
    } finally {
      await sa.close();
      await sb.close();
    }
  };

  test('exact: reads ask for what is left, the last one 4 KiB more, and its short reply is the end (no read of its own)', async () => {
    const asked = await run(2 * MiB + 100, 2 * MiB + 100);
    assert.deepEqual(asked, [MiB, MiB, 100 + 4096]);
  });

  test('exact, a whole chunk: what is left and 4 KiB more do not fit a read, so a 4 KiB read finds the end', async () => {
    const asked = await run(MiB, MiB);
    assert.deepEqual(asked, [MiB, 4096]);
  });

  test('nothing left: one 4 KiB read, not a padded 1 MiB', async () => {
    const asked = await run(0, 0);
    assert.deepEqual(asked, [4096]);
  });

  test('more than it said: whole chunks again once a read comes back full', async () => {
    const asked = await run(3 * MiB, 5000);
    assert.deepEqual(asked, [5000 + 4096, MiB, MiB, MiB]); // the last one short: the end
  });

  test('less than it said: the short read ends the stream', async () => {
    const asked = await run(10_000, 2 * MiB);
    assert.deepEqual(asked, [MiB]);
  });
});
