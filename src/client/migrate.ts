// Live migration of one device, driven from the VMM's side.
//
//   setup     dirty logging on the source; the destination maps its guest
//             memory, takes its interrupt eventfds and enters RESUMING; the
//             walk over the dirty bitmap is allocated and warmed up (so the
//             one in the window runs compiled, also in a fresh process)
//   pre-copy  source RUNNING -> PRE_COPY; round 0 copies all guest memory
//             and the device's pre-copy data while everything keeps running;
//             each further round first syncs the dirty pages (by the guest's
//             CPUs, by message DMA, and by the device per its dirty log) and
//             predicts the downtime of switching over now from the rates
//             measured so far; it switches over once that fits
//             `maxDowntimeMs` (and the device's initial data is out), or
//             else re-sends them and any new device data
//   stop-copy the guest pauses; source -> STOP_COPY; the rest of the device
//             state, read alongside the final dirty report and pages (each
//             run of pages sent as it is found); source -> STOP
//   resume    destination RESUMING -> STOP -> RUNNING; verification when
//             asked (not downtime); the guest resumes there
//
// Downtime runs from pausing the guest to resuming it; the report gives its
// parts (DowntimeParts), which add up to it.  A failure at any step before
// the end rolls back: the source returns to RUNNING, the destination is
// reset, and the error names the step.  A migration whose predicted
// downtime never fits fails (MigrationNotConvergedError) rather than pausing
// the guest for longer.  The destination is a MigrationTarget, so the same
// driver works in one process (LocalTarget) and across hosts (tcp-stream.ts).
// Imported, not the global: the global's first use costs 20-100 us (its
// getter), and in `vfu receive` that first use is LocalTarget.finish(),
// with the guest paused.
import { performance } from 'node:perf_hooks';
import { Errno, MigState, MigrationFlag, errnoName } from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';
import { warmNodeBuiltins } from '../util/warm.js';
import type { VfioUserClient } from './client.js';
import { MappingWalk, warmUpWalk } from './dirty-walk.js';
import { SwitchoverModel, type TransferRates } from './switchover.js';

export type { TransferRates } from './switchover.js';

/** The size of the read that looks for the end of a device stream whose size is known (see sendDevice). */
const END_PROBE = 4096;

/** What the destination must set up before the device state arrives. */
export interface GuestLayout {
  /** Guest memory ranges to map on the destination. */
  ranges: {
      /** Guest address. */
      iova: number;
      /** Bytes. */
      size: number;
    }[];
  /** Interrupt types to wire on the destination (index, vector count). */
  irqs: {
      /** IrqIndex. */
      index: number;
      /** Vectors. */
      count: number;
    }[];
}

/** How long the destination's two transitions in finish() took (ms), when the target can tell. */
export interface FinishTimes {
  /** RESUMING -> STOP: the device loads its state. */
  stopMs: number;
  /** STOP -> RUNNING. */
  runningMs: number;
}

/** Where migration data goes: a destination server, here or across a network. */
export interface MigrationTarget {
  /** Maps guest memory and interrupts on the destination; enters RESUMING. */
  begin(layout: GuestLayout): Promise<void>;
  /** The next chunk of the device's stream; `chunk` is only valid until the promise settles. */
  deviceData(chunk: Buffer): Promise<void>;
  /** Guest pages; `data` is only valid until this returns (or its promise settles).  Nothing returned: done. */
  guestPages(iova: number, data: Buffer): void | Promise<void>;
  /** RESUMING -> STOP (the device checks its data) -> RUNNING. */
  finish(): Promise<FinishTimes | void>;
  /** Undoes begin(): the destination device is reset and released. */
  abort(reason: Error): Promise<void>;
  /** Optional: a checksum of the destination device's state for verification. */
  checksum?(): Promise<string>;
  /**
   * Optional: resolves once the destination has applied everything sent so
   * far (a stream holds data in flight).  Called at the end of each pre-copy
   * step, so that data is not waited for with the guest paused.
   */
  drain?(): Promise<void>;
  /**
   * Optional, for a destination in this process: its own view of guest
   * memory [iova, iova+size) (null: none), which pages are then copied
   * straight into, a batch of runs at a time, instead of through
   * guestPages.
   */
  guestView?(iova: number, size: number): Buffer | null;
  /**
   * Optional: a round trip to the destination that changes nothing, made
   * just before the downtime window, so that the destination's part of the
   * window finds its code and data in the caches.  It may tell how long it
   * took, as finish() does.
   */
  touch?(): Promise<FinishTimes | void>;
  /**
   * deviceData and guestPages may be called while the other is pending: the
   * device's stop-copy data then overlaps the final pages.
   */
  readonly concurrent?: boolean;
}

/** The steps of a migration, in order. */
export type Phase = 'setup' | 'pre-copy' | 'stop-copy' | 'resume' | 'cleanup';

/** One phase of a migration report. */
export interface PhaseStats {
  /** Which phase. */
  phase: Phase;
  /** Its duration. */
  ms: number;
  /** Device state bytes moved in it. */
  deviceBytes: number;
  /** Guest memory bytes moved in it. */
  guestBytes: number;
  /** vfio-user messages sent in it. */
  messages: number;
}

/** One pre-copy round of a migration report. */
export interface RoundStats {
  /** Round number (0: the full first pass). */
  round: number;
  /** Guest pages found dirty (and re-sent) in it. */
  dirtyPages: number;
  /** Guest memory bytes sent in it. */
  guestBytes: number;
  /** Device pre-copy bytes sent in it. */
  deviceBytes: number;
  /** Its duration. */
  ms: number;
  /** What the driver estimated was left after the round. */
  remainingEstimate: number;
  /** The downtime predicted for switching over at this round's start (null: round 0, and the final round). */
  predictedDowntimeMs: number | null;
}

/**
 * The downtime's parts in ms.  Each is the wait from the end of the one
 * before until it was done, so they add up to downtimeMs; this is their
 * order, except that with a concurrent target the device's stop-copy data
 * is read from STOP_COPY on, alongside the final dirty report and pages,
 * and deviceDataMs is then what was left of it after the pages.
 */
