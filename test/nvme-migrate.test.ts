// Live migration of the NVMe controller between two `vfu serve nvme`
// processes sharing one image, while our host-side driver runs a verified
// workload at queue depth 32 on each of 2 queues: no command lost,
// duplicated or completed twice, every read returns the last write, and the
// workload carries on against the destination.  Also: migration while idle,
// with Async Event Requests held, and a rollback when the destination
// refuses the state.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { VfioUserClient } from '../src/client/client.js';
import { LocalTarget, MigrationError, migrate } from '../src/client/migrate.js';
import { NvmeDriver } from '../src/client/nvme/driver.js';
import { Feature, LogPage } from '../src/devices/nvme/constants.js';
import { type Proc, cli, start } from './helpers/procs.js';
import { connectWhenListening, tempDir } from './helpers/server.js';
import { until } from './helpers/wait.js';

const MiB = 1 << 20;
const BLOCK = 4096;
const SLOTS = 8; // blocks each worker owns
/**
 * Switch over once this little is left: the controller's state is ~1.4 KB
 * and its pre-copy data a ~100-byte header, too little for migrate()'s
 * rate model to measure a device bandwidth from (it predicts hundreds of ms
 * for those bytes), so the size of what is left decides.
 */
const CONVERGE = 8 << 20;

function fill(buf: Buffer, worker: number, slot: number, seq: number): void {
  for (let i = 0; i < buf.length; i += 16) {
    buf.writeUInt32LE(worker, i);
    buf.writeUInt32LE(slot, i + 4);
    buf.writeUInt32LE(seq, i + 8);
    buf.writeUInt32LE((worker * 31 + slot * 7 + seq * 13 + i) >>> 0, i + 12);
  }
}

async function server(dir: string, name: string, image: string, extra: string[] = []): Promise<Proc> {
  const path = join(dir, `${name}.sock`);
  const p = start([cli, 'serve', 'nvme', '--image', image, '--size', '64M', '--queues', '2', '--socket-path', path, ...extra]);
  await until(() => existsSync(path) || p.child.exitCode !== null, 10_000, `${name} socket`);
  if (p.child.exitCode !== null) throw new Error(`${name} exited: ${p.stderr()}`);
  return p;
}

/** The workload: `perQueue` workers on each I/O queue, each owning SLOTS blocks. */
class Workload {
  readonly expected = new Map<number, number>(); // worker*SLOTS+slot -> seq written
  ops = 0;
  reads = 0;
  writes = 0;
  mismatches: string[] = [];
  stopped = false;
  private readonly runs: Promise<void>[] = [];
  constructor(
    readonly d: NvmeDriver,
    readonly perQueue: number,
  ) {}

  start(): void {
    const workers = this.perQueue * 2;
    for (let w = 0; w < workers; w++) this.runs.push(this.worker(w));
  }

