// `vfu migrate --from PATH --to PATH|tcp://HOST:PORT`: live-migrates the
// device behind a source server, to a destination server on this host or to
// `vfu receive` on another.  A progress bar runs during pre-copy; a phase
// table (or JSON) follows.  With --guest-mib it also stands in for the
// VMM's RAM (mapped to the device and migrated page by page).
import { randomBytes } from 'node:crypto';
import cliProgress from 'cli-progress';
import { VfioUserClient } from '../client/client.js';
import { LocalTarget, formatReport, migrate, type MigrationTarget } from '../client/migrate.js';
import { TcpTarget } from '../client/tcp-stream.js';

export interface MigrateCliOptions {
  from: string;
  to: string;
  json?: boolean;
  rounds?: string;
  convergeKib?: string;
  chunkKib?: string;
  guestMib?: string;
  precopy?: boolean;
  quiet?: boolean;
}

export async function migrateCommand(o: MigrateCliOptions): Promise<void> {
  const src = await VfioUserClient.connect(o.from);
  let dst: VfioUserClient | null = null;
  let target: MigrationTarget;
  if (o.to.startsWith('tcp://')) target = new TcpTarget(o.to);
  else {
    dst = await VfioUserClient.connect(o.to);
    target = new LocalTarget(dst);
  }
  if (o.guestMib) {
    const size = Number(o.guestMib) * 1024 * 1024;
    const r = src.memory.add(0x100000, size);
    randomBytes(Math.min(size, 1 << 20)).copy(r.bytes);
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
      ...(o.rounds !== undefined ? { maxRounds: Number(o.rounds) } : {}),
      ...(o.convergeKib !== undefined ? { convergeBytes: Number(o.convergeKib) * 1024 } : {}),
      ...(o.chunkKib !== undefined ? { chunkSize: Number(o.chunkKib) * 1024 } : {}),
      ...(o.precopy === false ? { noPreCopy: true } : {}),
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
    process.stdout.write((o.json ? JSON.stringify(report, null, 2) : formatReport(report)) + '\n');
  } catch (e) {
    if (showBar) bar.stop();
    throw e;
  } finally {
    src.close();
    dst?.close();
    if (target instanceof TcpTarget) target.close();
  }
}
