// Bytes (and descriptors) in, whole messages out.
//
// The framer owns one reassembly buffer.  The native transport receives
// straight into it (readTarget/commit), the net.Socket transport copies its
// chunks in (push).  Complete messages are handed out as views into that
// buffer, valid only for the duration of the callback.
//
// Robustness rules, each covered by tests:
//  - a message may arrive in any number of reads, several may share one read;
//  - msg_size below 16 is treated as a bare 16-byte header and rejected, so
//    the next message starts right after it;
//  - msg_size above the limit is rejected at once, and its body is skipped as
//    it streams in (never buffered), so the stream stays in sync
//    (libvfio-user leaves the body in the socket and parses it as headers);
//  - descriptors belong to the message holding the last byte of the read that
//    brought them (see native-notes.md); fds of rejected messages and fds
//    beyond the per-message limit are closed here.
import { Errno, HEADER_SIZE } from '../protocol/constants.js';

export interface Frame {
  msgId: number;
  cmd: number;
  msgSize: number;
  flags: number;
  errorNo: number;
  /** Body view, valid only during the callback. */
  payload: Buffer;
  /** Descriptors that came with this message; the receiver owns them. */
  fds: number[];
  /** Set when the framer refused the message (its body was not kept). */
  rejected?: number;
  /** The kernel truncated ancillary data: some descriptors were lost. */
  fdsTruncated?: boolean;
}

export interface FramerOptions {
  /** Largest whole message (header included) accepted. */
  maxMessageSize: number;
  /** Most descriptors one message may carry; extra ones are closed. */
  maxFds: number;
  /** Closes a descriptor (the transport's own close). */
  closeFd: (fd: number) => void;
}

interface FdBatch {
  /** Stream position just after the read that carried these fds. */
  end: number;
  fds: number[];
  truncated: boolean;
}

const INITIAL = 64 * 1024;

export class Framer {
  private buf = Buffer.allocUnsafe(INITIAL);
  /** First unconsumed byte in buf. */
  private start = 0;
  /** End of valid data in buf. */
  private end = 0;
  /** Stream position of buf[0]. */
  private base = 0;
  /** Bytes of a rejected message still to discard. */
  private skipping = 0;
  /** Stream position where the skipped message ends. */
  private skipEnd = 0;
  private batches: FdBatch[] = [];
  private stopped = false;
  /** Delivery held back (the receiver's backpressure); bytes stay buffered. */
  private held = false;

  constructor(
    private readonly onFrame: (f: Frame) => void,
    private opts: FramerOptions,
  ) {}

  setMaxMessageSize(n: number): void {
    this.opts = { ...this.opts, maxMessageSize: n };
  }
  setMaxFds(n: number): void {
    this.opts = { ...this.opts, maxFds: n };
  }

  /** Bytes currently buffered and not yet delivered (for tests/limits). */
  get buffered(): number {
    return this.end - this.start;
  }

  /**
   * Where the next read should land: a region of the reassembly buffer large
   * enough for the message in progress when its size is known.
   */
  readTarget(): { buf: Buffer; off: number; len: number } {
    let want = 4096;
    if (this.skipping > 0) {
      want = Math.min(this.skipping, 1 << 20);
    } else if (this.end - this.start >= HEADER_SIZE) {
      const size = this.buf.readUInt32LE(this.start + 4);
      if (size > HEADER_SIZE && size <= this.opts.maxMessageSize) want = size - (this.end - this.start);
    }
    this.ensureRoom(Math.max(want, 4096));
    return { buf: this.buf, off: this.end, len: this.buf.length - this.end };
  }

  /** Accounts for `n` bytes received at readTarget() with their fds. */
  commit(n: number, fds: number[] | null, truncated = false): void {
    if (this.stopped) {
      // Nobody will ever claim them: close rather than leak.
      if (fds) this.closeAll(fds);
      return;
    }
    this.end += n;
    if ((fds && fds.length > 0) || truncated) {
      this.batches.push({ end: this.base + this.end, fds: fds ?? [], truncated });
    }
    this.drain();
  }

  /** Copies a chunk in (net.Socket transport: no descriptors). */
  push(chunk: Buffer): void {
    let off = 0;
    while (off < chunk.length) {
      const t = this.readTarget();
      const n = Math.min(t.len, chunk.length - off);
      chunk.copy(t.buf, t.off, off, off + n);
      off += n;
      this.commit(n, null);
      if (this.stopped) return;
    }
  }

