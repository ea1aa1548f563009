// Interrupts: per-index vector counts, the client's eventfds (SET_IRQS), mask
// state with pending delivery on unmask, and trigger() for device code.
import { EPOLL_ADD, EPOLL_DEL, POLL_READABLE, POLL_WRITABLE, type PollHandle, native } from '../native/index.js';
import { Errno, IrqIndex, IrqInfoFlag, IrqSetFlag, PCI_NUM_IRQS, irqIndexNames } from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';

/** Called on MASK/UNMASK of vectors [start, start+count) of an interrupt index. */
export type IrqStateCallback = (index: number, start: number, count: number, masked: boolean) => void;

interface Vector {
  fd: number;
  masked: boolean;
  pending: boolean;
  /** Raised while the eventfd's counter had no room: written once it has. */
  stalled: boolean;
  /** Retries in a row the client won by refilling the counter first. */
  raced: number;
  /** The back-off before watching again after such a race. */
  retry: NodeJS.Timeout | null;
}

/**
 * A retry that finds the counter full again was raced by the client (it
 * refilled the counter between epoll's report and our write), and each such
 * write costs the loop up to the addon's 10 ms guard.  So the next watch
 * waits 10 ms, doubling with each race in a row up to 1 s: a client racing
 * on purpose holds the loop at most 1% of the time.
 */
function raceBackoffMs(raced: number): number {
  return Math.min(1000, 10 * 2 ** Math.min(raced - 1, 7));
}

/**
 * The vectors whose eventfd could not take a signal: a private epoll set
 * watching their fds for writability, itself watched on the loop.
 */
interface StallSet {
  epfd: number;
  poll: PollHandle;
  byFd: Map<number, { index: number; v: Vector }>;
  ready: Int32Array;
}

export interface SetIrqsRequest {
  flags: number;
  index: number;
  start: number;
  count: number;
  /** DATA_BOOL bytes (only `count` of them are used). */
  bools?: Buffer;
  fds: number[];
}

export class IrqController {
  private readonly vectors: Vector[][] = [];
  private readonly stateCallbacks: (IrqStateCallback | undefined)[] = [];
  /** Called when an eventfd is attached (the device turns it into its 'irqAttached' event). */
  onEventfdAttached: ((index: number, vector: number) => void) | null = null;
  /** Interrupts delivered, per index (statistics). */
  readonly delivered = new Array<number>(PCI_NUM_IRQS).fill(0);
  private stalls: StallSet | null = null;

  constructor() {
    for (let i = 0; i < PCI_NUM_IRQS; i++) this.vectors.push([]);
    // ERR and REQ always have one vector, as with libvfio-user.
    this.setCount(IrqIndex.ERR, 1);
    this.setCount(IrqIndex.REQ, 1);
  }

  setCount(index: number, count: number): void {
    if (index < 0 || index >= PCI_NUM_IRQS) throw new VfuError(Errno.EINVAL, `bad IRQ index ${index}`);
    if (index === IrqIndex.INTX && count > 1) throw new VfuError(Errno.EINVAL, 'INTx has at most one vector');
    if (index === IrqIndex.MSI && count > 32) throw new VfuError(Errno.EINVAL, 'MSI has at most 32 vectors');
    if (index === IrqIndex.MSIX && count > 2048) throw new VfuError(Errno.EINVAL, 'MSI-X has at most 2048 vectors');
    if ((index === IrqIndex.ERR || index === IrqIndex.REQ) && count > 1) throw new VfuError(Errno.EINVAL, 'ERR/REQ have one vector');
    this.closeRange(index, 0, this.vectors[index]!.length);
    this.vectors[index] = Array.from({ length: count }, () => ({ fd: -1, masked: false, pending: false, stalled: false, raced: 0, retry: null }));
  }

  count(index: number): number {
    return this.vectors[index]?.length ?? 0;
  }

  onStateChange(index: number, cb: IrqStateCallback): void {
    this.stateCallbacks[index] = cb;
  }

  /** VFIO_IRQ_INFO flags for an index. */
  infoFlags(index: number): number {
    // Unlike libvfio-user (its #806) we do honour MASK/UNMASK, so we say so.
    const maskable = index === IrqIndex.INTX || index === IrqIndex.MSI || index === IrqIndex.MSIX;
    return IrqInfoFlag.EVENTFD | (maskable ? IrqInfoFlag.MASKABLE : 0);
  }

