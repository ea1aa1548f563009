// Server fuzzing in CI: a few thousand cases with a fixed seed (mutated
// recorded messages, random headers, cuts and coalescing, descriptor
// mischief; see test/fuzz/), run by the same worker processes as
// `npm run fuzz`.  Each case is checked for sync (replies and a probe),
// untouched device state when everything was refused, descriptor and
// mapping accounting, and nothing thrown out of the event loop.
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { clean, runFuzz, summaryLine } from './fuzz/supervisor.js';

test('server fuzz: 4000 cases, in sync, no crash, hang, leak or stray state change', { timeout: 120_000 }, async () => {
  const s = await runFuzz({ seed: 0x5e4f3, serverCases: 4000, clientCases: 0, workers: 1 });
  const line = summaryLine(s);
  assert.equal(s.serverCases, 4000, line);
  assert.ok(clean(s), `${line}\n${s.failures.map((f) => `case ${f.index} [${f.kind}]: ${f.what}`).join('\n')}`);
  // the generators reach both outcomes and the resynchronisation paths
  assert.ok((s.serverReplies.ok ?? 0) > 100 && (s.serverReplies.EINVAL ?? 0) > 1000, line);
  assert.ok(s.resyncByBody > 0 && s.resyncByReconnect > 0, line);
});

test('supervisor: a worker dying in a case is a crash counted against that case, and the run goes on', { timeout: 60_000 }, async () => {
  process.env.VFU_FUZZ_DIE_AT = '1234';
  try {
    const s = await runFuzz({ seed: 1, serverCases: 1500, clientCases: 0, workers: 1 });
    assert.equal(s.crashes, 1);
    assert.equal(s.serverCases, 1500);
    assert.equal(s.failures.length, 1);
    assert.equal(s.failures[0]!.index, 1234);
    assert.match(s.failures[0]!.what, /SIGKILL/);
    assert.ok((s.serverReplies.EINVAL ?? 0) > 0, 'the checkpoint before the crash was kept');
  } finally {
    delete process.env.VFU_FUZZ_DIE_AT;
  }
});
