// Migration across machines: `vfu migrate` on the source host streams the
// device state and guest pages over TCP (or TLS, tcps://) to `vfu receive`
// on the destination host, which drives the destination server.  Framing
// (see README, "Migration stream"): every chunk is a 16-byte header
//
//   u32 magic 'VFUM' | u8 type | u8 flags | u8[2] zero | u32 payload length | u32 CRC-32 of the payload
//
// followed by the payload.  Flag 1 (UNCHECKED): no CRC (the field is zero),
// which only a TLS stream may send (AES-GCM authenticates every byte); flag 2
// (CRC32C): the field is a CRC-32C (what a sender with the addon computes
// while it copies).  HELLO has neither (so a receiver of version 1 refuses
// the version, not a CRC).  Types: HELLO (JSON: stream version and guest
// layout), ACK (JSON: {ok} or {error}), DEVICE (device state bytes), PAGES
// (u64 IOVA then the bytes), FINISH, RESULT (JSON), CHECKSUM (request or
// JSON answer), ABORT (UTF-8 reason; either side), SYNC (request, or the
// answer once everything before it is applied: JSON of RESULT's shape).
// A bad magic, type, length or CRC is a broken stream: the receiver
// resets the destination, tells the sender why (ABORT) and says which
// chunk.
import { EventEmitter } from 'node:events';
import { type Socket, connect as tcpConnect, createServer, type Server } from 'node:net';
// Imported, not the global: the global loads perf_hooks on its first use
// (about 1 ms), which in `vfu receive` was LocalTarget.finish(), with the
// guest paused.
import { performance } from 'node:perf_hooks';
import { type ConnectionOptions, type TLSSocket, type TlsOptions, connect as tlsConnect, createServer as createTlsServer } from 'node:tls';
import { crc32 } from 'node:zlib';
import { Errno } from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';
import { copyOf } from '../util/bytes.js';
import { warmNodeBuiltins } from '../util/warm.js';
import type { VfioUserClient } from './client.js';
import { type FinishTimes, LocalTarget, type GuestLayout, type MigrationTarget } from './migrate.js';
import { copyCrc32c, crc32c } from './stream-crc.js';
import { FdStream, dupSocketFd, stopReading } from './stream-fd.js';
import { peerRefusal, readIntoBuffers, secureClientDefaults, secureServerDefaults, tlsFailure } from './stream-tls.js';

/** First four bytes of every chunk ('VFUM' little-endian). */
export const STREAM_MAGIC = 0x4d554656;
/** Version carried in HELLO (2: chunks over TLS may omit their CRC). */
export const STREAM_VERSION = 2;
/** Versions a receiver accepts (a sender of version 1 always sends CRCs). */
const ACCEPTED_VERSIONS: readonly unknown[] = [1, 2];
/** The receiver's JSON answers (ACK, RESULT, SYNC, CHECKSUM), as read. */
type Answer = { ok?: boolean; error?: string; errno?: number; checksum?: string; runningMs?: unknown };

/** Chunk types of the migration stream (see the README's table). @enum */
export const ChunkType = { HELLO: 1, ACK: 2, DEVICE: 3, PAGES: 4, FINISH: 5, RESULT: 6, CHECKSUM: 7, ABORT: 8, SYNC: 9 } as const;
const HDR = 16;
/** The payload of a chunk that has none. */
const EMPTY = Buffer.alloc(0);
/** Largest payload accepted in one chunk. */
export const MAX_CHUNK = 16 * 1024 * 1024;
/**
 * Guest bytes the sender puts in one PAGES chunk: a contiguous dirty range
 * goes out as several chunks.  1 MiB keeps the copy and the CRC of a chunk
 * in cache-friendly steps while the socket writes the previous ones.
 */
const PAGES_PER_CHUNK = 1 << 20;
/** TLS: runs of guest pages from this size on are written from guest memory (see pagesInPlace). */
const TLS_DIRECT_MIN = 256 * 1024;
/** TLS: a chunk up to this size goes in one write with its header. */
const SMALL_WRITE = 64 * 1024;
/** Send buffers of PAGES chunks in flight (bounds the sender's memory). */
const PAGES_BUFFERS = 4;
/**
 * Chunks other than PAGES up to this size are packed into the send buffers
 * too (see TcpTarget.pack): the device's stop-copy data, the final pages
 * and FINISH then leave in one write.
 */
const PACK_MAX = 64 * 1024;

/** One chunk, its payload reassembled (PAGES placed by a PagePlacer carry only their IOVA). */
export interface Chunk {
  /** ChunkType. */
  type: number;
  /** Its payload (CRC checked). */
  payload: Buffer;
  /** Index of the chunk in its stream (for error messages). */
  seq: number;
  /** PAGES written straight into guest memory as they arrived: where they went. */
  placed?: Buffer;
}

/** The stream is damaged or out of order; the message names the chunk. */
export class BrokenStreamError extends VfuError {
  /** `message`: what was wrong, and in which chunk. */
  constructor(message: string) {
    super(Errno.EBADMSG, `broken migration stream: ${message}`);
    this.name = 'BrokenStreamError';
  }
}

/** The 16-byte header of a chunk carrying `payload` (with its CRC-32). */
export function encodeChunkHeader(type: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(HDR);
  writeHeader(h, type, payload.length, crc32(payload), 0);
  return h;
}

/**
 * Header flag: the payload carries no CRC-32 (the CRC field is zero).  Only
 * a TLS stream may omit it: AES-GCM authenticates every byte already.
 */
export const FLAG_UNCHECKED = 1;
/** Header flag: the CRC field is a CRC-32C (Castagnoli), not a CRC-32. */
export const FLAG_CRC32C = 2;

function writeHeader(h: Buffer, type: number, length: number, crc: number, flags: number): void {
  h.writeUInt32LE(STREAM_MAGIC, 0);
  h.writeUInt8(type, 4);
  h.writeUInt8(flags, 5);
  h.writeUInt16LE(0, 6);
  h.writeUInt32LE(length, 8);
  h.writeUInt32LE(crc, 12);
}

/**
 * Where the bytes of a PAGES chunk go as they arrive: the view of guest
 * memory for [iova, iova + length), or a throw when the range is refused.
 */
export type PagePlacer = (iova: number, length: number, seq: number) => Buffer;

/**
 * Parses chunks out of a byte stream as it arrives; throws BrokenStreamError
 * on damage.  Each payload is written once, into a buffer of its announced
 * length, or, for PAGES when a placer is given, straight into guest memory
 * (the CRC is checked when the chunk ends: a damaged stream is refused, and
 * the destination it was being written to is reset).  Bytes come in two
 * ways: push() copies what a socket read, or the caller reads straight into
 * want() and reports with wrote() (no copy).
 */
