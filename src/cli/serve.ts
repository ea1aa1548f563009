// `vfu serve DEVICE --socket-path PATH | --fd N [-v]`: runs a built-in
// device, or a module of the user's (`vfu serve ./my-device.js`), following
// the spec's backend conventions (never daemonises, honours SIGTERM,
// --socket-path or --fd).
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { deviceFactories } from '../devices/index.js';
import { migStateNames } from '../protocol/constants.js';
import type { VfioUserDevice } from '../server/device.js';
import { VfioUserServer } from '../server/server.js';
import { intOption } from './options.js';

export interface ServeCliOptions {
  socketPath?: string;
  fd?: string;
  verbose?: boolean;
  v1?: boolean;
  stateMib?: string;
  precopyMib?: string;
  maxDataXferSize?: string;
  verify?: boolean;
  image?: string;
  size?: string;
  queues?: string;
  lba?: string;
  shadowDoorbells?: boolean;
}

/** A device argument naming a module rather than a built-in device. */
export function isModulePath(name: string): boolean {
  return name.includes('/') || /\.[cm]?js$/.test(name);
}

/**
 * Loads a user's device module: its default export is a function returning
 * a VfioUserDevice or a promise of one.
 */
export async function loadDeviceModule(path: string): Promise<VfioUserDevice> {
  const url = pathToFileURL(resolve(path)).href;
  let mod: { default?: unknown };
  try {
    mod = (await import(url)) as { default?: unknown };
  } catch (e) {
    throw new Error(`cannot load device module ${path}: ${(e as Error).message}`);
  }
  if (typeof mod.default !== 'function') {
    throw new Error(`${path} has no default export function (export default function createDevice(): VfioUserDevice)`);
  }
  const device: unknown = await (mod.default as () => unknown)();
  // Duck-typed: the module may import another copy of the package than vfu's.
  const d = device as Partial<VfioUserDevice> | null;
  if (d === null || typeof d !== 'object' || typeof d.addRegion !== 'function' || typeof d.realize !== 'function') {
    throw new Error(`${path}: its default export returned ${d === null ? 'null' : typeof d}, not a VfioUserDevice`);
  }
  return device as VfioUserDevice;
}

export async function serveCommand(name: string, o: ServeCliOptions): Promise<void> {
  const factory = deviceFactories[name];
  if (!factory && !isModulePath(name)) {
    throw new Error(`unknown device '${name}' (built-in: ${Object.keys(deviceFactories).join(', ')}; or a module path such as ./my-device.js)`);
  }
  if ((o.socketPath === undefined) === (o.fd === undefined)) throw new Error('give exactly one of --socket-path and --fd');
  const fd = o.fd !== undefined ? intOption('--fd', o.fd, 0) : undefined;
  const maxDataXferSize = o.maxDataXferSize !== undefined ? intOption('--max-data-xfer-size', o.maxDataXferSize, 4096) : undefined;
  const device = factory
    ? factory({
        ...(o.v1 ? { v1: true } : {}),
        ...(o.stateMib !== undefined ? { stateMib: intOption('--state-mib', o.stateMib, 1) } : {}),
        ...(o.precopyMib !== undefined ? { precopyMib: intOption('--precopy-mib', o.precopyMib, 0) } : {}),
        ...(o.verify === false ? { verify: false } : {}),
        ...(o.image !== undefined ? { image: o.image } : {}),
        ...(o.size !== undefined ? { size: o.size } : {}),
        ...(o.queues !== undefined ? { queues: intOption('--queues', o.queues, 1) } : {}),
        ...(o.lba !== undefined ? { lba: intOption('--lba', o.lba, 512) } : {}),
        ...(o.shadowDoorbells ? { shadowDoorbells: true } : {}),
      })
    : await loadDeviceModule(name);
  const label = factory !== undefined ? name : device.name;
  // Node builds process.stderr (and loads its stream code) on first use: do
  // it now, not at the first log line, which may come in a migration's
  // downtime (a device logging its RESUMING -> STOP, say: ~1 ms measured).
  process.stderr.write('');
  const log = (msg: string): void => {
    if (o.verbose) process.stderr.write(`vfu[${process.pid}] ${label}: ${msg}\n`);
  };
  device.on('log', (level, msg) => {
    if (o.verbose || level === 'error' || level === 'info') process.stderr.write(`vfu[${process.pid}] ${label}: ${level}: ${msg}\n`);
  });
  if (o.verbose) {
    // not even listened to otherwise: a state change is in a migration's
    // downtime window, where a listener formatting a line costs ~10 µs cold
    device.on('connected', () => log('client connected'));
    device.on('disconnected', () => log('client disconnected'));
    device.on('reset', (reason) => log(`reset (${reason})`));
    device.on('migration', (from, to) => log(`migration ${migStateNames[from]} -> ${migStateNames[to]}`));
  }
  const serveOpts = maxDataXferSize !== undefined ? { maxDataXferSize } : {};
  // Signals are handled from before the socket exists (it can be seen, and
  // a supervisor can signal us, before listen() returns).
  let server: VfioUserServer | null = null;
  let pending: string | null = null;
  const stop = (sig: string): void => {
    if (!server) {
      pending = sig;
      return;
    }
    log(`${sig}: shutting down`);
    void server.close().then(() => process.exit(0));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  server = o.socketPath !== undefined ? await VfioUserServer.listen(device, o.socketPath, serveOpts) : VfioUserServer.fromFd(device, fd!, serveOpts);
  log(o.socketPath !== undefined ? `listening on ${o.socketPath}` : `serving fd ${o.fd}`);
  if (pending !== null) stop(pending);
  server.on('close', () => {
    if (o.fd !== undefined) process.exit(0);
  });
}
