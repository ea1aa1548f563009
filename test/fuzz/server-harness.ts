// Server fuzzing harness: the `sample` device served in this process on a
// socket, a raw client that sends each case's bytes and descriptors, and the
// checks after every case:
//  - every message that needs a reply got exactly one, in order, with its id
//    and command, and then a well-formed DEVICE_GET_INFO is answered
//    correctly (the stream is in sync);
//  - the device state (config space, BAR0/BAR1, DMA mappings, IRQ
//    descriptors and masks, migration state, dirty logging) is unchanged
//    unless some message of the case was accepted (or was a
//    REGION_WRITE_MULTI, whose writes before a refused one stand);
//  - the process holds exactly the descriptors and memory mappings the
//    server accounts for (DMA mappings, interrupt eventfds) and no others;
//    during a descriptor flood, never more than max_msg_fds beyond them,
//    and a message that brought more is refused with EINVAL;
//  - nothing is thrown out of the event loop (uncaughtException,
//    unhandledRejection), and every case completes within its timeout.
// A header declaring a huge size makes the server skip that many bytes: up
// to PAD_BUDGET the harness sends them (zeros) and carries on; beyond, it
// reconnects, and says so in the statistics.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { createSample, type SampleDevice } from '../../src/devices/sample.js';
import { native } from '../../src/native/index.js';
import { formatCapabilities } from '../../src/protocol/capabilities.js';
import { Command, DEFAULT_MAX_DATA_XFER_SIZE, Errno, Feature, FeatureFlag, HEADER_SIZE, HeaderFlag, MigState, errnoName } from '../../src/protocol/constants.js';
import { writeHeader } from '../../src/protocol/header.js';
import { FeatureStruct, MigStateStruct } from '../../src/protocol/messages/feature.js';
import { version } from '../../src/protocol/messages/version.js';
import { VfioUserServer } from '../../src/server/server.js';
import { NativeEndpoint } from '../../src/transport/native-endpoint.js';
import type { Frame } from '../../src/transport/framer.js';
import { encode } from './corpus.js';
import { closeFds, openFd, openFdCount } from './fds.js';
import { type ServerCase, serverCase } from './server-cases.js';
import { type WireMessage, expectsReply, parseWire, silentCommand } from './wire.js';
import { emptyFaults, type FaultCounts } from './faults.js';
import { until } from '../helpers/wait.js';

/** Bytes of a skipped body the harness is willing to send to stay in sync. */
const PAD_BUDGET = 2 * 1024 * 1024;
const PROBE_ID = 0xfffe;
/** The server's max_msg_fds (its default). */
const MAX_MSG_FDS = 16;

export interface Failure {
  index: number;
  kind: string;
  what: string;
}

export interface FuzzStats extends FaultCounts {
  cases: number;
  /** Replies to the cases' messages: 'ok' or the errno name. */
  replies: Record<string, number>;
  reconnects: number;
  failures: Failure[];
}

export function emptyStats(): FuzzStats {
  return { cases: 0, replies: {}, ...emptyFaults(), reconnects: 0, failures: [] };
}

interface GotReply {
  msgId: number;
  cmd: number;
  flags: number;
  errorNo: number;
  msgSize: number;
  payload: Buffer;
}

class RawClient {
  readonly ep: NativeEndpoint;
  replies: GotReply[] = [];
  serverRequests = 0;
  closed = false;
  private readonly kept: number[] = [];
  private waiter: (() => void) | null = null;

  constructor(fd: number) {
    this.ep = new NativeEndpoint(fd, { maxMessageSize: 64 * 1024 * 1024, maxFds: 253 });
    this.ep.onFrame = (f) => this.onFrame(f);
    this.ep.onClose = () => {
      this.closed = true;
      this.wake();
    };
  }