export class ChunkReader {
  /** Header, then a PAGES chunk's IOVA. */
  private readonly head = Buffer.alloc(HDR + 8);
  private have = 0;
  private type = 0;
  private len = 0;
  private crc = 0;
  /** The payload's checksum: 0 none (UNCHECKED), 1 CRC-32, 2 CRC-32C. */
  private alg = 1;
  private sum = 0;
  private body: Buffer | null = null;
  private got = 0;
  private seq = 0;

  /**
   * A reader; with `placePages`, PAGES payloads land straight in guest
   * memory; with `uncheckedAllowed` (TLS), chunks may come without a CRC.
   */
  constructor(
    private readonly placePages?: PagePlacer,
    private readonly uncheckedAllowed = false,
  ) {}

  /** Feeds bytes in (copied); returns the chunks they complete. */
  push(data: Buffer): Chunk[] {
    const out: Chunk[] = [];
    for (let at = 0; at < data.length; ) {
      const into = this.want();
      const n = Math.min(into.length, data.length - at);
      data.copy(into, 0, at, at + n);
      at += n;
      const c = this.wrote(n);
      if (c) out.push(c);
    }
    return out;
  }

  /** Where the next bytes go: exactly what the current part (header, IOVA, payload) still lacks, never empty. */
  want(): Buffer {
    if (this.body === null) return this.head.subarray(this.have, this.have < HDR ? HDR : HDR + 8);
    return this.body.subarray(this.got);
  }

  /** `n` bytes were written at the start of the last want(); returns the chunk they complete, if any. */
  wrote(n: number): Chunk | null {
    if (this.body === null) {
      this.have += n;
      if (this.have === HDR) {
        this.parseHeader();
        if (!this.wantsIova()) this.startBody(Buffer.allocUnsafe(this.len), 0);
      } else if (this.have === HDR + 8) {
        const iova = this.head.readBigUInt64LE(HDR);
        const length = this.len - 8;
        if (iova > BigInt(Number.MAX_SAFE_INTEGER - length)) throw new BrokenStreamError(`chunk ${this.seq}: PAGES at 0x${iova.toString(16)}, beyond any guest memory`);
        this.startBody(this.placePages!(Number(iova), length, this.seq), this.checksum(this.head.subarray(HDR, HDR + 8), 0));
      }
    } else {
      this.sum = this.checksum(this.body.subarray(this.got, this.got + n), this.sum);
      this.got += n;
    }
    return this.body !== null && this.got === this.body.length ? this.complete() : null;
  }

  private checksum(b: Buffer, sum: number): number {
    return this.alg === 1 ? crc32(b, sum) : this.alg === 2 ? crc32c(b, sum) : 0;
  }

  /** Bytes of an unfinished chunk (a stream cut mid-chunk leaves some). */
  get pending(): number {
    return this.have + this.got;
  }

  private parseHeader(): void {
    const h = this.head;
    const magic = h.readUInt32LE(0);
    this.type = h.readUInt8(4);
    const flags = h.readUInt8(5);
    this.len = h.readUInt32LE(8);
    this.crc = h.readUInt32LE(12);
    if (magic !== STREAM_MAGIC) throw new BrokenStreamError(`chunk ${this.seq}: bad magic 0x${magic.toString(16)}`);
    if (this.type < ChunkType.HELLO || this.type > ChunkType.SYNC) throw new BrokenStreamError(`chunk ${this.seq}: unknown type ${this.type}`);
    if ((flags !== 0 && flags !== FLAG_UNCHECKED && flags !== FLAG_CRC32C) || h.readUInt16LE(6) !== 0) throw new BrokenStreamError(`chunk ${this.seq}: reserved header bits set`);
    this.alg = flags === FLAG_UNCHECKED ? 0 : flags === FLAG_CRC32C ? 2 : 1;
    if (this.alg === 0 && (!this.uncheckedAllowed || this.crc !== 0)) throw new BrokenStreamError(`chunk ${this.seq}: no CRC-32, which only a TLS stream may omit`);
    if (this.len > MAX_CHUNK) throw new BrokenStreamError(`chunk ${this.seq}: length ${this.len} too large`);
    if (this.wantsIova() && this.len < 8) throw new BrokenStreamError(`chunk ${this.seq}: PAGES of ${this.len} bytes, shorter than its IOVA`);
  }

  private wantsIova(): boolean {
    return this.type === ChunkType.PAGES && this.placePages !== undefined;
  }

  private startBody(body: Buffer, sum: number): void {
    this.body = body;
    this.got = 0;
    this.sum = sum;
  }

  private complete(): Chunk {
    const seq = this.seq++;
    if (this.alg !== 0 && this.sum !== this.crc) throw new BrokenStreamError(`chunk ${seq}: CRC mismatch`);
    const placed = this.wantsIova();
    const c: Chunk = placed ? { type: this.type, payload: Buffer.from(this.head.subarray(HDR, HDR + 8)), seq, placed: this.body! } : { type: this.type, payload: this.body!, seq };
    this.body = null;
    this.have = 0;
    this.got = 0;
    return c;
  }
}

/** Parses tcp://HOST:PORT or tcps://HOST:PORT (TLS). */
export function parseTcpUrl(url: string): { host: string; port: number; tls: boolean } {
  const m = /^(tcps?):\/\/(\[[^\]]+\]|[^:/]+):(\d+)$/.exec(url);
  if (!m || Number(m[3]) > 65535) throw new VfuError(Errno.EINVAL, `expected tcp://HOST:PORT or tcps://HOST:PORT, got ${url}`);
  return { host: m[2]!.replace(/^\[|\]$/g, ''), port: Number(m[3]), tls: m[1] === 'tcps' };
}

/** Options of a TcpTarget. */
export interface TcpTargetOptions {
  /**
   * For tcps:// URLs: Node's tls.connect options (`cert`, `key`, `ca` for
   * mutual X.509, or `pskCallback` for TLS-PSK).  TLS 1.3 is required.
   */
  tls?: ConnectionOptions;
}

/** A write waiting for the TLS socket, and what to call once it has left. */
interface TlsWrite {
  data: Buffer;
  done: ((e?: Error | null) => void) | null;
}

/** A fixed set of reusable send buffers; take() waits for one to come back. */
class BufferPool {
  private readonly free: Buffer[] = [];
  private readonly waiters: { resolve: (b: Buffer) => void; reject: (e: Error) => void }[] = [];
  private failed: Error | null = null;
  constructor(count: number, size: number) {
    for (let i = 0; i < count; i++) this.free.push(Buffer.allocUnsafeSlow(size));
  }
  take(): Promise<Buffer> {
    if (this.failed) return Promise.reject(this.failed);
    const b = this.free.pop();
    if (b) return Promise.resolve(b);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }
  give(b: Buffer): void {
    const w = this.waiters.shift();
    if (w) w.resolve(b);
    else this.free.push(b);
  }
  /** Rejects every waiter, now and from now on (buffers in failed writes may never come back). */
  fail(e: Error): void {
    this.failed = e;
    for (const w of this.waiters.splice(0)) w.reject(e);
  }
}

