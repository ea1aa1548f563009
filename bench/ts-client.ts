// The TypeScript counterpart of bench/ref-client.c, with the same modes and
// the same one-line key=value output, driving our VfioUserClient:
//
//   node dist/bench/ts-client.js latency  SOCK REGION OFFSET COUNT ITER
//   node dist/bench/ts-client.js migread  SOCK CHUNK [precopy|copy] [--warm N]
//   node dist/bench/ts-client.js migwrite SOCK CHUNK BYTES [--warm N]
//   node dist/bench/ts-client.js v1read   SOCK [--warm N]      v1 save loop (stop-copy)
//   node dist/bench/ts-client.js migrate  SRC DST GUEST_MIB DIRTY_PCT ROUNDS
//
// migrate runs the orchestrator (src/client/migrate.ts) from the server at
// SRC to the one at DST with GUEST_MIB of guest RAM DMA-mapped on the
// source; after every pre-copy round the guest writes DIRTY_PCT% of its
// pages, so the stop-copy phase carries the last round's writes.
//
// migread hands each chunk to a sink while it is still in the receive buffer
// (migDataReadInto); with `copy` it uses migDataRead into one reused
// buffer, as the orchestrator does.  migwrite sends bigstate's pattern (seed 1).
// migread and migwrite take `--warm N`: N untimed passes first, in this
// process, so that the figure is V8's optimised code rather than its JIT
// warm-up (the first pass's rate is printed as first_gbps).
import { performance } from 'node:perf_hooks';
import { readFileSync } from 'node:fs';
import { VfioUserClient } from '../src/client/client.js';
import { LocalTarget, migrate as runMigration } from '../src/client/migrate.js';
import { migrateV1Save } from '../src/client/migration-v1.js';
import { fillPseudoRandom } from '../src/devices/bigstate.js';
import { native } from '../src/native/index.js';
import { MigState } from '../src/protocol/constants.js';

/** CPU time (user + system, all threads) since `from`, in ms. */
function cpuMs(from: NodeJS.CpuUsage): number {
  const u = process.cpuUsage(from);
  return (u.user + u.system) / 1000;
}

function hwmKib(): number {
  const m = /VmHWM:\s*(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) : -1;
}

async function connect(path: string, chunk: number): Promise<VfioUserClient> {
  return VfioUserClient.connect(path, { maxDataXferSize: Math.max(chunk, 1 << 20), replyTimeoutMs: 0 });
}

async function latency(args: string[]): Promise<string> {
  const [path, region, offset, count, iter] = args;
  const n = Number(iter);
  const c = await connect(path!, 0);
  const times = new Float64Array(n);
  const warm = Math.min(1000, Math.floor(n / 10));
  let sum = 0;
  for (let i = -warm; i < n; i++) {
    const t0 = performance.now();
    await c.regionRead(Number(region), Number(offset), Number(count));
    const dt = (performance.now() - t0) * 1000;
    if (i >= 0) {
      times[i] = dt;
      sum += dt;
    }
  }
  c.close();
  times.sort();
  return `mode=latency iter=${n} p50_us=${times[n >> 1]!.toFixed(3)} p99_us=${times[Math.floor((n * 99) / 100)]!.toFixed(3)} mean_us=${(sum / n).toFixed(3)}`;
}

/** Splits off a trailing `--warm N`. */
function warmArg(args: string[]): [string[], number] {
  const i = args.indexOf('--warm');
  if (i < 0) return [args, 0];
  return [args.slice(0, i), Number(args[i + 1])];
}

async function migread(argv: string[]): Promise<string> {
  const [args, warm] = warmArg(argv);
  const [path, chunkArg, how] = args;
  const chunk = Number(chunkArg);
  const c = await connect(path!, chunk);
  const copy = how === 'copy';
  const into = Buffer.allocUnsafeSlow(chunk);
  const sink = (): void => {};
  let first = 0;
  let line = '';
  for (let pass = 0; pass <= warm; pass++) {
    let bytes = 0;
    let pre = 0;
    const msgs0 = c.conn.stats.sent;
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    for (let phase = how === 'precopy' ? 0 : 1; phase < 2; phase++) {
      await c.setMigrationState(phase === 0 ? MigState.PRE_COPY : MigState.STOP_COPY);
      for (;;) {
        const n = copy ? (await c.migDataRead(chunk, into)).length : await c.migDataReadInto(chunk, sink);
        bytes += n;
        if (phase === 0) pre += n;
        if (n < chunk) break;
      }
    }
    const secs = (performance.now() - t0) / 1000;
    const cpu = cpuMs(cpu0);
    const msgs = c.conn.stats.sent - msgs0;
    await c.setMigrationState(MigState.RUNNING);
    if (pass === 0) first = bytes / secs / 1e9;
    line = `mode=migread chunk=${chunk} bytes=${bytes} precopy_bytes=${pre} seconds=${secs.toFixed(6)} gbps=${(bytes / secs / 1e9).toFixed(3)} msgs=${msgs} cpu_ms=${cpu.toFixed(1)}`;
  }
  c.close();
  return `${line} first_gbps=${first.toFixed(3)} hwm_kib=${hwmKib()}`;
}