  private async worker(w: number): Promise<void> {
    const d = this.d;
    const qid = 1 + (w % 2);
    const iova = d.alloc(BLOCK);
    const buf = Buffer.alloc(BLOCK);
    let seq = 0;
    let rnd = w * 7919 + 1;
    while (!this.stopped) {
      rnd = (rnd * 1103515245 + 12345) >>> 0;
      const slot = rnd % SLOTS;
      const key = w * SLOTS + slot;
      const lba = key * (BLOCK / 512);
      const have = this.expected.get(key);
      if (have !== undefined && ((rnd >>> 16) & 1) === 0) {
        await d.read(qid, lba, BLOCK / 512, iova);
        const want = Buffer.alloc(BLOCK);
        fill(want, w, slot, have);
        if (!d.view(iova, BLOCK).equals(want)) this.mismatches.push(`worker ${w} slot ${slot}: read does not match write ${have}`);
        this.reads++;
      } else {
        seq++;
        fill(buf, w, slot, seq);
        d.store(iova, buf);
        await d.write(qid, lba, BLOCK / 512, iova);
        this.expected.set(key, seq);
        this.writes++;
      }
      this.ops++;
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all(this.runs);
  }

  /** Reads every block written and compares it with its last write. */
  async verifyAll(): Promise<void> {
    const d = this.d;
    const iova = d.alloc(BLOCK);
    for (const [key, seq] of this.expected) {
      const w = Math.floor(key / SLOTS);
      await d.read(1, key * (BLOCK / 512), BLOCK / 512, iova);
      const want = Buffer.alloc(BLOCK);
      fill(want, w, key % SLOTS, seq);
      if (!d.view(iova, BLOCK).equals(want)) this.mismatches.push(`block ${key}: not the last write ${seq}`);
    }
  }
}

/** Waits for the workload to get somewhere (generous: the machine may be loaded). */
const progress = (pred: () => boolean): Promise<void> => until(pred, 120_000, 'workload progress');

describe('nvme live migration', () => {
  const t = tempDir('vfu-nvme-mig-');
  const image = join(t.dir, 'disk.img');
  const procs: Proc[] = [];
  const clients: VfioUserClient[] = [];
  const connect = async (p: Proc, name: string): Promise<VfioUserClient> => {
    void p;
    const c = await connectWhenListening(join(t.dir, `${name}.sock`), { replyTimeoutMs: 20_000, migSizing: true });
    clients.push(c);
    return c;
  };
  const errors: Error[] = [];

  before(() => {});
  after(async () => {
    for (const c of clients) c.close();
    for (const p of procs) {
      p.child.kill('SIGTERM');
      await p.exited;
    }
    t.cleanup();
  });

  it('migrates under a verified workload at queue depth 32 on 2 queues, and carries on at the destination', async () => {
    const a = await server(t.dir, 'a', image);
    const b = await server(t.dir, 'b', image);
    procs.push(a, b);
    const src = await connect(a, 'a');
    const dst = await connect(b, 'b');
    src.on('error', (e: Error) => errors.push(e));
    dst.on('error', (e: Error) => errors.push(e));
    const d = await NvmeDriver.open(src, { ioQueues: 2, queueEntries: 64, dataBytes: 4 * MiB });
    // An Async Event Request held across the migration.
    await d.setFeatures(Feature.ASYNC_EVENT, 0x2);
    const aer = d.asyncEvent();
    const w = new Workload(d, 32);
    w.start();
    await progress(() => w.ops > 2000);
    const before = w.ops;
    const report = await migrate(src, new LocalTarget(dst), {
      maxRounds: 4,
      convergeBytes: CONVERGE,
      pauseGuest: () => d.pause(),
      resumeGuest: (on) => d.resume(on === 'destination' ? dst : undefined),
    });
    assert.equal(d.client, dst, 'the driver runs against the destination');
    const atSwitch = w.ops;
    assert.ok(atSwitch > before, 'the workload ran during pre-copy');
    await progress(() => w.ops > atSwitch + 2000);
    await w.stop();
    assert.deepEqual(w.mismatches, []);
    await w.verifyAll();
    assert.deepEqual(w.mismatches, []);
    assert.deepEqual(d.outstanding.slice(1), [0, 0], 'nothing lost');
    assert.equal(d.completed, d.submitted - 1, 'one completion per command (the held AER aside)');
    assert.deepEqual(errors, [], 'no completion for an unknown or finished command');
    // The held AER completes on the destination when an event happens there.
    await d.setFeatures(Feature.TEMP_THRESHOLD, 300);
    const ev = await aer;
    assert.deepEqual([ev.dw0 & 7, (ev.dw0 >> 16) & 0xff], [1, LogPage.SMART]);
    await d.setFeatures(Feature.TEMP_THRESHOLD, 343);
    assert.ok(report.downtimeMs >= 0);
    process.stderr.write(`# nvme migration under load: ${w.ops} ops (${w.reads} reads, ${w.writes} writes), downtime ${report.downtimeMs.toFixed(1)} ms, ${report.rounds.length} rounds\n`);
    d.close();
  });

  it('vfu serve nvme refuses an image whose size disagrees with --size, and a missing --image', async () => {
    const p = start([cli, 'serve', 'nvme', '--image', image, '--size', '8M', '--socket-path', join(t.dir, 'x.sock')]);
    const [code] = await p.exited;
    assert.notEqual(code, 0);
    assert.match(p.stderr(), /exists with 67108864 bytes, not the 8388608 given with --size/);
    const q = start([cli, 'serve', 'nvme', '--socket-path', join(t.dir, 'y.sock')]);
    const [code2] = await q.exited;
    assert.notEqual(code2, 0);
    assert.match(q.stderr(), /--image/);
  });

  it('migrates while idle', async () => {
    const c = await server(t.dir, 'c', image);
    const e = await server(t.dir, 'e', image);
    procs.push(c, e);
    const src = await connect(c, 'c');
    const dst = await connect(e, 'e');
    const d = await NvmeDriver.open(src, { ioQueues: 2, queueEntries: 64, dataBytes: 1 * MiB });
    const iova = d.alloc(BLOCK);
    const data = Buffer.alloc(BLOCK, 0x5a);
    d.store(iova, data);
    await d.write(1, 4000, 8, iova);
    await migrate(src, new LocalTarget(dst), { convergeBytes: CONVERGE, pauseGuest: () => d.pause(), resumeGuest: (on) => d.resume(on === 'destination' ? dst : undefined) });
    d.store(iova, Buffer.alloc(BLOCK));
    await d.read(2, 4000, 8, iova);
    assert.deepEqual(d.view(iova, BLOCK), data);
    const info = await d.getFeatures(Feature.NUM_QUEUES);
    assert.equal(info, (1 << 16) | 1);
    d.close();
  });

  it('rolls back when the destination refuses the state, and the workload carries on at the source', async () => {
    const f = await server(t.dir, 'f', image);
    const g = await server(t.dir, 'g', image, ['--queues', '3']); // a different controller: refused
    procs.push(f, g);
    const src = await connect(f, 'f');
    const dst = await connect(g, 'g');
    const d = await NvmeDriver.open(src, { ioQueues: 2, queueEntries: 64, dataBytes: 4 * MiB });
    const w = new Workload(d, 8);
    w.start();
    await progress(() => w.ops > 500);
    await assert.rejects(
      migrate(src, new LocalTarget(dst), { convergeBytes: CONVERGE, pauseGuest: () => d.pause(), resumeGuest: (on) => d.resume(on === 'destination' ? dst : undefined) }),
      (e: unknown) => e instanceof MigrationError && /queues/.test(String((e as MigrationError).cause)),
    );
    assert.equal(d.client, src);
    const at = w.ops;
    await progress(() => w.ops > at + 500);
    await w.stop();
    await w.verifyAll();
    assert.deepEqual(w.mismatches, []);
    d.close();
  });
});
