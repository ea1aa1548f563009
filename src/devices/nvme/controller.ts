// The NVMe controller's behaviour: registers, queues, admin and NVM
// commands, interrupts and asynchronous events.  It sees the outside world
// only through the public device API (the VfioUserDevice's DMA controller
// and interrupts); nvme.ts wires it to regions, reset, quiesce and
// migration.
//
// Concurrency: commands are fetched when a submission queue's tail
// doorbell moves and run concurrently (image I/O on libuv's threadpool);
// each completion is posted when its command finishes, in that order.  A
// drain (quiesce, controller reset, migration stop) stops fetching and
// waits until nothing is in flight; held Async Event Requests do not count.
import { memoryBarrier } from '../../util/fence.js';
import { DmaMapFlag, Errno, IrqIndex } from '../../protocol/constants.js';
import { VfuError, errnoOf } from '../../protocol/errors.js';
import type { VfioUserDevice } from '../../server/device.js';
import {
  AdminOp,
  AsyncEventType,
  CQE_SIZE,
  Cc,
  Cns,
  Csts,
  Feature,
  IoOp,
  LogPage,
  NVME_PAGE,
  NVME_VS_1_4,
  NvmeReg,
  SQE_SIZE,
  Status,
} from './constants.js';
import type { ImageFile } from './image.js';
import {
  COMPOSITE_TEMP_K,
  type ErrorEntry,
  type NvmeIdentity,
  type NvmeLimits,
  type SmartCounters,
  WCTEMP_K,
  activeNamespaceList,
  commandEffectsLog,
  errorLog,
  firmwareSlotLog,
  identifyController,
  identifyNamespace,
  namespaceDescriptors,
  smartLog,
} from './pages.js';
import { type DmaSpan, prpAt, prpSpans } from './prp.js';

const PROT_READ = DmaMapFlag.READ;
const PROT_WRITE = DmaMapFlag.WRITE;
/** CAP.TO: 500 ms units the host waits for CSTS.RDY (here 5 s). */
const CAP_TO = 10;
/** A command's outcome: a status, or a status with completion dword 0. */
type Outcome = number | { status: number; dw0: number };
/** Returned by a held Async Event Request: no completion now. */
const HELD = -1;

export interface SubmissionQueue {
  id: number;
  base: number;
  size: number;
  cqid: number;
  head: number;
  tail: number;
  prio: number;
  /** Commands of this queue in flight. */
  inflight: number;
  deleting: boolean;
  fetching: boolean;
}

/** A completion waiting for room in a full completion queue. */
type WaitingCqe = [dw0: number, dw2: number, dw3: number];

export interface CompletionQueue {
  id: number;
  base: number;
  size: number;
  head: number;
  tail: number;
  phase: number;
  ien: boolean;
  iv: number;
  sqs: Set<number>;
  waiting: WaitingCqe[];
}

/** Feature values (current); reset to defaults by a controller reset. */
export interface Features {
  arbitration: number;
  powerMgmt: number;
  tempOver: number;
  tempUnder: number;
  errorRecovery: number;
  vwc: number;
  coalesce: number;
  /** Interrupt Vector Configuration: vectors with coalescing disabled. */
  coalesceDisabled: number[];
  writeAtomic: number;
  asyncEventConfig: number;
  /** Timestamp set by the host (ms) and when (our clock), or null. */
  timestamp: { value: number; setAt: number } | null;
  /** Number of Queues granted (0-based sq, cq), once set. */
  queuesSet: boolean;
}

/** Per-controller counters, errors and events that survive a controller reset. */
export interface Persistent {
  smart: SmartCounters;
  errors: ErrorEntry[];
  errorCount: number;
}

export interface NvmeConfig {
  /** I/O queue pairs. */
  queues: number;
  /** Entries per queue at most (CAP.MQES + 1). */
  maxQueueEntries: number;
  lbaShift: number;
  /** MDTS as a power of two of 4 KiB pages. */
  mdts: number;
  identity: NvmeIdentity;
  shadowDoorbells: boolean;
}

const ERROR_LOG_ENTRIES = 64;
const AER_LIMIT = 4;

function defaultFeatures(queues: number): Features {
  void queues;
  return {
    arbitration: 0,
    powerMgmt: 0,
    tempOver: WCTEMP_K,
    tempUnder: 0,
    errorRecovery: 0,
    vwc: 1,
    coalesce: 0,
    coalesceDisabled: [],
    writeAtomic: 0,
    asyncEventConfig: 0,
    timestamp: null,
    queuesSet: false,
  };
}

/** Statistics for tests and the bench (not architectural state). */
export interface NvmeStats {
  commands: number;
  completions: number;
  interrupts: number;
  doorbells: number;
  /** Commands whose data went through a bounce buffer (not zero-copy). */
  bounced: number;
}

export class NvmeController {
  readonly cfg: NvmeConfig;
  readonly blocks: number;
  cc = 0;
  csts = 0;
  aqa = 0;
  asq = 0;
  acq = 0;
  intms = 0;
  sqs: (SubmissionQueue | undefined)[];
  cqs: (CompletionQueue | undefined)[];
  features: Features;
  persistent: Persistent = {
    smart: { unitsRead: 0, unitsWritten: 0, readCommands: 0, writeCommands: 0, powerCycles: 1, unsafeShutdowns: 0, mediaErrors: 0, errorEntries: 0 },
    errors: [],
    errorCount: 0,
  };
  /** Held Async Event Request command ids. */
  aers: number[] = [];
  /** Events waiting for an Async Event Request: completion dword 0 values. */
  events: number[] = [];
  /** Event types masked until their log page is read (bit per type). */
  eventMask = 0;
  /** Shadow doorbell and EventIdx buffers (Doorbell Buffer Config). */
  dbbuf: { shadow: number; eventIdx: number } | null = null;
  /** Whether commands are fetched: not while stopped for migration. */
  running = true;
  /** Set while a drain is in force (quiesce, reset, shutdown). */
  private paused = false;
  private shuttingDown = false;
  /** Bumped by a controller reset: completions of older commands are dropped. */
  private generation = 0;
  private inflight = 0;
  private idleWaiters: (() => void)[] = [];
  private readonly signalPending = new Set<number>();
  private signalScheduled = false;
  private readonly coalesceCount = new Map<number, number>();
  private readonly coalesceTimers = new Map<number, NodeJS.Timeout>();
  private intxCheck: NodeJS.Timeout | null = null;
  private readonly startedAt = Date.now();
  readonly stats: NvmeStats = { commands: 0, completions: 0, interrupts: 0, doorbells: 0, bounced: 0 };

  constructor(
    readonly device: VfioUserDevice,
    readonly image: ImageFile,
    cfg: NvmeConfig,
  ) {
    this.cfg = cfg;
    this.blocks = Math.floor(image.size / 2 ** cfg.lbaShift);
    this.sqs = new Array(cfg.queues + 1).fill(undefined);
    this.cqs = new Array(cfg.queues + 1).fill(undefined);
    this.features = defaultFeatures(cfg.queues);
  }