async function migwrite(argv: string[]): Promise<string> {
  const [args, warm] = warmArg(argv);
  const [path, chunkArg, bytesArg] = args;
  const chunk = Number(chunkArg);
  const total = Number(bytesArg);
  const data = Buffer.allocUnsafe(total);
  fillPseudoRandom(data, 1);
  const c = await connect(path!, chunk);
  let first = 0;
  let line = '';
  for (let pass = 0; pass <= warm; pass++) {
    await c.setMigrationState(MigState.RESUMING);
    const msgs0 = c.conn.stats.sent;
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    for (let at = 0; at < total; at += chunk) await c.migDataWrite(data.subarray(at, Math.min(total, at + chunk)));
    const secs = (performance.now() - t0) / 1000;
    const cpu = cpuMs(cpu0);
    const msgs = c.conn.stats.sent - msgs0;
    const s0 = performance.now();
    await c.setMigrationState(MigState.STOP);
    const stopMs = performance.now() - s0;
    await c.setMigrationState(MigState.RUNNING);
    if (pass === 0) first = total / secs / 1e9;
    line = `mode=migwrite chunk=${chunk} bytes=${total} seconds=${secs.toFixed(6)} gbps=${(total / secs / 1e9).toFixed(3)} msgs=${msgs} cpu_ms=${cpu.toFixed(1)} stop_ms=${stopMs.toFixed(3)}`;
  }
  c.close();
  return `${line} first_gbps=${first.toFixed(3)} hwm_kib=${hwmKib()}`;
}

async function v1read(argv: string[]): Promise<string> {
  const [args, warm] = warmArg(argv);
  const c = await connect(args[0]!, 1 << 20);
  let line = '';
  for (let pass = 0; pass <= warm; pass++) {
    let bytes = 0;
    const msgs0 = c.conn.stats.sent;
    const t0 = performance.now();
    const r = await migrateV1Save(c, (chunk) => void (bytes += chunk.length), { preCopy: false });
    const secs = (performance.now() - t0) / 1000;
    const msgs = c.conn.stats.sent - msgs0;
    await c.setMigrationState(MigState.RUNNING);
    line = `mode=v1read bytes=${bytes} chunks=${r.chunks} seconds=${secs.toFixed(6)} gbps=${(bytes / secs / 1e9).toFixed(3)} msgs=${msgs}`;
  }
  c.close();
  return `${line} hwm_kib=${hwmKib()}`;
}

