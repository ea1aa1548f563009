// Client fuzzing harness: a hostile server (a raw socket and the codec) that
// answers the client's requests with garbage, wrong ids and commands,
// oversized or truncated payloads, error replies with odd errnos, reply
// bytes cut at random points, descriptors where none belong, requests typed
// as replies and the other way round, silence, or a closed socket; and that
// sends DMA_READ/DMA_WRITE requests of its own, inside and outside guest
// memory.  Checked for every case:
//  - no exception escapes to the event loop, and every client call settles
//    (resolves, or rejects with an errno) in bounded time;
//  - every DMA request outside the mapped guest memory gets an error reply
//    (EFAULT, or EINVAL when malformed), and guest memory is only written by
//    DMA_WRITEs inside a mapping;
//  - once closed, the client holds no descriptor or mapping (process counts
//    back to where they were before the case).
import { crc32 } from 'node:zlib';
import { VfioUserClient } from '../../src/client/client.js';
import { native } from '../../src/native/index.js';
import { Command, DmaMapFlag, Errno, FeatureFlag, HEADER_SIZE, HeaderFlag, IrqIndex, MigState, errnoName } from '../../src/protocol/constants.js';
import { writeHeader } from '../../src/protocol/header.js';
import { DeviceInfoStruct, IrqInfoStruct } from '../../src/protocol/messages/device.js';
import { FeatureStruct, LoggingReportStruct, MigStateStruct } from '../../src/protocol/messages/feature.js';
import { MigDataStruct } from '../../src/protocol/messages/migration.js';
import { IoFdsStruct, RegionAccessStruct, RegionInfoStruct } from '../../src/protocol/messages/region.js';
import { version } from '../../src/protocol/messages/version.js';
import { NativeEndpoint } from '../../src/transport/native-endpoint.js';
import type { Frame } from '../../src/transport/framer.js';
import type { FdSpec } from './corpus.js';
import { closeFds, openFd, openFdCount } from './fds.js';
import { INTERESTING_U32, INTERESTING_U64, Rng } from './prng.js';
import { type FuzzStats, emptyStats } from './server-harness.js';

/** The client's limits in the fuzz: small, so oversized replies are cheap. */
const MAX_DATA = 64 * 1024;
const MAX_BITMAP = 64 * 1024;
const CLIENT_MAX_MESSAGE = Math.max(MAX_DATA, MAX_BITMAP) + 4096;
const SHARED = { iova: 0x10000, size: 0x4000 };
const PRIVATE = { iova: 0x100000, size: 0x4000 };
const OP_TIMEOUT_MS = 3000;
const DEBUG = process.env.VFU_FUZZ_DEBUG === '1';

export interface ClientFuzzStats extends FuzzStats {
  /** How the client's calls ended: 'ok', an errno name, or 'untyped'. */
  outcomes: Record<string, number>;
  /** DMA requests from the hostile server, and wrong answers to them. */
  dmaRequests: number;
  dmaWrongAnswers: number;
  /** Guest memory changed by a DMA request that should have been refused. */
  memoryCorrupted: number;
}

export function emptyClientStats(): ClientFuzzStats {
  return { ...emptyStats(), outcomes: {}, dmaRequests: 0, dmaWrongAnswers: 0, memoryCorrupted: 0 };
}

type Strategy =
  | 'valid'
  | 'mutated'
  | 'garbage'
  | 'truncated'
  | 'wrong-id'
  | 'wrong-cmd'
  | 'error'
  | 'fds'
  | 'oversize'
  | 'absurd-size'
  | 'small-size'
  | 'command-typed'
  | 'silence'
  | 'close'
  | 'split'
  | 'duplicate';

const STRATEGIES: readonly (readonly [number, Strategy])[] = [
  [20, 'valid'],
  [20, 'mutated'],
  [6, 'garbage'],
  [6, 'truncated'],
  [5, 'wrong-id'],
  [5, 'wrong-cmd'],
  [8, 'error'],
  [6, 'fds'],
  [4, 'oversize'],
  [2, 'absurd-size'],
  [3, 'small-size'],
  [3, 'command-typed'],
  [2, 'silence'],
  [2, 'close'],
  [5, 'split'],
  [3, 'duplicate'],
];

interface DmaExpectation {
  write: boolean;
  /** The request must be refused (outside mapped guest memory or malformed). */
  mustFail: boolean;
}

