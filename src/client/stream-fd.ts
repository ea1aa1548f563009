// Plain-TCP I/O of the migration stream through the native addon: Node's
// net.Socket connects (or accepts), then a duplicate of its descriptor is
// written with sendmsg and read with recvmsg, driven by uv_poll.  This skips
// the copies and allocations of Node's stream layer: the sender hands the
// kernel its chunk buffers directly, and the receiver reads each payload
// straight into where it belongs (a PAGES chunk into the destination's guest
// memory).  Without the addon, or for TLS, Node's socket does the I/O.
import type { Socket } from 'node:net';
import { type NativeAddon, POLL_READABLE, POLL_WRITABLE, type PollHandle, RECV_STATE_LEN, native } from '../native/index.js';
import { Errno } from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';

const EAGAIN = -Errno.EAGAIN;

/**
 * A duplicate of a connected TCP socket's descriptor (non-blocking, like
 * the original), or null when the addon is missing or Node hides the
 * descriptor.  The caller owns it (FdStream closes it).
 */
export function dupSocketFd(sock: Socket): { addon: NativeAddon; fd: number } | null {
  const fd = (sock as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  if (native === null || typeof fd !== 'number' || fd < 0) return null;
  const dup = native.dup(fd);
  return dup < 0 ? null : { addon: native, fd: dup };
}

/**
 * Stops Node's reading of a connected socket whose descriptor the addon
 * reads instead (net.Socket starts reading at connect, paused or not, and
 * would take the bytes first).
 */
export function stopReading(s: Socket): void {
  s.pause();
  const h = (s as unknown as { _handle?: { reading?: boolean; readStop?: () => number } })._handle;
  if (h && typeof h.readStop === 'function') {
    h.reading = false;
    h.readStop();
  }
}

interface Write {
  a: Buffer;
  b: Buffer | null;
  resolve: () => void;
  reject: (e: Error) => void;
}

/**
 * Reads and writes a socket's duplicated descriptor.  write() resolves
 * once the kernel has taken every byte (the buffers are the caller's again
 * then); reading is pull-style: onReadable is called when the socket has
 * bytes, and read() puts them where the caller says.  The first failure
 * (a reset, a broken pipe) rejects every write, now and later.
 */
export class FdStream {
  private poll: PollHandle | null = null;
  private events = 0;
  private readonly queue: Write[] = [];
  private failed: Error | null = null;
  private readonly state = new Int32Array(RECV_STATE_LEN);
  /** Bytes handed to write() and not yet taken by the kernel. */
  queued = 0;

  /** Takes ownership of `fd`; `onReadable` (optional) runs while reading is enabled and bytes wait. */
  constructor(
    private readonly addon: NativeAddon,
    private readonly fd: number,
    private readonly onReadable: (() => void) | null = null,
    private readonly onError: (e: Error) => void = () => {},
  ) {}

  /** Writes fail from now on: a failure, or close(). */
  get broken(): boolean {
    return this.failed !== null;
  }

  /** Sends `a` then `b` (one sendmsg when the socket takes them). */
  write(a: Buffer, b: Buffer | null = null): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    if (this.queue.length === 0) {
      const rest = this.send(a, b);
      if (rest === null) return Promise.resolve();
      if (this.failed) return Promise.reject(this.failed);
      [a, b] = rest;
    }
    this.queued += a.length + (b?.length ?? 0);
    return new Promise((resolve, reject) => {
      this.queue.push({ a, b, resolve, reject });
      this.want(this.events | POLL_WRITABLE);
    });
  }

  /**
   * One recvmsg into `into`: the bytes read, 0 at the end of the stream,
   * or -1 when nothing is there yet.  A failure (reset) is thrown.
   */
  read(into: Buffer): number {
    const n = this.addon.recvmsg(this.fd, into, 0, into.length, this.state);
    if (n === EAGAIN) return -1;
    if (n < 0) throw this.fail(new VfuError(-n, 'reading the migration stream failed'));
    return n;
  }

  /** Whether onReadable is called (backpressure: off while chunks are applied). */
  reading(on: boolean): void {
    this.want(on ? this.events | POLL_READABLE : this.events & ~POLL_READABLE);
  }

  /** Fails every write with `e` (first call only) and stops polling; returns the failure in effect. */
  fail(e: Error): Error {
    if (this.failed) return this.failed;
    this.failed = e;
    this.queued = 0;
    for (const w of this.queue.splice(0)) w.reject(e);
    this.want(this.events & ~POLL_WRITABLE);
    this.onError(e);
    return e;
  }

  /** Stops polling and closes the descriptor (the connection ends once Node's socket is closed too). */
  close(): void {
    if (!this.failed) {
      this.failed = new VfuError(Errno.ECONNRESET, 'migration stream closed');
      for (const w of this.queue.splice(0)) w.reject(this.failed);
      this.queued = 0;
    }
    if (this.events < 0) return;
    if (this.poll) this.addon.pollClose(this.poll);
    this.poll = null;
    this.events = -1;
    this.addon.close(this.fd);
  }

  /** Sends what it can; null when all went, else what is left. */
  private send(a: Buffer, b: Buffer | null): [Buffer, Buffer | null] | null {
    for (;;) {
      const n = this.addon.sendmsg(this.fd, a, b, null);
      if (n === EAGAIN) return [a, b];
      if (n < 0) {
        this.fail(new VfuError(-n, 'writing the migration stream failed'));
        return [a, b];
      }
      if (n >= a.length + (b?.length ?? 0)) return null;
      if (n >= a.length) [a, b] = [b!.subarray(n - a.length), null];
      else a = a.subarray(n);
    }
  }

  private want(events: number): void {
    if (this.events < 0 || events === this.events) return;
    this.events = events;
    if (this.poll === null) {
      if (events === 0) return;
      this.poll = this.addon.pollStart(this.fd, events, (ev, status) => this.onEvent(ev, status));
    } else {
      this.addon.pollUpdate(this.poll, events);
    }
  }

  private onEvent(ev: number, status: number): void {
    if (status < 0) {
      // libuv reports any socket error as EBADF: the system calls say which
      if (this.queue.length > 0) this.flush();
      if (this.events > 0 && this.events & POLL_READABLE) this.onReadable?.();
      this.fail(new VfuError(-status, 'the migration stream failed'));
      return;
    }
    if (ev & POLL_WRITABLE) this.flush();
    if (ev & POLL_READABLE && this.events & POLL_READABLE) this.onReadable?.();
  }

  private flush(): void {
    while (this.queue.length > 0 && !this.failed) {
      const w = this.queue[0]!;
      const before = w.a.length + (w.b?.length ?? 0);
      const rest = this.send(w.a, w.b);
      if (this.failed) return;
      if (rest !== null) {
        [w.a, w.b] = rest;
        this.queued -= before - (w.a.length + (w.b?.length ?? 0));
        return;
      }
      this.queue.shift();
      this.queued -= before;
      w.resolve();
    }
    if (this.queue.length === 0) this.want(this.events & ~POLL_WRITABLE);
  }
}
