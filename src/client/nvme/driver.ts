// A userspace NVMe host driver on the vfio-user client library: it brings a
// controller up the way Linux's nvme driver does (disable, admin queues,
// enable, Identify, Number of Queues, I/O queue pairs with one MSI-X vector
// each), then submits commands and reaps completions on interrupts.  It
// works against any vfio-user NVMe target (ours, SPDK's), for tests, the
// bench and userspace storage tools.
//
// Its memory is guest memory of the client (a shared memfd range, DMA
// mapped): queues, PRP lists, shadow doorbells and a data area handed out
// with alloc().  CPU writes go through GuestMemory.write so that a live
// migration sees them dirty.  attach() moves the driver to another client
// (a migration destination) holding a copy of that memory.
import { loadShared32, memoryBarrier } from '../../util/fence.js';
import { native } from '../../native/index.js';
import { Errno, IrqIndex } from '../../protocol/constants.js';
import { VfuError } from '../../protocol/errors.js';
import type { VfioUserClient } from '../client.js';
import { AdminOp, Cc, Cns, CQE_SIZE, Csts, Feature, IoOp, NVME_PAGE, NvmeReg, SQE_SIZE, Status, encodeSqe } from '../../devices/nvme/constants.js';

/** A completion as the host sees it. */
/** A completion queue entry. */
export interface NvmeCompletion {
  /** Command id. */
  cid: number;
  /** Status field without the phase bit: (DNR << 14) | (SCT << 8) | SC. */
  status: number;
  /** Command-specific dword 0. */
  dw0: number;
  /** Submission queue head the controller reported. */
  sqHead: number;
}

/** A command that completed with an error status. */
export class NvmeStatusError extends Error {
  /** `what` completed with `status`. */
  constructor(
    /** The status field (see NvmeCompletion.status). */
    readonly status: number,
    what: string,
  ) {
    super(`${what}: NVMe status 0x${(status & 0x7ff).toString(16)} (SCT ${(status >> 8) & 7}, SC 0x${(status & 0xff).toString(16)})`);
  }
}

/** Options of the NvmeDriver. */
export interface NvmeDriverOptions {
  /** I/O queue pairs to create (default 2). */
  ioQueues?: number;
  /** Entries per I/O queue (default 64; at most what CAP.MQES allows). */
  queueEntries?: number;
  /**
   * How doorbells ring: 'posted' region writes (what QEMU does, default);
   * 'ioeventfd': the value goes to a shadow doorbell in memory and the
   * device's ioeventfd is signalled (needs a controller offering Doorbell
   * Buffer Config and ioeventfds); 'eventidx': shadow doorbells as Linux
   * uses them, each I/O queue value stored in the shadow buffer and the
   * doorbell written (posted) only when the value passes the EventIdx the
   * controller published; the admin queue keeps its registers (needs
   * Doorbell Buffer Config).
   */
  doorbells?: 'posted' | 'ioeventfd' | 'eventidx';
  /** Guest address of the driver's memory (default 1 GiB). */
  memoryIova?: number;
  /** Bytes of data area for alloc() (default 8 MiB). */
  dataBytes?: number;
  /**
   * Interrupt type: 'msix' (default, one vector per queue), or one shared
   * 'msi' vector or INTx line (every queue is reaped on it).
   */
  interrupts?: 'msix' | 'msi' | 'intx';
}

/** What Identify told us. */
/** What Identify told the driver. */
export interface NvmeInfo {
  /** Serial number. */
  serial: string;
  /** Model number. */
  model: string;
  /** Firmware revision. */
  firmware: string;
  /** PCI vendor id (VID). */
  vendorId: number;
  /** Maximum transfer in bytes (Infinity when MDTS is 0). */
  maxTransfer: number;
  /** Namespace 1: blocks and block size. */
  blocks: number;
  /** Logical block size in bytes. */
  blockSize: number;
  /** I/O queues granted by Set Features Number of Queues. */
  queuesGranted: number;
  /** The VS register. */
  version: number;
  /** The CAP register. */
  cap: bigint;
}