export interface DowntimeParts {
  /** opts.pauseGuest(). */
  pauseGuestMs: number;
  /** Source PRE_COPY (or RUNNING) -> STOP_COPY. */
  sourceStopCopyMs: number;
  /** The device's stop-copy data (see above when it overlaps). */
  deviceDataMs: number;
  /** The final DMA_LOGGING_REPORT(s). */
  dirtyReportMs: number;
  /** The walk over the final dirty set and the copy of its pages. */
  finalPagesMs: number;
  /** Destination RESUMING -> STOP: loading the state (all of finish() when the target does not split it). */
  destinationStopMs: number;
  /** Destination STOP -> RUNNING. */
  destinationRunningMs: number;
  /** opts.resumeGuest('destination'). */
  resumeGuestMs: number;
}

/**
 * What migrate() reports.  Fields are stable (tools plot them); times in
 * ms, sizes in bytes.
 */
export interface MigrationReport {
  /** Each phase's time, bytes and messages. */
  phases: PhaseStats[];
  /** Each pre-copy round. */
  rounds: RoundStats[];
  /** From pausing the guest to resuming it on the destination, without verification. */
  downtimeMs: number;
  /** The parts of downtimeMs. */
  downtimeParts: DowntimeParts;
  /** The downtime predicted when it switched over (null without pre-copy). */
  predictedDowntimeMs: number | null;
  /** The limit it switched over under. */
  maxDowntimeMs: number;
  /** What pre-copy measured (null without pre-copy). */
  rates: TransferRates | null;
  /** The device's stop-copy size (data_size) just before switching over; null without the sizing extension. */
  stopCopyBytesExpected: number | null;
  /** The device's stop-copy data and the final pages were moved at the same time. */
  overlapped: boolean;
  /** Checksums after the destination reached RUNNING (the guest stays paused meanwhile; not in downtimeMs). */
  verifyMs: number;
  /** The whole migration. */
  totalMs: number;
  /** Device state bytes moved. */
  deviceBytes: number;
  /** Guest memory bytes moved. */
  guestBytes: number;
  /** Whether pre-copy ran. */
  preCopy: boolean;
  /** Switched over because the prediction fit (or what was left was under convergeBytes). */
  converged: boolean;
  /** Source and destination checksums at switch-over, when asked for. */
  sourceChecksum?: string;
  /** The destination's checksum (see sourceChecksum). */
  destinationChecksum?: string;
}

/** What onProgress hears during a migration. */
export interface ProgressEvent {
  /** The current phase. */
  phase: Phase;
  /** The pre-copy round, in pre-copy. */
  round?: number;
  /** Device bytes sent so far. */
  deviceBytes: number;
  /** Guest bytes sent so far. */
  guestBytes: number;
  /** Given at the end of each pre-copy round. */
  remainingEstimate?: number;
}

/** Options of {@link migrate}. */
export interface MigrateOptions {
  /**
   * Pre-copy rounds after the first full pass (default 8); if the predicted
   * downtime still does not fit after them, the migration fails.
   */
  maxRounds?: number;
  /** Switch over once the predicted downtime is at most this (ms, default 300). */
  maxDowntimeMs?: number;
  /** Give up pre-copy (as with maxRounds) after this long (ms, default: no limit). */
  timeoutMs?: number;
  /** Switch over anyway, instead of failing, when it does not converge. */
  forceSwitchover?: boolean;
  /** Also switch over once the estimate of what is left is at most this (bytes, default: not used). */
  convergeBytes?: number;
  /** MIG_DATA_READ size (default: the smaller max_data_xfer_size, ≤ 1 MiB). */
  chunkSize?: number;
  /** Dirty logging page size (default 4096). */
  pageSize?: number;
  /** Let the guest run this long between rounds (default 0). */
  roundDelayMs?: number;
  /** Skip pre-copy even when the device offers it. */
  noPreCopy?: boolean;
  /**
   * Read the device's pre-copy data but do not forward it.  Only for
   * destinations that cannot take a pre-copy prefix in their stream, such as
   * libvfio-user's samples/server (its client discards that data too); the
   * v2 protocol otherwise carries one continuous stream.
   */
  discardPrecopyDeviceData?: boolean;
  /** Stop the guest's CPUs (before STOP_COPY) and resume them on the destination. */
  pauseGuest?: () => void | Promise<void>;
  /** Resume the guest's CPUs: on the destination after success, on the source after a rollback. */
  resumeGuest?: (on: 'destination' | 'source') => void | Promise<void>;
  /** Checksum of the source state once stopped, compared with target.checksum(). */
  sourceChecksum?: () => Promise<string>;
  /** Progress events (phase, round, bytes, estimate). */
  onProgress?: (e: ProgressEvent) => void;
}

/** A migration that failed and was rolled back: `step` names where. */
export class MigrationError extends VfuError {
  /** The failure of `step`, caused by `cause`. */
  constructor(
    /** The step that failed ("setup", "resuming the destination", ...). */
    readonly step: string,
    /** The error that made it fail. */
    override readonly cause: unknown,
  ) {
    const errno = (cause as { errno?: number })?.errno ?? Errno.EIO;
    const why = (cause as Error)?.message ?? String(cause);
    const name = ` (${errnoName(errno)})`; // VfuError adds it again
    super(errno, `migration failed at ${step}: ${why.endsWith(name) ? why.slice(0, -name.length) : why}`);
    this.name = 'MigrationError';
  }
}

/**
 * Pre-copy did not converge: after maxRounds (or timeoutMs) the predicted
 * downtime was still over the limit, typically because the guest dirties
 * memory faster than it moves.  The migration was rolled back; `report`
 * holds the rounds and rates as far as they went.
 */
export class MigrationNotConvergedError extends MigrationError {
  /** Pre-copy gave up (`why`); the report so far. */
  constructor(
    /** The report up to the failure (rounds, predictions). */
    readonly report: MigrationReport,
    why: string,
  ) {
    super('pre-copy', new VfuError(Errno.ETIMEDOUT, `cannot converge: ${why}`));
    this.name = 'MigrationNotConvergedError';
  }
}

