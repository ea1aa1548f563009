// Legacy (v1) migration in the server, over real sockets: the migration
// region (index 9, type capability 3/1), its registers and their errors, full
// save and restore loops between two devices (the sample device and a
// several-MiB one), v1 <-> v2 in both directions (one set of device
// callbacks), and the legacy dirty page interface (DIRTY_PAGES and DMA_UNMAP
// with GET_DIRTY_BITMAP).
import { strict as assert } from 'node:assert';
import { after, before, describe, test } from 'node:test';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { VfioUserClient } from '../src/client/client.js';
import {
  V1Register,
  dirtyPagesGetBitmap,
  dirtyPagesStart,
  dirtyPagesStop,
  dmaUnmapWithDirtyBitmap,
  migrateV1Restore,
  migrateV1Save,
  setV1DeviceState,
  v1BitmapSize,
  v1DeviceState,
} from '../src/client/migration-v1.js';
import { BAR1_SIZE, createSample, type SampleDevice } from '../src/devices/sample.js';
import { V1Reg } from '../src/migration/v1-region.js';
import {
  Command,
  DirtyPagesFlag,
  DmaUnmapFlag,
  Errno,
  MIGR_REGION_V1_INDEX,
  MigState,
  MigV1State,
  PciRegion,
  REGION_SUBTYPE_MIGRATION,
  REGION_TYPE_MIGRATION,
  RegionCapId,
  RegionFlag,
} from '../src/protocol/constants.js';
import { DeviceStateLostError } from '../src/migration/controller.js';
import { VfuError } from '../src/protocol/errors.js';
import { BitmapStruct, DmaMapStruct, DmaUnmapStruct } from '../src/protocol/messages/dma.js';
import { BitmapRangeStruct, DirtyPagesStruct } from '../src/protocol/messages/migration.js';
import { createFsmDevice, createStreamDevice, patternBytes, sha256 } from './helpers/mig-devices.js';
import { rejectsWith, serve, tempDir, until, type Served } from './helpers/server.js';

const cli = join(resolve(dirname(fileURLToPath(import.meta.url)), '..', '..'), 'dist', 'src', 'cli', 'main.js');

const R = MIGR_REGION_V1_INDEX;
const { STOP, RUNNING, SAVING, RESUMING } = MigV1State;
const WINDOW = 1024 * 1024;

function u64(v: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(v));
  return b;
}

async function setBar0(c: VfioUserClient, t: bigint): Promise<void> {
  const b = Buffer.alloc(8);
  b.writeBigInt64LE(t);
  await c.regionWrite(PciRegion.BAR0, 0, b);
}

function setBits(buf: Buffer): number[] {
  const out: number[] = [];
  for (let i = 0; i < buf.length; i++) if (buf[i]) for (let b = 0; b < 8; b++) if (buf[i]! & (1 << b)) out.push(i * 8 + b);
  return out;
}

/** A served sample device with v1 and a connected client. */
async function sampleV1(v1 = true): Promise<{ dev: SampleDevice; srv: Served; c: VfioUserClient }> {
  const dev = createSample({ v1 });
  const srv = await serve(dev.device);
  return { dev, srv, c: await srv.connect() };
}

