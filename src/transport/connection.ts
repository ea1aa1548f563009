// Request/reply matching over one or two endpoints.
//
// Message ids belong to their sender: we number our own requests (16 bits,
// skipping ids still in flight) and echo the peer's ids in our replies.
// Commands from the peer may arrive between one of our requests and its
// reply; they go to onCommand.  With twin-socket mode the requests that flow
// against the main direction (server->client DMA) use a second endpoint.
import { Errno, HEADER_SIZE, HeaderFlag, commandName } from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';
import { isReply, writeHeader } from '../protocol/header.js';
import { copyOf } from '../util/bytes.js';
import type { Endpoint } from './endpoint.js';
import type { Frame } from './framer.js';

/** A copied reply: safe to keep after the callback. */
export interface Reply {
  msgId: number;
  cmd: number;
  flags: number;
  payload: Buffer;
  fds: number[];
}

export interface RequestOptions {
  fds?: readonly number[] | null;
  /** Second payload part, sent in the same sendmsg (no concatenation). */
  extra?: Buffer | null;
  /**
   * The caller leaves `extra` unchanged until the request settles: what the
   * socket does not take at once is queued by reference, not copied (see
   * Endpoint.send).  Not for noReply requests, which settle when queued.
   */
  extraStable?: boolean;
  /** Fire and forget: sets No_reply and resolves once queued. */
  noReply?: boolean;
  /** Overrides the connection's reply timeout (0: none). */
  timeoutMs?: number;
  /**
   * What the request is for, in words, for the RemoteError of a refusal
   * (a function: worded only then).
   */
  what?: string | (() => string);
}

/** Turns a reply frame into the caller's value while its view is valid. */
export type ReplyParser<T> = (f: Frame) => T;

interface Pending {
  cmd: number;
  parse: ReplyParser<unknown>;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  deadline: number;
  what: string | (() => string) | undefined;
}

/** Longest reason text sent or accepted in an error reply (bytes). */
export const MAX_ERROR_TEXT = 512;

/**
 * An error reply from the peer: the command it refused, its errno, and its
 * own reason when the peer sends one (our `vfu_error_text` extension).
 */
export class RemoteError extends VfuError {
  /** The command the peer refused (a Command value). */
  readonly command: number;
  /** The peer's reason, when it gave one. */
  readonly reason: string | null;
  /** What the request was for, in words ("SET migration state STOP"), when the caller said. */
  readonly what: string | null;
  /** The peer refused `cmd` with `errno` (and `reason`, when it sent one); `what` says what it was for. */
  constructor(errno: number, cmd: number, reason: string | null = null, what: string | null = null) {
    const head = `the peer refused ${commandName(cmd)}${what ? ` (${what})` : ''}`;
    super(errno, reason ? `${head}: ${reason}` : head);
    this.name = 'RemoteError';
    this.command = cmd;
    this.reason = reason;
    this.what = what;
  }

  /** The same refusal, saying what the request was for. */
  about(what: string): RemoteError {
    return new RemoteError(this.errno, this.command, this.reason, what);
  }
}

/** A peer's reason text, made printable (no control characters). */
function reasonText(payload: Buffer): string | null {
  if (payload.length === 0) return null;
  // eslint-disable-next-line no-control-regex
  const t = payload.subarray(0, MAX_ERROR_TEXT).toString('utf8').replace(/[\x00-\x1f\x7f]+/g, ' ').trim();
  return t === '' ? null : t;
}

export const copyReply: ReplyParser<Reply> = (f) => ({
  msgId: f.msgId,
  cmd: f.cmd,
  flags: f.flags,
  payload: copyOf(f.payload),
  fds: f.fds,
});

/** Highest errno accepted from a peer; anything else reads as EINVAL. */
const MAX_ERRNO = 4095;

export interface ConnectionOptions {
  /** Reply timeout in ms for our requests; 0 disables. */
  replyTimeoutMs?: number;
  /** Most requests of ours in flight at once (ENOSPC beyond). */
  maxPending?: number;
  /** Closes descriptors the framer hands us and nobody claims. */
  closeFd: (fd: number) => void;
}

export class Connection {
  /** Commands from the peer (replies are consumed here). */
  onCommand: (f: Frame, via: Endpoint) => void = () => {};
  /** Called once when the main endpoint closes. */
  onClose: (err: Error | null) => void = () => {};
  /** Protocol oddities seen (unknown reply ids, mismatched replies). */
  protocolErrors = 0;
  /** Error replies carry reason text, both ways (negotiated: `vfu_error_text`). */
  errorText = false;
  /** Traffic counters (messages and bytes, both directions). */
  readonly stats = { sent: 0, received: 0, bytesSent: 0, bytesReceived: 0 };

  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  private twin: Endpoint | null = null;
  private twinForRequests = false;
  private timer: NodeJS.Timeout | null = null;
  private timerPeriod = 0;
  private readonly hdr = Buffer.allocUnsafe(HEADER_SIZE);
  private _closed = false;
  private readonly replyTimeoutMs: number;
  private readonly maxPending: number;

