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
//    brought them (see docs/native.md).  They are counted as they arrive:
//    once a message in progress has brought more than the per-message
//    limit, all of its descriptors are closed at once (and it is refused
//    with EINVAL when it ends), and those arriving inside a body being
//    skipped are closed at once, so a peer sending a message a byte at a
//    time, each byte with 253 descriptors, holds at most the limit.
//
// Placement (zero copy for large bodies): a consumer may say where the rest
// of a large message's payload should go once its header and first
// `headLen` payload bytes are in.  The bytes of that message already read
// are copied there, and the reads that follow land in it directly; the
// frame then carries the head in `payload` and the body in `placed`.
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
  /**
   * The rest of the payload when it was received into a buffer the
   * placement hook supplied (the consumer's own); `payload` then holds only
   * the first headLen bytes.
   */
  placed?: Buffer;
}

/** Where a large message's payload may be received (see the file header). */
export interface Placement {
  /** Payload bytes the hook needs to see before deciding (a command's fixed part). */
  headLen: number;
  /**
   * Called once per message whose body is at least PLACE_MIN bytes and has
   * not all arrived: returns a buffer of exactly msgSize - 16 - headLen
   * bytes to receive the rest of the payload into, or null (buffered as
   * usual).  `head` is a view of the first headLen payload bytes.
   */
  place(cmd: number, flags: number, msgSize: number, head: Buffer): Buffer | null;
}

