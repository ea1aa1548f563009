// One client connection: version negotiation, then commands handled strictly
// in arrival order (a handler may be asynchronous; later commands wait in a
// bounded queue while replies to our own DMA requests keep flowing), error
// replies with the right errno, and clean-up when the client goes away.
import { native } from '../native/index.js';
import { type Capabilities } from '../protocol/capabilities.js';
import { Command, Errno, HEADER_SIZE, MigState, commandName } from '../protocol/constants.js';
import { isCommand } from '../protocol/header.js';
import { VfuError, errnoOf } from '../protocol/errors.js';
import { DmaAccessStruct, dmaWriteReply } from '../protocol/messages/dma.js';
import { MigDataStruct } from '../protocol/messages/migration.js';
import { RegionAccessStruct } from '../protocol/messages/region.js';
import { Connection } from '../transport/connection.js';
import type { Endpoint } from '../transport/endpoint.js';
import type { Frame } from '../transport/framer.js';
import type { VfioUserDevice } from './device.js';
import type { MessageDma } from './dma.js';
import type { HandlerContext, SessionOptions } from './handlers/context.js';
import { handlers, type Handler } from './handlers/index.js';

export type { SessionOptions } from './handlers/context.js';

interface Queued {
  f: Frame;
  via: Endpoint;
}

/**
 * Commands a stopped device accepts (libvfio-user's list, plus read-only
 * queries).  DIRTY_PAGES is the v1 equivalent of DMA_LOGGING_REPORT (which
 * comes as DEVICE_FEATURE): a v1 client fetches dirty bitmaps in
 * stop-and-copy, as libvfio-user's v1 allowed.
 */
const ALLOWED_WHEN_STOPPED = new Set<number>([
  Command.VERSION, // a client reconnecting to a stopped device (a second VERSION is refused by its handler)
  Command.REGION_READ,
  Command.REGION_WRITE,
  Command.REGION_WRITE_MULTI,
  Command.DEVICE_FEATURE,
  Command.MIG_DATA_READ,
  Command.DIRTY_PAGES,
  Command.DEVICE_GET_INFO,
  Command.DEVICE_GET_REGION_INFO,
  Command.DEVICE_GET_IRQ_INFO,
  Command.DEVICE_GET_REGION_IO_FDS,
]);

/** One client's connection to a device. */
export class Session {
  readonly conn: Connection;
  /** Called once the connection has closed and the session let go of it. */
  onClosed: (() => void) | null = null;
  private clientCaps: Capabilities | null = null;
  private dirtyPageSize = 4096;
  /** The session as its handlers see it (built once). */
  private readonly ctx: HandlerContext;
  /** Requests served and refused (statistics). */
  private handled = 0;
  private errors = 0;
  private busy = false;
  private queue: Queued[] = [];
  private queuedBytes = 0;
  /** Reusable reply buffer for small REGION_READs (sends copy what they queue). */
  private readonly replyBuf = Buffer.allocUnsafe(4096 + 32);
  /**
   * Views of replyBuf for REGION_READ replies of 0..8 bytes (the register
   * accesses that make up nearly all of them), made once instead of two
   * subarrays per read: [whole reply, data part].
   */
  private readonly smallReplies: [frame: Buffer, out: Buffer][] = Array.from({ length: 9 }, (_, n) => [
    this.replyBuf.subarray(0, HEADER_SIZE + RegionAccessStruct.size + n),
    this.replyBuf.subarray(HEADER_SIZE + RegionAccessStruct.size, HEADER_SIZE + RegionAccessStruct.size + n),
  ]);

  constructor(
    readonly device: VfioUserDevice,
    endpoint: Endpoint,
    readonly opts: SessionOptions,
  ) {
    endpoint.setLimits(opts.maxDataXferSize + 4096, opts.maxMsgFds);
    endpoint.setSendQueueLimit(opts.maxSendQueueBytes);
    this.conn = new Connection(endpoint, {
      replyTimeoutMs: opts.replyTimeoutMs,
      closeFd: (fd) => native?.close(fd),
    });
    this.conn.onCommand = (f, via) => this.onCommand(f, via);
    this.conn.onClose = () => this.closed();
    device.dma.messages = this.messageDma();
    this.ctx = this.handlerContext();
    endpoint.setPlacement({ headLen: MigDataStruct.size, place: (cmd, flags, size, head) => this.placeMigData(cmd, flags, size, head) });
  }

  /**
   * Zero-copy restore: the body of a large MIG_DATA_WRITE is received
   * straight into the device's buffer (its receiveBuffer) instead of being
   * reassembled and then copied there.  Only when the message is well formed
   * and would be handled at once (no command before it still running), so
   * the device sees its buffer requested in stream order; anything else is
   * buffered and goes through the ordinary checks.
   */
  private placeMigData(cmd: number, flags: number, msgSize: number, head: Buffer): Buffer | null {
    if (cmd !== Command.MIG_DATA_WRITE || !isCommand(flags)) return null;
    if (this.busy || this.queue.length > 0 || !this.negotiated || this.conn.closed) return null;
    const mig = this.device.migration;
    const argsz = head.readUInt32LE(MigDataStruct.off.argsz);
    const size = head.readUInt32LE(MigDataStruct.off.size);
    if (mig === null || size > this.opts.maxDataXferSize || argsz < MigDataStruct.size + size) return null;
    if (msgSize !== HEADER_SIZE + MigDataStruct.size + size) return null;
    return mig.receiveBuffer(size);
  }

  private get negotiated(): boolean {
    return this.clientCaps !== null;
  }

  /** Requests served and refused so far. */
  get stats(): { handled: number; errors: number } {
    return { handled: this.handled, errors: this.errors };
  }

