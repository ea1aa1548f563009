// `vfu demo --device nvme`: an NVMe controller migrated live while I/O runs.
// Two `vfu serve nvme` processes share one image file; our host-side NVMe
// driver keeps 16 commands in flight on each of two queues (verified reads
// and writes of 4 KiB blocks) while the controller moves from the first
// server to the second.  The driver carries on against the destination and
// every block is then read back and compared with its last write.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { VfioUserClient } from '../client/client.js';
import { LocalTarget, formatReport, migrate, type MigrationReport } from '../client/migrate.js';
import { NvmeDriver } from '../client/nvme/driver.js';

export interface NvmeDemoOptions {
  rounds?: string;
  json?: boolean;
  quiet?: boolean;
}

const cliPath = fileURLToPath(new URL('./main.js', import.meta.url));
const BLOCK = 4096;
const BLOCKS = 2048; // 8 MiB of the image in use

function stamp(buf: Buffer, block: number, seq: number): void {
  for (let i = 0; i < buf.length; i += 8) {
    buf.writeUInt32LE(block, i);
    buf.writeUInt32LE(seq, i + 4);
  }
}

export async function demoNvme(o: NvmeDemoOptions): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vfu-demo-nvme-'));
  const image = join(dir, 'disk.img');
  const out = (s: string): void => {
    if (!o.quiet && !o.json) process.stdout.write(s + '\n');
  };
  const start = (name: string): { path: string; kill: () => void } => {
    const path = join(dir, `${name}.sock`);
    const p = spawn(process.execPath, [cliPath, 'serve', 'nvme', '--image', image, '--size', '64M', '--queues', '2', '--socket-path', path], { stdio: ['ignore', 'ignore', 'inherit'] });
    return { path, kill: () => p.kill('SIGTERM') };
  };
  const waitFor = async (path: string): Promise<void> => {
    const end = Date.now() + 10_000;
    while (!existsSync(path)) {
      if (Date.now() > end) throw new Error(`server did not create ${path}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  const a = start('source');
  await waitFor(a.path); // the source creates the image; the destination opens it
  const b = start('destination');
  let report: MigrationReport | null = null;
  try {
    await waitFor(b.path);
    const src = await VfioUserClient.connect(a.path, { migSizing: true });
    const dst = await VfioUserClient.connect(b.path, { migSizing: true });
    const d = await NvmeDriver.open(src, { ioQueues: 2, queueEntries: 64, dataBytes: 4 << 20 });
    out(`two 'vfu serve nvme' servers share ${image} (64 MiB, never copied); controller "${d.info.model}" serial ${d.info.serial}`);
    const last = new Int32Array(BLOCKS).fill(-1);
    let ops = 0;
    let reads = 0;
    let bad = 0;
    let stop = false;
    let where = 'source';
    const onSource = { ops: 0 };
    const workers = Array.from({ length: 32 }, async (_, w) => {
      const iova = d.alloc(BLOCK);
      const buf = Buffer.alloc(BLOCK);
      let seq = 0;
      for (let i = 0; !stop; i++) {
        // Each worker owns the blocks congruent to it: reads check exact data.
        const block = w + 32 * ((i * 7 + w) % (BLOCKS / 32));
        if (last[block]! >= 0 && i % 2 === 1) {
          await d.read(1 + (w % 2), block * 8, 8, iova);
          stamp(buf, block, last[block]!);
          if (!d.view(iova, BLOCK).equals(buf)) bad++;
          reads++;
        } else {
          stamp(buf, block, ++seq);
          d.store(iova, buf);
          await d.write(1 + (w % 2), block * 8, 8, iova);
          last[block] = seq;
        }
        ops++;
        if (where === 'source') onSource.ops = ops;
      }
    });
    const ticker = setInterval(() => out(`  I/O on the ${where}: ${ops} commands (${reads} verified reads), ${bad} mismatches`), 250);
    await new Promise((r) => setTimeout(r, 600));
    report = await migrate(src, new LocalTarget(dst), {
      maxRounds: Number(o.rounds ?? 6),
      // The controller's state is ~1.4 KB: what is left decides (see nvme-migrate.test.ts).
      convergeBytes: 8 << 20,
      pauseGuest: () => {
        d.pause();
        out(`  -- switch-over: guest paused, in-flight commands drained on the source --`);
      },
      resumeGuest: async (on) => {
        await d.resume(on === 'destination' ? dst : undefined);
        where = on;
      },
    });
    const atSwitch = ops;
    await new Promise((r) => setTimeout(r, 600));
    stop = true;
    clearInterval(ticker);
    await Promise.all(workers);
    // Every block against its last write, read from the destination.
    const iova = d.alloc(BLOCK);
    const want = Buffer.alloc(BLOCK);
    let checked = 0;
    for (let block = 0; block < BLOCKS; block++) {
      if (last[block]! < 0) continue;
      await d.read(1, block * 8, 8, iova);
      stamp(want, block, last[block]!);
      if (!d.view(iova, BLOCK).equals(want)) bad++;
      checked++;
    }
    out('');
    out(formatReport(report));
    out(`I/O: ${onSource.ops} commands on the source, ${ops - atSwitch} more on the destination after the switch-over`);
    out(`${checked} blocks read back from the destination: ${bad === 0 ? 'all hold their last write' : `${bad} MISMATCHES`}`);
    if (o.json) process.stdout.write(JSON.stringify({ report, ops, reads, mismatches: bad }, null, 2) + '\n');
    d.close();
    src.close();
    dst.close();
    if (bad !== 0) throw new Error(`${bad} reads did not return the last write`);
  } finally {
    a.kill();
    b.kill();
    rmSync(dir, { recursive: true, force: true });
  }
}
