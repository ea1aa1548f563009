// `npm run soak [-- --migrations N --guest-mib N]` (not part of CI): the
// migration demo, 100 times back and forth between two `vfu serve sample`
// processes.  A guest keeps writing its RAM and the device's BAR1 throughout;
// every switch-over compares source and destination checksums (BAR1 and
// guest RAM).  After each migration the server left behind must hold what it
// held at rest (descriptors, file-backed mappings).  Prints one summary line;
// exit status 1 on any failure.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { VfioUserClient } from '../../src/client/client.js';
import { LocalTarget, migrate } from '../../src/client/migrate.js';
import { Guest, stateChecksum } from '../../src/cli/demo.js';
import { BAR1_SIZE } from '../../src/devices/sample.js';
import { IrqIndex, PciRegion } from '../../src/protocol/constants.js';
import { backTo, holdings, startServer } from '../helpers/procs.js';

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i < 0 ? dflt : Number(process.argv[i + 1]);
}

const migrations = arg('migrations', 100);
const guestMib = arg('guest-mib', 32);
const t0 = performance.now();
const dir = mkdtempSync(join(tmpdir(), 'vfu-soak-'));
const paths = [join(dir, 'a.sock'), join(dir, 'b.sock')] as const;
const servers = [await startServer(paths[0]), await startServer(paths[1])];
await new Promise((r) => setTimeout(r, 100));
const rest = servers.map((s) => holdings(s.pid));
const ram = { iova: 0x100000, size: guestMib * 1024 * 1024 };

let failures = 0;
let mismatches = 0;
let leaks = 0;
const errors: string[] = [];
const downtimes: number[] = [];
const directions = [0, 0];

let cur = await VfioUserClient.connect(paths[0]);
let at = 0;
cur.memory.add(ram.iova, ram.size);
randomBytes(1 << 20).copy(cur.memory.view(ram.iova, 1 << 20));
await cur.dmaMap(ram);
await cur.enableInterrupts(IrqIndex.INTX, 1);
await cur.regionWrite(PciRegion.BAR1, 0, randomBytes(BAR1_SIZE));
const guest = new Guest(cur, ram, Math.max(1, Math.floor((ram.size / 4096) * 0.002)));
guest.runOn(cur);

for (let i = 0; i < migrations; i++) {
  const to = 1 - at;
  await new Promise((r) => setTimeout(r, 50)); // the guest runs a while between migrations
  let dst: VfioUserClient | null = null;
  try {
    dst = await VfioUserClient.connect(paths[to]);
    const d = dst;
    const src = cur;
    const report = await migrate(src, new LocalTarget(d, (c) => stateChecksum(c, ram)), {
      maxRounds: 6,
      convergeBytes: 1024 * 1024,
      roundDelayMs: 30,
      pauseGuest: () => guest.pause(),
      resumeGuest: (on) => guest.runOn(on === 'destination' ? d : src),
      sourceChecksum: () => stateChecksum(src, ram),
    });
    downtimes.push(report.downtimeMs);
    directions[at]!++;
    if (report.sourceChecksum !== report.destinationChecksum) {
      mismatches++;
      errors.push(`migration ${i}: checksum ${report.sourceChecksum} != ${report.destinationChecksum}`);
    }
    src.close();
    cur = d;
    // the server left behind releases everything the old client held
    try {
      await backTo(servers[at]!.pid, rest[at]!);
    } catch (e) {
      leaks++;
      errors.push(`migration ${i}: ${(e as Error).message}`);
    }
    at = to;
  } catch (e) {
    failures++;
    errors.push(`migration ${i}: ${(e as Error).message}`);
    dst?.close();
  }
}
await guest.pause();
cur.close();
for (let k = 0; k < 2; k++) {
  try {
    await backTo(servers[k]!.pid, rest[k]!);
  } catch (e) {
    leaks++;
    errors.push(`end: ${(e as Error).message}`);
  }
}
for (const s of servers) s.child.kill('SIGTERM');
const exits = await Promise.all(servers.map((s) => s.exited));
const badExits = exits.filter(([code]) => code !== 0).length;
rmSync(dir, { recursive: true, force: true });

const sorted = [...downtimes].sort((a, b) => a - b);
const pct = (p: number): string => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!.toFixed(1) : '-');
process.stdout.write(
  `soak: ${migrations} migrations (${directions[0]} A->B, ${directions[1]} B->A), ${guestMib} MiB guest RAM written throughout; ` +
    `failures ${failures}, checksum mismatches ${mismatches}, servers not back at rest ${leaks}, bad server exits ${badExits}; ` +
    `downtime median ${pct(50)} ms, p95 ${pct(95)} ms, max ${sorted.length ? sorted[sorted.length - 1]!.toFixed(1) : '-'} ms; ` +
    `${guest.writes} guest write bursts; ${((performance.now() - t0) / 1000).toFixed(1)} s\n`,
);
for (const e of errors.slice(0, 20)) process.stderr.write(`  ${e}\n`);
process.exit(failures + mismatches + leaks + badExits === 0 ? 0 : 1);
