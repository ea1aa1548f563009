// Serving a device: a listening socket (mode 0600) with one client at a time,
// or an inherited connected socket (--fd).  When the client goes away its DMA
// mappings and interrupt descriptors are dropped, a migration in progress is
// abandoned (the device returns to RUNNING), the device is reset with reason
// 'lost-connection' (its state otherwise kept), and the next client is
// accepted: reconnect works.
import { EventEmitter } from 'node:events';
import { native } from '../native/index.js';
import { DEFAULT_MAX_DATA_XFER_SIZE, Errno, HEADER_SIZE, HeaderFlag, MigState, migStateNames } from '../protocol/constants.js';
import { writeHeader } from '../protocol/header.js';
import type { Endpoint } from '../transport/endpoint.js';
import { endpointFromFd, listen, type Listener, type TransportKind } from '../transport/socket.js';
import type { VfioUserDevice } from './device.js';
import type { DmaLimits } from './dma.js';
import { Session, type SessionOptions } from './session.js';

/**
 * Options of a server.  The resource limits (see RELIABILITY.md for the
 * table and their errnos): maxDataXferSize (larger messages: EINVAL, their
 * bodies skipped), maxMsgFds (more descriptors: EINVAL, all closed),
 * maxQueuedCommands / maxQueuedBytes (behind a slow command: EBUSY),
 * maxSendQueueBytes (unread replies: we stop reading), dmaLimits (mappings:
 * EINVAL; total or single size: ENOSPC), maxDirtyBitmapBytes (dirty
 * tracking memory: ENOMEM; one report: E2BIG).
 */
export interface ServeOptions extends Partial<SessionOptions> {
  /** 'native' (the default with the addon) or 'net'. */
  transport?: TransportKind;
  /** Socket file mode (default 0600). */
  mode?: number;
  /** Overrides the device's DMA limits (setupDma) for its clients. */
  dmaLimits?: Partial<DmaLimits>;
  /**
   * Cap on the dirty page tracking bitmaps (default 256 MiB; ENOMEM beyond),
   * and on one report's bitmap (E2BIG beyond; advertised as
   * max_bitmap_size), which is built in one buffer reused for every report.
   */
  maxDirtyBitmapBytes?: number;
  /**
   * How long a refused second client may take to send its first message
   * (answered with EBUSY) before it is hung up on (default 1000 ms).
   */
  refusalTimeoutMs?: number;
}

/**
 * Refused clients waiting for their first message, at most: beyond, a new
 * one is hung up on at once (a crowd holds that many descriptors at most).
 */
const MAX_REFUSING = 32;
/** Largest first message of a refused client that is read whole. */
const REFUSED_MAX_MESSAGE = 64 * 1024;

function sessionOptions(o: ServeOptions): SessionOptions {
  return {
    maxDataXferSize: o.maxDataXferSize ?? DEFAULT_MAX_DATA_XFER_SIZE,
    maxMsgFds: o.maxMsgFds ?? 16,
    twinSocket: o.twinSocket ?? true,
    replyTimeoutMs: o.replyTimeoutMs ?? 30_000,
    maxQueuedCommands: o.maxQueuedCommands ?? 1024,
    maxQueuedBytes: o.maxQueuedBytes ?? 64 * 1024 * 1024,
    maxSendQueueBytes: o.maxSendQueueBytes ?? 16 * 1024 * 1024,
  };
}

/** The events of a {@link VfioUserServer} and their listeners' arguments. */
export interface ServerEvents {
  /** A client connected (its session; negotiation follows). */
  /** @internal */
  session: [session: Session];
  /** The client went away and the device is cleaned up (see DeviceEvents.disconnected). */
  disconnected: [];
  /** A second client tried to connect while one is served; it got EBUSY. */
  refused: [];
  /** The server is closed and the device's resources released. */
  close: [];
}

/**
 * Serves one {@link VfioUserDevice} on a UNIX socket (or an inherited
 * connected descriptor), one client at a time.  It does not handle
 * signals: a program that serves (like `vfu serve`) calls close() on
 * SIGTERM.  Its events are listed in {@link ServerEvents}.
 */
export class VfioUserServer extends EventEmitter<ServerEvents> {
  /** The current client's session. @internal */
  session: Session | null = null;
  /** Clients served so far. */
  connections = 0;
  private listener: Listener | null = null;
  private cleanup: Promise<void> = Promise.resolve();
  private closed = false;
  private readonly opts: SessionOptions;
  private readonly refusalTimeoutMs: number;
  /** Refused clients not yet hung up on. */
  private refusing = 0;

  private constructor(
    /** The device served. */
    readonly device: VfioUserDevice,
    serveOpts: ServeOptions,
  ) {
    super();
    this.opts = sessionOptions(serveOpts);
    this.refusalTimeoutMs = serveOpts.refusalTimeoutMs ?? 1000;
    if (serveOpts.dmaLimits) Object.assign(device.dma.limits, serveOpts.dmaLimits);
    if (serveOpts.maxDirtyBitmapBytes !== undefined) device.logging.maxBitmapBytes = serveOpts.maxDirtyBitmapBytes;
    device.realize();
  }

  /** Listens on `path` and serves clients one after another. */
  static async listen(device: VfioUserDevice, path: string, opts: ServeOptions = {}): Promise<VfioUserServer> {
    const s = new VfioUserServer(device, opts);
    s.listener = await listen(path, { maxMessageSize: s.opts.maxDataXferSize + 4096, maxFds: s.opts.maxMsgFds }, {
      ...(opts.transport ? { transport: opts.transport } : {}),
      mode: opts.mode ?? 0o600,
    });
    s.listener.onConnection = (ep) => s.incoming(ep);
    return s;
  }

