// `vfu demo` (npm run demo): a live migration you can watch.  Two `sample`
// device servers run as separate processes; a simulated guest keeps writing
// to the device's memory (BAR1) and to its DMA-mapped RAM while the device
// is migrated from the first server to the second with pre-copy rounds.  At
// switch-over the destination's state (BAR1 and guest RAM) must checksum the
// same as the source's; then the guest carries on against the destination.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import cliProgress from 'cli-progress';
import { VfioUserClient } from '../client/client.js';
import { LocalTarget, formatReport, migrate, type MigrationReport } from '../client/migrate.js';
import { BAR1_SIZE } from '../devices/sample.js';
import { demoNvme } from './demo-nvme.js';
import { IrqIndex, PciRegion } from '../protocol/constants.js';

export interface DemoOptions {
  guestMib?: string;
  rounds?: string;
  json?: boolean;
  quiet?: boolean;
  /** 'sample' (default) or 'nvme' (see demo-nvme.ts). */
  device?: string;
}

const cliPath = fileURLToPath(new URL('./main.js', import.meta.url));

function startServer(path: string): ChildProcess {
  return spawn(process.execPath, [cliPath, 'serve', 'sample', '--socket-path', path], { stdio: ['ignore', 'ignore', 'inherit'] });
}

async function waitFor(path: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!existsSync(path)) {
    if (Date.now() > end) throw new Error(`server did not create ${path}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The device state the demo compares: BAR1 and the guest's RAM. */
export async function stateChecksum(c: VfioUserClient, ram: { iova: number; size: number }): Promise<string> {
  const h = createHash('sha256');
  h.update(await c.regionRead(PciRegion.BAR1, 0, BAR1_SIZE));
  h.update(c.memory.view(ram.iova, ram.size));
  return h.digest('hex').slice(0, 16);
}

/** A guest that writes pages of its RAM and bytes of BAR1 while it runs. */
export class Guest {
  writes = 0;
  private timer: NodeJS.Timeout | null = null;
  private busy = false;
  constructor(
    private client: VfioUserClient,
    private readonly ram: { iova: number; size: number },
    private readonly pagesPerTick: number,
  ) {}
  runOn(c: VfioUserClient): void {
    this.client = c;
    this.timer = setInterval(() => void this.tick(), 5);
  }
  private async tick(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      const pages = this.ram.size / 4096;
      for (let i = 0; i < this.pagesPerTick; i++) {
        const p = Math.floor(Math.random() * pages);
        this.client.memory.write(this.ram.iova + p * 4096 + Math.floor(Math.random() * 4000), randomBytes(64));
      }
      await this.client.regionWrite(PciRegion.BAR1, Math.floor(Math.random() * (BAR1_SIZE - 64)), randomBytes(64));
      this.writes++;
    } catch {
      // the device may be stopping: skip this write
    } finally {
      this.busy = false;
    }
  }
  async pause(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    while (this.busy) await new Promise((r) => setTimeout(r, 1));
  }
}

export async function demoCommand(o: DemoOptions): Promise<void> {
  if (o.device === 'nvme') return demoNvme(o);
  if (o.device !== undefined && o.device !== 'sample') throw new Error(`demo: --device is sample or nvme, not '${o.device}'`);
  const guestMib = Number(o.guestMib ?? 64);
  const dir = mkdtempSync(join(tmpdir(), 'vfu-demo-'));
  const srcPath = join(dir, 'source.sock');
  const dstPath = join(dir, 'destination.sock');
  const servers = [startServer(srcPath), startServer(dstPath)];
  const out = (s: string): void => {
    if (!o.quiet && !o.json) process.stdout.write(s + '\n');
  };
  let report: MigrationReport | null = null;
  try {
    await Promise.all([waitFor(srcPath), waitFor(dstPath)]);
    const src = await VfioUserClient.connect(srcPath);
    const dst = await VfioUserClient.connect(dstPath);
    const info = await src.deviceInfo();
    out(`source and destination 'sample' servers up (pids ${servers.map((s) => s.pid).join(', ')}); device has ${info.numRegions} regions`);

    // guest RAM shared with the source device, and its interrupt
    const ram = { iova: 0x100000, size: guestMib * 1024 * 1024 };
    src.memory.add(ram.iova, ram.size);
    src.memory.view(ram.iova, ram.size).fill(0x5a);
    await src.dmaMap(ram);
    await src.enableInterrupts(IrqIndex.INTX, 1);
    await src.regionWrite(PciRegion.BAR1, 0, randomBytes(BAR1_SIZE));

    const guest = new Guest(src, ram, Math.max(1, Math.floor((ram.size / 4096) * 0.002)));
    guest.runOn(src);
    await new Promise((r) => setTimeout(r, 200));
    out(`guest running: ${guestMib} MiB of RAM DMA-mapped with its memfd, writing RAM pages and BAR1 continuously`);

    const bar = new cliProgress.SingleBar(
      { format: ' {phase} |{bar}| {value}/{total} MiB  round {round}  left {left} KiB', hideCursor: true, noTTYOutput: false, stopOnComplete: false },
      cliProgress.Presets.shades_classic,
    );
    const totalMib = Math.ceil(guestMib + BAR1_SIZE / 1048576);
    if (!o.quiet && !o.json) bar.start(totalMib, 0, { phase: 'setup', round: 0, left: '-' });
    report = await migrate(src, new LocalTarget(dst, (c) => stateChecksum(c, ram)), {
      maxRounds: Number(o.rounds ?? 6),
      convergeBytes: 1024 * 1024,
      roundDelayMs: 30,
      pauseGuest: () => guest.pause(),
      resumeGuest: (on) => guest.runOn(on === 'destination' ? dst : src),
      sourceChecksum: () => stateChecksum(src, ram),
      onProgress: (e) => {
        if (o.quiet || o.json) return;
        const mib = (e.deviceBytes + e.guestBytes) / 1048576;
        bar.setTotal(Math.max(totalMib, Math.ceil(mib)));
        bar.update(Math.round(mib), {
          phase: e.phase.padEnd(9),
          round: e.round ?? 0,
          left: e.remainingEstimate !== undefined ? Math.round(e.remainingEstimate / 1024) : '-',
        });
      },
    });
    if (!o.quiet && !o.json) bar.stop();
    await new Promise((r) => setTimeout(r, 200));
    await guest.pause();
    out('');
    out(formatReport(report));
    const afterWrites = guest.writes;
    out(`guest carried on against the destination (${afterWrites} write bursts in all)`);
    if (o.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
    src.close();
    dst.close();
    if (report.sourceChecksum !== report.destinationChecksum) {
      throw new Error('destination state differs from the source at switch-over');
    }
  } finally {
    for (const s of servers) s.kill('SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  }
}
