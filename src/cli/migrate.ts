// `vfu migrate --from PATH --to PATH|tcp[s]://HOST:PORT`: live-migrates the
// device behind a source server, to a destination server on this host or to
// `vfu receive` on another (tcps://: over TLS 1.3, --tls-* credentials).  A progress bar runs during pre-copy; a phase
// table (or JSON) follows.  With --guest-mib it also stands in for the
// VMM's RAM (mapped to the device and migrated page by page).
import { randomBytes } from 'node:crypto';
import { statSync, writeFileSync } from 'node:fs';
import cliProgress from 'cli-progress';
import { VfioUserClient } from '../client/client.js';
import { compareProfiles, deviceProfile } from '../client/compare.js';
import { LocalTarget, MigrationNotConvergedError, formatReport, migrate, type MigrationTarget } from '../client/migrate.js';
import { type TlsFiles, tlsOptionsFromFiles } from '../client/stream-tls.js';
import { TcpTarget } from '../client/tcp-stream.js';
import { intOption } from './options.js';
import { migrationSvg } from './plot.js';

export interface MigrateCliOptions extends TlsFiles {
  from: string;
  to: string;
  json?: boolean;
  rounds?: string;
  convergeKib?: string;
  maxDowntime?: string;
  timeout?: string;
  chunkKib?: string;
  guestMib?: string;
  precopy?: boolean;
  quiet?: boolean;
  force?: boolean;
  discardPrecopyData?: boolean;
  plot?: string;
}

/** The same socket file (by inode, so two spellings of one path count). */
function sameSocket(a: string, b: string): boolean {
  if (a === b) return true;
  try {
    const x = statSync(a);
    const y = statSync(b);
    return x.dev === y.dev && x.ino === y.ino;
  } catch {
    return false;
  }
}

export async function migrateCommand(o: MigrateCliOptions): Promise<void> {
  const local = !/^tcps?:\/\//.test(o.to);
  if (local && sameSocket(o.from, o.to)) {
    throw new Error(`--from and --to are the same socket (${o.from}): migrate to a second server running the same device`);
  }
  const rounds = o.rounds !== undefined ? intOption('--rounds', o.rounds, 0) : undefined;
  const convergeKib = o.convergeKib !== undefined ? intOption('--converge-kib', o.convergeKib, 0) : undefined;
  const chunkKib = o.chunkKib !== undefined ? intOption('--chunk-kib', o.chunkKib, 1) : undefined;
  const guestMib = o.guestMib !== undefined ? intOption('--guest-mib', o.guestMib, 1) : undefined;
  const maxDowntimeMs = o.maxDowntime !== undefined ? intOption('--max-downtime', o.maxDowntime, 0) : undefined;
  const timeoutS = o.timeout !== undefined ? intOption('--timeout', o.timeout, 0) : undefined;
  const src = await VfioUserClient.connect(o.from);
  let dst: VfioUserClient | null = null;
  let target: MigrationTarget;
  try {
    if (!local) {
      const tls = tlsOptionsFromFiles(o, 'client');
      target = new TcpTarget(o.to, tls ? { tls } : {});
    } else {
      dst = await VfioUserClient.connect(o.to);
      target = new LocalTarget(dst);
      // Nothing moves until both ends are known to be the same kind of device.
      const diffs = compareProfiles(await deviceProfile(src), await deviceProfile(dst));
      if (diffs.length > 0 && !o.force) {
        throw new Error(`the devices differ, nothing was migrated (--force to migrate anyway):\n  ${diffs.join('\n  ')}`);
      }
      if (diffs.length > 0) process.stderr.write(`vfu: warning: the devices differ (--force):\n  ${diffs.join('\n  ')}\n`);
    }
  } catch (e) {
    src.close();
    dst?.close();
    throw e;
  }
  if (guestMib !== undefined) {
    const size = guestMib * 1024 * 1024;
    const r = src.memory.add(0x100000, size);
    // a guest's RAM holds data: every page is touched before anything moves
    randomBytes(Math.min(size, 1 << 20)).copy(r.bytes);
    if (size > 1 << 20) r.bytes.subarray(1 << 20).fill(r.bytes.subarray(0, 1 << 20));
    await src.dmaMap({ iova: 0x100000, size });
  }
  const showBar = !o.json && !o.quiet;
  const bar = new cliProgress.SingleBar(
    { format: 'migrating {phase} |{bar}| {mib} MiB  round {round}  left {left} KiB', hideCursor: true },
    cliProgress.Presets.shades_classic,
  );
  if (showBar) bar.start(100, 0, { phase: 'setup', mib: '0.0', round: 0, left: '-' });
  let estimateTotal = 0;
  try {
    const report = await migrate(src, target, {
      ...(rounds !== undefined ? { maxRounds: rounds } : {}),
      ...(convergeKib !== undefined ? { convergeBytes: convergeKib * 1024 } : {}),
      ...(chunkKib !== undefined ? { chunkSize: chunkKib * 1024 } : {}),
      ...(maxDowntimeMs !== undefined ? { maxDowntimeMs } : {}),
      ...(timeoutS !== undefined ? { timeoutMs: timeoutS * 1000 } : {}),
      ...(o.precopy === false ? { noPreCopy: true } : {}),
      ...(o.discardPrecopyData ? { discardPrecopyDeviceData: true } : {}),
      onProgress: (e) => {
        if (!showBar) return;
        const done = e.deviceBytes + e.guestBytes;
        if (e.remainingEstimate !== undefined) estimateTotal = Math.max(estimateTotal, done + e.remainingEstimate);
        const pct = estimateTotal > 0 ? Math.min(100, Math.round((done / estimateTotal) * 100)) : 0;
        bar.update(pct, {
          phase: e.phase.padEnd(9),
          mib: (done / 1048576).toFixed(1),
          round: e.round ?? 0,
          left: e.remainingEstimate !== undefined ? Math.round(e.remainingEstimate / 1024) : '-',
        });
      },
    });
    if (showBar) {
      bar.update(100, { phase: 'done     ' });
      bar.stop();
    }
    if (o.plot !== undefined) writeFileSync(o.plot, migrationSvg(report));
    process.stdout.write((o.json ? JSON.stringify(report, null, 2) : formatReport(report)) + '\n');
  } catch (e) {
    if (showBar) bar.stop();
    // the rounds and rates of a migration that could not converge, for tools
    if (o.json && e instanceof MigrationNotConvergedError) process.stdout.write(JSON.stringify(e.report, null, 2) + '\n');
    throw e;
  } finally {
    src.close();
    dst?.close();
    if (target instanceof TcpTarget) target.close();
  }
}
