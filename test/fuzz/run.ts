// `npm run fuzz [-- --seed N --cases N --client-share F --workers N --first N]`:
// at least 100,000 cases by default (server and client), then ONE summary
// line; the failures (if any) follow on stderr.  Exit status 1 when anything
// was found.
import { availableParallelism } from 'node:os';
import { clean, runFuzz, summaryLine } from './supervisor.js';

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) return dflt;
  const v = process.argv[i + 1]!;
  return v.startsWith('0x') ? parseInt(v, 16) : Number(v);
}

const seed = arg('seed', 0x5eed2025);
const cases = arg('cases', 100_000);
const clientShare = arg('client-share', 0.2);
// client cases mostly wait on timeouts: more workers than CPUs pays off
const workers = arg('workers', Math.min(8, Math.max(4, availableParallelism())));
const first = arg('first', 0);
const clientCases = Math.round(cases * clientShare);
const tty = process.stderr.isTTY;
let last = 0;
const s = await runFuzz({
  seed,
  serverCases: cases - clientCases,
  clientCases,
  first,
  workers,
  onProgress: (done, total) => {
    if (tty && Date.now() - last > 500) {
      last = Date.now();
      process.stderr.write(`\r${done}/${total} cases`);
    }
  },
});
if (tty) process.stderr.write('\r\x1b[K');
process.stdout.write(summaryLine(s) + '\n');
for (const f of s.failures) process.stderr.write(`  case ${f.index} [${f.kind}]: ${f.what}\n`);
process.exit(clean(s) ? 0 : 1);