  /**
   * Applies DEVICE_SET_IRQS.  Validation follows libvfio-user (EINVAL for
   * every malformed combination) plus QEMU's way of disabling a vector:
   * DATA_EVENTFD|TRIGGER with a count and no descriptors.  Takes ownership
   * of `fds` on success only.
   */
  set(req: SetIrqsRequest): void {
    const { flags, index, start, count, fds } = req;
    const action = flags & IrqSetFlag.ACTION_TYPE_MASK;
    const data = flags & IrqSetFlag.DATA_TYPE_MASK;
    const bad = (why: string): VfuError => new VfuError(Errno.EINVAL, `SET_IRQS ${why}`);
    if (flags & ~(IrqSetFlag.ACTION_TYPE_MASK | IrqSetFlag.DATA_TYPE_MASK)) throw bad('unknown flags');
    if (index >= PCI_NUM_IRQS) throw bad(`index ${index}`);
    if (action !== IrqSetFlag.ACTION_MASK && action !== IrqSetFlag.ACTION_UNMASK && action !== IrqSetFlag.ACTION_TRIGGER) {
      throw bad('needs exactly one action');
    }
    if (data !== IrqSetFlag.DATA_NONE && data !== IrqSetFlag.DATA_BOOL && data !== IrqSetFlag.DATA_EVENTFD) {
      throw bad('needs exactly one data type');
    }
    const n = this.count(index);
    if (start >= n && !(count === 0 && start === 0 && n === 0)) throw bad(`start ${start} beyond ${n} vectors`);
    if (start + count > n) throw bad(`range ${start}+${count} beyond ${n} vectors`);
    if ((index === IrqIndex.ERR || index === IrqIndex.REQ) && action !== IrqSetFlag.ACTION_TRIGGER) {
      throw bad(`${irqIndexNames[index]} only supports TRIGGER`);
    }
    if (count === 0 && (action !== IrqSetFlag.ACTION_TRIGGER || data !== IrqSetFlag.DATA_NONE)) {
      throw bad('count 0 is only valid with TRIGGER|DATA_NONE');
    }
    if (count === 0 && start !== 0) throw bad('count 0 needs start 0');
    if (fds.length !== 0 && data !== IrqSetFlag.DATA_EVENTFD) throw bad('descriptors without DATA_EVENTFD');
    if (fds.length !== 0 && fds.length !== count) throw bad(`${fds.length} descriptors for ${count} vectors`);
    // Anything else (a pipe, a socket, a file) could block or misbehave when
    // written; the caller closes the refused descriptors.
    for (const fd of fds) if (native!.isEventfd(fd) !== 1) throw bad(`descriptor ${fd} is not an eventfd`);
    if (data === IrqSetFlag.DATA_BOOL && (req.bools?.length ?? 0) < count) throw bad('short DATA_BOOL array');

    if (action === IrqSetFlag.ACTION_MASK || action === IrqSetFlag.ACTION_UNMASK) {
      const masked = action === IrqSetFlag.ACTION_MASK;
      if (data === IrqSetFlag.DATA_EVENTFD) {
        // Mask/unmask notification eventfds: we do not signal them (no
        // guest-initiated mask here); accept and release the descriptors.
        for (const fd of fds) native?.close(fd);
        return;
      }
      for (let i = 0; i < count; i++) {
        if (data === IrqSetFlag.DATA_BOOL && req.bools![i] === 0) continue;
        this.setMasked(index, start + i, masked);
      }
      this.stateCallbacks[index]?.(index, start, count, masked);
      return;
    }

    // TRIGGER
    if (data === IrqSetFlag.DATA_NONE && count === 0) {
      this.closeRange(index, 0, n);
      return;
    }
    if (data === IrqSetFlag.DATA_EVENTFD) {
      if (fds.length === 0) {
        this.closeRange(index, start, count);
        return;
      }
      for (let i = 0; i < count; i++) {
        const v = this.vectors[index]![start + i]!;
        this.release(v);
        // Not made non-blocking: O_NONBLOCK belongs to the open file, which
        // the client shares, and would break its blocking reads.
        // eventfdWrite cannot block anyway (see the addon).
        v.fd = fds[i]!;
      }
      for (let i = 0; i < count; i++) this.onEventfdAttached?.(index, start + i);
      return;
    }
    // DATA_NONE / DATA_BOOL: the client triggers the interrupt itself.
    for (let i = 0; i < count; i++) {
      if (data === IrqSetFlag.DATA_BOOL && req.bools![i] !== 1) continue;
      this.trigger(index, start + i);
    }
  }

  private setMasked(index: number, vector: number, masked: boolean): void {
    const v = this.vectors[index]![vector]!;
    v.masked = masked;
    if (!masked && v.pending) {
      v.pending = false;
      this.signal(index, v);
    }
  }

  isMasked(index: number, vector: number): boolean {
    return this.vectors[index]?.[vector]?.masked ?? false;
  }

  isPending(index: number, vector: number): boolean {
    return this.vectors[index]?.[vector]?.pending ?? false;
  }

  /** Whether an interrupt waits for room in the vector's eventfd counter. */
  isStalled(index: number, vector: number): boolean {
    return this.vectors[index]?.[vector]?.stalled ?? false;
  }

