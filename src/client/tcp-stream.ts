// Migration across machines: `vfu migrate` on the source host streams the
// device state and guest pages over TCP to `vfu receive` on the destination
// host, which drives the destination server.  Framing (see README,
// "Migration stream"): every chunk is a 16-byte header
//
//   u32 magic 'VFUM' | u8 type | u8[3] zero | u32 payload length | u32 CRC-32 of the payload
//
// followed by the payload.  Types: HELLO (JSON: stream version and guest
// layout), ACK (JSON: {ok} or {error}), DEVICE (device state bytes), PAGES
// (u64 IOVA then the bytes), FINISH, RESULT (JSON), CHECKSUM (request or
// JSON answer), ABORT (UTF-8 reason).  A bad magic, type, length or CRC is a
// broken stream: the receiver resets the destination and says which chunk.
import { EventEmitter } from 'node:events';
import { type Socket, connect as tcpConnect, createServer, type Server } from 'node:net';
import { crc32 } from 'node:zlib';
import { Errno } from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';
import type { VfioUserClient } from './client.js';
import { LocalTarget, type GuestLayout, type MigrationTarget } from './migrate.js';

export const STREAM_MAGIC = 0x4d554656; // 'VFUM' little-endian
export const STREAM_VERSION = 1;
export const ChunkType = { HELLO: 1, ACK: 2, DEVICE: 3, PAGES: 4, FINISH: 5, RESULT: 6, CHECKSUM: 7, ABORT: 8 } as const;
const HDR = 16;
/** Largest payload accepted in one chunk. */
export const MAX_CHUNK = 16 * 1024 * 1024;

export interface Chunk {
  type: number;
  payload: Buffer;
  /** Index of the chunk in its stream (for error messages). */
  seq: number;
}

export class BrokenStreamError extends VfuError {
  constructor(message: string) {
    super(Errno.EBADMSG, `broken migration stream: ${message}`);
    this.name = 'BrokenStreamError';
  }
}

export function encodeChunkHeader(type: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(HDR);
  h.writeUInt32LE(STREAM_MAGIC, 0);
  h.writeUInt8(type, 4);
  h.writeUInt32LE(payload.length, 8);
  h.writeUInt32LE(crc32(payload), 12);
  return h;
}

/** Parses chunks out of a byte stream; throws BrokenStreamError on damage. */
export class ChunkReader {
  private buf: Buffer = Buffer.alloc(0);
  private seq = 0;
  push(data: Buffer): Chunk[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, data]) : data;
    const out: Chunk[] = [];
    while (this.buf.length >= HDR) {
      const magic = this.buf.readUInt32LE(0);
      const type = this.buf.readUInt8(4);
      const len = this.buf.readUInt32LE(8);
      const crc = this.buf.readUInt32LE(12);
      if (magic !== STREAM_MAGIC) throw new BrokenStreamError(`chunk ${this.seq}: bad magic 0x${magic.toString(16)}`);
      if (type < ChunkType.HELLO || type > ChunkType.ABORT) throw new BrokenStreamError(`chunk ${this.seq}: unknown type ${type}`);
      if (len > MAX_CHUNK) throw new BrokenStreamError(`chunk ${this.seq}: length ${len} too large`);
      if (this.buf.length < HDR + len) break;
      const payload = Buffer.from(this.buf.subarray(HDR, HDR + len));
      if (crc32(payload) !== crc) throw new BrokenStreamError(`chunk ${this.seq}: CRC mismatch`);
      out.push({ type, payload, seq: this.seq++ });
      this.buf = this.buf.subarray(HDR + len);
    }
    return out;
  }
  /** Bytes of an unfinished chunk (a stream cut mid-chunk leaves some). */
  get pending(): number {
    return this.buf.length;
  }
}

/** Parses tcp://HOST:PORT. */
export function parseTcpUrl(url: string): { host: string; port: number } {
  const m = /^tcp:\/\/(\[[^\]]+\]|[^:]+):(\d+)$/.exec(url);
  if (!m) throw new VfuError(Errno.EINVAL, `expected tcp://HOST:PORT, got ${url}`);
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]) };
}

/** The sending side: a MigrationTarget that forwards everything over TCP. */
export class TcpTarget implements MigrationTarget {
  private sock: Socket | null = null;
  private readonly reader = new ChunkReader();
  private readonly replies = new EventEmitter();
  private failure: Error | null = null;
  bytesSent = 0;