/** A destination server reached through a client in this process. */
export class LocalTarget implements MigrationTarget {
  readonly concurrent = true;

  /** A destination reached through `client`; `stateChecksum` reads a checksum of its state. */
  constructor(
    /** The client connected to the destination server. */
    readonly client: VfioUserClient,
    private readonly stateChecksum?: (c: VfioUserClient) => Promise<string>,
  ) {}

  async begin(layout: GuestLayout): Promise<void> {
    const c = this.client;
    for (const r of layout.ranges) {
      if (!c.memory.within(r.iova, r.size)) {
        // touched now, while the guest runs: the pages are not faulted in
        // during pre-copy's first pass (which would skew its measured rate)
        c.memory.add(r.iova, r.size).bytes.fill(0);
      }
      await c.dmaMap({ iova: r.iova, size: r.size });
    }
    for (const i of layout.irqs) if (i.count > 0) await c.enableInterrupts(i.index, i.count);
    await c.setMigrationState(MigState.RESUMING);
  }

  async deviceData(chunk: Buffer): Promise<void> {
    // (writeAll: the code finish() runs in the downtime window, run here first)
    await Promise.all(this.writeAll([chunk]));
  }

  guestView(iova: number, size: number): Buffer | null {
    return this.client.memory.within(iova, size) ? this.client.memory.view(iova, size) : null;
  }

  /**
   * A SET of the state the destination is in (RESUMING): a no-op for every
   * server (the kernel's FSM, libvfio-user's and ours), along the window's
   * own path, in one write behind `last` (device data not yet written), as
   * finish() sends STOP and RUNNING.  It only warms: a refusal of the SET
   * is not a failure (a refused write is).
   */
  async touch(last?: readonly Buffer[]): Promise<FinishTimes | void> {
    // (writeThenSet: the code finish() runs in the downtime window)
    try {
      return await this.writeThenSet(last, MigState.RESUMING, -1);
    } catch (e) {
      if (this.refused === 'write') throw e;
    }
  }

  guestPages(iova: number, data: Buffer): void {
    // TypedArray#set: a builtin (Buffer#copy is JS with branches whose
    // compiled code V8 may throw away and redo inside the downtime window)
    this.client.memory.view(iova, data.length).set(data);
  }

  /** finish()'s STOP (or the device data sent with it) was refused (see abort()). */
  private stopFailed = false;

  /**
   * STOP and RUNNING are sent together (the server answers in order): the
   * second costs no extra round trip.  `last`, device data not yet written
   * (the end of the stream, which came with the sender's FINISH), goes in
   * the same write, ahead of them: one wake-up of the destination, not two.
   * Should a write or STOP fail, that failure is the one reported; RUNNING
   * may still succeed on whatever the device kept, which abort() then
   * resets.
   */
  async finish(last?: readonly Buffer[]): Promise<FinishTimes | void> {
    try {
      return await this.writeThenSet(last, MigState.STOP, MigState.RUNNING);
    } catch (e) {
      // RUNNING went in the same write and may still succeed, on whatever
      // the device kept: abort() resets it
      if (this.refused !== 'second') this.stopFailed = true;
      throw e;
    }
  }

  /** What writeThenSet() failed at last. */
  private refused: 'write' | 'first' | 'second' | null = null;

  /**
   * `last` (device data not yet written), a SET to `first` and, unless it
   * is -1, a SET to `second`, in one write (the server answers in order);
   * how long each SET took.  A failure rejects, the first one's (`refused`
   * says which it was).
   */
  private async writeThenSet(last: readonly Buffer[] | undefined, first: number, second: number): Promise<FinishTimes> {
    const t0 = performance.now();
    const c = this.client;
    let then = null as Promise<void> | null;
    let writes = null as Promise<void>[] | null;
    const set = c.batch(() => {
      if (last && last.length > 0) writes = this.writeAll(last);
      const s = c.setMigrationState(first);
      if (second >= 0) then = c.setMigrationState(second);
      return s;
    });
    set.catch(() => {}); // an earlier failure is the one reported
    if (then) (then as Promise<void>).catch(() => {});
    this.refused = 'write';
    if (writes) await Promise.all(writes);
    this.refused = 'first';
    await set;
    const t1 = performance.now();
    this.refused = 'second';
    if (then) await then;
    this.refused = null;
    return { stopMs: t1 - t0, runningMs: performance.now() - t1 };
  }

  /** MIG_DATA_WRITEs of `data`, in pieces the server takes, sent now; their replies. */
  private writeAll(data: readonly Buffer[]): Promise<void>[] {
    const max = this.client.serverCaps.maxDataXferSize;
    const out: Promise<void>[] = [];
    // (index loops: for-of is the iterator protocol, cold in the window)
    for (let i = 0; i < data.length; i++) {
      const d = data[i]!;
      for (let o = 0; o < d.length; o += max) out.push(this.client.migDataWrite(d.subarray(o, o + max)));
    }
    for (let i = 0; i < out.length; i++) out[i]!.catch(() => {}); // the caller awaits them
    return out;
  }

  async abort(): Promise<void> {
    const c = this.client;
    if (c.closed) return;
    try {
      const s = await c.migrationState();
      if (s === MigState.RESUMING) await c.setMigrationState(MigState.STOP).catch(() => {});
      if ((await c.migrationState()) === MigState.ERROR) await c.reset();
      if ((await c.migrationState()) !== MigState.RUNNING) await c.setMigrationState(MigState.RUNNING);
      // a refused STOP followed by the RUNNING sent with it: the device runs
      // on state it did not accept
      if (this.stopFailed) await c.reset();
      await c.dmaUnmapAll();
    } catch {
      // best effort: the caller reports the original failure
    }
  }

  checksum(): Promise<string> {
    if (!this.stateChecksum) return Promise.resolve('');
    return this.stateChecksum(this.client);
  }
}

/**
 * Migrates the device behind `source` to `target`.  The source client's
 * guest memory (source.memory) is copied too, as a VMM would.
 */