/** The sending side: a MigrationTarget that forwards everything over TCP or TLS. */
export class TcpTarget implements MigrationTarget {
  /**
   * The device's stop-copy data may go while the final pages are sent:
   * each chunk is whole in the stream, and the receiver applies them in
   * order.  So the source's MIG_DATA_READ goes right behind STOP_COPY
   * (one round trip to the source less with the guest paused).
   */
  readonly concurrent = true;
  private sock: Socket | null = null;
  /** Plain TCP with the addon: every write and read goes through it (Node's socket only connects, and closes). */
  private io: FdStream | null = null;
  /** Where the addon reads the receiver's answers (their bytes are copied out). */
  private inbox: Buffer | null = null;
  private readonly reader = new ChunkReader();
  private readonly events = new EventEmitter();
  private readonly pool = new BufferPool(PAGES_BUFFERS, HDR + 8 + PAGES_PER_CHUNK);
  /** The send buffer chunks are being packed into (see pack), and how full it is. */
  private packing: Buffer | null = null;
  private packed = 0;
  private flushSoon = false;
  private failure: Error | null = null;
  private heard = false;
  private secure = false;
  /** TLS: writes waiting behind the one in flight (see tlsWrite), and their bytes. */
  private readonly tlsQueue: TlsWrite[] = [];
  private tlsQueued = 0;
  /** TLS: the write in flight. */
  private tlsBusy: TlsWrite | null = null;
  /** Bytes written to the stream (headers included). */
  bytesSent = 0;
  /** Writes handed to the socket (or the addon). @internal */
  writes = 0;

  /** A target for `vfu receive` at `url` (tcp:// or tcps:// with `opts.tls`); it connects on begin(). */
  constructor(
    private readonly url: string,
    private readonly opts: TcpTargetOptions = {},
  ) {
    const u = parseTcpUrl(url);
    if (!u.tls && opts.tls) throw new VfuError(Errno.EINVAL, `TLS options given for ${url}: use tcps://`);
    if (u.tls && !opts.tls) throw new VfuError(Errno.EINVAL, `${url} needs TLS credentials (a certificate, key and CA, or a pre-shared key)`);
  }

  private async open(): Promise<Socket> {
    const { host, port, tls } = parseTcpUrl(this.url);
    const s = await new Promise<Socket>((resolve, reject) => {
      const c: Socket = tls
        ? tlsConnect({ host, port, ...secureClientDefaults(this.opts.tls!) }, () => {
            this.secure = true;
            resolve(c);
          })
        : tcpConnect({ host, port }, () => resolve(c));
      c.once('error', (e) => reject(tls ? tlsFailure(e, 'the TLS handshake with the receiver failed') : e));
    });
    s.setNoDelay(true);
    const fd = tls ? null : dupSocketFd(s);
    if (fd) {
      // Node's stream layer out of the answers' way (the RESULT's, in the
      // window): its socket started reading at connect, and stops before
      // anything can come (the receiver answers HELLO, not sent yet)
      stopReading(s);
      this.io = new FdStream(fd.addon, fd.fd, () => this.onReadable(), (e) => this.fail(e));
      this.io.reading(true);
    } else {
      s.on('data', (d: Buffer) => this.onData(d));
    }
    // a reset or a broken pipe is no TLS failure (EACCES): it stays what it is
    s.on('error', (e: NodeJS.ErrnoException) => this.fail(this.secure && e.syscall === undefined ? tlsFailure(e, 'the receiver') : e));
    s.on('close', () => this.fail(new BrokenStreamError(this.closedWhy())));
    return s;
  }

  /** The addon: the receiver's answers are there to read. */
  private onReadable(): void {
    const io = this.io!;
    const into = (this.inbox ??= Buffer.allocUnsafe(64 * 1024));
    for (let i = 0; i < 16; i++) {
      let n: number;
      try {
        n = io.read(into);
      } catch {
        return; // failed already (FdStream's onError)
      }
      if (n < 0) return;
      if (n === 0) {
        this.fail(new BrokenStreamError(this.closedWhy()));
        return;
      }
      // a copy: the chunks made of it outlive this read
      this.onData(copyOf(into.subarray(0, n)));
    }
  }

  private onData(d: Buffer): void {
    try {
      for (const c of this.reader.push(d)) {
        this.heard = true;
        if (c.type === ChunkType.ABORT) this.fail(new VfuError(Errno.ECONNRESET, `the receiver aborted: ${c.payload.toString('utf8')}`));
        else this.events.emit('chunk', c);
      }
    } catch (e) {
      this.fail(e as Error);
    }
  }

  private closedWhy(): string {
    if (this.heard) return 'the receiver closed the connection';
    return parseTcpUrl(this.url).tls
      ? 'the receiver closed the connection without answering: it refused our credentials (certificate, CA or key; its log says which)'
      : 'the receiver closed the connection without answering (if it listens with TLS, use tcps:// and the --tls-* options)';
  }