  constructor(private readonly url: string) {}

  private async open(): Promise<Socket> {
    const { host, port } = parseTcpUrl(this.url);
    const s = await new Promise<Socket>((resolve, reject) => {
      const c = tcpConnect({ host, port }, () => resolve(c));
      c.once('error', reject);
    });
    s.setNoDelay(true);
    s.on('data', (d: Buffer) => {
      try {
        for (const c of this.reader.push(d)) this.replies.emit('chunk', c);
      } catch (e) {
        this.fail(e as Error);
      }
    });
    s.on('error', (e) => this.fail(e));
    s.on('close', () => this.fail(new BrokenStreamError('the receiver closed the connection')));
    return s;
  }

  private fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    this.replies.emit('failed', e);
  }

  private async send(type: number, payload: Buffer): Promise<void> {
    if (this.failure) throw this.failure;
    const s = this.sock!;
    const more = s.write(encodeChunkHeader(type, payload)) && s.write(payload);
    this.bytesSent += HDR + payload.length;
    if (!more) await new Promise<void>((r) => s.once('drain', () => r()));
  }

  private reply(type: number): Promise<Chunk> {
    return new Promise((resolve, reject) => {
      if (this.failure) {
        reject(this.failure);
        return;
      }
      const onChunk = (c: Chunk): void => {
        if (c.type !== type) return;
        this.replies.off('failed', onFail);
        this.replies.off('chunk', onChunk);
        resolve(c);
      };
      const onFail = (e: Error): void => {
        this.replies.off('chunk', onChunk);
        reject(e);
      };
      this.replies.on('chunk', onChunk);
      this.replies.once('failed', onFail);
    });
  }

  private static json(c: Chunk): { ok?: boolean; error?: string; errno?: number; checksum?: string } {
    return JSON.parse(c.payload.toString('utf8')) as { ok?: boolean; error?: string; errno?: number; checksum?: string };
  }

  private check(c: Chunk): void {
    const r = TcpTarget.json(c);
    if (!r.ok) throw new VfuError(r.errno ?? Errno.EIO, `destination: ${r.error ?? 'failed'}`);
  }

  async begin(layout: GuestLayout): Promise<void> {
    this.sock = await this.open();
    const ack = this.reply(ChunkType.ACK);
    await this.send(ChunkType.HELLO, Buffer.from(JSON.stringify({ version: STREAM_VERSION, layout })));
    this.check(await ack);
  }

  deviceData(chunk: Buffer): Promise<void> {
    // The socket keeps a reference until it is flushed, and the chunk is
    // only ours until we return: send a copy.
    return this.send(ChunkType.DEVICE, Buffer.from(chunk));
  }

  async guestPages(iova: number, data: Buffer): Promise<void> {
    const h = Buffer.alloc(8);
    h.writeBigUInt64LE(BigInt(iova));
    await this.send(ChunkType.PAGES, Buffer.concat([h, data]));
  }

  async finish(): Promise<void> {
    const r = this.reply(ChunkType.RESULT);
    await this.send(ChunkType.FINISH, Buffer.alloc(0));
    this.check(await r);
  }

  async checksum(): Promise<string> {
    const r = this.reply(ChunkType.CHECKSUM);
    await this.send(ChunkType.CHECKSUM, Buffer.alloc(0));
    return TcpTarget.json(await r).checksum ?? '';
  }

  async abort(reason: Error): Promise<void> {
    try {
      if (this.sock && !this.failure) await this.send(ChunkType.ABORT, Buffer.from(reason.message));
    } catch {
      // the receiver resets the destination on a broken stream anyway
    }
    this.close();
  }

  close(): void {
    this.failure ??= new BrokenStreamError('closed');
    this.sock?.destroy();
  }
}

export interface ReceiveOptions {
  /** Connects a client to the destination server. */
  connectDestination: () => Promise<VfioUserClient>;
  /** Checksum of the destination state (answers CHECKSUM). */
  checksum?: (c: VfioUserClient) => Promise<string>;
  /** Called with each finished (or failed) migration. */
  onDone?: (r: { ok: boolean; error?: Error; client: VfioUserClient | null; deviceBytes: number; guestBytes: number }) => void;
  onProgress?: (r: { deviceBytes: number; guestBytes: number }) => void;
}

