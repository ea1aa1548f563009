// Endpoint over a non-blocking AF_UNIX socket driven by the native addon:
// uv_poll for readiness, recvmsg straight into the framer's buffer, sendmsg
// gathering header and payload with their descriptors.
//
// A round trip costs a JS entry and two N-API calls (recvmsg, sendmsg),
// which on a small machine weigh as much as the system calls themselves.
// Two registrations with the addon (pollSetIo) take both calls off the
// common path, leaving only Int32Array loads and stores to JS:
//  - receive-ahead: after each batch of reads the endpoint tells the addon
//    where the next one goes (a new pollSetIo only when the framer's buffer
//    changes), and the addon reads as soon as the socket is readable,
//    before calling into JS;
//  - outbox: while our callback runs (including the promise continuations
//    run at its end), small fd-less messages are copied into an outbox,
//    which the addon sends in one system call once the callback returns.
//    Replies leave without an N-API call, and several leave together.
//    Between cork() and uncork() the outbox gathers the same way outside
//    a callback (pipelined requests), and uncork() sends it.
import {
  IO_IN_CALLBACK,
  IO_OUT_LEN,
  IO_RECV_LEN,
  IO_RECV_OFF,
  IO_STATE_LEN,
  POLL_READABLE,
  POLL_WRITABLE,
  RECV_FLAG_CTRUNC,
  requireNative,
  type NativeAddon,
  type PollHandle,
} from '../native/index.js';
import { Errno } from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';
import type { Endpoint } from './endpoint.js';
import { type Frame, Framer, type Placement } from './framer.js';

const EAGAIN = -Errno.EAGAIN;
/** Reads per readiness callback before yielding to the loop. */
const READ_BUDGET = 64;

interface Pending {
  /** What is left to send: `data` then `more` (a caller's stable buffer, or null). */
  data: Buffer;
  more: Buffer | null;
  fds: readonly number[] | null;
  /** The pooled buffer `data` lies in, returned to the pool once sent. */
  spill: Buffer | null;
}

const EMPTY = Buffer.alloc(0);
/**
 * The most send buffer asked of the kernel for one socket.  With the
 * default (about 200 KiB) a 1 MiB message leaves in five sendmsg calls, each
 * behind a poll for writability and a wake-up of the process, which weighs
 * as much as the copy itself; a buffer that holds the largest message lets
 * it go in one call.  The kernel charges only what is in flight.
 */
const SEND_BUFFER_MAX = 4 * 1024 * 1024;
/**
 * Outbox size: replies and requests up to this go out through it.  Large
 * enough for what one wake-up answers in a migration's downtime window
 * (STOP_COPY, a 16 KiB MIG_DATA_READ and a dirty report: one sendmsg, not
 * three) and for the last device data sent with STOP and RUNNING.
 */