  get vectors(): number {
    return this.cfg.queues + 1;
  }
  get mdtsBytes(): number {
    return NVME_PAGE * 2 ** this.cfg.mdts;
  }
  private get limits(): NvmeLimits {
    return {
      mdts: this.cfg.mdts,
      namespaces: 1,
      aerLimit: AER_LIMIT,
      errorLogEntries: ERROR_LOG_ENTRIES,
      shadowDoorbells: this.cfg.shadowDoorbells,
      maxCmd: 0,
    };
  }

  get cap(): bigint {
    const mqes = BigInt(this.cfg.maxQueueEntries - 1);
    return (
      mqes |
      (1n << 16n) | // CQR: queues must be physically contiguous
      (BigInt(CAP_TO) << 24n) |
      (0n << 32n) | // DSTRD 0
      (1n << 37n) | // CSS: NVM command set
      (0n << 48n) | // MPSMIN 4 KiB
      (0n << 52n) // MPSMAX 4 KiB
    );
  }

  // ----------------------------------------------------------- registers

  /** The 64 bytes of controller registers as they read now. */
  registerImage(): Buffer {
    const b = Buffer.alloc(0x40);
    b.writeBigUInt64LE(this.cap, NvmeReg.CAP);
    b.writeUInt32LE(NVME_VS_1_4, NvmeReg.VS);
    b.writeUInt32LE(this.intms >>> 0, NvmeReg.INTMS);
    b.writeUInt32LE(this.intms >>> 0, NvmeReg.INTMC);
    b.writeUInt32LE(this.cc >>> 0, NvmeReg.CC);
    b.writeUInt32LE(this.csts >>> 0, NvmeReg.CSTS);
    b.writeUInt32LE(this.aqa >>> 0, NvmeReg.AQA);
    b.writeBigUInt64LE(BigInt(this.asq), NvmeReg.ASQ);
    b.writeBigUInt64LE(BigInt(this.acq), NvmeReg.ACQ);
    return b;
  }

  /** BAR0 read: registers, then reserved space and doorbells reading as zero. */
  readBar0(offset: number, out: Buffer): void {
    out.fill(0);
    if (offset >= 0x40) return;
    const img = this.registerImage();
    img.copy(out, 0, offset, Math.min(0x40, offset + out.length));
  }

  /** BAR0 write: registers by dword (partial writes merge), doorbells by dword. */
  writeBar0(offset: number, data: Buffer): void | Promise<void> {
    if (offset >= NvmeReg.DOORBELLS) {
      if (data.length !== 4 || offset % 4 !== 0) {
        this.device.log('warn', `nvme: doorbell access of ${data.length} bytes at 0x${offset.toString(16)} ignored`);
        return;
      }
      this.doorbell((offset - NvmeReg.DOORBELLS) / 4, data.readUInt32LE(0));
      return;
    }
    if (offset + data.length > 0x40) return;
    const img = this.registerImage();
    let pending: Promise<void> | undefined;
    for (let reg = offset & ~3; reg < offset + data.length; reg += 4) {
      const cur = img.subarray(reg, reg + 4);
      const lo = Math.max(offset, reg);
      const hi = Math.min(offset + data.length, reg + 4);
      data.copy(cur, lo - reg, lo - offset, hi - offset);
      const r = this.writeReg(reg, cur.readUInt32LE(0));
      if (r) pending = pending ? pending.then(() => r) : r;
    }
    return pending;
  }

  private writeReg(reg: number, v: number): void | Promise<void> {
    switch (reg) {
      case NvmeReg.INTMS:
        this.intms = (this.intms | v) >>> 0;
        return;
      case NvmeReg.INTMC:
        this.intms = (this.intms & ~v) >>> 0;
        this.recheckLevel();
        return;
      case NvmeReg.CC:
        return this.writeCc(v >>> 0);
      case NvmeReg.AQA:
        if (!(this.cc & Cc.EN)) this.aqa = v & 0x0fff0fff;
        return;
      case NvmeReg.ASQ:
      case NvmeReg.ASQ + 4:
      case NvmeReg.ACQ:
      case NvmeReg.ACQ + 4: {
        if (this.cc & Cc.EN) return;
        const isSq = reg < NvmeReg.ACQ;
        const cur = isSq ? this.asq : this.acq;
        const hiHalf = reg % 8 === 4;
        // Keep within 2^53 (an address beyond cannot be mapped anyway).
        const lo = hiHalf ? cur % 2 ** 32 : (v & ~0xfff) >>> 0;
        const hi = hiHalf ? (v >>> 0) % 0x200000 : Math.floor(cur / 2 ** 32);
        const next = hi * 2 ** 32 + lo;
        if (isSq) this.asq = next;
        else this.acq = next;
        return;
      }
      default:
        return; // read-only or reserved: writes are ignored
    }
  }

  private writeCc(v: number): void | Promise<void> {
    const was = this.cc;
    const shn = (v & Cc.SHN_MASK) >>> Cc.SHN_SHIFT;
    if (was & Cc.EN && !(v & Cc.EN)) {
      this.cc = v;
      return this.controllerReset('CC.EN cleared');
    }
    this.cc = v;
    if (!(was & Cc.EN) && v & Cc.EN) this.enable();
    if (shn !== 0 && (was & Cc.SHN_MASK) === 0 && v & Cc.EN) void this.shutdown();
  }

  private enable(): void {
    const mps = (this.cc >>> Cc.MPS_SHIFT) & 0xf;
    const css = (this.cc >>> Cc.CSS_SHIFT) & 7;
    const asqs = (this.aqa & 0xfff) + 1;
    const acqs = ((this.aqa >>> 16) & 0xfff) + 1;
    const bad =
      mps !== 0 ? `CC.MPS ${mps} (only 4 KiB pages)` : css !== 0 ? `CC.CSS ${css}` : asqs < 2 || acqs < 2 ? 'admin queue of one entry' : this.asq === 0 || this.acq === 0 ? 'admin queue at address 0' : null;
    if (bad !== null) {
      this.device.log('warn', `nvme: enable refused: ${bad}`);
      this.csts |= Csts.CFS;
      return;
    }
    this.cqs[0] = { id: 0, base: this.acq, size: acqs, head: 0, tail: 0, phase: 1, ien: true, iv: 0, sqs: new Set([0]), waiting: [] };
    this.sqs[0] = { id: 0, base: this.asq, size: asqs, cqid: 0, head: 0, tail: 0, prio: 0, inflight: 0, deleting: false, fetching: false };
    this.csts = Csts.RDY;
    this.device.log('debug', `nvme: enabled (admin SQ ${asqs}, CQ ${acqs} entries)`);
  }

  /** CC.SHN: finish what is in flight, flush the image, report SHST complete. */
  private async shutdown(): Promise<void> {
    this.csts = (this.csts & ~Csts.SHST_MASK) | Csts.SHST_OCCURRING;
    this.shuttingDown = true;
    await this.whenIdle();
    try {
      await this.image.sync();
    } catch (e) {
      this.device.log('error', `nvme: flush at shutdown failed: ${(e as Error).message}`);
    }
    if (this.shuttingDown) this.csts = (this.csts & ~Csts.SHST_MASK) | Csts.SHST_COMPLETE;
  }

