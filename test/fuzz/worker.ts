// One fuzzing process: runs server or client cases [from, to) and reports on
// stdout (synchronous for pipes on Linux, so nothing is lost if it dies):
//   S <index>   a case starts
//   C <json>    the statistics so far, every 500 cases (kept if we die)
//   R <json>    the statistics, at the end
// Usage: node worker.js server|client SEED FROM TO
import { cleanupFdTemp } from './fds.js';
import { fuzzClient } from './client-harness.js';
import { fuzzServer } from './server-harness.js';

const [kind, seedArg, fromArg, toArg] = process.argv.slice(2);
const seed = Number(seedArg);
const from = Number(fromArg);
const to = Number(toArg);
const out = (s: string): void => void process.stdout.write(s + '\n');

async function main(): Promise<void> {
  out(`S ${from}`);
  // VFU_FUZZ_DIE_AT=N: die in case N (tests the supervisor's accounting)
  const dieAt = Number(process.env.VFU_FUZZ_DIE_AT ?? -1);
  const onCase = (i: number, stats: { cases: number }): void => {
    if (stats.cases % 500 === 0) out(`C ${JSON.stringify(stats)}`);
    if (i + 1 < to) out(`S ${i + 1}`);
    if (i + 1 === dieAt) process.kill(process.pid, 'SIGKILL');
  };
  const stats = kind === 'client' ? await fuzzClient(seed, from, to, onCase) : await fuzzServer(seed, from, to, onCase);
  cleanupFdTemp();
  out(`R ${JSON.stringify(stats)}`);
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    process.stderr.write(`fuzz worker: ${(e as Error)?.stack ?? String(e)}\n`);
    process.exit(2);
  },
);
