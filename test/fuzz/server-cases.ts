// Fuzz cases for the server: byte streams (with descriptors) made from the
// recorded messages by mutation, plus random headers, cut at random points
// and coalesced.  A case is a pure function of (seed, index).
import { Command, HEADER_SIZE, HeaderFlag } from '../../src/protocol/constants.js';
import { type FdKind, type FdSpec, type SeedMessage, corpus, encode } from './corpus.js';
import { INTERESTING_U32, INTERESTING_U64, Rng } from './prng.js';

export interface Piece {
  bytes: Buffer;
  /** Descriptors sent with this piece (one sendmsg). */
  fds: FdSpec[];
}

export interface ServerCase {
  index: number;
  /** The generators used, for the per-kind statistics and reports. */
  kind: string;
  /** Sent on a fresh connection before VERSION. */
  preNegotiation: boolean;
  pieces: Piece[];
  /** A descriptor flood (fdFlood): how many descriptors its one message brought. */
  floodFds?: number;
}

interface Msg {
  bytes: Buffer;
  fds: FdSpec[];
}

/** Commands whose payload starts with argsz. */
const ARGSZ_COMMANDS = new Set<number>([
  Command.DMA_MAP,
  Command.DMA_UNMAP,
  Command.DEVICE_GET_INFO,
  Command.DEVICE_GET_REGION_INFO,
  Command.DEVICE_GET_REGION_IO_FDS,
  Command.DEVICE_GET_IRQ_INFO,
  Command.DEVICE_SET_IRQS,
  Command.DIRTY_PAGES,
  Command.DEVICE_FEATURE,
  Command.MIG_DATA_READ,
  Command.MIG_DATA_WRITE,
]);

const FD_KINDS: FdKind[] = ['memfd', 'memfd-unsealed', 'eventfd', 'eventfd-blocking', 'devnull', 'socket', 'dir', 'tmpfile'];

export interface CaseLimits {
  /** The server's largest message (max_data_xfer_size + 4096). */
  maxMessageSize: number;
  /** The server's max_msg_fds. */
  maxMsgFds: number;
}

function randomFd(r: Rng): FdSpec {
  const kind = r.pick(FD_KINDS);
  if (kind === 'memfd' || kind === 'memfd-unsealed' || kind === 'tmpfile') return { kind, size: r.pick([0, 4096, 65536, 1 << 20, 1 << 28]) };
  return { kind };
}

function seedMsg(r: Rng, pool: SeedMessage[]): SeedMessage {
  return r.pick(pool);
}

function asMsg(s: SeedMessage): Msg {
  return { bytes: encode(s), fds: s.fds.map((f) => ({ ...f })) };
}

/** In-place mutations of a whole message (header included). */
function mutateBytes(r: Rng, b: Buffer): string {
  const op = r.weighted([
    [4, 'bitflip'],
    [2, 'byte'],
    [3, 'u32'],
    [3, 'u64'],
    [1, 'randomize'],
  ] as const);
  const payloadStart = b.length > HEADER_SIZE && r.bool(0.8) ? HEADER_SIZE : 0;
  const span = b.length - payloadStart;
  if (span <= 0) return 'none';
  switch (op) {
    case 'bitflip': {
      const n = r.range(1, 8);
      for (let i = 0; i < n; i++) {
        const at = payloadStart + r.int(span);
        b[at]! ^= 1 << r.int(8);
      }
      return 'bitflip';
    }
    case 'byte':
      b[payloadStart + r.int(span)] = r.pick([0, 1, 0x7f, 0x80, 0xfe, 0xff]);
      return 'byte';
    case 'u32': {
      if (span < 4) return 'none';
      const at = payloadStart + (r.int(Math.floor(span / 4)) * 4);
      b.writeUInt32LE(r.bool(0.8) ? r.pick(INTERESTING_U32) : r.u32(), at);
      return 'u32';
    }
    case 'u64': {
      if (span < 8) return 'none';
      const at = payloadStart + r.int(Math.floor(span / 8)) * 8;
      b.writeBigUInt64LE(r.bool(0.8) ? r.pick(INTERESTING_U64) : r.u64(), at);
      return 'u64';
    }
    case 'randomize': {
      const at = payloadStart + r.int(span);
      const n = Math.min(span - (at - payloadStart), r.range(1, 32));
      r.bytes(n).copy(b, at);
      return 'randomize';
    }
  }
}

