// When to switch over: the orchestrator measures what pre-copy costs (guest
// pages and device data separately, the round trip of a state change, the
// walk over the dirty bitmap and the copy of one page) and predicts the
// downtime of stopping now from what is left.  It switches over once the
// prediction fits the limit, as QEMU's downtime-limit does.

/** What was measured during pre-copy; rates in bytes per ms, times in ms. */
export interface TransferRates {
  /** Guest pages through the target, over whole rounds (large runs). */
  guestBytesPerMs: number;
  /** The walk and copy of one dirty page in a scattered set (measured at setup, warm). */
  pageMs: number;
  /** The walk over one clean page of the dirty bitmap (measured at setup, warm). */
  walkPageMs: number;
  /** Device data, MIG_DATA_READ through the target's deviceData. */
  deviceBytesPerMs: number;
  /** A DEVICE_FEATURE round trip (state changes, sizing queries): the median seen. */
  roundTripMs: number;
  /**
   * The dirty report(s) of the whole guest: the quickest seen (a slower one
   * met other work, a collection or code run for the first time, which the
   * window does not repeat).
   */
  dirtyReportMs: number;
  /** How fast the guest (and device) dirtied memory between the last two syncs. */
  dirtyBytesPerMs: number;
}

/** What switching over now would have to move. */
export interface LeftToMove {
  dirtyPages: number;
  pageSize: number;
  /** Pages the final walk visits (all logged pages). */
  totalPages: number;
  deviceBytes: number;
}

/** A throughput meter: bytes over the time spent moving them. */
export class RateMeter {
  private bytes = 0;
  private ms = 0;

  add(bytes: number, ms: number): void {
    this.bytes += bytes;
    this.ms += ms;
  }

  /** Bytes per ms; `fallback` until something was measured. */
  rate(fallback: number): number {
    return this.bytes > 0 && this.ms > 0 ? this.bytes / this.ms : fallback;
  }
}

/** The measurements and the prediction made from them. */
export class SwitchoverModel {
  readonly guest = new RateMeter();
  readonly device = new RateMeter();
  pageMs = 0;
  walkPageMs = 0;
  dirtyBytesPerMs = 0;
  private readonly trips: number[] = [];
  private readonly reports: number[] = [];

  /** Times one DEVICE_FEATURE round trip. */
  async trip<T>(p: () => Promise<T>): Promise<T> {
    const t = performance.now();
    const r = await p();
    keep(this.trips, performance.now() - t);
    return r;
  }

  /** Times the dirty reports of one sync. */
  async report<T>(p: () => Promise<T>): Promise<T> {
    const t = performance.now();
    const r = await p();
    keep(this.reports, performance.now() - t);
    return r;
  }

  get roundTripMs(): number {
    return median(this.trips);
  }

  get dirtyReportMs(): number {
    return this.reports.length === 0 ? 0 : Math.min(...this.reports);
  }

  /** How many dirty report timings were taken. */
  get reportsTimed(): number {
    return this.reports.length;
  }

  rates(): TransferRates {
    const guest = this.guest.rate(0);
    return {
      guestBytesPerMs: guest,
      pageMs: this.pageMs,
      walkPageMs: this.walkPageMs,
      deviceBytesPerMs: this.device.rate(guest),
      roundTripMs: this.roundTripMs,
      dirtyReportMs: this.dirtyReportMs,
      dirtyBytesPerMs: this.dirtyBytesPerMs,
    };
  }

  /**
   * The downtime of switching over now, in ms: the state changes in the
   * window (source STOP_COPY, destination STOP and RUNNING: three round
   * trips; the source's STOP goes alongside the destination's), the final
   * dirty report, the walk and the pages, and the device's data with one
   * more read to see its end.  Device data and pages overlap when
   * `overlap`, so the larger of the two counts then.
   */
  predict(left: LeftToMove, overlap: boolean): number {
    const r = this.rates();
    const perPage = Math.max(r.pageMs, r.guestBytesPerMs > 0 ? left.pageSize / r.guestBytesPerMs : 0);
    const pages = left.totalPages * r.walkPageMs + left.dirtyPages * perPage;
    const device = r.roundTripMs + (r.deviceBytesPerMs > 0 ? left.deviceBytes / r.deviceBytesPerMs : 0);
    const moving = overlap ? Math.max(pages + r.dirtyReportMs, device) : pages + r.dirtyReportMs + device;
    return 3 * r.roundTripMs + moving;
  }
}

function keep(list: number[], x: number): void {
  list.push(x);
  if (list.length > 32) list.shift();
}

function median(list: number[]): number {
  if (list.length === 0) return 0;
  const s = [...list].sort((a, b) => a - b);
  return s[s.length >> 1]!;
}