  /** Serves one already connected socket; 'close' is emitted when it ends. */
  static fromFd(device: VfioUserDevice, fd: number, opts: ServeOptions = {}): VfioUserServer {
    const s = new VfioUserServer(device, opts);
    const ep = endpointFromFd(fd, { maxMessageSize: s.opts.maxDataXferSize + 4096, maxFds: s.opts.maxMsgFds }, {
      ...(opts.transport ? { transport: opts.transport } : {}),
    });
    s.incoming(ep);
    s.once('disconnected', () => void s.close());
    return s;
  }

  /** Serves an endpoint made elsewhere (tests, socket pairs). @internal */
  static fromEndpoint(device: VfioUserDevice, ep: Endpoint, opts: ServeOptions = {}): VfioUserServer {
    const s = new VfioUserServer(device, opts);
    s.incoming(ep);
    return s;
  }

  /** The socket path (null when serving an fd). */
  get path(): string | null {
    return this.listener?.path ?? null;
  }

  private incoming(ep: Endpoint): void {
    if (this.closed) {
      ep.close();
      return;
    }
    if (this.session !== null) {
      // The previous client is gone but its clean-up is still running: the
      // new one waits for it instead of being refused, and nothing is read
      // from it meanwhile (its messages wait in the socket for its session).
      if (this.session.conn.closed) {
        ep.holdReading(true);
        void this.cleanup.then(() => this.incoming(ep));
      } else this.refuse(ep);
      return;
    }
    const session = new Session(this.device, ep, this.opts);
    this.session = session;
    this.connections++;
    session.onClosed = () => this.lost(session);
    this.emit('session', session);
    ep.holdReading(false);
  }

  /**
   * A second client while one is attached: answer its first message with
   * EBUSY, then close.  It is taken no descriptor: any it sends is closed
   * as it arrives.  A silent one is dropped after refusalTimeoutMs; past
   * MAX_REFUSING of them, a new one is dropped at once.
   */
  private refuse(ep: Endpoint): void {
    this.emit('refused');
    if (this.refusing >= MAX_REFUSING) {
      ep.close();
      return;
    }
    this.refusing++;
    const timer = setTimeout(() => ep.close(), this.refusalTimeoutMs);
    timer.unref();
    // A first message is a VERSION, small; a larger one is answered as soon
    // as its header is in (the framer refuses it then), so a crowd of
    // refused clients buffers little.
    ep.setLimits(REFUSED_MAX_MESSAGE, 0);
    let answered = false;
    ep.onFrame = (f) => {
      for (const fd of f.fds) native?.close(fd);
      if (answered) return;
      answered = true;
      const h = Buffer.allocUnsafe(HEADER_SIZE);
      writeHeader(h, f.msgId, f.cmd, HEADER_SIZE, HeaderFlag.TYPE_REPLY | HeaderFlag.ERROR, Errno.EBUSY);
      try {
        ep.send(h, null, null);
      } catch {
        // gone already
      }
      void ep.whenDrained().then(() => ep.close());
    };
    ep.onClose = () => {
      clearTimeout(timer);
      this.refusing--;
    };
    ep.holdReading(false);
  }

  /**
   * The client is gone: each clean-up step runs even if an earlier one (a
   * device callback) throws, so nothing it held is leaked.  A device left
   * mid-migration is walked back to RUNNING first (the kernel's vfio-pci
   * does the same when its device file is closed): a source in
   * PRE_COPY/STOP_COPY resumes, a destination in RESUMING drops what it
   * received.  Then the reset callback runs with 'lost-connection'.
   */
  private lost(session: Session): void {
    if (this.session !== session) return;
    const dev = this.device;
    const step = async (what: string, fn: () => unknown): Promise<void> => {
      try {
        await fn();
      } catch (e) {
        dev.log('warn', `cleanup after lost connection: ${what}: ${(e as Error)?.message ?? e}`);
      }
    };
    this.cleanup = (async () => {
      await step('quiesce', () => dev.quiesce());
      dev.dma.messages = null;
      await step('DMA mappings', () => dev.dma.unmapAll());
      await step('interrupts', () => dev.irqs.reset());
      await step('dirty logging', () => dev.logging.stop());
      await step('migration', () => this.abandonMigration());
      await step('reset', () => dev.reset('lost-connection'));
      dev.resume();
    })();
    void this.cleanup.then(() => {
      if (this.session === session) this.session = null;
      dev.emit('disconnected');
      this.emit('disconnected');
    });
  }

  /** Back to RUNNING from any migration state but ERROR (the reset handles that). */
  private async abandonMigration(): Promise<void> {
    const mig = this.device.migration;
    if (mig === null) return;
    // A failing arc (a destination refusing partial data) usually discards
    // what it refused: one more attempt then goes through.
    for (let attempt = 0; attempt < 2 && mig.state !== MigState.RUNNING && mig.state !== MigState.ERROR; attempt++) {
      try {
        await mig.setState(MigState.RUNNING);
      } catch (e) {
        this.device.log('warn', `lost connection in migration state ${migStateNames[mig.state]}: ${(e as Error)?.message ?? e}`);
      }
    }
  }

  /** Ref/unref: whether the listening socket keeps the process alive. */
  ref(keep: boolean): void {
    this.listener?.ref(keep);
  }

  /** Stops listening, drops the client, releases the device's resources. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.listener?.close();
    this.session?.close();
    await this.cleanup;
    this.device.dispose();
    this.emit('close');
  }
}
