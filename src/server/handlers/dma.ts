// DMA_MAP and DMA_UNMAP (exact match, UNMAP_ALL, and the v1 dirty bitmap).
import { DmaUnmapFlag } from '../../protocol/constants.js';
import { einval } from '../../protocol/errors.js';
import { BitmapStruct, DmaMapStruct, DmaUnmapStruct } from '../../protocol/messages/dma.js';
import { u64ToNumber } from '../../protocol/struct.js';
import { decodeRequest } from '../../protocol/messages/index.js';
import type { Endpoint } from '../../transport/endpoint.js';
import type { Frame } from '../../transport/framer.js';
import type { HandlerContext } from './context.js';
import { checkBitmapSize, dirtyBitmapReply } from './dirty-reports.js';
import { bitmapSize } from '../../migration/dirty.js';

function num(v: bigint, what: string): number {
  const n = u64ToNumber(v);
  if (Number.isNaN(n)) throw einval(`${what} 0x${v.toString(16)} beyond 2^53`);
  return n;
}

/**
 * Runs `fn` with the device quiesced (DMA stopped) around it.  Synchronous
 * when the quiesce hook and `fn` are: a migration state change in the
 * downtime window then costs no promise turns, and the session does not
 * have to queue (and copy) the requests pipelined behind it.
 */
export function quiesced<T>(s: HandlerContext, fn: () => T | Promise<T>): T | Promise<T> {
  const q = s.device.quiesce();
  if (q instanceof Promise) return q.then(() => underQuiesce(s, fn));
  return underQuiesce(s, fn);
}

function underQuiesce<T>(s: HandlerContext, fn: () => T | Promise<T>): T | Promise<T> {
  let r: T | Promise<T>;
  try {
    r = fn();
  } catch (e) {
    s.device.resume();
    throw e;
  }
  if (!(r instanceof Promise)) {
    s.device.resume();
    return r;
  }
  return r.finally(() => s.device.resume());
}

export function dmaMap(s: HandlerContext, f: Frame, via: Endpoint): void | Promise<void> {
  const p = f.payload;
  const m = decodeRequest('DMA_MAP', p);
  if (m.argsz < DmaMapStruct.size) throw einval('DMA_MAP argsz too small');
  if (f.fds.length > 1) throw einval('DMA_MAP with more than one descriptor');
  const req = {
    iova: num(m.addr, 'DMA_MAP address'),
    size: num(m.size, 'DMA_MAP size'),
    fileOffset: num(m.offset, 'DMA_MAP offset'),
    flags: m.flags,
    fd: f.fds.length === 1 ? f.fds[0]! : null,
  };
  return quiesced(s, () => {
    s.device.logging.checkMap(req.iova, req.size);
    const mapping = s.device.dma.map(req);
    f.fds = []; // the controller owns the descriptor now
    s.device.logging.onMap(mapping.iova, mapping.size);
    s.conn.reply(via, f, null);
  });
}

export function dmaUnmap(s: HandlerContext, f: Frame, via: Endpoint): void | Promise<void> {
  const p = f.payload;
  const u = decodeRequest('DMA_UNMAP', p);
  const dma = s.device.dma;
  switch (u.flags) {
    case 0:
      break;
    case DmaUnmapFlag.ALL:
      if (u.addr !== 0n || u.size !== 0n) throw einval('UNMAP_ALL needs address and size 0');
      break;
    case DmaUnmapFlag.GET_DIRTY_BITMAP:
      break;
    default:
      throw einval(`bad DMA_UNMAP flags 0x${u.flags.toString(16)}`);
  }
  // With a dirty bitmap, argsz covers the bitmap: bounded by the bitmap
  // limit below, not by max_data_xfer_size.
  if (u.argsz < DmaUnmapStruct.size || (u.flags !== DmaUnmapFlag.GET_DIRTY_BITMAP && u.argsz > s.opts.maxDataXferSize)) {
    throw einval('bad DMA_UNMAP argsz');
  }
  const echo = Buffer.from(p.subarray(0, DmaUnmapStruct.size));
  if (u.flags === DmaUnmapFlag.ALL) {
    return quiesced(s, () => {
      s.device.logging.onUnmapAll();
      dma.unmapAll();
      s.conn.reply(via, f, echo);
    });
  }
  const iova = num(u.addr, 'DMA_UNMAP address');
  const size = num(u.size, 'DMA_UNMAP size');
  if (u.flags === DmaUnmapFlag.GET_DIRTY_BITMAP) {
    // v1: report the mapping's dirty pages, then unmap it.
    const bm = u.bitmap;
    if (bm === undefined) throw einval('DMA_UNMAP dirty bitmap header missing');
    const pg = num(bm.pgsize, 'bitmap page size');
    const want = num(bm.size, 'bitmap size');
    if (pg === 0 || (pg & (pg - 1)) !== 0 || want !== bitmapSize(size, pg)) throw einval('bad dirty bitmap request');
    checkBitmapSize(s, want);
    if (u.argsz < DmaUnmapStruct.size + BitmapStruct.size + want) throw einval('DMA_UNMAP argsz too small for the bitmap');
    const head = Buffer.concat([echo, p.subarray(DmaUnmapStruct.size, DmaUnmapStruct.size + BitmapStruct.size)]);
    return quiesced(s, () =>
      dirtyBitmapReply(s, via, want, (bitmap) => {
        s.device.logging.report(iova, size, pg, bitmap);
        dma.unmap(iova, size);
        s.device.logging.onUnmap(iova, size);
        s.conn.reply(via, f, head, bitmap);
      }),
    );
  }
  return quiesced(s, () => {
    dma.unmap(iova, size);
    s.device.logging.onUnmap(iova, size);
    s.conn.reply(via, f, echo);
  });
}