/**
 * The receiving side (`vfu receive`): accepts migration streams and applies
 * them to the destination server through a client of its own.
 */
export function receiveMigrations(host: string, port: number, opts: ReceiveOptions): Promise<Server> {
  const server = createServer((sock) => handle(sock, opts));
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve(server));
  });
}

function handle(sock: Socket, opts: ReceiveOptions): void {
  const reader = new ChunkReader();
  let client: VfioUserClient | null = null;
  let target: LocalTarget | null = null;
  let chain = Promise.resolve();
  let finished = false;
  let done = false;
  let deviceBytes = 0;
  let guestBytes = 0;
  const send = (type: number, payload: Buffer): void => {
    if (!sock.destroyed) {
      sock.write(encodeChunkHeader(type, payload));
      sock.write(payload);
    }
  };
  const reply = (type: number, v: object): void => send(type, Buffer.from(JSON.stringify(v)));
  const end = (ok: boolean, error?: Error): void => {
    if (done) return;
    done = true;
    opts.onDone?.({ ok, ...(error ? { error } : {}), client, deviceBytes, guestBytes });
  };
  const abort = async (why: Error): Promise<void> => {
    if (target && !finished) await target.abort().catch(() => {});
    end(false, why);
    sock.destroy();
  };

  const apply = async (c: Chunk): Promise<void> => {
    switch (c.type) {
      case ChunkType.HELLO: {
        const hello = JSON.parse(c.payload.toString('utf8')) as { version: number; layout: GuestLayout };
        try {
          if (hello.version !== STREAM_VERSION) throw new VfuError(Errno.EPROTO, `stream version ${hello.version}`);
          client = await opts.connectDestination();
          target = new LocalTarget(client, opts.checksum);
          await target.begin(hello.layout);
          reply(ChunkType.ACK, { ok: true });
        } catch (e) {
          reply(ChunkType.ACK, { ok: false, error: (e as Error).message, errno: (e as VfuError).errno });
          await abort(e as Error);
        }
        return;
      }
      case ChunkType.DEVICE:
        await target!.deviceData(c.payload);
        deviceBytes += c.payload.length;
        opts.onProgress?.({ deviceBytes, guestBytes });
        return;
      case ChunkType.PAGES:
        await target!.guestPages(Number(c.payload.readBigUInt64LE(0)), c.payload.subarray(8));
        guestBytes += c.payload.length - 8;
        opts.onProgress?.({ deviceBytes, guestBytes });
        return;
      case ChunkType.CHECKSUM:
        reply(ChunkType.CHECKSUM, { checksum: await target!.checksum() });
        return;
      case ChunkType.FINISH:
        try {
          await target!.finish();
          finished = true;
          reply(ChunkType.RESULT, { ok: true });
          end(true);
        } catch (e) {
          reply(ChunkType.RESULT, { ok: false, error: (e as Error).message, errno: (e as VfuError).errno });
          await abort(e as Error);
        }
        return;
      case ChunkType.ABORT:
        await abort(new VfuError(Errno.ECONNRESET, `source aborted: ${c.payload.toString('utf8')}`));
        return;
      default:
        throw new BrokenStreamError(`unexpected chunk type ${c.type}`);
    }
  };

  sock.on('data', (d: Buffer) => {
    let chunks: Chunk[];
    try {
      chunks = reader.push(d);
    } catch (e) {
      chain = chain.then(() => abort(e as Error));
      return;
    }
    if (chunks.length === 0) return;
    sock.pause(); // backpressure: apply in order before reading more
    chain = chain
      .then(async () => {
        for (const c of chunks) {
          // after the end only a checksum question still gets an answer
          if (done && (c.type !== ChunkType.CHECKSUM || !finished)) return;
          if (target === null && c.type !== ChunkType.HELLO) throw new BrokenStreamError(`chunk ${c.seq} before HELLO`);
          await apply(c);
        }
      })
      .catch((e: Error) => abort(e))
      .finally(() => sock.resume());
  });
  sock.on('close', () => {
    chain = chain.then(() => {
      if (!finished && !done) {
        const why = reader.pending > 0 ? `cut mid-chunk (${reader.pending} bytes of a chunk)` : 'closed before FINISH';
        return abort(new BrokenStreamError(why));
      }
    });
  });
  sock.on('error', () => {});
}