function setSize(b: Buffer, n: number): void {
  b.writeUInt32LE(n >>> 0, 4);
}

/** One message from a generator; the name says which. */
function oneMessage(r: Rng, lim: CaseLimits, kinds: string[]): Msg {
  const { commands, replies } = corpus();
  const kind = r.weighted([
    [10, 'recorded'],
    [30, 'mutated'],
    [8, 'truncated'],
    [8, 'extended'],
    [8, 'splice'],
    [6, 'argsz'],
    [5, 'reply-typed'],
    [5, 'unknown-cmd'],
    [10, 'random-header'],
    [5, 'huge-size'],
    [4, 'small-size'],
    [6, 'flags'],
    [12, 'structured'],
  ] as const);
  kinds.push(kind);
  switch (kind) {
    case 'recorded':
      return asMsg(seedMsg(r, commands));
    case 'mutated': {
      const m = asMsg(seedMsg(r, commands));
      const n = r.range(1, 3);
      for (let i = 0; i < n; i++) mutateBytes(r, m.bytes);
      return m;
    }
    case 'truncated': {
      const m = asMsg(seedMsg(r, commands));
      const keep = r.int(m.bytes.length);
      const bytes = Buffer.from(m.bytes.subarray(0, keep));
      // either the header still claims the full size (the server waits for
      // the rest) or it is fixed to match (a short payload)
      if (keep >= HEADER_SIZE && r.bool(0.6)) setSize(bytes, keep);
      return { bytes, fds: m.fds };
    }
    case 'extended': {
      const m = asMsg(seedMsg(r, commands));
      const extra = r.bool(0.8) ? r.range(1, 64) : r.range(65, 70000);
      const bytes = Buffer.concat([m.bytes, r.bool(0.5) ? Buffer.alloc(extra) : r.bytes(extra)]);
      if (r.bool(0.7)) setSize(bytes, bytes.length);
      return { bytes, fds: m.fds };
    }
    case 'splice': {
      // a field from another message of the same command at the same place,
      // or the header of one with the payload of another
      const a = seedMsg(r, commands);
      if (r.bool(0.5)) {
        const b = seedMsg(r, commands);
        const m = asMsg({ ...a, payload: b.payload });
        return { bytes: m.bytes, fds: r.bool(0.5) ? m.fds : b.fds.map((f) => ({ ...f })) };
      }
      const same = commands.filter((c) => c.cmd === a.cmd);
      const b = r.pick(same);
      const m = asMsg(a);
      const width = r.pick([4, 8, 16]);
      const n = Math.min(a.payload.length, b.payload.length);
      if (n >= width) {
        const at = r.int(Math.floor(n / width)) * width;
        b.payload.copy(m.bytes, HEADER_SIZE + at, at, at + width);
      }
      return m;
    }
    case 'argsz': {
      const pool = commands.filter((c) => ARGSZ_COMMANDS.has(c.cmd) && c.payload.length >= 4);
      const m = asMsg(seedMsg(r, pool));
      const len = m.bytes.length - HEADER_SIZE;
      m.bytes.writeUInt32LE(r.pick([0, 1, 4, 7, 8, len - 1, len + 1, len + 8, 0x7fffffff, 0x80000000, 0xffffffff].map((x) => x >>> 0)), HEADER_SIZE);
      return m;
    }
    case 'reply-typed': {
      if (r.bool(0.5)) return asMsg(seedMsg(r, replies)); // unsolicited DMA_READ/WRITE replies
      const m = asMsg(seedMsg(r, commands));
      m.bytes.writeUInt32LE((m.bytes.readUInt32LE(8) & ~HeaderFlag.TYPE_MASK) | HeaderFlag.TYPE_REPLY | (r.bool(0.3) ? HeaderFlag.ERROR : 0), 8);
      if (r.bool(0.3)) m.bytes.writeUInt32LE(r.pick([0, 1, 22, 0xffffffff]), 12);
      return m;
    }
    case 'unknown-cmd': {
      const m = asMsg(seedMsg(r, commands));
      m.bytes.writeUInt16LE(r.pick([0, 19, 20, 31, 64, 255, 256, 0x7fff, 0xfffe, 0xffff]), 2);
      return m;
    }
    case 'random-header': {
      const len = r.weighted([
        [6, r.int(32)],
        [3, r.int(256)],
        [1, r.int(4096)],
      ] as const);
      const h = {
        msgId: r.int(0x10000),
        cmd: r.bool(0.7) ? r.range(0, 19) : r.int(0x10000),
        flags: r.bool(0.7) ? r.pick([0, 0x10, 0x1, 0x20, 0x21, 0x30, 0x2, 0xf]) : r.u32(),
        errorNo: r.bool(0.8) ? 0 : r.u32(),
        payload: r.bool(0.5) ? Buffer.alloc(len) : r.bytes(len),
      };
      if (len >= 4 && r.bool(0.5)) h.payload.writeUInt32LE(r.bool(0.5) ? len : r.pick(INTERESTING_U32), 0);
      if (len >= 16 && r.bool(0.5)) h.payload.writeBigUInt64LE(r.pick(INTERESTING_U64), 8);
      return { bytes: encode(h), fds: [] };
    }
    case 'huge-size': {
      const m = asMsg(seedMsg(r, commands));
      // just above the limit (the body follows and is skipped) or absurd
      const size = r.bool(0.5) ? lim.maxMessageSize + r.range(1, 65536) : r.pick([0x7fffffff, 0x80000000, 0xfffffff0, 0xffffffff, lim.maxMessageSize * 64]);
      setSize(m.bytes, size);
      return m;
    }
    case 'small-size': {
      const m = asMsg(seedMsg(r, commands));
      setSize(m.bytes, r.int(HEADER_SIZE));
      // sometimes the payload is still sent: it is then parsed as headers
      return r.bool(0.5) ? m : { bytes: Buffer.from(m.bytes.subarray(0, HEADER_SIZE)), fds: m.fds };
    }
    case 'structured':
      return structured(r, kinds);
    case 'flags': {
      const m = asMsg(seedMsg(r, commands));
      m.bytes.writeUInt32LE(r.pick([HeaderFlag.NO_REPLY, HeaderFlag.ERROR, 0x2, 0xf, 0x40, 0xffffffff, 0x80000000]), 8);
      if (r.bool(0.3)) m.bytes.writeUInt32LE(r.u32(), 12);
      return m;
    }
  }
}

