// REGION_READ, REGION_WRITE and REGION_WRITE_MULTI: bounds and overflow
// checks (libvfio-user's errnos), then the config space model, the region's
// callbacks or its memory.
import { HEADER_SIZE, MIGR_REGION_V1_INDEX, MigState, PciRegion } from '../../protocol/constants.js';
import { einval } from '../../protocol/errors.js';
import { RegionAccessStruct, WriteMultiEntryStruct, WriteMultiHeadStruct } from '../../protocol/messages/region.js';
import type { Endpoint } from '../../transport/endpoint.js';
import type { Frame } from '../../transport/framer.js';
import type { HandlerContext } from './context.js';
import { quiesced } from './dma.js';

const ACCESS = RegionAccessStruct.size;
const REPLY_AT = HEADER_SIZE + ACCESS;

/**
 * Validates an access.  Offsets are u64 on the wire; as a number one past
 * 2^53 is inexact but still far beyond any region, so the bound check holds.
 */
function check(s: HandlerContext, index: number, offset: number, count: number, write: boolean): void {
  const dev = s.device;
  if (count > s.opts.maxDataXferSize) throw einval(`region access of ${count} bytes exceeds max_data_xfer_size`);
  if (index >= dev.numRegions) throw einval(`bad region index ${index}`);
  // libvfio-user: no region access in STOP_COPY, except to the v1
  // migration region, through which a v1 client reads the device's state.
  if (dev.migration?.state === MigState.STOP_COPY && !(index === MIGR_REGION_V1_INDEX && dev.migrationV1 !== null)) {
    throw einval('region access while in STOP_COPY');
  }
  let size: number;
  if (index === PciRegion.CONFIG) size = dev.pci.size;
  else {
    const r = dev.region(index);
    if (r === undefined || r.size === 0) throw einval(`region ${index} is not present`);
    if (write ? !r.writable : !r.readable) throw einval(`region ${index} is not ${write ? 'writable' : 'readable'}`);
    size = r.size;
  }
  if (offset + count > size) throw einval(`access [${offset}, +${count}) outside region ${index} (${size} bytes)`);
}

/** A device callback's result: a promise to wait for, or undefined (any other value is ignored). */
function pending(r: unknown): Promise<unknown> | undefined {
  return r instanceof Promise ? r : undefined;
}

function doRead(s: HandlerContext, index: number, offset: number, out: Buffer): Promise<unknown> | undefined {
  const dev = s.device;
  if (index === PciRegion.CONFIG) {
    dev.pci.read(offset, out.length, out, 0);
    return;
  }
  const r = dev.region(index)!;
  if (r.access?.read) return pending(r.access.read(offset, out));
  if (r.memory) {
    r.memory.copy(out, 0, offset, offset + out.length);
    return;
  }
  throw einval(`region ${index} has no read handler`);
}

export function doWrite(s: HandlerContext, index: number, offset: number, data: Buffer): Promise<unknown> | undefined {
  const dev = s.device;
  if (index === PciRegion.CONFIG) {
    // A write may initiate an FLR: the config model calls its hook
    // synchronously; the reset itself runs (quiesced) before we reply.
    dev.flrRequested = false;
    dev.pci.write(offset, data);
    if (dev.flrRequested) return pending(flr(s));
    return;
  }
  const r = dev.region(index)!;
  if (r.access?.write) return pending(r.access.write(offset, data));
  if (r.memory) {
    data.copy(r.memory, offset);
    return;
  }
  throw einval(`region ${index} has no write handler`);
}

function flr(s: HandlerContext): void | Promise<void> {
  s.device.flrRequested = false;
  return quiesced(s, () => s.device.reset('flr'));
}

