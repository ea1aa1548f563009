// `npm run bench`: every benchmark in one run, side by side with its
// baseline (the C reference client, libvfio-user when LIBVFIO_USER_BUILD
// points at a built tree, plain memcpy, the bare socket) and its target.
//
//   npm run bench                                  everything
//   node dist/bench/run.js latency migread ...     some sections only
//   node dist/bench/run.js --json                  also print the rows as JSON
//   node dist/bench/run.js --markdown              the table as Markdown (BENCHMARKS.md)
//
// Sections: latency migread migwrite rss dma maps dirty v1v2 downtime stream nvme transport.
// Every process taking part (servers, clients) is pinned to CPU 0 with
// taskset: on this 2-vCPU VM a cross-CPU wake-up costs 30-45 µs and lands
// unpredictably.  Throughput figures are the median of RUNS runs, each
// against a freshly started server (so each server's peak RSS is its own)
// warmed up by WARM untimed passes first (see migOnce).
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { crc32 } from 'node:zlib';
import { EAGER_V8_FLAGS } from '../src/cli/eager.js';
import { fillPseudoRandom } from '../src/devices/bigstate.js';
import { benchDirty } from './dirty.js';
import { benchDma } from './dma.js';
import { benchDmaMaps } from './dma-maps.js';
import { type BenchRow, formatMarkdown, formatRows } from './rows.js';
import { benchTransport } from './transport.js';

const MiB = 1024 * 1024;
const STATE_MIB = 256;
const RUNS = 3;
const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..', '..');
const cli = join(root, 'dist', 'src', 'cli', 'main.js');
const tsClient = join(here, 'ts-client.js');
const nvmeClient = join(here, 'nvme-client.js');

const pin = spawnSync('taskset', ['-V'], { stdio: 'ignore' }).status === 0;
/** argv pinned to CPU 0 when taskset exists. */
const pinned = (argv: string[]): string[] => (pin ? ['taskset', '-c', '0', ...argv] : argv);

// ------------------------------------------------------------------ helpers

type Fields = Record<string, string>;

