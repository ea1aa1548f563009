// Migration v2 in the server, over real sockets: the state machine for every
// feature combination (one device callback per hop, compared with planPath),
// its error cases, DEVICE_FEATURE probing and argsz rules, what a stopped
// device refuses, the MIG_DATA stream (chunking, limits, large writes), the
// pre-copy sizing extension, and a migration between two `vfu serve`
// processes while the source keeps changing.
import { strict as assert } from 'node:assert';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { VfioUserClient } from '../src/client/client.js';
import { BAR1_SIZE, createSample, type SampleDevice } from '../src/devices/sample.js';
import { deriveNextState, migrationFlags, planPath, supportedStates, type MigrationFeatures } from '../src/migration/fsm.js';
import { parseCapabilities } from '../src/protocol/capabilities.js';
import {
  Command,
  Errno,
  Feature,
  FeatureFlag,
  IrqIndex,
  IrqSetFlag,
  MigState,
  PciRegion,
  VERSION_MAJOR,
  VERSION_MINOR,
  migStateNames,
} from '../src/protocol/constants.js';
import { DeviceStateLostError } from '../src/migration/controller.js';
import { VfuError } from '../src/protocol/errors.js';
import { IrqSetStruct } from '../src/protocol/messages/device.js';
import { DmaMapStruct, DmaUnmapStruct } from '../src/protocol/messages/dma.js';
import { FeatureStruct, MigStateStruct } from '../src/protocol/messages/feature.js';
import { MigDataStruct } from '../src/protocol/messages/migration.js';
import { version } from '../src/protocol/messages/version.js';
import { VfioUserDevice } from '../src/server/device.js';
import { Connection } from '../src/transport/connection.js';
import { closeFd, connect } from '../src/transport/socket.js';
import { createFsmDevice, createStreamDevice, patternBytes, sha256, type FsmDevice, type Hop, type StreamDevice } from './helpers/mig-devices.js';
import { sampleForSuite } from './helpers/sample-suite.js';
import { rejectsWith, serve, tempDir, until, type Served } from './helpers/server.js';

const { ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P } = MigState;
const { GET, SET, PROBE } = FeatureFlag;
const name = (s: number): string => migStateNames[s] ?? String(s);
const ALL_FEATURES: MigrationFeatures[] = [
  { preCopy: false, p2p: false },
  { preCopy: false, p2p: true },
  { preCopy: true, p2p: false },
  { preCopy: true, p2p: true },
];
const fname = (f: MigrationFeatures): string => `STOP_COPY${f.p2p ? '|P2P' : ''}${f.preCopy ? '|PRE_COPY' : ''}`;

/** A raw DEVICE_FEATURE request (argsz defaults to the payload's size). */
function feature(c: VfioUserClient, flags: number, data: Buffer = Buffer.alloc(0), argsz = FeatureStruct.size + data.length) {
  return c.conn.request(Command.DEVICE_FEATURE, Buffer.concat([FeatureStruct.encode({ argsz, flags }), data]));
}

function stateData(s: number): Buffer {
  return MigStateStruct.encode({ deviceState: s, dataFd: -1 });
}

function arcs(from: number, path: readonly number[]): Hop[] {
  const out: Hop[] = [];
  let cur = from;
  for (const s of path) {
    out.push([cur, s]);
    cur = s;
  }
  return out;
}

/** Reads the stream until a short read, in `chunk`-byte requests. */
async function readStream(c: VfioUserClient, chunk: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (;;) {
    const b = await c.migDataRead(chunk);
    parts.push(b);
    if (b.length < chunk) return Buffer.concat(parts);
  }
}

async function writeStream(c: VfioUserClient, data: Buffer, chunk: number): Promise<void> {
  for (let at = 0; at < data.length; at += chunk) await c.migDataWrite(data.subarray(at, at + chunk));
}

// ---------------------------------------------------------------------------
// The state machine, per feature set.