export async function migrate(source: VfioUserClient, target: MigrationTarget, opts: MigrateOptions = {}): Promise<MigrationReport> {
  const m = new Migration(source, target, opts);
  try {
    await m.setup();
    if (m.report.preCopy) {
      await m.preCopy();
      await m.rehearse();
    }
    await m.stopCopy();
    await m.resume();
  } catch (e) {
    await m.rollback(e);
    throw e instanceof MigrationNotConvergedError ? e : new MigrationError(m.step, e);
  }
  await m.release();
  return m.log.finish();
}

// -0 and not 0: the parts hold fractions of a millisecond, and a field that
// held a small integer and is given its first fraction changes the object's
// hidden class, which sends every access to it down V8's slow path once
// more: inside the downtime window, where the marks are made.
const noParts = (): DowntimeParts => ({
  pauseGuestMs: -0,
  sourceStopCopyMs: -0,
  deviceDataMs: -0,
  dirtyReportMs: -0,
  finalPagesMs: -0,
  destinationStopMs: -0,
  destinationRunningMs: -0,
  resumeGuestMs: -0,
});

/** The report as it is built: phases timed and counted as they end, the downtime part by part. */
class ReportLog {
  readonly report: MigrationReport = {
    phases: [],
    rounds: [],
    downtimeMs: 0,
    downtimeParts: noParts(),
    predictedDowntimeMs: null,
    maxDowntimeMs: 0,
    rates: null,
    stopCopyBytesExpected: null,
    overlapped: false,
    verifyMs: 0,
    totalMs: 0,
    deviceBytes: 0,
    guestBytes: 0,
    preCopy: false,
    converged: false,
  };
  phase: Phase = 'setup';
  round = 0;
  private readonly t0 = performance.now();
  private phaseStart = this.t0;
  private phaseDev = 0;
  private phaseGuest = 0;
  private phaseMsgs: number;
  /** The end of the last downtime part (a time from the start: see noParts()). */
  private lastMark = this.t0;
  /** The last boundary(): when, and the source's messages sent by then. */
  private boundaryTime = this.t0;
  private boundaryMsgs = 0;

  constructor(
    private readonly source: VfioUserClient,
    private readonly onProgress?: (e: ProgressEvent) => void,
  ) {
    this.phaseMsgs = source.conn.stats.sent;
  }

  /** Device bytes moved in the current phase. */
  get phaseDeviceBytes(): number {
    return this.phaseDev;
  }

  /** Ends the current phase and starts `next`, now or (`atBoundary`) at the last boundary() (nothing counted since it). */
  enter(next: Phase, atBoundary = false): void {
    const now = atBoundary ? this.boundaryTime : performance.now();
    const msgs = atBoundary ? this.boundaryMsgs : this.source.conn.stats.sent;
    this.report.phases.push({
      phase: this.phase,
      ms: now - this.phaseStart,
      deviceBytes: this.phaseDev,
      guestBytes: this.phaseGuest,
      messages: msgs - this.phaseMsgs,
    });
    this.phase = next;
    this.phaseStart = now;
    this.phaseDev = this.phaseGuest = 0;
    this.phaseMsgs = msgs;
  }

  /** Takes where a phase ends, for an enter() made later (out of the downtime window: two numbers, no object). */
  boundary(): void {
    this.boundaryTime = performance.now();
    this.boundaryMsgs = this.source.conn.stats.sent;
  }

  device(n: number): void {
    this.report.deviceBytes += n;
    this.phaseDev += n;
    this.progress();
  }

  guest(n: number): void {
    this.report.guestBytes += n;
    this.phaseGuest += n;
  }

  progress(extra: Partial<ProgressEvent> = {}): void {
    const r = this.report;
    this.onProgress?.({ phase: this.phase, round: this.round, deviceBytes: r.deviceBytes, guestBytes: r.guestBytes, ...extra });
  }

  /**
   * The downtime starts now: the parts start from zero.  (The last
   * pre-copy round runs the window's code, marks included, see
   * Migration.rehearse: what it added is dropped here.)
   */
  startDowntime(): void {
    Object.assign(this.report.downtimeParts, noParts());
    this.lastMark = performance.now();
  }

  /** Adds the time since the last mark to a part of the downtime (`ms` of it, when given, the rest to `rest`). */
  mark(part: keyof DowntimeParts, split?: { ms: number; rest: keyof DowntimeParts }): void {
    const now = performance.now();
    const parts = this.report.downtimeParts;
    const all = now - this.lastMark;
    const first = split ? Math.min(all, split.ms) : all;
    parts[part] += first;
    if (split) parts[split.rest] += all - first;
    this.lastMark = now;
  }

  /** Leaves the time since the last mark out of the downtime; returns it. */
  skip(): number {
    const now = performance.now();
    const ms = now - this.lastMark;
    this.lastMark = now;
    return ms;
  }

  endDowntime(): void {
    const parts = Object.values(this.report.downtimeParts) as number[];
    this.report.downtimeMs = parts.reduce((a, b) => a + b, 0);
  }

  /** Ends the last phase; the report is complete. */
  finish(): MigrationReport {
    this.enter('cleanup');
    this.report.totalMs = performance.now() - this.t0;
    return this.report;
  }
}

/** What a sync before a pre-copy round found, and what switching over then would cost. */
interface Decision {
  dirtyPages: number;
  deviceLeft: number;
  predicted: number;
  switchOver: boolean;
}