/** The hostile side of one case. */
class Hostile {
  readonly ep: NativeEndpoint;
  closed = false;
  private nextDmaId = 0x8000;
  readonly dma = new Map<number, DmaExpectation>();
  outsideWrites = 0;

  constructor(
    fd: number,
    private readonly r: Rng,
    private readonly stats: ClientFuzzStats,
    private readonly client: () => VfioUserClient | null,
    private readonly fail: (what: string) => void,
  ) {
    this.ep = new NativeEndpoint(fd, { maxMessageSize: 16 * 1024 * 1024, maxFds: 253 });
    this.ep.onFrame = (f) => this.onFrame(f);
    this.ep.onClose = () => {
      this.closed = true;
    };
  }

  private send(bytes: Buffer, fds: number[] | null = null): void {
    if (this.closed || this.ep.closed) return;
    // now and then, descriptors with whatever is sent
    let own: number[] = [];
    if (fds === null && this.r.bool(0.1)) {
      own = Array.from({ length: this.r.range(1, 2) }, () => openFd({ kind: this.r.pick(['memfd', 'eventfd', 'devnull'] as const), size: 4096 }));
      fds = own;
    }
    this.ep.send(bytes, null, fds && fds.length ? fds : null);
    if (own.length) void this.ep.whenDrained().then(() => closeFds(own));
  }

  private onFrame(f: Frame): void {
    for (const fd of f.fds) native!.close(fd);
    if ((f.flags & HeaderFlag.TYPE_MASK) === HeaderFlag.TYPE_REPLY) {
      this.onDmaReply(f);
      return;
    }
    const req = { msgId: f.msgId, cmd: f.cmd, payload: Buffer.from(f.payload) };
    void this.answer(req);
  }

  private onDmaReply(f: Frame): void {
    const e = this.dma.get(f.msgId);
    if (e === undefined) return; // a reply to a command-typed "reply" of ours
    this.dma.delete(f.msgId);
    const error = (f.flags & HeaderFlag.ERROR) !== 0;
    if (e.mustFail && (!error || (f.errorNo !== Errno.EFAULT && f.errorNo !== Errno.EINVAL))) {
      this.stats.dmaWrongAnswers++;
      this.fail(`DMA_${e.write ? 'WRITE' : 'READ'} outside guest memory answered ${error ? errnoName(f.errorNo) : 'with success'}`);
    }
  }

  /** A DMA_READ/DMA_WRITE request to the client, inside or outside its mappings. */
  sendDmaRequest(): void {
    const r = this.r;
    const c = this.client();
    const write = r.bool(0.5);
    const mapped = c ? c.dmaMappings : [];
    let addr: bigint;
    let count: bigint;
    let mustFail: boolean;
    const inside = mapped.length > 0 && r.bool(0.4);
    if (inside) {
      const m = r.pick(mapped);
      const n = r.range(1, Math.min(m.size, 4096));
      addr = BigInt(m.iova + r.int(m.size - n + 1));
      count = BigInt(n);
      const prot = write ? DmaMapFlag.WRITE : DmaMapFlag.READ;
      mustFail = (m.prot & prot) === 0;
    } else {
      const kind = r.int(4);
      if (kind === 0) {
        addr = r.pick(INTERESTING_U64);
        count = r.pick(INTERESTING_U64);
      } else if (kind === 1) {
        // straddling the end of a guest range
        const g = r.bool(0.5) ? SHARED : PRIVATE;
        addr = BigInt(g.iova + g.size - r.range(1, 64));
        count = BigInt(r.range(65, 4096));
      } else if (kind === 2) {
        addr = BigInt(0x40000000 + r.int(0x1000000));
        count = BigInt(r.range(1, 4096));
      } else {
        // inside guest memory but never mapped, or beyond max_data_xfer_size
        const g = r.bool(0.5) ? SHARED : PRIVATE;
        addr = BigInt(g.iova);
        count = r.bool(0.5) ? BigInt(MAX_DATA + 1) : 0x100000000n;
      }
      const end = addr + count;
      const within = mapped.some((m) => addr >= BigInt(m.iova) && end <= BigInt(m.iova + m.size) && count <= BigInt(MAX_DATA));
      mustFail = !within;
    }
    const id = this.nextDmaId++ & 0xffff;
    const body = Buffer.alloc(16);
    body.writeBigUInt64LE(addr & 0xffffffffffffffffn, 0);
    body.writeBigUInt64LE(count & 0xffffffffffffffffn, 8);
    let data: Buffer = Buffer.alloc(0);
    if (write) {
      const n = count <= 8192n ? Number(count) : r.int(64);
      data = r.bytes(r.bool(0.9) ? n : r.int(64));
      if (data.length !== Number(count)) mustFail = true; // malformed: EINVAL
      if (mustFail) this.outsideWrites++;
    }
    const msg = Buffer.alloc(HEADER_SIZE + 16 + data.length);
    writeHeader(msg, id, write ? Command.DMA_WRITE : Command.DMA_READ, msg.length, r.bool(0.05) ? HeaderFlag.NO_REPLY : 0, 0);
    body.copy(msg, HEADER_SIZE);
    data.copy(msg, HEADER_SIZE + 16);
    if (!(msg.readUInt32LE(8) & HeaderFlag.NO_REPLY)) this.dma.set(id, { write, mustFail });
    this.stats.dmaRequests++;
    const fds = r.bool(0.1) ? [openFd({ kind: 'eventfd' })] : [];
    this.send(msg, fds);
    void this.ep.whenDrained().then(() => closeFds(fds));
  }

