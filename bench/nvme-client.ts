// The NVMe bench client: our host-side driver (src/client/nvme/driver.ts)
// against `vfu serve nvme`, printing one key=value line like ts-client.
//
//   node dist/bench/nvme-client.js randread SOCK QD OPS [posted|ioeventfd]   4 KiB random reads
//   node dist/bench/nvme-client.js seq      SOCK read|write QD BYTES          128 KiB sequential
//   node dist/bench/nvme-client.js pread    IMAGE QD OPS                      baseline: 4 KiB random pread, page cache
//   node dist/bench/nvme-client.js preadseq IMAGE QD BYTES                    baseline: 128 KiB sequential pread
//   node dist/bench/nvme-client.js migrate  SRC DST QD                        downtime under 4 KiB random reads at QD
//
// Guest memory is a shared memfd DMA-mapped with its descriptor (zero-copy on
// the server).  Latency is per command, submission to completion.
import { closeSync, fstatSync, openSync, read } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { VfioUserClient } from '../src/client/client.js';
import { LocalTarget, migrate } from '../src/client/migrate.js';
import { NvmeDriver } from '../src/client/nvme/driver.js';

const KiB = 1024;
const MiB = 1024 * KiB;

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))]!;
}

function lat(samples: number[]): string {
  const s = Float64Array.from(samples).sort();
  return `p50_us=${pct([...s], 50).toFixed(2)} p99_us=${pct([...s], 99).toFixed(2)}`;
}

async function open(path: string, qd: number, doorbells: 'posted' | 'ioeventfd' = 'posted'): Promise<NvmeDriver> {
  const c = await VfioUserClient.connect(path, { replyTimeoutMs: 60_000, migSizing: true });
  return NvmeDriver.open(c, { ioQueues: 2, queueEntries: Math.max(64, qd + 2), doorbells, dataBytes: Math.max(8 * MiB, qd * 256 * KiB) });
}

let rnd = 12345;
const next = (): number => {
  rnd ^= rnd << 13;
  rnd ^= rnd >>> 17;
  rnd ^= rnd << 5;
  return rnd >>> 0;
};

/** `qd` workers doing `ops` 4 KiB random reads; per-op latencies. */
async function randomReads(d: NvmeDriver, qd: number, ops: number): Promise<{ seconds: number; lats: number[] }> {
  const blocks4k = Math.floor((d.info.blocks * d.info.blockSize) / 4096);
  const per = 4096 / d.info.blockSize;
  const lats: number[] = [];
  let left = ops;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: qd }, async (_, w) => {
      const iova = d.alloc(4096);
      const qid = 1 + (w % 2);
      while (left-- > 0) {
        const lba = (next() % blocks4k) * per;
        const s = performance.now();
        await d.read(qid, lba, per, iova);
        lats.push(performance.now() - s);
      }
    }),
  );
  return { seconds: (performance.now() - t0) / 1000, lats };
}

async function randread(a: string[]): Promise<string> {
  const [path, qdS, opsS, mode] = a;
  const qd = Number(qdS);
  const ops = Number(opsS);
  const d = await open(path!, qd, (mode ?? 'posted') as 'posted' | 'ioeventfd');
  await randomReads(d, qd, Math.min(ops, 5000)); // warm-up (JIT)
  const r = await randomReads(d, qd, ops);
  const us = r.lats.map((x) => x * 1000);
  const out = `mode=randread qd=${qd} ops=${ops} iops=${(ops / r.seconds).toFixed(0)} ${lat(us)} doorbells=${d.doorbellWrites}`;
  d.close();
  d.client.close();
  return out;
}

async function seq(a: string[]): Promise<string> {
  const [path, dir, qdS, bytesS] = a;
  const qd = Number(qdS);
  const bytes = Number(bytesS);
  const d = await open(path!, qd);
  const chunk = 128 * KiB;
  const per = chunk / d.info.blockSize;
  const span = Math.floor((d.info.blocks * d.info.blockSize) / chunk);
  const run = async (total: number): Promise<number> => {
    let next = 0;
    const n = total / chunk;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: qd }, async (_, w) => {
        const iova = d.alloc(chunk);
        if (dir === 'write') d.store(iova, Buffer.alloc(chunk, w));
        const qid = 1 + (w % 2);
        for (;;) {
          const i = next++;
          if (i >= n) return;
          const lba = (i % span) * per;
          if (dir === 'write') await d.write(qid, lba, per, iova);
          else await d.read(qid, lba, per, iova);
        }
      }),
    );
    return (performance.now() - t0) / 1000;
  };
  await run(Math.min(bytes, 64 * MiB));
  const s = await run(bytes);
  d.close();
  d.client.close();
  return `mode=seq dir=${dir} qd=${qd} bytes=${bytes} gbps=${(bytes / s / 1e9).toFixed(3)}`;
}