describe('v1: the migration region', () => {
  let dev: SampleDevice;
  let srv: Served;
  let c: VfioUserClient;
  before(async () => {
    ({ dev, srv, c } = await sampleV1());
  });
  after(async () => {
    await srv.close();
  });

  test('region 9 with the migration type capability; 10 regions', async () => {
    assert.equal((await c.deviceInfo()).numRegions, 10);
    const info = await c.regionInfo(R);
    assert.equal(info.size, V1Reg.DATA + WINDOW);
    assert.equal(info.flags, RegionFlag.READ | RegionFlag.WRITE | RegionFlag.CAPS);
    assert.deepEqual(info.type, { type: REGION_TYPE_MIGRATION, subtype: REGION_SUBTYPE_MIGRATION });
    assert.deepEqual(info.type, { type: 3, subtype: 1 });
    assert.ok(info.caps.some((cap) => cap.id === RegionCapId.TYPE));
    assert.equal(info.fd, -1, 'registers are not mappable');
    await rejectsWith(c.regionInfo(10), Errno.EINVAL);
    // a device without v1 has neither
    const plain = await sampleV1(false);
    try {
      assert.equal((await plain.c.deviceInfo()).numRegions, 9);
      await rejectsWith(plain.c.regionInfo(R), Errno.EINVAL);
      await rejectsWith(plain.c.regionRead(R, 0, 4), Errno.EINVAL);
    } finally {
      await plain.srv.close();
    }
  });

  test('registers: values, widths, offsets and device_state values', async () => {
    assert.equal(await v1DeviceState(c), RUNNING);
    assert.equal((await c.regionRead(R, V1Register.PENDING_BYTES, 8)).readBigUInt64LE(0), 0n, 'nothing pending while running');
    assert.equal((await c.regionRead(R, V1Register.DATA_OFFSET, 8)).readBigUInt64LE(0), BigInt(V1Reg.DATA));
    assert.equal((await c.regionRead(R, V1Register.DATA_SIZE, 8)).readBigUInt64LE(0), 0n);
    assert.ok((await c.regionRead(R, V1Reg.RESERVED, 4)).equals(Buffer.alloc(4)));
    // wrong widths
    for (const n of [1, 2, 8]) await rejectsWith(c.regionRead(R, V1Register.DEVICE_STATE, n), Errno.EINVAL);
    for (const n of [1, 2, 8]) await rejectsWith(c.regionWrite(R, V1Register.DEVICE_STATE, Buffer.alloc(n)), Errno.EINVAL);
    for (const off of [V1Register.PENDING_BYTES, V1Register.DATA_OFFSET, V1Register.DATA_SIZE]) {
      for (const n of [1, 4, 16]) await rejectsWith(c.regionRead(R, off, n), Errno.EINVAL);
    }
    await rejectsWith(c.regionWrite(R, V1Register.DATA_SIZE, Buffer.alloc(4)), Errno.EINVAL);
    // unknown offsets, misaligned ones, read-only registers
    for (const off of [2, 12, 20, 32, 40, 1000, 4095]) await rejectsWith(c.regionRead(R, off, 1), Errno.EINVAL);
    await rejectsWith(c.regionWrite(R, V1Register.PENDING_BYTES, u64(5)), Errno.EINVAL);
    await rejectsWith(c.regionWrite(R, V1Register.DATA_OFFSET, u64(4096)), Errno.EINVAL);
    await rejectsWith(c.regionWrite(R, 32, u64(0)), Errno.EINVAL);
    // beyond the region
    await rejectsWith(c.regionRead(R, V1Reg.DATA + WINDOW - 4, 8), Errno.EINVAL);
    // invalid device_state values: SAVING|RESUMING is the error encoding, the rest are undefined
    for (const v of [RESUMING | RUNNING, SAVING | RESUMING, SAVING | RESUMING | RUNNING, 8, 0x10, 0xffffffff]) {
      await rejectsWith(setV1DeviceState(c, v), Errno.EINVAL);
    }
    assert.equal(await v1DeviceState(c), RUNNING);
    assert.equal(dev.device.migration!.state, MigState.RUNNING);
    // data_size outside RESUMING, or beyond the window
    await rejectsWith(c.regionWrite(R, V1Register.DATA_SIZE, u64(16)), Errno.EINVAL);
    await setV1DeviceState(c, RESUMING);
    await rejectsWith(c.regionWrite(R, V1Register.DATA_SIZE, u64(WINDOW + 1)), Errno.EINVAL);
    await setV1DeviceState(c, RUNNING);
    // the window itself is plain memory
    await c.regionWrite(R, V1Reg.DATA + 100, Buffer.from('window'));
    assert.equal((await c.regionRead(R, V1Reg.DATA + 100, 6)).toString(), 'window');
    assert.equal(await v1DeviceState(c), RUNNING);
    assert.equal((await c.deviceInfo()).numRegions, 10);
  });

  test('device_state follows every v1 write and every v2 state', async () => {
    const cases: [number, number][] = [
      [SAVING | RUNNING, MigState.PRE_COPY],
      [SAVING, MigState.STOP_COPY],
      [STOP, MigState.STOP],
      [RESUMING, MigState.RESUMING],
      [RUNNING, MigState.RUNNING],
      [SAVING, MigState.STOP_COPY],
      [RUNNING, MigState.RUNNING],
    ];
    for (const [bits, v2] of cases) {
      await setV1DeviceState(c, bits);
      assert.equal(await v1DeviceState(c), bits);
      assert.equal(await c.migrationState(), v2);
    }
    for (const [v2, bits] of [
      [MigState.STOP, STOP],
      [MigState.STOP_COPY, SAVING],
      [MigState.RESUMING, RESUMING],
      [MigState.PRE_COPY, SAVING | RUNNING],
      [MigState.RUNNING, RUNNING],
    ] as const) {
      await c.setMigrationState(v2);
      assert.equal(await v1DeviceState(c), bits);
    }
    // STOP_COPY -> PRE_COPY is refused in v1 too
    await setV1DeviceState(c, SAVING);
    await rejectsWith(setV1DeviceState(c, SAVING | RUNNING), Errno.EINVAL);
    assert.equal(await v1DeviceState(c), SAVING);
    await setV1DeviceState(c, RUNNING);
  });

  test('while SAVING (stopped) only region 9 may be accessed', async () => {
    await setV1DeviceState(c, SAVING);
    await rejectsWith(c.regionRead(PciRegion.BAR1, 0, 8), Errno.EINVAL);
    await rejectsWith(c.regionRead(PciRegion.CONFIG, 0, 4), Errno.EINVAL);
    assert.equal(await v1DeviceState(c), SAVING);
    assert.ok((await c.regionRead(R, V1Register.PENDING_BYTES, 8)).readBigUInt64LE(0) > 0n);
    await setV1DeviceState(c, RUNNING);
  });
});