/** Descriptor mischief: drop, add, replace with the wrong kind, exceed max_msg_fds. */
function mutateFds(r: Rng, m: Msg, lim: CaseLimits, kinds: string[]): void {
  const op = r.weighted([
    [3, 'drop'],
    [4, 'add'],
    [3, 'wrong-kind'],
    [1, 'too-many'],
  ] as const);
  kinds.push(`fds-${op}`);
  switch (op) {
    case 'drop':
      m.fds = [];
      return;
    case 'add': {
      const n = r.range(1, 3);
      for (let i = 0; i < n; i++) m.fds.push(randomFd(r));
      return;
    }
    case 'wrong-kind':
      m.fds = m.fds.length ? m.fds.map(() => randomFd(r)) : [randomFd(r)];
      return;
    case 'too-many': {
      const n = lim.maxMsgFds + r.range(1, 4);
      m.fds = Array.from({ length: n }, () => ({ kind: r.pick(['eventfd', 'devnull'] as const) }));
      return;
    }
  }
}

/** Share of the cases that are descriptor floods (drawn apart: the other cases stay as they were). */
const FLOOD_SHARE = 0.02;

/**
 * Descriptor flood: one message sent a few bytes at a time, each piece with
 * up to 253 descriptors (SCM_MAX_FD); sometimes one whose body the server
 * skips (its size above the limit).  The server must hold no more than
 * max_msg_fds of them at any time (the harness checks), refuse the message
 * with EINVAL when it brought more, and stay in sync.
 */