  private async answer(req: { msgId: number; cmd: number; payload: Buffer }): Promise<void> {
    const r = this.r;
    if (r.bool(0.15)) this.sendDmaRequest();
    const strategy = req.cmd === Command.VERSION && r.bool(0.7) ? 'valid' : r.weighted(STRATEGIES);
    if (DEBUG) console.error(`  request ${req.cmd} #${req.msgId}: ${strategy}`);
    const valid = validReply(req, r);
    const reply = (payload: Buffer, opts: { id?: number; cmd?: number; flags?: number; errno?: number; size?: number } = {}): Buffer => {
      const b = Buffer.alloc(HEADER_SIZE + payload.length);
      writeHeader(b, opts.id ?? req.msgId, opts.cmd ?? req.cmd, opts.size ?? b.length, opts.flags ?? HeaderFlag.TYPE_REPLY, opts.errno ?? 0);
      payload.copy(b, HEADER_SIZE);
      return b;
    };
    switch (strategy) {
      case 'valid':
        this.send(reply(valid));
        return;
      case 'mutated': {
        const p = Buffer.from(valid);
        const n = r.range(1, 3);
        for (let i = 0; i < n && p.length > 0; i++) {
          const op = r.int(3);
          if (op === 0) p[r.int(p.length)]! ^= 1 << r.int(8);
          else if (op === 1 && p.length >= 4) p.writeUInt32LE(r.pick(INTERESTING_U32), r.int(Math.floor(p.length / 4)) * 4);
          else if (p.length >= 8) p.writeBigUInt64LE(r.pick(INTERESTING_U64), r.int(Math.floor(p.length / 8)) * 8);
        }
        this.send(reply(p));
        return;
      }
      case 'garbage':
        this.send(reply(r.bytes(r.pick([0, 1, 4, 8, 16, 24, 32, 100, 4096]))));
        return;
      case 'truncated':
        this.send(reply(valid.subarray(0, r.int(valid.length + 1))));
        return;
      case 'wrong-id':
        this.send(reply(valid, { id: (req.msgId + r.range(1, 0xfffe)) & 0xffff }));
        if (r.bool(0.5)) this.send(reply(valid));
        return;
      case 'wrong-cmd':
        this.send(reply(valid, { cmd: r.pick([0, Command.VERSION, Command.DMA_READ, Command.REGION_READ, 99, 0xffff].filter((c) => c !== req.cmd)) }));
        if (r.bool(0.5)) this.send(reply(valid));
        return;
      case 'error': {
        const errno = r.pick([0, 1, Errno.EFAULT, Errno.EINVAL, Errno.EBUSY, 4095, 4096, 0x7fffffff, 0xffffffff]);
        this.send(reply(r.bool(0.8) ? Buffer.alloc(0) : valid, { flags: HeaderFlag.TYPE_REPLY | HeaderFlag.ERROR, errno }));
        return;
      }
      case 'fds': {
        const specs: FdSpec[] = Array.from({ length: r.range(1, 3) }, () => ({ kind: r.pick(['memfd', 'eventfd', 'devnull', 'memfd-unsealed'] as const), size: 4096 }));
        const fds = specs.map(openFd);
        this.send(reply(valid), fds);
        await this.ep.whenDrained();
        closeFds(fds);
        return;
      }
      case 'oversize': {
        // declared and sent in full: the client skips the body and refuses
        const n = CLIENT_MAX_MESSAGE + r.range(1, 8192);
        this.send(reply(Buffer.alloc(n - HEADER_SIZE)));
        if (r.bool(0.5)) this.send(reply(valid));
        return;
      }
      case 'absurd-size':
        this.send(reply(valid, { size: r.pick([0x7fffffff, 0xfffffff0, 0xffffffff]) }));
        return;
      case 'small-size':
        this.send(reply(Buffer.alloc(0), { size: r.int(HEADER_SIZE) }));
        if (r.bool(0.5)) this.send(reply(valid));
        return;
      case 'command-typed':
        this.send(reply(valid, { flags: r.pick([0, HeaderFlag.NO_REPLY, 0x2, 0xf]) }));
        if (r.bool(0.5)) this.send(reply(valid));
        return;
      case 'silence':
        return;
      case 'close':
        this.ep.close();
        return;
      case 'split': {
        const b = reply(valid);
        const cuts = [...new Set(Array.from({ length: r.range(1, 4) }, () => r.range(1, Math.max(1, b.length - 1))))].sort((x, y) => x - y);
        let prev = 0;
        for (const c of [...cuts, b.length]) {
          if (c <= prev) continue;
          this.send(b.subarray(prev, c));
          prev = c;
          await new Promise((res) => setImmediate(res));
        }
        return;
      }
      case 'duplicate':
        this.send(Buffer.concat([reply(valid), reply(valid)]));
        return;
    }
  }

