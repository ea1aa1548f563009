// vfu: the vfio-user command line (loaded by main.ts, its entry).
import { readFileSync } from 'node:fs';
import { Command } from 'commander';
import { transportStatus } from '../native/index.js';
import { demoCommand } from './demo.js';
import { lspciCommand } from './lspci.js';
import { migrateCommand } from './migrate.js';
import { readCommand, writeCommand } from './regio.js';
import { receiveCommand } from './receive.js';
import { serveCommand } from './serve.js';
import { traceCommand } from './trace.js';

const program = new Command();
/** `vfu --version`: the package's version and which transport is active, and why. */
function versionText(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
  const t = transportStatus();
  const transport =
    t.transport === 'native'
      ? `native addon (${t.origin}: ${t.file})`
      : `node:net, no descriptor passing (native addon not loaded: ${t.reason})`;
  return `vfio-user ${pkg.version} (node ${process.version}, ${process.platform}-${process.arch})\ntransport: ${transport}`;
}

program.name('vfu').description('vfio-user for TypeScript: serve devices, inspect, migrate, trace').version(versionText(), '-V, --version');

program
  .command('serve')
  .description('run a device as a vfio-user server: a built-in one, or your module')
  .argument('<device>', 'gpio | sample | bigstate | nvme, or a module path (./my-device.js) whose default export returns a VfioUserDevice or a promise of one')
  .option('--socket-path <path>', 'UNIX socket to listen on (created mode 0600)')
  .option('--fd <n>', 'an inherited, already connected socket')
  .option('-v, --verbose', 'log connections, resets and migration steps to stderr')
  .option('--v1', 'also expose the legacy v1 migration region')
  .option('--state-mib <n>', 'bigstate: device state size in MiB')
  .option('--precopy-mib <n>', 'bigstate: MiB streamed in pre-copy')
  .option('--no-verify', 'bigstate: do not check a received state by its CRC-32 (length only)')
  .option('--max-data-xfer-size <bytes>', 'largest data transfer accepted')
  .option('--image <file>', 'nvme: raw image backing the namespace (shared with a migration destination, never copied)')
  .option('--size <size>', 'nvme: create the image at this size (e.g. 1G) when absent; must match when it exists')
  .option('--queues <n>', 'nvme: I/O queue pairs (default 4)')
  .option('--lba <bytes>', 'nvme: logical block size, 512 or 4096 (default 512)')
  .option('--shadow-doorbells', 'nvme: offer Doorbell Buffer Config and doorbell ioeventfds')
  .action(serveCommand);

program
  .command('demo')
  .description('live-migrate a running sample device between two servers, verified by checksum')
  .option('--guest-mib <n>', 'guest RAM size in MiB', '64')
  .option('--rounds <n>', 'maximum pre-copy rounds', '6')
  .option('--json', 'print the migration report as JSON')
  .option('-q, --quiet', 'no progress output')
  .option('--device <name>', 'sample (default), or nvme: I/O through an NVMe controller carrying on across the switch-over')
  .action(demoCommand);

program
  .command('lspci')
  .description('print a device the way lspci -vv would')
  .argument('<socket>', 'server socket path')
  .option('--json', 'machine-readable output')
  .action(lspciCommand);

const regionHelp = 'bar0 … bar5, rom, config, vga, migration, or a region number';
program
  .command('read')
  .description("print a device's bytes in hex (like setpci/devmem): COUNT bytes (default 4) at OFFSET")
  .argument('<socket>', 'server socket path')
  .argument('<region>', regionHelp)
  .argument('<offset>', 'byte offset in the region (decimal or 0x hex)')
  .argument('[count]', 'bytes to read (default 4)')
  .action(readCommand);

program
  .command('write')
  .description("write bytes to a device's region")
  .argument('<socket>', 'server socket path')
  .argument('<region>', regionHelp)
  .argument('<offset>', 'byte offset in the region (decimal or 0x hex)')
  .argument('<hexbytes>', 'bytes in memory order, e.g. 01000000 (the 32-bit value 1) or "de ad be ef"')
  .action(writeCommand);