  /**
   * Controller reset (CC.EN 1 -> 0, device reset, FLR): stop fetching, let
   * in-flight commands finish (their completions are dropped), then
   * forget the queues, held events and feature values.
   */
  async controllerReset(why: string): Promise<void> {
    this.generation++;
    const wasPaused = this.paused;
    this.paused = true;
    await this.whenIdle();
    this.paused = wasPaused;
    this.sqs.fill(undefined);
    this.cqs.fill(undefined);
    this.aers = [];
    this.events = [];
    this.eventMask = 0;
    this.dbbuf = null;
    this.features = defaultFeatures(this.cfg.queues);
    this.intms = 0;
    this.csts = 0;
    this.shuttingDown = false;
    this.cc &= ~Cc.EN;
    this.signalPending.clear();
    for (const t of this.coalesceTimers.values()) clearTimeout(t);
    this.coalesceTimers.clear();
    this.coalesceCount.clear();
    this.device.log('debug', `nvme: controller reset (${why})`);
  }

  // ------------------------------------------------------------ doorbells

  /** Doorbell `index` (0: SQ0 tail, 1: CQ0 head, 2: SQ1 tail, ...). */
  doorbell(index: number, value: number): void {
    this.stats.doorbells++;
    const qid = index >> 1;
    if (index & 1) {
      const cq = this.cqs[qid];
      if (cq === undefined || value >= cq.size) return this.badDoorbell(cq === undefined ? 0 : 1, `CQ ${qid} head ${value}`);
      cq.head = value;
      this.flushWaiting(cq);
      return;
    }
    const sq = this.sqs[qid];
    if (sq === undefined || value >= sq.size) return this.badDoorbell(sq === undefined ? 0 : 1, `SQ ${qid} tail ${value}`);
    sq.tail = value;
    this.kick(sq);
  }

  /** A doorbell notification without a value (ioeventfd): read the shadow doorbell. */
  shadowNotify(index: number): void {
    this.stats.doorbells++;
    if (this.dbbuf === null) return;
    const v = this.readShadow(index);
    if (v !== null) this.doorbell(index, v);
  }

  private badDoorbell(info: number, what: string): void {
    this.device.log('warn', `nvme: invalid doorbell write (${what})`);
    this.raiseEvent(AsyncEventType.ERROR, info, LogPage.ERROR);
  }

  /** Controller Fatal Status: the host must reset us. */
  private fatal(why: string): void {
    this.device.log('error', `nvme: controller fatal: ${why}`);
    this.csts |= Csts.CFS;
  }

  private canFetch(): boolean {
    return this.running && !this.paused && !this.shuttingDown && (this.csts & (Csts.RDY | Csts.CFS)) === Csts.RDY;
  }

  /** Fetches and starts the commands between a queue's head and tail. */
  kick(sq: SubmissionQueue): void {
    if (sq.fetching) return;
    sq.fetching = true;
    let handedOff = false;
    try {
      do {
        while (sq.head !== sq.tail && !sq.deleting && this.canFetch() && this.sqs[sq.id] === sq) {
          const sqe = Buffer.allocUnsafe(SQE_SIZE);
          const at = sq.base + sq.head * SQE_SIZE;
          try {
            this.device.dma.readSync(at, sqe);
          } catch (e) {
            if (errnoOf(e) === Errno.EAGAIN) {
              // Reached by DMA messages: fetch this one asynchronously.
              handedOff = true;
              void this.fetchByMessage(sq, at);
              return;
            }
            this.fatal(`SQ ${sq.id} entry at 0x${at.toString(16)} unreadable: ${(e as Error).message}`);
            return;
          }
          sq.head = (sq.head + 1) % sq.size;
          this.start(sq, sqe);
        }
      } while (this.shadowSqTail(sq));
    } finally {
      if (!handedOff) sq.fetching = false;
    }
  }

  /** Fetches one entry by DMA message (sq.fetching is held), then carries on. */
  private async fetchByMessage(sq: SubmissionQueue, at: number): Promise<void> {
    const sqe = Buffer.alloc(SQE_SIZE);
    this.inflight++;
    let ok = false;
    try {
      await this.device.dma.read(at, sqe);
      ok = true;
    } catch (e) {
      this.fatal(`SQ ${sq.id} entry unreadable: ${(e as Error).message}`);
    }
    sq.fetching = false;
    if (ok && this.sqs[sq.id] === sq) {
      sq.head = (sq.head + 1) % sq.size;
      this.start(sq, sqe);
    }
    this.settle();
    this.kick(sq);
  }

  // Shadow doorbells (Doorbell Buffer Config), as hosts use them (Linux's
  // nvme_dbbuf_update_and_check_event): the host stores each new SQ tail
  // and CQ head in the shadow buffer, then rings the doorbell register only
  // when the value passes the EventIdx we published for that doorbell.  So
  // the device must publish EventIdx and then read the shadow again: a
  // value the host stored before it saw our EventIdx rang no doorbell.
  // Linux keeps the admin queue on its registers, so only I/O queues use
  // the shadow buffer here.

  /** The word the shadow doorbell and EventIdx accesses go through. */
  private readonly dbWord = Buffer.alloc(4);

  /** Whether queue `qid`'s doorbells are shadowed. */
  private shadowed(qid: number): boolean {
    return this.dbbuf !== null && qid !== 0;
  }

  /** Publishes EventIdx for doorbell `index`; false when the buffer is unwritable. */
  private publishEventIdx(index: number, value: number): boolean {
    const b = this.dbWord;
    b.writeUInt32LE(value, 0);
    try {
      this.device.dma.writeSync(this.dbbuf!.eventIdx + index * 4, b);
    } catch {
      this.fatal('EventIdx buffer unwritable');
      return false;
    }
    // the shadow is read after this store lands (the host orders its side)
    memoryBarrier();
    return true;
  }

  /** The shadow doorbell `index` (the host's last value), or null when unreadable. */
  private readShadow(index: number): number | null {
    const b = this.dbWord;
    try {
      this.device.dma.readSync(this.dbbuf!.shadow + index * 4, b);
    } catch {
      this.fatal('shadow doorbell unreadable');
      return null;
    }
    return b.readUInt32LE(0);
  }

  /**
   * After fetching up to the tail: publishes the tail seen as EventIdx and
   * takes a newer tail from the shadow buffer.  True when there is more to
   * fetch.
   */
  private shadowSqTail(sq: SubmissionQueue): boolean {
    if (this.dbbuf === null) return false;
    // our own driver shadows the admin queue too; EventIdx is harmless there
    if (!this.publishEventIdx(sq.id * 2, sq.tail) || !this.shadowed(sq.id)) return false;
    const t = this.readShadow(sq.id * 2);
    if (t === null || t === sq.tail || this.sqs[sq.id] !== sq) return false;
    if (t >= sq.size) {
      this.badDoorbell(1, `SQ ${sq.id} shadow tail ${t}`);
      return false;
    }
    sq.tail = t;
    return sq.head !== sq.tail && !sq.deleting && this.canFetch();
  }