  close(): void {
    this.ep.close();
  }
}

/** A well-formed answer to a request (what a correct server would say). */
function validReply(req: { cmd: number; payload: Buffer }, r: Rng): Buffer {
  const p = req.payload;
  switch (req.cmd) {
    case Command.VERSION: {
      const caps: Record<string, unknown> = { max_msg_fds: 16, max_data_xfer_size: MAX_DATA, migration: { pgsize: 4096, max_bitmap_size: MAX_BITMAP } };
      if (r.bool(0.3)) caps.mig_sizing = { data_size: 9, precopy_info: 10 };
      if (r.bool(0.1)) caps.twin_socket = { supported: true, fd_index: 0 };
      return version.encode({ major: 0, minor: r.pick([0, 1, 2]), json: JSON.stringify({ capabilities: caps }), nul: true });
    }
    case Command.DEVICE_GET_INFO:
      return DeviceInfoStruct.encode({ argsz: 16, flags: 3, numRegions: 9, numIrqs: 5 });
    case Command.DEVICE_GET_REGION_INFO: {
      const index = p.length >= 12 ? p.readUInt32LE(8) : 0;
      return RegionInfoStruct.encode({ argsz: 32, flags: 3, index, capOffset: 0, size: 0x1000n, offset: 0n });
    }
    case Command.DEVICE_GET_IRQ_INFO: {
      const index = p.length >= 12 ? p.readUInt32LE(8) : 0;
      return IrqInfoStruct.encode({ argsz: 16, flags: 1, index, count: 1 });
    }
    case Command.DEVICE_GET_REGION_IO_FDS: {
      const index = p.length >= 12 ? p.readUInt32LE(8) : 0;
      return IoFdsStruct.encode({ argsz: 16, flags: 0, index, count: 0 });
    }
    case Command.REGION_READ: {
      const count = p.length >= 16 ? p.readUInt32LE(12) : 0;
      return Buffer.concat([p.subarray(0, RegionAccessStruct.size), r.bytes(Math.min(count, 1 << 20))]);
    }
    case Command.REGION_WRITE:
      return Buffer.from(p.subarray(0, RegionAccessStruct.size));
    case Command.DMA_UNMAP:
      return Buffer.from(p.subarray(0, 24));
    case Command.DEVICE_FEATURE: {
      const flags = p.length >= 8 ? p.readUInt32LE(4) : 0;
      const feature = flags & FeatureFlag.MASK;
      const head = Buffer.from(p.subarray(0, FeatureStruct.size));
      if (flags & FeatureFlag.GET) {
        if (feature === 2) return Buffer.concat([head, MigStateStruct.encode({ deviceState: r.pick([MigState.RUNNING, MigState.STOP, 9]), dataFd: -1 })]);
        if (feature === 8 && p.length >= FeatureStruct.size + LoggingReportStruct.size) {
          const rep = LoggingReportStruct.read(p, FeatureStruct.size);
          const bytes = Math.ceil(Math.ceil(Number(rep.length) / Number(rep.pageSize || 1n)) / 64) * 8;
          return Buffer.concat([p.subarray(0, FeatureStruct.size + LoggingReportStruct.size), Buffer.alloc(Math.min(bytes, 1 << 20))]);
        }
        return Buffer.concat([head, Buffer.alloc(16)]);
      }
      return Buffer.from(p);
    }
    case Command.MIG_DATA_READ: {
      const size = p.length >= 8 ? p.readUInt32LE(4) : 0;
      const n = r.int(Math.min(size, 8192) + 1);
      return Buffer.concat([MigDataStruct.encode({ argsz: 8 + n, size: n }), r.bytes(n)]);
    }
    default:
      return Buffer.alloc(0);
  }
}