  hasEventfd(index: number, vector: number): boolean {
    return (this.vectors[index]?.[vector]?.fd ?? -1) >= 0;
  }

  /**
   * Raises an interrupt.  Returns true when signalled now, or taken by an
   * eventfd whose counter is full (the client has not read it): then it is
   * written as soon as the client drains the counter, without ever blocking
   * the loop.  False when it was left pending (vector masked) or had nowhere
   * to go (no eventfd yet).  Throws EINVAL for a vector the device does not
   * have.
   */
  trigger(index: number, vector = 0): boolean {
    const v = this.vectors[index]?.[vector];
    if (v === undefined) throw new VfuError(Errno.EINVAL, `no ${irqIndexNames[index] ?? index} vector ${vector}`);
    if (v.masked) {
      v.pending = true;
      return false;
    }
    return this.signal(index, v);
  }

  private signal(index: number, v: Vector): boolean {
    if (v.fd < 0) return false;
    if (v.stalled) return true; // one is already waiting: eventfds add up anyway
    return this.write(index, v);
  }

  /** Writes the signal, or leaves it waiting for room (false: dropped). */
  private write(index: number, v: Vector): boolean {
    const r = native!.eventfdWrite(v.fd, 1);
    if (r === 0) {
      v.raced = 0;
      v.stalled = false;
      this.delivered[index]!++;
      return true;
    }
    if (r !== -Errno.EAGAIN) {
      v.stalled = false;
      return false;
    }
    v.stalled = true;
    if (v.raced === 0) return this.watch(index, v);
    v.retry = setTimeout(() => {
      v.retry = null;
      this.watch(index, v);
    }, raceBackoffMs(v.raced));
    v.retry.unref();
    return true;
  }

  /** Waits for room in `v`'s counter (false: cannot watch it, dropped). */
  private watch(index: number, v: Vector): boolean {
    const n = native!;
    if (this.stalls === null) {
      const epfd = n.epollCreate();
      if (epfd >= 0) {
        const poll = n.pollStart(epfd, POLL_READABLE, () => this.onRoom());
        n.pollRef(poll, false); // the session, not a waiting interrupt, keeps the process up
        this.stalls = { epfd, poll, byFd: new Map(), ready: new Int32Array(64) };
      }
    }
    if (this.stalls === null || n.epollCtl(this.stalls.epfd, EPOLL_ADD, v.fd, POLL_WRITABLE) < 0) {
      v.stalled = false;
      this.closeStallsIfIdle();
      return false;
    }
    this.stalls.byFd.set(v.fd, { index, v });
    return true;
  }

  private unwatch(v: Vector): void {
    const s = this.stalls;
    if (s === null || s.byFd.get(v.fd)?.v !== v) return;
    native!.epollCtl(s.epfd, EPOLL_DEL, v.fd);
    s.byFd.delete(v.fd);
  }

  /** Some stalled eventfd has room: write what waits there. */
  private onRoom(): void {
    const s = this.stalls;
    if (s === null) return;
    const k = native!.epollWait(s.epfd, s.ready);
    for (let i = 0; i < k; i++) {
      const e = s.byFd.get(s.ready[i]!);
      if (e === undefined) continue;
      this.unwatch(e.v);
      e.v.raced++; // reset by the write if it goes through
      this.write(e.index, e.v);
    }
    this.closeStallsIfIdle();
  }

  private closeStallsIfIdle(): void {
    const s = this.stalls;
    if (s === null || s.byFd.size > 0) return;
    native!.pollClose(s.poll);
    native!.close(s.epfd);
    this.stalls = null;
  }

  /** Closes a vector's eventfd, dropping an interrupt still waiting on it. */
  private release(v: Vector): void {
    if (v.fd < 0) return;
    if (v.retry !== null) clearTimeout(v.retry);
    v.retry = null;
    this.unwatch(v);
    v.stalled = false;
    v.raced = 0;
    this.closeStallsIfIdle();
    native?.close(v.fd);
    v.fd = -1;
  }

  private closeRange(index: number, start: number, count: number): void {
    const vs = this.vectors[index]!;
    for (let i = start; i < Math.min(vs.length, start + count); i++) this.release(vs[i]!);
  }

  /** Drops every eventfd (client gone) and clears mask state. */
  reset(): void {
    for (let index = 0; index < PCI_NUM_IRQS; index++) {
      this.closeRange(index, 0, this.vectors[index]!.length);
      for (const v of this.vectors[index]!) {
        v.masked = false;
        v.pending = false;
      }
    }
  }

  /** Descriptors held (for leak checks), the epoll set's included. */
  get fdCount(): number {
    let n = this.stalls === null ? 0 : 1;
    for (const vs of this.vectors) for (const v of vs) if (v.fd >= 0) n++;
    return n;
  }
}