const ADMIN_ENTRIES = 32;

interface Pending {
  resolve: (c: NvmeCompletion) => void;
  reject: (e: Error) => void;
}

class HostQueue {
  sqTail = 0;
  cqHead = 0;
  phase = 1;
  sqHead = 0;
  readonly pending = new Map<number, Pending>();
  readonly free: number[] = [];
  /** Submissions waiting for a free slot. */
  readonly backlog: (() => void)[] = [];
  doorbellDue = false;
  constructor(
    readonly qid: number,
    readonly entries: number,
    readonly sqIova: number,
    readonly cqIova: number,
    readonly prpBase: number,
  ) {
    // At most entries - 1 commands: a full queue has tail + 1 == head.
    for (let i = entries - 2; i >= 0; i--) this.free.push(i);
  }
}

function pages(bytes: number): number {
  return Math.ceil(bytes / NVME_PAGE) * NVME_PAGE;
}

/** A small NVMe host driver over a VfioUserClient (tests, benchmarks, tools). */
export class NvmeDriver {
  /** The client connected to the controller. */
  client: VfioUserClient;
  /** Identify results, once started. */
  info!: NvmeInfo;
  /** The I/O queue pairs. @internal */
  readonly queues: HostQueue[] = [];
  /** The options in force. */
  readonly opts: Required<NvmeDriverOptions>;
  private readonly base: number;
  private readonly size: number;
  private dataNext: number;
  private readonly dataEnd: number;
  private readonly shadowIova: number;
  private readonly eventIdxIova: number;
  private doorbellFds: number[] = [];
  private paused = false;
  private readonly irqIndex: number;
  private readonly onIrq = (index: number, vector: number): void => {
    if (index !== this.irqIndex) return;
    this.interrupts[vector] = (this.interrupts[vector] ?? 0) + 1;
    if (index === IrqIndex.MSIX) this.reap(vector);
    else for (const q of this.queues) this.reap(q.qid);
  };
  /** Interrupts seen, per vector. */
  readonly interrupts: number[] = [];
  /** Statistics: doorbell writes issued. */
  doorbellWrites = 0;
  /** Statistics: doorbell values left in the shadow buffer without a register write (EventIdx mode). */
  shadowOnly = 0;
  /** Doorbell Buffer Config done (EventIdx mode). */
  private eventIdxOn = false;
  /** Commands submitted. */
  submitted = 0;
  /** Completions matched to a submitted command. */
  completed = 0;

  private constructor(client: VfioUserClient, opts: NvmeDriverOptions) {
    this.client = client;
    this.opts = {
      ioQueues: opts.ioQueues ?? 2,
      queueEntries: opts.queueEntries ?? 64,
      doorbells: opts.doorbells ?? 'posted',
      memoryIova: opts.memoryIova ?? 0x4000_0000,
      dataBytes: opts.dataBytes ?? 8 << 20,
      interrupts: opts.interrupts ?? 'msix',
    };
    this.irqIndex = { msix: IrqIndex.MSIX, msi: IrqIndex.MSI, intx: IrqIndex.INTX }[this.opts.interrupts];
    const q = this.opts.ioQueues;
    const e = this.opts.queueEntries;
    let at = this.opts.memoryIova;
    const take = (n: number): number => {
      const r = at;
      at += pages(n);
      return r;
    };
    this.base = at;
    this.queues.push(new HostQueue(0, ADMIN_ENTRIES, take(ADMIN_ENTRIES * SQE_SIZE), take(ADMIN_ENTRIES * CQE_SIZE), take(ADMIN_ENTRIES * NVME_PAGE)));
    for (let i = 1; i <= q; i++) this.queues.push(new HostQueue(i, e, take(e * SQE_SIZE), take(e * CQE_SIZE), take(e * NVME_PAGE)));
    this.shadowIova = take(NVME_PAGE);
    this.eventIdxIova = take(NVME_PAGE);
    this.dataNext = take(0);
    take(this.opts.dataBytes);
    this.dataEnd = at;
    this.size = at - this.base;
  }

