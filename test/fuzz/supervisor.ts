// Runs fuzz cases in worker processes (test/fuzz/worker.ts), in parallel,
// and merges what they report.  A worker that dies (a crash the process
// could not survive: a signal, an abort) or stops reporting for `stallMs` (a
// blocked event loop) is counted against the case it was running, and a new
// worker carries on from the next case.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ClientFuzzStats } from './client-harness.js';
import { emptyFaults, FAULT_COUNTERS, type FaultCounts } from './faults.js';
import type { Failure, FuzzStats } from './server-harness.js';

const workerPath = join(dirname(fileURLToPath(import.meta.url)), 'worker.js');

export interface FuzzRunOptions {
  seed: number;
  serverCases: number;
  clientCases: number;
  /** First case index (with `serverCases`/`clientCases` as counts). */
  first?: number;
  workers?: number;
  stallMs?: number;
  onProgress?: (done: number, total: number) => void;
}

export interface FuzzSummary extends FaultCounts {
  seed: number;
  serverCases: number;
  clientCases: number;
  /** Server replies to the fuzz messages: 'ok' or errno name. */
  serverReplies: Record<string, number>;
  /** How the client's calls ended. */
  clientOutcomes: Record<string, number>;
  dmaRequests: number;
  dmaWrongAnswers: number;
  memoryCorrupted: number;
  failures: Failure[];
  seconds: number;
}

interface Job {
  kind: 'server' | 'client';
  from: number;
  to: number;
}

function add(into: Record<string, number>, from: Record<string, number>): void {
  for (const [k, v] of Object.entries(from)) into[k] = (into[k] ?? 0) + v;
}

export async function runFuzz(o: FuzzRunOptions): Promise<FuzzSummary> {
  const t0 = performance.now();
  const first = o.first ?? 0;
  const workers = Math.max(1, o.workers ?? 1);
  const stallMs = o.stallMs ?? 30_000;
  const s: FuzzSummary = {
    seed: o.seed,
    serverCases: 0,
    clientCases: 0,
    serverReplies: {},
    clientOutcomes: {},
    ...emptyFaults(),
    dmaRequests: 0,
    dmaWrongAnswers: 0,
    memoryCorrupted: 0,
    failures: [],
    seconds: 0,
  };
  const jobs: Job[] = [];
  const split = (kind: Job['kind'], n: number): void => {
    if (n <= 0) return;
    const per = Math.ceil(n / workers);
    for (let a = first; a < first + n; a += per) jobs.push({ kind, from: a, to: Math.min(first + n, a + per) });
  };
  split('server', o.serverCases);
  split('client', o.clientCases);
  const total = o.serverCases + o.clientCases;
  let done = 0;

  const merge = (kind: Job['kind'], st: FuzzStats): void => {
    if (kind === 'server') {
      s.serverCases += st.cases;
      add(s.serverReplies, st.replies);
    } else {
      const c = st as ClientFuzzStats;
      s.clientCases += c.cases;
      add(s.clientOutcomes, c.outcomes);
      s.dmaRequests += c.dmaRequests;
      s.dmaWrongAnswers += c.dmaWrongAnswers;
      s.memoryCorrupted += c.memoryCorrupted;
    }
    for (const k of FAULT_COUNTERS) s[k] += st[k];
    for (const f of st.failures) if (s.failures.length < 50) s.failures.push({ ...f, kind: `${kind}:${f.kind}` });
  };

  const runJob = (job: Job): Promise<void> =>
    new Promise((resolve) => {
      const child = spawn(process.execPath, ['--enable-source-maps', workerPath, job.kind, String(o.seed), String(job.from), String(job.to)], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let current = job.from;
      let reported = false;
      let checkpoint: FuzzStats | null = null;
      let stalled = false;
      let stderr = '';
      let timer = setTimeout(() => stall(), stallMs);
      const stall = (): void => {
        stalled = true;
        child.kill('SIGKILL');
      };
      child.stderr.on('data', (d: Buffer) => {
        stderr = (stderr + d.toString()).slice(-4000);
      });
      createInterface({ input: child.stdout }).on('line', (line) => {
        clearTimeout(timer);
        timer = setTimeout(() => stall(), stallMs);
        if (line.startsWith('S ')) {
          const i = Number(line.slice(2));
          if (i > current) {
            done += i - current;
            o.onProgress?.(done, total);
          }
          current = i;
        } else if (line.startsWith('C ')) {
          checkpoint = JSON.parse(line.slice(2)) as FuzzStats;
        } else if (line.startsWith('R ')) {
          reported = true;
          merge(job.kind, JSON.parse(line.slice(2)) as FuzzStats);
        }
      });
      child.on('exit', (code, signal) => {
        clearTimeout(timer);
        if (reported && code === 0) {
          done += job.to - current;
          o.onProgress?.(done, total);
          resolve();
          return;
        }
        // the worker died or stalled in case `current`: count it, go on after it
        const what = stalled ? `stalled for ${stallMs} ms` : `worker exited (code ${code}, signal ${signal})`;
        if (stalled) s.hangs++;
        else s.crashes++;
        if (s.failures.length < 50) s.failures.push({ index: current, kind: job.kind, what: `${what}: ${stderr.trim().split('\n').slice(-5).join(' | ')}` });
        // what the worker got through: its last checkpoint, plus the cases
        // after it (counted, their details lost), plus the one it died in
        const cp = checkpoint as FuzzStats | null;
        if (cp) merge(job.kind, cp);
        const lost = current - job.from - (cp?.cases ?? 0) + 1;
        if (job.kind === 'server') s.serverCases += lost;
        else s.clientCases += lost;
        done++;
        if (current + 1 < job.to) void runJob({ ...job, from: current + 1 }).then(resolve);
        else resolve();
      });
    });

  const queue = [...jobs];
  const lanes = Array.from({ length: Math.min(workers, queue.length) }, async () => {
    for (let j = queue.shift(); j; j = queue.shift()) await runJob(j);
  });
  await Promise.all(lanes);
  s.seconds = (performance.now() - t0) / 1000;
  return s;
}

export function summaryLine(s: FuzzSummary): string {
  const errors = Object.entries(s.serverReplies)
    .filter(([k]) => k !== 'ok')
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k}=${v}`)
    .join(' ');
  const client = Object.entries(s.clientOutcomes)
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k}=${v}`)
    .join(' ');
  return (
    `fuzz: seed=0x${s.seed.toString(16)} cases=${s.serverCases + s.clientCases} (server ${s.serverCases}, client ${s.clientCases}); ` +
    `server replies ok=${s.serverReplies.ok ?? 0} errors by errno: ${errors || '-'}; ` +
    `client calls: ${client || '-'}, DMA requests ${s.dmaRequests} (wrong answers ${s.dmaWrongAnswers}); ` +
    `crashes ${s.crashes}, hangs ${s.hangs}, fds leaked ${s.fdsLeaked}, mappings leaked ${s.mapsLeaked}, ` +
    `state violations ${s.stateViolations}, desyncs ${s.desyncs}, disconnects ${s.disconnects}, memory corrupted ${s.memoryCorrupted}; ` +
    `resync: ${s.resyncByBody} by sending the skipped body, ${s.resyncByReconnect} by reconnecting; ${s.seconds.toFixed(1)} s`
  );
}

/** Whether the run found nothing wrong. */
export function clean(s: FuzzSummary): boolean {
  return (
    s.crashes + s.hangs + s.fdsLeaked + s.mapsLeaked + s.stateViolations + s.desyncs + s.disconnects + s.dmaWrongAnswers + s.memoryCorrupted === 0 &&
    s.failures.length === 0
  );
}
