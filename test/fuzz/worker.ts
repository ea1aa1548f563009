// One fuzzing process: runs server or client cases [from, to) and reports on
// stdout (synchronous for pipes on Linux, so nothing is lost if it dies):
//   S <index>   a case starts
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
  const onCase = (i: number): void => {
    if (i + 1 < to) out(`S ${i + 1}`);
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