  /**
   * Brings up the controller behind `client`: maps the driver's memory,
   * resets and enables the controller, identifies it, creates the I/O
   * queues with MSI-X interrupts.
   */
  static async open(client: VfioUserClient, opts: NvmeDriverOptions = {}): Promise<NvmeDriver> {
    const d = new NvmeDriver(client, opts);
    if (!client.memory.within(d.base, d.size)) client.memory.add(d.base, d.size);
    // Opened again on the same client (after a reset, say): the mapping stays.
    if (!client.dmaMappings.some((m) => m.iova === d.base && m.size === d.size)) await client.dmaMap({ iova: d.base, size: d.size });
    await d.init();
    return d;
  }

  // --------------------------------------------------------- registers

  /** Reads a 32-bit controller register. */
  async readReg32(off: number): Promise<number> {
    return (await this.client.regionRead(0, off, 4)).readUInt32LE(0);
  }
  /** Reads a 64-bit controller register. */
  async readReg64(off: number): Promise<bigint> {
    return (await this.client.regionRead(0, off, 8)).readBigUInt64LE(0);
  }
  /** Writes a 32-bit controller register. */
  async writeReg32(off: number, v: number): Promise<void> {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v >>> 0, 0);
    await this.client.regionWrite(0, off, b);
  }

  private async waitReady(ready: boolean, timeoutMs: number): Promise<void> {
    const t0 = Date.now();
    for (;;) {
      const csts = await this.readReg32(NvmeReg.CSTS);
      if (csts & Csts.CFS) throw new VfuError(Errno.EIO, 'nvme: controller fatal status (CSTS.CFS)');
      if (((csts & Csts.RDY) !== 0) === ready) return;
      if (Date.now() - t0 > timeoutMs) throw new VfuError(Errno.ETIMEDOUT, `nvme: CSTS.RDY did not become ${ready ? 1 : 0}`);
      await new Promise((r) => setImmediate(r));
    }
  }

  private async init(): Promise<void> {
    const cap = await this.readReg64(NvmeReg.CAP);
    const version = await this.readReg32(NvmeReg.VS);
    const timeoutMs = Math.max(1, Number((cap >> 24n) & 0xffn)) * 500;
    const mqes = Number(cap & 0xffffn) + 1;
    if (this.opts.queueEntries > mqes) throw new VfuError(Errno.EINVAL, `nvme: ${this.opts.queueEntries} entries per queue, the controller allows ${mqes}`);
    if (((cap >> 48n) & 0xfn) !== 0n) throw new VfuError(Errno.ENOTSUP, 'nvme: controller does not support 4 KiB pages');
    // Disable (as Linux does before programming the admin queues).
    const cc = await this.readReg32(NvmeReg.CC);
    if (cc & Cc.EN) await this.writeReg32(NvmeReg.CC, cc & ~Cc.EN);
    await this.waitReady(false, timeoutMs);
    this.eventIdxOn = false; // a disabled controller forgets its doorbell buffer
    for (const q of this.queues) this.resetQueue(q);
    const a = this.queues[0]!;
    await this.writeReg32(NvmeReg.AQA, ((ADMIN_ENTRIES - 1) << 16) | (ADMIN_ENTRIES - 1));
    await this.writeReg32(NvmeReg.ASQ, a.sqIova % 2 ** 32);
    await this.writeReg32(NvmeReg.ASQ + 4, Math.floor(a.sqIova / 2 ** 32));
    await this.writeReg32(NvmeReg.ACQ, a.cqIova % 2 ** 32);
    await this.writeReg32(NvmeReg.ACQ + 4, Math.floor(a.cqIova / 2 ** 32));
    await this.client.enableInterrupts(this.irqIndex, this.irqIndex === IrqIndex.MSIX ? this.queues.length : 1);
    this.client.on('interrupt', this.onIrq);
    await this.writeReg32(NvmeReg.CC, Cc.EN | (6 << Cc.IOSQES_SHIFT) | (4 << Cc.IOCQES_SHIFT));
    await this.waitReady(true, timeoutMs);

    const idc = await this.identify(Cns.CONTROLLER, 0);
    const mdts = idc[77]!;
    const idns = await this.identify(Cns.NAMESPACE, 1);
    const flbas = idns[26]! & 0xf;
    const lbads = idns[128 + flbas * 4 + 2]!;
    const str = (at: number, n: number): string => idc.toString('latin1', at, at + n).trimEnd();
    const granted = await this.setFeatures(Feature.NUM_QUEUES, ((this.opts.ioQueues - 1) << 16) | (this.opts.ioQueues - 1));
    const nq = Math.min((granted & 0xffff) + 1, (granted >>> 16) + 1);
    if (nq < this.opts.ioQueues) throw new VfuError(Errno.ENOSPC, `nvme: ${this.opts.ioQueues} I/O queues asked for, ${nq} granted`);
    this.info = {
      serial: str(4, 20),
      model: str(24, 40),
      firmware: str(64, 8),
      vendorId: idc.readUInt16LE(0),
      maxTransfer: mdts === 0 ? Infinity : NVME_PAGE * 2 ** mdts,
      blocks: Number(idns.readBigUInt64LE(0)),
      blockSize: 2 ** lbads,
      queuesGranted: nq,
      version,
      cap,
    };
    for (const q of this.queues.slice(1)) {
      const iv = this.irqIndex === IrqIndex.MSIX ? q.qid : 0;
      await this.admin(AdminOp.CREATE_CQ, { prp1: q.cqIova, cdw10: ((q.entries - 1) << 16) | q.qid, cdw11: (iv << 16) | 0b11 });
      await this.admin(AdminOp.CREATE_SQ, { prp1: q.sqIova, cdw10: ((q.entries - 1) << 16) | q.qid, cdw11: (q.qid << 16) | 1 });
    }
    if (this.opts.doorbells === 'ioeventfd') await this.setupShadowDoorbells();
    if (this.opts.doorbells === 'eventidx') await this.configureDoorbellBuffer();
  }

  private resetQueue(q: HostQueue): void {
    q.sqTail = q.cqHead = q.sqHead = 0;
    q.phase = 1;
    for (const p of q.pending.values()) p.reject(new VfuError(Errno.EINTR, 'nvme: controller reset'));
    q.pending.clear();
    q.free.length = 0;
    for (let i = q.entries - 2; i >= 0; i--) q.free.push(i);
    this.client.memory.write(q.cqIova, Buffer.alloc(q.entries * CQE_SIZE));
  }

  private async setupShadowDoorbells(): Promise<void> {
    const n = native;
    if (n === null) throw new VfuError(Errno.ENOTSUP, 'nvme: ioeventfd doorbells need the native addon');
    await this.configureDoorbellBuffer();
    await this.fetchDoorbellFds();
  }

  /** Doorbell Buffer Config over zeroed shadow and EventIdx pages. */
  private async configureDoorbellBuffer(): Promise<void> {
    this.client.memory.write(this.shadowIova, Buffer.alloc(NVME_PAGE));
    this.client.memory.write(this.eventIdxIova, Buffer.alloc(NVME_PAGE));
    await this.admin(AdminOp.DOORBELL_BUFFER_CONFIG, { prp1: this.shadowIova, prp2: this.eventIdxIova });
    this.eventIdxOn = true;
  }

  private async fetchDoorbellFds(): Promise<void> {
    for (const fd of this.doorbellFds) native?.close(fd);
    this.doorbellFds = [];
    const { subRegions, fds } = await this.client.regionIoFds(0);
    const byIndex: number[] = [];
    for (const s of subRegions) {
      const idx = (Number(s.offset) - NvmeReg.DOORBELLS) / 4;
      if (Number.isInteger(idx) && idx >= 0) byIndex[idx] = native!.dup(fds[s.fdIndex]!);
    }
    for (const fd of fds) native?.close(fd);
    if (byIndex.length < this.queues.length * 2 || byIndex.some((x) => x === undefined)) {
      for (const fd of byIndex) if (fd !== undefined) native?.close(fd);
      throw new VfuError(Errno.ENOTSUP, 'nvme: the controller offers no ioeventfd for some doorbells');
    }
    this.doorbellFds = byIndex;
  }

  // ------------------------------------------------------------ memory

  /** A page-aligned piece of the data area: its guest address. */
  alloc(bytes: number): number {
    const at = this.dataNext;
    if (at + pages(bytes) > this.dataEnd) throw new VfuError(Errno.ENOMEM, 'nvme: driver data area exhausted (see dataBytes)');
    this.dataNext += pages(bytes);
    return at;
  }

  /** Guest memory as the driver sees it now (a view of the current client's). */
  view(iova: number, length: number): Buffer {
    return this.client.memory.view(iova, length);
  }

  /** A CPU write to guest memory (logged dirty for migration). */
  store(iova: number, data: Buffer): void {
    this.client.memory.write(iova, data);
  }

  // ---------------------------------------------------------- commands

  /**
   * Submits a 64-byte command on queue `qid` (its CID is filled in) and
   * resolves with its completion, whatever the status.
   */
  submit(qid: number, sqe: Buffer): Promise<NvmeCompletion> {
    const q = this.queues[qid];
    if (q === undefined) return Promise.reject(new VfuError(Errno.EINVAL, `nvme: no queue ${qid}`));
    return new Promise<NvmeCompletion>((resolve, reject) => {
      const go = (): void => {
        const cid = q.free.pop()!;
        q.pending.set(cid, { resolve, reject });
        this.submitted++;
        const cmd = Buffer.from(sqe);
        cmd.writeUInt16LE(cid, 2);
        this.store(q.sqIova + q.sqTail * SQE_SIZE, cmd);
        q.sqTail = (q.sqTail + 1) % q.entries;
        this.ringSq(q);
      };
      if (q.free.length > 0 && !this.paused) go();
      else q.backlog.push(go);
    });
  }

  /** PRP list page reserved for command slot `cid` of queue `qid`. */
  prpListFor(qid: number, cid: number): number {
    return this.queues[qid]!.prpBase + cid * NVME_PAGE;
  }

  /**
   * Fills PRP1/PRP2 of `sqe` for [iova, iova+length): a second page
   * directly, more through a PRP list in `listIova`.
   */
  setPrps(sqe: Buffer, iova: number, length: number, listIova: number): void {
    sqe.writeBigUInt64LE(BigInt(iova), 24);
    const first = NVME_PAGE - (iova % NVME_PAGE);
    if (length <= first) return;
    const rest = length - first;
    const next = iova + first;
    if (rest <= NVME_PAGE) {
      sqe.writeBigUInt64LE(BigInt(next), 32);
      return;
    }
    const n = Math.ceil(rest / NVME_PAGE);
    if (n > NVME_PAGE / 8) throw new VfuError(Errno.EINVAL, 'nvme: transfer needs more than one PRP list page');
    const list = Buffer.alloc(n * 8);
    for (let i = 0; i < n; i++) list.writeBigUInt64LE(BigInt(next + i * NVME_PAGE), i * 8);
    this.store(listIova, list);
    sqe.writeBigUInt64LE(BigInt(listIova), 32);
  }

  private ringSq(q: HostQueue): void {
    // Commands queued in one turn of the event loop share one doorbell.
    if (q.doorbellDue) return;
    q.doorbellDue = true;
    queueMicrotask(() => {
      q.doorbellDue = false;
      if (!this.paused) this.doorbell(q.qid * 2, q.sqTail);
    });
  }

  private doorbell(index: number, value: number): void {
    if (this.eventIdxOn && this.opts.doorbells === 'eventidx' && index >= 2 && !this.needEvent(index, value)) {
      this.shadowOnly++;
      return;
    }
    this.doorbellWrites++;
    if (this.opts.doorbells === 'ioeventfd' && this.doorbellFds.length > 0) {
      const b = Buffer.alloc(4);
      b.writeUInt32LE(value, 0);
      this.store(this.shadowIova + index * 4, b);
      native!.eventfdWrite(this.doorbellFds[index]!, 1);
      return;
    }
    const b = Buffer.alloc(4);
    b.writeUInt32LE(value, 0);
    this.client.regionWrite(0, NvmeReg.DOORBELLS + index * 4, b, { posted: true }).catch((e: unknown) => this.client.emit('error', e as Error));
  }

  /**
   * EventIdx mode: stores `value` in the shadow doorbell, then says whether
   * the controller asked to be told (its EventIdx lies in [old, value), in
   * 16-bit arithmetic), as Linux's nvme_dbbuf_need_event does.
   */
  private needEvent(index: number, value: number): boolean {
    const shadow = this.view(this.shadowIova + index * 4, 4);
    const old = shadow.readUInt32LE(0);
    shadow.writeUInt32LE(value, 0);
    memoryBarrier(); // the controller's EventIdx is read after our store lands
    const ei = loadShared32(this.view(this.eventIdxIova + index * 4, 4), 0);
    return ((value - ei - 1) & 0xffff) < ((value - old) & 0xffff);
  }

  /** Consumes the completions of queue `qid` and rings its head doorbell. */
  reap(qid: number): number {
    const q = this.queues[qid];
    if (q === undefined || this.paused) return 0;
    let n = 0;
    const cq = this.view(q.cqIova, q.entries * CQE_SIZE);
    for (;;) {
      const at = q.cqHead * CQE_SIZE;
      // Command id, phase tag and status share dword 3: one load takes them
      // together; the rest of the entry is read after it.
      const dw3 = loadShared32(cq, at + 12);
      if (((dw3 >>> 16) & 1) !== q.phase) break;
      const c: NvmeCompletion = { cid: dw3 & 0xffff, status: (dw3 >>> 17) & 0x7fff, dw0: cq.readUInt32LE(at), sqHead: cq.readUInt16LE(at + 8) };
      q.cqHead = (q.cqHead + 1) % q.entries;
      if (q.cqHead === 0) q.phase ^= 1;
      n++;
      const sq = this.queues[cq.readUInt16LE(at + 10)] ?? q;
      sq.sqHead = c.sqHead;
      const p = sq.pending.get(c.cid);
      if (p === undefined) {
        this.client.emit('error', new VfuError(Errno.EPROTO, `nvme: completion for unknown command ${c.cid} on queue ${sq.qid}`));
        continue;
      }
      sq.pending.delete(c.cid);
      sq.free.push(c.cid);
      this.completed++;
      p.resolve(c);
    }
    if (n > 0) this.doorbell(qid * 2 + 1, q.cqHead);
    for (const q2 of this.queues) while (q2.free.length > 0 && q2.backlog.length > 0 && !this.paused) q2.backlog.shift()!();
    return n;
  }

  /** Submits and throws NvmeStatusError on an error status. */
  private async checked(qid: number, sqe: Buffer, what: string): Promise<NvmeCompletion> {
    const c = await this.submit(qid, sqe);
    if ((c.status & 0x7ff) !== Status.SUCCESS) throw new NvmeStatusError(c.status, what);
    return c;
  }

  /** An admin command with the given fields; resolves with dword 0. */
  async admin(opcode: number, f: { nsid?: number; prp1?: number; prp2?: number; cdw10?: number; cdw11?: number; cdw12?: number; cdw13?: number } = {}): Promise<number> {
    const sqe = encodeSqe(opcode, f);
    return (await this.checked(0, sqe, `admin opcode 0x${opcode.toString(16)}`)).dw0;
  }

  /** An admin command returning data (Identify, Get Log Page): up to one page. */
  private scratch: number | null = null;
  private scratchBusy: Promise<void> = Promise.resolve();
  /** An admin command that returns `bytes` of data. */
  async adminData(opcode: number, bytes: number, f: { nsid?: number; cdw10?: number; cdw11?: number; cdw12?: number; cdw13?: number }): Promise<Buffer> {
    if (bytes > 2 * NVME_PAGE) throw new VfuError(Errno.EINVAL, 'nvme: admin data larger than two pages');
    this.scratch ??= this.alloc(2 * NVME_PAGE);
    const at = this.scratch;
    const prev = this.scratchBusy;
    let release!: () => void;
    this.scratchBusy = new Promise((r) => (release = r));
    await prev;
    try {
      await this.admin(opcode, { ...f, prp1: at, prp2: at + NVME_PAGE });
      return Buffer.from(this.view(at, bytes));
    } finally {
      release();
    }
  }

  /** Identify (CNS `cns`). */
  identify(cns: number, nsid: number): Promise<Buffer> {
    return this.adminData(AdminOp.IDENTIFY, 4096, { nsid, cdw10: cns });
  }

  /** Set Features; returns dword 0. */
  setFeatures(fid: number, cdw11: number): Promise<number> {
    return this.admin(AdminOp.SET_FEATURES, { cdw10: fid, cdw11 });
  }

  /** Get Features; returns dword 0. */
  getFeatures(fid: number, cdw11 = 0, sel = 0): Promise<number> {
    return this.admin(AdminOp.GET_FEATURES, { cdw10: fid | (sel << 8), cdw11 });
  }

  /** Get Log Page: `bytes` (a multiple of 4) of log `lid`. */
  getLogPage(lid: number, bytes: number, opts: { nsid?: number; offset?: number; rae?: boolean } = {}): Promise<Buffer> {
    const numd = bytes / 4 - 1;
    const off = opts.offset ?? 0;
    return this.adminData(AdminOp.GET_LOG_PAGE, bytes, {
      nsid: opts.nsid ?? 0xffffffff,
      cdw10: lid | (opts.rae ? 1 << 15 : 0) | ((numd & 0xffff) << 16),
      cdw11: numd >>> 16,
      cdw12: off % 2 ** 32,
      cdw13: Math.floor(off / 2 ** 32),
    });
  }

  /** An Asynchronous Event Request: resolves when the controller reports an event. */
  asyncEvent(): Promise<NvmeCompletion> {
    const sqe = Buffer.alloc(SQE_SIZE);
    sqe[0] = AdminOp.ASYNC_EVENT;
    return this.submit(0, sqe);
  }

  /** An NVM command for [lba, lba+blocks) with data at `iova`. */
  rw(qid: number, opcode: number, lba: number, blocks: number, iova: number, opts: { fua?: boolean } = {}): Promise<NvmeCompletion> {
    const q = this.queues[qid];
    if (q === undefined || qid === 0) return Promise.reject(new VfuError(Errno.EINVAL, `nvme: no I/O queue ${qid}`));
    const sqe = Buffer.alloc(SQE_SIZE);
    sqe[0] = opcode;
    sqe.writeUInt32LE(1, 4);
    sqe.writeBigUInt64LE(BigInt(lba), 40);
    sqe.writeUInt32LE(((blocks - 1) & 0xffff) | (opts.fua ? 1 << 30 : 0), 48);
    // The PRP list lives in the slot's page: fill it once the CID is known.
    return new Promise<NvmeCompletion>((resolve, reject) => {
      const go = (): void => {
        const cid = q.free[q.free.length - 1]!;
        this.setPrps(sqe, iova, blocks * this.info.blockSize, this.prpListFor(qid, cid));
        this.submit(qid, sqe).then(resolve, reject);
      };
      if (q.free.length > 0 && !this.paused) go();
      else q.backlog.push(go);
    });
  }

  /** Reads `blocks` blocks at `lba` into guest memory at `iova`, on I/O queue `qid`. */
  async read(qid: number, lba: number, blocks: number, iova: number): Promise<void> {
    const c = await this.rw(qid, IoOp.READ, lba, blocks, iova);
    if ((c.status & 0x7ff) !== Status.SUCCESS) throw new NvmeStatusError(c.status, `read of ${blocks} blocks at ${lba}`);
  }

  /** Writes `blocks` blocks at `lba` from guest memory at `iova` (FUA optional). */
  async write(qid: number, lba: number, blocks: number, iova: number, opts: { fua?: boolean } = {}): Promise<void> {
    const c = await this.rw(qid, IoOp.WRITE, lba, blocks, iova, opts);
    if ((c.status & 0x7ff) !== Status.SUCCESS) throw new NvmeStatusError(c.status, `write of ${blocks} blocks at ${lba}`);
  }

  /** Flush. */
  async flush(qid: number): Promise<void> {
    const sqe = Buffer.alloc(SQE_SIZE);
    sqe[0] = IoOp.FLUSH;
    sqe.writeUInt32LE(1, 4);
    await this.checked(qid, sqe, 'flush');
  }

  /** Write Zeroes (optionally deallocating). */
  async writeZeroes(qid: number, lba: number, blocks: number, opts: { deallocate?: boolean } = {}): Promise<void> {
    const sqe = Buffer.alloc(SQE_SIZE);
    sqe[0] = IoOp.WRITE_ZEROES;
    sqe.writeUInt32LE(1, 4);
    sqe.writeBigUInt64LE(BigInt(lba), 40);
    sqe.writeUInt32LE(((blocks - 1) & 0xffff) | (opts.deallocate ? 1 << 25 : 0), 48);
    await this.checked(qid, sqe, 'write zeroes');
  }

  /** Dataset Management, deallocate: ranges of [lba, blocks]. */
  async deallocate(qid: number, ranges: [number, number][]): Promise<void> {
    if (ranges.length < 1 || ranges.length > 256) throw new VfuError(Errno.EINVAL, 'nvme: 1 to 256 ranges');
    const buf = Buffer.alloc(ranges.length * 16);
    ranges.forEach(([lba, n], i) => {
      buf.writeUInt32LE(n, i * 16 + 4);
      buf.writeBigUInt64LE(BigInt(lba), i * 16 + 8);
    });
    this.scratchDsm ??= this.alloc(NVME_PAGE);
    this.store(this.scratchDsm, buf);
    const sqe = Buffer.alloc(SQE_SIZE);
    sqe[0] = IoOp.DSM;
    sqe.writeUInt32LE(1, 4);
    sqe.writeBigUInt64LE(BigInt(this.scratchDsm), 24);
    sqe.writeUInt32LE(ranges.length - 1, 40);
    sqe.writeUInt32LE(1 << 2, 44);
    await this.checked(qid, sqe, 'deallocate');
  }
  private scratchDsm: number | null = null;

  /** Commands submitted and not completed, per queue. */
  get outstanding(): number[] {
    return this.queues.map((q) => q.pending.size);
  }

  // --------------------------------------------------------- migration

  /** Stops submitting and reaping (the guest's CPUs are paused). */
  pause(): void {
    this.paused = true;
  }

  /**
   * Resumes, optionally on another client (a migration destination that
   * has a copy of this memory and its own interrupts): completions posted
   * while paused are reaped and the submissions queued meanwhile go out.
   */
  async resume(on?: VfioUserClient): Promise<void> {
    if (on !== undefined && on !== this.client) {
      this.client.off('interrupt', this.onIrq);
      this.client = on;
      on.on('interrupt', this.onIrq);
      if (this.opts.doorbells === 'ioeventfd') await this.fetchDoorbellFds();
    }
    this.paused = false;
    for (const q of this.queues) this.reap(q.qid);
    for (const q of this.queues) while (q.free.length > 0 && q.backlog.length > 0) q.backlog.shift()!();
  }

  /** Releases interrupt listeners and doorbell descriptors (the controller is left as is). */
  close(): void {
    this.client.off('interrupt', this.onIrq);
    for (const fd of this.doorbellFds) native?.close(fd);
    this.doorbellFds = [];
    for (const q of this.queues) for (const p of q.pending.values()) p.reject(new VfuError(Errno.EINTR, 'nvme: driver closed'));
  }
}