/** One client call, chosen at random. */
async function clientOp(c: VfioUserClient, r: Rng): Promise<unknown> {
  const op = r.int(16);
  if (DEBUG) console.error(`op ${op}`);
  switch (op) {
    case 0:
      return c.deviceInfo();
    case 1: {
      const info = await c.regionInfo(r.int(10));
      if (info.fd >= 0 && r.bool(0.7)) {
        // a VMM maps what it is given and touches it
        const areas = c.mapRegion(info);
        for (const a of areas) {
          if (a.bytes.length) {
            a.bytes[0] = 1;
            a.bytes[a.bytes.length - 1] = 1;
          }
          a.unmap();
        }
      }
      return info;
    }
    case 2:
      return c.irqInfo(r.int(6));
    case 3:
      return c.regionRead(r.int(10), r.pick([0, 4, 0xffc, 0x1000]), r.pick([1, 4, 8, 100, 4096, MAX_DATA]));
    case 4:
      return c.regionWrite(r.int(10), r.pick([0, 4]), r.bytes(r.pick([1, 4, 8, 100])), { posted: r.bool(0.2) });
    case 5:
    case 6: {
      const g = r.bool(0.5) ? SHARED : PRIVATE;
      return c.dmaMap({ iova: g.iova, size: g.size, prot: r.pick([DmaMapFlag.READ, DmaMapFlag.WRITE, DmaMapFlag.READ | DmaMapFlag.WRITE]) });
    }
    case 7:
      return c.dmaUnmap(SHARED.iova, SHARED.size);
    case 8:
      return c.migDataRead(r.pick([0, 1, 1024, MAX_DATA]));
    case 9:
      return c.migrationState();
    case 10:
      return c.setMigrationState(r.pick([MigState.RUNNING, MigState.STOP, MigState.PRE_COPY]));
    case 11:
      return c.dirtyReport(SHARED.iova, SHARED.size, 4096);
    case 12:
      return c.reset();
    case 13: {
      // the caller owns the descriptors returned
      const io = await c.regionIoFds(r.int(10));
      closeFds(io.fds);
      return io;
    }
    case 14:
      return c.enableInterrupts(IrqIndex.INTX, 1);
    default:
      return r.bool(0.5) ? c.stopCopySize() : c.migrationFlags();
  }
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<{ settled: boolean; value?: T; error?: unknown }> {
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve({ settled: false }), ms);
    p.then(
      (value) => {
        clearTimeout(t);
        resolve({ settled: true, value });
      },
      (error: unknown) => {
        clearTimeout(t);
        resolve({ settled: true, error });
      },
    );
  });
}

function memoryCrc(c: VfioUserClient): number {
  return crc32(Buffer.concat([c.memory.view(SHARED.iova, SHARED.size), c.memory.view(PRIVATE.iova, PRIVATE.size)]));
}

export class ClientFuzzer {
  readonly stats = emptyClientStats();
  private currentIndex = -1;
  private readonly onException = (e: unknown): void => {
    this.stats.crashes++;
    this.fail(`thrown out of the event loop: ${(e as Error)?.stack ?? String(e)}`);
  };

  constructor(private readonly seed: number) {}

  start(): void {
    process.on('uncaughtException', this.onException);
    process.on('unhandledRejection', this.onException);
  }

