// Live migration of one device, driven from the VMM's side.
//
//   setup     dirty logging on the source; the destination maps its guest
//             memory, takes its interrupt eventfds and enters RESUMING
//   pre-copy  source RUNNING -> PRE_COPY; round 0 copies all guest memory
//             and the device's pre-copy data while everything keeps running;
//             each further round re-sends the pages dirtied meanwhile (by the
//             guest's CPUs, by message DMA, and by the device per its dirty
//             log) and any new device data, until the estimate of what is
//             left falls under a threshold or the rounds run out
//   stop-copy the guest pauses; source -> STOP_COPY; the rest of the device
//             state and the last dirty pages go across
//   resume    destination RESUMING -> STOP -> RUNNING; the guest resumes there
//
// Downtime runs from the source leaving PRE_COPY/RUNNING to the destination
// reaching RUNNING.  A failure at any step before that rolls back: the
// source returns to RUNNING, the destination is reset, and the error names
// the step.  The destination is a MigrationTarget, so the same driver works
// in one process (LocalTarget) and across hosts (tcp-stream.ts).
import { PAGE_SIZE } from '../native/index.js';
import { Errno, MigState, MigrationFlag } from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';
import type { VfioUserClient } from './client.js';

export interface GuestLayout {
  ranges: { iova: number; size: number }[];
  /** Interrupt types to wire on the destination (index, vector count). */
  irqs: { index: number; count: number }[];
}

/** Where migration data goes: a destination server, here or across a network. */
export interface MigrationTarget {
  /** Maps guest memory and interrupts on the destination; enters RESUMING. */
  begin(layout: GuestLayout): Promise<void>;
  /** The next chunk of the device's stream; `chunk` is only valid until the promise settles. */
  deviceData(chunk: Buffer): Promise<void>;
  guestPages(iova: number, data: Buffer): Promise<void>;
  /** RESUMING -> STOP (the device checks its data) -> RUNNING. */
  finish(): Promise<void>;
  /** Undoes begin(): the destination device is reset and released. */
  abort(reason: Error): Promise<void>;
  /** Optional: a checksum of the destination device's state for verification. */
  checksum?(): Promise<string>;
}

export type Phase = 'setup' | 'pre-copy' | 'stop-copy' | 'resume' | 'cleanup';

export interface PhaseStats {
  phase: Phase;
  ms: number;
  deviceBytes: number;
  guestBytes: number;
  messages: number;
}

export interface RoundStats {
  round: number;
  dirtyPages: number;
  guestBytes: number;
  deviceBytes: number;
  ms: number;
  /** What the driver estimated was left after the round. */
  remainingEstimate: number;
}

export interface MigrationReport {
  phases: PhaseStats[];
  rounds: RoundStats[];
  downtimeMs: number;
  totalMs: number;
  deviceBytes: number;
  guestBytes: number;
  preCopy: boolean;
  converged: boolean;
  /** Source and destination checksums at switch-over, when asked for. */
  sourceChecksum?: string;
  destinationChecksum?: string;
}

export interface ProgressEvent {
  phase: Phase;
  round?: number;
  deviceBytes: number;
  guestBytes: number;
  remainingEstimate?: number;
}

export interface MigrateOptions {
  /** Pre-copy rounds after the first full pass (default 8). */
  maxRounds?: number;
  /** Switch over once the estimate of what is left is at most this (default 256 KiB). */
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
  resumeGuest?: (on: 'destination' | 'source') => void | Promise<void>;
  /** Checksum of the source state once stopped, compared with target.checksum(). */
  sourceChecksum?: () => Promise<string>;
  onProgress?: (e: ProgressEvent) => void;
}

export class MigrationError extends VfuError {
  constructor(
    readonly step: string,
    override readonly cause: unknown,
  ) {
    const errno = (cause as { errno?: number })?.errno ?? Errno.EIO;
    super(errno, `migration failed at ${step}: ${(cause as Error)?.message ?? String(cause)}`);
    this.name = 'MigrationError';
  }
}

/** A destination server reached through a client in this process. */
export class LocalTarget implements MigrationTarget {
  constructor(
    readonly client: VfioUserClient,
    private readonly stateChecksum?: (c: VfioUserClient) => Promise<string>,
  ) {}

  async begin(layout: GuestLayout): Promise<void> {
    const c = this.client;
    for (const r of layout.ranges) {
      if (!c.memory.within(r.iova, r.size)) c.memory.add(r.iova, r.size);
      await c.dmaMap({ iova: r.iova, size: r.size });
    }
    for (const i of layout.irqs) if (i.count > 0) await c.enableInterrupts(i.index, i.count);
    await c.setMigrationState(MigState.RESUMING);
  }

