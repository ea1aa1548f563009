// `vfu trace`: a transparent logging proxy between a vfio-user client and
// server, and a reader for the traces it (or the recorder of test/vectors)
// writes.
//
//   vfu trace --listen PATH --connect UPSTREAM [--json FILE] [--quiet]
//   vfu trace --read FILE [--json [OUT]]
//
// Live mode listens on PATH (mode 0600).  Each client that connects gets its
// own connection to UPSTREAM, and whole messages are relayed both ways as
// they arrive: the framer reassembles each message, and it is sent on in one
// sendmsg() with the SCM_RIGHTS descriptors it came with (our copies are
// closed once that send has completed).  Every message is printed as one
// line (relative time, connection, direction, describeMessage()), and with
// --json also written as one JSON object per line in the format of
// test/vectors/*.jsonl (see test/vectors/README.md), plus `listening`,
// `connected`, `eof` and `closed` events.
//
// Twin sockets are proxied, not stripped: when the server's VERSION reply
// offers a twin socket (capabilities.twin_socket.fd_index), the proxy keeps
// the server's descriptor, makes a socket pair, hands one end to the client
// in its place (same index, so the JSON needs no change) and relays between
// the two like the main socket.  Messages seen on the twin are recorded with
// `"twin": true` (the only field this format adds).
//
// Limits: a message larger than maxMessageSize (256 MiB + 64 KiB) cannot be
// relayed (the framer does not keep its body), so that connection is closed,
// logged as a `rejected` event.  There is no flow control: a peer that stops reading makes the
// proxy queue what the other sends.
import { closeSync, fstatSync, openSync, readFileSync, readlinkSync, writeSync } from 'node:fs';
import { requireNative } from '../native/index.js';
import { parseCapabilities } from '../protocol/capabilities.js';
import { Command, HEADER_SIZE, HeaderFlag, LINUX_MAX_FDS, commandName, errnoName } from '../protocol/constants.js';
import { describeFds, describeMessage } from '../protocol/describe.js';
import { isReply, writeHeader } from '../protocol/header.js';
import { version } from '../protocol/messages/version.js';
import type { Endpoint } from '../transport/endpoint.js';
import type { Frame } from '../transport/framer.js';
import { NativeEndpoint } from '../transport/native-endpoint.js';
import { listen, type Listener } from '../transport/socket.js';

/** One message as recorded (test/vectors/README.md). */
export interface TraceMessageRecord {
  seq: number;
  t: number;
  label?: string;
  conn: number;
  dir: 'c2s' | 's2c';
  msg_id: number;
  cmd: number;
  cmd_name: string;
  msg_size: number;
  flags: number;
  type: string;
  no_reply: boolean;
  error: boolean;
  error_no: number;
  nfds: number;
  fds: string[];
  payload_len: number;
  payload: string;
  payload_truncated: boolean;
  /** Seen on the twin socket (our addition). */
  twin?: boolean;
  /** The framer refused the message with this errno (our addition). */
  rejected?: number;
  /** The kernel dropped some descriptors (MSG_CTRUNC; our addition). */
  fds_truncated?: boolean;
}
/** An event line: listening, connected, eof, closed, marker... */
export interface TraceEventRecord {
  seq?: number;
  t?: number;
  label?: string;
  conn?: number;
  dir?: string;
  event: string;
  [k: string]: unknown;
}
export type TraceRecord = TraceMessageRecord | TraceEventRecord;

export function isMessageRecord(r: TraceRecord): r is TraceMessageRecord {
  return !('event' in r) && typeof (r as TraceMessageRecord).cmd === 'number';
}

// ------------------------------------------------------------------ output

/**
 * JSON with the separators of Python's json.dumps (", " and ": "), the
 * spelling of the recorded traces.
 */
export function toJsonLine(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(toJsonLine).join(', ')}]`;
  if (v !== null && typeof v === 'object') {
    const parts: string[] = [];
    for (const [k, x] of Object.entries(v)) if (x !== undefined) parts.push(`${JSON.stringify(k)}: ${toJsonLine(x)}`);
    return `{${parts.join(', ')}}`;
  }
  return JSON.stringify(v) ?? 'null';
}

export interface FormatOptions {
  /** Data bytes shown in hex per line (describeMessage's maxData). */
  maxData?: number;
}

function timeField(t: number | undefined): string {
  return (t === undefined ? '-' : t.toFixed(6)).padStart(11);
}

function connTag(r: { label?: unknown; conn?: unknown }): string {
  const label = typeof r.label === 'string' ? r.label : '';
  return typeof r.conn === 'number' ? `${label}#${r.conn}` : label;
}