  private handlerContext(): HandlerContext {
    const self = this;
    return {
      device: this.device,
      conn: this.conn,
      opts: this.opts,
      replyBuf: this.replyBuf,
      smallReplies: this.smallReplies,
      get clientCaps() {
        return self.clientCaps;
      },
      get dirtyPageSize() {
        return self.dirtyPageSize;
      },
      get canPassFds() {
        return self.conn.main.canPassFds && (self.clientCaps?.maxMsgFds ?? 1) > 0;
      },
      negotiated(caps: Capabilities) {
        self.clientCaps = caps;
        if (caps.migration?.pgsize !== undefined) self.dirtyPageSize = caps.migration.pgsize;
      },
    };
  }

  private onCommand(f: Frame, via: Endpoint): void {
    if (this.busy) {
      if (this.queue.length >= this.opts.maxQueuedCommands || this.queuedBytes + f.payload.length > this.opts.maxQueuedBytes) {
        this.closeFds(f.fds);
        this.conn.replyError(via, f, Errno.EBUSY);
        return;
      }
      // The frame is a view of the receive buffer: keep a copy.
      this.queue.push({ f: { ...f, payload: Buffer.from(f.payload) }, via });
      this.queuedBytes += f.payload.length;
      return;
    }
    this.run(f, via);
  }

  private run(f: Frame, via: Endpoint): void {
    let r: void | Promise<void>;
    try {
      r = this.handle(f, via);
    } catch (e) {
      this.fail(f, via, e);
      return;
    }
    if (r === undefined) {
      this.done(f);
      return;
    }
    this.busy = true;
    r.then(
      () => this.done(f),
      (e: unknown) => this.fail(f, via, e),
    ).finally(() => {
      this.busy = false;
      this.drain();
    });
  }

  private drain(): void {
    while (!this.busy && this.queue.length > 0 && !this.conn.closed) {
      const q = this.queue.shift()!;
      this.queuedBytes -= q.f.payload.length;
      this.run(q.f, q.via);
    }
  }

  private done(f: Frame): void {
    this.handled++;
    this.closeFds(f.fds);
  }

  private fail(f: Frame, via: Endpoint, e: unknown): void {
    this.errors++;
    this.closeFds(f.fds);
    const errno = errnoOf(e, Errno.EINVAL);
    this.device.log('debug', `${commandName(f.cmd)} (id ${f.msgId}) failed: ${(e as Error)?.message ?? e}`);
    this.conn.replyError(via, f, errno, (e as Error)?.message);
  }

  /** Closes descriptors a handler did not take (it sets f.fds = [] when it does). */
  private closeFds(fds: number[]): void {
    if (fds.length === 0) return; // nearly every message: skip the length store
    for (const fd of fds) native?.close(fd);
    fds.length = 0;
  }

  private handle(f: Frame, via: Endpoint): void | Promise<void> {
    if (f.rejected !== undefined) {
      // Malformed framing (bad size, too many fds): libvfio-user says EINVAL.
      this.conn.replyError(via, f, Errno.EINVAL);
      return;
    }
    if (!isCommand(f.flags)) {
      this.conn.replyError(via, f, Errno.EINVAL);
      return;
    }
    if (f.fdsTruncated) {
      this.conn.replyError(via, f, Errno.EPROTO);
      return;
    }
    if (!this.negotiated && f.cmd !== Command.VERSION) {
      this.conn.replyError(via, f, Errno.EINVAL);
      return;
    }
    const h: Handler | undefined = handlers[f.cmd];
    if (h === undefined) {
      this.conn.replyError(via, f, Errno.EINVAL);
      return;
    }
    const mig = this.device.migration;
    if (mig !== null && (mig.state === MigState.STOP || mig.state === MigState.STOP_COPY) && !ALLOWED_WHEN_STOPPED.has(f.cmd)) {
      this.conn.replyError(via, f, Errno.EINVAL);
      return;
    }
    return h(this.ctx, f, via);
  }

  /** DMA_READ/DMA_WRITE to the client (on the twin socket when negotiated). */
  private messageDma(): MessageDma {
    const s = this;
    return {
      get maxChunk() {
        return Math.min(s.clientCaps?.maxDataXferSize ?? 1 << 20, s.opts.maxDataXferSize);
      },
      dmaRead(addr: number, count: number, into: Buffer, at: number): Promise<void> {
        const req = DmaAccessStruct.encode({ addr: BigInt(addr), count: BigInt(count) });
        return s.conn.request(Command.DMA_READ, req, {}, (r) => {
          const p = r.payload;
          const v = p.length === DmaAccessStruct.size + count ? DmaAccessStruct.read(p) : null;
          if (v === null || v.addr !== BigInt(addr) || v.count !== BigInt(count)) throw new VfuError(Errno.EIO, 'bad DMA_READ reply');
          p.copy(into, at, DmaAccessStruct.size);
        });
      },
      dmaWrite(addr: number, data: Buffer): Promise<void> {
        const req = DmaAccessStruct.encode({ addr: BigInt(addr), count: BigInt(data.length) });
        return s.conn.request(Command.DMA_WRITE, req, { extra: data }, (r) => {
          // 16-byte reply (libvfio-user) or 12 (the spec's 32-bit count): the codec reads either
          const p = r.payload;
          const v = p.length === 12 || p.length === DmaAccessStruct.size ? dmaWriteReply.decode(p) : null;
          if (v === null || v.addr !== BigInt(addr) || v.count !== BigInt(data.length)) throw new VfuError(Errno.EIO, 'bad DMA_WRITE reply');
        });
      },
    };
  }

  close(): void {
    this.conn.close();
  }

  private closed(): void {
    for (const q of this.queue) this.closeFds(q.f.fds);
    this.queue = [];
    this.queuedBytes = 0;
    this.onClosed?.();
  }
}