  constructor(
    readonly main: Endpoint,
    private readonly opts: ConnectionOptions,
  ) {
    this.replyTimeoutMs = opts.replyTimeoutMs ?? 0;
    this.maxPending = opts.maxPending ?? 4096;
    main.onFrame = (f) => this.onFrame(f, main);
    main.onClose = (err) => this.shutdown(err);
  }

  get closed(): boolean {
    return this._closed;
  }

  get inFlight(): number {
    return this.pending.size;
  }

  /** Whether a twin socket was negotiated. */
  get hasTwin(): boolean {
    return this.twin !== null;
  }

  /**
   * Endpoint our requests go out on.  The twin socket carries only the
   * server's requests (DMA_READ/WRITE) and their replies, so it is ours to
   * request on when we are the server, never when we are the client.
   */
  get requestEndpoint(): Endpoint {
    return this.twinForRequests && this.twin ? this.twin : this.main;
  }

  /**
   * Adds the twin socket: `requestsGoThere` for the server (its requests and
   * their replies travel on it); false for the client, which answers the
   * server's requests there and keeps its own on the main socket.
   */
  attachTwin(twin: Endpoint, requestsGoThere: boolean): void {
    this.twin = twin;
    this.twinForRequests = requestsGoThere;
    twin.onFrame = (f) => this.onFrame(f, twin);
    twin.onClose = (err) => {
      if (!this._closed) this.shutdown(err ?? new VfuError(Errno.ECONNRESET, 'twin socket closed'));
    };
  }

  private onFrame(f: Frame, via: Endpoint): void {
    this.stats.received++;
    this.stats.bytesReceived += f.msgSize;
    if (isReply(f.flags)) {
      this.onReply(f);
      return;
    }
    this.onCommand(f, via);
  }

  private onReply(f: Frame): void {
    const p = this.pending.get(f.msgId);
    if (p === undefined || p.cmd !== f.cmd || f.rejected !== undefined) {
      // Unknown id, wrong command, or a reply we could not even frame.
      this.protocolErrors++;
      for (const fd of f.fds) this.opts.closeFd(fd);
      if (p !== undefined && f.rejected !== undefined) {
        this.pending.delete(f.msgId);
        p.reject(new VfuError(f.rejected, `${commandName(f.cmd)} reply refused`));
      }
      return;
    }
    this.pending.delete(f.msgId);
    if (f.flags & HeaderFlag.ERROR) {
      for (const fd of f.fds) this.opts.closeFd(fd);
      const e = f.errorNo > 0 && f.errorNo <= MAX_ERRNO ? f.errorNo : Errno.EINVAL;
      const what = p.what === undefined ? null : typeof p.what === 'string' ? p.what : p.what();
      p.reject(new RemoteError(e, f.cmd, this.errorText ? reasonText(f.payload) : null, what));
      return;
    }
    let v: unknown;
    try {
      v = p.parse(f);
    } catch (e) {
      p.reject(e as Error);
      return;
    }
    p.resolve(v);
  }

  /**
   * Runs `fn`, whose requests leave together once it returns (see
   * Endpoint.cork): pipelined requests then reach the peer in one read.
   */
  batch<T>(fn: () => T): T {
    const ep = this.requestEndpoint;
    ep.cork();
    try {
      return fn();
    } finally {
      ep.uncork();
    }
  }

  /** Sends a request and resolves with its parsed reply. */
  request<T = Reply>(
    cmd: number,
    payload: Buffer | null,
    opts: RequestOptions = {},
    parse: ReplyParser<T> = copyReply as unknown as ReplyParser<T>,
  ): Promise<T> {
    if (this._closed) return Promise.reject(new VfuError(Errno.ENOTCONN, `${commandName(cmd)}: not connected`));
    const ep = this.requestEndpoint;
    const id = this.allocId();
    if (id < 0) return Promise.reject(new VfuError(Errno.ENOSPC, 'too many requests in flight'));
    const size = HEADER_SIZE + (payload ? payload.length : 0) + (opts.extra ? opts.extra.length : 0);
    const flags = HeaderFlag.TYPE_COMMAND | (opts.noReply ? HeaderFlag.NO_REPLY : 0);
    const stable = !opts.noReply && opts.extraStable === true;
    if (opts.noReply) {
      // Failures reject like every other request instead of throwing.
      try {
        this.sendRaw(ep, id, cmd, size, flags, 0, payload, opts.extra ?? null, opts.fds ?? null);
      } catch (e) {
        return Promise.reject(e as Error);
      }
      return Promise.resolve(undefined as T);
    }
    return new Promise<T>((resolve, reject) => {
      const timeout = opts.timeoutMs ?? this.replyTimeoutMs;
      this.pending.set(id, {
        cmd,
        parse: parse as ReplyParser<unknown>,
        resolve: resolve as (v: unknown) => void,
        reject,
        deadline: timeout > 0 ? Date.now() + timeout : Infinity,
        what: opts.what,
      });
      if (timeout > 0) this.armTimer(timeout);
      try {
        this.sendRaw(ep, id, cmd, size, flags, 0, payload, opts.extra ?? null, opts.fds ?? null, stable);
      } catch (e) {
        this.pending.delete(id);
        reject(e as Error);
      }
    });
  }