/** The human line for one record (`t` overrides the record's own time). */
export function formatRecord(r: TraceRecord, opts: FormatOptions = {}, t: number | undefined = r.t): string {
  if (isMessageRecord(r)) {
    const payload = Buffer.from(r.payload, 'hex');
    const text = describeMessage(
      { msgId: r.msg_id, cmd: r.cmd, msgSize: r.msg_size, flags: r.flags, errorNo: r.error_no },
      payload,
      {
        ...(opts.maxData !== undefined ? { maxData: opts.maxData } : {}),
        ...(r.rejected !== undefined ? { rejected: r.rejected } : {}),
        ...(r.payload_truncated ? { payloadTruncated: true } : {}),
      },
    );
    const fds = describeFds(r.fds ?? []);
    const notes = [fds, r.fds_truncated ? '(descriptors lost: MSG_CTRUNC)' : ''].filter(Boolean).join(' ');
    return `${timeField(t)} ${connTag(r)} ${r.dir}${r.twin ? '(twin)' : ''} ${text}${notes ? ` ${notes}` : ''}`;
  }
  const e = r as TraceEventRecord;
  const { seq: _s, t: _t, label: _l, conn: _c, dir, event, mono: _m, ...rest } = e;
  let what: string;
  switch (event) {
    case 'listening':
      what = `listening on ${String(rest['listen'])} -> ${String(rest['upstream'])}`;
      break;
    case 'connected':
      what = `connected${rest['upstream'] !== undefined ? ` to ${String(rest['upstream'])}` : ''}`;
      break;
    default:
      what = `${event}${Object.keys(rest).length > 0 ? ` ${JSON.stringify(rest)}` : ''}`;
  }
  const tag = connTag(e);
  return `${timeField(t)}${tag ? ` ${tag}` : ''}${typeof dir === 'string' ? ` ${dir}` : ''} -- ${what}`;
}

/**
 * Human lines for a whole trace, one per record.  Lines with no `t` of their
 * own (the QEMU traces' `marker`s) get one from their `mono` clock when an
 * earlier line had both.
 */
export function formatTrace(records: readonly TraceRecord[], opts: FormatOptions = {}): string[] {
  let monoOffset: number | undefined;
  return records.map((r) => {
    const mono = (r as TraceEventRecord)['mono'];
    let t = r.t;
    if (typeof mono === 'number') {
      if (t !== undefined) monoOffset = mono - t;
      else if (monoOffset !== undefined) t = Math.round((mono - monoOffset) * 1e6) / 1e6;
    }
    return formatRecord(r, opts, t);
  });
}

/** Parses a JSON-lines trace (blank lines skipped; errors name the line). */
export function readTraceFile(path: string): TraceRecord[] {
  const out: TraceRecord[] = [];
  readFileSync(path, 'utf8')
    .split('\n')
    .forEach((line, i) => {
      if (line.trim() === '') return;
      let v: unknown;
      try {
        v = JSON.parse(line);
      } catch (e) {
        throw new Error(`${path}:${i + 1}: ${(e as Error).message}`);
      }
      if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error(`${path}:${i + 1}: not a JSON object`);
      const r = v as TraceRecord;
      if (!('event' in r) && !isMessageRecord(r)) throw new Error(`${path}:${i + 1}: neither a message nor an event`);
      out.push(r);
    });
  return out;
}

// ------------------------------------------------------------- descriptors

/**
 * What a descriptor is, the way the recorded traces say it: the
 * /proc/self/fd link for anonymous inodes ("anon_inode:[eventfd]"), and for
 * files a neutral name ("memfd" for memfd_create files, else "memfile"),
 * "(deleted)" when unlinked, the file type and, for regular files, the size.
 */
export function describeFd(fd: number): string {
  let link: string;
  try {
    link = readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return `fd ${fd} (unknown)`;
  }
  if (link.startsWith('anon_inode:')) return link;
  if (link.startsWith('socket:')) return 'socket';
  if (link.startsWith('pipe:')) return 'pipe';
  let kind = 'other';
  let size: number | null = null;
  try {
    const st = fstatSync(fd);
    if (st.isFile()) {
      kind = 'regular';
      size = st.size;
    } else if (st.isCharacterDevice()) kind = 'char';
    else if (st.isBlockDevice()) kind = 'block';
    else if (st.isDirectory()) kind = 'directory';
    else if (st.isFIFO()) kind = 'fifo';
  } catch {
    return link;
  }
  const deleted = link.endsWith(' (deleted)');
  const name = link.startsWith('/memfd:') ? 'memfd' : kind === 'regular' ? 'memfile' : 'file';
  return `${name}${deleted ? ' (deleted)' : ''} [${kind}${size !== null ? `, size=${size}` : ''}]`;
}