for (const f of ALL_FEATURES) {
  describe(`v2 state machine, ${fname(f)}`, () => {
    const table = deriveNextState(f);
    const states = supportedStates(f);
    let d: FsmDevice;
    let srv: Served;
    let c: VfioUserClient;
    const events: Hop[] = [];
    before(async () => {
      d = createFsmDevice(f);
      d.device.on('migration', (from: number, to: number) => events.push([from, to]));
      srv = await serve(d.device);
      c = await srv.connect();
    });
    after(async () => {
      await srv.close();
    });

    /** Puts the device in `s` (through RUNNING when needed). */
    async function drive(s: number): Promise<void> {
      const cur = await c.migrationState();
      if (cur !== s) {
        if (cur !== RUNNING) await c.setMigrationState(RUNNING);
        if (s !== RUNNING) await c.setMigrationState(s);
      }
      assert.equal(await c.migrationState(), s);
      d.hops.length = 0;
      d.quiescedDuring.length = 0;
      events.length = 0;
    }

    test('MIGRATION GET returns the flags; the device starts RUNNING', async () => {
      assert.equal(await c.migrationFlags(), migrationFlags(f));
      const r = await feature(c, Feature.MIGRATION | GET, Buffer.alloc(0), 16);
      assert.equal(r.payload.length, 16);
      assert.equal(r.payload.readUInt32LE(0), 16, 'argsz');
      assert.equal(r.payload.readUInt32LE(4), Feature.MIGRATION | GET, 'flags echoed');
      assert.equal(r.payload.readBigUInt64LE(8), BigInt(migrationFlags(f)));
      assert.equal(await c.migrationState(), RUNNING);
      const g = await feature(c, Feature.MIG_DEVICE_STATE | GET, Buffer.alloc(0), 16);
      assert.equal(g.payload.length, 16);
      assert.equal(g.payload.readUInt32LE(8), RUNNING);
      assert.equal(g.payload.readInt32LE(12), -1, 'no data_fd');
    });

    test('every SET walks planPath, one callback per hop, for every (from, to)', async () => {
      let multiHop = 0;
      for (const from of states) {
        for (let to = 0; to < 8; to++) {
          await drive(from);
          const q0 = d.quiesces;
          const path = planPath(table, from, to);
          const what = `${name(from)} -> ${name(to)}`;
          if (path === null) {
            await rejectsWith(c.setMigrationState(to), Errno.EINVAL);
            assert.equal(await c.migrationState(), from, `${what}: state unchanged`);
            assert.deepEqual(d.hops, [], `${what}: no callback`);
            continue;
          }
          // the SET echoes its request
          const r = await feature(c, Feature.MIG_DEVICE_STATE | SET, stateData(to));
          assert.ok(r.payload.equals(Buffer.concat([FeatureStruct.encode({ argsz: 16, flags: Feature.MIG_DEVICE_STATE | SET }), stateData(to)])));
          assert.deepEqual(d.hops, arcs(from, path), what);
          assert.deepEqual(events, arcs(from, path), `${what}: 'migration' events`);
          assert.ok(d.quiescedDuring.every(Boolean), `${what}: DMA quiesced during the callbacks`);
          assert.equal(await c.migrationState(), to, what);
          if (from === to) assert.equal(d.quiesces, q0, `${what}: a no-op does not even quiesce`);
          if (path.length > 1) multiHop++;
        }
      }
      assert.ok(multiHop > 0, 'some requests need several hops');
    });

    test('unreachable targets: EINVAL, state and device untouched', async () => {
      const unsupported = [0, 1, 2, 3, 4, 5, 6, 7].filter((s) => !states.includes(s));
      assert.ok(unsupported.includes(ERROR));
      for (const from of states) {
        await drive(from);
        for (const to of [...unsupported, 8, 9, 0xffff, 0x7fffffff, 0xffffffff]) {
          await rejectsWith(feature(c, Feature.MIG_DEVICE_STATE | SET, stateData(to)), Errno.EINVAL);
        }
        assert.equal(await c.migrationState(), from);
        assert.deepEqual(d.hops, []);
      }
      if (f.preCopy) {
        await drive(STOP_COPY);
        await rejectsWith(c.setMigrationState(PRE_COPY), Errno.EINVAL);
        if (f.p2p) await rejectsWith(c.setMigrationState(PRE_COPY_P2P), Errno.EINVAL);
        assert.equal(await c.migrationState(), STOP_COPY);
        assert.deepEqual(d.hops, []);
      }
      await c.setMigrationState(RUNNING);
    });

    test('a failing hop: its errno in the reply, GET reports the state reached', async () => {
      await drive(RUNNING);
      const path = planPath(table, RUNNING, STOP_COPY)!;
      assert.deepEqual(path.slice(-2), [STOP, STOP_COPY]);
      // the last hop fails: the device stays in STOP
      d.fail.set(`${STOP},${STOP_COPY}`, new VfuError(Errno.EBUSY, 'not now'));
      await rejectsWith(c.setMigrationState(STOP_COPY), Errno.EBUSY);
      assert.equal(await c.migrationState(), STOP);
      assert.deepEqual(d.hops, arcs(RUNNING, path));
      // the first hop fails: nothing moves
      await c.setMigrationState(RUNNING);
      d.hops.length = 0;
      d.fail.clear();
      d.fail.set(`${RUNNING},${path[0]}`, new VfuError(Errno.EIO, 'broken'));
      await rejectsWith(c.setMigrationState(STOP_COPY), Errno.EIO);
      assert.equal(await c.migrationState(), RUNNING);
      assert.deepEqual(d.hops, [[RUNNING, path[0]]]);
      // any error with an errno works, and the next attempt goes through
      d.fail.set(`${RUNNING},${path[0]}`, Object.assign(new Error('plain'), { errno: Errno.EAGAIN }));
      await rejectsWith(c.setMigrationState(STOP), Errno.EAGAIN);
      d.fail.clear();
      d.hops.length = 0;
      await c.setMigrationState(STOP_COPY);
      assert.deepEqual(d.hops, arcs(RUNNING, path));
      assert.equal(await c.migrationState(), STOP_COPY);
      await c.setMigrationState(RUNNING);
    });

    test('enterError puts the device in ERROR; only DEVICE_RESET leaves it (to RUNNING)', async () => {
      await drive(RUNNING);
      const first = planPath(table, RUNNING, STOP)![0]!;
      d.fail.set(`${RUNNING},${first}`, new DeviceStateLostError(Errno.EIO, 'lost my state'));
      await rejectsWith(c.setMigrationState(STOP), Errno.EIO);
      d.fail.clear();
      assert.equal(await c.migrationState(), ERROR);
      d.hops.length = 0;
      for (let s = 0; s < 8; s++) await rejectsWith(c.setMigrationState(s), Errno.EINVAL);
      assert.equal(await c.migrationState(), ERROR);
      assert.deepEqual(d.hops, []);
      await rejectsWith(c.migDataRead(16), Errno.EINVAL);
      await rejectsWith(c.migDataWrite(Buffer.alloc(16)), Errno.EINVAL);
      // still usable otherwise
      assert.equal((await c.deviceInfo()).numRegions, 9);
      await c.reset();
      assert.equal(await c.migrationState(), RUNNING);
      assert.deepEqual(d.hops, [], 'leaving ERROR by reset is not an arc');
      await c.setMigrationState(STOP);
      await c.setMigrationState(RUNNING);
    });

    test('DEVICE_RESET leaves the migration state alone (libvfio-user #844)', async () => {
      for (const s of states) {
        await drive(s);
        if (s === STOP || s === STOP_COPY) {
          await rejectsWith(c.reset(), Errno.EINVAL); // a stopped device refuses it
        } else {
          await c.reset();
        }
        assert.equal(await c.migrationState(), s, `reset in ${name(s)}`);
        assert.deepEqual(d.hops, []);
      }
      await drive(RUNNING);
    });

    test('PROBE of every feature with GET/SET combinations; GET|SET needs PROBE', async () => {
      // What the server supports for a migratable device whose client asked
      // for the sizing extension (the default).
      const supported: [number, number][] = [
        [Feature.MIGRATION, GET],
        [Feature.MIG_DEVICE_STATE, GET | SET],
        [Feature.DMA_LOGGING_START, SET],
        [Feature.DMA_LOGGING_STOP, SET],
        [Feature.DMA_LOGGING_REPORT, GET],
        [Feature.MIG_DATA_SIZE, GET],
        [Feature.MIG_PRECOPY_INFO, GET],
        [0, 0],
        [3, 0],
        [5, 0],
        [10, 0],
        [0x8000, 0],
        [0xffff, 0],
      ];
      for (const [feat, ops] of supported) {
        for (const ask of [0, GET, SET, GET | SET]) {
          const req = Buffer.concat([FeatureStruct.encode({ argsz: 8, flags: feat | PROBE | ask })]);
          const ok = ops !== 0 && (ask & ops) === ask;
          const what = `PROBE feature ${feat} ops 0x${ask.toString(16)}`;
          if (ok) {
            const r = await c.conn.request(Command.DEVICE_FEATURE, req);
            assert.ok(r.payload.equals(req), `${what}: echoed`);
            assert.equal(await c.probeFeature(feat, ask), true, what);
          } else {
            await rejectsWith(c.conn.request(Command.DEVICE_FEATURE, req), Errno.EINVAL);
            assert.equal(await c.probeFeature(feat, ask), false, what);
          }
        }
        // GET and SET together without PROBE
        await rejectsWith(feature(c, feat | GET | SET, stateData(RUNNING)), Errno.EINVAL);
      }
      // PROBE with a larger argsz than needed, and with data, is fine
      const r = await feature(c, Feature.MIG_DEVICE_STATE | PROBE | SET, stateData(STOP), 64);
      assert.equal(r.payload.length, 16);
      assert.equal(await c.migrationState(), RUNNING, 'a PROBE never changes anything');
      // unknown flag bits, no operation at all
      await rejectsWith(feature(c, Feature.MIGRATION | GET | (1 << 19), Buffer.alloc(0), 16), Errno.EINVAL);
      await rejectsWith(feature(c, Feature.MIGRATION, Buffer.alloc(0), 16), Errno.EINVAL);
      // unknown features
      for (const feat of [0, 3, 4, 0x7fff, 0xffff]) {
        await rejectsWith(feature(c, feat | GET, Buffer.alloc(0), 64), Errno.EINVAL);
        await rejectsWith(feature(c, feat | SET, Buffer.alloc(8), 64), Errno.EINVAL);
      }
      // SET of a GET-only feature and the reverse
      await rejectsWith(feature(c, Feature.MIGRATION | SET, Buffer.alloc(8)), Errno.EINVAL);
      await rejectsWith(feature(c, Feature.DMA_LOGGING_STOP | GET, Buffer.alloc(0), 64), Errno.EINVAL);
      assert.equal(await c.migrationState(), RUNNING);
    });

    test('argsz and length rules', async () => {
      // shorter than the header
      await rejectsWith(c.conn.request(Command.DEVICE_FEATURE, Buffer.alloc(4)), Errno.EINVAL);
      await rejectsWith(c.conn.request(Command.DEVICE_FEATURE, null), Errno.EINVAL);
      // GET with no room for the reply
      for (const argsz of [0, 8, 15]) {
        await rejectsWith(feature(c, Feature.MIGRATION | GET, Buffer.alloc(0), argsz), Errno.EINVAL);
        await rejectsWith(feature(c, Feature.MIG_DEVICE_STATE | GET, Buffer.alloc(0), argsz), Errno.EINVAL);
        await rejectsWith(feature(c, Feature.MIG_DATA_SIZE | GET, Buffer.alloc(0), argsz), Errno.EINVAL);
      }
      await rejectsWith(feature(c, Feature.MIG_PRECOPY_INFO | GET, Buffer.alloc(0), 23), Errno.EINVAL);
      // SET with argsz below what it carries, or too little data
      await rejectsWith(feature(c, Feature.MIG_DEVICE_STATE | SET, stateData(STOP), 15), Errno.EINVAL);
      await rejectsWith(feature(c, Feature.MIG_DEVICE_STATE | SET, Buffer.alloc(4, 1)), Errno.EINVAL);
      await rejectsWith(feature(c, Feature.MIG_DEVICE_STATE | SET, Buffer.alloc(0)), Errno.EINVAL);
      // PROBE with argsz below its payload
      await rejectsWith(feature(c, Feature.MIGRATION | PROBE, Buffer.alloc(8), 8), Errno.EINVAL);
      assert.deepEqual(d.hops.filter(([, to]) => to === STOP), [], 'nothing moved');
      // a larger argsz than needed is fine
      const r = await feature(c, Feature.MIG_DEVICE_STATE | GET, Buffer.alloc(0), 4096);
      assert.equal(r.payload.readUInt32LE(8), RUNNING);
      assert.equal(r.payload.readUInt32LE(0), 16, 'argsz in the reply is what was written');
      assert.equal(await c.migrationState(), RUNNING);
    });
  });
}