describe('v1: failing transitions', () => {
  test('a failing hop leaves device_state where the walk got; enterError shows as SAVING|RESUMING', async () => {
    const d = createFsmDevice({ preCopy: true, p2p: false }, 'fsm-v1', true);
    const srv = await serve(d.device);
    try {
      const c = await srv.connect();
      d.fail.set(`${MigState.STOP},${MigState.STOP_COPY}`, new VfuError(Errno.EBUSY, 'busy'));
      await rejectsWith(setV1DeviceState(c, SAVING), Errno.EBUSY);
      assert.equal(await v1DeviceState(c), STOP);
      assert.deepEqual(d.hops, [
        [MigState.RUNNING, MigState.STOP],
        [MigState.STOP, MigState.STOP_COPY],
      ]);
      d.fail.clear();
      await setV1DeviceState(c, SAVING);
      assert.equal(await v1DeviceState(c), SAVING);
      await setV1DeviceState(c, RUNNING);
      // the same value again: no callback
      d.hops.length = 0;
      await setV1DeviceState(c, RUNNING);
      assert.deepEqual(d.hops, []);
      // into ERROR
      d.fail.set(`${MigState.RUNNING},${MigState.PRE_COPY}`, new DeviceStateLostError(Errno.EIO, 'gone'));
      await rejectsWith(setV1DeviceState(c, SAVING | RUNNING), Errno.EIO);
      d.fail.clear();
      assert.equal(await v1DeviceState(c), SAVING | RESUMING, 'v1 encodes ERROR as SAVING|RESUMING');
      for (const v of [STOP, RUNNING, SAVING, SAVING | RUNNING, RESUMING]) await rejectsWith(setV1DeviceState(c, v), Errno.EINVAL);
      assert.equal((await c.regionRead(R, V1Register.PENDING_BYTES, 8)).readBigUInt64LE(0), 0n);
      await c.reset();
      assert.equal(await v1DeviceState(c), RUNNING);
    } finally {
      await srv.close();
    }
  });
});