// ------------------------------------------------------------------- proxy

export interface TraceProxyOptions {
  /** Socket path to listen on (created mode 0600). */
  listen: string;
  /** The real server's socket path. */
  connect: string;
  /** Write JSON lines to this file (truncated first). */
  json?: string;
  /** `label` field of every line. */
  label?: string;
  /** Print nothing (JSON only). */
  quiet?: boolean;
  /** Where human lines go (default: stdout). */
  out?: (line: string) => void;
  /** Every record, as written (tests). */
  onRecord?: (r: TraceRecord) => void;
  /** Payload bytes kept in the JSON per message (0: all; default 4 MiB). */
  maxPayload?: number;
  /** Largest message relayed (default 256 MiB + 64 KiB). */
  maxMessageSize?: number;
  /** Data bytes shown per human line. */
  maxData?: number;
}

export interface TraceProxy {
  readonly path: string;
  /** Connections accepted so far. */
  readonly connections: number;
  /** Connections still open. */
  readonly active: number;
  /** Stops listening, closes every connection, flushes the JSON file. */
  close(): Promise<void>;
}

type Dir = 'c2s' | 's2c';

class ProxyConnection {
  private twinSpliced = false;
  private ending = false;
  private closedEps = 0;
  private readonly eps: Endpoint[];
  readonly done: Promise<void>;
  private resolveDone!: () => void;

  constructor(
    private readonly p: TraceProxyImpl,
    readonly conn: number,
    private readonly client: Endpoint,
    private readonly server: Endpoint,
  ) {
    this.done = new Promise((r) => (this.resolveDone = r));
    this.eps = [client, server];
    client.onFrame = (f) => this.relay(f, 'c2s', server, false);
    server.onFrame = (f) => this.relay(f, 's2c', client, false);
    client.onClose = (err) => this.ended(client, 'c2s', err);
    server.onClose = (err) => this.ended(server, 's2c', err);
  }

  private relay(f: Frame, dir: Dir, to: Endpoint, twin: boolean): void {
    const names = f.fds.map(describeFd);
    this.p.message(this.conn, dir, f, names, twin);
    let fds = f.fds;
    if (f.rejected !== undefined && f.msgSize >= HEADER_SIZE) {
      // Too large (or too many descriptors): the body is gone, so the
      // stream cannot be relayed faithfully any more.
      for (const fd of fds) requireNative('trace').close(fd);
      this.p.event({ conn: this.conn, dir, event: 'rejected', error: errnoName(f.rejected), msg_size: f.msgSize });
      this.shutdown();
      return;
    }
    if (!twin && dir === 's2c' && f.cmd === Command.VERSION && isReply(f.flags) && fds.length > 0) {
      fds = this.spliceTwin(f, fds);
    }
    const h = Buffer.allocUnsafe(HEADER_SIZE);
    // A header shorter than 16 bytes (msg_size < 16) was framed as a bare
    // header: pass those 16 bytes on unchanged, the receiver judges them.
    writeHeader(h, f.msgId, f.cmd, f.msgSize, f.flags, f.errorNo);
    // Every descriptor sent is our copy: closed once the send has completed.
    const sent = fds;
    const closeSent = (): void => {
      for (const fd of sent) requireNative('trace').close(fd);
    };
    try {
      to.send(h, f.payload.length > 0 ? f.payload : null, sent.length > 0 ? sent : null);
    } catch {
      closeSent();
      return;
    }
    if (sent.length > 0) void to.whenDrained().then(closeSent);
  }