describe('v2 on a device that is not migratable', () => {
  let srv: Served;
  before(async () => {
    const dev = new VfioUserDevice({ name: 'plain', pci: { vendorId: 1, deviceId: 2 } });
    dev.addRegion(PciRegion.BAR0, { size: 0x1000, memory: true });
    srv = await serve(dev);
  });
  after(async () => {
    await srv.close();
  });

  test('migration features are refused; logging is still offered', async () => {
    const c = await srv.connect();
    assert.equal(c.serverCaps.migration, undefined);
    assert.equal(c.hasMigSizing, false);
    assert.equal(await c.migrationFlags(), 0);
    await rejectsWith(c.migrationState(), Errno.EINVAL);
    await rejectsWith(c.setMigrationState(STOP), Errno.EINVAL);
    for (const feat of [Feature.MIGRATION, Feature.MIG_DEVICE_STATE, Feature.MIG_DATA_SIZE, Feature.MIG_PRECOPY_INFO]) {
      assert.equal(await c.probeFeature(feat), false);
    }
    assert.equal(await c.probeFeature(Feature.DMA_LOGGING_START, SET), true);
    await rejectsWith(c.migDataRead(8), Errno.EINVAL);
    await rejectsWith(c.migDataWrite(Buffer.alloc(8)), Errno.EINVAL);
    // a stopped-device rule cannot apply: everything works
    c.memory.add(0, 0x1000);
    await c.dmaMap({ iova: 0, size: 0x1000 });
    await c.reset();
    assert.equal((await c.regionRead(PciRegion.BAR0, 0, 4)).length, 4);
    c.close();
  });
});