const OUTBOX = 64 * 1024;

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
  /** Until a consumer takes over, descriptors that arrive are closed, not leaked. */
  onFrame: (f: Frame) => void = (f) => {
    for (const fd of f.fds) this.n.close(fd);
  };
  onClose: (err: Error | null) => void = () => {};
  private readonly n: NativeAddon;
  private readonly framer: Framer;
  private readonly poll: PollHandle;
  private queue: Pending[] = [];
  private drainWaiters: (() => void)[] = [];
  private _closed = false;
  private writing = false;
  /** recvmsg results ([nfds, flags, fds...]), then the pollSetIo slots. */
  private readonly io = new Int32Array(IO_STATE_LEN);
  /** Small messages gathered during a callback (see the file header). */
  private readonly outbox = Buffer.allocUnsafeSlow(OUTBOX);
  /** The buffer registered for receive-ahead. */
  private aheadBuf: Buffer | null = null;
  /** Bytes of ours waiting in the queue, and the limit before we stop reading. */
  private queued = 0;
  private sendLimit = Infinity;
  /** Not reading: too much of ours waits to be written. */
  private paused = false;
  /** Not reading: the owner said so (holdReading). */
  private holding = false;
  /** cork() depth: while > 0 small sends gather in the outbox, as in a callback. */
  private corked = 0;

  constructor(
    readonly fd: number,
    opts: { maxMessageSize: number; maxFds: number },
  ) {
    this.n = requireNative('fd-passing transport');
    const n = this.n;
    this.framer = new Framer((f) => this.onFrame(f), { ...opts, closeFd: (x) => void n.close(x) });
    this.poll = n.pollStart(fd, POLL_READABLE, (events, status, got) => this.onEvents(events, status, got));
    this.sizeSendBuffer(opts.maxMessageSize);
    this.armReceive();
  }

  /** Lets a message of up to `maxMessageSize` (capped) leave in one sendmsg. */
  private sizeSendBuffer(maxMessageSize: number): void {
    // best effort: a socket that refuses keeps its default, only slower
    this.n.raiseSendBuffer(this.fd, Math.min(maxMessageSize, SEND_BUFFER_MAX));
  }

  /**
   * Points the addon's receive-ahead at where the framer wants the next
   * bytes: its own reassembly buffer only (a placement target is a
   * consumer's memory, which we do not hand to C across event-loop turns;
   * those reads are made from JS).
   */
  private armReceive(): void {
    if (this._closed) return;
    const io = this.io;
    if (this.framer.placingNow) {
      io[IO_RECV_LEN] = 0;
      return;
    }
    const t = this.framer.readTarget();
    if (t.buf !== this.aheadBuf) {
      this.n.pollSetIo(this.poll, t.buf, io, this.outbox);
      this.aheadBuf = t.buf;
    }
    io[IO_RECV_OFF] = t.off;
    io[IO_RECV_LEN] = t.len;
  }

  get closed(): boolean {
    return this._closed;
  }

  setLimits(maxMessageSize: number, maxFds: number): void {
    this.framer.setMaxMessageSize(maxMessageSize);
    this.framer.setMaxFds(maxFds);
    this.sizeSendBuffer(maxMessageSize);
  }

  setPlacement(p: Placement | null): void {
    this.framer.placement = p;
  }

  setSendQueueLimit(bytes: number): void {
    this.sendLimit = bytes;
  }

  get queuedBytes(): number {
    return this.queued;
  }

  private updatePoll(): void {
    this.n.pollUpdate(this.poll, (this.paused || this.holding ? 0 : POLL_READABLE) | (this.writing ? POLL_WRITABLE : 0));
  }

  holdReading(on: boolean): void {
    if (this.holding === on || this._closed) return;
    this.holding = on;
    this.updatePoll();
    this.framer.hold(this.paused || on);
  }

  /**
   * Backpressure: stops (or resumes) reading, and delivering what was read,
   * while a peer does not read what we send.
   */
  private setPaused(on: boolean): void {
    if (this.paused === on) return;
    this.paused = on;
    this.updatePoll();
    this.framer.hold(on || this.holding);
  }

  ref(keep: boolean): void {
    if (!this._closed) this.n.pollRef(this.poll, keep);
  }

  private onEvents(events: number, status: number, got: number | null): void {
    if (this._closed) return;
    if (status < 0) {
      this.fail(new VfuError(-status, 'socket poll failed'));
      return;
    }
    if (events & POLL_WRITABLE) this.flush();
    if (got !== null || events & POLL_READABLE || events & 4) this.readSome(got);
    this.armReceive();
  }

  /** Reads until the socket is empty (or the budget is spent); `first` is the addon's read, if it made one. */
  private readSome(first: number | null): void {
    const io = this.io;
    for (let i = 0; i < READ_BUDGET && !this._closed && ((!this.paused && !this.holding) || (i === 0 && first !== null)); i++) {
      let r: number;
      let len: number;
      if (i === 0 && first !== null) {
        // already read into the armed target, which is still readTarget()
        r = first;
        len = io[IO_RECV_LEN]!;
      } else {
        const t = this.framer.readTarget();
        len = t.len;
        r = this.n.recvmsg(this.fd, t.buf, t.off, len, io);
      }
      if (r > 0) {
        const nfds = io[0]!;
        const fds = nfds > 0 ? Array.from(io.subarray(2, 2 + nfds)) : null;
        this.framer.commit(r, fds, (io[1]! & RECV_FLAG_CTRUNC) !== 0);
        // uv_poll is level-triggered: a short read means the socket is empty
        // for now, and more data brings another callback.
        if (r < len) return;
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

  send(a: Buffer, b: Buffer | null, fds: readonly number[] | null, bStable = false): void {
    if (this._closed) throw new VfuError(Errno.ENOTCONN, 'endpoint closed');
    const io = this.io;
    const total = a.length + (b ? b.length : 0);
    const noFds = fds === null || fds.length === 0;
    // Inside our callback, small fd-less messages go to the outbox (sent by
    // the addon when the callback returns), and while corked (sent by
    // uncork()).  The outbox is only ever used with an empty queue, so it
    // never overtakes queued bytes.
    if ((io[IO_IN_CALLBACK] === 1 || this.corked > 0) && noFds && this.queue.length === 0 && io[IO_OUT_LEN]! + total <= OUTBOX) {
      let at = io[IO_OUT_LEN]!;
      at += a.copy(this.outbox, at);
      if (b !== null) at += b.copy(this.outbox, at);
      io[IO_OUT_LEN] = at;
      return;
    }
    // Anything else must not overtake what the outbox holds.
    if (io[IO_OUT_LEN]! > 0) this.flushOutbox();
    if (this.queue.length === 0) {
      const r = this.n.sendmsg(this.fd, a, b, noFds ? null : fds);
      if (r === total) return;
      if (r >= 0) {
        // Partial: the descriptors went with the first byte.
        this.enqueue(a, b, r, null, bStable);
        return;
      }
      if (r !== EAGAIN) {
        this.fail(new VfuError(-r, 'sendmsg failed'));
        return;
      }
    }
    this.enqueue(a, b, 0, noFds ? null : fds, bStable);
  }

  /** Sends the outbox now (what the socket does not take joins the queue, which is empty). */
  private flushOutbox(): void {
    const io = this.io;
    const n = io[IO_OUT_LEN]!;
    io[IO_OUT_LEN] = 0;
    const out = this.outbox.subarray(0, n);
    const r = this.n.sendmsg(this.fd, out, null, null);
    if (r === n) return;
    if (r >= 0 || r === EAGAIN) {
      this.enqueue(out, null, Math.max(0, r), null, false);
      return;
    }
    this.fail(new VfuError(-r, 'sendmsg failed'));
  }

  cork(): void {
    this.corked++;
  }

  uncork(): void {
    if (this.corked === 0 || --this.corked > 0) return;
    // inside our callback the addon sends the outbox when it returns
    if (this.io[IO_OUT_LEN]! > 0 && this.io[IO_IN_CALLBACK] !== 1 && !this._closed) this.flushOutbox();
  }

  get sending(): boolean {
    // Inside our callback (or while corked) the outbox holds messages
    // gathered to leave at its end (copies, sent before anything else): a
    // reply behind them need not wait.  After it, what is left there is
    // what the socket refused.
    const io = this.io;
    return this.queue.length > 0 || (io[IO_OUT_LEN]! > 0 && io[IO_IN_CALLBACK] !== 1 && this.corked === 0);
  }

  /**
   * Queues bytes [skip, end) of a then b: a copy, except that the unsent
   * part of a stable `b` is kept by reference (only a's rest is copied).
   */
  private enqueue(a: Buffer, b: Buffer | null, skip: number, fds: readonly number[] | null, bStable: boolean): void {
    if (bStable && b !== null && b.length > 0) {
      const data = skip < a.length ? Buffer.from(a.subarray(skip)) : EMPTY;
      const more = skip <= a.length ? b : b.subarray(skip - a.length);
      this.queue.push({ data, more, fds, spill: null });
    } else {
      const total = a.length + (b ? b.length : 0) - skip;
      const spill = total >= SPILL_MIN ? takeSpill(total) : null;
      const data = concatFrom(a, b, skip, spill ?? Buffer.allocUnsafe(total));
      this.queue.push({ data, more: null, fds, spill });
    }
    const last = this.queue[this.queue.length - 1]!;
    this.queued += last.data.length + (last.more ? last.more.length : 0);
    if (!this.writing) {
      this.writing = true;
      this.updatePoll();
    }
    if (this.queued > this.sendLimit) this.setPaused(true);
  }

  private flush(): void {
    // The addon leaves in the outbox what the socket did not take: it goes first.
    if (this.io[IO_OUT_LEN]! > 0) this.flushOutbox();
    while (this.queue.length > 0 && !this._closed) {
      const p = this.queue[0]!;
      const r = this.n.sendmsg(this.fd, p.data, p.more, p.fds);
      if (r === EAGAIN) return;
      if (r < 0) {
        this.fail(new VfuError(-r, 'sendmsg failed'));
        return;
      }
      this.queued -= r;
      const left = p.data.length + (p.more ? p.more.length : 0) - r;
      if (left > 0) {
        if (r < p.data.length) p.data = p.data.subarray(r);
        else {
          p.more = p.more!.subarray(r - p.data.length);
          p.data = EMPTY;
        }
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
    if (this._closed) return Promise.resolve();
    // The addon would send the outbox after the callback; a waiter needs it
    // sent (or queued, which flush() then reports) now.
    if (this.io[IO_OUT_LEN]! > 0) this.flushOutbox();
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
    // A reply gathered just before a close still leaves (best effort, as a
    // direct send would have).
    if (err === null && this.io[IO_OUT_LEN]! > 0 && this.queue.length === 0) {
      const out = this.outbox.subarray(0, this.io[IO_OUT_LEN]);
      this.n.sendmsg(this.fd, out, null, null);
    }
    this.io[IO_OUT_LEN] = 0;
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