describe('v1: save and restore', () => {
  test('the sample device, v1 to v1', async () => {
    const a = await sampleV1();
    const b = await sampleV1();
    try {
      const bar1 = patternBytes(BAR1_SIZE, 11);
      await a.c.regionWrite(PciRegion.BAR1, 0, bar1);
      await setBar0(a.c, 1000n);
      const chunks: Buffer[] = [];
      const r = await migrateV1Save(a.c, (ch) => void chunks.push(ch));
      assert.equal(r.precopyBytes, BAR1_SIZE);
      assert.equal(r.stopCopyBytes, BAR1_SIZE + 8);
      assert.equal(await v1DeviceState(a.c), SAVING);
      assert.equal(a.dev.device.migration!.state, MigState.STOP_COPY);
      // once done, pending stays 0
      assert.equal((await a.c.regionRead(R, V1Register.PENDING_BYTES, 8)).readBigUInt64LE(0), 0n);
      await setV1DeviceState(a.c, STOP);

      await migrateV1Restore(b.c, chunks);
      assert.equal(await v1DeviceState(b.c), RUNNING);
      assert.ok(b.dev.bar1.equals(bar1));
      assert.equal(b.dev.bar0, 1000n);
      assert.ok((await b.c.regionRead(PciRegion.BAR1, 0, BAR1_SIZE)).equals(bar1));
      assert.deepEqual(b.dev.device.migration!.stats.bytesWritten, 2 * BAR1_SIZE + 8);
    } finally {
      await a.srv.close();
      await b.srv.close();
    }
  });

  test('without pre-copy (RUNNING -> SAVING directly)', async () => {
    const a = await sampleV1();
    const b = await sampleV1();
    try {
      const bar1 = patternBytes(BAR1_SIZE, 12);
      await a.c.regionWrite(PciRegion.BAR1, 0, bar1);
      await setBar0(a.c, 2000n);
      const chunks: Buffer[] = [];
      const r = await migrateV1Save(a.c, (ch) => void chunks.push(ch), { preCopy: false });
      assert.deepEqual([r.precopyBytes, r.stopCopyBytes], [0, BAR1_SIZE + 8]);
      await migrateV1Restore(b.c, Buffer.concat(chunks));
      assert.ok(b.dev.bar1.equals(bar1));
      assert.equal(b.dev.bar0, 2000n);
    } finally {
      await a.srv.close();
      await b.srv.close();
    }
  });

  test('a 3 MiB state: several window-sized chunks each way', async () => {
    const size = 3 * 1024 * 1024 + 4321;
    const precopy = 1024 * 1024 + 5000;
    const src = createStreamDevice({ size, precopy, seed: 21, v1: true });
    const dst = createStreamDevice({ size, precopy, seed: 22, v1: true });
    const s1 = await serve(src.device);
    const s2 = await serve(dst.device);
    try {
      const c1 = await s1.connect();
      const c2 = await s2.connect();
      const chunks: Buffer[] = [];
      const r = await migrateV1Save(c1, (ch) => void chunks.push(ch));
      assert.equal(r.precopyBytes, precopy);
      assert.equal(r.stopCopyBytes, size - precopy);
      assert.ok(r.chunks >= 4, `${r.chunks} chunks`);
      assert.ok(chunks.every((ch) => ch.length <= WINDOW));
      assert.equal(sha256(Buffer.concat(chunks)), sha256(src.state));
      await migrateV1Restore(c2, chunks);
      assert.equal(sha256(dst.state), sha256(src.state));
      assert.equal(await v1DeviceState(c2), RUNNING);
      // an incomplete restore: RESUMING -> RUNNING fails with the device's errno
      await migrateV1Restore(c2, Buffer.concat(chunks).subarray(0, size - 1), { resume: false });
      assert.equal(await v1DeviceState(c2), RESUMING);
      await rejectsWith(setV1DeviceState(c2, RUNNING), dst.incompleteErrno);
      assert.equal(await v1DeviceState(c2), RESUMING);
      // the device refuses more than it holds, through data_size too
      await c2.regionWrite(R, V1Reg.DATA, Buffer.alloc(2));
      await rejectsWith(c2.regionWrite(R, V1Register.DATA_SIZE, u64(2)), Errno.EOVERFLOW);
      await c2.regionWrite(R, V1Reg.DATA, Buffer.concat(chunks).subarray(size - 1));
      await c2.regionWrite(R, V1Register.DATA_SIZE, u64(1));
      await setV1DeviceState(c2, RUNNING);
      assert.equal(sha256(dst.state), sha256(src.state));
    } finally {
      await s1.close();
      await s2.close();
    }
  });
});