// ---------------------------------------------------------------------------
// What a stopped device accepts.

describe('v2: commands while STOP and STOP_COPY', () => {
  let dev: SampleDevice;
  let srv: Served;
  let c: VfioUserClient;
  before(async () => {
    dev = createSample();
    srv = await serve(dev.device);
    c = await srv.connect();
    c.memory.add(0x10000, 0x2000);
    c.memory.add(0x20000, 0x1000);
    await c.dmaMap({ iova: 0x10000, size: 0x2000 });
  });
  after(async () => {
    await srv.close();
  });

  const dmaMapRaw = () =>
    c.conn.request(
      Command.DMA_MAP,
      DmaMapStruct.encode({ argsz: DmaMapStruct.size, flags: 3, offset: 0n, addr: 0x30000n, size: 0x1000n }),
    );
  const dmaUnmapRaw = () =>
    c.conn.request(Command.DMA_UNMAP, DmaUnmapStruct.encode({ argsz: DmaUnmapStruct.size, flags: 0, addr: 0x10000n, size: 0x2000n }));
  const setIrqsRaw = () =>
    c.conn.request(
      Command.DEVICE_SET_IRQS,
      IrqSetStruct.encode({ argsz: IrqSetStruct.size, flags: IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_MASK, index: IrqIndex.INTX, start: 0, count: 1 }),
    );

  async function refusedWhenStopped(): Promise<void> {
    await rejectsWith(c.dmaMap({ iova: 0x20000, size: 0x1000 }), Errno.EINVAL);
    await rejectsWith(dmaMapRaw(), Errno.EINVAL);
    await rejectsWith(c.dmaUnmap(0x10000, 0x2000), Errno.EINVAL);
    await rejectsWith(dmaUnmapRaw(), Errno.EINVAL);
    await rejectsWith(c.dmaUnmapAll(), Errno.EINVAL);
    await rejectsWith(setIrqsRaw(), Errno.EINVAL);
    await rejectsWith(c.maskInterrupts(IrqIndex.INTX, 0, 1, true), Errno.EINVAL);
    await rejectsWith(c.reset(), Errno.EINVAL);
    await rejectsWith(c.migDataWrite(Buffer.alloc(8)), Errno.EINVAL);
    assert.equal(dev.device.dma.count, 1, 'mappings untouched');
    // read-only queries are allowed (our documented extension)
    assert.deepEqual(await c.deviceInfo(), { flags: 3, numRegions: 9, numIrqs: 5 });
    assert.equal((await c.regionInfo(PciRegion.BAR1)).size, BAR1_SIZE);
    assert.equal((await c.irqInfo(IrqIndex.INTX)).count, 1);
    // so are the migration features
    assert.equal(await c.migrationFlags(), migrationFlags({ preCopy: true, p2p: false }));
    assert.equal(await c.stopCopySize(), BAR1_SIZE + 8);
  }

  test('STOP: DMA, IRQ, reset and MIG_DATA_WRITE refused; region access works', async () => {
    await c.regionWrite(PciRegion.BAR1, 0, Buffer.from('before stop'));
    await c.setMigrationState(STOP);
    await refusedWhenStopped();
    assert.equal((await c.regionRead(PciRegion.BAR1, 0, 11)).toString(), 'before stop');
    await c.regionWrite(PciRegion.BAR1, 0, Buffer.from('while stopp'));
    assert.equal((await c.regionRead(PciRegion.BAR1, 0, 11)).toString(), 'while stopp');
    assert.equal((await c.regionRead(PciRegion.CONFIG, 0, 4)).readUInt16LE(0), 0xdead);
    await c.regionWriteMulti([{ index: PciRegion.BAR1, offset: 16, data: Buffer.from('multi') }]);
    assert.equal((await c.regionRead(PciRegion.BAR1, 16, 5)).toString(), 'multi');
    await rejectsWith(c.migDataRead(64), Errno.EINVAL);
    assert.equal(await c.migrationState(), STOP);
    await c.setMigrationState(RUNNING);
  });

  test('STOP_COPY: region access refused too (libvfio-user), MIG_DATA_READ allowed', async () => {
    await c.setMigrationState(STOP_COPY);
    await refusedWhenStopped();
    await rejectsWith(c.regionRead(PciRegion.BAR1, 0, 8), Errno.EINVAL);
    await rejectsWith(c.regionWrite(PciRegion.BAR1, 0, Buffer.alloc(8)), Errno.EINVAL);
    await rejectsWith(c.regionRead(PciRegion.CONFIG, 0, 4), Errno.EINVAL);
    await rejectsWith(c.regionWriteMulti([{ index: PciRegion.BAR1, offset: 0, data: Buffer.alloc(4) }]), Errno.EINVAL);
    const stream = await readStream(c, 4096);
    assert.equal(stream.length, BAR1_SIZE + 8);
    assert.equal(await c.migrationState(), STOP_COPY);
    await c.setMigrationState(RUNNING);
  });

  test('back to RUNNING everything works again', async () => {
    await c.dmaMap({ iova: 0x20000, size: 0x1000 });
    await c.dmaUnmap(0x20000, 0x1000);
    await c.maskInterrupts(IrqIndex.INTX, 0, 1, true);
    await c.maskInterrupts(IrqIndex.INTX, 0, 1, false);
    await c.reset();
    await c.regionWrite(PciRegion.BAR1, 0, Buffer.from('running'));
    assert.equal((await c.regionRead(PciRegion.BAR1, 0, 7)).toString(), 'running');
    assert.equal(dev.device.dma.count, 1);
  });
});

// ---------------------------------------------------------------------------
// The data stream.