  /**
   * The server offers a twin socket: keep its end, give the client one end
   * of a new pair instead, and relay between them.  Returns the descriptors
   * to send on (the server's end is not among them: it stays open, ours).
   */
  private spliceTwin(f: Frame, fds: number[]): number[] {
    let idx: number | undefined;
    try {
      const v = version.decode(f.payload);
      const caps = parseCapabilities(v.json, v.nul);
      if (caps.twinSocket?.supported) idx = caps.twinSocket.fdIndex;
    } catch {
      return fds;
    }
    if (idx === undefined || idx >= fds.length || this.twinSpliced) return fds;
    const n = requireNative('trace: twin socket');
    const serverFd = fds[idx]!;
    const [ours, theirs] = n.socketpair();
    n.setNonBlocking(serverFd);
    const limits = this.p.limits;
    const ts = new NativeEndpoint(serverFd, limits);
    const tc = new NativeEndpoint(ours, limits);
    this.twinSpliced = true;
    this.eps.push(ts, tc);
    ts.onFrame = (x) => this.relay(x, 's2c', tc, true);
    tc.onFrame = (x) => this.relay(x, 'c2s', ts, true);
    ts.onClose = (err) => this.ended(ts, 's2c', err, true);
    tc.onClose = (err) => this.ended(tc, 'c2s', err, true);
    const out = [...fds];
    out[idx] = theirs;
    return out;
  }

  private ended(ep: Endpoint, dir: Dir, err: Error | null, twin = false): void {
    this.closedEps++;
    if (!this.ending) {
      this.p.event({ conn: this.conn, dir, event: 'eof', ...(twin ? { twin: true } : {}), ...(err ? { error: err.message } : {}) });
      this.shutdown();
    } else if (ep === this.client || ep === this.server) {
      this.p.event({ conn: this.conn, dir, event: 'eof' });
    }
    if (this.closedEps === this.eps.length) {
      this.p.event({ conn: this.conn, event: 'closed' });
      this.resolveDone();
    }
  }

  /** Lets queued data go out, then closes every endpoint of this connection. */
  shutdown(): void {
    if (this.ending) return;
    this.ending = true;
    const open = this.eps.filter((e) => !e.closed);
    const closeAll = (): void => {
      clearTimeout(timer);
      for (const e of this.eps) if (!e.closed) e.close();
    };
    // a peer that stopped reading must not keep the connection open forever
    const timer = setTimeout(closeAll, 2000);
    void Promise.all(open.map((e) => e.whenDrained())).then(closeAll);
  }
}

class TraceProxyImpl implements TraceProxy {
  connections = 0;
  private seq = 0;
  private readonly t0 = process.hrtime.bigint();
  private jsonFd: number | null = null;
  private listener: Listener | null = null;
  private readonly live = new Set<ProxyConnection>();
  private closed = false;
  readonly limits: { maxMessageSize: number; maxFds: number };

  constructor(readonly opts: TraceProxyOptions) {
    this.limits = { maxMessageSize: opts.maxMessageSize ?? 256 * 1024 * 1024 + 65536, maxFds: LINUX_MAX_FDS };
  }

  get path(): string {
    return this.opts.listen;
  }
  get active(): number {
    return this.live.size;
  }

  async start(): Promise<void> {
    requireNative('vfu trace (descriptor passing)');
    if (this.opts.json !== undefined) this.jsonFd = openSync(this.opts.json, 'w', 0o600);
    this.listener = await listen(this.opts.listen, this.limits, { transport: 'native', mode: 0o600 });
    this.listener.onConnection = (ep) => this.accept(ep);
    this.event({ event: 'listening', listen: this.opts.listen, upstream: this.opts.connect, pid: process.pid });
  }

  private now(): number {
    return Math.round(Number(process.hrtime.bigint() - this.t0) / 1000) / 1e6;
  }

  private accept(client: Endpoint): void {
    const conn = ++this.connections;
    const n = requireNative('vfu trace');
    const fd = n.connect(this.opts.connect);
    if (fd < 0) {
      this.event({ conn, event: 'connect-failed', upstream: this.opts.connect, error: errnoName(-fd) });
      client.close();
      return;
    }
    const server = new NativeEndpoint(fd, this.limits);
    this.event({ conn, event: 'connected', listen: this.opts.listen, upstream: this.opts.connect });
    const c = new ProxyConnection(this, conn, client, server);
    this.live.add(c);
    void c.done.then(() => this.live.delete(c));
  }

  private emit(r: TraceRecord): void {
    if (this.jsonFd !== null) writeSync(this.jsonFd, `${toJsonLine(r)}\n`);
    if (!this.opts.quiet) (this.opts.out ?? ((l: string) => void process.stdout.write(`${l}\n`)))(formatRecord(r, this.opts.maxData !== undefined ? { maxData: this.opts.maxData } : {}));
    this.opts.onRecord?.(r);
  }