/** One migration's state, and its steps in the order migrate() runs them. */
class Migration {
  readonly log: ReportLog;
  readonly report: MigrationReport;
  /** What is being done, for the error when it fails. */
  step = 'checking the source';
  private readonly pageSize: number;
  private readonly chunk: number;
  private readonly maxDowntimeMs: number;
  private readonly model = new SwitchoverModel();
  private walks: MappingWalk[] = [];
  /** Each walk's destination view, when the target is in this process (see MigrationTarget.guestView). */
  private views: (Buffer | null)[] = [];
  private logging = false;
  private began = false;
  private paused = false;
  /** The last transfer()'s figures ([pages, bytes], ms, device bytes): taken by keepRound(), in the window, and filed by reportRound() after it. */
  private roundSent: [number, number] | null = null;
  private roundMs = -0; // a double from the start (see noParts())
  private roundDeviceBytes = 0;
  /** The device's stream had nothing more for now at the end of the last read (pre-copy). */
  private deviceIdle = false;
  private lastRoundDevice = 0;
  private lastSync = 0;
  private t0 = performance.now();
  /** Device data being read while the final pages go (settled before any rollback). */
  private inflight: Promise<unknown> = Promise.resolve();
  /** The state we put the source in (RUNNING until PRE_COPY, ... STOP). */
  private sourceState: number = MigState.RUNNING;
  // Two buffers for the device's chunks: one is read into while the other is
  // handed to the target (a fresh 1 MiB buffer per chunk cost more in page
  // faults than the copy itself).
  private readonly chunkBufs: [Buffer, Buffer];

  constructor(
    private readonly source: VfioUserClient,
    private readonly target: MigrationTarget,
    private readonly opts: MigrateOptions,
  ) {
    this.log = new ReportLog(source, opts.onProgress);
    this.report = this.log.report;
    this.pageSize = opts.pageSize ?? 4096;
    this.maxDowntimeMs = this.report.maxDowntimeMs = opts.maxDowntimeMs ?? 300;
    this.chunk = opts.chunkSize ?? Math.min(source.serverCaps.maxDataXferSize, source.opts.maxDataXferSize ?? 1 << 20, 1 << 20);
    this.chunkBufs = [Buffer.allocUnsafeSlow(this.chunk), Buffer.allocUnsafeSlow(this.chunk)];
  }

  private get overlap(): boolean {
    return this.target.concurrent === true;
  }

  /** Dirty logging on the source; the destination maps memory and enters RESUMING; the walk is made and warmed. */
  async setup(): Promise<void> {
    const { source } = this;
    warmNodeBuiltins(); // the window would be their first calls in a fresh process
    const flags = await source.migrationFlags();
    if (!(flags & MigrationFlag.STOP_COPY)) throw new VfuError(Errno.ENOTSUP, 'the source device is not migratable');
    this.report.preCopy = !this.opts.noPreCopy && (flags & MigrationFlag.PRE_COPY) !== 0;
    if (source.dmaMappings.length > 0) {
      this.step = 'starting dirty logging on the source';
      await source.startDirtyLogging(this.pageSize);
      this.logging = true;
    }
    this.lastSync = performance.now();
    this.step = 'preparing the destination';
    const layout: GuestLayout = {
      ranges: source.dmaMappings.map((m) => ({ iova: m.iova, size: m.size })),
      irqs: source.interruptConfig,
    };
    this.began = true;
    await this.target.begin(layout);
    for (const m of source.dmaMappings) {
      const r = source.memory.within(m.iova, m.size);
      if (r) this.walks.push(new MappingWalk(m.iova, m.size, this.pageSize, r));
    }
    this.views = this.walks.map((w) => this.target.guestView?.(w.iova, w.size) ?? null);
    Object.assign(this.model, warmUpWalk(this.pageSize, this.views.length > 0 && this.views.every((v) => v !== null)));
    this.log.progress();
  }

  /** PRE_COPY; round 0 sends everything, then rounds until switching over is predicted to fit. */
  async preCopy(): Promise<void> {
    this.log.enter('pre-copy');
    this.step = 'entering PRE_COPY';
    this.t0 = performance.now();
    await this.model.trip(() => this.source.setMigrationState(MigState.PRE_COPY));
    this.sourceState = MigState.PRE_COPY;
    await this.preCopyRound(0, null);
    for (let round = 1; ; round++) {
      if (this.opts.roundDelayMs) await new Promise((r) => setTimeout(r, this.opts.roundDelayMs));
      this.log.round = round;
      this.step = `pre-copy round ${round}`;
      const d = await this.decide();
      if (d.switchOver) {
        this.report.converged = true;
        return;
      }
      if (this.givingUp(round)) {
        if (this.opts.forceSwitchover) return;
        throw this.notConverged(round, d);
      }
      await this.preCopyRound(round, d);
    }
  }

  private givingUp(round: number): boolean {
    const timedOut = this.opts.timeoutMs !== undefined && performance.now() - this.t0 >= this.opts.timeoutMs;
    return timedOut || round > (this.opts.maxRounds ?? 8);
  }

  /** Syncs the dirty pages (they become pending) and predicts the downtime of switching over now. */
  private async decide(): Promise<Decision> {
    let dirtyPages = this.collect(await this.model.report(() => this.reports()));
    if (this.model.reportsTimed < 2 && this.logging) {
      // a second report: one timing alone may have met a collection or
      // other work (its bits are kept like the first's)
      dirtyPages = this.collect(await this.model.report(() => this.reports()));
    }
    const now = performance.now();
    this.model.dirtyBytesPerMs = (dirtyPages * this.pageSize) / Math.max(1e-3, now - this.lastSync);
    this.lastSync = now;
    const [deviceLeft, initialDone] = await this.deviceLeft();
    const totalPages = this.walks.reduce((n, w) => n + w.pages, 0);
    const predicted = this.model.predict({ dirtyPages, pageSize: this.pageSize, totalPages, deviceBytes: deviceLeft }, this.overlap);
    const r = this.report;
    r.predictedDowntimeMs = predicted;
    r.rates = this.model.rates();
    const small = this.opts.convergeBytes !== undefined && dirtyPages * this.pageSize + deviceLeft <= this.opts.convergeBytes;
    return { dirtyPages, deviceLeft, predicted, switchOver: initialDone && (predicted <= this.maxDowntimeMs || small) };
  }

  /** Takes the reports' dirty pages (and the host's) as pending; returns how many are pending. */
  private collect(bitmaps: (Buffer | null)[]): number {
    let pending = 0;
    this.walks.forEach((w, i) => (pending += w.collect(bitmaps[i] ?? null)));
    return pending;
  }

