// Dirty page logging for migration (DMA_LOGGING_START/STOP/REPORT, and the
// v1 DIRTY_PAGES command): one bitmap per logged range.  With "every mapped
// region" (num_ranges 0, the spec's meaning) mappings added later are logged
// too.  Writes the device makes through the DMA API mark pages; writes done
// by DMA_WRITE messages are performed, and tracked, by the client.
import { DirtyBitmap } from '../migration/dirty.js';
import { Errno } from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';

export interface LogRange {
  iova: number;
  length: number;
}

export class DirtyLogging {
  private maps: DirtyBitmap[] = [];
  private ranges: LogRange[] = [];
  private everyMapping = false;
  private _pageSize = 0;

  constructor(
    /** Cap on bitmap memory (ENOMEM beyond; ServeOptions.maxDirtyBitmapBytes). */
    public maxBitmapBytes = 256 * 1024 * 1024,
  ) {}

  get active(): boolean {
    return this._pageSize !== 0;
  }
  get pageSize(): number {
    return this._pageSize;
  }
  get bitmapBytes(): number {
    return this.maps.reduce((n, m) => n + m.bytes, 0);
  }

  /**
   * Starts logging at `pageSize` over `ranges`, or over every current (and
   * future) mapping when `ranges` is null.  Ranges must not overlap.
   */
  start(pageSize: number, ranges: LogRange[] | null, mapped: readonly LogRange[]): void {
    if (!Number.isSafeInteger(pageSize) || pageSize < 1 || (pageSize & (pageSize - 1)) !== 0) {
      throw new VfuError(Errno.EINVAL, `dirty page size ${pageSize} is not a power of two`);
    }
    if (this.active) {
      // libvfio-user: the same page size again is a no-op, another is EINVAL.
      if (pageSize === this._pageSize) return;
      throw new VfuError(Errno.EINVAL, 'dirty logging already started with another page size');
    }
    const list = [...(ranges ?? mapped)].sort((a, b) => a.iova - b.iova);
    for (let i = 1; i < list.length; i++) {
      if (list[i - 1]!.iova + list[i - 1]!.length > list[i]!.iova) throw new VfuError(Errno.EINVAL, 'dirty logging ranges overlap');
    }
    let bytes = 0;
    for (const r of list) bytes += Math.ceil(r.length / pageSize / 64) * 8;
    if (bytes > this.maxBitmapBytes) throw new VfuError(Errno.ENOMEM, `dirty bitmaps would need ${bytes} bytes (limit ${this.maxBitmapBytes})`);
    this.maps = list.map((r) => new DirtyBitmap(r.iova, r.length, pageSize));
    this.ranges = list;
    this.everyMapping = ranges === null;
    this._pageSize = pageSize;
  }

  stop(): void {
    this.maps = [];
    this.ranges = [];
    this.everyMapping = false;
    this._pageSize = 0;
  }

  /**
   * Before a mapping is added: ENOMEM when logging covers every mapping and
   * this one's bitmap would exceed the cap (a mapping we could not log would
   * silently lose dirty pages).  The same range again needs nothing new.
   */
  checkMap(iova: number, length: number): void {
    if (!this.everyMapping || this.logs(iova, length)) return;
    const bytes = Math.ceil(length / this._pageSize / 64) * 8;
    if (this.bitmapBytes + bytes > this.maxBitmapBytes) {
      throw new VfuError(Errno.ENOMEM, `logging the new mapping would need ${bytes} more bytes of bitmap (limit ${this.maxBitmapBytes})`);
    }
  }

  private logs(iova: number, length: number): boolean {
    return this.ranges.some((r) => r.iova === iova && r.length === length);
  }

  /** A new mapping: logged from now on when logging covers every mapping. */
  onMap(iova: number, length: number): void {
    // An identical DMA_MAP again is accepted as the same mapping: one log.
    if (!this.everyMapping || this.logs(iova, length)) return;
    const i = this.maps.findIndex((m) => m.iova > iova);
    const at = i < 0 ? this.maps.length : i;
    this.maps.splice(at, 0, new DirtyBitmap(iova, length, this._pageSize));
    this.ranges.splice(at, 0, { iova, length });
  }

  onUnmap(iova: number, length: number): void {
    if (!this.everyMapping) return;
    const i = this.ranges.findIndex((r) => r.iova === iova && r.length === length);
    if (i >= 0) {
      this.maps.splice(i, 1);
      this.ranges.splice(i, 1);
    }
  }

  mark(iova: number, length: number): void {
    const maps = this.maps;
    if (maps.length === 0) return;
    const end = iova + length;
    // binary search for the first range ending after iova
    let lo = 0;
    let hi = maps.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const m = maps[mid]!;
      if (m.iova + m.length <= iova) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < maps.length && maps[i]!.iova < end; i++) maps[i]!.mark(iova, length);
  }

  /**
   * Fills `out` with the bitmap of [iova, iova+length) at `pageSize` and
   * clears what it reported.  The range must lie in one logged range (ENOENT
   * otherwise, libvfio-user's errno for an IOVA it does not know).
   */
  report(iova: number, length: number, pageSize: number, out: Buffer): void {
    if (!this.active) throw new VfuError(Errno.EINVAL, 'dirty logging is not started');
    if (!Number.isSafeInteger(pageSize) || pageSize < 1 || (pageSize & (pageSize - 1)) !== 0) {
      throw new VfuError(Errno.EINVAL, `report page size ${pageSize} is not a power of two`);
    }
    const m = this.maps.find((x) => x.iova <= iova && iova + length <= x.iova + x.length);
    if (m === undefined) throw new VfuError(Errno.ENOENT, `[0x${iova.toString(16)}, +0x${length.toString(16)}) is not in a logged range`);
    m.report(iova, length, pageSize, out);
  }
}