describe('v1 and v2 drive the same device callbacks', () => {
  test('saved with v1, restored with v2', async () => {
    const a = await sampleV1();
    const b = await sampleV1(false);
    try {
      const bar1 = patternBytes(BAR1_SIZE, 31);
      await a.c.regionWrite(PciRegion.BAR1, 0, bar1);
      await setBar0(a.c, 3000n);
      const chunks: Buffer[] = [];
      await migrateV1Save(a.c, (ch) => void chunks.push(ch));
      await b.c.setMigrationState(MigState.RESUMING);
      for (const ch of chunks) await b.c.migDataWrite(ch);
      await b.c.setMigrationState(MigState.RUNNING);
      assert.ok(b.dev.bar1.equals(bar1));
      assert.equal(b.dev.bar0, 3000n);
    } finally {
      await a.srv.close();
      await b.srv.close();
    }
  });

  test('saved with v2, restored with v1', async () => {
    const a = await sampleV1(false);
    const b = await sampleV1();
    try {
      const bar1 = patternBytes(BAR1_SIZE, 32);
      await a.c.regionWrite(PciRegion.BAR1, 0, bar1);
      await setBar0(a.c, 4000n);
      const parts: Buffer[] = [];
      await a.c.setMigrationState(MigState.PRE_COPY);
      for (let p = await a.c.migDataRead(5000); ; p = await a.c.migDataRead(5000)) {
        parts.push(p);
        if (p.length < 5000) break;
      }
      await a.c.setMigrationState(MigState.STOP_COPY);
      for (let p = await a.c.migDataRead(5000); ; p = await a.c.migDataRead(5000)) {
        parts.push(p);
        if (p.length < 5000) break;
      }
      await migrateV1Restore(b.c, parts);
      assert.ok(b.dev.bar1.equals(bar1));
      assert.equal(b.dev.bar0, 4000n);
      assert.equal(await b.c.migrationState(), MigState.RUNNING);
    } finally {
      await a.srv.close();
      await b.srv.close();
    }
  });

  test('the big device, v1 save to v2 restore and back', async () => {
    const size = 2 * 1024 * 1024 + 99;
    const x = createStreamDevice({ size, precopy: 512 * 1024, seed: 41, v1: true });
    const y = createStreamDevice({ size, precopy: 512 * 1024, seed: 42, v1: true });
    const sx = await serve(x.device);
    const sy = await serve(y.device);
    try {
      const cx = await sx.connect();
      const cy = await sy.connect();
      const chunks: Buffer[] = [];
      await migrateV1Save(cx, (ch) => void chunks.push(ch));
      await cy.setMigrationState(MigState.RESUMING);
      for (const ch of chunks) await cy.migDataWrite(ch);
      await cy.setMigrationState(MigState.RUNNING);
      assert.equal(sha256(y.state), sha256(x.state));
      // and back: y (v2 save) -> x (v1 restore) with a new state
      y.state = patternBytes(size, 43);
      await cy.setMigrationState(MigState.STOP_COPY);
      const parts: Buffer[] = [];
      for (;;) {
        const p = await cy.migDataRead(1 << 20);
        parts.push(p);
        if (p.length < 1 << 20) break;
      }
      await setV1DeviceState(cx, RUNNING);
      await migrateV1Restore(cx, parts);
      assert.equal(sha256(x.state), sha256(y.state));
    } finally {
      await sx.close();
      await sy.close();
    }
  });
});

describe('v1 between two vfu serve --v1 processes', () => {
  test('save with v1 from one process, restore with v1 into the other', async () => {
    const t = tempDir('vfu-v1-');
    const paths = [join(t.dir, 'a.sock'), join(t.dir, 'b.sock')];
    const procs = paths.map((p) => spawn(process.execPath, [cli, 'serve', 'sample', '--v1', '--socket-path', p], { stdio: 'ignore' }));
    const exits = procs.map((p) => new Promise<number | null>((res) => p.on('exit', (code) => res(code))));
    const clients: VfioUserClient[] = [];
    try {
      await until(() => paths.every((p) => existsSync(p)), 10_000);
      for (const p of paths) clients.push(await VfioUserClient.connect(p));
      const [a, b] = clients as [VfioUserClient, VfioUserClient];
      assert.equal((await a.deviceInfo()).numRegions, 10);
      const bar1 = patternBytes(BAR1_SIZE, 51);
      await a.regionWrite(PciRegion.BAR1, 0, bar1);
      await setBar0(a, 5000n);
      const chunks: Buffer[] = [];
      await migrateV1Save(a, (ch) => void chunks.push(ch));
      await migrateV1Restore(b, chunks);
      assert.ok((await b.regionRead(PciRegion.BAR1, 0, BAR1_SIZE)).equals(bar1));
      const now = BigInt(Math.floor(Date.now() / 1000));
      const age = (await b.regionRead(PciRegion.BAR0, 0, 8)).readBigInt64LE(0);
      assert.ok(age - (now - 5000n) >= -1n && age - (now - 5000n) <= 1n, 'BAR0 migrated');
    } finally {
      for (const c of clients) c.close();
      for (const p of procs) p.kill('SIGTERM');
      assert.deepEqual(await Promise.all(exits), [0, 0]);
      t.cleanup();
    }
  });
});

