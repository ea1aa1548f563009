// `vfu serve DEVICE --socket-path PATH | --fd N [-v]`: runs a sample device
// following the spec's backend conventions (never daemonises, honours
// SIGTERM, --socket-path or --fd).
import { deviceFactories } from '../devices/index.js';
import { migStateNames } from '../protocol/constants.js';
import { VfioUserServer } from '../server/server.js';

export interface ServeCliOptions {
  socketPath?: string;
  fd?: string;
  verbose?: boolean;
  v1?: boolean;
  stateMib?: string;
  precopyMib?: string;
  maxDataXferSize?: string;
  verify?: boolean;
}

export async function serveCommand(name: string, o: ServeCliOptions): Promise<void> {
  const factory = deviceFactories[name];
  if (!factory) throw new Error(`unknown device '${name}' (known: ${Object.keys(deviceFactories).join(', ')})`);
  if ((o.socketPath === undefined) === (o.fd === undefined)) throw new Error('give exactly one of --socket-path and --fd');
  const device = factory({
    ...(o.v1 ? { v1: true } : {}),
    ...(o.stateMib !== undefined ? { stateMib: Number(o.stateMib) } : {}),
    ...(o.precopyMib !== undefined ? { precopyMib: Number(o.precopyMib) } : {}),
    ...(o.verify === false ? { verify: false } : {}),
  });
  const log = (msg: string): void => {
    if (o.verbose) process.stderr.write(`vfu[${process.pid}] ${name}: ${msg}\n`);
  };
  device.on('log', (level: string, msg: string) => {
    if (o.verbose || level === 'error' || level === 'info') process.stderr.write(`vfu[${process.pid}] ${name}: ${level}: ${msg}\n`);
  });
  device.on('connected', () => log('client connected'));
  device.on('disconnected', () => log('client disconnected'));
  device.on('reset', (reason: string) => log(`reset (${reason})`));
  device.on('migration', (from: number, to: number) => log(`migration ${migStateNames[from]} -> ${migStateNames[to]}`));
  const serveOpts = o.maxDataXferSize !== undefined ? { maxDataXferSize: Number(o.maxDataXferSize) } : {};
  const server =
    o.socketPath !== undefined
      ? await VfioUserServer.listen(device, o.socketPath, serveOpts)
      : VfioUserServer.fromFd(device, Number(o.fd), serveOpts);
  log(o.socketPath !== undefined ? `listening on ${o.socketPath}` : `serving fd ${o.fd}`);
  const stop = (sig: string): void => {
    log(`${sig}: shutting down`);
    void server.close().then(() => process.exit(0));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  server.on('close', () => {
    if (o.fd !== undefined) process.exit(0);
  });
}