  private fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    this.pool.fail(e);
    for (const w of [this.tlsBusy, ...this.tlsQueue.splice(0)]) w?.done?.(e);
    this.tlsBusy = null;
    this.tlsQueued = 0;
    this.io?.fail(e);
    this.io?.close();
    this.events.emit('failed', e);
    this.sock?.destroy();
  }

  /** Bytes written but not yet taken by the kernel. @internal */
  get queuedBytes(): number {
    return this.io ? this.io.queued : this.tlsQueued + (this.sock?.writableLength ?? 0);
  }

  /**
   * A chunk's header: over TLS no CRC, over plain TCP with the addon a
   * CRC-32C, else a CRC-32; HELLO always a CRC-32 (see the top of the file).
   * `sum`: the payload's CRC-32C when the caller has it already.
   */
  private header(h: Buffer, type: number, payload: Buffer, sum?: number): Buffer {
    const flags = type === ChunkType.HELLO ? 0 : this.secure ? FLAG_UNCHECKED : this.io ? FLAG_CRC32C : 0;
    const crc = flags === FLAG_UNCHECKED ? 0 : flags === FLAG_CRC32C ? (sum ?? crc32c(payload)) : crc32(payload);
    writeHeader(h, type, payload.length, crc, flags);
    return h;
  }

  /**
   * TLS: writes go to the socket one at a time, each once the one before
   * has left.  Writes queued in Node's socket behind a pending one leave
   * together (writev), and its TLS layer first copies them into one new
   * buffer: a copy of every byte sent.  One at a time, each send buffer is
   * encrypted from where it is.  `done` runs once it has left (or failed).
   */
  private tlsWrite(data: Buffer, done: ((e?: Error | null) => void) | null): void {
    this.writes++;
    this.tlsQueue.push({ data, done });
    this.tlsQueued += data.length;
    this.tlsNext();
  }

  private tlsNext(): void {
    if (this.tlsBusy || this.failure) return;
    const w = this.tlsQueue.shift();
    if (!w) return;
    this.tlsBusy = w;
    this.tlsQueued -= w.data.length;
    this.sock!.write(w.data, (e) => {
      if (this.tlsBusy !== w) return; // failed meanwhile: told already
      this.tlsBusy = null;
      w.done?.(e);
      this.tlsNext();
    });
  }

  private async send(type: number, payload: Buffer): Promise<void> {
    if (this.failure) throw this.failure;
    // a small chunk joins what is packed, and all of it leaves in one write
    if (payload.length <= PACK_MAX && this.hasRoom(HDR + payload.length)) {
      this.packChunk(type, payload);
      this.flushPages();
      return;
    }
    this.flushPages(); // pages packed before this chunk go before it
    const h = this.header(Buffer.alloc(HDR), type, payload);
    this.bytesSent += HDR + payload.length;
    if (this.io) {
      this.writes++;
      return this.io.write(h, payload);
    }
    // a small chunk is one write (one TLS record); the caller goes on at once
    // unless a send buffer's worth is still waiting
    if (payload.length <= SMALL_WRITE && this.queuedBytes < SMALL_WRITE) {
      this.tlsWrite(Buffer.concat([h, payload]), null);
      return;
    }
    await new Promise<void>((resolve, reject) => {
      const done = (e?: Error | null): void => (e ? reject(e) : resolve());
      if (payload.length <= SMALL_WRITE) {
        this.tlsWrite(Buffer.concat([h, payload]), done);
      } else {
        this.tlsWrite(h, null);
        this.tlsWrite(payload, done);
      }
    });
  }

  private reply(type: number): Promise<Chunk> {
    return new Promise((resolve, reject) => {
      if (this.failure) {
        reject(this.failure);
        return;
      }
      const onChunk = (c: Chunk): void => {
        if (c.type !== type) return;
        this.events.off('failed', onFail);
        this.events.off('chunk', onChunk);
        resolve(c);
      };
      const onFail = (e: Error): void => {
        this.events.off('chunk', onChunk);
        reject(e);
      };
      this.events.on('chunk', onChunk);
      this.events.once('failed', onFail);
    });
  }

  private static json(c: Chunk): Answer {
    return JSON.parse(c.payload.toString('utf8')) as Answer;
  }

  /** The answer's JSON, once it says ok (else the receiver's failure, thrown). */
  private check(c: Chunk): Answer {
    const r = TcpTarget.json(c);
    if (!r.ok) throw new VfuError(r.errno ?? Errno.EIO, `destination: ${r.error ?? 'failed'}`);
    return r;
  }

  /**
   * Sends a chunk and waits for the answer of type `answer`.  Both are
   * awaited together: when the send fails (a reset while it waits for the
   * socket to drain), the answer's rejection is handled too (left alone, it
   * crashed the process as an unhandled rejection).
   */
  private async ask(type: number, payload: Buffer, answer: number): Promise<Chunk> {
    const [c] = await Promise.all([this.reply(answer), this.send(type, payload)]);
    return c;
  }

  async begin(layout: GuestLayout): Promise<void> {
    this.sock = await this.open();
    this.check(await this.ask(ChunkType.HELLO, Buffer.from(JSON.stringify({ version: STREAM_VERSION, layout })), ChunkType.ACK));
  }

  async deviceData(chunk: Buffer): Promise<void> {
    // The chunk is only ours until we return: a small one is copied into a
    // send buffer and waits there for what comes next (on one CPU, a write
    // of its own woke the receiver, which took the CPU before the final
    // pages and FINISH were sent); a large one goes as a copy, in chunks
    // the receiver takes.
    if (chunk.length <= PACK_MAX) {
      if (!this.hasRoom(HDR + chunk.length)) await this.room(HDR + chunk.length);
      this.packChunk(ChunkType.DEVICE, chunk);
      this.flushLater();
      return;
    }
    for (let o = 0; o < chunk.length; o += MAX_CHUNK) await this.send(ChunkType.DEVICE, Buffer.from(chunk.subarray(o, o + MAX_CHUNK)));
  }

  /**
   * Makes room for `need` bytes in the send buffer being packed: writes it
   * when full, takes a new one from the pool when none is being packed.
   * Callers may overlap (device data beside pages): a buffer taken while
   * another caller started one goes back.
   */
  private async room(need: number): Promise<void> {
    for (;;) {
      if (this.hasRoom(need)) return;
      if (this.packing) {
        this.flushPages();
        continue;
      }
      const b = await this.pool.take();
      if (this.packing) this.pool.give(b);
      else {
        this.packing = b;
        this.packed = 0;
      }
    }
  }

  /** A send buffer is being packed and `need` more bytes fit (throws once the stream failed). */
  private hasRoom(need: number): boolean {
    if (this.failure) throw this.failure;
    return this.packing !== null && this.packed + need <= this.packing.length;
  }

  /** Copies a whole chunk into the send buffer being packed (room() made room for it). */
  private packChunk(type: number, payload: Buffer): void {
    const b = this.packing!;
    const at = this.packed;
    // with the addon the copy and its CRC-32C are one pass
    const sum = this.io ? copyCrc32c(b, at + HDR, payload) : (payload.copy(b, at + HDR), undefined);
    this.header(b.subarray(at, at + HDR), type, b.subarray(at + HDR, at + HDR + payload.length), sum);
    this.packed += HDR + payload.length;
    this.bytesSent += HDR + payload.length;
  }

  /** What is packed leaves on the next turn of the event loop at the latest. */
  private flushLater(): void {
    if (this.packing && !this.flushSoon) {
      this.flushSoon = true;
      setImmediate(() => {
        this.flushSoon = false;
        this.flushPages();
      });
    }
  }

  /**
   * Copies `data` into PAGES chunks of at most PAGES_PER_CHUNK bytes.  The
   * copy is what the CRC covers (the guest may write its pages meanwhile);
   * over TLS there is no CRC, and the copy is what Node's TLS socket may
   * still hold after we return.  Chunks are packed into the send buffers
   * (scattered pages: many chunks to a buffer, one system call); a buffer
   * goes out once full, before any other chunk, or when the event loop
   * next turns.  Over TLS, runs of TLS_DIRECT_MIN and more are not copied
   * (see pagesInPlace).
   */
  async guestPages(iova: number, data: Buffer): Promise<void> {
    for (let o = 0; o < data.length; o += PAGES_PER_CHUNK) {
      const n = Math.min(PAGES_PER_CHUNK, data.length - o);
      const need = HDR + 8 + n;
      if (this.secure && n >= TLS_DIRECT_MIN) {
        await this.pagesInPlace(iova + o, data.subarray(o, o + n));
        continue;
      }
      if (!this.hasRoom(need)) await this.room(need);
      const b = this.packing!;
      const at = this.packed;
      b.writeBigUInt64LE(BigInt(iova + o), at + HDR);
      const src = data.subarray(o, o + n);
      // with the addon the copy and its CRC-32C are one pass over guest memory
      const sum = this.io ? copyCrc32c(b, at + HDR + 8, src, crc32c(b.subarray(at + HDR, at + HDR + 8))) : (src.copy(b, at + HDR + 8), undefined);
      this.header(b.subarray(at, at + HDR), ChunkType.PAGES, b.subarray(at + HDR, at + need), sum);
      this.packed += need;
      this.bytesSent += need;
      if (this.packed === b.length) this.flushPages();
    }
    this.flushLater();
  }

  /**
   * TLS: a large run goes out as it is in guest memory, behind a header of
   * its own; it resolves once the socket has encrypted and written it (the
   * run is ours until we return).  No copy: AES-GCM reads the pages, and
   * authenticates them (no CRC); pages the guest writes meanwhile are dirty,
   * and sent again.
   */
  private async pagesInPlace(iova: number, run: Buffer): Promise<void> {
    this.flushPages(); // pages packed before these go before them
    if (this.failure) throw this.failure;
    const head = Buffer.allocUnsafe(HDR + 8);
    writeHeader(head, ChunkType.PAGES, 8 + run.length, 0, FLAG_UNCHECKED);
    head.writeBigUInt64LE(BigInt(iova), HDR);
    this.bytesSent += head.length + run.length;
    this.tlsWrite(head, null);
    await new Promise<void>((resolve, reject) => this.tlsWrite(run, (e) => (e ? reject(e) : resolve())));
  }

  /** Writes the send buffer being packed, if any; it returns to the pool once written. */
  private flushPages(): void {
    const b = this.packing;
    if (!b) return;
    this.packing = null;
    if (this.failure) return; // the pool has failed too
    const bytes = b.subarray(0, this.packed);
    if (this.io) {
      this.writes++;
      this.io.write(bytes).then(
        () => this.pool.give(b),
        () => {}, // the pool has failed too
      );
    } else {
      this.tlsWrite(bytes, (e) => {
        if (!e) this.pool.give(b);
      });
    }
  }

  /**
   * FINISH, then the receiver's RESULT.  Its STOP -> RUNNING time is the
   * destination's own; the rest of the wait (the pages still in flight, the
   * round trip, loading the state) is reported as RESUMING -> STOP.
   */
  finish(): Promise<FinishTimes | void> {
    // (timed: the code touch() runs just before the window)
    return this.timed(ChunkType.FINISH, ChunkType.RESULT);
  }

  /** An empty chunk of `type`, the answer of type `answer`; the destination's times from it (see finish()). */
  private async timed(type: number, answer: number): Promise<FinishTimes | void> {
    const t0 = performance.now();
    const runningMs = this.check(await this.ask(type, EMPTY, answer)).runningMs;
    if (typeof runningMs !== 'number') return;
    const total = performance.now() - t0;
    return { stopMs: Math.max(0, total - runningMs), runningMs: Math.min(runningMs, total) };
  }

  /**
   * A SYNC round trip: resolves once the receiver has applied everything
   * sent before it, so no pre-copy data is still in flight (in socket
   * buffers, or being applied) when the guest is paused.
   */
  async drain(): Promise<void> {
    await this.touch();
  }

  /**
   * Just before the downtime window: a SYNC, which the receiver answers
   * after a round trip to the destination that changes nothing (see
   * Reception.sync), so that the window's path through the receiver and
   * the destination (and the answer's way back here) finds its code and
   * data in the caches, not pushed out by pre-copy.
   */
  touch(): Promise<FinishTimes | void> {
    return this.timed(ChunkType.SYNC, ChunkType.SYNC);
  }

  async checksum(): Promise<string> {
    return TcpTarget.json(await this.ask(ChunkType.CHECKSUM, EMPTY, ChunkType.CHECKSUM)).checksum ?? '';
  }

  async abort(reason: Error): Promise<void> {
    try {
      if (this.sock && !this.failure) await this.send(ChunkType.ABORT, Buffer.from(reason.message));
    } catch {
      // the receiver resets the destination on a broken stream anyway
    }
    this.close();
  }

  /** Closes the connection (a migration in progress fails). */
  close(): void {
    this.failure ??= new BrokenStreamError('closed');
    this.io?.close();
    const s = this.sock;
    if (!s || s.destroyed) return;
    // what waits for the TLS socket (an ABORT) still goes, before the end
    for (const w of this.tlsQueue.splice(0)) s.write(w.data, (e) => w.done?.(e));
    s.end();
    setTimeout(() => s.destroy(), 2000).unref();
  }
}