async function migrate(args: string[]): Promise<string> {
  const [srcPath, dstPath, guestMib, dirtyPct, rounds] = args;
  const src = await connect(srcPath!, 1 << 20);
  const dst = await connect(dstPath!, 1 << 20);
  const ram = { iova: 0x1_0000_0000, size: Number(guestMib) * 1024 * 1024 };
  src.memory.add(ram.iova, ram.size);
  fillPseudoRandom(src.memory.view(ram.iova, ram.size), 7);
  await src.dmaMap(ram);
  // The guest: writes 16 bytes into DIRTY_PCT% of its pages (distinct,
  // chosen by a fixed xorshift sequence) after each round.
  const pages = ram.size / 4096;
  const perRound = Math.round((pages * Number(dirtyPct)) / 100);
  let x = 12345;
  const stamp = Buffer.alloc(16);
  let writes = 0;
  let lastRound: number[] = [];
  const guestRound = (): void => {
    const start = (x >>> 0) % pages;
    const stride = 2 * Math.floor(pages / perRound / 2) + 1; // odd: distinct pages
    lastRound = [];
    for (let i = 0; i < perRound; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      stamp.writeUInt32LE(x >>> 0, 0);
      stamp.writeUInt32LE(writes++, 4);
      const page = (start + i * stride) % pages;
      lastRound.push(page);
      src.memory.write(ram.iova + page * 4096 + ((x >>> 0) % 4080), stamp);
    }
  };
  // The guest runs before the migration too, so its writer is compiled by
  // then: a compile of it finishing inside the downtime window would take
  // the window's CPU (everything here shares one), as a paused guest's
  // vCPUs do not.
  // V8 compiles it on a background thread on the call after it was found
  // hot; with only round ends to call it, that was the last round's end,
  // and the compile ran into the window.  So it runs as long as a guest
  // would have, and the compile is given the time to finish.
  for (let i = 0; i < 20; i++) guestRound();
  await new Promise((r) => setTimeout(r, 50));
  const report = await runMigration(src, new LocalTarget(dst), {
    maxRounds: Number(rounds),
    onProgress: (e) => {
      // the end of a pre-copy round (the only events that carry an estimate)
      if (e.phase === 'pre-copy' && e.remainingEstimate !== undefined) guestRound();
    },
  });
  const same = src.memory.view(ram.iova, ram.size).equals(dst.memory.view(ram.iova, ram.size));
  const last = report.rounds[report.rounds.length - 1]!;
  const from = src.memory.view(ram.iova, ram.size);
  const to = dst.memory.view(ram.iova, ram.size);
  const baseline = copyBaseline(from, to, lastRound, last.deviceBytes, false);
  const coldBaseline = copyBaseline(from, to, lastRound, last.deviceBytes, true);
  src.close();
  dst.close();
  const phase = (p: string): string => (report.phases.find((x) => x.phase === p)?.ms ?? 0).toFixed(3);
  const parts = Object.entries(report.downtimeParts)
    .map(([k, v]) => `part_${k.replace(/Ms$/, '')}=${v.toFixed(3)}`)
    .join(' ');
  return (
    `mode=migrate downtime_ms=${report.downtimeMs.toFixed(3)} predicted_ms=${report.predictedDowntimeMs?.toFixed(3) ?? 'none'} baseline_ms=${baseline.toFixed(3)} cold_baseline_ms=${coldBaseline.toFixed(3)} ` +
    `total_ms=${report.totalMs.toFixed(3)} rounds=${report.rounds.length} converged=${report.converged ? 1 : 0} ` +
    `stop_copy_ms=${phase('stop-copy')} resume_ms=${phase('resume')} ${parts} ` +
    `device_bytes=${report.deviceBytes} guest_bytes=${report.guestBytes} final_pages=${last.dirtyPages} final_device_bytes=${last.deviceBytes} ` +
    `guest_final_writes=${lastRound.length} ram_match=${same ? 1 : 0} ` +
    Object.entries(report.rates ?? {})
      .map(([k, v]) => `rate_${k}=${(v as number).toPrecision(4)}`)
      .join(' ')
  );
}

/**
 * The floor for the downtime, in the same process and run: the final dirty
 * set (the pages the guest wrote after the last round, from the source's
 * guest memory into the destination's, both mapped memfds, with the copy
 * the window uses: the addon's copyDirty, the pages given as pending marks
 * and no other flag set; else page by page) and the device's stop-copy
 * data (that many bytes between two buffers), copied the same way without
 * the protocol.  The median of 5.  Each copy after the first finds those
 * pages in the CPU's caches; `cold` first evicts them (a store to every
 * line of 64 MiB elsewhere).
 */
function copyBaseline(from: Buffer, to: Buffer, pages: number[], deviceBytes: number, cold: boolean): number {
  const count = from.length / 4096;
  const pending = new Uint8Array(count);
  const none = new Uint8Array(count);
  const out = new Float64Array(3);
  const devA = Buffer.alloc(deviceBytes);
  const devB = Buffer.alloc(deviceBytes);
  const evict = cold ? Buffer.alloc(64 << 20) : null;
  const times: number[] = [];
  for (let i = 0; i < 5; i++) {
    // a store to every line, one at a time: Buffer#fill of 64 MiB is a
    // memset with streaming stores, which leaves the caches as they were
    if (evict) for (let k = 0; k < evict.length; k += 64) evict[k] = i + 1;
    for (const p of pages) pending[p] = 1;
    const t0 = performance.now();
    if (native !== null) native.copyDirty(to, from, pending, null, none, none, 0, 4096, out);
    else for (const p of pages) from.copy(to, p * 4096, p * 4096, p * 4096 + 4096);
    devA.copy(devB);
    times.push(performance.now() - t0);
  }
  return times.sort((a, b) => a - b)[2]!;
}

const modes: Record<string, (a: string[]) => Promise<string>> = { latency, migread, migwrite, v1read, migrate };
const [mode, ...rest] = process.argv.slice(2);
const run = mode ? modes[mode] : undefined;
if (!run) {
  console.error('usage: ts-client latency|migread|migwrite SOCK ...');
  process.exit(2);
}
run(rest).then(
  (line) => console.log(line),
  (e: unknown) => {
    console.error(`ts-client: ${(e as Error).message}`);
    process.exit(1);
  },
);
