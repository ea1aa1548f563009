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
import { Errno, MigState, MigrationFlag, migStateNames } from '../protocol/constants.js';
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
  const t0 = performance.now();
  const pageSize = opts.pageSize ?? 4096;
  const chunk = opts.chunkSize ?? Math.min(source.serverCaps.maxDataXferSize, source.opts.maxDataXferSize ?? 1 << 20, 1 << 20);
  const maxRounds = opts.maxRounds ?? 8;
  const converge = opts.convergeBytes ?? 256 * 1024;
  const report: MigrationReport = {
    phases: [],
    rounds: [],
    downtimeMs: 0,
    totalMs: 0,
    deviceBytes: 0,
    guestBytes: 0,
    preCopy: false,
    converged: false,
  };
  let phase: Phase = 'setup';
  let phaseStart = performance.now();
  let phaseDev = 0;
  let phaseGuest = 0;
  let phaseMsgs = source.conn.stats.sent;
  const endPhase = (next: Phase): void => {
    report.phases.push({
      phase,
      ms: performance.now() - phaseStart,
      deviceBytes: phaseDev,
      guestBytes: phaseGuest,
      messages: source.conn.stats.sent - phaseMsgs,
    });
    phase = next;
    phaseStart = performance.now();
    phaseDev = phaseGuest = 0;
    phaseMsgs = source.conn.stats.sent;
  };
  let round = 0;
  const progress = (extra: Partial<ProgressEvent> = {}): void =>
    opts.onProgress?.({ phase, round, deviceBytes: report.deviceBytes, guestBytes: report.guestBytes, ...extra });

  let step = 'checking the source';
  let logging = false;
  let began = false;
  let paused = false;
  let downtimeStart = 0;

  // One buffer for every chunk of device data: each is handed on (and the
  // hand-over awaited) before the next read, and a fresh 1 MiB buffer per
  // chunk cost more in page faults than the copy itself.
  const chunkBuf = Buffer.allocUnsafeSlow(chunk);
  const sendDevice = async (untilEnd: boolean): Promise<number> => {
    let sent = 0;
    const forward = untilEnd || !opts.discardPrecopyDeviceData;
    for (;;) {
      const data = await source.migDataRead(chunk, chunkBuf);
      if (data.length > 0) {
        if (forward) await target.deviceData(data);
        sent += data.length;
        report.deviceBytes += data.length;
        phaseDev += data.length;
        progress();
      }
      if (data.length < chunk) return sent; // PRE_COPY: nothing more now; STOP_COPY: end
      if (!untilEnd && sent > 64 * chunk) return sent; // keep rounds short
    }
  };

  const sendPages = async (iova: number, pages: number[], base: number): Promise<number> => {
    let bytes = 0;
    // coalesce runs of adjacent pages into one transfer
    for (let i = 0; i < pages.length; ) {
      let j = i;
      while (j + 1 < pages.length && pages[j + 1] === pages[j]! + 1) j++;
      const start = iova + pages[i]! * pageSize;
      const end = Math.min(base, iova + (pages[j]! + 1) * pageSize);
      const data = source.memory.view(start, end - start);
      await target.guestPages(start, data);
      bytes += data.length;
      i = j + 1;
    }
    report.guestBytes += bytes;
    phaseGuest += bytes;
    return bytes;
  };

  /** Collects and sends every dirty page; returns [pages, bytes]. */
  const sendDirty = async (full: boolean): Promise<[number, number]> => {
    let pages = 0;
    let bytes = 0;
    for (const m of source.dmaMappings) {
      const r = source.memory.within(m.iova, m.size);
      if (!r) continue;
      const n = Math.ceil(m.size / pageSize);
      const dirty = new Uint8Array(n);
      // device DMA (its log) and the guest's own / message writes (ours)
      if (logging) {
        const bm = await source.dirtyReport(m.iova, m.size, pageSize);
        for (let p = 0; p < n; p++) if (bm[p >> 3]! & (1 << (p & 7))) dirty[p] = 1;
      }
      const scale = pageSize / PAGE_SIZE;
      for (const p of source.memory.takeDirty(r)) {
        const abs = r.iova + p * PAGE_SIZE;
        if (abs >= m.iova && abs < m.iova + m.size) dirty[Math.floor((abs - m.iova) / PAGE_SIZE / scale)] = 1;
      }
      const list: number[] = [];
      for (let p = 0; p < n; p++) if (full || dirty[p]) list.push(p);
      pages += list.length;
      bytes += await sendPages(m.iova, list, m.iova + m.size);
    }
    return [pages, bytes];
  };

  const stateOf = async (): Promise<number> => source.migrationState();

  try {
    const flags = await source.migrationFlags();
    if (!(flags & MigrationFlag.STOP_COPY)) throw new VfuError(Errno.ENOTSUP, 'the source device is not migratable');
    const preCopy = !opts.noPreCopy && (flags & MigrationFlag.PRE_COPY) !== 0;
    report.preCopy = preCopy;
    if (source.dmaMappings.length > 0) {
      step = 'starting dirty logging on the source';
      await source.startDirtyLogging(pageSize);
      logging = true;
    }
    step = 'preparing the destination';
    const layout: GuestLayout = {
      ranges: source.dmaMappings.map((m) => ({ iova: m.iova, size: m.size })),
      irqs: source.interruptConfig,
    };
    began = true;
    await target.begin(layout);
    progress();

    if (preCopy) {
      endPhase('pre-copy');
      step = 'entering PRE_COPY';
      await source.setMigrationState(MigState.PRE_COPY);
      for (round = 0; ; round++) {
        const rs = performance.now();
        step = `pre-copy round ${round}`;
        const [dirtyPages, guestBytes] = await sendDirty(round === 0);
        const deviceBytes = await sendDevice(false);
        let remaining = dirtyPages * pageSize;
        const stopCopy = await source.stopCopySize().catch(() => null);
        if (stopCopy !== null) remaining += stopCopy;
        else {
          const info = await source.precopyInfo().catch(() => null);
          if (info) remaining += info.initialBytes + info.dirtyBytes;
        }
        report.rounds.push({ round, dirtyPages, guestBytes, deviceBytes, ms: performance.now() - rs, remainingEstimate: remaining });
        progress({ round, remainingEstimate: remaining });
        if (round > 0 && remaining <= converge) {
          report.converged = true;
          break;
        }
        if (round >= maxRounds) break;
        if (opts.roundDelayMs) await new Promise((r) => setTimeout(r, opts.roundDelayMs));
      }
    }

    endPhase('stop-copy');
    round = report.rounds.length;
    step = 'pausing the guest';
    if (opts.pauseGuest) await opts.pauseGuest();
    paused = true;
    downtimeStart = performance.now();
    step = 'entering STOP_COPY';
    await source.setMigrationState(MigState.STOP_COPY);
    step = 'stop-copy data';
    await sendDevice(true);
    step = 'final dirty pages';
    const [finalPages, finalBytes] = await sendDirty(!preCopy);
    report.rounds.push({ round: report.rounds.length, dirtyPages: finalPages, guestBytes: finalBytes, deviceBytes: phaseDev, ms: performance.now() - downtimeStart, remainingEstimate: 0 });
    if (logging) {
      await source.stopDirtyLogging();
      logging = false;
    }
    // STOP ends the stream; a stopped device can be read for verification
    step = 'stopping the source';
    await source.setMigrationState(MigState.STOP);
    // verification is not part of the downtime a real guest would see
    let verifyMs = 0;
    if (opts.sourceChecksum) {
      const v0 = performance.now();
      report.sourceChecksum = await opts.sourceChecksum();
      verifyMs = performance.now() - v0;
    }

    endPhase('resume');
    step = 'resuming the destination';
    await target.finish();
    report.downtimeMs = performance.now() - downtimeStart - verifyMs;
    if (opts.sourceChecksum && target.checksum) report.destinationChecksum = await target.checksum();
    if (opts.resumeGuest) await opts.resumeGuest('destination');
  } catch (e) {
    await rollback(e);
    throw new MigrationError(step, e);
  }

  endPhase('cleanup');
  try {
    // Release the source: DMA_UNMAP is refused while stopped, so the mappings
    // go when the connection does (the server drops them with the client).
    if ((await stateOf()) !== MigState.STOP) await source.setMigrationState(MigState.STOP);
  } catch {
    // the device now runs on the destination; the source is released anyway
  }
  endPhase('cleanup');
  report.totalMs = performance.now() - t0;
  return report;

  async function rollback(cause: unknown): Promise<void> {
    try {
      if (logging) await source.stopDirtyLogging().catch(() => {});
      if (!source.closed) {
        const s = await stateOf().catch(() => -1);
        if (s !== MigState.RUNNING && s !== -1) await source.setMigrationState(MigState.RUNNING);
      }
    } catch {
      // report the original failure
    }
    if (began) await target.abort(cause as Error).catch(() => {});
    if (paused && opts.resumeGuest) await Promise.resolve(opts.resumeGuest('source')).catch(() => {});
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

export { migStateNames };