/** Options of receiveMigrations(). */
export interface ReceiveOptions {
  /** Connects a client to the destination server. */
  connectDestination: () => Promise<VfioUserClient>;
  /** Checksum of the destination state (answers CHECKSUM). */
  checksum?: (c: VfioUserClient) => Promise<string>;
  /**
   * Called with each finished (or failed) migration: a failure at once, a
   * success once the sender has closed the stream, or 100 ms after the
   * destination started running, whichever comes first.
   */
  onDone?: (r: { ok: boolean; error?: Error; client: VfioUserClient | null; deviceBytes: number; guestBytes: number }) => void;
  /** Called as device state and guest pages are applied. */
  onProgress?: (r: { deviceBytes: number; guestBytes: number }) => void;
  /**
   * Listen with TLS 1.3: Node's tls.createServer options (`cert`, `key`,
   * `ca`: the peer must present a certificate the CA signed; or
   * `pskCallback` for TLS-PSK).  Without it the stream is plain TCP.
   */
  tls?: TlsOptions;
  /**
   * Peers accepted by name (TLS only): a certificate's CN or a
   * subjectAltName entry, or a PSK identity.  Absent: every verified peer.
   */
  allowPeers?: readonly string[];
  /** A connection refused before anything was applied: a failed handshake, a peer not allowed. */
  onRefused?: (r: { peer: string; reason: string }) => void;
}