  /**
   * Replies to `req` (received on `via`) with a payload.  `extra`, the large
   * part of a reply (a dirty bitmap, a capability chain), is handed over:
   * what the socket does not take at once is queued by reference, never
   * copied (a 256 MiB bitmap must not cost 512), so the caller leaves it
   * unchanged until the endpoint drains; `extraStable` false copies it
   * instead (a view of memory that may change or go away).
   */
  reply(
    via: Endpoint,
    req: Frame,
    payload: Buffer | null,
    extra: Buffer | null = null,
    fds: readonly number[] | null = null,
    extraStable = true,
  ): void {
    if (req.flags & HeaderFlag.NO_REPLY || via.closed) return;
    const size = HEADER_SIZE + (payload ? payload.length : 0) + (extra ? extra.length : 0);
    this.sendRaw(via, req.msgId, req.cmd, size, HeaderFlag.TYPE_REPLY, 0, payload, extra, fds, extraStable);
  }

  /**
   * Replies to `req` with an error: no payload (what the spec asks), or the
   * `reason` text when `errorText` was negotiated.
   */
  replyError(via: Endpoint, req: Frame, errno: number, reason?: string): void {
    if (req.flags & HeaderFlag.NO_REPLY || via.closed) return;
    const text = this.errorText && reason ? Buffer.from(reason, 'utf8').subarray(0, MAX_ERROR_TEXT) : null;
    const size = HEADER_SIZE + (text ? text.length : 0);
    this.sendRaw(via, req.msgId, req.cmd, size, HeaderFlag.TYPE_REPLY | HeaderFlag.ERROR, errno, text, null, null);
  }

  /**
   * Sends a reply whose header and payload the caller already laid out in
   * one buffer (header at 0): the zero-copy path for hot commands.  With
   * `extraStable`, `extra` goes by reference (see Endpoint.send).
   */
  replyPrebuilt(via: Endpoint, req: Frame, frame: Buffer, extra: Buffer | null = null, extraStable = false): void {
    if (req.flags & HeaderFlag.NO_REPLY || via.closed) return;
    const size = frame.length + (extra ? extra.length : 0);
    this.stats.sent++;
    this.stats.bytesSent += size;
    writeHeader(frame, req.msgId, req.cmd, size, HeaderFlag.TYPE_REPLY, 0, 0);
    via.send(frame, extra, null, extraStable);
  }

  private sendRaw(
    ep: Endpoint,
    id: number,
    cmd: number,
    size: number,
    flags: number,
    errno: number,
    payload: Buffer | null,
    extra: Buffer | null,
    fds: readonly number[] | null,
    extraStable = false,
  ): void {
    this.stats.sent++;
    this.stats.bytesSent += size;
    if (payload === null || payload.length === 0) {
      writeHeader(this.hdr, id, cmd, size, flags, errno);
      ep.send(this.hdr, extra && extra.length ? extra : null, fds, extraStable);
      return;
    }
    if (extra && extra.length) {
      const first = Buffer.allocUnsafe(HEADER_SIZE + payload.length);
      writeHeader(first, id, cmd, size, flags, errno);
      payload.copy(first, HEADER_SIZE);
      ep.send(first, extra, fds, extraStable);
      return;
    }
    writeHeader(this.hdr, id, cmd, size, flags, errno);
    ep.send(this.hdr, payload, fds);
  }

  private allocId(): number {
    if (this.pending.size >= Math.min(this.maxPending, 65536)) return -1;
    for (;;) {
      const id = this.nextId;
      this.nextId = (this.nextId + 1) & 0xffff;
      if (!this.pending.has(id)) return id;
    }
  }

  private armTimer(timeout: number): void {
    const period = Math.max(5, Math.min(1000, Math.floor(timeout / 4)));
    // A shorter timeout than the running sweep's needs a faster sweep.
    if (this.timer && period >= this.timerPeriod) return;
    if (this.timer) clearInterval(this.timer);
    this.timerPeriod = period;
    this.timer = setInterval(() => this.expire(), period);
    this.timer.unref();
  }

  private expire(): void {
    const now = Date.now();
    for (const [id, p] of this.pending) {
      if (p.deadline <= now) {
        this.pending.delete(id);
        p.reject(new VfuError(Errno.ETIMEDOUT, `${commandName(p.cmd)}: no reply in time`));
      }
    }
    if (this.pending.size === 0 && this.timer) {
      clearInterval(this.timer);
      this.timer = null;
    }
  }

  /** Closes both endpoints; pending requests fail with ENOTCONN. */
  close(): void {
    this.shutdown(null);
  }

  private shutdown(err: Error | null): void {
    if (this._closed) return;
    this._closed = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    const reason = new VfuError(Errno.ENOTCONN, err ? `connection lost: ${err.message}` : 'connection closed');
    for (const p of this.pending.values()) p.reject(reason);
    this.pending.clear();
    this.main.close();
    this.twin?.close();
    this.onClose(err);
  }
}
