// Endpoint over a non-blocking AF_UNIX socket driven by the native addon:
// uv_poll for readiness, recvmsg straight into the framer's buffer, sendmsg
// gathering header and payload with their descriptors.
import { POLL_READABLE, POLL_WRITABLE, RECV_FLAG_CTRUNC, RECV_STATE_LEN, requireNative, type NativeAddon, type PollHandle } from '../native/index.js';
import { Errno } from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';
import type { Endpoint } from './endpoint.js';
import { type Frame, Framer } from './framer.js';

const EAGAIN = -Errno.EAGAIN;
/** Shared recvmsg result array ([nfds, flags, fds...]); single-threaded use. */
const recvState = new Int32Array(RECV_STATE_LEN);
/** Reads per readiness callback before yielding to the loop. */
const READ_BUDGET = 64;

interface Pending {
  data: Buffer;
  fds: readonly number[] | null;
  /** The pooled buffer `data` lies in, returned to the pool once sent. */
  spill: Buffer | null;
}

// Copies of large sends the socket could not take at once go into reused
// buffers: streaming 1 MiB messages, fresh allocations cost more (page faults
// on new memory) than the copy itself.  Bounded, shared by all endpoints.
const SPILL_MIN = 64 * 1024;
const SPILL_POOL_BYTES = 8 * 1024 * 1024;
const spillPool: Buffer[] = [];
let spillPooled = 0;

function takeSpill(n: number): Buffer {
  let best = -1;
  for (let i = 0; i < spillPool.length; i++) {
    const len = spillPool[i]!.length;
    if (len >= n && (best < 0 || len < spillPool[best]!.length)) best = i;
  }
  if (best < 0) return Buffer.allocUnsafeSlow(Math.ceil(n / SPILL_MIN) * SPILL_MIN);
  const b = spillPool[best]!;
  spillPool[best] = spillPool[spillPool.length - 1]!;
  spillPool.pop();
  spillPooled -= b.length;
  return b;
}

function giveSpill(b: Buffer): void {
  if (spillPooled + b.length > SPILL_POOL_BYTES) return;
  spillPool.push(b);
  spillPooled += b.length;
}

export class NativeEndpoint implements Endpoint {
  readonly canPassFds = true;
  onFrame: (f: Frame) => void = () => {};
  onClose: (err: Error | null) => void = () => {};
  private readonly n: NativeAddon;
  private readonly framer: Framer;
  private readonly poll: PollHandle;
  private queue: Pending[] = [];
  private drainWaiters: (() => void)[] = [];
  private _closed = false;
  private writing = false;
  private queued = 0;
  private sendLimit = Infinity;
  /** Not reading: too much of ours waits to be written. */
  private paused = false;

  constructor(
    readonly fd: number,
    opts: { maxMessageSize: number; maxFds: number },
  ) {
    this.n = requireNative('fd-passing transport');
    const n = this.n;
    this.framer = new Framer((f) => this.onFrame(f), { ...opts, closeFd: (x) => void n.close(x) });
    this.poll = n.pollStart(fd, POLL_READABLE, (events, status) => this.onEvents(events, status));
  }

  get closed(): boolean {
    return this._closed;
  }

  setLimits(maxMessageSize: number, maxFds: number): void {
    this.framer.setMaxMessageSize(maxMessageSize);
    this.framer.setMaxFds(maxFds);
  }

  setSendQueueLimit(bytes: number): void {
    this.sendLimit = bytes;
  }

  get queuedBytes(): number {
    return this.queued;
  }

  private updatePoll(): void {
    this.n.pollUpdate(this.poll, (this.paused ? 0 : POLL_READABLE) | (this.writing ? POLL_WRITABLE : 0));
  }

  /** Stops (or resumes) reading and delivering what was read. */
  private setPaused(on: boolean): void {
    if (this.paused === on) return;
    this.paused = on;
    this.updatePoll();
    this.framer.hold(on);
  }

  ref(keep: boolean): void {
    if (!this._closed) this.n.pollRef(this.poll, keep);
  }

  private onEvents(events: number, status: number): void {
    if (this._closed) return;
    if (status < 0) {
      this.fail(new VfuError(-status, 'socket poll failed'));
      return;
    }
    if (events & POLL_WRITABLE) this.flush();
    if (events & POLL_READABLE || events & 4) this.readSome();
  }