// ---------------------------------------------------------------------------
// Legacy dirty pages.

function dirtyRaw(c: VfioUserClient, flags: number, range?: { iova: number; size: number; pgsize: number; bitmapSize: number }, argsz?: number) {
  const b = Buffer.alloc(DirtyPagesStruct.size + (range ? BitmapRangeStruct.size : 0));
  DirtyPagesStruct.write(b, { argsz: argsz ?? b.length + (range?.bitmapSize ?? 0), flags });
  if (range) {
    BitmapRangeStruct.write(
      b,
      { iova: BigInt(range.iova), size: BigInt(range.size), pgsize: BigInt(range.pgsize), bitmapSize: BigInt(range.bitmapSize) },
      DirtyPagesStruct.size,
    );
  }
  return c.conn.request(Command.DIRTY_PAGES, b);
}

function unmapDirtyRaw(c: VfioUserClient, iova: number, size: number, pgsize: number, bitmapSize: number, argsz?: number, withHeader = true) {
  const b = Buffer.alloc(DmaUnmapStruct.size + (withHeader ? BitmapStruct.size : 0));
  DmaUnmapStruct.write(b, { argsz: argsz ?? b.length + bitmapSize, flags: DmaUnmapFlag.GET_DIRTY_BITMAP, addr: BigInt(iova), size: BigInt(size) });
  if (withHeader) BitmapStruct.write(b, { pgsize: BigInt(pgsize), size: BigInt(bitmapSize) }, DmaUnmapStruct.size);
  return c.conn.request(Command.DMA_UNMAP, b);
}