function fdFlood(r: Rng, index: number, lim: CaseLimits): ServerCase {
  const { commands } = corpus();
  const m = asMsg(seedMsg(r, commands));
  const kinds = ['fd-flood'];
  let bytes = m.bytes;
  if (r.bool(0.3)) {
    kinds.push('skipped');
    const body = r.range(1, 256);
    bytes = Buffer.concat([bytes.subarray(0, HEADER_SIZE), r.bytes(body)]);
    setSize(bytes, r.bool(0.5) ? 0xffffffff : lim.maxMessageSize + body + r.range(1, 4096));
  }
  const n = Math.min(bytes.length, r.range(2, 24));
  const pieces: Piece[] = [];
  let floodFds = 0;
  for (let i = 0; i < n; i++) {
    const from = Math.floor((i * bytes.length) / n);
    const to = Math.floor(((i + 1) * bytes.length) / n);
    const k = r.weighted([
      [3, 0],
      [3, r.range(1, lim.maxMsgFds)],
      [2, lim.maxMsgFds + 1],
      [2, r.range(lim.maxMsgFds + 2, 253)],
      [1, 253],
    ] as const);
    floodFds += k;
    pieces.push({ bytes: bytes.subarray(from, to), fds: Array.from({ length: k }, () => ({ kind: r.bool(0.8) ? 'devnull' : 'eventfd' })) });
  }
  return { index, kind: kinds.join('+'), preNegotiation: false, pieces, floodFds };
}

export function serverCase(seed: number, index: number, lim: CaseLimits): ServerCase {
  const flood = new Rng(seed ^ 0xf100d, index);
  if (flood.bool(FLOOD_SHARE)) return fdFlood(flood, index, lim);
  const r = new Rng(seed, index);
  const kinds: string[] = [];
  const preNegotiation = r.bool(0.03);
  const count = r.weighted([
    [80, 1],
    [12, 2],
    [5, 3],
    [3, 4],
  ] as const);
  if (count > 1) kinds.push('coalesced');
  const msgs: Msg[] = [];
  for (let i = 0; i < count; i++) {
    let m: Msg;
    if (preNegotiation && i === 0 && r.bool(0.7)) {
      // a VERSION (mutated or not) or anything else before negotiation
      const versions = corpus().commands.filter((c) => c.cmd === Command.VERSION);
      m = asMsg(r.pick(versions));
      if (r.bool(0.5)) {
        kinds.push('version-mutated');
        mutateBytes(r, m.bytes);
      } else if (r.bool(0.5)) {
        kinds.push('version-random-caps');
        m = versionWithCaps(r);
      } else kinds.push('version');
    } else {
      m = oneMessage(r, lim, kinds);
    }
    if (r.bool(0.1)) mutateFds(r, m, lim, kinds);
    msgs.push(m);
  }
  if (preNegotiation) kinds.unshift('pre-negotiation');

  // Byte stream and descriptor positions: a message's fds go with the piece
  // holding its last byte.
  const stream = Buffer.concat(msgs.map((m) => m.bytes));
  const ends: { end: number; fds: FdSpec[] }[] = [];
  let at = 0;
  for (const m of msgs) {
    at += m.bytes.length;
    if (m.fds.length) ends.push({ end: at, fds: m.fds });
  }
  const cuts = new Set<number>();
  if (stream.length > 1 && r.bool(0.4)) {
    kinds.push('split');
    const n = r.range(1, 5);
    for (let i = 0; i < n; i++) cuts.add(r.bool(0.5) ? r.range(1, Math.min(HEADER_SIZE + 8, stream.length - 1)) : r.range(1, stream.length - 1));
  }
  // a cut at each message end that carries fds keeps them with that message
  for (const e of ends) if (e.end < stream.length && r.bool(0.7)) cuts.add(e.end);
  const points = [...cuts].filter((p) => p > 0 && p < stream.length).sort((a, b) => a - b);
  const pieces: Piece[] = [];
  let prev = 0;
  for (const p of [...points, stream.length]) {
    pieces.push({ bytes: stream.subarray(prev, p), fds: [] });
    prev = p;
  }
  if (pieces.length === 0) pieces.push({ bytes: Buffer.alloc(0), fds: [] });
  for (const e of ends) {
    let pos = 0;
    let k = 0;
    for (; k < pieces.length; k++) {
      pos += pieces[k]!.bytes.length;
      if (pos >= e.end) break;
    }
    pieces[Math.min(k, pieces.length - 1)]!.fds.push(...e.fds);
  }
  return { index, kind: [...new Set(kinds)].join('+'), preNegotiation, pieces };
}