program
  .command('migrate')
  .description('live-migrate a device to another server, here or on another host')
  .requiredOption('--from <path>', 'source server socket')
  .requiredOption('--to <dest>', 'destination server socket, or tcp://HOST:PORT (tcps:// for TLS) of `vfu receive`')
  .option('--rounds <n>', 'maximum pre-copy rounds')
  .option('--max-downtime <ms>', 'switch over once the predicted downtime is at most this (default 300)')
  .option('--timeout <s>', 'give up pre-copy after this many seconds if it does not converge')
  .option('--converge-kib <n>', 'also switch over when this much (KiB) is estimated left')
  .option('--chunk-kib <n>', 'MIG_DATA_READ size in KiB')
  .option('--guest-mib <n>', 'also map and migrate this much simulated guest RAM')
  .option('--no-precopy', 'stop-copy only')
  .option(
    '--discard-precopy-data',
    "read the device's pre-copy data but do not send it: only for destinations that cannot take pre-copy data before the " +
      "stop-copy image (libvfio-user's samples/server); a device whose stop-copy image does not repeat its pre-copy data loses that part",
  )
  .option('--force', 'migrate even when the two devices differ (ids, class, regions, interrupts, migration capabilities)')
  .option('--plot <file.svg>', 'write an SVG picture of the migration: bytes and dirty pages per round, estimate, downtime')
  .option('--tls-cert <file>', 'tcps://: our certificate (PEM)')
  .option('--tls-key <file>', "tcps://: our certificate's private key (PEM)")
  .option('--tls-ca <file>', "tcps://: the CA that signed the receiver's certificate (PEM)")
  .option('--tls-psk-file <file>', 'tcps://: pre-shared key instead of certificates (lines IDENTITY:HEXKEY; the first is used)')
  .option('--json', 'print the report as JSON')
  .option('-q, --quiet', 'no progress bar')
  .addHelpText(
    'after',
    '\nBefore anything moves, a local destination is compared with the source (vendor/device/subsystem ids, class,\n' +
      'region sizes and flags, interrupt counts, migration capabilities); a mismatch is refused unless --force.',
  )
  .action(migrateCommand);

program
  .command('receive')
  .description('receive a migration over TCP and apply it to a destination server')
  .requiredOption('--listen <url>', 'tcps://HOST:PORT to listen on with TLS; tcp://HOST:PORT for loopback (or --insecure)')
  .requiredOption('--to <path>', 'destination server socket')
  .option('--tls-cert <file>', 'our certificate (PEM)')
  .option('--tls-key <file>', "our certificate's private key (PEM)")
  .option('--tls-ca <file>', "the CA that must have signed the sender's certificate (PEM)")
  .option('--tls-allow <name>', "accept only this peer (certificate CN or subjectAltName, or PSK identity); repeatable", (v: string, prev: string[] = []) => [...prev, v])
  .option('--tls-psk-file <file>', 'pre-shared keys instead of certificates (lines IDENTITY:HEXKEY)')
  .option('--insecure', 'allow plain TCP on a non-loopback address')
  .option('--json', 'machine-readable result')
  .option('--keep-listening', 'serve further migrations')
  .action(receiveCommand);

program
  .command('trace')
  .description('log every message between a vfio-user client and server (a transparent proxy), or decode a saved trace')
  .option('--listen <path>', 'socket for the client to connect to (created mode 0600)')
  .option('--connect <path>', "the real server's socket")
  .option('--json [file]', 'live: also write JSON lines to FILE; --read: print JSON lines (to FILE if given)')
  .option('--quiet', 'live: print nothing (JSON only)')
  .option('--read <file>', 'decode a saved trace (JSON lines) instead of proxying')
  .option('--label <name>', 'live: label field of every line')
  .option('--max-payload <bytes>', 'live: payload bytes kept per message in the JSON (0: all; default 4 MiB)')
  .option('--max-data <bytes>', 'data bytes shown in hex per line (default 16)')
  .action(traceCommand);

program.parseAsync(process.argv).catch((e: unknown) => {
  process.stderr.write(`vfu: ${(e as Error).message}\n`);
  process.exit(1);
});
