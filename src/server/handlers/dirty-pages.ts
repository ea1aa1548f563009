// The legacy (migration v1) DIRTY_PAGES command: START and STOP logging over
// every mapping at the negotiated migration page size, GET_BITMAP for a range.
import { DirtyPagesFlag } from '../../protocol/constants.js';
import { einval } from '../../protocol/errors.js';
import { BitmapRangeStruct, DirtyPagesStruct } from '../../protocol/messages/migration.js';
import { u64ToNumber } from '../../protocol/struct.js';
import { bitmapSize } from '../../migration/dirty.js';
import { decodeRequest } from '../../protocol/messages/index.js';
import type { Endpoint } from '../../transport/endpoint.js';
import type { Frame } from '../../transport/framer.js';
import type { HandlerContext } from './context.js';
import { checkBitmapSize, dirtyBitmapReply, startLogging } from './dirty-reports.js';

export function dirtyPages(s: HandlerContext, f: Frame, via: Endpoint): void | Promise<void> {
  const p = f.payload;
  const { argsz, flags, range } = decodeRequest('DIRTY_PAGES', p);
  switch (flags) {
    case DirtyPagesFlag.START:
      startLogging(s, s.dirtyPageSize, null);
      s.conn.reply(via, f, null);
      return;
    case DirtyPagesFlag.STOP:
      s.device.logging.stop();
      s.conn.reply(via, f, null);
      return;
    case DirtyPagesFlag.GET_BITMAP: {
      const r = range;
      if (r === undefined) throw einval('DIRTY_PAGES GET_BITMAP without a range');
      const iova = u64ToNumber(r.iova);
      const size = u64ToNumber(r.size);
      const pg = u64ToNumber(r.pgsize);
      const want = u64ToNumber(r.bitmapSize);
      if ([iova, size, pg, want].some(Number.isNaN) || pg === 0 || (pg & (pg - 1)) !== 0) throw einval('bad GET_BITMAP range');
      if (want !== bitmapSize(size, pg)) throw einval(`bitmap size ${want} != ${bitmapSize(size, pg)}`);
      checkBitmapSize(s, want);
      if (argsz < DirtyPagesStruct.size + BitmapRangeStruct.size + want) throw einval('DIRTY_PAGES argsz too small');
      const head = Buffer.from(p.subarray(0, DirtyPagesStruct.size + BitmapRangeStruct.size));
      head.writeUInt32LE(DirtyPagesStruct.size + BitmapRangeStruct.size + want, DirtyPagesStruct.off.argsz);
      return dirtyBitmapReply(s, via, want, (bitmap) => {
        s.device.logging.report(iova, size, pg, bitmap);
        s.conn.reply(via, f, head, bitmap);
      });
    }
    default:
      throw einval(`bad DIRTY_PAGES flags 0x${flags.toString(16)}`);
  }
}