describe('v2: MIG_DATA with the sample device', () => {
  const suite = sampleForSuite();

  test('read only in PRE_COPY and STOP_COPY', async () => {
    const c = await suite.srv.connect();
    for (const s of [RUNNING, STOP, RESUMING]) {
      await c.setMigrationState(s);
      await rejectsWith(c.migDataRead(64), Errno.EINVAL);
    }
    await c.setMigrationState(RUNNING);
    await rejectsWith(c.migDataRead(64), Errno.EINVAL);
    assert.equal(await c.migrationState(), RUNNING);
    c.close();
  });

  for (const chunk of [1, 7, 1024, 4096, 65536]) {
    test(`the stream in ${chunk}-byte reads: PRE_COPY = BAR1, STOP_COPY = BAR1 + BAR0`, async () => {
      const c = await suite.srv.connect();
      const bar1 = patternBytes(BAR1_SIZE, chunk);
      await c.regionWrite(PciRegion.BAR1, 0, bar1);
      const bar0 = Buffer.alloc(8);
      bar0.writeBigInt64LE(BigInt(1000 + chunk)); // in the past: no timer
      await c.regionWrite(PciRegion.BAR0, 0, bar0);
      await c.setMigrationState(PRE_COPY);
      const pre = await readStream(c, chunk);
      assert.equal(pre.length, 12_288);
      assert.ok(pre.equals(bar1));
      // past the end: empty reads, still in PRE_COPY
      assert.equal((await c.migDataRead(chunk)).length, 0);
      assert.equal(await c.migrationState(), PRE_COPY);
      await c.setMigrationState(STOP_COPY);
      const stop = await readStream(c, chunk);
      assert.equal(stop.length, 12_296);
      assert.ok(stop.equals(Buffer.concat([bar1, bar0])));
      assert.equal((await c.migDataRead(chunk)).length, 0);
      await c.setMigrationState(RUNNING);
      c.close();
    });
  }

  test('read limits: max_data_xfer_size (ours and the client\'s), argsz, short requests', async () => {
    const c = await suite.srv.connect({ maxDataXferSize: 4096 });
    await c.setMigrationState(PRE_COPY);
    await rejectsWith(c.migDataRead(4097), Errno.EINVAL);
    await rejectsWith(c.migDataRead((1 << 20) + 1), Errno.EINVAL);
    assert.equal((await c.migDataRead(4096)).length, 4096);
    const raw = (argsz: number, size: number) => c.conn.request(Command.MIG_DATA_READ, MigDataStruct.encode({ argsz, size }));
    await rejectsWith(raw(8 + 100 - 1, 100), Errno.EINVAL);
    await rejectsWith(raw(0, 0), Errno.EINVAL);
    await rejectsWith(c.conn.request(Command.MIG_DATA_READ, Buffer.alloc(4)), Errno.EINVAL);
    // argsz larger than needed is fine; the reply says what was produced
    const r = await raw(8 + 4096, 100);
    assert.equal(r.payload.readUInt32LE(0), 8 + 100);
    assert.equal(r.payload.readUInt32LE(4), 100);
    // the stream went on where it was
    const rest = await readStream(c, 4096);
    assert.equal(4096 + 100 + rest.length, BAR1_SIZE);
    await c.setMigrationState(RUNNING);
    c.close();
    const big = await suite.srv.connect();
    await big.setMigrationState(PRE_COPY);
    await rejectsWith(big.migDataRead((1 << 20) + 1), Errno.EINVAL);
    assert.equal((await big.migDataRead(1 << 20)).length, BAR1_SIZE);
    await big.setMigrationState(RUNNING);
    big.close();
  });

  test('MIG_DATA_WRITE only in RESUMING; malformed writes refused', async () => {
    const c = await suite.srv.connect();
    for (const s of [RUNNING, PRE_COPY, STOP_COPY, STOP]) {
      await c.setMigrationState(s);
      await rejectsWith(c.migDataWrite(Buffer.alloc(8)), Errno.EINVAL);
    }
    await c.setMigrationState(RESUMING);
    const raw = (argsz: number, size: number, data: Buffer) =>
      c.conn.request(Command.MIG_DATA_WRITE, MigDataStruct.encode({ argsz, size }), { extra: data });
    await rejectsWith(raw(8 + 100, 100, Buffer.alloc(50)), Errno.EINVAL); // partial
    await rejectsWith(raw(8 + 100, 100, Buffer.alloc(101)), Errno.EINVAL); // too much
    await rejectsWith(raw(8 + 99, 100, Buffer.alloc(100)), Errno.EINVAL); // argsz
    await rejectsWith(raw(8 + (2 << 20), 2 << 20, Buffer.alloc(16)), Errno.EINVAL); // beyond max_data_xfer_size
    await rejectsWith(c.conn.request(Command.MIG_DATA_WRITE, Buffer.alloc(4)), Errno.EINVAL);
    assert.equal(suite.dev.device.migration!.stats.bytesWritten, 0, 'nothing reached the device');
    await c.migDataWrite(Buffer.alloc(0)); // an empty write is harmless
    assert.equal(await c.migrationState(), RESUMING);
    await c.setMigrationState(RUNNING);
    c.close();
  });

  test('RESUMING -> STOP fails while the sample device lacks a whole image', async () => {
    const c = await suite.srv.connect();
    await c.setMigrationState(RESUMING);
    await c.migDataWrite(Buffer.alloc(100, 1));
    await rejectsWith(c.setMigrationState(STOP), Errno.EINVAL);
    assert.equal(await c.migrationState(), RESUMING);
    // a partial pre-copy part followed by a whole stop-copy image is fine
    const bar1 = patternBytes(BAR1_SIZE, 99);
    const bar0 = Buffer.alloc(8);
    bar0.writeBigInt64LE(1234n);
    await c.migDataWrite(Buffer.concat([bar1, bar0]));
    await c.setMigrationState(RUNNING);
    assert.ok((await c.regionRead(PciRegion.BAR1, 0, BAR1_SIZE)).equals(bar1));
    assert.equal(suite.dev.bar0, 1234n);
    // RESUMING then STOP with no data at all leaves the device as it was
    await c.setMigrationState(RESUMING);
    await c.setMigrationState(STOP);
    assert.ok(suite.dev.bar1.equals(bar1));
    await c.setMigrationState(RUNNING);
    c.close();
  });

  test('the sample restores the last whole image whatever came before it (the ring read wraps at any offset)', async () => {
    const c = await suite.srv.connect();
    const image = BAR1_SIZE + 8;
    // prefix lengths that put the ring's start, and BAR0's 8 bytes, across its end
    for (const prefix of [0, 1, 5, 7, 8, 100, image - 9, image - 8, image - 1, image, image + 3, 2 * image - 2]) {
      await c.setMigrationState(RESUMING);
      if (prefix > 0) await c.migDataWrite(patternBytes(prefix, prefix + 1));
      const bar1 = patternBytes(BAR1_SIZE, prefix + 2);
      const bar0 = Buffer.alloc(8);
      bar0.writeBigInt64LE(0x01020304n + BigInt(prefix));
      await c.migDataWrite(Buffer.concat([bar1, bar0]));
      await c.setMigrationState(STOP);
      assert.ok(suite.dev.bar1.equals(bar1), `prefix ${prefix}: BAR1`);
      assert.equal(suite.dev.bar0, 0x01020304n + BigInt(prefix), `prefix ${prefix}: BAR0`);
    }
    await c.setMigrationState(RUNNING);
    c.close();
  });
});