  /**
   * Learns a shadowed CQ's head from the shadow buffer, publishing each head
   * learnt as EventIdx, until the two agree: the host then rings the head
   * doorbell at its next step, which is when a full queue has room again.
   */
  private shadowCqHead(cq: CompletionQueue): void {
    if (!this.shadowed(cq.id)) return;
    for (let i = 0; i < 4; i++) {
      if (!this.publishEventIdx(cq.id * 2 + 1, cq.head)) return;
      const h = this.readShadow(cq.id * 2 + 1);
      if (h === null || h === cq.head) return;
      if (h >= cq.size) return this.badDoorbell(1, `CQ ${cq.id} shadow head ${h}`);
      cq.head = h;
    }
  }

  /** Whether `cq` has no free entry, after learning its head when it is shadowed. */
  private cqFull(cq: CompletionQueue): boolean {
    if ((cq.tail + 1) % cq.size !== cq.head) return false;
    this.shadowCqHead(cq);
    return (cq.tail + 1) % cq.size === cq.head;
  }

  // ------------------------------------------------------------- commands

  private start(sq: SubmissionQueue, sqe: Buffer): void {
    this.stats.commands++;
    this.inflight++;
    sq.inflight++;
    const gen = this.generation;
    const cid = sqe.readUInt16LE(2);
    let p: Promise<Outcome>;
    try {
      p = sq.id === 0 ? this.admin(sqe) : this.io(sqe);
    } catch (e) {
      p = Promise.reject(e);
    }
    p.then(
      (o) => this.finish(sq, gen, cid, o, sqe),
      (e: unknown) => {
        this.device.log('error', `nvme: command 0x${sqe[0]!.toString(16)} failed: ${(e as Error)?.message ?? e}`);
        this.finish(sq, gen, cid, Status.INTERNAL, sqe);
      },
    );
  }

  private finish(sq: SubmissionQueue, gen: number, cid: number, o: Outcome, sqe: Buffer): void {
    sq.inflight--;
    if (o !== HELD && gen === this.generation) {
      const status = typeof o === 'number' ? o : o.status;
      const dw0 = typeof o === 'number' ? 0 : o.dw0;
      if (status !== Status.SUCCESS) this.logError(sq.id, cid, status, sqe);
      this.complete(sq, cid, status, dw0);
    }
    this.settle();
  }

  private settle(): void {
    this.inflight--;
    if (this.inflight === 0 && this.idleWaiters.length > 0) {
      const w = this.idleWaiters;
      this.idleWaiters = [];
      for (const f of w) f();
    }
  }