  stop(): void {
    process.off('uncaughtException', this.onException);
    process.off('unhandledRejection', this.onException);
  }

  private fail(what: string): void {
    if (this.stats.failures.length < 50) this.stats.failures.push({ index: this.currentIndex, kind: 'client', what });
  }

  private outcome(key: string): void {
    this.stats.outcomes[key] = (this.stats.outcomes[key] ?? 0) + 1;
  }

  async run(from: number, to: number, onCase?: (i: number, stats: ClientFuzzStats) => void): Promise<void> {
    for (let i = from; i < to; i++) {
      this.currentIndex = i;
      try {
        await this.runCase(i);
      } catch (e) {
        this.fail(`harness: ${(e as Error).stack ?? e}`);
      }
      this.stats.cases++;
      onCase?.(i, this.stats);
    }
  }

  private async runCase(index: number): Promise<void> {
    const r = new Rng(this.seed ^ 0x5eed, index);
    const fds0 = openFdCount();
    const maps0 = native!.liveMappings();
    const [a, b] = native!.socketpair();
    let client: VfioUserClient | null = null;
    const hostile = new Hostile(b, r, this.stats, () => client, (w) => this.fail(w));
    const ep = new NativeEndpoint(a, { maxMessageSize: CLIENT_MAX_MESSAGE, maxFds: 16 });
    const connected = await withTimeout(
      VfioUserClient.fromEndpoint(ep, { maxDataXferSize: MAX_DATA, maxBitmapSize: MAX_BITMAP, replyTimeoutMs: 30, twinSocket: r.bool(0.1) }),
      OP_TIMEOUT_MS,
    );
    let crcBefore = 0;
    if (!connected.settled) {
      this.stats.hangs++;
      this.fail('connect did not settle');
      ep.close();
    } else if (connected.error !== undefined) {
      this.classify(connected.error); // the client closes its endpoint itself
    } else {
      client = connected.value!;
      client.on('error', () => {});
      client.memory.add(SHARED.iova, SHARED.size);
      client.memory.add(PRIVATE.iova, PRIVATE.size, { shared: false });
      client.memory.view(SHARED.iova, SHARED.size).fill(0x11);
      client.memory.view(PRIVATE.iova, PRIVATE.size).fill(0x22);
      crcBefore = memoryCrc(client);
      const n = r.range(1, 4);
      for (let k = 0; k < n; k++) {
        if (client.conn.closed) break;
        const res = await withTimeout(clientOp(client, r), OP_TIMEOUT_MS);
        if (!res.settled) {
          this.stats.hangs++;
          this.fail('a client call did not settle');
          break;
        }
        if (res.error !== undefined) this.classify(res.error);
        else this.outcome('ok');
      }
      // let outstanding DMA requests be answered
      for (let k = 0; k < 20 && hostile.dma.size > 0 && !client.conn.closed && !hostile.closed; k++) await new Promise((res) => setTimeout(res, 1));
      if (hostile.outsideWrites > 0 && client.dmaMappings.length === 0 && memoryCrc(client) !== crcBefore) {
        this.stats.memoryCorrupted++;
        this.fail('guest memory changed by DMA_WRITEs that had to be refused');
      }
      client.close();
    }
    hostile.close();
    await new Promise((res) => setImmediate(res));
    const fds = openFdCount();
    if (fds !== fds0) {
      this.stats.fdsLeaked += Math.max(0, fds - fds0);
      this.fail(`descriptors: ${fds} after the case, ${fds0} before`);
    }
    const maps = native!.liveMappings();
    if (maps !== maps0) {
      this.stats.mapsLeaked += Math.max(0, maps - maps0);
      this.fail(`mappings: ${maps} after the case, ${maps0} before`);
    }
  }

  private classify(e: unknown): void {
    const errno = (e as { errno?: unknown })?.errno;
    if (typeof errno === 'number' && errno > 0) this.outcome(errnoName(errno));
    else {
      this.outcome('untyped');
      this.fail(`error without an errno: ${(e as Error)?.stack ?? String(e)}`);
    }
  }
}

export async function fuzzClient(seed: number, from: number, to: number, onCase?: (i: number, stats: ClientFuzzStats) => void): Promise<ClientFuzzStats> {
  const f = new ClientFuzzer(seed);
  f.start();
  try {
    await f.run(from, to, onCase);
  } finally {
    f.stop();
  }
  return f.stats;
}