function parseLine(out: string): Fields {
  const line = out.trim().split('\n').pop() ?? '';
  const f: Fields = {};
  for (const kv of line.split(/\s+/)) {
    const i = kv.indexOf('=');
    if (i > 0) f[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return f;
}

/** Runs argv to its end; resolves with its stdout (rejects on a non-zero exit). */
function output(argv: string[]): Promise<string> {
  return new Promise((res, rej) => {
    const p = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.on('exit', (code) => (code === 0 ? res(out) : rej(new Error(`${argv.join(' ')} exited ${code}:\n${err}${out}`))));
  });
}

function run(argv: string[]): Promise<Fields> {
  return output(argv).then(parseLine);
}

function status(pid: number, key: string): number {
  const m = new RegExp(`${key}:\\s*(\\d+)`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

interface Server {
  proc: ChildProcess;
  path: string;
  log: () => string;
  stop(): Promise<void>;
}

async function startServer(dir: string, name: string, argv: string[]): Promise<Server> {
  const path = join(dir, `${name}.sock`);
  const proc = spawn(argv[0]!, [...argv.slice(1), path], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  proc.stderr!.on('data', (d) => (log += d));
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const end = Date.now() + 20_000;
  while (!existsSync(path)) {
    if (proc.exitCode !== null || Date.now() > end) throw new Error(`server ${argv.join(' ')} did not start:\n${log}`);
    await new Promise((r) => setTimeout(r, 10));
  }
  return {
    proc,
    path,
    log: () => log,
    async stop() {
      if (proc.exitCode === null) proc.kill('SIGTERM');
      await exited;
    },
  };
}

/** Our server: `vfu serve bigstate` (pinned), listening in `dir`. */
function bigstate(dir: string, name: string, args: string[] = []): Promise<Server> {
  return startServer(dir, name, pinned([process.execPath, cli, 'serve', 'bigstate', ...args, '--socket-path']));
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1]!;
}

/** Runs `once` n times; returns the run whose `key` is the median. */
async function medianRun<T extends Fields>(n: number, key: string, once: () => Promise<T>): Promise<T> {
  const all: T[] = [];
  for (let i = 0; i < n; i++) all.push(await once());
  const m = median(all.map((r) => Number(r[key])));
  return all.find((r) => Number(r[key]) === m)!;
}

const num = (f: Fields, k: string): number => Number(f[k]);

/** `row` against a baseline (a short label and its value). */
function vs(row: BenchRow, label: string, value: number, better: 'higher' | 'lower'): BenchRow {
  return { ...row, baseline: { name: label, value }, ratio: row.value / value, better };
}

// ------------------------------------------------------------- C ref client

let refClient: string | null = null;
let refClientWhy = '';

function buildRefClient(): void {
  const out = join(root, 'build', 'bench');
  mkdirSync(out, { recursive: true });
  const bin = join(out, 'ref-client');
  const r = spawnSync('cc', ['-O2', '-Wall', '-o', bin, join(root, 'bench', 'ref-client.c')], { encoding: 'utf8' });
  if (r.status === 0) refClient = bin;
  else refClientWhy = r.error ? String(r.error.message) : r.stderr;
}

const cClient = (...args: string[]): string[] => pinned([refClient!, ...args]);
const tsClientArgv = (...args: string[]): string[] => pinned([process.execPath, tsClient, ...args]);

// ----------------------------------------------------------------- sections

interface Ctx {
  dir: string;
  lvu: string | null;
  rows: BenchRow[];
  notes: string[];
  /** Figures other sections compare with. */
  shared: Record<string, number>;
}

async function latency(ctx: Ctx): Promise<void> {
  const ITER = '20000';
  const ours = await bigstate(ctx.dir, 'lat', ['--state-mib', '1']);
  const figures: Record<string, Fields> = {};
  try {
    if (refClient) figures['c-ours'] = await medianRun(RUNS, 'p50_us', () => run(cClient('latency', ours.path, '0', '0', '8', ITER)));
    figures['ts-ours'] = await medianRun(RUNS, 'p50_us', () => run(tsClientArgv('latency', ours.path, '0', '0', '8', ITER)));
  } finally {
    await ours.stop();
  }
  if (refClient && ctx.lvu) {
    const runs: Fields[] = [];
    for (let i = 0; i < RUNS; i++) {
      // samples/server serves one client, then exits
      const lvu = await startServer(ctx.dir, `lvu${i}`, pinned([join(ctx.lvu, 'samples', 'server')]));
      try {
        runs.push(await run(cClient('latency', lvu.path, '0', '0', '8', ITER)));
      } finally {
        await lvu.stop();
      }
    }
    const m = median(runs.map((r) => num(r, 'p50_us')));
    figures['c-lvu'] = runs.find((r) => num(r, 'p50_us') === m)!;
  }
  if (ctx.lvu) {
    // our TS client against libvfio-user's server too (issue: "our client
    // against our server and against libvfio-user's server, as a ratio")
    const runs: Fields[] = [];
    for (let i = 0; i < RUNS; i++) {
      const lvu = await startServer(ctx.dir, `lvu-ts${i}`, pinned([join(ctx.lvu, 'samples', 'server')]));
      try {
        runs.push(await run(tsClientArgv('latency', lvu.path, '0', '0', '8', ITER)));
      } finally {
        await lvu.stop();
      }
    }
    const m = median(runs.map((r) => num(r, 'p50_us')));
    figures['ts-lvu'] = runs.find((r) => num(r, 'p50_us') === m)!;
  }
  for (const q of ['p50', 'p99'] as const) {
    const k = `${q}_us`;
    const name = (who: string): string => `REGION_READ 8 B BAR0 ${q}, ${who}`;
    const c = figures['c-ours'];
    const l = figures['c-lvu'];
    const t = figures['ts-ours']!;
    if (c) {
      let row: BenchRow = { name: name('C client -> vfu serve bigstate'), value: num(c, k), unit: 'µs' };
      if (l) row = vs(row, 'C client -> libvfio-user', num(l, k), 'lower');
      if (q === 'p50') {
        // The issue's target is absolute (1.3x its 13.4 µs libvfio-user
        // figure).  Here libvfio-user itself measures ~4.5 µs, so the
        // same-run ratio is printed beside it for an honest comparison.
        row.target = '≤ 17.4 µs' + (l ? ` (same-run ratio x${(row.value / num(l, k)).toFixed(2)}, issue's x1.30)` : '');
        row.met = row.value <= 17.4;
      }
      ctx.rows.push(row);
      if (l) ctx.rows.push({ name: name('C client -> libvfio-user samples/server'), value: num(l, k), unit: 'µs' });
      ctx.rows.push(vs({ name: name('TS client -> vfu serve bigstate'), value: num(t, k), unit: 'µs' }, 'C client -> vfu serve', num(c, k), 'lower'));
    } else {
      ctx.rows.push({ name: name('TS client -> vfu serve bigstate'), value: num(t, k), unit: 'µs' });
    }
    const tl = figures['ts-lvu'];
    if (tl) {
      ctx.rows.push(vs({ name: name('TS client -> vfu serve bigstate, vs TS client -> libvfio-user'), value: num(t, k), unit: 'µs' }, 'TS client -> libvfio-user', num(tl, k), 'lower'));
    }
  }
}

interface MigFigures {
  client: Fields;
  serverHwmKib: number;
  serverStartKib: number;
  crcOk?: boolean;
}

/** Untimed passes before the measured one (the server's JIT needs two). */
const WARM = 2;

/**
 * One 256 MiB stream against a fresh server, after WARM untimed ones so
 * that the figure is steady state rather than JIT warm-up: the C client is
 * run WARM times first; the TS client (`ts`) makes its warm-up passes itself
 * (--warm), warming its own JIT too.  For writes, every CRC-32 the server
 * logs of what it received must be the source's.
 */
async function migOnce(ctx: Ctx, argv: (path: string) => string[], write: boolean, ts: boolean): Promise<MigFigures> {
  const s = await bigstate(ctx.dir, 'mig', ['--state-mib', String(STATE_MIB)]);
  try {
    const serverStartKib = status(s.proc.pid!, 'VmRSS');
    if (!ts) for (let i = 0; i < WARM; i++) await run(argv(s.path));
    const client = await run(ts ? [...argv(s.path), '--warm', String(WARM)] : argv(s.path));
    const serverHwmKib = status(s.proc.pid!, 'VmHWM');
    const r: MigFigures = { client, serverHwmKib, serverStartKib };
    if (write) {
      const crcs = [...s.log().matchAll(/crc32 0x([0-9a-f]{8})/g)].map((m) => parseInt(m[1]!, 16));
      r.crcOk = crcs.length === WARM + 1 && crcs.every((c) => c === expectedCrc());
    }
    return r;
  } finally {
    await s.stop();
  }
}

async function migMedian(ctx: Ctx, argv: (path: string) => string[], write: boolean, ts: boolean): Promise<MigFigures> {
  const all: MigFigures[] = [];
  for (let i = 0; i < RUNS; i++) all.push(await migOnce(ctx, argv, write, ts));
  const m = median(all.map((r) => num(r.client, 'gbps')));
  const pick = all.find((r) => num(r.client, 'gbps') === m)!;
  if (write) pick.crcOk = all.every((r) => r.crcOk);
  return pick;
}

const crcCache = new Map<number, number>();
/** CRC-32 of bigstate's state of `mib` MiB (what a destination must log). */
function crc32Of(mib: number): number {
  let c = crcCache.get(mib);
  if (c === undefined) {
    const b = Buffer.allocUnsafe(mib * MiB);
    fillPseudoRandom(b, 1);
    c = crc32(b);
    crcCache.set(mib, c);
  }
  return c;
}
const expectedCrc = (): number => crc32Of(STATE_MIB);

const CHUNKS = [
  ['1 MiB', MiB],
  ['64 KiB', 64 * 1024],
] as const;

/** Peak RSS rows, filled by the migration sections. */
const rssRows: BenchRow[] = [];

function rss(what: string, f: MigFigures, clientExtraKib = 0): void {
  const mib = (k: number): number => k / 1024;
  const grown = mib(f.serverHwmKib - f.serverStartKib);
  rssRows.push({
    name: `peak RSS growth of the server during ${what}`,
    value: grown,
    unit: 'MiB',
    baseline: { name: `server RSS before (state included)`, value: mib(f.serverStartKib) },
    target: 'a few chunks',
    met: grown <= 8,
  });
  rssRows.push({
    name: `peak RSS of the client during ${what}` + (clientExtraKib ? ` (less its ${clientExtraKib / 1024} MiB source buffer)` : ''),
    value: mib(num(f.client, 'hwm_kib') - clientExtraKib),
    unit: 'MiB',
  });
}

async function migread(ctx: Ctx): Promise<void> {
  for (const [label, chunk] of CHUNKS) {
    const target = chunk === MiB ? 3.0 : 1.8;
    const name = (who: string): string => `MIG_DATA_READ 256 MiB in ${label} chunks, ${who}`;
    let cRow: BenchRow | null = null;
    if (refClient) {
      const c = await migMedian(ctx, (p) => cClient('migread', p, String(chunk)), false, false);
      cRow = { name: name('C client -> vfu serve'), value: num(c.client, 'gbps'), unit: 'GB/s', target: `≥ ${target} GB/s` };
      cRow.met = cRow.value >= target;
      ctx.rows.push(cRow);
      ctx.shared[`migread-c-${chunk}`] = cRow.value;
      rss(`MIG_DATA_READ (${label}, C client)`, c);
    }
    const t = await migMedian(ctx, (p) => tsClientArgv('migread', p, String(chunk)), false, true);
    let tRow: BenchRow = { name: name('TS client -> vfu serve'), value: num(t.client, 'gbps'), unit: 'GB/s' };
    if (cRow) tRow = vs(tRow, 'C client', cRow.value, 'higher');
    ctx.rows.push({ ...tRow, target: `≥ ${target} GB/s`, met: tRow.value >= target });
    rss(`MIG_DATA_READ (${label}, TS client)`, t);
    ctx.rows.push(vs({ name: name('TS client, first pass in a fresh process (JIT warm-up)'), value: num(t.client, 'first_gbps'), unit: 'GB/s' }, 'steady', tRow.value, 'higher'));
    if (chunk === MiB) {
      // migDataRead() copying into a reused buffer (what the orchestrator does)
      const tc = await migMedian(ctx, (p) => tsClientArgv('migread', p, String(chunk), 'copy'), false, true);
      ctx.rows.push(vs({ name: name('TS client, migDataRead() into one reused buffer (the orchestrator)'), value: num(tc.client, 'gbps'), unit: 'GB/s' }, 'TS client', tRow.value, 'higher'));
    }
  }
}

async function migwrite(ctx: Ctx): Promise<void> {
  const total = String(STATE_MIB * MiB);
  expectedCrc();
  for (const [label, chunk] of CHUNKS) {
    const name = (who: string): string => `MIG_DATA_WRITE 256 MiB in ${label} chunks, ${who}`;
    // The issue holds 1 MiB writes to 3.0 GB/s; other sizes must work.
    const target = chunk === MiB ? '≥ 3.0 GB/s' : 'works';
    let cRow: BenchRow | null = null;
    if (refClient) {
      const c = await migMedian(ctx, (p) => cClient('migwrite', p, String(chunk), total), true, false);
      cRow = { name: name(`C client -> vfu serve, CRC ${c.crcOk ? 'ok' : 'WRONG'}`), value: num(c.client, 'gbps'), unit: 'GB/s' };
      cRow.target = target;
      cRow.met = c.crcOk === true && (chunk !== MiB || cRow.value >= 3.0);
      ctx.rows.push(cRow);
      rss(`MIG_DATA_WRITE (${label}, C client)`, c, STATE_MIB * 1024);
    }
    const t = await migMedian(ctx, (p) => tsClientArgv('migwrite', p, String(chunk), total), true, true);
    let tRow: BenchRow = { name: name(`TS client -> vfu serve, CRC ${t.crcOk ? 'ok' : 'WRONG'}`), value: num(t.client, 'gbps'), unit: 'GB/s' };
    if (cRow) tRow = vs(tRow, 'C client', cRow.value, 'higher');
    ctx.rows.push({ ...tRow, target, met: t.crcOk === true && (chunk !== MiB || tRow.value >= 3.0) });
    rss(`MIG_DATA_WRITE (${label}, TS client)`, t, STATE_MIB * 1024);
    ctx.rows.push(vs({ name: name('TS client, first pass in a fresh process (JIT warm-up)'), value: num(t.client, 'first_gbps'), unit: 'GB/s' }, 'steady', tRow.value, 'higher'));
  }
  if (refClient) {
    // Every chunk size up to max_data_xfer_size (1 MiB) must work.
    for (const k of [4, 16, 32, 256]) {
      const c = await migOnce(ctx, (p) => cClient('migwrite', p, String(k * 1024), total), true, false);
      const v = num(c.client, 'gbps');
      ctx.rows.push({
        name: `MIG_DATA_WRITE 256 MiB in ${k} KiB chunks, C client -> vfu serve, CRC ${c.crcOk ? 'ok' : 'WRONG'}`,
        value: v,
        unit: 'GB/s',
        target: 'works',
        met: c.crcOk === true,
      });
    }
  }
}

async function v1v2(ctx: Ctx): Promise<void> {
  const figures: Fields[] = [];
  for (const mode of ['v1read', 'migread'] as const) {
    const s = await bigstate(ctx.dir, 'v1', ['--state-mib', String(STATE_MIB), '--v1']);
    try {
      figures.push(await run(tsClientArgv(mode, s.path, ...(mode === 'migread' ? [String(MiB)] : []), '--warm', String(WARM))));
    } finally {
      await s.stop();
    }
  }
  const [v1, v2] = figures as [Fields, Fields];
  const usPerMib = (f: Fields): number => (num(f, 'seconds') * 1e6) / (num(f, 'bytes') / MiB);
  const msgs = (f: Fields): number => num(f, 'msgs') / (num(f, 'bytes') / MiB);
  const name = (what: string): string => `v1 migration region vs v2 MIG_DATA_READ, 256 MiB, TS client: ${what}`;
  ctx.rows.push(vs({ name: name('messages per MiB, v1'), value: msgs(v1), unit: 'msgs' }, 'v2', msgs(v2), 'lower'));
  ctx.rows.push(vs({ name: name('time per MiB, v1'), value: usPerMib(v1), unit: 'µs' }, 'v2', usPerMib(v2), 'lower'));
}

/** The downtime's parts as ts-client prints them (part_*), short labels in report order. */
const PARTS: [string, string][] = [
  ['pauseGuest', 'pause'],
  ['sourceStopCopy', 'STOP_COPY'],
  ['deviceData', 'device data'],
  ['dirtyReport', 'dirty report'],
  ['finalPages', 'pages'],
  ['destinationStop', 'dst STOP'],
  ['destinationRunning', 'dst RUNNING'],
  ['resumeGuest', 'resume'],
];

/** One bench-scenario migration, fresh processes: two bigstate servers and the TS orchestrator. */
async function migrateOnce(ctx: Ctx, guestMib: number, dirtyPct: number, verify: boolean): Promise<Fields> {
  const a = await bigstate(ctx.dir, 'src', ['--state-mib', '64', '--precopy-mib', '64']);
  const b = await bigstate(ctx.dir, 'dst', ['--state-mib', '64', '--precopy-mib', '64', ...(verify ? [] : ['--no-verify'])]);
  try {
    // the orchestrator compiles as `vfu migrate` does (src/cli/eager.ts);
    // the servers are `vfu serve`, which sets the same itself
    const f = await run(pinned([process.execPath, ...EAGER_V8_FLAGS, tsClient, 'migrate', a.path, b.path, String(guestMib), String(dirtyPct), '4']));
    const crc = /crc32 0x([0-9a-f]{8})/.exec(b.log())?.[1];
    f['state_ok'] = verify ? String(crc !== undefined && parseInt(crc, 16) === crc32Of(64)) : 'unchecked';
    return f;
  } finally {
    await a.stop();
    await b.stop();
  }
}

async function downtime(ctx: Ctx): Promise<void> {
  // The destination checks the 64 MiB it received by CRC-32 on RESUMING ->
  // STOP, which is downtime (~28 ms here); the other variants skip that
  // check (--no-verify) to show what the protocol and the orchestrator cost,
  // against the floor measured in the same run: the final dirty pages and
  // the device's stop-copy data copied the same way without the protocol
  // (issue #14's target: at most 1.5x that + 0.5 ms).
  const scenarios = [
    { guestMib: 64, pct: 5, verify: true, runs: RUNS },
    { guestMib: 64, pct: 5, verify: false, runs: 5 },
    { guestMib: 1024, pct: 2, verify: false, runs: 3 },
  ];
  for (const sc of scenarios) {
    const all: Fields[] = [];
    for (let i = 0; i < sc.runs; i++) all.push(await migrateOnce(ctx, sc.guestMib, sc.pct, sc.verify));
    const m = median(all.map((f) => num(f, 'downtime_ms')));
    const f = all.find((x) => num(x, 'downtime_ms') === m)!;
    const ram = all.every((x) => x['ram_match'] === '1');
    const guest = sc.guestMib >= 1024 ? `${sc.guestMib / 1024} GiB` : `${sc.guestMib} MiB`;
    const what = `64 MiB device state (pre-copied) + ${guest} guest RAM, ${sc.pct}% dirtied per round, fresh processes, median of ${sc.runs}`;
    const check = `RAM ${ram ? 'same' : 'DIFFERS'}, ${sc.verify ? 'state CRC checked' : 'state unchecked'}`;
    const ok = ram && (!sc.verify || all.every((x) => x['state_ok'] === 'true'));
    const dst = sc.verify ? '' : ' (destination without its CRC check)';
    const parts = PARTS.map(([k, label]) => `${label} ${num(f, `part_${k}`).toFixed(2)}`).join(' + ');
    const floor = median(all.map((x) => num(x, 'baseline_ms')));
    const limit = 1.5 * floor + 0.5;
    const row: BenchRow = { name: `migration downtime${dst}: ${what}; ${check}`, value: m, unit: 'ms', target: sc.verify ? check : `≤ 1.5 x floor + 0.5 ms = ${limit.toFixed(2)} ms`, met: sc.verify ? ok : ok && m <= limit };
    ctx.rows.push(sc.verify ? row : vs(row, `floor: ${num(f, 'final_pages')} final pages + ${num(f, 'final_device_bytes')} B device data, memcpy`, floor, 'lower'));
    ctx.rows.push({ name: `  its parts (ms, the median run): ${parts}`, value: PARTS.reduce((t, [k]) => t + num(f, `part_${k}`), 0), unit: 'ms' });
    if (!sc.verify) {
      // context, not the target: the floor's copies after the first find the
      // pages in cache, the window's copy does not
      const cold = median(all.map((x) => num(x, 'cold_baseline_ms')));
      const coldLimit = 1.5 * cold + 0.5;
      ctx.rows.push({
        name: `  floor with the caches evicted first (the window's pages were read ahead, not copied before; the target above keeps the warm floor)`,
        value: cold,
        unit: 'ms',
        target: `against it: ≤ 1.5 x + 0.5 ms = ${coldLimit.toFixed(2)} ms`,
        met: ok && m <= coldLimit,
      });
    }
    ctx.rows.push(vs({ name: `  predicted at switch-over (median run)`, value: num(f, 'predicted_ms'), unit: 'ms' }, 'actual', num(f, 'downtime_ms'), 'lower'));
    ctx.rows.push({ name: `  total migration time${dst}, ${num(f, 'rounds')} rounds`, value: num(f, 'total_ms'), unit: 'ms' });
  }
}

/**
 * Starts a process that prints `pattern` on stdout or stderr once ready;
 * resolves with the match (and the process), rejects if it exits first.
 */
function startUntil(argv: string[], pattern: RegExp): Promise<{ proc: ChildProcess; match: RegExpExecArray; done: Promise<string> }> {
  const proc = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  let seen = '';
  let out = '';
  const done = new Promise<string>((res) => proc.once('exit', () => res(out)));
  return new Promise((res, rej) => {
    const look = (d: Buffer, isOut: boolean): void => {
      seen += d;
      if (isOut) out += d;
      const m = pattern.exec(seen);
      if (m) res({ proc, match: m, done });
    };
    proc.stdout!.on('data', (d: Buffer) => look(d, true));
    proc.stderr!.on('data', (d: Buffer) => look(d, false));
    proc.once('exit', (code) => rej(new Error(`${argv.join(' ')} exited ${code} before ${pattern}:\n${seen}`)));
  });
}

const STREAM_GUEST_MIB = 256;
/** Cross-host migrations per variant (as the local 64 MiB downtime: five, the median taken). */
const STREAM_RUNS = 5;

/** The ceiling for the migration stream: a bare TCP stream between two Node processes on loopback. */
async function bareTcpOnce(mib: number): Promise<Fields> {
  const peer = join(here, 'tcp-peer.js');
  const sink = await startUntil(pinned([process.execPath, peer, 'sink']), /port=(\d+)/);
  await output(pinned([process.execPath, peer, 'source', sink.match[1]!, String(mib)]));
  return parseLine(await sink.done);
}

/**
 * The cross-host downtime's same-run baseline: `bytes` (the final dirty
 * set and the device's stop-copy data) sent over a bare stream of the same
 * kind (`kind`: tcp, x509 or psk) between two Node processes, connected
 * beforehand, timed from the first write to the peer's one-byte answer
 * (one round trip, as FINISH has); the median of 5.
 */
async function burstOnce(kind: string, bytes: number): Promise<string> {
  const peer = join(here, 'tcp-peer.js');
  const fx = join(root, 'test', 'fixtures', 'tls');
  const echo = await startUntil(pinned([process.execPath, peer, 'echo', kind, fx]), /port=(\d+)/);
  try {
    return parseLine(await output(pinned([process.execPath, peer, 'burst', kind, fx, echo.match[1]!, String(bytes), '5'])))['ms']!;
  } finally {
    echo.proc.kill();
  }
}

/**
 * One cross-host migration on loopback: two fresh `vfu serve sample`,
 * `vfu receive` (port 0) and `vfu migrate --to URL --guest-mib N --json`.
 * gbps is pre-copy round 0 (every guest page) from the report.
 */
async function crossHostOnce(ctx: Ctx, kind: string, scheme: string, receiverArgs: string[], senderArgs: string[], mib: number): Promise<Fields> {
  const serve = (name: string): Promise<Server> => startServer(ctx.dir, name, pinned([process.execPath, cli, 'serve', 'sample', '--socket-path']));
  const a = await serve('xa');
  const b = await serve('xb');
  try {
    const recv = await startUntil(pinned([process.execPath, cli, 'receive', '--listen', `${scheme}://127.0.0.1:0`, '--to', b.path, ...receiverArgs]), /listening on (tcps?:\/\/[^\s,]+)/);
    try {
      const out = await output(pinned([process.execPath, cli, 'migrate', '--from', a.path, '--to', recv.match[1]!, '--guest-mib', String(mib), '--json', '-q', ...senderArgs]));
      const r = JSON.parse(out) as {
        rounds: { guestBytes: number; ms: number }[];
        phases: { phase: string; deviceBytes: number; guestBytes: number }[];
        downtimeMs: number;
        downtimeParts: Record<string, number>;
      };
      const r0 = r.rounds[0]!;
      await recv.done;
      const parts = Object.fromEntries(PARTS.map(([k]) => [`part_${k}`, String(r.downtimeParts[`${k}Ms`] ?? NaN)]));
      const sc = r.phases.find((p) => p.phase === 'stop-copy')!;
      const finalBytes = sc.deviceBytes + sc.guestBytes;
      const baseline = await burstOnce(kind, finalBytes);
      return { gbps: String(r0.guestBytes / r0.ms / 1e6), downtime_ms: String(r.downtimeMs), final_bytes: String(finalBytes), baseline_ms: baseline, ...parts };
    } finally {
      recv.proc.kill();
    }
  } finally {
    await a.stop();
    await b.stop();
  }
}

/**
 * Cross-host migration on loopback (`vfu migrate --to tcp[s]://` into `vfu
 * receive`, 256 MiB of guest RAM): guest pages per second over plain TCP
 * beside the bare TCP stream, and over TLS 1.3 (X.509 and PSK, with the
 * test credentials) beside plain TCP; and the downtime of each.
 */
async function stream(ctx: Ctx): Promise<void> {
  const fx = (n: string): string => join(root, 'test', 'fixtures', 'tls', n);
  const x509 = (who: string): string[] => ['--tls-cert', fx(`${who}.pem`), '--tls-key', fx(`${who}.key`), '--tls-ca', fx('ca.pem')];
  const psk = ['--tls-psk-file', fx('source.psk')];
  const variants: [label: string, kind: string, scheme: string, receiver: string[], sender: string[]][] = [
    ['plain TCP', 'tcp', 'tcp', [], []],
    ['TLS 1.3 (AES-128-GCM), mutual X.509', 'x509', 'tcps', x509('receiver'), x509('source')],
    ['TLS 1.3 (AES-128-GCM), PSK', 'psk', 'tcps', psk, psk],
  ];
  const bare = num(await medianRun(RUNS, 'gbps', () => bareTcpOnce(STREAM_GUEST_MIB)), 'gbps');
  ctx.rows.push({ name: `bare TCP stream between two Node processes on loopback, ${STREAM_GUEST_MIB} MiB in 1 MiB writes (ceiling)`, value: bare, unit: 'GB/s' });
  let plain = NaN;
  for (const [label, kind, scheme, rArgs, sArgs] of variants) {
    // each figure the median of the runs', as in the local downtime rows
    // (the downtime's parts those of its median run)
    const all: Fields[] = [];
    for (let i = 0; i < STREAM_RUNS; i++) all.push(await crossHostOnce(ctx, kind, scheme, rArgs, sArgs, STREAM_GUEST_MIB));
    const gbps = median(all.map((x) => num(x, 'gbps')));
    const m = median(all.map((x) => num(x, 'downtime_ms')));
    const f = all.find((x) => num(x, 'downtime_ms') === m)!;
    if (scheme === 'tcp') plain = gbps;
    const want = scheme === 'tcp' ? 1 : 0.5;
    const row: BenchRow = { name: `cross-host migration on loopback, ${STREAM_GUEST_MIB} MiB guest RAM, pre-copy of every page: ${label}`, value: gbps, unit: 'GB/s' };
    ctx.rows.push({ ...(scheme === 'tcp' ? vs(row, 'bare TCP stream', bare, 'higher') : vs(row, 'plain TCP', plain, 'higher')), target: `≥ ${want} GB/s`, met: gbps >= want });
    const parts = PARTS.map(([k, l]) => `${l} ${num(f, `part_${k}`).toFixed(2)}`).join(' + ');
    // the downtime against its own run's baseline (issue #14: at most 1.5 x + 0.5 ms)
    const floor = median(all.map((x) => num(x, 'baseline_ms')));
    const limit = 1.5 * floor + 0.5;
    const down: BenchRow = { name: `cross-host migration downtime, ${label}, median of ${STREAM_RUNS} (ms: ${parts})`, value: m, unit: 'ms', target: `≤ 1.5 x baseline + 0.5 ms = ${limit.toFixed(2)} ms`, met: m <= limit };
    ctx.rows.push(vs(down, `baseline: ${num(f, 'final_bytes')} B final data over a bare ${kind === 'tcp' ? 'TCP' : 'TLS'} stream + answer`, floor, 'lower'));
  }
}

/**
 * NVMe: our host-side driver against `vfu serve nvme` over a mapped memfd,
 * 4 KiB random reads (QD 1, QD 32) and 128 KiB sequential reads and writes
 * on a 256 MiB image that sits in the page cache; the baseline is the same
 * reads done with pread on the image in the same run.  Unlike the other
 * sections these processes are NOT pinned: the device's backend I/O runs on
 * libuv's threadpool, off the event loop, and the point is that it uses the
 * other CPU (the pread baseline gets the same freedom).
 */
async function nvme(ctx: Ctx): Promise<void> {
  ctx.notes.push('nvme: its processes are not pinned (the backend I/O runs on the threadpool, which should use the other CPU)');
  const image = join(ctx.dir, 'nvme.img');
  const size = 256 * MiB;
  {
    const fd = openSync(image, 'w');
    const chunk = Buffer.alloc(16 * MiB);
    for (let at = 0; at < size; at += chunk.length) {
      fillPseudoRandom(chunk, 1 + at / chunk.length);
      writeSync(fd, chunk, 0, chunk.length, at);
    }
    closeSync(fd);
  }
  const serveNvme = (name: string, extra: string[] = []): Promise<Server> =>
    startServer(ctx.dir, name, [process.execPath, cli, 'serve', 'nvme', '--image', image, '--queues', '2', ...extra, '--socket-path']);
  const client = (...args: string[]): string[] => [process.execPath, nvmeClient, ...args];
  const OPS = '40000';
  const figures: Record<string, Fields> = {};
  const posted = await serveNvme('nvme-posted');
  try {
    figures['qd1'] = await medianRun(RUNS, 'iops', () => run(client('randread', posted.path, '1', OPS, 'posted')));
    figures['qd32'] = await medianRun(RUNS, 'iops', () => run(client('randread', posted.path, '32', OPS, 'posted')));
    figures['seqr'] = await medianRun(RUNS, 'gbps', () => run(client('seq', posted.path, 'read', '8', String(1024 * MiB))));
    figures['seqw'] = await medianRun(RUNS, 'gbps', () => run(client('seq', posted.path, 'write', '8', String(512 * MiB))));
  } finally {
    await posted.stop();
  }
  const shadow = await serveNvme('nvme-ioeventfd', ['--shadow-doorbells']);
  try {
    figures['qd32e'] = await medianRun(RUNS, 'iops', () => run(client('randread', shadow.path, '32', OPS, 'ioeventfd')));
    figures['qd1e'] = await medianRun(RUNS, 'iops', () => run(client('randread', shadow.path, '1', OPS, 'ioeventfd')));
  } finally {
    await shadow.stop();
  }
  figures['p1'] = await medianRun(RUNS, 'iops', () => run(client('pread', image, '1', OPS)));
  figures['p32'] = await medianRun(RUNS, 'iops', () => run(client('pread', image, '32', OPS)));
  figures['pseq'] = await medianRun(RUNS, 'gbps', () => run(client('preadseq', image, '8', String(1024 * MiB))));
  const f = (k: string, n: string): number => num(figures[k]!, n);
  const rr = (qd: number, how: string): string => `nvme 4 KiB random read QD${qd}, doorbells ${how}`;
  ctx.rows.push(vs({ name: `${rr(1, 'posted')}: IOPS`, value: f('qd1', 'iops'), unit: 'IOPS' }, 'pread QD1', f('p1', 'iops'), 'higher'));
  ctx.rows.push(vs({ name: `${rr(1, 'posted')}: p50`, value: f('qd1', 'p50_us'), unit: 'µs' }, 'pread QD1', f('p1', 'p50_us'), 'lower'));
  ctx.rows.push(vs({ name: `${rr(1, 'posted')}: p99`, value: f('qd1', 'p99_us'), unit: 'µs' }, 'pread QD1', f('p1', 'p99_us'), 'lower'));
  ctx.rows.push({
    ...vs({ name: `${rr(32, 'posted')} (2 queues): IOPS`, value: f('qd32', 'iops'), unit: 'IOPS' }, 'pread QD32', f('p32', 'iops'), 'higher'),
    target: '≥ 50,000 IOPS',
    met: f('qd32', 'iops') >= 50_000,
  });
  ctx.rows.push(vs({ name: `${rr(32, 'posted')}: p50`, value: f('qd32', 'p50_us'), unit: 'µs' }, 'pread QD32', f('p32', 'p50_us'), 'lower'));
  ctx.rows.push(vs({ name: `${rr(32, 'posted')}: p99`, value: f('qd32', 'p99_us'), unit: 'µs' }, 'pread QD32', f('p32', 'p99_us'), 'lower'));
  ctx.rows.push(vs({ name: `${rr(32, 'as ioeventfds (shadow doorbells)')}: IOPS`, value: f('qd32e', 'iops'), unit: 'IOPS' }, 'posted', f('qd32', 'iops'), 'higher'));
  ctx.rows.push(vs({ name: `${rr(1, 'as ioeventfds (shadow doorbells)')}: p50`, value: f('qd1e', 'p50_us'), unit: 'µs' }, 'posted', f('qd1', 'p50_us'), 'lower'));
  ctx.rows.push({
    ...vs({ name: 'nvme 128 KiB sequential read QD8', value: f('seqr', 'gbps'), unit: 'GB/s' }, 'pread 128 KiB QD8', f('pseq', 'gbps'), 'higher'),
    target: '≥ 2 GB/s',
    met: f('seqr', 'gbps') >= 2,
  });
  ctx.rows.push({ name: 'nvme 128 KiB sequential write QD8 (page cache, no flush)', value: f('seqw', 'gbps'), unit: 'GB/s' });
  // Downtime of a live migration between two servers on the image, under QD32 random reads.
  const all: Fields[] = [];
  for (let i = 0; i < RUNS; i++) {
    const a = await serveNvme(`nvme-src${i}`);
    const b = await serveNvme(`nvme-dst${i}`);
    try {
      all.push(await run(client('migrate', a.path, b.path, '32')));
    } finally {
      await a.stop();
      await b.stop();
    }
  }
  const m = median(all.map((x) => num(x, 'downtime_ms')));
  const mf = all.find((x) => num(x, 'downtime_ms') === m)!;
  const moved = all.every((x) => x['on_destination'] === '1');
  ctx.rows.push({
    name: `nvme migration downtime under QD32 4 KiB random reads (${num(mf, 'rounds')} rounds, in-flight commands drained at STOP_COPY)`,
    value: m,
    unit: 'ms',
    target: 'workload carries on at the destination',
    met: moved,
  });
}

// --------------------------------------------------------------------- main

const sections: Record<string, (ctx: Ctx) => Promise<void>> = {
  latency,
  migread,
  migwrite,
  rss: async (ctx) => void ctx.rows.push(...rssRows.splice(0)),
  dma: async (ctx) => void ctx.rows.push(...benchDma()),
  maps: async (ctx) => void ctx.rows.push(...benchDmaMaps()),
  dirty: async (ctx) => {
    for (const r of await benchDirty()) {
      // 1 GB/s of bitmap read: the tracked bitmap is the input of both
      // conversions (issue #14 holds the 512 B direction to it too; its
      // 16 MiB output is written 8x as fast).
      const big = /-> 2 MiB, input|-> 512 B, input/.test(r.name);
      ctx.rows.push(big ? { ...r, target: '≥ 1 GB/s', met: r.value >= 1 } : r);
    }
  },
  v1v2,
  downtime,
  stream,
  nvme,
  transport: async (ctx) => {
    const rows = await benchTransport();
    ctx.rows.push(...rows);
    const stream = rows.find((r) => r.name.startsWith('native stream 1 MiB msgs'));
    const c = ctx.shared[`migread-c-${MiB}`];
    if (stream && c !== undefined) {
      ctx.rows.push(vs({ name: 'MIG_DATA_READ 1 MiB chunks, C client -> vfu serve, vs streaming on a bare socket', value: c, unit: 'GB/s' }, 'native stream 1 MiB msgs', stream.value, 'higher'));
    }
  },
};

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const json = args.includes('--json');
  const markdown = args.includes('--markdown');
  const wanted = args.filter((a) => !a.startsWith('--'));
  for (const w of wanted) if (!(w in sections)) throw new Error(`unknown section ${w} (known: ${Object.keys(sections).join(' ')})`);
  const names = wanted.length ? Object.keys(sections).filter((s) => wanted.includes(s)) : Object.keys(sections);
  const lvuBuild = process.env['LIBVFIO_USER_BUILD'];
  const lvu = lvuBuild && existsSync(join(lvuBuild, 'samples', 'server')) ? lvuBuild : null;
  const ctx: Ctx = { dir: mkdtempSync(join(tmpdir(), 'vfu-bench-')), lvu, rows: [], notes: [], shared: {} };
  buildRefClient();
  if (!refClient) ctx.notes.push(`C reference client not built (cc failed: ${refClientWhy.trim()}): its rows are skipped`);
  if (!lvuBuild) ctx.notes.push('LIBVFIO_USER_BUILD is not set: skipping the libvfio-user samples/server rows');
  else if (!lvu) ctx.notes.push(`no samples/server under LIBVFIO_USER_BUILD=${lvuBuild}: skipping the libvfio-user rows`);
  if (!pin) ctx.notes.push('taskset not found: processes are NOT pinned to one CPU');
  const t0 = Date.now();
  try {
    for (const s of names) {
      process.stderr.write(`bench: ${s}...\n`);
      await sections[s]!(ctx);
    }
  } finally {
    rmSync(ctx.dir, { recursive: true, force: true });
  }
  const when = new Date().toISOString().slice(0, 10);
  console.log(`vfio-user benchmarks, ${when}, node ${process.version}, ${pin ? 'all processes pinned to CPU 0' : 'unpinned'}, ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  for (const n of ctx.notes) console.log(`note: ${n}`);
  if (markdown) console.log('');
  console.log(markdown ? formatMarkdown(ctx.rows) : formatRows(ctx.rows));
  if (json) console.log(JSON.stringify(ctx.rows, null, 2));
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