/** A VERSION with random (often contradictory) capabilities JSON. */
function versionWithCaps(r: Rng): Msg {
  const caps: Record<string, unknown> = {};
  if (r.bool(0.7)) caps.max_msg_fds = r.pick([0, 1, 16, 253, 254, -1, 1e9, 'x', null]);
  if (r.bool(0.7)) caps.max_data_xfer_size = r.pick([0, 1, 4096, 1 << 20, 2 ** 32, -5, 1.5, '1']);
  if (r.bool(0.5)) caps.pgsizes = r.pick([4096, 0, 3, 2 ** 40]);
  if (r.bool(0.5)) caps.max_dma_maps = r.pick([0, 1, 65535, -1]);
  if (r.bool(0.5)) caps.migration = r.pick([{ pgsize: 4096, max_bitmap_size: 1 << 20 }, { pgsize: 0 }, { pgsize: 3 }, 5, null, { max_bitmap_size: -1 }]);
  if (r.bool(0.3)) caps.twin_socket = r.pick([{ supported: true }, { supported: 1 }, true]);
  if (r.bool(0.3)) caps.write_multiple = r.pick([true, false, 7]);
  if (r.bool(0.2)) caps.unknown_cap = { nested: [1, 2, 3] };
  let json = JSON.stringify(r.bool(0.9) ? { capabilities: caps } : caps);
  if (r.bool(0.1)) json = json.slice(0, r.int(json.length));
  const body = Buffer.concat([Buffer.from([0, 0, r.pick([0, 2, 3]), 0]), Buffer.from(json), r.bool(0.8) ? Buffer.from([0]) : Buffer.alloc(0)]);
  if (r.bool(0.1)) body.writeUInt16LE(r.pick([1, 0xffff]), 0);
  return { bytes: encode({ msgId: r.int(0x10000), cmd: Command.VERSION, flags: 0, errorNo: 0, payload: body }), fds: [] };
}

const PAGE = 4096;
const U64 = 0xffffffffffffffffn;

function iovaLike(r: Rng): bigint {
  return r.weighted([
    [6, BigInt(r.int(64) * PAGE)],
    [2, BigInt(r.int(1 << 20))],
    [2, r.pick(INTERESTING_U64)],
  ] as const);
}

function sizeLike(r: Rng): bigint {
  return r.weighted([
    [6, BigInt(r.range(1, 16) * PAGE)],
    [2, BigInt(r.int(1 << 20))],
    [1, BigInt(2 ** 32 + r.range(0, 256) * PAGE)],
    [2, r.pick(INTERESTING_U64)],
  ] as const);
}

/**
 * Well-formed messages with randomised fields (the mutations above seldom
 * keep a message valid): DMA_MAP with every flag combination and every kind
 * of descriptor, DMA_UNMAP, SET_IRQS with descriptors, region accesses at
 * the edges, migration state changes and dirty logging.
 */
