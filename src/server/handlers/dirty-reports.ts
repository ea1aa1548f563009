// Helpers shared by the commands that start dirty logging or return dirty
// bitmaps (DEVICE_FEATURE DMA_LOGGING_*, v1 DIRTY_PAGES, DMA_UNMAP with
// GET_DIRTY_BITMAP).
import { Errno } from '../../protocol/constants.js';
import { VfuError } from '../../protocol/errors.js';
import type { Endpoint } from '../../transport/endpoint.js';
import type { HandlerContext } from './context.js';

/** DMA_LOGGING_START / DIRTY_PAGES START (null ranges: every mapping). */
export function startLogging(s: HandlerContext, pageSize: number, ranges: { iova: number; length: number }[] | null): void {
  const mapped = s.device.dma.mappings.map((m) => ({ iova: m.iova, length: m.size }));
  s.device.logging.start(pageSize, ranges, mapped);
}

/**
 * E2BIG for a dirty bitmap larger than the client accepts in one reply
 * (its migration.max_bitmap_size) or than we said we send (our
 * max_bitmap_size: ServeOptions.maxDirtyBitmapBytes): checked before
 * anything is built.
 */
export function checkBitmapSize(s: HandlerContext, bytes: number): void {
  const ours = s.device.logging.maxReportBytes;
  const limit = Math.min(s.clientCaps?.migration?.maxBitmapSize ?? ours, ours);
  if (bytes > limit) throw new VfuError(Errno.E2BIG, `bitmap of ${bytes} bytes is too large (limit ${limit})`);
}

/**
 * Builds a dirty bitmap reply of `bytes` with `build` (which fills the
 * bitmap and sends the reply, the bitmap by reference) in the device's
 * one report buffer (DirtyLog.reportBuffer).  That buffer is reused, so
 * while anything is still queued for the client (a previous report it has
 * not read yet) this waits for the queue to drain first: a client asking
 * for report after report without reading costs one report buffer plus
 * the send queue, not a bitmap per request.
 */
export function dirtyBitmapReply(s: HandlerContext, via: Endpoint, bytes: number, build: (bitmap: Buffer) => void): void | Promise<void> {
  checkBitmapSize(s, bytes);
  const go = (): void => build(s.device.logging.reportBuffer(bytes));
  if (!via.sending) return go();
  return via.whenDrained().then(() => {
    if (via.closed) throw new VfuError(Errno.ENOTCONN, 'client gone');
    go();
  });
}