  private onFrame(f: Frame): void {
    // A twin socket handed over in a VERSION reply stays open with us (its
    // closing would end the session); everything else is closed at once.
    if (f.cmd === Command.VERSION && !(f.flags & HeaderFlag.ERROR)) this.kept.push(...f.fds);
    else for (const fd of f.fds) native!.close(fd);
    if ((f.flags & HeaderFlag.TYPE_MASK) === HeaderFlag.TYPE_REPLY) {
      this.replies.push({ msgId: f.msgId, cmd: f.cmd, flags: f.flags, errorNo: f.errorNo, msgSize: f.msgSize, payload: Buffer.from(f.payload) });
      this.wake();
      return;
    }
    // A request from the server (DMA_READ/WRITE by the device): refuse it.
    this.serverRequests++;
    if (f.flags & HeaderFlag.NO_REPLY) return;
    const h = Buffer.alloc(HEADER_SIZE);
    writeHeader(h, f.msgId, f.cmd, HEADER_SIZE, HeaderFlag.TYPE_REPLY | HeaderFlag.ERROR, Errno.EFAULT);
    if (!this.ep.closed) this.ep.send(h, null, null);
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  /** Waits until `n` replies have arrived (false on timeout or close). */
  async waitReplies(n: number, ms: number): Promise<boolean> {
    const end = Date.now() + ms;
    while (this.replies.length < n) {
      if (this.closed) return false;
      const left = end - Date.now();
      if (left <= 0) return false;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    return true;
  }

  send(bytes: Buffer, fds: number[] | null = null): void {
    this.ep.send(bytes, null, fds && fds.length ? fds : null);
  }

  close(): void {
    this.ep.close();
    for (const fd of this.kept) native!.close(fd);
    this.kept.length = 0;
  }
}

export interface ServerFuzzOptions {
  seed: number;
  /** Per-case timeout for the replies and the probe (ms). */
  timeoutMs?: number;
  /** Called after each case (progress). */
  onCase?: (index: number, stats: FuzzStats) => void;
}

const CLIENT_CAPS = formatCapabilities({
  maxMsgFds: 16,
  maxDataXferSize: DEFAULT_MAX_DATA_XFER_SIZE,
  migration: { pgsize: 4096, maxBitmapSize: 1 << 20 },
  writeMultiple: true,
});

/** A description of everything in the device a rejected message must not touch. */
function deviceSnapshot(s: SampleDevice): string {
  const d = s.device;
  const irqs: string[] = [];
  for (let i = 0; i < 5; i++) {
    const n = d.irqs.count(i);
    let v = '';
    for (let k = 0; k < n; k++) v += `${d.irqs.hasEventfd(i, k) ? 'f' : '-'}${d.irqs.isMasked(i, k) ? 'm' : '-'}${d.irqs.isPending(i, k) ? 'p' : '-'}`;
    irqs.push(`${n}:${v}`);
  }
  return JSON.stringify({
    config: crc32(d.pci.snapshot()),
    bar0: s.bar0.toString(),
    bar1: crc32(s.bar1),
    dma: d.dma.mappings.map((m) => `${m.iova}+${m.size}/${m.prot}/${m.mode}`),
    irqs,
    mig: d.migration?.state,
    logging: `${d.logging.active}/${d.logging.pageSize}/${d.logging.bitmapBytes}`,
  });
}

export class ServerFuzzer {
  readonly stats = emptyStats();
  private readonly dir = mkdtempSync(join(tmpdir(), 'vfu-fuzz-'));
  private readonly path = join(this.dir, 'fuzz.sock');
  private sample!: SampleDevice;
  private server!: VfioUserServer;
  private client: RawClient | null = null;
  private negotiated = false;
  private probeReply: Buffer | null = null;
  private baseFds = 0;
  private baseMaps = 0;
  private current: ServerCase | null = null;
  private readonly maxMessageSize = DEFAULT_MAX_DATA_XFER_SIZE + 4096;
  private readonly timeoutMs: number;
  private readonly onException = (e: unknown): void => {
    this.stats.crashes++;
    this.fail(`thrown out of the event loop: ${(e as Error)?.stack ?? String(e)}`);
  };

  constructor(private readonly opts: ServerFuzzOptions) {
    this.timeoutMs = opts.timeoutMs ?? 3000;
  }

  async start(): Promise<void> {
    process.on('uncaughtException', this.onException);
    process.on('unhandledRejection', this.onException);
    this.sample = createSample({ v1: true });
    this.server = await VfioUserServer.listen(this.sample.device, this.path, { replyTimeoutMs: 1000 });
    await this.connect(true);
    // the reference answer to the probe, and the resting descriptor count
    this.sendProbe();
    if (!(await this.client!.waitReplies(1, this.timeoutMs))) throw new Error('the server does not answer DEVICE_GET_INFO');
    this.probeReply = this.client!.replies[0]!.payload;
    this.client!.replies = [];
    this.baseFds = openFdCount() - this.serverHeldFds();
    this.baseMaps = native!.liveMappings() - this.serverHeldMaps();
  }

  async stop(): Promise<void> {
    await this.disconnect();
    await this.server.close();
    rmSync(this.dir, { recursive: true, force: true });
    process.off('uncaughtException', this.onException);
    process.off('unhandledRejection', this.onException);
  }

  private fail(what: string): void {
    const c = this.current;
    if (this.stats.failures.length < 50) this.stats.failures.push({ index: c?.index ?? -1, kind: c?.kind ?? '-', what });
  }

  /** Descriptors the server holds for its client (DMA files, IRQ eventfds). */
  private serverHeldFds(): number {
    const d = this.sample.device;
    return d.dma.mappings.filter((m) => m.fd >= 0).length + d.irqs.fdCount;
  }

  private serverHeldMaps(): number {
    return this.sample.device.dma.mappings.filter((m) => m.mode === 'mmap').length;
  }

  private async connect(negotiate: boolean): Promise<void> {
    const fd = native!.connect(this.path);
    if (fd < 0) throw new Error(`connect: ${-fd}`);
    this.client = new RawClient(fd);
    this.negotiated = false;
    // wait until the server has taken this connection as its session
    await until(() => this.server.session !== null && !this.server.session.conn.closed, 5000, 'a session', 1);
    if (negotiate) {
      const body = version.encode({ major: 0, minor: 2, json: CLIENT_CAPS, nul: true });
      this.client.send(encode({ msgId: 0, cmd: Command.VERSION, flags: 0, errorNo: 0, payload: body }));
      if (!(await this.client.waitReplies(1, this.timeoutMs)) || this.client.replies[0]!.flags & HeaderFlag.ERROR) {
        throw new Error('negotiation failed');
      }
      this.client.replies = [];
      this.negotiated = true;
    }
  }

  private async disconnect(): Promise<void> {
    if (!this.client) return;
    const had = this.server.session !== null;
    this.client.close();
    this.client = null;
    if (had) await until(() => this.server.session === null, 5000, 'the session to end', 1).catch(() => this.fail('the server did not release the session'));
  }

  private async reconnect(negotiate = true): Promise<void> {
    this.stats.reconnects++;
    await this.disconnect();
    await this.connect(negotiate);
  }

  private sendProbe(): void {
    const b = Buffer.alloc(HEADER_SIZE + 16);
    writeHeader(b, PROBE_ID, Command.DEVICE_GET_INFO, b.length, 0, 0);
    b.writeUInt32LE(16, HEADER_SIZE);
    this.client!.send(b);
  }

  private sendFeatureSetState(state: number): void {
    const p = Buffer.alloc(FeatureStruct.size + MigStateStruct.size);
    FeatureStruct.write(p, { argsz: p.length, flags: Feature.MIG_DEVICE_STATE | FeatureFlag.SET });
    MigStateStruct.write(p, { deviceState: state, dataFd: -1 }, FeatureStruct.size);
    this.client!.send(encode({ msgId: 0x7000, cmd: Command.DEVICE_FEATURE, flags: 0, errorNo: 0, payload: p }));
  }

  /** Runs cases [from, to). */
  async run(from: number, to: number): Promise<void> {
    for (let i = from; i < to; i++) {
      this.current = { index: i, kind: '?', preNegotiation: false, pieces: [] };
      try {
        const c = serverCase(this.opts.seed, i, { maxMessageSize: this.maxMessageSize, maxMsgFds: MAX_MSG_FDS });
        this.current = c;
        await this.runCase(c);
      } catch (e) {
        this.fail(`harness: ${(e as Error).stack ?? e}`);
        await this.reconnect().catch(() => {});
      }
      this.stats.cases++;
      this.opts.onCase?.(i, this.stats);
    }
    this.current = null;
  }

  private async runCase(c: ServerCase): Promise<void> {
    if (c.preNegotiation) await this.reconnect(false);
    else if (!this.client || this.client.closed || !this.negotiated) await this.reconnect(true);
    const cl = this.client!;
    const before = deviceSnapshot(this.sample);
    cl.replies = [];

    // send the pieces, yielding between them so the server reads them apart
    let stream = Buffer.alloc(0);
    const raceFds: number[] = [];
    for (let k = 0; k < c.pieces.length; k++) {
      const p = c.pieces[k]!;
      if (p.bytes.length === 0) continue;
      const fds = p.fds.map(openFd);
      cl.send(p.bytes, fds);
      await cl.ep.whenDrained();
      // full eventfds stay open here until the interrupt race is checked
      closeFds(fds.filter((fd, j) => p.fds[j]!.kind !== 'eventfd-full' || (raceFds.push(fd), false)));
      stream = Buffer.concat([stream, p.bytes]);
      if (k < c.pieces.length - 1) await new Promise((r) => setImmediate(r));
      if (c.floodFds !== undefined) this.checkFlood();
    }

    // complete what the server still waits for, if affordable
    let wire = parseWire(stream, this.maxMessageSize);
    let mustReconnect = false;
    for (let guard = 0; wire.owed > 0 && guard < 4; guard++) {
      if (wire.owed > PAD_BUDGET) {
        mustReconnect = true;
        break;
      }
      const pad = Buffer.alloc(wire.owed);
      cl.send(pad);
      stream = Buffer.concat([stream, pad]);
      const last = wire.messages[wire.messages.length - 1];
      if (last?.rejected && wire.partialHeader === 0) this.stats.resyncByBody++;
      wire = parseWire(stream, this.maxMessageSize);
    }

    // first every reply the case's messages need, then the probe(s)
    const expected = wire.messages.filter(expectsReply);
    const answered = await cl.waitReplies(expected.length, this.timeoutMs);
    if (!answered) {
      this.lostCase(cl, `${cl.replies.length} of ${expected.length} replies`);
      closeFds(raceFds);
      await this.reconnect();
      return;
    }
    const got = cl.replies.slice(0, expected.length);
    // REGION_WRITE_MULTI applies its writes in order and stops at the first
    // the device refuses (as the same writes sent one by one would): an
    // error reply may follow some applied writes.
    const partial = wire.messages.some((m) => m.cmd === Command.REGION_WRITE_MULTI && !m.rejected);
    const accepted = this.checkReplies(expected, got) || wire.messages.some(silentCommand) || partial;
    if (c.floodFds !== undefined && c.floodFds > MAX_MSG_FDS && expected.length === 1 && !expected[0]!.rejected) {
      const g = got[0]!;
      if (!(g.flags & HeaderFlag.ERROR) || g.errorNo !== Errno.EINVAL) {
        this.stats.desyncs++;
        this.fail(`a message that brought ${c.floodFds} descriptors was answered ${g.flags & HeaderFlag.ERROR ? errnoName(g.errorNo) : 'ok'}, not EINVAL`);
      }
    }
    await new Promise((r) => setImmediate(r));
    if (cl.replies.length > expected.length) {
      this.stats.desyncs++;
      this.fail(`${cl.replies.length - expected.length} replies to messages that needed none`);
    }
    if (!mustReconnect) {
      cl.replies = [];
      if (c.preNegotiation) {
        const body = version.encode({ major: 0, minor: 2, json: CLIENT_CAPS, nul: true });
        cl.send(encode({ msgId: PROBE_ID - 1, cmd: Command.VERSION, flags: 0, errorNo: 0, payload: body }));
      }
      this.sendProbe();
      const want = c.preNegotiation ? 2 : 1;
      if (!(await cl.waitReplies(want, this.timeoutMs))) {
        this.lostCase(cl, 'no answer to the probe');
        closeFds(raceFds);
        await this.reconnect();
        return;
      }
      const probes = cl.replies;
      const probe = probes[probes.length - 1];
      if (c.preNegotiation) {
        const v = probes[0];
        if (!v || v.cmd !== Command.VERSION || (v.flags & HeaderFlag.ERROR && v.errorNo !== Errno.EINVAL)) {
          this.stats.desyncs++;
          this.fail('VERSION after the case was not answered as expected');
        }
      }
      if (!probe || probe.msgId !== PROBE_ID || probe.cmd !== Command.DEVICE_GET_INFO || probe.flags & HeaderFlag.ERROR || !probe.payload.equals(this.probeReply!)) {
        this.stats.desyncs++;
        this.fail(`probe answered wrongly: ${probe ? `${probe.cmd} #${probe.msgId} flags ${probe.flags} errno ${probe.errorNo}` : 'nothing'}`);
      }
      await new Promise((r) => setImmediate(r));
      if (cl.replies.length > want) {
        this.stats.desyncs++;
        this.fail(`${cl.replies.length - want} extra replies`);
      }
    }

    if (!accepted) {
      const after = deviceSnapshot(this.sample);
      if (after !== before) {
        this.stats.stateViolations++;
        this.fail(`state changed although every message was refused:\n  before ${before}\n  after  ${after}`);
      }
    }

    if (accepted) this.exerciseDevice();
    if (raceFds.length > 0) await this.checkIrqRace(raceFds);

    if (mustReconnect || c.preNegotiation) {
      this.stats.resyncByReconnect += mustReconnect ? 1 : 0;
      await this.reconnect();
    } else {
      await this.normalize();
    }
    this.checkResources();
  }

  /**
   * The device uses what it was given: its interrupts, and a direct read and
   * write at both ends of every mapping reached without messages.  Errors
   * are fine; blocking on a client's descriptor, or a crash, is what this
   * looks for.
   */
  private exerciseDevice(): void {
    const d = this.sample.device;
    // interrupts through whatever descriptors the client gave
    for (let i = 0; i < 5; i++) {
      for (let v = 0; v < d.irqs.count(i); v++) {
        if (d.irqs.hasEventfd(i, v)) d.irqs.trigger(i, v);
      }
    }
    const dma = d.dma;
    for (const m of dma.mappings) {
      if (m.mode === 'message') continue;
      const n = Math.min(8, m.size);
      for (const at of [m.iova, m.iova + m.size - n]) {
        try {
          const b = Buffer.alloc(n);
          dma.readSync(at, b);
          if (m.prot & 2) dma.writeSync(at, b);
        } catch {
          // refused or failed cleanly
        }
      }
    }
  }

  /**
   * The interrupt race: interrupts raised into an eventfd with no room must
   * have returned at once (we got here) and wait; once the client drains
   * the counter, each must arrive without another message.
   */
  private async checkIrqRace(fds: number[]): Promise<void> {
    const d = this.sample.device;
    const stalled = (): number => {
      let k = 0;
      for (let i = 0; i < 5; i++) for (let v = 0; v < d.irqs.count(i); v++) if (d.irqs.isStalled(i, v)) k++;
      return k;
    };
    const waiting = stalled();
    const delivered0 = d.irqs.delivered.reduce((a, b) => a + b, 0);
    // read only what is there: these are blocking and we are the server's thread too
    for (const fd of fds) if (!/eventfd-count:\s*0\n/.test(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))) native!.eventfdRead(fd);
    try {
      await until(() => stalled() === 0, this.timeoutMs);
    } catch {
      this.stats.hangs++;
      this.fail(`${stalled()} of ${waiting} interrupts waiting on a full eventfd not delivered after the drain`);
    }
    const delivered = d.irqs.delivered.reduce((a, b) => a + b, 0) - delivered0;
    if (delivered < waiting) this.fail(`${waiting} interrupts waited on a full eventfd, ${delivered} delivered after the drain`);
    closeFds(fds);
  }

  private lostCase(cl: RawClient, what: string): void {
    if (cl.closed) {
      this.stats.disconnects++;
      this.fail(`the server closed the connection (${what})`);
    } else {
      this.stats.hangs++;
      this.fail(`no reply in ${this.timeoutMs} ms (${what})`);
    }
  }

  /**
   * One reply per message needing one, with its id and command, in order;
   * except EBUSY refusals (the queue behind a slow command was full), which
   * are sent at once and so may overtake.  Returns whether any succeeded.
   */
  private checkReplies(expected: WireMessage[], got: GotReply[]): boolean {
    let accepted = false;
    const key = (m: { msgId: number; cmd: number }): string => `${m.cmd}#${m.msgId}`;
    const want = new Map<string, number>();
    for (const e of expected) want.set(key(e), (want.get(key(e)) ?? 0) + 1);
    for (const g of got) want.set(key(g), (want.get(key(g)) ?? 0) - 1);
    if ([...want.values()].some((n) => n !== 0)) {
      this.stats.desyncs++;
      this.fail(`replies ${got.map(key).join(' ')} do not answer ${expected.map(key).join(' ')}`);
      return true;
    }
    let k = 0;
    for (const g of got) {
      const busy = (g.flags & HeaderFlag.ERROR) !== 0 && g.errorNo === Errno.EBUSY;
      if (!busy) {
        while (k < expected.length && key(expected[k]!) !== key(g)) k++;
        if (k === expected.length) {
          this.stats.desyncs++;
          this.fail(`reply ${key(g)} out of order`);
          return true;
        }
        k++;
      }
      if (g.flags & HeaderFlag.ERROR) {
        const name = errnoName(g.errorNo);
        this.stats.replies[name] = (this.stats.replies[name] ?? 0) + 1;
        if (g.errorNo === 0 || g.msgSize !== HEADER_SIZE) {
          this.stats.desyncs++;
          this.fail(`malformed error reply: errno ${g.errorNo}, size ${g.msgSize}`);
        }
      } else {
        this.stats.replies.ok = (this.stats.replies.ok ?? 0) + 1;
        accepted = true;
      }
    }
    return accepted;
  }

  /** Puts a device a case moved out of RUNNING back, and trims mappings. */
  private async normalize(): Promise<void> {
    const d = this.sample.device;
    for (let attempt = 0; attempt < 3 && d.migration!.state !== MigState.RUNNING; attempt++) {
      const cl = this.client!;
      cl.replies = [];
      if (d.migration!.state === MigState.ERROR) {
        cl.send(encode({ msgId: 0x7001, cmd: Command.DEVICE_RESET, flags: 0, errorNo: 0, payload: Buffer.alloc(0) }));
        await cl.waitReplies(1, this.timeoutMs);
        cl.replies = [];
      }
      this.sendFeatureSetState(MigState.RUNNING);
      await cl.waitReplies(1, this.timeoutMs);
    }
    if (d.migration!.state !== MigState.RUNNING || d.dma.count > 32 || d.logging.active || this.stats.cases % 1000 === 999) {
      await this.reconnect();
      if (d.migration!.state !== MigState.RUNNING) this.fail(`device left in migration state ${d.migration!.state} after a reconnect`);
    }
  }

  /**
   * During a flood: the server holds at most max_msg_fds descriptors of the
   * message in progress (what it has not read yet is not counted: the check
   * can miss, never cry wolf).
   */
  private checkFlood(): void {
    const extra = openFdCount() - this.baseFds - this.serverHeldFds();
    if (extra > MAX_MSG_FDS) {
      this.stats.fdsLeaked += extra - MAX_MSG_FDS;
      this.fail(`${extra} descriptors held during a descriptor flood (at most ${MAX_MSG_FDS})`);
    }
  }

  private checkResources(): void {
    const fds = openFdCount();
    const want = this.baseFds + this.serverHeldFds();
    if (fds !== want) {
      this.stats.fdsLeaked += Math.max(0, fds - want);
      this.fail(`descriptors: ${fds} open, ${want} accounted for`);
      this.baseFds += fds - want; // report each leak once
    }
    const maps = native!.liveMappings();
    const wantMaps = this.baseMaps + this.serverHeldMaps();
    if (maps !== wantMaps) {
      this.stats.mapsLeaked += Math.max(0, maps - wantMaps);
      this.fail(`mappings: ${maps} live, ${wantMaps} accounted for`);
      this.baseMaps += maps - wantMaps;
    }
  }
}


/** Runs server cases [from, to) in this process. */
export async function fuzzServer(seed: number, from: number, to: number, onCase?: ServerFuzzOptions['onCase']): Promise<FuzzStats> {
  const f = new ServerFuzzer({ seed, ...(onCase ? { onCase } : {}) });
  await f.start();
  try {
    await f.run(from, to);
  } finally {
    await f.stop();
  }
  return f.stats;
}