function structured(r: Rng, kinds: string[]): Msg {
  const what = r.pick(['dma-map', 'dma-map', 'dma-unmap', 'set-irqs', 'irq-race', 'region', 'feature', 'write-multi', 'mig-data', 'dirty-pages'] as const);
  kinds.push(what);
  const msgId = r.int(0x10000);
  const msg = (cmd: number, payload: Buffer, fds: FdSpec[] = []): Msg => ({ bytes: encode({ msgId, cmd, flags: r.bool(0.05) ? HeaderFlag.NO_REPLY : 0, errorNo: 0, payload }), fds });
  switch (what) {
    case 'dma-map': {
      const p = Buffer.alloc(32);
      const flags = r.pick([1, 2, 3, 3, 3, 3 | 4, 3 | 8, 1 | 8, 4 | 8, 0, 16, 0xffffffff]);
      p.writeUInt32LE(r.bool(0.9) ? 32 : r.pick(INTERESTING_U32), 0);
      p.writeUInt32LE(flags >>> 0, 4);
      const size = sizeLike(r);
      p.writeBigUInt64LE(r.bool(0.7) ? 0n : iovaLike(r), 8);
      p.writeBigUInt64LE((iovaLike(r) + 0x100000n) & U64, 16);
      p.writeBigUInt64LE(size & 0xffffffffffffffffn, 24);
      const fileSize = r.pick([0, 4096, 65536, 1 << 20, 1 << 28, 2 ** 32 + 2 ** 20]);
      const fds: FdSpec[] = r.bool(0.8) ? [r.bool(0.6) ? { kind: r.pick(['memfd', 'memfd-unsealed', 'tmpfile'] as const), size: fileSize } : randomFd(r)] : [];
      return msg(Command.DMA_MAP, p, fds);
    }
    case 'dma-unmap': {
      const p = Buffer.alloc(24);
      p.writeUInt32LE(24, 0);
      p.writeUInt32LE(r.pick([0, 0, 0, 1, 2, 3, 4]), 4);
      p.writeBigUInt64LE((iovaLike(r) + 0x100000n) & U64, 8);
      p.writeBigUInt64LE(sizeLike(r) & 0xffffffffffffffffn, 16);
      return msg(Command.DMA_UNMAP, p);
    }
    case 'set-irqs': {
      const count = r.pick([0, 1, 1, 2, 0xffffffff]);
      const data = r.pick([1, 2, 4, 4, 4]);
      const action = r.pick([8, 16, 32, 32]);
      const bools = data === 2 && count < 8 ? r.bytes(count) : Buffer.alloc(0);
      const p = Buffer.alloc(20 + bools.length);
      p.writeUInt32LE(p.length, 0);
      p.writeUInt32LE(data | action, 4);
      p.writeUInt32LE(r.pick([0, 0, 1, 2, 3, 4, 5]), 8);
      p.writeUInt32LE(r.pick([0, 0, 1, 0xffffffff]), 12);
      p.writeUInt32LE(count >>> 0, 16);
      bools.copy(p, 20);
      const nfds = data === 4 ? r.pick([0, 1, 1, 2]) : r.pick([0, 0, 0, 1]);
      const fds: FdSpec[] = Array.from({ length: nfds }, () => (r.bool(0.7) ? { kind: r.pick(['eventfd', 'eventfd-blocking'] as const) } : randomFd(r)));
      return msg(Command.DEVICE_SET_IRQS, p, fds);
    }
    case 'irq-race': {
      // The interrupt race: eventfds whose counter has no room, as a client
      // racing the server's write leaves them.  The harness triggers every
      // vector, then drains these and expects what waited to arrive.
      const index = r.pick([0, 0, 3, 4]); // the sample's one-vector indexes: INTx, ERR, REQ
      const count = 1;
      const p = Buffer.alloc(20);
      p.writeUInt32LE(20, 0);
      p.writeUInt32LE(4 | 32, 4); // DATA_EVENTFD | ACTION_TRIGGER
      p.writeUInt32LE(index, 8);
      p.writeUInt32LE(0, 12);
      p.writeUInt32LE(count, 16);
      const fds: FdSpec[] = Array.from({ length: count }, () => ({ kind: r.bool(0.8) ? 'eventfd-full' : 'eventfd-blocking' }) as FdSpec);
      return msg(Command.DEVICE_SET_IRQS, p, fds);
    }
    case 'region': {
      const write = r.bool(0.5);
      const count = r.pick([0, 1, 2, 4, 8, 16, 4096, 0x3000, 0x3001, 0xffffffff]);
      const data = write && count <= 0x4000 ? r.bytes(count) : Buffer.alloc(0);
      const p = Buffer.alloc(16 + data.length);
      p.writeBigUInt64LE(r.bool(0.7) ? BigInt(r.pick([0, 4, 8, 0xffc, 0x1000, 0x2ff8, 0x3000, 0x40, 0xfc, 0x100])) : r.pick(INTERESTING_U64), 0);
      p.writeUInt32LE(r.pick([0, 1, 1, 1, 2, 7, 7, 8, 9, 10, 0xffffffff]), 8);
      p.writeUInt32LE(count >>> 0, 12);
      data.copy(p, 16);
      return msg(write ? Command.REGION_WRITE : Command.REGION_READ, p);
    }
    case 'write-multi': {
      const count = r.pick([0, 1, 2, 3, 8]);
      const p = Buffer.alloc(8 + count * 24);
      p.writeBigUInt64LE(BigInt(r.bool(0.9) ? count : r.int(10)), 0);
      for (let i = 0; i < count; i++) {
        const at = 8 + i * 24;
        p.writeBigUInt64LE(r.bool(0.8) ? BigInt(r.pick([0, 4, 8, 0x2ff8, 0x3000, 0x10, 0x3c])) : r.pick(INTERESTING_U64), at);
        p.writeUInt32LE(r.pick([0, 1, 1, 7, 9, 2]), at + 8);
        p.writeUInt32LE(r.pick([0, 1, 2, 4, 8, 8, 9]), at + 12);
        r.bytes(8).copy(p, at + 16);
      }
      return msg(Command.REGION_WRITE_MULTI, p);
    }
    case 'mig-data': {
      const write = r.bool(0.5);
      const size = r.pick([0, 1, 1024, 4096, 0x3008, 1 << 20, (1 << 20) + 1, 0xffffffff]);
      const data = write && size <= 0x4000 ? r.bytes(size) : Buffer.alloc(0);
      const p = Buffer.alloc(8 + data.length);
      p.writeUInt32LE(r.bool(0.8) ? (8 + size) >>> 0 : r.pick(INTERESTING_U32), 0);
      p.writeUInt32LE(size >>> 0, 4);
      data.copy(p, 8);
      return msg(write ? Command.MIG_DATA_WRITE : Command.MIG_DATA_READ, p);
    }
    case 'dirty-pages': {
      const flags = r.pick([1, 2, 4, 4, 0, 3, 8]);
      const p = Buffer.alloc(flags === 4 ? 8 + 32 : 8);
      if (flags === 4) {
        p.writeBigUInt64LE((iovaLike(r) + 0x100000n) & U64, 8);
        const size = sizeLike(r) & U64;
        p.writeBigUInt64LE(size, 16);
        const pg = r.pick([4096n, 4096n, 1n, 0n, 3n]);
        p.writeBigUInt64LE(pg, 24);
        p.writeBigUInt64LE(pg > 0n && r.bool(0.7) ? ((size / pg + 63n) / 64n) * 8n : r.pick(INTERESTING_U64), 32);
      }
      p.writeUInt32LE(r.bool(0.8) ? p.length + (flags === 4 ? r.pick([0, 64, 4096]) : 0) : r.pick(INTERESTING_U32), 0);
      p.writeUInt32LE(flags, 4);
      return msg(Command.DIRTY_PAGES, p);
    }
    case 'feature': {
      const feature = r.pick([1, 2, 2, 2, 6, 7, 8, 9, 10, 0, 11, 0xffff]);
      const ops = r.pick([1 << 16, 1 << 17, 1 << 18, (1 << 18) | (1 << 16), (1 << 16) | (1 << 17), 0]);
      let data = Buffer.alloc(0);
      if (feature === 2) {
        data = Buffer.alloc(8);
        data.writeUInt32LE(r.range(0, 9), 0);
      } else if (feature === 6) {
        const n = r.pick([0, 0, 1, 2]);
        data = Buffer.alloc(16 + n * 16);
        data.writeBigUInt64LE(r.pick([4096n, 4096n, 1n, 0n, 2n ** 40n, 3n]), 0);
        data.writeUInt32LE(n, 8);
        for (let i = 0; i < n; i++) {
          data.writeBigUInt64LE((iovaLike(r) + 0x100000n) & U64, 16 + i * 16);
          data.writeBigUInt64LE(sizeLike(r), 24 + i * 16);
        }
      } else if (feature === 8) {
        data = Buffer.alloc(24);
        data.writeBigUInt64LE((iovaLike(r) + 0x100000n) & U64, 0);
        data.writeBigUInt64LE(sizeLike(r), 8);
        data.writeBigUInt64LE(r.pick([4096n, 4096n, 1n, 0n, 2n ** 40n]), 16);
      }
      const p = Buffer.alloc(8 + data.length);
      p.writeUInt32LE(r.bool(0.9) ? p.length + (feature === 8 ? r.pick([0, 8, 64, 4096]) : 0) : r.pick(INTERESTING_U32), 0);
      p.writeUInt32LE((feature | ops) >>> 0, 4);
      data.copy(p, 8);
      return msg(Command.DEVICE_FEATURE, p);
    }
  }
}