/**
 * The receiving side (`vfu receive`): accepts migration streams and applies
 * them to the destination server through a client of its own.
 */
export function receiveMigrations(host: string, port: number, opts: ReceiveOptions): Promise<Server> {
  // paused: with the addon, Reception reads the descriptor itself
  const server = opts.tls ? secureListener(opts) : createServer({ pauseOnConnect: true }, (sock) => new Reception(sock, opts, false));
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}

const peerOf = (s: Socket): string => `${s.remoteAddress ?? '?'}:${s.remotePort ?? '?'}`;

/** A TLS listener: failed handshakes, unverified peers and peers not allowed are refused before a Reception exists. */
function secureListener(opts: ReceiveOptions): Server {
  const psk = new WeakMap<object, string>();
  const server = createTlsServer(secureServerDefaults(opts.tls!, (sock, identity) => psk.set(sock, identity)), (sock: TLSSocket) => {
    const reason = peerRefusal(sock, psk.get(sock), opts.tls!, opts.allowPeers);
    if (reason === null) {
      new Reception(sock, opts, true);
      return;
    }
    opts.onRefused?.({ peer: peerOf(sock), reason });
    sock.on('error', () => {});
    sock.end(frame(ChunkType.ABORT, Buffer.from(`refused: ${reason}`)));
    sock.resume(); // read and drop whatever it sent, so the reason is not lost to a reset
  });
  server.on('tlsClientError', (e: Error, sock: TLSSocket) => {
    opts.onRefused?.({ peer: peerOf(sock), reason: tlsFailure(e, 'TLS handshake failed').message });
  });
  return server;
}

let dropped: Buffer | null = null;
/** Where small reads are staged and bytes read after a failure go (shared: each read is consumed at once). */
function scratch(): Buffer {
  return (dropped ??= Buffer.allocUnsafeSlow(64 * 1024));
}

/** A whole chunk in one buffer. */
function frame(type: number, payload: Buffer): Buffer {
  return Buffer.concat([encodeChunkHeader(type, payload), payload]);
}

/** Guest ranges a HELLO may announce (a DMA map each on the destination). */
const MAX_LAYOUT_RANGES = 1024;

/** Checks the untrusted guest layout of a HELLO; returns it typed. */
function checkLayout(v: unknown): GuestLayout {
  const l = v as GuestLayout;
  const int = (x: unknown): boolean => Number.isSafeInteger(x) && (x as number) >= 0;
  if (typeof l !== 'object' || l === null || !Array.isArray(l.ranges) || !Array.isArray(l.irqs)) throw new VfuError(Errno.EINVAL, 'HELLO without a guest layout');
  if (l.ranges.length > MAX_LAYOUT_RANGES) throw new VfuError(Errno.EINVAL, `HELLO with ${l.ranges.length} guest ranges (at most ${MAX_LAYOUT_RANGES})`);
  for (const r of l.ranges) if (!int(r?.iova) || !int(r?.size) || r.size === 0 || !int(r.iova + r.size)) throw new VfuError(Errno.EINVAL, 'HELLO with a bad guest range');
  for (const i of l.irqs) if (!int(i?.index) || !int(i?.count)) throw new VfuError(Errno.EINVAL, 'HELLO with a bad interrupt entry');
  return { ranges: l.ranges.map((r) => ({ iova: r.iova, size: r.size })), irqs: l.irqs.map((i) => ({ index: i.index, count: i.count })) };
}

/** A finished migration is reported at the latest this long after its RESULT (see Reception.finish). */
const REPORT_AFTER_MS = 100;
/** How often a Reception looks for a finished migration not yet reported (see Reception.finish). */
const REPORT_POLL_MS = REPORT_AFTER_MS / 2;

/** Reads per readiness callback before yielding to the event loop. */
const READ_BUDGET = 64;
/** Payload bytes still wanted from which a read goes straight into the payload's place. */
const DIRECT_MIN = 16 * 1024;

/**
 * One incoming migration stream and its state.  Chunks are applied in
 * order (the socket is paused while one is applied); guest pages are
 * written into the destination's memory as their bytes arrive, each chunk
 * checked against the layout the destination mapped.  Over plain TCP with
 * the addon, the bytes are read straight into where they go (no copy).
 */
class Reception {
  private readonly reader: ChunkReader;
  /** Plain TCP with the addon: reads go through it; Node's socket stays paused and only writes the answers. */
  private readonly io: FdStream | null;
  /** The reader refused the stream: what follows is dropped. */
  private broken = false;
  /** TLS: the last buffer given to the socket is where the reader wants its bytes (see nextBuffer). */
  private direct = false;
  /** Batches of chunks being applied (in the chain). */
  private applying = 0;
  private client: VfioUserClient | null = null;
  private target: LocalTarget | null = null;
  /** What the destination mapped (set once HELLO is applied). */
  private layout: GuestLayout | null = null;
  private chain: Promise<void> = Promise.resolve();
  /** DEVICE payloads that finish() or sync() writes (see applyAll). */
  private held: Buffer[] = [];
  /** The destination runs: the migration succeeded. */
  private finished = false;
  /** The migration is being abandoned: nothing more is applied. */
  private failing = false;
  /** The outcome was reported. */
  private done = false;
  private deviceBytes = 0;
  /** Armed at HELLO: reports a finished migration whose sender has not hung up (see finish). */
  private reportPoll: NodeJS.Timeout | null = null;
  /** Polls seen since the migration finished. */
  private pollsSinceFinish = 0;
  private guestBytes = 0;

  constructor(
    private readonly sock: Socket,
    private readonly opts: ReceiveOptions,
    secure: boolean,
  ) {
    this.reader = new ChunkReader((iova, length, seq) => this.place(iova, length, seq), secure);
    const fd = secure ? null : dupSocketFd(sock);
    this.io = fd ? new FdStream(fd.addon, fd.fd, () => this.onReadable()) : null;
    sock.on('close', () => this.onClose());
    sock.on('error', () => {});
    if (this.io) {
      this.io.reading(true);
    } else if (secure && readIntoBuffers(sock as TLSSocket, (d) => this.onData(d), () => this.nextBuffer(), (n, b) => this.onRead(n, b))) {
      sock.resume();
    } else {
      sock.on('data', (d: Buffer) => this.onData(d));
      sock.resume();
    }
  }

  /**
   * Where the next bytes go (TLS decrypts into it, see readIntoBuffers; the
   * addon reads into it): straight into the place of a large payload (a
   * PAGES chunk's guest memory), else into the staging buffer, where
   * headers and small chunks (scattered pages) come many to a read.
   */
  private nextBuffer(): Buffer {
    const want = this.failing || this.broken ? null : this.reader.want();
    this.direct = want !== null && want.length >= DIRECT_MIN;
    return this.direct ? want! : scratch();
  }