  event(fields: Omit<TraceEventRecord, 'seq' | 't' | 'label'>): void {
    const { conn, ...rest } = fields;
    this.emit({
      seq: ++this.seq,
      t: this.now(),
      ...(this.opts.label !== undefined ? { label: this.opts.label } : {}),
      ...(conn !== undefined ? { conn } : {}),
      ...rest,
    } as TraceEventRecord);
  }

  message(conn: number, dir: Dir, f: Frame, fds: string[], twin: boolean): void {
    const max = this.opts.maxPayload ?? 4 * 1024 * 1024;
    const truncated = max > 0 && f.payload.length > max;
    const type = f.flags & HeaderFlag.TYPE_MASK;
    const r: TraceMessageRecord = {
      seq: ++this.seq,
      t: this.now(),
      ...(this.opts.label !== undefined ? { label: this.opts.label } : {}),
      conn,
      dir,
      msg_id: f.msgId,
      cmd: f.cmd,
      cmd_name: commandName(f.cmd),
      msg_size: f.msgSize,
      flags: f.flags,
      type: type === HeaderFlag.TYPE_COMMAND ? 'command' : type === HeaderFlag.TYPE_REPLY ? 'reply' : `type${type}`,
      no_reply: (f.flags & HeaderFlag.NO_REPLY) !== 0,
      error: (f.flags & HeaderFlag.ERROR) !== 0,
      error_no: f.errorNo,
      nfds: fds.length,
      fds,
      payload_len: f.payload.length,
      payload: (truncated ? f.payload.subarray(0, max) : f.payload).toString('hex'),
      payload_truncated: truncated,
      ...(twin ? { twin: true } : {}),
      ...(f.rejected !== undefined ? { rejected: f.rejected } : {}),
      ...(f.fdsTruncated ? { fds_truncated: true } : {}),
    };
    this.emit(r);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.listener?.close();
    const all = [...this.live];
    for (const c of all) c.shutdown();
    await Promise.all(all.map((c) => c.done));
    if (this.jsonFd !== null) closeSync(this.jsonFd);
    this.jsonFd = null;
  }
}

/** Starts the logging proxy (what `vfu trace --listen --connect` runs). */
export async function startTraceProxy(opts: TraceProxyOptions): Promise<TraceProxy> {
  const p = new TraceProxyImpl(opts);
  await p.start();
  return p;
}

// --------------------------------------------------------------------- CLI

export interface TraceCliOptions {
  listen?: string;
  connect?: string;
  json?: string | boolean;
  quiet?: boolean;
  read?: string;
  label?: string;
  maxPayload?: string;
  maxData?: string;
}

function intOption(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`--${name} must be a non-negative integer`);
  return n;
}

export async function traceCommand(o: TraceCliOptions): Promise<void> {
  const maxData = intOption(o.maxData, 'max-data');
  const fmt = maxData !== undefined ? { maxData } : {};
  if (o.read !== undefined) {
    // `vfu trace --read F | head` is fine
    process.stdout.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EPIPE') process.exit(0);
      throw e;
    });
    if (o.listen !== undefined || o.connect !== undefined) throw new Error('--read does not go with --listen/--connect');
    const records = readTraceFile(o.read);
    const lines = formatTrace(records, fmt);
    if (o.json === undefined || o.json === false) {
      process.stdout.write(lines.map((l) => `${l}\n`).join(''));
      return;
    }
    // --json: the records again, each with its line as "text"
    const out = records.map((r, i) => `${toJsonLine({ ...r, text: lines[i] })}\n`).join('');
    if (typeof o.json === 'string') {
      const fd = openSync(o.json, 'w', 0o600);
      writeSync(fd, out);
      closeSync(fd);
    } else {
      process.stdout.write(out);
    }
    return;
  }
  if (o.listen === undefined || o.connect === undefined) throw new Error('give --listen PATH and --connect UPSTREAM, or --read FILE');
  if (o.json === true) throw new Error('--json needs a FILE in live mode');
  const maxPayload = intOption(o.maxPayload, 'max-payload');
  const proxy = await startTraceProxy({
    listen: o.listen,
    connect: o.connect,
    ...(typeof o.json === 'string' ? { json: o.json } : {}),
    ...(o.label !== undefined ? { label: o.label } : {}),
    ...(o.quiet ? { quiet: true } : {}),
    ...(maxPayload !== undefined ? { maxPayload } : {}),
    ...fmt,
  });
  const stop = (): void => {
    void proxy.close().then(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
