#!/usr/bin/env node
// vfu: the vfio-user command line.
import { Command } from 'commander';
import { demoCommand } from './demo.js';
import { serveCommand } from './serve.js';

const program = new Command();
program.name('vfu').description('vfio-user for TypeScript: serve devices, inspect, migrate, trace').version('0.1.0');

program
  .command('serve')
  .description('run a sample device as a vfio-user server')
  .argument('<device>', 'gpio | sample | bigstate')
  .option('--socket-path <path>', 'UNIX socket to listen on (created mode 0600)')
  .option('--fd <n>', 'an inherited, already connected socket')
  .option('-v, --verbose', 'log connections, resets and migration steps to stderr')
  .option('--v1', 'also expose the legacy v1 migration region')
  .option('--state-mib <n>', 'bigstate: device state size in MiB')
  .option('--precopy-mib <n>', 'bigstate: MiB streamed in pre-copy')
  .option('--max-data-xfer-size <bytes>', 'largest data transfer accepted')
  .action(serveCommand);

program
  .command('demo')
  .description('live-migrate a running sample device between two servers, verified by checksum')
  .option('--guest-mib <n>', 'guest RAM size in MiB', '64')
  .option('--rounds <n>', 'maximum pre-copy rounds', '6')
  .option('--json', 'print the migration report as JSON')
  .option('-q, --quiet', 'no progress output')
  .action(demoCommand);

program.parseAsync(process.argv).catch((e: unknown) => {
  process.stderr.write(`vfu: ${(e as Error).message}\n`);
  process.exit(1);
});