/** Bodies smaller than this are not worth placing (one read, a short copy). */
export const PLACE_MIN = 16 * 1024;

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
  /** Its message brought more descriptors than allowed: they were closed, the message is refused. */
  overflow?: boolean;
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
  private truncatedFds = false;
  /** The message whose fds takeFds() returned brought too many (see FdBatch.overflow). */
  private overflowFds = false;
  private stopped = false;
  placement: Placement | null = null;
  /** A message being received into a placement buffer. */
  private placing: { into: Buffer; filled: number; msgStart: number } | null = null;
  /** Stream position of the last message offered to placement. */
  private offered = -1;
  /** Reused result of readTarget (the endpoints read it at once). */
  private readonly target: { buf: Buffer; off: number; len: number } = { buf: this.buf, off: 0, len: 0 };
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

  /** Whether reads now go to a placement buffer (not the reassembly buffer). */
  get placingNow(): boolean {
    return this.placing !== null;
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
    const t = this.target;
    if (this.placing !== null) {
      const p = this.placing;
      t.buf = p.into;
      t.off = p.filled;
      t.len = p.into.length - p.filled;
      return t;
    }
    let want = 4096;
    if (this.skipping > 0) {
      want = Math.min(this.skipping, 1 << 20);
    } else if (this.end - this.start >= HEADER_SIZE) {
      const size = this.buf.readUInt32LE(this.start + 4);
      if (size > HEADER_SIZE && size <= this.opts.maxMessageSize) want = size - (this.end - this.start);
    }
    this.ensureRoom(Math.max(want, 4096));
    t.buf = this.buf;
    t.off = this.end;
    t.len = this.buf.length - this.end;
    return t;
  }

  /** Accounts for `n` bytes received at readTarget() with their fds. */
  commit(n: number, fds: number[] | null, truncated = false): void {
    if (this.stopped) {
      // Nobody will ever claim them: close rather than leak.
      if (fds) this.closeAll(fds);
      return;
    }
    if (this.placing !== null) this.placing.filled += n;
    else this.end += n;
    if ((fds && fds.length > 0) || truncated) {
      this.batches.push({ end: this.streamPos(), fds: fds ?? [], truncated });
      this.drain();
      this.boundFds();
      return;
    }
    this.drain();
  }

  /**
   * After drain(), the batches left belong to the one message still
   * arriving (or being skipped): closes their descriptors at once when that
   * message is being skipped or has brought more than maxFds.
   */
  private boundFds(): void {
    const bs = this.batches;
    if (bs.length === 0 || this.held || this.stopped) return;
    let n = 0;
    let over = this.skipping > 0;
    for (const b of bs) {
      n += b.fds.length;
      if (b.overflow) over = true;
    }
    if (!over && n <= this.opts.maxFds) return;
    for (const b of bs) {
      this.closeAll(b.fds);
      b.fds = [];
    }
    // a skipped message is refused already; one in progress will be when it ends
    if (this.skipping === 0) bs[bs.length - 1]!.overflow = true;
  }

  /** Stream position just after the last byte received. */
  private streamPos(): number {
    // While placing, buf ends with the message's head and the body bytes
    // received so far are in the placement buffer.
    return this.base + this.end + (this.placing !== null ? this.placing.filled : 0);
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

  /**
   * Fds whose read ended at or before stream position `upTo`; whether the
   * kernel truncated any of them is left in `truncatedFds`.  (No result
   * object: this runs for every message, and almost always finds none.)
   */
  private takeFds(upTo: number): number[] {
    this.truncatedFds = false;
    this.overflowFds = false;
    if (this.batches.length === 0) return [];
    let fds: number[] | null = null;
    while (this.batches.length > 0 && this.batches[0]!.end <= upTo) {
      const b = this.batches.shift()!;
      if (b.truncated) this.truncatedFds = true;
      if (b.overflow) this.overflowFds = true;
      if (fds === null) fds = b.fds;
      else fds.push(...b.fds);
    }
    return fds ?? [];
  }

  private closeAll(fds: number[]): void {
    for (const fd of fds) this.opts.closeFd(fd);
  }

  /**
   * Offers the incomplete message at buf[s] to the placement hook (once per
   * message).  On a buffer, the body bytes already read move into it and
   * the reads that follow land there directly.
   */
  private offerPlacement(s: number, cmd: number, flags: number, msgSize: number): void {
    const p = this.placement;
    if (p === null || this.base + s === this.offered) return;
    const headEnd = s + HEADER_SIZE + p.headLen;
    const body = msgSize - HEADER_SIZE - p.headLen;
    if (body < PLACE_MIN || this.end < headEnd) return;
    this.offered = this.base + s;
    const into = p.place(cmd, flags, msgSize, this.buf.subarray(s + HEADER_SIZE, headEnd));
    if (into === null) return;
    if (into.length !== body) throw new RangeError(`placement buffer of ${into.length} bytes for a ${body}-byte body`);
    const filled = this.buf.copy(into, 0, headEnd, this.end);
    this.end = headEnd;
    this.placing = { into, filled, msgStart: s };
  }

  /** Delivers the message being placed once its body is complete. */
  private finishPlacement(): boolean {
    const p = this.placing!;
    if (p.filled < p.into.length) return false;
    const b = this.buf;
    const s = p.msgStart;
    const msgSize = b.readUInt32LE(s + 4);
    const fds = this.takeFds(this.streamPos());
    const truncated = this.truncatedFds;
    const overflow = this.overflowFds;
    this.placing = null;
    // The body never entered buf: account for it in the stream position.
    this.start = this.end;
    this.base += p.into.length;
    const frame: Frame = {
      msgId: b.readUInt16LE(s),
      cmd: b.readUInt16LE(s + 2),
      msgSize,
      flags: b.readUInt32LE(s + 8),
      errorNo: b.readUInt32LE(s + 12),
      payload: b.subarray(s + HEADER_SIZE, this.end),
      fds,
      placed: p.into,
    };
    if (truncated) frame.fdsTruncated = true;
    if (overflow || fds.length > this.opts.maxFds) {
      // as for buffered messages: too many descriptors, refused
      this.closeAll(fds);
      this.onFrame({ msgId: frame.msgId, cmd: frame.cmd, msgSize, flags: frame.flags, errorNo: frame.errorNo, payload: EMPTY, fds: [], rejected: Errno.EINVAL });
      return true;
    }
    this.onFrame(frame);
    return true;
  }

  private drain(): void {
    while (!this.stopped && !this.held) {
      if (this.placing !== null) {
        if (!this.finishPlacement()) break;
        continue;
      }
      if (this.skipping > 0) {
        const n = Math.min(this.skipping, this.end - this.start);
        this.start += n;
        this.skipping -= n;
        if (this.skipping > 0) break;
        this.closeAll(this.takeFds(this.skipEnd));
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
        if (bodyLen === 0) this.closeAll(this.takeFds(msgEnd));
        this.onFrame({ msgId, cmd, msgSize, flags, errorNo, payload: EMPTY, fds: [], rejected: errno });
        continue;
      }
      if (avail < msgSize) {
        this.offerPlacement(s, cmd, flags, msgSize);
        break;
      }
      const fds = this.takeFds(this.base + s + msgSize);
      const truncated = this.truncatedFds;
      this.start += msgSize;
      if (this.overflowFds || fds.length > this.opts.maxFds) {
        // Too many descriptors is the sender's protocol error: refuse.
        this.closeAll(fds);
        this.onFrame({ msgId, cmd, msgSize, flags, errorNo, payload: EMPTY, fds: [], rejected: Errno.EINVAL });
        continue;
      }
      const frame: Frame = { msgId, cmd, msgSize, flags, errorNo, payload: b.subarray(s + HEADER_SIZE, s + msgSize), fds };
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