/** The baseline: the same reads with pread on the threadpool, from the page cache. */
async function pread(a: string[]): Promise<string> {
  const [image, qdS, opsS] = a;
  const qd = Number(qdS);
  const ops = Number(opsS);
  const fd = openSync(image!, 'r');
  const blocks4k = Math.floor(fstatSync(fd).size / 4096);
  const once = async (n: number): Promise<{ seconds: number; lats: number[] }> => {
    let left = n;
    const lats: number[] = [];
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: qd }, async () => {
        const buf = Buffer.alloc(4096);
        while (left-- > 0) {
          const pos = (next() % blocks4k) * 4096;
          const s = performance.now();
          await new Promise<void>((res, rej) => read(fd, buf, 0, 4096, pos, (e) => (e ? rej(e) : res())));
          lats.push(performance.now() - s);
        }
      }),
    );
    return { seconds: (performance.now() - t0) / 1000, lats };
  };
  await once(Math.min(ops, 5000));
  const r = await once(ops);
  closeSync(fd);
  return `mode=pread qd=${qd} ops=${ops} iops=${(ops / r.seconds).toFixed(0)} ${lat(r.lats.map((x) => x * 1000))}`;
}

async function preadseq(a: string[]): Promise<string> {
  const [image, qdS, bytesS] = a;
  const qd = Number(qdS);
  const bytes = Number(bytesS);
  const fd = openSync(image!, 'r');
  const chunk = 128 * KiB;
  const span = Math.floor(fstatSync(fd).size / chunk);
  const run = async (total: number): Promise<number> => {
    let i = 0;
    const n = total / chunk;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: qd }, async () => {
        const buf = Buffer.alloc(chunk);
        for (;;) {
          const k = i++;
          if (k >= n) return;
          await new Promise<void>((res, rej) => read(fd, buf, 0, chunk, (k % span) * chunk, (e) => (e ? rej(e) : res())));
        }
      }),
    );
    return (performance.now() - t0) / 1000;
  };
  await run(Math.min(bytes, 64 * MiB));
  const s = await run(bytes);
  closeSync(fd);
  return `mode=preadseq qd=${qd} bytes=${bytes} gbps=${(bytes / s / 1e9).toFixed(3)}`;
}

/** Downtime of a migration while `qd` random readers run; they carry on at the destination. */
async function migrateUnderLoad(a: string[]): Promise<string> {
  const [src, dst, qdS] = a;
  const qd = Number(qdS);
  const d = await open(src!, qd);
  const dc = await VfioUserClient.connect(dst!, { replyTimeoutMs: 60_000, migSizing: true });
  let stop = false;
  let ops = 0;
  const workers = Array.from({ length: qd }, async (_, w) => {
    const iova = d.alloc(4096);
    const blocks4k = Math.floor((d.info.blocks * d.info.blockSize) / 4096);
    const per = 4096 / d.info.blockSize;
    while (!stop) {
      await d.read(1 + (w % 2), (next() % blocks4k) * per, per, iova);
      ops++;
    }
  });
  while (ops < 20000) await new Promise((r) => setTimeout(r, 5));
  // The controller's state is ~1.4 KB: what is left decides (see nvme-migrate.test.ts).
  const report = await migrate(d.client, new LocalTarget(dc), { convergeBytes: 8 << 20, pauseGuest: () => d.pause(), resumeGuest: (on) => d.resume(on === 'destination' ? dc : undefined) });
  const at = ops;
  while (ops < at + 20000) await new Promise((r) => setTimeout(r, 5));
  stop = true;
  await Promise.all(workers);
  const moved = d.client === dc;
  d.close();
  dc.close();
  return `mode=migrate qd=${qd} downtime_ms=${report.downtimeMs.toFixed(3)} total_ms=${report.totalMs.toFixed(1)} rounds=${report.rounds.length} on_destination=${moved ? 1 : 0} ops=${ops}`;
}

const modes: Record<string, (a: string[]) => Promise<string>> = { randread, seq, pread, preadseq, migrate: migrateUnderLoad };
const [mode, ...rest] = process.argv.slice(2);
const fn = modes[mode ?? ''];
if (!fn) {
  console.error(`usage: nvme-client.js ${Object.keys(modes).join('|')} ...`);
  process.exit(2);
}
fn(rest).then(
  (line) => {
    console.log(line);
    process.exit(0);
  },
  (e: unknown) => {
    console.error(e);
    process.exit(1);
  },
);