describe('v2: a large state, written in chunks of 64 KiB and more', () => {
  const size = 3 * 1024 * 1024 + 12_345;
  const precopy = 1024 * 1024 + 7;
  let src: StreamDevice;
  let dst: StreamDevice;
  let s1: Served;
  let s2: Served;
  let cs: VfioUserClient;
  let cd: VfioUserClient;
  before(async () => {
    src = createStreamDevice({ size, precopy, seed: 1 });
    dst = createStreamDevice({ size, precopy, seed: 2 });
    s1 = await serve(src.device);
    s2 = await serve(dst.device);
    cs = await s1.connect();
    cd = await s2.connect();
  });
  after(async () => {
    await s1.close();
    await s2.close();
  });

  for (const chunk of [64 * 1024, 256 * 1024, 1024 * 1024]) {
    test(`${chunk / 1024} KiB reads and writes arrive intact`, async () => {
      src.state = patternBytes(size, chunk);
      assert.notEqual(sha256(dst.state), sha256(src.state));
      await cs.setMigrationState(PRE_COPY);
      assert.deepEqual(await cs.precopyInfo(), { initialBytes: precopy, dirtyBytes: 0 });
      const pre = await readStream(cs, chunk);
      assert.equal(pre.length, precopy);
      await cs.setMigrationState(STOP_COPY);
      const rest = await readStream(cs, chunk);
      const stream = Buffer.concat([pre, rest]);
      assert.equal(stream.length, size);
      assert.equal(sha256(stream), sha256(src.state));

      await cd.setMigrationState(RESUMING);
      await writeStream(cd, stream, chunk);
      assert.equal(dst.writes.length, Math.ceil(size / chunk));
      assert.ok(dst.writes.slice(0, -1).every((n) => n === chunk), 'one device write per message, whole');
      await cd.setMigrationState(STOP);
      assert.equal(sha256(dst.state), sha256(src.state));
      await cd.setMigrationState(RUNNING);
      await cs.setMigrationState(RUNNING);
    });
  }

  test('pipelined reads from a device that reuses one buffer arrive intact (each read waits for the previous reply to leave)', async () => {
    // Replies carry the device's buffer by reference: without the wait, a
    // later readData would overwrite bytes still queued for the socket.
    const total = 8 * 1024 * 1024;
    const state = patternBytes(total, 9);
    const device = new VfioUserDevice({ name: 'reuse', pci: { vendorId: 0x1234, deviceId: 0x0002 } });
    const one = Buffer.alloc(1024 * 1024);
    let pos = 0;
    device.setupMigration({
      transition(_from, to) {
        if (to === STOP_COPY) pos = 0;
      },
      readData(max) {
        const n = Math.min(max, total - pos, one.length);
        state.copy(one, 0, pos, pos + n);
        pos += n;
        return one.subarray(0, n);
      },
      writeData() {},
    });
    const s = await serve(device);
    try {
      const c = await s.connect();
      await c.setMigrationState(STOP_COPY);
      const parts = await Promise.all(Array.from({ length: 8 }, () => c.migDataRead(1024 * 1024)));
      assert.ok(Buffer.concat(parts).equals(state));
      assert.equal((await c.migDataRead(1024 * 1024)).length, 0);
    } finally {
      await s.close();
    }
  });

  test('without pre-copy the stop-copy stream carries everything', async () => {
    src.state = patternBytes(size, 77);
    await cs.setMigrationState(STOP_COPY);
    const stream = await readStream(cs, 1 << 20);
    assert.equal(sha256(stream), sha256(src.state));
    await cs.setMigrationState(RUNNING);
  });

  test('RESUMING -> STOP fails with the device\'s errno until the state is complete', async () => {
    const stream = patternBytes(size, 5);
    await cd.setMigrationState(RESUMING);
    await writeStream(cd, stream.subarray(0, size >> 1), 1 << 20);
    await rejectsWith(cd.setMigrationState(STOP), dst.incompleteErrno);
    assert.equal(await cd.migrationState(), RESUMING);
    await rejectsWith(cd.setMigrationState(RUNNING), dst.incompleteErrno);
    assert.equal(await cd.migrationState(), RESUMING);
    await writeStream(cd, stream.subarray(size >> 1), 100_000);
    // more than the device holds: the device's errno again
    await rejectsWith(cd.migDataWrite(Buffer.alloc(1)), Errno.EOVERFLOW);
    await cd.setMigrationState(RUNNING);
    assert.equal(sha256(dst.state), sha256(stream));
  });
});