  private readSome(): void {
    for (let i = 0; i < READ_BUDGET && !this._closed && !this.paused; i++) {
      const t = this.framer.readTarget();
      const r = this.n.recvmsg(this.fd, t.buf, t.off, t.len, recvState);
      if (r > 0) {
        const nfds = recvState[0]!;
        const fds = nfds > 0 ? Array.from(recvState.subarray(2, 2 + nfds)) : null;
        this.framer.commit(r, fds, (recvState[1]! & RECV_FLAG_CTRUNC) !== 0);
        // uv_poll is level-triggered: a short read means the socket is empty
        // for now, and more data brings another callback.
        if (r < t.len) return;
      } else if (r === 0) {
        this.finish(null);
        return;
      } else if (r === EAGAIN) {
        return;
      } else {
        this.fail(new VfuError(-r, 'recvmsg failed'));
        return;
      }
    }
  }

  send(a: Buffer, b: Buffer | null, fds: readonly number[] | null): void {
    if (this._closed) throw new VfuError(Errno.ENOTCONN, 'endpoint closed');
    const total = a.length + (b ? b.length : 0);
    if (this.queue.length === 0) {
      const r = this.n.sendmsg(this.fd, a, b, fds && fds.length ? fds : null);
      if (r === total) return;
      if (r >= 0) {
        // Partial: the descriptors went with the first byte.
        this.enqueue(a, b, r, null);
        return;
      }
      if (r !== EAGAIN) {
        this.fail(new VfuError(-r, 'sendmsg failed'));
        return;
      }
    }
    this.enqueue(a, b, 0, fds && fds.length ? fds : null);
  }

  /** Queues a copy of bytes [skip, end) of a then b. */
  private enqueue(a: Buffer, b: Buffer | null, skip: number, fds: readonly number[] | null): void {
    const total = a.length + (b ? b.length : 0) - skip;
    const spill = total >= SPILL_MIN ? takeSpill(total) : null;
    const data = concatFrom(a, b, skip, spill ?? Buffer.allocUnsafe(total));
    this.queue.push({ data, fds, spill });
    this.queued += data.length;
    if (!this.writing) {
      this.writing = true;
      this.updatePoll();
    }
    if (this.queued > this.sendLimit) this.setPaused(true);
  }

  private flush(): void {
    while (this.queue.length > 0 && !this._closed) {
      const p = this.queue[0]!;
      const r = this.n.sendmsg(this.fd, p.data, null, p.fds);
      if (r === EAGAIN) return;
      if (r < 0) {
        this.fail(new VfuError(-r, 'sendmsg failed'));
        return;
      }
      this.queued -= r;
      if (r < p.data.length) {
        p.data = p.data.subarray(r);
        p.fds = null;
        if (this.paused && this.queued <= this.sendLimit / 2) this.setPaused(false);
        return;
      }
      this.queue.shift();
      if (p.spill) giveSpill(p.spill);
    }
    if (this._closed) return;
    this.writing = false;
    this.updatePoll();
    this.setPaused(false);
    const w = this.drainWaiters;
    this.drainWaiters = [];
    for (const f of w) f();
  }

  whenDrained(): Promise<void> {
    if (this.queue.length === 0 || this._closed) return Promise.resolve();
    return new Promise((res) => this.drainWaiters.push(res));
  }

  close(): void {
    this.finish(null);
  }

  private fail(err: Error): void {
    this.finish(err);
  }

  private finish(err: Error | null): void {
    if (this._closed) return;
    this._closed = true;
    this.n.pollClose(this.poll);
    this.n.close(this.fd);
    this.framer.destroy();
    this.queue = [];
    this.queued = 0;
    const w = this.drainWaiters;
    this.drainWaiters = [];
    for (const f of w) f();
    this.onClose(err);
  }
}

/** Copies bytes [skip, a.length + b.length) of a then b to the start of `out`. */
function concatFrom(a: Buffer, b: Buffer | null, skip: number, out: Buffer): Buffer {
  const total = a.length + (b ? b.length : 0) - skip;
  let o = 0;
  if (skip < a.length) {
    o += a.copy(out, 0, skip);
    if (b) b.copy(out, o);
  } else if (b) {
    b.copy(out, 0, skip - a.length);
  }
  return out.length === total ? out : out.subarray(0, total);
}