  /**
   * `n` bytes arrived in `into`, the last nextBuffer(): the chunks they
   * complete, or null once the stream was refused for them.
   */
  private received(n: number, into: Buffer): Chunk[] | null {
    try {
      if (this.direct) {
        const c = this.reader.wrote(n);
        return c ? [c] : [];
      }
      return this.reader.push(into.subarray(0, n));
    } catch (e) {
      this.refuse(e as Error);
      return null;
    }
  }

  /** TLS: `n` bytes were decrypted into `b` (the last nextBuffer()); false pauses reading. */
  private onRead(n: number, b: Buffer): boolean {
    if (this.failing || this.broken) return true; // failed: drain until the sender hangs up
    const chunks = this.received(n, b);
    return chunks === null || !this.take(chunks);
  }

  private onData(d: Buffer): void {
    if (this.failing || this.broken) return; // failed: drain until the sender hangs up
    let chunks: Chunk[];
    try {
      chunks = this.reader.push(d);
    } catch (e) {
      this.refuse(e as Error);
      return;
    }
    this.take(chunks);
  }

  /** The socket has bytes (addon): read them into where the reader wants them, until a chunk completes. */
  private onReadable(): void {
    const io = this.io!;
    for (let i = 0; i < READ_BUDGET; i++) {
      const drop = this.failing || this.broken;
      const into = this.nextBuffer();
      let n: number;
      try {
        n = io.read(into);
      } catch {
        n = 0; // a reset ends the stream as a close does
      }
      if (n < 0) return;
      if (n === 0) {
        // the sender hung up: what we still write (ABORT) goes first
        io.close();
        this.sock.destroySoon();
        this.onClose();
        return;
      }
      if (drop) continue;
      const chunks = this.received(n, into);
      if (chunks === null || this.take(chunks)) return;
    }
  }

  /**
   * Completed chunks: leading PAGES (in place already) are counted at once
   * when nothing is being applied; the rest is applied in order, reading
   * paused meanwhile.  True when reading was paused.
   */
  private take(chunks: Chunk[]): boolean {
    let k = 0;
    if (!this.applying) while (k < chunks.length && chunks[k]!.type === ChunkType.PAGES) this.countPages(chunks[k++]!);
    if (k === chunks.length) return false;
    this.applyInOrder(k === 0 ? chunks : chunks.slice(k));
    return true;
  }

  /** The reader refused the stream: nothing more is parsed, and the migration fails. */
  private refuse(e: Error): void {
    this.broken = true;
    this.chain = this.chain.then(() => this.fail(e));
  }

  /** Applies `chunks` in order, reading nothing more meanwhile (backpressure). */
  private applyInOrder(chunks: Chunk[]): void {
    if (chunks.length === 0) return;
    this.input(false);
    this.applying++;
    this.chain = this.chain
      .then(() => this.applyAll(chunks))
      .catch((e: Error) => this.fail(e))
      .finally(() => {
        this.applying--;
        this.input(true);
      });
  }

  private input(on: boolean): void {
    if (this.io) this.io.reading(on);
    else if (on) this.sock.resume();
    else this.sock.pause();
  }

  private async applyAll(chunks: Chunk[]): Promise<void> {
    for (let i = 0; i < chunks.length; i++) {
      const c = chunks[i]!;
      // after the end only a checksum question still gets an answer
      if (this.failing || ((this.done || this.finished) && (c.type !== ChunkType.CHECKSUM || !this.finished))) return;
      if (this.target === null && c.type !== ChunkType.HELLO) throw new BrokenStreamError(`chunk ${c.seq} before HELLO`);
      // Device data read together with the FINISH or SYNC after it (the
      // sender packs them in one write): written by finish() in one write
      // with STOP and RUNNING, or by sync() with its request to the
      // destination; sync() is the same code as finish(), run before the
      // window.  (The read buffer stays ours meanwhile: no more is read
      // until these chunks are applied.)
      if (c.type === ChunkType.DEVICE && endFollows(chunks, i + 1)) {
        this.held.push(c.payload);
        continue;
      }
      await this.apply(c);
    }
  }

  private apply(c: Chunk): Promise<void> {
    switch (c.type) {
      case ChunkType.HELLO:
        return this.hello(c);
      case ChunkType.DEVICE:
        return this.device(c);
      case ChunkType.PAGES:
        return this.pages(c);
      case ChunkType.CHECKSUM:
        return this.checksum();
      case ChunkType.SYNC:
        return this.sync();
      case ChunkType.FINISH:
        return this.finish();
      case ChunkType.ABORT:
        return this.fail(new VfuError(Errno.ECONNRESET, `source aborted: ${c.payload.toString('utf8')}`), false);
      default:
        throw new BrokenStreamError(`chunk ${c.seq}: unexpected type ${c.type}`);
    }
  }

  private async hello(c: Chunk): Promise<void> {
    if (this.target) throw new BrokenStreamError(`chunk ${c.seq}: a second HELLO`);
    try {
      const hello = JSON.parse(c.payload.toString('utf8')) as { version?: unknown; layout?: unknown };
      if (!ACCEPTED_VERSIONS.includes(hello.version)) throw new VfuError(Errno.EPROTO, `stream version ${String(hello.version)} (this receiver speaks ${STREAM_VERSION})`);
      const layout = checkLayout(hello.layout);
      this.client = await this.opts.connectDestination();
      this.target = new LocalTarget(this.client, this.opts.checksum);
      await this.target.begin(layout);
      // first calls that would otherwise come in the downtime window: among
      // them setTimeout (0.25-0.4 ms: Node sets its timers up on the first
      // one), which finish() arms right after the RESULT, before the sender
      // has read it, and performance.now() (LocalTarget.finish)
      warmNodeBuiltins();
      this.reportPoll = setInterval(() => this.pollReport(), REPORT_POLL_MS);
      this.reportPoll.unref();
      this.layout = layout;
      this.reply(ChunkType.ACK, { ok: true });
    } catch (e) {
      this.reply(ChunkType.ACK, { ok: false, error: (e as Error).message, errno: (e as VfuError).errno });
      await this.fail(e as Error);
    }
  }

  private async device(c: Chunk): Promise<void> {
    await this.target!.deviceData(c.payload);
    this.deviceBytes += c.payload.length;
    this.opts.onProgress?.({ deviceBytes: this.deviceBytes, guestBytes: this.guestBytes });
  }

  /** A PAGES chunk ended: its bytes are already in place (see place()). */
  private async pages(c: Chunk): Promise<void> {
    this.countPages(c);
  }