  /**
   * What the device has left for stop-copy, and whether its initial
   * pre-copy data is out: from data_size and precopy_info when the device
   * has the sizing extension, else from what it streamed last round.
   */
  private async deviceLeft(): Promise<[number, boolean]> {
    const s = this.source;
    const stopCopy = s.hasMigSizing ? await this.model.trip(() => s.stopCopySize()).catch(() => null) : null;
    const info = s.hasMigSizing ? await this.model.trip(() => s.precopyInfo()).catch(() => null) : null;
    this.report.stopCopyBytesExpected = stopCopy;
    const initialDone = info ? info.initialBytes === 0 : this.deviceIdle;
    const left = stopCopy ?? (info ? info.initialBytes + info.dirtyBytes : this.lastRoundDevice);
    return [left, initialDone];
  }

  private notConverged(round: number, d: Decision): MigrationNotConvergedError {
    const r = this.model.rates();
    const mbs = (bytesPerMs: number): string => `${(bytesPerMs / 1000).toFixed(1)} MB/s`;
    const why =
      `after ${round - 1} rounds (${(performance.now() - this.t0).toFixed(0)} ms) switching over would take about ` +
      `${d.predicted.toFixed(1)} ms, over the ${this.maxDowntimeMs} ms limit: ${d.dirtyPages} dirty pages and ${d.deviceLeft} bytes of device data left; ` +
      `the guest dirties ${mbs(r.dirtyBytesPerMs)}, pages move at ${mbs(r.guestBytesPerMs)}, device data at ${mbs(r.deviceBytesPerMs)}`;
    return new MigrationNotConvergedError(this.report, why);
  }

  /** Sends the pending pages (all pages in round 0) and new device data. */
  private async preCopyRound(round: number, d: Decision | null): Promise<void> {
    const rs = performance.now();
    this.step = `pre-copy round ${round}`;
    // round 0 reads the logs too, only to clear them
    // (not timed: the first report runs the server's cold code, unlike the one in the window)
    const bitmaps = round === 0 ? await this.reports() : [];
    const g0 = performance.now();
    const [dirtyPages, guestBytes] = await this.sendPages(bitmaps, round === 0);
    await this.target.drain?.();
    this.model.guest.add(guestBytes, performance.now() - g0);
    const deviceBytes = await this.sendDevice(false);
    if (deviceBytes > 0) await this.target.drain?.();
    this.lastRoundDevice = deviceBytes;

    // expect as much dirtied again as was just sent, and what the device said it has left
    const remaining = dirtyPages * this.pageSize + (d ? d.deviceLeft : 0);
    const predictedDowntimeMs = d ? d.predicted : null;
    this.report.rounds.push({ round, dirtyPages, guestBytes, deviceBytes, ms: performance.now() - rs, remainingEstimate: remaining, predictedDowntimeMs });
    this.log.progress({ round, remainingEstimate: remaining });
  }

  /** Guest paused, source STOP_COPY: the rest of the device state beside the last dirty pages. */
  async stopCopy(): Promise<void> {
    const { opts, log } = this;
    log.enter('stop-copy');
    log.round = this.report.rounds.length;
    this.report.overlapped = this.overlap;
    // Without pre-copy (no rehearse()), both servers answer a request
    // that changes nothing, now: what the window's wake-ups and handlers
    // need (code, heap, the socket path) is brought back into the caches
    // while the guest runs, not in the window.  (A SET of the state the
    // source is in: a no-op for every server, the kernel's FSM,
    // libvfio-user's and ours, along the window's own path.)
    if (!this.report.preCopy) await Promise.all([this.source.setMigrationState(this.sourceState), this.target.touch?.()]);
    // what the window will copy, read now: cache lines and page walks warm
    // (after the round trips above, whose work would push them out again)
    this.walks.forEach((w, i) => w.warm(this.views[i] ?? null));
    this.step = 'pausing the guest';
    const w0 = performance.now();
    log.startDowntime();
    if (opts.pauseGuest) await opts.pauseGuest();
    this.paused = true;
    log.mark('pauseGuestMs');
    const sent = await this.transfer(MigState.STOP_COPY, true);
    // recorded once the guest runs again (resume()): not the window's work
    this.keepRound(sent, w0, 0);
  }

  /**
   * Once switching over is decided, a rehearsal of the window while the
   * guest runs: its own code (transfer()), with a SET of the state the
   * source is in (a no-op for every server: the kernel's FSM,
   * libvfio-user's and ours) where the window has STOP_COPY, the dirty
   * pages collected (they go in the window, read ahead just before it)
   * rather than sent, and the target's touch() where the window has
   * finish().  In a fresh process the window's code otherwise runs for the
   * first time in the window, each property access and call a miss that
   * V8 resolves slowly (most of what a CPU profile of the window showed);
   * and pre-copy pushed the servers' and the target's code and data out of
   * the caches, which this brings back.  Device data the source has for
   * pre-copy is read and sent as in any round.
   */
  async rehearse(): Promise<void> {
    const { log } = this;
    const dev0 = log.phaseDeviceBytes;
    const sent = await this.transfer(this.sourceState, false);
    // (keepRound: the window's code, run here first; not a round, nothing filed)
    this.keepRound(sent, performance.now(), dev0);
    this.roundSent = null;
    log.boundary(); // as resume() (overwritten there)
    await this.target.touch?.();
  }

  /** Keeps the round just transferred (sent, started at `since`, the phase's device bytes `dev0` before it) until reportRound(). */
  private keepRound(sent: [number, number], since: number, dev0: number): void {
    this.roundSent = sent;
    this.roundMs = performance.now() - since;
    this.roundDeviceBytes = this.log.phaseDeviceBytes - dev0;
  }

  /** Records the round kept by keepRound(), if any. */
  private reportRound(remainingEstimate: number): void {
    const f = this.roundSent;
    if (f) this.report.rounds.push({ round: this.report.rounds.length, dirtyPages: f[0], guestBytes: f[1], deviceBytes: this.roundDeviceBytes, ms: this.roundMs, remainingEstimate, predictedDowntimeMs: null });
    this.roundSent = null;
  }