  /** Resolves once no command is in flight (held AERs do not count). */
  whenIdle(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Stops fetching and waits for in-flight commands (quiesce). */
  async drain(): Promise<void> {
    this.paused = true;
    await this.whenIdle();
  }

  /** Fetches again after a drain. */
  undrain(): void {
    this.paused = false;
    this.kickAll();
  }

  kickAll(): void {
    for (const sq of this.sqs) if (sq !== undefined) this.kick(sq);
  }

  private logError(sqid: number, cid: number, status: number, sqe: Buffer): void {
    const p = this.persistent;
    p.errorCount++;
    p.smart.errorEntries++;
    const lba = sqe[0] === IoOp.READ || sqe[0] === IoOp.WRITE ? sqe.readUInt32LE(40) + sqe.readUInt32LE(44) * 2 ** 32 : 0;
    p.errors.push({ count: p.errorCount, sqid, cid, status: status & 0x7fff, lba, nsid: sqe.readUInt32LE(4) });
    if (p.errors.length > ERROR_LOG_ENTRIES) p.errors.shift();
  }

  /** Posts a completion (or queues it while its completion queue is full). */
  private complete(sq: SubmissionQueue, cid: number, status: number, dw0: number): void {
    const cq = this.cqs[sq.cqid];
    if (cq === undefined) return;
    const dnr = status !== Status.SUCCESS && status !== Status.ABORTED_SQ_DELETED && status !== Status.ABORT_REQUESTED ? Status.DNR : 0;
    const entry: WaitingCqe = [dw0 >>> 0, (sq.head | (sq.id << 16)) >>> 0, (cid | (((status | dnr) & 0x7fff) << 17)) >>> 0];
    if (cq.waiting.length > 0 || this.cqFull(cq)) {
      cq.waiting.push(entry);
      return;
    }
    const r = this.post(cq, entry);
    if (r === true) this.notify(cq);
    else if (r !== false) void r.then((ok) => ok && this.notify(cq));
  }

  private readonly cqe = Buffer.alloc(CQE_SIZE);
  /** The byte of a completion entry holding its phase tag (and status bits 0-6). */
  private readonly cqeTag = Buffer.alloc(1);

  /**
   * Writes a completion entry, its phase tag last: the whole entry under the
   * tag the slot holds now (the host skips it), a fence, then the one byte
   * that carries the new tag.  A host that sees the tag then sees the rest,
   * whatever order a copy stores 16 bytes in (Linux reads the status word,
   * then dma_rmb(), then the entry).  By DMA message the entry must have
   * landed before the interrupt, so the result is then a promise.
   */
  private post(cq: CompletionQueue, e: WaitingCqe): boolean | Promise<boolean> {
    const b = this.cqe;
    b.writeUInt32LE(e[0], 0);
    b.writeUInt32LE(0, 4);
    b.writeUInt32LE(e[1], 8);
    b.writeUInt32LE((e[2] | ((cq.phase ^ 1) << 16)) >>> 0, 12);
    const tag = this.cqeTag;
    tag[0] = b[14]! ^ 1;
    const at = cq.base + cq.tail * CQE_SIZE;
    let pending: Promise<boolean> | null = null;
    try {
      this.device.dma.writeSync(at, b);
      memoryBarrier();
      this.device.dma.writeSync(at + 14, tag);
    } catch (err) {
      if (errnoOf(err) === Errno.EAGAIN) {
        const [entry, last] = [Buffer.from(b), Buffer.from(tag)];
        pending = this.device.dma
          .write(at, entry)
          .then(() => this.device.dma.write(at + 14, last))
          .then(
            () => true,
            (x: unknown) => {
              this.fatal(`CQ ${cq.id} write failed: ${(x as Error).message}`);
              return false;
            },
          );
      } else {
        this.fatal(`CQ ${cq.id} entry at 0x${at.toString(16)} unwritable: ${(err as Error).message}`);
        return false;
      }
    }
    cq.tail = (cq.tail + 1) % cq.size;
    if (cq.tail === 0) cq.phase ^= 1;
    this.stats.completions++;
    return pending ?? true;
  }

  private flushWaiting(cq: CompletionQueue): void {
    let posted = false;
    let last: Promise<boolean> | null = null;
    while (cq.waiting.length > 0 && !this.cqFull(cq)) {
      const r = this.post(cq, cq.waiting.shift()!);
      if (r === false) break;
      if (r !== true) last = r;
      posted = true;
    }
    if (last !== null) void last.then((ok) => ok && this.notify(cq));
    else if (posted) this.notify(cq);
  }

  // ------------------------------------------------------------ interrupts

  /** A completion was posted on `cq`: interrupt per its vector and coalescing. */
  private notify(cq: CompletionQueue): void {
    if (!cq.ien) return;
    const v = cq.iv;
    const c = this.features.coalesce;
    const thr = (c & 0xff) + 1;
    const time = (c >>> 8) & 0xff;
    if (cq.id !== 0 && time > 0 && !this.features.coalesceDisabled.includes(v)) {
      const n = (this.coalesceCount.get(v) ?? 0) + 1;
      if (n < thr) {
        this.coalesceCount.set(v, n);
        if (!this.coalesceTimers.has(v)) {
          // 100 µs units; timers have a 1 ms resolution.
          const t = setTimeout(() => this.coalesceExpired(v), Math.max(1, Math.round(time / 10)));
          this.coalesceTimers.set(v, t);
        }
        return;
      }
      this.coalesceExpired(v);
      return;
    }
    // Completions posted in the same turn of the event loop share one interrupt.
    this.signalPending.add(v);
    if (!this.signalScheduled) {
      this.signalScheduled = true;
      queueMicrotask(() => this.flushSignals());
    }
  }

  private coalesceExpired(v: number): void {
    const t = this.coalesceTimers.get(v);
    if (t) clearTimeout(t);
    this.coalesceTimers.delete(v);
    this.coalesceCount.delete(v);
    this.signal(v);
  }

  private flushSignals(): void {
    this.signalScheduled = false;
    for (const v of this.signalPending) this.signal(v);
    this.signalPending.clear();
  }

  /** Raises vector `v` on whatever interrupt type the client has wired. */
  signal(v: number): void {
    const irqs = this.device.irqs;
    if (irqs.hasEventfd(IrqIndex.MSIX, v) || this.anyEventfd(IrqIndex.MSIX)) {
      if (v < irqs.count(IrqIndex.MSIX) && irqs.trigger(IrqIndex.MSIX, v)) this.stats.interrupts++;
      return;
    }
    if (this.anyEventfd(IrqIndex.MSI)) {
      if (this.intms & 1) return; // masked by the host (INTMS); INTMC re-checks
      if (irqs.trigger(IrqIndex.MSI, 0)) this.stats.interrupts++;
      return;
    }
    // INTx is a level the client emulates: signalling it again while it is
    // asserted is harmless, and no latch here means none can get stuck
    // (whether the client re-enables it by message or by a resample fd).
    if (this.intms & 1) return;
    if (irqs.trigger(IrqIndex.INTX, 0)) this.stats.interrupts++;
  }

  private anyEventfd(index: number): boolean {
    const irqs = this.device.irqs;
    for (let i = 0; i < irqs.count(index); i++) if (irqs.hasEventfd(index, i)) return true;
    return false;
  }

  /** Any completion the host has not consumed, on a queue with interrupts on. */
  private levelPending(): boolean {
    return this.cqs.some((cq) => cq !== undefined && cq.ien && this.unconsumed(cq));
  }

  /** Whether the host has completions of `cq` to consume (a shadowed head is read first). */
  private unconsumed(cq: CompletionQueue): boolean {
    if (cq.head !== cq.tail) this.shadowCqHead(cq);
    return cq.head !== cq.tail;
  }

  /**
   * INTx is a level: the client re-enables it (SET_IRQS UNMASK) after its
   * next BAR access, and we raise it again if completions are still
   * unconsumed.  The check waits a moment, since the BAR access that
   * re-enabled it is usually the head doorbell that consumes them, and it
   * arrives just after.
   */
  intxUnmasked(): void {
    if (this.intxCheck !== null) return;
    this.intxCheck = setTimeout(() => {
      this.intxCheck = null;
      this.recheckLevel();
    }, 1);
    this.intxCheck.unref();
  }

  /** Signals again when unconsumed completions remain (INTx/MSI level, INTMC). */
  recheckLevel(): void {
    if (this.levelPending()) this.signal(0);
  }

  /** Signals every vector with unconsumed completions (after a migration or resume). */
  resignalAll(): void {
    for (const cq of this.cqs) if (cq !== undefined && cq.ien && this.unconsumed(cq)) this.signal(cq.iv);
  }

  // -------------------------------------------------------- async events

  /** Queues an asynchronous event; completes a held AER if one is outstanding. */
  raiseEvent(type: number, info: number, logPage: number): void {
    this.events.push((type & 7) | ((info & 0xff) << 8) | ((logPage & 0xff) << 16));
    this.deliverEvents();
  }

  private deliverEvents(): void {
    for (let i = 0; i < this.events.length && this.aers.length > 0; ) {
      const ev = this.events[i]!;
      const type = ev & 7;
      if (this.eventMask & (1 << type)) {
        i++;
        continue;
      }
      this.events.splice(i, 1);
      this.eventMask |= 1 << type;
      const cid = this.aers.shift()!;
      const sq = this.sqs[0];
      if (sq !== undefined) this.complete(sq, cid, Status.SUCCESS, ev);
    }
  }

  /** SMART critical warning bits in force now. */
  criticalWarning(): number {
    const over = COMPOSITE_TEMP_K >= this.features.tempOver;
    const under = COMPOSITE_TEMP_K < this.features.tempUnder;
    return over || under ? 1 << 1 : 0;
  }

  // ------------------------------------------------------------ guest data

  private readGuest(iova: number, n: number): Buffer | Promise<Buffer> {
    const b = Buffer.alloc(n);
    try {
      this.device.dma.readSync(iova, b);
      return b;
    } catch (e) {
      if (errnoOf(e) !== Errno.EAGAIN) throw e;
      return this.device.dma.read(iova, b).then(() => b);
    }
  }

  private async spans(sqe: Buffer, length: number): Promise<DmaSpan[] | number> {
    return prpSpans(prpAt(sqe, 24), prpAt(sqe, 32), length, (iova, n) => this.readGuest(iova, n));
  }

  /** Copies `data` to the host through the command's PRPs. */
  private toHost(sqe: Buffer, data: Buffer): Promise<number> {
    return this.throughPrps(sqe, data, true);
  }

  /** Reads `length` bytes from the host through the command's PRPs. */
  private async fromHost(sqe: Buffer, length: number): Promise<Buffer | number> {
    const out = Buffer.alloc(length);
    const status = await this.throughPrps(sqe, out, false);
    return status === Status.SUCCESS ? out : status;
  }

  /**
   * Moves `buf` to the host (`toHost`) or fills it from the host through the
   * command's PRPs; every span is checked before the first byte moves.
   */
  private async throughPrps(sqe: Buffer, buf: Buffer, toHost: boolean): Promise<number> {
    const spans = await this.spans(sqe, buf.length);
    if (typeof spans === 'number') return spans;
    const dma = this.device.dma;
    try {
      for (const s of spans) dma.translate(s.iova, s.length, toHost ? PROT_WRITE : PROT_READ);
      let o = 0;
      for (const s of spans) {
        const part = buf.subarray(o, o + s.length);
        await (toHost ? dma.write(s.iova, part) : dma.read(s.iova, part));
        o += s.length;
      }
    } catch {
      return Status.DATA_TRANSFER_ERROR;
    }
    return Status.SUCCESS;
  }

  // ---------------------------------------------------------------- admin

  private async admin(sqe: Buffer): Promise<Outcome> {
    const op = sqe[0]!;
    if (sqe[1]! & 0xc3) return Status.INVALID_FIELD; // fused or SGL: not supported
    const cdw10 = sqe.readUInt32LE(40);
    const cdw11 = sqe.readUInt32LE(44);
    switch (op) {
      case AdminOp.IDENTIFY:
        return this.identify(sqe, cdw10);
      case AdminOp.CREATE_CQ:
        return this.createCq(sqe, cdw10, cdw11);
      case AdminOp.CREATE_SQ:
        return this.createSq(sqe, cdw10, cdw11);
      case AdminOp.DELETE_SQ:
        return this.deleteSq(cdw10 & 0xffff);
      case AdminOp.DELETE_CQ:
        return this.deleteCq(cdw10 & 0xffff);
      case AdminOp.SET_FEATURES:
        return this.setFeature(sqe, cdw10, cdw11);
      case AdminOp.GET_FEATURES:
        return this.getFeature(sqe, cdw10, cdw11);
      case AdminOp.GET_LOG_PAGE:
        return this.getLogPage(sqe, cdw10, cdw11);
      case AdminOp.ASYNC_EVENT:
        if (this.aers.length >= AER_LIMIT) return Status.AER_LIMIT;
        this.aers.push(sqe.readUInt16LE(2));
        this.deliverEvents();
        return HELD;
      case AdminOp.ABORT: {
        // Best effort: only a held Async Event Request can be taken back.
        const sqid = cdw10 & 0xffff;
        const cid = cdw10 >>> 16;
        const i = sqid === 0 ? this.aers.indexOf(cid) : -1;
        if (i < 0) return { status: Status.SUCCESS, dw0: 1 };
        this.aers.splice(i, 1);
        this.complete(this.sqs[0]!, cid, Status.ABORT_REQUESTED, 0);
        return { status: Status.SUCCESS, dw0: 0 };
      }
      case AdminOp.KEEP_ALIVE:
        return Status.SUCCESS;
      case AdminOp.DOORBELL_BUFFER_CONFIG: {
        if (!this.cfg.shadowDoorbells) return Status.INVALID_OPCODE;
        const shadow = prpAt(sqe, 24);
        const eventIdx = prpAt(sqe, 32);
        if (shadow === null || eventIdx === null || shadow % NVME_PAGE !== 0 || eventIdx % NVME_PAGE !== 0) return Status.INVALID_FIELD;
        try {
          this.device.dma.translate(shadow, NVME_PAGE, PROT_READ | PROT_WRITE);
          this.device.dma.translate(eventIdx, NVME_PAGE, PROT_READ | PROT_WRITE);
        } catch {
          return Status.INVALID_FIELD;
        }
        this.dbbuf = { shadow, eventIdx };
        this.device.log('debug', `nvme: shadow doorbells at 0x${shadow.toString(16)}, EventIdx at 0x${eventIdx.toString(16)}`);
        return Status.SUCCESS;
      }
      default:
        return Status.INVALID_OPCODE;
    }
  }

  private identify(sqe: Buffer, cdw10: number): Promise<number> | number {
    const cns = cdw10 & 0xff;
    const nsid = sqe.readUInt32LE(4);
    const id = this.cfg.identity;
    switch (cns) {
      case Cns.CONTROLLER:
        return this.toHost(sqe, identifyController(id, this.limits));
      case Cns.NAMESPACE:
        if (nsid !== 1) return Status.INVALID_NAMESPACE;
        return this.toHost(sqe, identifyNamespace(id, this.blocks, this.cfg.lbaShift));
      case Cns.ACTIVE_NS_LIST:
        if (nsid >= 0xfffffffe) return Status.INVALID_NAMESPACE;
        return this.toHost(sqe, activeNamespaceList(nsid));
      case Cns.NS_DESCRIPTORS:
        if (nsid !== 1) return Status.INVALID_NAMESPACE;
        return this.toHost(sqe, namespaceDescriptors(id));
      case Cns.CS_CONTROLLER:
        // NVM command set (CSI 0): no Verify, Write Zeroes or DSM size limits.
        if (sqe[47] !== 0) return Status.INVALID_FIELD;
        return this.toHost(sqe, Buffer.alloc(4096));
      default:
        return Status.INVALID_FIELD;
    }
  }

  private queueMemoryOk(base: number, bytes: number): boolean {
    try {
      this.device.dma.translate(base, bytes, PROT_READ | PROT_WRITE);
      return true;
    } catch {
      return false;
    }
  }

  private createCq(sqe: Buffer, cdw10: number, cdw11: number): number {
    const qid = cdw10 & 0xffff;
    const size = (cdw10 >>> 16) + 1;
    const iv = cdw11 >>> 16;
    const base = prpAt(sqe, 24);
    if (qid === 0 || qid > this.cfg.queues || this.cqs[qid] !== undefined) return Status.INVALID_QID;
    if (size < 2 || size > this.cfg.maxQueueEntries) return Status.INVALID_QSIZE;
    if (!(cdw11 & 1)) return Status.INVALID_FIELD; // CAP.CQR: contiguous only
    if (iv >= this.vectors) return Status.INVALID_IV;
    if (base === null || base % NVME_PAGE !== 0) return Status.INVALID_PRP_OFFSET;
    if (!this.queueMemoryOk(base, size * CQE_SIZE)) return Status.INVALID_FIELD;
    this.cqs[qid] = { id: qid, base, size, head: 0, tail: 0, phase: 1, ien: (cdw11 & 2) !== 0, iv, sqs: new Set(), waiting: [] };
    return Status.SUCCESS;
  }

  private createSq(sqe: Buffer, cdw10: number, cdw11: number): number {
    const qid = cdw10 & 0xffff;
    const size = (cdw10 >>> 16) + 1;
    const cqid = cdw11 >>> 16;
    const base = prpAt(sqe, 24);
    const cq = this.cqs[cqid];
    if (cqid === 0 || cq === undefined) return Status.INVALID_CQ;
    if (qid === 0 || qid > this.cfg.queues || this.sqs[qid] !== undefined) return Status.INVALID_QID;
    if (size < 2 || size > this.cfg.maxQueueEntries) return Status.INVALID_QSIZE;
    if (!(cdw11 & 1)) return Status.INVALID_FIELD;
    if (base === null || base % NVME_PAGE !== 0) return Status.INVALID_PRP_OFFSET;
    if (!this.queueMemoryOk(base, size * SQE_SIZE)) return Status.INVALID_FIELD;
    this.sqs[qid] = { id: qid, base, size, cqid, head: 0, tail: 0, prio: (cdw11 >>> 1) & 3, inflight: 0, deleting: false, fetching: false };
    cq.sqs.add(qid);
    return Status.SUCCESS;
  }

  private async deleteSq(qid: number): Promise<number> {
    const sq = this.sqs[qid];
    if (qid === 0 || sq === undefined || sq.deleting) return Status.INVALID_QID;
    sq.deleting = true;
    // Commands already fetched finish and post their completions first.
    while (sq.inflight > 0) await new Promise<void>((r) => setImmediate(r));
    if (this.sqs[qid] === sq) this.sqs[qid] = undefined;
    this.cqs[sq.cqid]?.sqs.delete(qid);
    return Status.SUCCESS;
  }

  private deleteCq(qid: number): number {
    const cq = this.cqs[qid];
    if (qid === 0 || cq === undefined) return Status.INVALID_QID;
    if (cq.sqs.size > 0) return Status.INVALID_QUEUE_DELETION;
    this.cqs[qid] = undefined;
    return Status.SUCCESS;
  }

  private async setFeature(sqe: Buffer, cdw10: number, cdw11: number): Promise<Outcome> {
    const fid = cdw10 & 0xff;
    if (cdw10 & 0x80000000) return Status.FEATURE_NOT_SAVEABLE;
    const f = this.features;
    switch (fid) {
      case Feature.ARBITRATION:
        f.arbitration = cdw11 >>> 0;
        return Status.SUCCESS;
      case Feature.POWER_MGMT:
        if ((cdw11 & 0x1f) !== 0) return Status.INVALID_FIELD; // one power state
        f.powerMgmt = cdw11 & 0xff;
        return Status.SUCCESS;
      case Feature.TEMP_THRESHOLD: {
        const tmpsel = (cdw11 >>> 16) & 0xf;
        const thsel = (cdw11 >>> 20) & 3;
        if (thsel > 1 || (tmpsel > 1 && tmpsel !== 0xf)) return Status.INVALID_FIELD;
        const before = this.criticalWarning();
        if (tmpsel === 0 || tmpsel === 0xf) {
          if (thsel === 0) f.tempOver = cdw11 & 0xffff;
          else f.tempUnder = cdw11 & 0xffff;
        }
        const now = this.criticalWarning();
        if (now & ~before & f.asyncEventConfig) this.raiseEvent(AsyncEventType.SMART, 0x01, LogPage.SMART);
        return Status.SUCCESS;
      }
      case Feature.ERROR_RECOVERY:
        if (cdw11 & (1 << 16)) return Status.INVALID_FIELD; // DULBE: not supported
        f.errorRecovery = cdw11 & 0xffff;
        return Status.SUCCESS;
      case Feature.VOLATILE_WC:
        f.vwc = cdw11 & 1;
        return Status.SUCCESS;
      case Feature.NUM_QUEUES: {
        if ((cdw11 & 0xffff) === 0xffff || cdw11 >>> 16 === 0xffff) return Status.INVALID_FIELD;
        if (this.sqs.some((q, i) => i > 0 && q !== undefined) || this.cqs.some((q, i) => i > 0 && q !== undefined)) return Status.COMMAND_SEQUENCE;
        f.queuesSet = true;
        return { status: Status.SUCCESS, dw0: this.queuesDw0() };
      }
      case Feature.IRQ_COALESCE:
        f.coalesce = cdw11 & 0xffff;
        return Status.SUCCESS;
      case Feature.IRQ_CONFIG: {
        const iv = cdw11 & 0xffff;
        if (iv >= this.vectors) return Status.INVALID_FIELD;
        f.coalesceDisabled = f.coalesceDisabled.filter((x) => x !== iv);
        if (cdw11 & (1 << 16)) f.coalesceDisabled.push(iv);
        return Status.SUCCESS;
      }
      case Feature.WRITE_ATOMIC:
        f.writeAtomic = cdw11 & 1;
        return Status.SUCCESS;
      case Feature.ASYNC_EVENT:
        f.asyncEventConfig = cdw11 >>> 0;
        return Status.SUCCESS;
      case Feature.TIMESTAMP: {
        const data = await this.fromHost(sqe, 8);
        if (typeof data === 'number') return data;
        f.timestamp = { value: data.readUIntLE(0, 6), setAt: Date.now() };
        return Status.SUCCESS;
      }
      default:
        return Status.INVALID_FIELD;
    }
  }

  private queuesDw0(): number {
    const n = this.cfg.queues - 1;
    return ((n << 16) | n) >>> 0;
  }

  private async getFeature(sqe: Buffer, cdw10: number, cdw11: number): Promise<Outcome> {
    const fid = cdw10 & 0xff;
    const sel = (cdw10 >>> 8) & 7;
    if (sel > 3) return Status.INVALID_FIELD;
    const known: number[] = Object.values(Feature);
    if (!known.includes(fid)) return Status.INVALID_FIELD;
    if (sel === 3) return { status: Status.SUCCESS, dw0: 1 << 2 }; // changeable, not saveable, not per namespace
    const f = sel === 0 ? this.features : defaultFeatures(this.cfg.queues);
    const ok = (dw0: number): Outcome => ({ status: Status.SUCCESS, dw0: dw0 >>> 0 });
    switch (fid) {
      case Feature.ARBITRATION:
        return ok(f.arbitration);
      case Feature.POWER_MGMT:
        return ok(f.powerMgmt);
      case Feature.TEMP_THRESHOLD: {
        const tmpsel = (cdw11 >>> 16) & 0xf;
        const thsel = (cdw11 >>> 20) & 3;
        if (thsel > 1 || tmpsel > 1) return Status.INVALID_FIELD;
        return ok(((thsel === 0 ? f.tempOver : f.tempUnder) | (tmpsel << 16) | (thsel << 20)) >>> 0);
      }
      case Feature.ERROR_RECOVERY:
        return ok(f.errorRecovery);
      case Feature.VOLATILE_WC:
        return ok(f.vwc);
      case Feature.NUM_QUEUES:
        return ok(this.queuesDw0());
      case Feature.IRQ_COALESCE:
        return ok(f.coalesce);
      case Feature.IRQ_CONFIG: {
        const iv = cdw11 & 0xffff;
        if (iv >= this.vectors) return Status.INVALID_FIELD;
        return ok(iv | (f.coalesceDisabled.includes(iv) ? 1 << 16 : 0));
      }
      case Feature.WRITE_ATOMIC:
        return ok(f.writeAtomic);
      case Feature.ASYNC_EVENT:
        return ok(f.asyncEventConfig);
      case Feature.TIMESTAMP: {
        const b = Buffer.alloc(8);
        const now = Date.now();
        const ts = f.timestamp;
        b.writeUIntLE(ts ? ts.value + (now - ts.setAt) : now - this.startedAt, 0, 6);
        b[6] = ts ? 1 << 1 : 0; // origin: set by the host (or reset)
        return this.toHost(sqe, b);
      }
      default:
        return Status.INVALID_FIELD;
    }
  }

  private async getLogPage(sqe: Buffer, cdw10: number, cdw11: number): Promise<number> {
    const lid = cdw10 & 0xff;
    const rae = (cdw10 & (1 << 15)) !== 0;
    const numd = ((cdw11 & 0xffff) * 65536 + (cdw10 >>> 16)) + 1;
    const length = numd * 4;
    const offset = sqe.readUInt32LE(48) + sqe.readUInt32LE(52) * 2 ** 32;
    const nsid = sqe.readUInt32LE(4);
    if (length > this.mdtsBytes) return Status.INVALID_FIELD;
    if (offset % 4 !== 0) return Status.INVALID_FIELD;
    let log: Buffer;
    let eventType = -1;
    switch (lid) {
      case LogPage.ERROR:
        log = errorLog(this.persistent.errors, ERROR_LOG_ENTRIES);
        eventType = AsyncEventType.ERROR;
        break;
      case LogPage.SMART:
        if (nsid !== 0 && nsid !== 1 && nsid !== 0xffffffff) return Status.INVALID_NAMESPACE;
        log = smartLog(this.persistent.smart, this.criticalWarning(), Date.now() - this.startedAt);
        eventType = AsyncEventType.SMART;
        break;
      case LogPage.FW_SLOT:
        log = firmwareSlotLog(this.cfg.identity.firmware);
        break;
      case LogPage.CMD_EFFECTS:
        log = commandEffectsLog(this.cfg.shadowDoorbells);
        break;
      default:
        return Status.INVALID_LOG_PAGE;
    }
    if (offset >= log.length) return Status.INVALID_FIELD;
    const out = Buffer.alloc(length);
    log.copy(out, 0, offset, Math.min(log.length, offset + length));
    const st = await this.toHost(sqe, out);
    if (st === Status.SUCCESS && !rae && eventType >= 0) {
      this.eventMask &= ~(1 << eventType);
      this.deliverEvents();
    }
    return st;
  }

  // ------------------------------------------------------------------ I/O

  private async io(sqe: Buffer): Promise<Outcome> {
    const op = sqe[0]!;
    const nsid = sqe.readUInt32LE(4);
    if (sqe[1]! & 0xc3) return Status.INVALID_FIELD;
    if (op === IoOp.FLUSH) {
      if (nsid !== 1 && nsid !== 0xffffffff) return Status.INVALID_NAMESPACE;
      await this.image.sync();
      return Status.SUCCESS;
    }
    if (op !== IoOp.READ && op !== IoOp.WRITE && op !== IoOp.WRITE_ZEROES && op !== IoOp.DSM) return Status.INVALID_OPCODE;
    if (nsid !== 1) return Status.INVALID_NAMESPACE;
    const cdw10 = sqe.readUInt32LE(40);
    const cdw11 = sqe.readUInt32LE(44);
    const cdw12 = sqe.readUInt32LE(48);
    if (op === IoOp.DSM) return this.dsm(sqe, cdw10, cdw11);
    const slba = cdw10 + cdw11 * 2 ** 32;
    const nlb = (cdw12 & 0xffff) + 1;
    if (cdw11 >= 0x200000 || slba + nlb > this.blocks) return Status.LBA_OUT_OF_RANGE;
    const shift = this.cfg.lbaShift;
    const pos = slba * 2 ** shift;
    const bytes = nlb * 2 ** shift;
    if (op === IoOp.WRITE_ZEROES) {
      await this.image.zero(pos, bytes);
      this.persistent.smart.writeCommands++;
      return Status.SUCCESS;
    }
    if (bytes > this.mdtsBytes) return Status.INVALID_FIELD;
    const spans = await this.spans(sqe, bytes);
    if (typeof spans === 'number') return spans;
    const smart = this.persistent.smart;
    if (op === IoOp.READ) {
      const st = await this.readToGuest(spans, pos, bytes);
      if (st === Status.SUCCESS) {
        smart.readCommands++;
        smart.unitsRead += bytes / 512;
      }
      return st;
    }
    const st = await this.writeFromGuest(spans, pos, bytes);
    if (st !== Status.SUCCESS) return st;
    const fua = (cdw12 & (1 << 30)) !== 0;
    if (fua || this.features.vwc === 0) await this.image.sync();
    smart.writeCommands++;
    smart.unitsWritten += bytes / 512;
    return Status.SUCCESS;
  }

  /** Views of guest memory for `spans` (zero-copy), or null when some are not mmap()ed. */
  private views(spans: DmaSpan[], prot: number): Buffer[] | null | number {
    const dma = this.device.dma;
    const out: Buffer[] = [];
    for (const s of spans) {
      try {
        out.push(dma.view(s.iova, s.length, prot));
      } catch (e) {
        const errno = errnoOf(e);
        if (errno === Errno.EFAULT || errno === Errno.EAGAIN) return null;
        return Status.DATA_TRANSFER_ERROR; // not mapped, or without that access
      }
    }
    return out;
  }

  private async readToGuest(spans: DmaSpan[], pos: number, bytes: number): Promise<number> {
    const dma = this.device.dma;
    const views = this.views(spans, PROT_WRITE);
    if (typeof views === 'number') return views;
    if (views !== null) {
      await this.image.readFully(views, pos);
      // view() logged the pages when it was taken; log them again now that
      // the bytes are there, in case a dirty-page sync ran in between.
      for (const s of spans) dma.markDirty(s.iova, s.length);
      return Status.SUCCESS;
    }
    this.stats.bounced++;
    try {
      for (const s of spans) dma.translate(s.iova, s.length, PROT_WRITE);
    } catch {
      return Status.DATA_TRANSFER_ERROR;
    }
    const buf = Buffer.allocUnsafe(bytes);
    await this.image.readFully([buf], pos);
    try {
      let o = 0;
      for (const s of spans) {
        await dma.write(s.iova, buf.subarray(o, o + s.length));
        o += s.length;
      }
    } catch {
      return Status.DATA_TRANSFER_ERROR;
    }
    return Status.SUCCESS;
  }

  private async writeFromGuest(spans: DmaSpan[], pos: number, bytes: number): Promise<number> {
    const dma = this.device.dma;
    const views = this.views(spans, PROT_READ);
    if (typeof views === 'number') return views;
    if (views !== null) {
      await this.image.writeFully(views, pos);
      return Status.SUCCESS;
    }
    this.stats.bounced++;
    const buf = Buffer.allocUnsafe(bytes);
    try {
      for (const s of spans) dma.translate(s.iova, s.length, PROT_READ);
      let o = 0;
      for (const s of spans) {
        await dma.read(s.iova, buf.subarray(o, o + s.length));
        o += s.length;
      }
    } catch {
      return Status.DATA_TRANSFER_ERROR;
    }
    await this.image.writeFully([buf], pos);
    return Status.SUCCESS;
  }

  private async dsm(sqe: Buffer, cdw10: number, cdw11: number): Promise<number> {
    const nr = (cdw10 & 0xff) + 1;
    const data = await this.fromHost(sqe, nr * 16);
    if (typeof data === 'number') return data;
    const ranges: [number, number][] = [];
    for (let i = 0; i < nr; i++) {
      const nlb = data.readUInt32LE(i * 16 + 4);
      const hi = data.readUInt32LE(i * 16 + 12);
      const slba = data.readUInt32LE(i * 16 + 8) + hi * 2 ** 32;
      if (hi >= 0x200000 || slba + nlb > this.blocks) return Status.LBA_OUT_OF_RANGE;
      ranges.push([slba, nlb]);
    }
    if (!(cdw11 & (1 << 2))) return Status.SUCCESS; // attributes only: nothing to do
    const shift = this.cfg.lbaShift;
    for (const [slba, nlb] of ranges) if (nlb > 0) await this.image.zero(slba * 2 ** shift, nlb * 2 ** shift);
    return Status.SUCCESS;
  }
}

/** Thrown for a device configuration that cannot work. */
export function configError(message: string): VfuError {
  return new VfuError(Errno.EINVAL, `nvme: ${message}`);
}