  async deviceData(chunk: Buffer): Promise<void> {
    const max = this.client.serverCaps.maxDataXferSize;
    for (let o = 0; o < chunk.length; o += max) await this.client.migDataWrite(chunk.subarray(o, o + max));
  }

  async guestPages(iova: number, data: Buffer): Promise<void> {
    data.copy(this.client.memory.view(iova, data.length));
  }

  async finish(): Promise<void> {
    await this.client.setMigrationState(MigState.STOP);
    await this.client.setMigrationState(MigState.RUNNING);
  }

  async abort(): Promise<void> {
    const c = this.client;
    if (c.closed) return;
    try {
      const s = await c.migrationState();
      if (s === MigState.RESUMING) await c.setMigrationState(MigState.STOP).catch(() => {});
      if ((await c.migrationState()) === MigState.ERROR) await c.reset();
      if ((await c.migrationState()) !== MigState.RUNNING) await c.setMigrationState(MigState.RUNNING);
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
    if (m.report.preCopy) await m.preCopy();
    await m.stopCopy();
    await m.resume();
  } catch (e) {
    await m.rollback(e);
    throw new MigrationError(m.step, e);
  }
  await m.release();
  return m.log.finish();
}

/** The report as it is built: phases timed and counted as they end. */
class ReportLog {
  readonly report: MigrationReport = {
    phases: [],
    rounds: [],
    downtimeMs: 0,
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

  /** Ends the current phase and starts `next`. */
  enter(next: Phase): void {
    this.report.phases.push({
      phase: this.phase,
      ms: performance.now() - this.phaseStart,
      deviceBytes: this.phaseDev,
      guestBytes: this.phaseGuest,
      messages: this.source.conn.stats.sent - this.phaseMsgs,
    });
    this.phase = next;
    this.phaseStart = performance.now();
    this.phaseDev = this.phaseGuest = 0;
    this.phaseMsgs = this.source.conn.stats.sent;
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

  /** Ends the last phase; the report is complete. */
  finish(): MigrationReport {
    this.enter('cleanup');
    this.report.totalMs = performance.now() - this.t0;
    return this.report;
  }
}

/** One migration's state, and its steps in the order migrate() runs them. */
class Migration {
  readonly log: ReportLog;
  readonly report: MigrationReport;
  /** What is being done, for the error when it fails. */
  step = 'checking the source';
  private readonly pageSize: number;
  private readonly chunk: number;
  private logging = false;
  private began = false;
  private paused = false;
  private downtimeStart = 0;
  // One buffer for every chunk of device data: each is handed on (and the
  // hand-over awaited) before the next read, and a fresh 1 MiB buffer per
  // chunk cost more in page faults than the copy itself.
  private readonly chunkBuf: Buffer;

  constructor(
    private readonly source: VfioUserClient,
    private readonly target: MigrationTarget,
    private readonly opts: MigrateOptions,
  ) {
    this.log = new ReportLog(source, opts.onProgress);
    this.report = this.log.report;
    this.pageSize = opts.pageSize ?? 4096;
    this.chunk = opts.chunkSize ?? Math.min(source.serverCaps.maxDataXferSize, source.opts.maxDataXferSize ?? 1 << 20, 1 << 20);
    this.chunkBuf = Buffer.allocUnsafeSlow(this.chunk);
  }

  /** Dirty logging on the source; the destination maps memory and enters RESUMING. */
  async setup(): Promise<void> {
    const { source } = this;
    const flags = await source.migrationFlags();
    if (!(flags & MigrationFlag.STOP_COPY)) throw new VfuError(Errno.ENOTSUP, 'the source device is not migratable');
    this.report.preCopy = !this.opts.noPreCopy && (flags & MigrationFlag.PRE_COPY) !== 0;
    if (source.dmaMappings.length > 0) {
      this.step = 'starting dirty logging on the source';
      await source.startDirtyLogging(this.pageSize);
      this.logging = true;
    }
    this.step = 'preparing the destination';
    const layout: GuestLayout = {
      ranges: source.dmaMappings.map((m) => ({ iova: m.iova, size: m.size })),
      irqs: source.interruptConfig,
    };
    this.began = true;
    await this.target.begin(layout);
    this.log.progress();
  }

  /** PRE_COPY, then rounds until what is left is small or the rounds run out. */
  async preCopy(): Promise<void> {
    const maxRounds = this.opts.maxRounds ?? 8;
    this.log.enter('pre-copy');
    this.step = 'entering PRE_COPY';
    await this.source.setMigrationState(MigState.PRE_COPY);
    for (let round = 0; ; round++) {
      this.log.round = round;
      const remaining = await this.preCopyRound(round);
      if (round > 0 && remaining <= (this.opts.convergeBytes ?? 256 * 1024)) {
        this.report.converged = true;
        return;
      }
      if (round >= maxRounds) return;
      if (this.opts.roundDelayMs) await new Promise((r) => setTimeout(r, this.opts.roundDelayMs));
    }
  }

  /** One round: dirty pages (all of them in round 0), new device data; returns the estimate of what is left. */
  private async preCopyRound(round: number): Promise<number> {
    const rs = performance.now();
    this.step = `pre-copy round ${round}`;
    const [dirtyPages, guestBytes] = await this.sendDirty(round === 0);
    const deviceBytes = await this.sendDevice(false);
    let remaining = dirtyPages * this.pageSize;
    const stopCopy = await this.source.stopCopySize().catch(() => null);
    if (stopCopy !== null) remaining += stopCopy;
    else {
      const info = await this.source.precopyInfo().catch(() => null);
      if (info) remaining += info.initialBytes + info.dirtyBytes;
    }
    this.report.rounds.push({ round, dirtyPages, guestBytes, deviceBytes, ms: performance.now() - rs, remainingEstimate: remaining });
    this.log.progress({ round, remainingEstimate: remaining });
    return remaining;
  }

  /** Guest paused, source STOP_COPY: the rest of the device state and the last dirty pages; source STOP. */
  async stopCopy(): Promise<void> {
    const { source, opts } = this;
    this.log.enter('stop-copy');
    this.log.round = this.report.rounds.length;
    this.step = 'pausing the guest';
    if (opts.pauseGuest) await opts.pauseGuest();
    this.paused = true;
    this.downtimeStart = performance.now();
    this.step = 'entering STOP_COPY';
    await source.setMigrationState(MigState.STOP_COPY);
    this.step = 'stop-copy data';
    await this.sendDevice(true);
    this.step = 'final dirty pages';
    const [finalPages, finalBytes] = await this.sendDirty(!this.report.preCopy);
    const ms = performance.now() - this.downtimeStart;
    this.report.rounds.push({ round: this.report.rounds.length, dirtyPages: finalPages, guestBytes: finalBytes, deviceBytes: this.log.phaseDeviceBytes, ms, remainingEstimate: 0 });
    if (this.logging) {
      await source.stopDirtyLogging();
      this.logging = false;
    }
    // STOP ends the stream; a stopped device can be read for verification
    this.step = 'stopping the source';
    await source.setMigrationState(MigState.STOP);
  }

  /** Destination RESUMING -> STOP -> RUNNING; the guest resumes there. */
  async resume(): Promise<void> {
    const { opts } = this;
    // verification is not part of the downtime a real guest would see
    let verifyMs = 0;
    if (opts.sourceChecksum) {
      const v0 = performance.now();
      this.report.sourceChecksum = await opts.sourceChecksum();
      verifyMs = performance.now() - v0;
    }
    this.log.enter('resume');
    this.step = 'resuming the destination';
    await this.target.finish();
    this.report.downtimeMs = performance.now() - this.downtimeStart - verifyMs;
    if (opts.sourceChecksum && this.target.checksum) this.report.destinationChecksum = await this.target.checksum();
    if (opts.resumeGuest) await opts.resumeGuest('destination');
  }

  /**
   * Releases the source: DMA_UNMAP is refused while stopped, so the mappings
   * go when the connection does (the server drops them with the client).
   */
  async release(): Promise<void> {
    this.log.enter('cleanup');
    try {
      if ((await this.source.migrationState()) !== MigState.STOP) await this.source.setMigrationState(MigState.STOP);
    } catch {
      // the device now runs on the destination; the source is released anyway
    }
  }

  /** After a failure: the source runs again, the destination is reset, the guest resumes at the source. */
  async rollback(cause: unknown): Promise<void> {
    const { source, opts } = this;
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

  /** Device data until the device has none for now (pre-copy, bounded) or none at all (stop-copy). */
  private async sendDevice(untilEnd: boolean): Promise<number> {
    const { chunk } = this;
    let sent = 0;
    const forward = untilEnd || !this.opts.discardPrecopyDeviceData;
    for (;;) {
      const data = await this.source.migDataRead(chunk, this.chunkBuf);
      if (data.length > 0) {
        if (forward) await this.target.deviceData(data);
        sent += data.length;
        this.log.device(data.length);
      }
      if (data.length < chunk) return sent; // PRE_COPY: nothing more now; STOP_COPY: end
      if (!untilEnd && sent > 64 * chunk) return sent; // keep rounds short
    }
  }

  /** Collects and sends every dirty page (every page when `full`); returns [pages, bytes]. */
  private async sendDirty(full: boolean): Promise<[number, number]> {
    let pages = 0;
    let bytes = 0;
    for (const m of this.source.dmaMappings) {
      const list = await this.dirtyPages(m.iova, m.size, full);
      if (list === null) continue;
      pages += list.length;
      bytes += await this.sendPages(m.iova, list, m.iova + m.size);
    }
    return [pages, bytes];
  }

  /** The dirty pages of one mapping (device DMA per its log, guest CPU and message writes per ours). */
  private async dirtyPages(iova: number, size: number, full: boolean): Promise<number[] | null> {
    const { source, pageSize } = this;
    const r = source.memory.within(iova, size);
    if (!r) return null;
    const n = Math.ceil(size / pageSize);
    const dirty = new Uint8Array(n);
    if (this.logging) {
      const bm = await source.dirtyReport(iova, size, pageSize);
      for (let p = 0; p < n; p++) if (bm[p >> 3]! & (1 << (p & 7))) dirty[p] = 1;
    }
    const scale = pageSize / PAGE_SIZE;
    for (const p of source.memory.takeDirty(r)) {
      const abs = r.iova + p * PAGE_SIZE;
      if (abs >= iova && abs < iova + size) dirty[Math.floor((abs - iova) / PAGE_SIZE / scale)] = 1;
    }
    const list: number[] = [];
    for (let p = 0; p < n; p++) if (full || dirty[p]) list.push(p);
    return list;
  }

  /** Sends pages (numbers within the mapping at `iova`), runs of adjacent pages as one transfer. */
  private async sendPages(iova: number, pages: number[], limit: number): Promise<number> {
    let bytes = 0;
    for (let i = 0; i < pages.length; ) {
      let j = i;
      while (j + 1 < pages.length && pages[j + 1] === pages[j]! + 1) j++;
      const start = iova + pages[i]! * this.pageSize;
      const end = Math.min(limit, iova + (pages[j]! + 1) * this.pageSize);
      const data = this.source.memory.view(start, end - start);
      await this.target.guestPages(start, data);
      bytes += data.length;
      i = j + 1;
    }
    this.log.guest(bytes);
    return bytes;
  }
}

/** A table of the report, for people. */
export function formatReport(r: MigrationReport): string {
  const mib = (n: number): string => (n / 1048576).toFixed(2);
  const lines = [
    'phase       time(ms)   device MiB  guest MiB  messages',
    ...r.phases.map(
      (p) =>
        `${p.phase.padEnd(10)} ${p.ms.toFixed(1).padStart(9)} ${mib(p.deviceBytes).padStart(12)} ${mib(p.guestBytes).padStart(10)} ${String(p.messages).padStart(9)}`,
    ),
    '',
    'round  dirty pages  guest MiB  device MiB  time(ms)  left (est.)',
    ...r.rounds.map(
      (x) =>
        `${String(x.round).padStart(5)} ${String(x.dirtyPages).padStart(12)} ${mib(x.guestBytes).padStart(10)} ${mib(x.deviceBytes).padStart(11)} ${x.ms.toFixed(1).padStart(9)} ${mib(x.remainingEstimate).padStart(10)} MiB`,
    ),
    '',
    `downtime ${r.downtimeMs.toFixed(1)} ms, total ${r.totalMs.toFixed(1)} ms, ${mib(r.deviceBytes)} MiB device state, ${mib(r.guestBytes)} MiB guest memory` +
      (r.preCopy ? `, pre-copy ${r.converged ? 'converged' : 'stopped at the round limit'}` : ', no pre-copy'),
  ];
  if (r.sourceChecksum !== undefined) {
    lines.push('(stop-copy and resume times include computing the checksums; the downtime does not)');
    lines.push(`checksum source ${r.sourceChecksum} destination ${r.destinationChecksum ?? '-'} ${r.sourceChecksum === r.destinationChecksum ? 'MATCH' : 'MISMATCH'}`);
  }
  return lines.join('\n');
}