  /**
   * A SET of the source to `state`, the device's data, a dirty report and
   * the pages: in the `window` STOP_COPY, the stop-copy data, the final
   * report and the final pages; in rehearse() its rehearsal (the pages
   * collected, not sent).
   * The read and the report are sent right behind the SET (the server
   * answers in order), and when the target allows, the pages are copied
   * while the source answers them.
   */
  private async transfer(state: number, window: boolean): Promise<[number, number]> {
    const { log } = this;
    // (each line here runs in both: the window's then run warm)
    const label = window ? null : 'pre-copy: rehearsing the switch-over';
    this.step = label ?? 'entering STOP_COPY';
    const sizing = this.report.stopCopyBytesExpected ?? null;
    const expected = window ? sizing : null;
    // one write: the source reads all three in one wake-up
    // (no array destructuring: cold, it is the iterator protocol)
    let device = null as Promise<number> | null;
    let reports!: Promise<(Buffer | null)[]>;
    const set = this.source.batch(() => {
      const s = this.source.setMigrationState(state);
      device = this.overlap ? this.sendDevice(window, expected) : null;
      reports = this.reports();
      return s;
    });
    this.inflight = Promise.allSettled([device, reports]);
    await set;
    this.sourceState = state;
    log.mark('sourceStopCopyMs');
    if (!device) {
      this.step = label ?? 'stop-copy data';
      await this.sendDevice(window, expected);
      log.mark('deviceDataMs');
    }
    this.step = label ?? 'final dirty report';
    const bitmaps = await reports;
    log.mark('dirtyReportMs');
    this.step = label ?? 'final dirty pages';
    const sent: [number, number] = window ? await this.sendPages(bitmaps, !this.report.preCopy) : [this.collect(bitmaps), 0];
    log.mark('finalPagesMs');
    if (device) {
      this.step = label ?? 'stop-copy data';
      await device;
      log.mark('deviceDataMs');
    }
    return sent;
  }

  /**
   * Destination RESUMING -> STOP -> RUNNING; verification when asked; the
   * guest resumes there.  The source's STOP is not waited for here: its
   * device is stopped already (STOP_COPY), and on one CPU its work would
   * be the window's (release() sends it, as QEMU stops the source after
   * the switch-over).
   */
  async resume(): Promise<void> {
    const { opts, log } = this;
    // the phase changes here; its records are made after the window
    log.boundary();
    this.step = 'resuming the destination';
    const times = await this.target.finish();
    if (times) log.mark('destinationStopMs', { ms: times.stopMs, rest: 'destinationRunningMs' });
    else log.mark('destinationStopMs');
    if (opts.sourceChecksum) {
      this.step = 'verifying';
      // the source answers region reads in STOP, not in STOP_COPY
      await this.source.setMigrationState(MigState.STOP);
      this.sourceState = MigState.STOP;
      const dst = this.target.checksum ? this.target.checksum() : Promise.resolve(undefined);
      const [s, d] = await Promise.all([opts.sourceChecksum(), dst]);
      this.report.sourceChecksum = s;
      if (d !== undefined) this.report.destinationChecksum = d;
      this.report.verifyMs = log.skip();
    }
    this.step = 'resuming the guest';
    if (opts.resumeGuest) await opts.resumeGuest('destination');
    log.mark('resumeGuestMs');
    log.endDowntime();
    this.reportRound(0);
    log.enter('resume', true);
  }

  /**
   * Releases the source, the guest running on the destination: STOP (from
   * STOP_COPY, which ends its stream), and dirty logging off.  DMA_UNMAP is
   * refused while stopped, so the mappings go when the connection does (the
   * server drops them with the client).
   */
  async release(): Promise<void> {
    this.log.enter('cleanup');
    try {
      // (verification stopped it already: no second round trip)
      if (this.sourceState !== MigState.STOP) await this.source.setMigrationState(MigState.STOP);
      this.sourceState = MigState.STOP;
      if (this.logging) await this.source.stopDirtyLogging();
      this.logging = false;
    } catch {
      // the device now runs on the destination; the source is released anyway
    }
  }

  /** After a failure: the source runs again, the destination is reset, the guest resumes at the source. */
  async rollback(cause: unknown): Promise<void> {
    const { source, opts } = this;
    await this.inflight;
    try {
      if (this.logging) await source.stopDirtyLogging().catch(() => {});
      if (!source.closed) {
        const s = await source.migrationState().catch(() => -1);
        if (s !== MigState.RUNNING && s !== -1) await source.setMigrationState(MigState.RUNNING);
      }
    } catch {
      // report the original failure
    }
    if (this.began) await this.target.abort(cause as Error).catch(() => {});
    if (this.paused && opts.resumeGuest) await Promise.resolve(opts.resumeGuest('source')).catch(() => {});
  }

  /**
   * Device data until the device has none for now (pre-copy, bounded) or
   * none at all (stop-copy).  The next chunk is read while the last one is
   * handed to the target.
   *
   * `expected`: the bytes the device said it has (data_size), or null.
   * Servers pad a read's reply to the size asked for (libvfio-user's
   * client needs that), so the read that finds the end of the stream costs
   * a whole chunk of zeros through the socket: 1 MiB inside the downtime
   * window.  With the size known, a read asks for what is left and
   * END_PROBE bytes more, so the one that brings the last bytes finds the
   * end too (its reply is short), with no read of its own: a round trip
   * to the source less in the window (when what is left does not fit one
   * chunk, the end is found by an END_PROBE read).  A device with more
   * than it said is read in whole chunks again.
   */
  private async sendDevice(untilEnd: boolean, expected: number | null = null): Promise<number> {
    const { chunk, source } = this;
    const forward = untilEnd || !this.opts.discardPrecopyDeviceData;
    const t0 = performance.now();
    let left = expected;
    const sizeFor = (): number => (left === null ? chunk : Math.min(chunk, left + END_PROBE));
    let sent = 0;
    let i = 0;
    let asked = sizeFor();
    let next = source.migDataRead(asked, this.chunkBufs[0]);
    for (;;) {
      const data = await next;
      // more than it said: whole chunks from now on
      if (left !== null) left = data.length > left ? null : left - data.length;
      // keep pre-copy rounds short
      const more = data.length === asked && (untilEnd || sent + data.length <= 64 * chunk);
      if (more) {
        asked = sizeFor();
        next = source.migDataRead(asked, this.chunkBufs[++i & 1]);
        next.catch(() => {}); // awaited next time round; not unhandled if we fail first
      }
      if (data.length > 0) {
        if (forward) await this.target.deviceData(data);
        sent += data.length;
        this.log.device(data.length);
      }
      if (!more) {
        this.deviceIdle = data.length < chunk;
        break;
      }
    }
    // Only a transfer of at least a whole chunk measures throughput; a smaller
    // one is one round trip of latency (which the model counts separately),
    // and taken as a rate it would predict a small device state takes ages.
    if (sent >= chunk) this.model.device.add(sent, performance.now() - t0);
    return sent;
  }