  private countPages(c: Chunk): void {
    if (!c.placed) throw new BrokenStreamError(`chunk ${c.seq}: PAGES not placed`);
    this.guestBytes += c.placed.length;
    this.opts.onProgress?.({ deviceBytes: this.deviceBytes, guestBytes: this.guestBytes });
  }

  /** Where a PAGES chunk's bytes go: inside one range the destination mapped, or nowhere. */
  private place(iova: number, length: number, seq: number): Buffer {
    if (!this.layout || this.done || this.finished || this.failing) throw new BrokenStreamError(`chunk ${seq}: PAGES ${this.layout ? 'after the end' : 'before the destination mapped its memory'}`);
    const inside = this.layout.ranges.some((r) => iova >= r.iova && iova + length <= r.iova + r.size);
    if (!inside) throw new BrokenStreamError(`chunk ${seq}: PAGES [0x${iova.toString(16)}, +${length}) outside the guest memory the destination mapped`);
    return this.client!.memory.view(iova, length);
  }

  /**
   * SYNC: everything before it is applied (the chain is in order); a
   * request to the destination that changes nothing (LocalTarget.touch),
   * in one write with the device data held for it, goes first, then the
   * answer.  The sender's last SYNC comes right before the downtime window
   * (TcpTarget.touch): on one CPU, pre-copy pushed out of the caches what
   * the receiver and the destination run in the window (the first SET of a
   * state there took 70 us where the second took 6), and this is the
   * window's code (finish()) run once before it.  A refusal of the request
   * is not the migration's failure; a refused write is.
   */
  private async sync(): Promise<void> {
    const last = this.taken();
    const times = await this.target!.touch(last);
    this.counted(last);
    this.answer(ChunkType.SYNC, times);
  }

  /**
   * SYNC's and RESULT's answer: ok, with the destination's times when
   * there are any.  One shape for both, built and parsed by the same code:
   * the RESULT's, in the window, then runs warm.
   */
  private answer(type: number, times: FinishTimes | void): void {
    this.reply(type, times ? { ok: true, stopMs: times.stopMs, runningMs: times.runningMs } : { ok: true });
  }

  /** The held DEVICE payloads, now for the caller to write. */
  private taken(): Buffer[] {
    const last = this.held;
    this.held = [];
    return last;
  }

  /** `written` device data is at the destination. */
  private counted(written: Buffer[]): void {
    if (written.length === 0) return;
    for (let i = 0; i < written.length; i++) this.deviceBytes += written[i]!.length;
    this.opts.onProgress?.({ deviceBytes: this.deviceBytes, guestBytes: this.guestBytes });
  }

  private async checksum(): Promise<void> {
    this.reply(ChunkType.CHECKSUM, { checksum: await this.target!.checksum() });
  }

  private async finish(): Promise<void> {
    const last = this.taken();
    try {
      const times = await this.target!.finish(last);
      this.finished = true;
      this.counted(last);
      // Reported once the sender hangs up (or by the poll armed at HELLO, at
      // most REPORT_AFTER_MS from now): what the caller does then (closing
      // the destination client, which makes the server unmap the guest
      // memory; exiting) would otherwise run while the source's guest is
      // still paused, waiting for this RESULT, and on a shared CPU it
      // delayed the RESULT by milliseconds.  No timer is armed here: on one
      // CPU the sender mostly gets the RESULT only once this process waits
      // again, and arming one after it cost 20-30 us of the window.
      this.answer(ChunkType.RESULT, times);
    } catch (e) {
      this.reply(ChunkType.RESULT, { ok: false, error: (e as Error).message, errno: (e as VfuError).errno });
      await this.fail(e as Error);
    }
  }

  private onClose(): void {
    this.chain = this.chain.then(() => {
      if (this.finished) this.end(true);
      if (this.finished || this.done) return;
      const why = this.reader.pending > 0 ? `cut mid-chunk (${this.reader.pending} bytes of a chunk)` : 'closed before FINISH';
      return this.fail(new BrokenStreamError(why));
    });
  }

  /**
   * Resets the destination, reports, and (unless the sender is the one who
   * gave up) tells the sender why before hanging up.  The socket is then
   * read and discarded until the sender closes, so the reason is not lost
   * to a reset of a connection with unread data.
   */
  private async fail(why: Error, tellSender = true): Promise<void> {
    if (this.done || this.finished || this.failing) return;
    this.failing = true;
    if (this.target && !this.finished) await this.target.abort().catch(() => {});
    this.end(false, why);
    // the end after the reason (what the addon still holds goes first)
    const told = tellSender ? this.send(ChunkType.ABORT, Buffer.from(why.message)) : Promise.resolve();
    void told.then(() => this.sock.end());
    this.input(true);
    setTimeout(() => {
      this.io?.close();
      this.sock.destroy();
    }, 10_000).unref();
  }

  /** The poll armed at HELLO: a migration finished REPORT_POLL_MS to 2 x REPORT_POLL_MS ago and not reported yet is reported. */
  private pollReport(): void {
    if (this.finished && ++this.pollsSinceFinish >= 2) this.end(true);
  }

  private end(ok: boolean, error?: Error): void {
    if (this.reportPoll) clearInterval(this.reportPoll);
    this.reportPoll = null;
    if (this.done) return;
    this.done = true;
    this.opts.onDone?.({ ok, ...(error ? { error } : {}), client: this.client, deviceBytes: this.deviceBytes, guestBytes: this.guestBytes });
  }

  /**
   * An answer to the sender; resolves once the kernel has it.  Over plain
   * TCP with the addon it is one sendmsg: Node's stream write ran its
   * bookkeeping and callbacks (~0.15 ms, barely warm) right after the
   * RESULT, before the sender, on the same CPU, could read it.
   */
  private send(type: number, payload: Buffer): Promise<void> {
    const bytes = frame(type, payload);
    // a failed write: the connection is gone.  The addon's descriptor is
    // closed once the sender has hung up; Node's socket may still write then
    if (this.io && !this.io.broken) return this.io.write(bytes).catch(() => {});
    if (!this.sock.destroyed && this.sock.writable) this.sock.write(bytes);
    return Promise.resolve();
  }

  private reply(type: number, v: object): void {
    void this.send(type, Buffer.from(JSON.stringify(v)));
  }
}

/** Whether chunks[from..] reach a FINISH or SYNC with only DEVICE and PAGES chunks before it. */
function endFollows(chunks: readonly Chunk[], from: number): boolean {
  for (let j = from; j < chunks.length; j++) {
    const t = chunks[j]!.type;
    if (t === ChunkType.FINISH || t === ChunkType.SYNC) return true;
    if (t !== ChunkType.DEVICE && t !== ChunkType.PAGES) return false;
  }
  return false;
}