describe('v2: zero-copy restore (the device\'s receiveBuffer)', () => {
  const size = 5 * 1024 * 1024 + 4321;
  for (const transport of ['native', 'net'] as const) {
    test(`large MIG_DATA_WRITEs land in the device's buffer, small ones are copied, all intact (${transport})`, async () => {
      const dst = createStreamDevice({ size, precopy: 0, seed: 3, zeroCopy: true });
      const s = await serve(dst.device, { transport });
      try {
        const c = await s.connect();
        const stream = patternBytes(size, 12);
        await c.setMigrationState(RESUMING);
        // 1 MiB chunks (several reads each: placed), then small ones, then
        // a pipelined burst of 256 KiB writes
        await writeStream(c, stream.subarray(0, 3 << 20), 1 << 20);
        await writeStream(c, stream.subarray(3 << 20, (3 << 20) + 40_000), 4000);
        const rest = stream.subarray((3 << 20) + 40_000);
        const parts: Promise<void>[] = [];
        for (let at = 0; at < rest.length; at += 256 * 1024) parts.push(c.migDataWrite(rest.subarray(at, at + 256 * 1024)));
        await Promise.all(parts);
        assert.ok(dst.placed >= 3, `placed ${dst.placed} of ${dst.writes.length} writes`);
        assert.ok(dst.placed < dst.writes.length, 'the 4000-byte writes are copied');
        await c.setMigrationState(STOP);
        assert.equal(sha256(dst.state), sha256(stream));
        // a write beyond the state is not placed: the device's errno as before
        await c.setMigrationState(RESUMING);
        await writeStream(c, stream, 1 << 20);
        await rejectsWith(c.migDataWrite(Buffer.alloc(1 << 20)), Errno.EOVERFLOW);
      } finally {
        await s.close();
      }
    });
  }
});

describe('v2: the stream through the P2P states, and over node:net', () => {
  const size = 2 * 1024 * 1024 + 333;
  const precopy = 700_000;

  test('PRE_COPY_P2P streams and sizes like PRE_COPY', async () => {
    const src = createStreamDevice({ size, precopy, seed: 8, p2p: true });
    const dst = createStreamDevice({ size, precopy, seed: 9, p2p: true });
    const s1 = await serve(src.device);
    const s2 = await serve(dst.device);
    try {
      const cs = await s1.connect();
      const cd = await s2.connect();
      await cs.setMigrationState(RUNNING_P2P);
      await cs.setMigrationState(PRE_COPY_P2P);
      assert.deepEqual(await cs.precopyInfo(), { initialBytes: precopy, dirtyBytes: 0 });
      const pre = await readStream(cs, 65536);
      assert.equal(pre.length, precopy);
      await cs.setMigrationState(PRE_COPY); // still the same pre-copy stream
      assert.equal((await cs.migDataRead(100)).length, 0);
      await cs.setMigrationState(STOP_COPY);
      await rejectsWith(cs.precopyInfo(), Errno.EINVAL);
      const rest = await readStream(cs, 65536);
      await cd.setMigrationState(RESUMING);
      await writeStream(cd, Buffer.concat([pre, rest]), 300_000);
      await cd.setMigrationState(RUNNING_P2P);
      assert.equal(sha256(dst.state), sha256(src.state));
    } finally {
      await s1.close();
      await s2.close();
    }
  });

  test('1 MiB reads and writes over the node:net transport (no native addon)', async () => {
    const src = createStreamDevice({ size, precopy, seed: 10 });
    const dst = createStreamDevice({ size, precopy, seed: 11 });
    const s1 = await serve(src.device, { transport: 'net' });
    const s2 = await serve(dst.device, { transport: 'net' });
    try {
      const cs = await s1.connect();
      const cd = await s2.connect();
      await cs.setMigrationState(STOP_COPY);
      const stream = await readStream(cs, 1 << 20);
      assert.equal(sha256(stream), sha256(src.state));
      await cd.setMigrationState(RESUMING);
      await writeStream(cd, stream, 1 << 20);
      assert.deepEqual(dst.writes, [1 << 20, 1 << 20, size - (2 << 20)]);
      await cd.setMigrationState(RUNNING);
      assert.equal(sha256(dst.state), sha256(src.state));
    } finally {
      await s1.close();
      await s2.close();
    }
  });
});

// ---------------------------------------------------------------------------
// The pre-copy sizing extension.

/** VERSION by hand: the server's capabilities JSON, verbatim. */
async function rawVersion(path: string, caps: object): Promise<string> {
  const ep = await connect(path, { maxMessageSize: 1 << 16, maxFds: 4 });
  const conn = new Connection(ep, { closeFd, replyTimeoutMs: 5000 });
  try {
    const r = await conn.request(Command.VERSION, version.encode({ major: VERSION_MAJOR, minor: VERSION_MINOR, json: JSON.stringify({ capabilities: caps }), nul: true }));
    for (const fd of r.fds) closeFd(fd);
    return version.decode(r.payload).json ?? '';
  } finally {
    conn.close();
  }
}

describe('v2: pre-copy sizing (extension)', () => {
  const suite = sampleForSuite();

  test('a client that asks sees MIG_DATA_SIZE always and MIG_PRECOPY_INFO in PRE_COPY', async () => {
    const c = await suite.srv.connect();
    assert.deepEqual(c.serverCaps.migSizing, { dataSize: Feature.MIG_DATA_SIZE, precopyInfo: Feature.MIG_PRECOPY_INFO });
    assert.equal(c.hasMigSizing, true);
    assert.equal(await c.stopCopySize(), BAR1_SIZE + 8);
    for (const s of [RUNNING, STOP, RESUMING, STOP_COPY]) {
      await c.setMigrationState(s);
      await rejectsWith(c.precopyInfo(), Errno.EINVAL);
      assert.equal(await c.stopCopySize(), BAR1_SIZE + 8, `MIG_DATA_SIZE in ${name(s)}`);
    }
    await c.setMigrationState(RUNNING);
    await c.setMigrationState(PRE_COPY);
    assert.deepEqual(await c.precopyInfo(), { initialBytes: BAR1_SIZE, dirtyBytes: 0 });
    await c.migDataRead(1000);
    assert.deepEqual(await c.precopyInfo(), { initialBytes: BAR1_SIZE - 1000, dirtyBytes: 0 });
    await readStream(c, 4096);
    assert.deepEqual(await c.precopyInfo(), { initialBytes: 0, dirtyBytes: 0 });
    await c.setMigrationState(RUNNING);
    c.close();
  });

  test('a client that does not ask gets EINVAL for those indexes', async () => {
    const c = await VfioUserClient.connect(suite.srv.path, { migSizing: false });
    try {
      assert.equal(c.serverCaps.migSizing, undefined);
      assert.equal(c.hasMigSizing, false);
      assert.equal(await c.stopCopySize(), null);
      await c.setMigrationState(PRE_COPY);
      for (const feat of [Feature.MIG_DATA_SIZE, Feature.MIG_PRECOPY_INFO]) {
        await rejectsWith(feature(c, feat | GET, Buffer.alloc(0), 64), Errno.EINVAL);
        assert.equal(await c.probeFeature(feat), false);
        assert.equal(await c.probeFeature(feat, GET), false);
      }
      await c.setMigrationState(RUNNING);
      assert.equal(await c.migrationState(), RUNNING);
    } finally {
      c.close();
    }
  });

  test('the VERSION reply names the extension only for a client that asked', async () => {
    await until(() => suite.srv.server.session === null);
    const without = await rawVersion(suite.srv.path, { max_msg_fds: 4 });
    assert.ok(!without.includes('vfu_mig_sizing'), without);
    assert.notEqual(parseCapabilities(without, true).migration, undefined);
    await until(() => suite.srv.server.session === null);
    const declined = await rawVersion(suite.srv.path, { vfu_mig_sizing: false });
    assert.ok(!declined.includes('vfu_mig_sizing'), declined);
    await until(() => suite.srv.server.session === null);
    const asked = await rawVersion(suite.srv.path, { vfu_mig_sizing: true });
    assert.deepEqual(JSON.parse(asked).capabilities.vfu_mig_sizing, { data_size: Feature.MIG_DATA_SIZE, precopy_info: Feature.MIG_PRECOPY_INFO });
    await until(() => suite.srv.server.session === null);
  });
});