export function regionRead(s: HandlerContext, f: Frame, via: Endpoint): void | Promise<void> {
  const p = f.payload;
  if (p.length < ACCESS) throw einval('short REGION_READ');
  const offLo = p.readUInt32LE(RegionAccessStruct.off.offset);
  const offHi = p.readUInt32LE(RegionAccessStruct.off.offset + 4);
  const index = p.readUInt32LE(RegionAccessStruct.off.region);
  const count = p.readUInt32LE(RegionAccessStruct.off.count);
  const offset = offHi * 2 ** 32 + offLo;
  check(s, index, offset, count, false);
  // Reply laid out in one buffer: header, echo of the request, data; for
  // register-sized reads in views of it made once (HandlerContext.smallReplies).
  let frame: Buffer;
  let out: Buffer;
  if (count < s.smallReplies.length) [frame, out] = s.smallReplies[count]!;
  else {
    const buf = REPLY_AT + count > s.replyBuf.length ? Buffer.allocUnsafe(REPLY_AT + count) : s.replyBuf;
    frame = buf.subarray(0, REPLY_AT + count);
    out = buf.subarray(REPLY_AT, REPLY_AT + count);
  }
  // The echo, from the fields already read (cheaper than a 16-byte copy).
  frame.writeUInt32LE(offLo, HEADER_SIZE + RegionAccessStruct.off.offset);
  frame.writeUInt32LE(offHi, HEADER_SIZE + RegionAccessStruct.off.offset + 4);
  frame.writeUInt32LE(index, HEADER_SIZE + RegionAccessStruct.off.region);
  frame.writeUInt32LE(count, HEADER_SIZE + RegionAccessStruct.off.count);
  const r = count === 0 ? undefined : doRead(s, index, offset, out);
  if (r === undefined) {
    s.conn.replyPrebuilt(via, f, frame);
    return;
  }
  // Asynchronous device: later commands wait, so the shared buffer is ours.
  return r.then(() => s.conn.replyPrebuilt(via, f, frame));
}

export function regionWrite(s: HandlerContext, f: Frame, via: Endpoint): void | Promise<void> {
  const p = f.payload;
  if (p.length < ACCESS) throw einval('short REGION_WRITE');
  const offLo = p.readUInt32LE(RegionAccessStruct.off.offset);
  const offHi = p.readUInt32LE(RegionAccessStruct.off.offset + 4);
  const index = p.readUInt32LE(RegionAccessStruct.off.region);
  const count = p.readUInt32LE(RegionAccessStruct.off.count);
  if (p.length - ACCESS !== count) throw einval(`REGION_WRITE carries ${p.length - ACCESS} bytes for count ${count}`);
  const offset = offHi * 2 ** 32 + offLo;
  check(s, index, offset, count, true);
  const reply = (): void => s.conn.reply(via, f, p.subarray(0, ACCESS));
  const r = count === 0 ? undefined : doWrite(s, index, offset, p.subarray(ACCESS));
  if (r === undefined) {
    reply();
    return;
  }
  // The echo must outlive the receive buffer.
  const echo = Buffer.from(p.subarray(0, ACCESS));
  return r.then(() => s.conn.reply(via, f, echo));
}

/** REGION_WRITE_MULTI: up to 8 bytes per write, applied in order. */
export async function regionWriteMulti(s: HandlerContext, f: Frame, via: Endpoint): Promise<void> {
  const p = Buffer.from(f.payload);
  if (p.length < WriteMultiHeadStruct.size) throw einval('short REGION_WRITE_MULTI');
  const n = WriteMultiHeadStruct.read(p).wrCnt;
  const room = (p.length - WriteMultiHeadStruct.size) / WriteMultiEntryStruct.size;
  if (!Number.isInteger(room) || n !== BigInt(room)) throw einval(`REGION_WRITE_MULTI: wr_cnt ${n} for ${p.length} bytes`);
  const writes = [];
  for (let i = 0; i < room; i++) {
    const at = WriteMultiHeadStruct.size + i * WriteMultiEntryStruct.size;
    const w = WriteMultiEntryStruct.read(p, at);
    if (w.count > 8) throw einval(`REGION_WRITE_MULTI entry ${i} writes ${w.count} bytes (max 8)`);
    const off = w.offset > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(w.offset);
    check(s, w.region, off, w.count, true);
    writes.push({ region: w.region, offset: off, data: p.subarray(at + WriteMultiEntryStruct.off.data, at + WriteMultiEntryStruct.off.data + w.count) });
  }
  for (const w of writes) await doWrite(s, w.region, w.offset, w.data);
  s.conn.reply(via, f, WriteMultiHeadStruct.encode({ wrCnt: n }));
}
