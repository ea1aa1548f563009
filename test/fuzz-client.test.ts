// Client fuzzing in CI: a hostile server (test/fuzz/client-harness.ts) for a
// thousand cases with a fixed seed, through the same worker processes as
// `npm run fuzz`.  What it found is pinned down in client-hostile.test.ts.
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { clean, runFuzz, summaryLine } from './fuzz/supervisor.js';

test('client fuzz: 1000 hostile-server cases, no crash, hang or leak', { timeout: 120_000 }, async () => {
  const s = await runFuzz({ seed: 0xc11e47, serverCases: 0, clientCases: 1000, workers: 2 });
  const line = summaryLine(s);
  assert.equal(s.clientCases, 1000, line);
  assert.ok(clean(s), `${line}\n${s.failures.map((f) => `case ${f.index}: ${f.what}`).join('\n')}`);
  assert.ok(s.dmaRequests > 100, 'the hostile server sent DMA requests');
  assert.ok((s.clientOutcomes.EPROTO ?? 0) > 0 && (s.clientOutcomes.EMSGSIZE ?? 0) > 0, line);
});