// ---------------------------------------------------------------------------
// Two server processes.

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const cli = join(root, 'dist', 'src', 'cli', 'main.js');

function spawnServer(path: string): { proc: ChildProcess; log: () => string; exited: Promise<number | null> } {
  const proc = spawn(process.execPath, [cli, 'serve', 'sample', '-v', '--socket-path', path], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  proc.stderr!.on('data', (d) => (log += d));
  const exited = new Promise<number | null>((res) => proc.on('exit', (code) => res(code)));
  return { proc, log: () => log, exited };
}

describe('v2: migration between two vfu serve processes', () => {
  test('source keeps writing BAR1 during pre-copy; destination ends up identical', async () => {
    const t = tempDir('vfu-mig-');
    const srcPath = join(t.dir, 'src.sock');
    const dstPath = join(t.dir, 'dst.sock');
    const a = spawnServer(srcPath);
    const b = spawnServer(dstPath);
    let cs: VfioUserClient | null = null;
    let cd: VfioUserClient | null = null;
    try {
      await until(() => existsSync(srcPath) && existsSync(dstPath), 10_000);
      cs = await VfioUserClient.connect(srcPath);
      cd = await VfioUserClient.connect(dstPath);
      // what the source's BAR1 should hold, kept alongside
      const model = patternBytes(BAR1_SIZE, 4242);
      await cs.regionWrite(PciRegion.BAR1, 0, model);
      const bar0 = Buffer.alloc(8);
      bar0.writeBigInt64LE(1000n); // in the past: no timer, reads give now - 1000
      await cs.regionWrite(PciRegion.BAR0, 0, bar0);
      const areas = cs.mapRegion(await cs.regionInfo(PciRegion.BAR1));
      assert.equal(areas.length, 2);

      let k = 0;
      const mutate = async (): Promise<void> => {
        k++;
        const bytes = patternBytes(64, k);
        if (k % 2 === 0) {
          // through the region (any offset)
          const off = (k * 977) % (BAR1_SIZE - 64);
          await cs!.regionWrite(PciRegion.BAR1, off, bytes);
          bytes.copy(model, off);
        } else {
          // through the client's mmap of a sparse area
          const area = areas[k % 4 === 1 ? 0 : 1]!;
          const off = (k * 331) % (area.bytes.length - 64);
          bytes.copy(area.bytes, off);
          bytes.copy(model, area.offset + off);
        }
      };

      await cs.setMigrationState(PRE_COPY);
      const pre: Buffer[] = [];
      for (;;) {
        const part = await cs.migDataRead(1000);
        pre.push(part);
        await mutate();
        if (part.length < 1000) break;
      }
      assert.equal(Buffer.concat(pre).length, BAR1_SIZE);
      assert.equal((await cs.precopyInfo())!.initialBytes, 0);
      for (let i = 0; i < 10; i++) await mutate();
      for (const area of areas) area.unmap();

      await cs.setMigrationState(STOP_COPY);
      const stop = await readStream(cs, 4096);
      assert.equal(stop.length, BAR1_SIZE + 8);

      await cd.setMigrationState(RESUMING);
      await writeStream(cd, Buffer.concat([...pre, stop]), 5000);
      await cd.setMigrationState(STOP);

      await cs.setMigrationState(STOP);
      const fromSrc = await cs.regionRead(PciRegion.BAR1, 0, BAR1_SIZE);
      const fromDst = await cd.regionRead(PciRegion.BAR1, 0, BAR1_SIZE);
      assert.equal(sha256(fromSrc), sha256(model), 'the source holds what was written');
      assert.equal(sha256(fromDst), sha256(fromSrc), 'the destination holds the same');
      const t0 = (await cs.regionRead(PciRegion.BAR0, 0, 8)).readBigInt64LE(0);
      const t1 = (await cd.regionRead(PciRegion.BAR0, 0, 8)).readBigInt64LE(0);
      assert.ok(t1 - t0 >= 0n && t1 - t0 <= 2n, `BAR0 migrated (${t0} vs ${t1})`);

      await cd.setMigrationState(RUNNING);
      assert.equal(sha256(await cd.regionRead(PciRegion.BAR1, 0, BAR1_SIZE)), sha256(model));
      assert.match(a.log(), /PRE_COPY -> STOP_COPY/);
      assert.match(b.log(), /RESUMING -> STOP/);
      assert.match(b.log(), /STOP -> RUNNING/);
    } finally {
      cs?.close();
      cd?.close();
      a.proc.kill('SIGTERM');
      b.proc.kill('SIGTERM');
      assert.equal(await a.exited, 0);
      assert.equal(await b.exited, 0);
      t.cleanup();
    }
  });
});