  /** The dirty bitmaps of every mapping, asked for at once (null without logging). */
  private reports(): Promise<(Buffer | null)[]> {
    // one write for all the mappings' reports (nested in the window's batch)
    return this.source.batch(() => Promise.all(this.walks.map((w) => (this.logging ? this.source.dirtyReport(w.iova, w.size, this.pageSize) : null))));
  }

  /** Hands a run of pages to the target (one function, so the walk's call to it stays monomorphic). */
  private readonly pageSink = (iova: number, data: Buffer): void | Promise<void> => this.target.guestPages(iova, data);

  /** Mapping i's dirty pages (`all`: every page): copied into the target's view of it if it has one, else handed to the target. */
  private walkPages(i: number, bitmap: Buffer | null, all: boolean): [number, number] | Promise<[number, number]> {
    const w = this.walks[i]!;
    const view = this.views[i];
    if (view) return all ? w.copyAllTo(view) : w.copyTo(bitmap, view);
    return all ? w.sendAll(this.pageSink) : w.send(bitmap, this.pageSink);
  }

  /** Sends every dirty page (`all`: every page), run by run as the walk finds them; returns [pages, bytes]. */
  private async sendPages(bitmaps: (Buffer | null)[], all: boolean): Promise<[number, number]> {
    let pages = 0;
    let bytes = 0;
    for (let i = 0; i < this.walks.length; i++) {
      let r = this.walkPages(i, bitmaps[i] ?? null, all);
      // the addon's copy is done when it returns: no turn of the loop for it
      if (r instanceof Promise) r = await r;
      pages += r[0];
      bytes += r[1];
    }
    this.log.guest(bytes);
    return [pages, bytes];
  }
}

/** Labels of the downtime's parts, in report order. */
const PART_LABELS: Record<keyof DowntimeParts, string> = {
  pauseGuestMs: 'pausing the guest',
  sourceStopCopyMs: 'source -> STOP_COPY',
  deviceDataMs: 'device stop-copy data',
  dirtyReportMs: 'final dirty report',
  finalPagesMs: 'final pages',
  destinationStopMs: 'destination RESUMING -> STOP',
  destinationRunningMs: 'destination STOP -> RUNNING',
  resumeGuestMs: 'resuming the guest',
};

/** A table of the report, for people. */
export function formatReport(r: MigrationReport): string {
  const mib = (n: number): string => (n / 1048576).toFixed(2);
  const ms = (n: number | null): string => (n === null ? '-' : n.toFixed(1));
  const lines = [
    'phase       time(ms)   device MiB  guest MiB  messages',
    ...r.phases.map(
      (p) =>
        `${p.phase.padEnd(10)} ${p.ms.toFixed(1).padStart(9)} ${mib(p.deviceBytes).padStart(12)} ${mib(p.guestBytes).padStart(10)} ${String(p.messages).padStart(9)}`,
    ),
    '',
    'round  dirty pages  guest MiB  device MiB  time(ms)  left (est.)  predicted downtime(ms)',
    ...r.rounds.map(
      (x) =>
        `${String(x.round).padStart(5)} ${String(x.dirtyPages).padStart(12)} ${mib(x.guestBytes).padStart(10)} ${mib(x.deviceBytes).padStart(11)} ${x.ms.toFixed(1).padStart(9)} ${mib(x.remainingEstimate).padStart(10)} MiB ${ms(x.predictedDowntimeMs).padStart(12)}`,
    ),
    '',
    `downtime${r.overlapped ? ' (device data alongside the final pages)' : ''}         ms`,
    ...(Object.keys(PART_LABELS) as (keyof DowntimeParts)[]).map((k) => `  ${PART_LABELS[k].padEnd(30)} ${r.downtimeParts[k].toFixed(3).padStart(9)}`),
    `  ${'total'.padEnd(30)} ${r.downtimeMs.toFixed(3).padStart(9)}   predicted ${ms(r.predictedDowntimeMs)} (limit ${r.maxDowntimeMs})`,
    '',
    `downtime ${r.downtimeMs.toFixed(1)} ms, total ${r.totalMs.toFixed(1)} ms, ${mib(r.deviceBytes)} MiB device state, ${mib(r.guestBytes)} MiB guest memory` +
      (r.preCopy ? `, pre-copy ${r.converged ? 'converged' : 'stopped at the round limit'}` : ', no pre-copy'),
  ];
  if (r.rates) {
    const mbs = (x: number): string => `${(x / 1000).toFixed(0)} MB/s`;
    const t = r.rates;
    lines.push(
      `measured: pages ${mbs(t.guestBytesPerMs)}, device data ${mbs(t.deviceBytesPerMs)}, guest dirtying ${mbs(t.dirtyBytesPerMs)}, ` +
        `round trip ${(t.roundTripMs * 1000).toFixed(0)} µs, dirty report ${(t.dirtyReportMs * 1000).toFixed(0)} µs`,
    );
  }
  if (r.sourceChecksum !== undefined) {
    lines.push(`verification after RUNNING ${r.verifyMs.toFixed(1)} ms (not in the downtime; in the resume phase's time)`);
    lines.push(`checksum source ${r.sourceChecksum} destination ${r.destinationChecksum ?? '-'} ${r.sourceChecksum === r.destinationChecksum ? 'MATCH' : 'MISMATCH'}`);
  }
  return lines.join('\n');
}