describe('v1: legacy dirty page logging', () => {
  let dev: SampleDevice;
  let srv: Served;
  let c: VfioUserClient;
  const A = 0x100000;
  const B = 0x200000;
  before(async () => {
    ({ dev, srv, c } = await sampleV1());
    c.memory.add(A, 64 * 1024);
    c.memory.add(B, 32 * 1024);
    await c.dmaMap({ iova: A, size: 64 * 1024 });
    await c.dmaMap({ iova: B, size: 32 * 1024 });
  });
  after(async () => {
    await srv.close();
  });

  test('START, GET_BITMAP (any page size, cleared on read), STOP', async () => {
    assert.equal(c.serverCaps.migration?.pgsize, 4096);
    await dirtyPagesStart(c);
    assert.equal(dev.device.logging.pageSize, 4096, 'the negotiated migration page size');
    dev.device.dma.writeSync(A + 0x1000, Buffer.alloc(1));
    dev.device.dma.writeSync(A + 0x3ffc, Buffer.alloc(8)); // pages 3 and 4
    dev.device.dma.writeSync(B + 0x7000, Buffer.alloc(1));
    const bm = await dirtyPagesGetBitmap(c, A, 64 * 1024, 4096);
    assert.equal(bm.length, 8);
    assert.deepEqual(setBits(bm), [1, 3, 4]);
    assert.deepEqual(setBits(await dirtyPagesGetBitmap(c, A, 64 * 1024, 4096)), [], 'cleared');
    assert.deepEqual(setBits(await dirtyPagesGetBitmap(c, B, 32 * 1024, 8192)), [3]);
    dev.device.dma.writeSync(B + 0x1800, Buffer.alloc(1));
    assert.deepEqual(setBits(await dirtyPagesGetBitmap(c, B + 0x1000, 0x2000, 1024)), [0, 1, 2, 3]);
    // the reply: argsz covers the bitmap, the range is echoed
    dev.device.dma.writeSync(A, Buffer.alloc(1));
    const r = await dirtyRaw(c, DirtyPagesFlag.GET_BITMAP, { iova: A, size: 64 * 1024, pgsize: 4096, bitmapSize: 8 });
    assert.equal(r.payload.length, 8 + 32 + 8);
    assert.equal(r.payload.readUInt32LE(0), 8 + 32 + 8);
    assert.equal(r.payload.readUInt32LE(4), DirtyPagesFlag.GET_BITMAP);
    assert.equal(r.payload.readBigUInt64LE(8), BigInt(A));
    assert.deepEqual(setBits(r.payload.subarray(40)), [0]);
    await dirtyPagesStop(c);
    assert.equal(dev.device.logging.active, false);
    await rejectsWith(dirtyPagesGetBitmap(c, A, 64 * 1024, 4096), Errno.EINVAL);
  });

  test('GET_BITMAP works while SAVING (the v1 client syncs dirty pages in stop-and-copy)', async () => {
    await dirtyPagesStart(c);
    dev.device.dma.writeSync(A + 0x2000, Buffer.alloc(1));
    await setV1DeviceState(c, SAVING | RUNNING);
    dev.device.dma.writeSync(A + 0x5000, Buffer.alloc(1));
    await setV1DeviceState(c, SAVING);
    assert.deepEqual(setBits(await dirtyPagesGetBitmap(c, A, 64 * 1024, 4096)), [2, 5]);
    await setV1DeviceState(c, STOP);
    assert.deepEqual(setBits(await dirtyPagesGetBitmap(c, A, 64 * 1024, 4096)), []);
    await dirtyPagesStop(c);
    await setV1DeviceState(c, RUNNING);
  });

  test('DIRTY_PAGES errors', async () => {
    await dirtyPagesStart(c);
    const good = { iova: A, size: 64 * 1024, pgsize: 4096, bitmapSize: 8 };
    await rejectsWith(dirtyRaw(c, 0), Errno.EINVAL);
    await rejectsWith(dirtyRaw(c, DirtyPagesFlag.START | DirtyPagesFlag.STOP), Errno.EINVAL);
    await rejectsWith(dirtyRaw(c, DirtyPagesFlag.GET_BITMAP | DirtyPagesFlag.STOP, good), Errno.EINVAL);
    await rejectsWith(dirtyRaw(c, 1 << 3), Errno.EINVAL);
    await rejectsWith(c.conn.request(Command.DIRTY_PAGES, Buffer.alloc(4)), Errno.EINVAL);
    await rejectsWith(dirtyRaw(c, DirtyPagesFlag.GET_BITMAP), Errno.EINVAL); // no range
    await rejectsWith(dirtyRaw(c, DirtyPagesFlag.GET_BITMAP, { ...good, bitmapSize: 16 }), Errno.EINVAL);
    await rejectsWith(dirtyRaw(c, DirtyPagesFlag.GET_BITMAP, { ...good, bitmapSize: 0 }), Errno.EINVAL);
    await rejectsWith(dirtyRaw(c, DirtyPagesFlag.GET_BITMAP, { ...good, pgsize: 3000 }), Errno.EINVAL);
    await rejectsWith(dirtyRaw(c, DirtyPagesFlag.GET_BITMAP, { ...good, pgsize: 0 }), Errno.EINVAL);
    await rejectsWith(dirtyRaw(c, DirtyPagesFlag.GET_BITMAP, good, 8 + 32 + 7), Errno.EINVAL); // argsz
    await rejectsWith(dirtyRaw(c, DirtyPagesFlag.GET_BITMAP, { ...good, iova: 0x900000 }), Errno.ENOENT);
    await rejectsWith(dirtyRaw(c, DirtyPagesFlag.GET_BITMAP, { ...good, iova: A + 0x8000 }), Errno.ENOENT); // runs past A
    await rejectsWith(dirtyRaw(c, DirtyPagesFlag.GET_BITMAP, { ...good, iova: 2 ** 60 }), Errno.EINVAL);
    // START again is a no-op; still works
    await dirtyPagesStart(c);
    assert.equal((await dirtyPagesGetBitmap(c, A, 64 * 1024, 4096)).length, 8);
    await dirtyPagesStop(c);
    await dirtyPagesStop(c);
    assert.equal((await c.deviceInfo()).numRegions, 10);
  });

  test('bitmap sizes: large ones work, beyond the client\'s max_bitmap_size is E2BIG', async () => {
    // 64 GiB served by messages: a 2 MiB bitmap at 4 KiB, larger than max_data_xfer_size
    const big = 0x100_0000_0000;
    const size = 64 * 2 ** 30;
    await c.conn.request(
      Command.DMA_MAP,
      DmaMapStruct.encode({ argsz: DmaMapStruct.size, flags: 3, offset: 0n, addr: BigInt(big), size: BigInt(size) }),
    );
    await dirtyPagesStart(c);
    dev.device.logging.mark(big + 4096 * 100_000, 1);
    const bm = await dirtyPagesGetBitmap(c, big, size, 4096);
    assert.equal(bm.length, 2 * 1024 * 1024);
    assert.deepEqual(setBits(bm), [100_000]);
    // 384 MiB of bitmap (page size 1 over 3 GiB): refused before anything is built
    const huge = { iova: big, size: 3 * 2 ** 30, pgsize: 1, bitmapSize: 3 * 2 ** 27 };
    await rejectsWith(dirtyRaw(c, DirtyPagesFlag.GET_BITMAP, huge), Errno.E2BIG);
    await rejectsWith(unmapDirtyRaw(c, big, size, 1, size / 8), Errno.E2BIG);
    assert.ok(dev.device.dma.find(big), 'still mapped');
    dev.device.logging.mark(big + size - 1, 1);
    const last = await dmaUnmapWithDirtyBitmap(c, big, size, 4096);
    assert.equal(last.length, 2 * 1024 * 1024);
    assert.deepEqual(setBits(last), [size / 4096 - 1]);
    assert.equal(dev.device.dma.find(big), undefined);
    await dirtyPagesStop(c);
  });

  test('DMA_UNMAP with GET_DIRTY_BITMAP reports the mapping, then unmaps it', async () => {
    const C = 0x300000;
    c.memory.add(C, 16 * 1024);
    await c.dmaMap({ iova: C, size: 16 * 1024 });
    // not logging: refused, and the mapping stays
    await rejectsWith(dmaUnmapWithDirtyBitmap(c, C, 16 * 1024, 4096), Errno.EINVAL);
    assert.ok(dev.device.dma.find(C));
    await dirtyPagesStart(c);
    dev.device.dma.writeSync(C + 0x2000, Buffer.alloc(4));
    // malformed requests leave it mapped
    await rejectsWith(unmapDirtyRaw(c, C, 16 * 1024, 4096, 16), Errno.EINVAL); // wrong bitmap size
    await rejectsWith(unmapDirtyRaw(c, C, 16 * 1024, 0, 8), Errno.EINVAL);
    await rejectsWith(unmapDirtyRaw(c, C, 16 * 1024, 3072, 8), Errno.EINVAL);
    await rejectsWith(unmapDirtyRaw(c, C, 16 * 1024, 4096, 8, 24 + 16 + 7), Errno.EINVAL); // argsz
    await rejectsWith(unmapDirtyRaw(c, C, 16 * 1024, 4096, 8, undefined, false), Errno.EINVAL); // no bitmap header
    await rejectsWith(unmapDirtyRaw(c, C, 8 * 1024, 4096, 8), Errno.ENOENT); // not the whole mapping
    await rejectsWith(unmapDirtyRaw(c, 0x700000, 4096, 4096, 8), Errno.ENOENT);
    assert.ok(dev.device.dma.find(C));
    const bm = await dmaUnmapWithDirtyBitmap(c, C, 16 * 1024, 4096);
    assert.equal(bm.length, v1BitmapSize(16 * 1024, 4096));
    assert.deepEqual(setBits(bm), [2]);
    assert.equal(dev.device.dma.find(C), undefined);
    // the reply echoes the request's header and bitmap description
    c.memory.add(0x340000, 4096 * 70);
    await c.dmaMap({ iova: 0x340000, size: 4096 * 70 });
    dev.device.dma.writeSync(0x340000 + 4096 * 69, Buffer.alloc(1));
    const r = await unmapDirtyRaw(c, 0x340000, 4096 * 70, 4096, 16);
    assert.equal(r.payload.length, 24 + 16 + 16);
    assert.equal(r.payload.readUInt32LE(4), DmaUnmapFlag.GET_DIRTY_BITMAP);
    assert.equal(r.payload.readBigUInt64LE(24), 4096n);
    assert.equal(r.payload.readBigUInt64LE(32), 16n);
    assert.deepEqual(setBits(r.payload.subarray(40)), [69]);
    await rejectsWith(dirtyPagesGetBitmap(c, 0x340000, 4096, 4096), Errno.ENOENT);
    await dirtyPagesStop(c);
    assert.equal(dev.device.dma.count, 2);
  });
});
