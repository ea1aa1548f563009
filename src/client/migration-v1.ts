// The client side of legacy (v1) migration: the migration region's
// registers, the save and restore loops, and the legacy dirty page calls
// (the DIRTY_PAGES command and DMA_UNMAP with GET_DIRTY_BITMAP).
//
// Saving: device_state = SAVING|RUNNING (pre-copy, optional), then SAVING;
// in each phase loop { pending_bytes (0: phase done), data_offset,
// data_size, the data }.  Restoring: device_state = RESUMING, then per
// chunk { data_offset, write the data there, data_size }, then RUNNING.
import { Command, DirtyPagesFlag, DmaUnmapFlag, Errno, MIGR_REGION_V1_INDEX, MigV1State } from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';
import { BitmapStruct, DmaUnmapStruct } from '../protocol/messages/dma.js';
import { BitmapRangeStruct, DirtyPagesStruct } from '../protocol/messages/migration.js';
import type { VfioUserClient } from './client.js';

/** Register offsets in the v1 migration region. @enum */
export const V1Register = { DEVICE_STATE: 0, PENDING_BYTES: 8, DATA_OFFSET: 16, DATA_SIZE: 24 } as const;

/** Where the v1 migration region is. */
export interface V1Options {
  /** Index of the migration region (libvfio-user: 9). */
  region?: number;
}

function regionOf(o: V1Options): number {
  return o.region ?? MIGR_REGION_V1_INDEX;
}

async function read64(c: VfioUserClient, region: number, offset: number): Promise<number> {
  const v = (await c.regionRead(region, offset, 8)).readBigUInt64LE(0);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new VfuError(Errno.EPROTO, `v1 register ${offset} holds ${v}`);
  return Number(v);
}

async function write64(c: VfioUserClient, region: number, offset: number, value: number): Promise<void> {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(value));
  await c.regionWrite(region, offset, b);
}

/** The v1 device_state bits. */
export async function v1DeviceState(c: VfioUserClient, o: V1Options = {}): Promise<number> {
  return (await c.regionRead(regionOf(o), V1Register.DEVICE_STATE, 4)).readUInt32LE(0);
}

/** Writes the v1 device_state bits (MigV1State). */
export async function setV1DeviceState(c: VfioUserClient, bits: number, o: V1Options = {}): Promise<void> {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(bits >>> 0);
  await c.regionWrite(regionOf(o), V1Register.DEVICE_STATE, b);
}

/** Options of {@link migrateV1Save}. */
export interface V1SaveOptions extends V1Options {
  /** Run a pre-copy phase (SAVING|RUNNING) first (default true). */
  preCopy?: boolean;
  /** Most chunks per phase before giving up (a device that never ends). */
  maxChunks?: number;
}

/** What {@link migrateV1Save} moved. */
export interface V1SaveResult {
  /** Bytes saved while the device ran. */
  precopyBytes: number;
  /** Bytes saved once it stopped. */
  stopCopyBytes: number;
  /** Chunks read. */
  chunks: number;
}

/**
 * Saves the device: hands every chunk to `sink` in order and leaves the
 * device in SAVING (stopped) once pending_bytes reads 0.
 */
export async function migrateV1Save(
  c: VfioUserClient,
  sink: (chunk: Buffer) => void | Promise<void>,
  o: V1SaveOptions = {},
): Promise<V1SaveResult> {
  const region = regionOf(o);
  const max = o.maxChunks ?? 1 << 20;
  const res: V1SaveResult = { precopyBytes: 0, stopCopyBytes: 0, chunks: 0 };
  const phase = async (precopy: boolean): Promise<number> => {
    let bytes = 0;
    for (let i = 0; ; i++) {
      if (i >= max) throw new VfuError(Errno.EIO, 'v1 save: the device never runs out of data');
      const pending = await read64(c, region, V1Register.PENDING_BYTES);
      if (pending === 0) return bytes;
      const offset = await read64(c, region, V1Register.DATA_OFFSET);
      const size = await read64(c, region, V1Register.DATA_SIZE);
      if (size === 0) {
        // Nothing staged although something is pending: in pre-copy the
        // device has nothing more for now; in stop-copy it is broken.
        if (precopy) return bytes;
        throw new VfuError(Errno.EIO, `v1 save: pending_bytes ${pending} but data_size 0`);
      }
      await sink(await c.regionRead(region, offset, size));
      bytes += size;
      res.chunks++;
    }
  };
  if (o.preCopy ?? true) {
    await setV1DeviceState(c, MigV1State.SAVING | MigV1State.RUNNING, o);
    res.precopyBytes = await phase(true);
  }
  await setV1DeviceState(c, MigV1State.SAVING, o);
  res.stopCopyBytes = await phase(false);
  return res;
}

