// On the bench scenario (BENCHMARKS.md, "migration downtime") the downtime
// the orchestrator predicted when it switched over is within a factor of 2
// of the downtime it then measured, in the same run.
import { EAGER_V8_FLAGS } from '../src/cli/eager.js';
import { strict as assert } from 'node:assert';
import { existsSync } from 'node:fs';
import { availableParallelism, loadavg } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { cli, root, start, type Proc } from './helpers/procs.js';
import { connectWhenListening, tempDir, until } from './helpers/server.js';

test('bench scenario, fresh processes: the predicted downtime is within a factor of 2 of the actual one', { timeout: 300_000 }, async (tc) => {
  // Two `vfu serve bigstate --state-mib 64 --precopy-mib 64`, 64 MiB of
  // guest RAM, 5% dirtied per round, the orchestrator in its own process
  // (bench/ts-client.js).  Both figures come from the same run; two of up
  // to three runs must be within the factor (a loaded machine can stretch
  // one window, not the median).  On a machine with more runnable
  // processes than CPUs (the whole suite, other jobs) a window of a few ms
  // is stretched by whoever else runs, which no prediction can know: then
  // the figures are reported (diagnostic) and only checked to be there.
  const t = tempDir('vfu-downtime-');
  const within: boolean[] = [];
  const seen: string[] = [];
  try {
    for (let i = 0; i < 3 && within.filter(Boolean).length < 2 && within.filter((x) => !x).length < 2; i++) {
      const a = join(t.dir, `a${i}.sock`);
      const b = join(t.dir, `b${i}.sock`);
      const servers: Proc[] = [
        start([cli, 'serve', 'bigstate', '--socket-path', a, '--state-mib', '64', '--precopy-mib', '64']),
        start([cli, 'serve', 'bigstate', '--socket-path', b, '--state-mib', '64', '--precopy-mib', '64', '--no-verify']),
      ];
      try {
        await until(() => existsSync(a) && existsSync(b), 30_000);
        for (const s of [a, b]) (await connectWhenListening(s, {}, 30_000)).close();
        // compiled as the bench runs it (as `vfu migrate` would)
        const c = start([...EAGER_V8_FLAGS, join(root, 'dist', 'bench', 'ts-client.js'), 'migrate', a, b, '64', '5', '4']);
        const [code] = await c.exited;
        assert.equal(code, 0, c.stderr());
        const f = Object.fromEntries(c.stdout().trim().split(' ').map((kv) => kv.split('=') as [string, string]));
        assert.equal(f['ram_match'], '1');
        const ratio = Number(f['predicted_ms']) / Number(f['downtime_ms']);
        seen.push(`predicted ${f['predicted_ms']} ms, actual ${f['downtime_ms']} ms`);
        within.push(ratio >= 0.5 && ratio <= 2);
      } finally {
        for (const s of servers) s.child.kill('SIGTERM');
        await Promise.all(servers.map((s) => s.exited));
      }
    }
  } finally {
    t.cleanup();
  }
  const busy = loadavg()[0]! > availableParallelism();
  tc.diagnostic(`${seen.join('; ')}${busy ? ` (load ${loadavg()[0]!.toFixed(1)} on ${availableParallelism()} CPUs: ratio not enforced)` : ''}`);
  if (!busy) assert.ok(within.filter(Boolean).length >= 2, seen.join('; '));
});
