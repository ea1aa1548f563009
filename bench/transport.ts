// Transport benchmark between two Node processes over a UNIX socketpair:
// the native addon's endpoint against node:net (NetEndpoint), both with the
// same framer.  Both processes are pinned to one CPU when taskset exists:
// cross-CPU wakeups on a small VM cost tens of microseconds and land
// unpredictably, which would swamp the figures.
//
//   node dist/bench/transport.js        prints the table
import { spawn, spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { requireNative } from '../src/native/index.js';
import { Command, HEADER_SIZE, HeaderFlag } from '../src/protocol/constants.js';
import { writeHeader } from '../src/protocol/header.js';
import { Connection } from '../src/transport/connection.js';
import type { Endpoint } from '../src/transport/endpoint.js';
import type { Frame } from '../src/transport/framer.js';
import { closeFd, endpointFromFd, type TransportKind } from '../src/transport/socket.js';
import { type BenchRow, formatRows, withBaseline } from './rows.js';

const MiB = 1024 * 1024;
const LIMITS = { maxMessageSize: 2 * MiB, maxFds: 0 };
const peerScript = join(dirname(fileURLToPath(import.meta.url)), 'transport-peer.js');

export interface TransportBenchOptions {
  rttIterations?: number;
  streamBytes?: number;
  bigIterations?: number;
}

function hasTaskset(): boolean {
  return spawnSync('taskset', ['-V'], { stdio: 'ignore' }).status === 0;
}

/** Pins every thread of this process to CPU 0; returns how to undo it. */
function pinSelf(): (() => void) | null {
  const cur = spawnSync('taskset', ['-p', String(process.pid)], { encoding: 'utf8' });
  const mask = /:\s*([0-9a-f]+)\s*$/i.exec(cur.stdout ?? '')?.[1];
  const r = spawnSync('taskset', ['-a', '-p', '-c', '0', String(process.pid)], { stdio: 'ignore' });
  if (r.status !== 0 || !mask) return null;
  return () => void spawnSync('taskset', ['-a', '-p', mask, String(process.pid)], { stdio: 'ignore' });
}

interface Peer {
  ep: Endpoint;
  /** Frames from the peer go here. */
  onFrame: (f: Frame) => void;
  stop(): Promise<void>;
}

/** Spawns the peer on one end of a socketpair and wraps our end in `kind`. */
function startPeer(kind: TransportKind, pinned: boolean): Peer {
  const n = requireNative('the transport benchmark');
  const [mine, theirs] = n.socketpair();
  const args = [process.execPath, peerScript, kind];
  const child = pinned
    ? spawn('taskset', ['-c', '0', ...args], { stdio: ['ignore', 'inherit', 'inherit', theirs] })
    : spawn(args[0]!, args.slice(1), { stdio: ['ignore', 'inherit', 'inherit', theirs] });
  n.close(theirs);
  const exited = new Promise<void>((res) => child.once('exit', () => res()));
  const ep = endpointFromFd(mine, LIMITS, { transport: kind });
  const peer: Peer = {
    ep,
    onFrame: () => {},
    async stop() {
      ep.close();
      await exited;
    },
  };
  ep.onFrame = (f) => peer.onFrame(f);
  return peer;
}

function header(msgId: number, cmd: number, payloadLen: number, flags = 0): Buffer {
  const h = Buffer.alloc(HEADER_SIZE);
  writeHeader(h, msgId, cmd, HEADER_SIZE + payloadLen, flags, 0);
  return h;
}

/** Request/reply round trips, one at a time; returns each one's duration in µs. */
function roundTrips(peer: Peer, iterations: number, warmup: number, payload: Buffer | null): Promise<Float64Array> {
  const hdr = header(1, payload && payload.length > 64 ? Command.REGION_WRITE : Command.REGION_READ, payload ? payload.length : 0);
  const times = new Float64Array(iterations);
  return new Promise((resolve) => {
    let i = -warmup;
    let t0 = 0;
    peer.onFrame = () => {
      const t = performance.now();
      if (i >= 0) times[i] = (t - t0) * 1000;
      if (++i === iterations) {
        peer.onFrame = () => {};
        resolve(times);
        return;
      }
      t0 = performance.now();
      peer.ep.send(hdr, payload, null);
    };
    t0 = performance.now();
    peer.ep.send(hdr, payload, null);
  });
}

function nextFrame(peer: Peer): Promise<Buffer> {
  return new Promise((resolve) => {
    peer.onFrame = (f) => {
      peer.onFrame = () => {};
      resolve(Buffer.from(f.payload));
    };
  });
}

/** Streams `total` bytes in `size` messages (No_reply) and waits for the sink's count. */
async function stream(peer: Peer, total: number, size: number): Promise<{ seconds: number; bytes: number }> {
  const payload = Buffer.alloc(size, 0xa5);
  const hdr = header(2, Command.REGION_WRITE, size, HeaderFlag.NO_REPLY);
  const sync = header(3, Command.DEVICE_RESET, 0);
  const count = Math.ceil(total / size);
  // Keep a few messages queued so the socket never runs dry, without
  // queueing the whole stream in memory.
  const BATCH = 4;
  const t0 = performance.now();
  for (let sent = 0; sent < count; ) {
    for (let k = 0; k < BATCH && sent < count; k++, sent++) peer.ep.send(hdr, payload, null);
    await peer.ep.whenDrained();
  }
  const reply = nextFrame(peer);
  peer.ep.send(sync, null, null);
  const got = (await reply).readBigUInt64LE(0);
  const seconds = (performance.now() - t0) / 1000;
  if (got !== BigInt(count * size)) throw new Error(`sink counted ${got} bytes, sent ${count * size}`);
  return { seconds, bytes: count * size };
}

function percentile(sorted: Float64Array, p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

interface KindFigures {
  p50: number;
  p99: number;
  connP50: number;
  streamGBs: number;
  bigP50: number;
  bigGBs: number;
}

async function measure(kind: TransportKind, pinned: boolean, o: Required<TransportBenchOptions>): Promise<KindFigures> {
  const peer = startPeer(kind, pinned);
  try {
    const small = (await roundTrips(peer, o.rttIterations, 2000, null)).sort();

    // The same round trip through Connection.request (promises, id matching).
    const conn = new Connection(peer.ep, { closeFd });
    const ct = new Float64Array(Math.min(o.rttIterations, 10_000));
    for (let i = -1000; i < ct.length; i++) {
      const t0 = performance.now();
      await conn.request(Command.REGION_READ, null);
      if (i >= 0) ct[i] = (performance.now() - t0) * 1000;
    }
    ct.sort();
    // Hand frames back to the raw handler for the rest.
    peer.ep.onFrame = (f) => peer.onFrame(f);

    await stream(peer, 64 * MiB, MiB); // warm-up
    const s = await stream(peer, o.streamBytes, MiB);

    const big = Buffer.alloc(MiB, 0x5a);
    const bt = await roundTrips(peer, o.bigIterations, 50, big);
    const total = bt.reduce((a, b) => a + b, 0);
    bt.sort();
    return {
      p50: percentile(small, 50),
      p99: percentile(small, 99),
      connP50: percentile(ct, 50),
      streamGBs: s.bytes / s.seconds / 1e9,
      bigP50: percentile(bt, 50),
      bigGBs: (o.bigIterations * MiB) / (total / 1e6) / 1e9,
    };
  } finally {
    await peer.stop();
  }
}

export async function benchTransport(opts: TransportBenchOptions = {}): Promise<BenchRow[]> {
  const o: Required<TransportBenchOptions> = {
    rttIterations: opts.rttIterations ?? 20_000,
    streamBytes: opts.streamBytes ?? 1024 * MiB,
    bigIterations: opts.bigIterations ?? 1000,
  };
  const unpin = hasTaskset() ? pinSelf() : null;
  const pinned = unpin !== null;
  try {
    const net = await measure('net', pinned, o);
    const nat = await measure('native', pinned, o);
    const tag = pinned ? ' (1 CPU)' : ' (unpinned)';
    const pair = (name: string, unit: string, a: number, b: number): BenchRow[] => {
      const base: BenchRow = { name: `net ${name}${tag}`, value: b, unit };
      return [withBaseline({ name: `native ${name}${tag}`, value: a, unit }, base), base];
    };
    return [
      ...pair('RTT 16-byte msg p50', 'µs', nat.p50, net.p50),
      ...pair('RTT 16-byte msg p99', 'µs', nat.p99, net.p99),
      ...pair('Connection.request RTT p50', 'µs', nat.connP50, net.connP50),
      ...pair('stream 1 MiB msgs', 'GB/s', nat.streamGBs, net.streamGBs),
      ...pair('1 MiB request + ack p50', 'µs', nat.bigP50, net.bigP50),
      ...pair('1 MiB request + ack', 'GB/s', nat.bigGBs, net.bigGBs),
    ];
  } finally {
    unpin?.();
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const rows = await benchTransport();
  console.log(formatRows(rows));
}