  /**
   * Holds delivery (true) or resumes it (false), delivering at once what is
   * buffered.  Used for backpressure: a message already read is not handed
   * out while the receiver cannot take more.
   */
  hold(on: boolean): void {
    this.held = on;
    if (!on) this.drain();
  }

  /** Stops delivering and closes descriptors nobody claimed. */
  destroy(): void {
    this.stopped = true;
    for (const b of this.batches) for (const fd of b.fds) this.opts.closeFd(fd);
    this.batches = [];
  }

  private ensureRoom(n: number): void {
    if (this.buf.length - this.end >= n) return;
    const live = this.end - this.start;
    if (this.start > 0 && this.buf.length - live >= n && live < this.buf.length / 2) {
      this.buf.copy(this.buf, 0, this.start, this.end);
    } else {
      let size = this.buf.length;
      while (size - live < n) size *= 2;
      const nb = Buffer.allocUnsafe(size);
      this.buf.copy(nb, 0, this.start, this.end);
      this.buf = nb;
    }
    this.base += this.start;
    this.end = live;
    this.start = 0;
  }

  /** Fds whose read ended at or before stream position `upTo`. */
  private takeFds(upTo: number): { fds: number[]; truncated: boolean } {
    let fds: number[] | null = null;
    let truncated = false;
    while (this.batches.length > 0 && this.batches[0]!.end <= upTo) {
      const b = this.batches.shift()!;
      truncated ||= b.truncated;
      if (fds === null) fds = b.fds;
      else fds.push(...b.fds);
    }
    return { fds: fds ?? [], truncated };
  }

  private closeAll(fds: number[]): void {
    for (const fd of fds) this.opts.closeFd(fd);
  }

  private drain(): void {
    while (!this.stopped && !this.held) {
      if (this.skipping > 0) {
        const n = Math.min(this.skipping, this.end - this.start);
        this.start += n;
        this.skipping -= n;
        if (this.skipping > 0) break;
        this.closeAll(this.takeFds(this.skipEnd).fds);
        continue;
      }
      const avail = this.end - this.start;
      if (avail < HEADER_SIZE) break;
      const b = this.buf;
      const s = this.start;
      const msgId = b.readUInt16LE(s);
      const cmd = b.readUInt16LE(s + 2);
      const msgSize = b.readUInt32LE(s + 4);
      const flags = b.readUInt32LE(s + 8);
      const errorNo = b.readUInt32LE(s + 12);
      if (msgSize < HEADER_SIZE || msgSize > this.opts.maxMessageSize) {
        // Deliver the refusal now; swallow the body (if any) as it arrives.
        const bodyLen = msgSize < HEADER_SIZE ? 0 : msgSize - HEADER_SIZE;
        const msgEnd = this.base + s + HEADER_SIZE + bodyLen;
        this.start += HEADER_SIZE;
        this.skipping = bodyLen;
        this.skipEnd = msgEnd;
        const errno = msgSize < HEADER_SIZE ? Errno.EINVAL : Errno.EMSGSIZE;
        if (bodyLen === 0) this.closeAll(this.takeFds(msgEnd).fds);
        this.onFrame({ msgId, cmd, msgSize, flags, errorNo, payload: EMPTY, fds: [], rejected: errno });
        continue;
      }
      if (avail < msgSize) break;
      const { fds, truncated } = this.takeFds(this.base + s + msgSize);
      this.start += msgSize;
      let list = fds;
      if (list.length > this.opts.maxFds) {
        this.closeAll(list.slice(this.opts.maxFds));
        list = list.slice(0, this.opts.maxFds);
        // Too many descriptors is the sender's protocol error: refuse.
        this.closeAll(list);
        this.onFrame({ msgId, cmd, msgSize, flags, errorNo, payload: EMPTY, fds: [], rejected: Errno.EINVAL });
        continue;
      }
      const frame: Frame = { msgId, cmd, msgSize, flags, errorNo, payload: b.subarray(s + HEADER_SIZE, s + msgSize), fds: list };
      if (truncated) frame.fdsTruncated = true;
      this.onFrame(frame);
    }
    if (this.start === this.end) {
      // Everything consumed: rewind for free, and shrink a buffer a large
      // message grew so one big transfer does not pin memory forever.
      this.base += this.start;
      this.start = this.end = 0;
      if (this.buf.length > 4 * 1024 * 1024) this.buf = Buffer.allocUnsafe(INITIAL);
    }
  }
}

const EMPTY = Buffer.alloc(0);