/** Options of {@link migrateV1Restore}. */
export interface V1RestoreOptions extends V1Options {
  /** Set RUNNING at the end (default true); otherwise the device stays RESUMING. */
  resume?: boolean;
}

/** Restores a saved stream (chunked to the data window) and resumes the device. */
export async function migrateV1Restore(c: VfioUserClient, data: Buffer | Iterable<Buffer>, o: V1RestoreOptions = {}): Promise<void> {
  const region = regionOf(o);
  const regionSize = (await c.regionInfo(region)).size;
  await setV1DeviceState(c, MigV1State.RESUMING, o);
  const parts = Buffer.isBuffer(data) ? [data] : data;
  for (const part of parts) {
    for (let at = 0; at < part.length; ) {
      const offset = await read64(c, region, V1Register.DATA_OFFSET);
      const room = regionSize - offset;
      if (room <= 0) throw new VfuError(Errno.EPROTO, `v1 data_offset ${offset} outside the region`);
      const n = Math.min(room, part.length - at);
      await c.regionWrite(region, offset, part.subarray(at, at + n));
      await write64(c, region, V1Register.DATA_SIZE, n);
      at += n;
    }
  }
  if (o.resume ?? true) await setV1DeviceState(c, MigV1State.RUNNING, o);
}

// ------------------------------------------------------------ dirty pages

function dirtyPagesRequest(flags: number, range?: { iova: number; size: number; pgsize: number; bitmapSize: number }): Buffer {
  const b = Buffer.alloc(DirtyPagesStruct.size + (range ? BitmapRangeStruct.size : 0));
  DirtyPagesStruct.write(b, { argsz: b.length + (range ? range.bitmapSize : 0), flags });
  if (range) {
    BitmapRangeStruct.write(
      b,
      { iova: BigInt(range.iova), size: BigInt(range.size), pgsize: BigInt(range.pgsize), bitmapSize: BigInt(range.bitmapSize) },
      DirtyPagesStruct.size,
    );
  }
  return b;
}

/** Bytes of a legacy dirty bitmap: one bit per page, whole u64 words. */
export function v1BitmapSize(size: number, pgsize: number): number {
  return Math.ceil(Math.ceil(size / pgsize) / 64) * 8;
}

/** DIRTY_PAGES START: logs every mapping at the negotiated migration page size. */
export async function dirtyPagesStart(c: VfioUserClient): Promise<void> {
  await c.conn.request(Command.DIRTY_PAGES, dirtyPagesRequest(DirtyPagesFlag.START));
}

/** Legacy DIRTY_PAGES STOP. */
export async function dirtyPagesStop(c: VfioUserClient): Promise<void> {
  await c.conn.request(Command.DIRTY_PAGES, dirtyPagesRequest(DirtyPagesFlag.STOP));
}

/** DIRTY_PAGES GET_BITMAP for [iova, iova+size) at `pgsize` (cleared on read). */
export async function dirtyPagesGetBitmap(c: VfioUserClient, iova: number, size: number, pgsize: number): Promise<Buffer> {
  const want = v1BitmapSize(size, pgsize);
  const r = await c.conn.request(Command.DIRTY_PAGES, dirtyPagesRequest(DirtyPagesFlag.GET_BITMAP, { iova, size, pgsize, bitmapSize: want }));
  const head = DirtyPagesStruct.size + BitmapRangeStruct.size;
  if (r.payload.length !== head + want) throw new VfuError(Errno.EPROTO, `DIRTY_PAGES reply of ${r.payload.length} bytes, expected ${head + want}`);
  return r.payload.subarray(head);
}

/**
 * DMA_UNMAP with GET_DIRTY_BITMAP: the mapping's dirty bitmap, then it is
 * gone.  (The client's own list of mappings, which reconnect() replays, is
 * not told: use it for mappings made by hand, or reconnect no more.)
 */
export async function dmaUnmapWithDirtyBitmap(c: VfioUserClient, iova: number, size: number, pgsize: number): Promise<Buffer> {
  const want = v1BitmapSize(size, pgsize);
  const b = Buffer.alloc(DmaUnmapStruct.size + BitmapStruct.size);
  DmaUnmapStruct.write(b, { argsz: b.length + want, flags: DmaUnmapFlag.GET_DIRTY_BITMAP, addr: BigInt(iova), size: BigInt(size) });
  BitmapStruct.write(b, { pgsize: BigInt(pgsize), size: BigInt(want) }, DmaUnmapStruct.size);
  const r = await c.conn.request(Command.DMA_UNMAP, b);
  if (r.payload.length !== b.length + want) throw new VfuError(Errno.EPROTO, `DMA_UNMAP reply of ${r.payload.length} bytes, expected ${b.length + want}`);
  return r.payload.subarray(b.length);
}
