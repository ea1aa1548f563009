// `vfu receive --listen tcp[s]://HOST:PORT --to PATH`: the destination
// host's end of a cross-host migration.  Applies the stream to the
// destination server and reports; exits after one migration unless
// --keep-listening.  Without TLS it listens on loopback addresses only,
// unless --insecure: anyone reaching the port could otherwise write into the
// guest's memory and hand the device a forged state.
import type { TlsOptions } from 'node:tls';
import { VfioUserClient } from '../client/client.js';
import { isLoopbackHost, type TlsFiles, tlsOptionsFromFiles } from '../client/stream-tls.js';
import { parseTcpUrl, receiveMigrations } from '../client/tcp-stream.js';
import { Errno } from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';

export interface ReceiveCliOptions extends TlsFiles {
  listen: string;
  to: string;
  json?: boolean;
  keepListening?: boolean;
  /** Peer names accepted (--tls-allow, repeatable). */
  tlsAllow?: string[];
  /** Plain TCP on a non-loopback address. */
  insecure?: boolean;
}

/** Checks the listening URL against the TLS options; returns host, port and TLS options. */
function listenPlan(o: ReceiveCliOptions): { host: string; port: number; tls: TlsOptions | undefined } {
  const { host, port, tls } = parseTcpUrl(o.listen);
  const opts = tlsOptionsFromFiles(o, 'server');
  if (tls && !opts) throw new VfuError(Errno.EINVAL, `${o.listen} needs --tls-cert, --tls-key and --tls-ca, or --tls-psk-file`);
  if (!tls && opts) throw new VfuError(Errno.EINVAL, `TLS options given: listen on tcps://${o.listen.slice('tcp://'.length)}`);
  if (!tls && o.tlsAllow?.length) throw new VfuError(Errno.EINVAL, '--tls-allow needs TLS (tcps://)');
  if (!tls && !isLoopbackHost(host) && !o.insecure) {
    throw new VfuError(
      Errno.EACCES,
      `refusing to listen on ${host} without TLS: anyone who can reach the port could write into the guest's memory and hand the device a forged state, ` +
        'and anyone on the path could read the guest memory.  Use tcps:// with --tls-cert/--tls-key/--tls-ca (or --tls-psk-file), or --insecure on a network you trust',
    );
  }
  return { host, port, tls: opts };
}

export async function receiveCommand(o: ReceiveCliOptions): Promise<void> {
  const { host, port, tls } = listenPlan(o);
  const clients: VfioUserClient[] = [];
  const server = await receiveMigrations(host, port, {
    ...(tls ? { tls, ...(o.tlsAllow?.length ? { allowPeers: o.tlsAllow } : {}) } : {}),
    onRefused: (r) => process.stderr.write(`vfu receive: refused ${r.peer}: ${r.reason}\n`),
    connectDestination: async () => {
      const c = await VfioUserClient.connect(o.to);
      clients.push(c);
      return c;
    },
    onDone: (r) => {
      const summary = { ok: r.ok, error: r.error?.message, deviceBytes: r.deviceBytes, guestBytes: r.guestBytes };
      process.stdout.write(
        o.json
          ? JSON.stringify(summary) + '\n'
          : r.ok
            ? `received: device running on ${o.to} (${(r.deviceBytes / 1048576).toFixed(2)} MiB device state, ${(r.guestBytes / 1048576).toFixed(2)} MiB guest memory)\n`
            : `migration failed: ${r.error?.message}; destination reset\n`,
      );
      if (!o.keepListening) {
        server.close();
        for (const c of clients) c.close();
        process.exitCode = r.ok ? 0 : 1;
      }
    },
  });
  const bound = server.address();
  const where = bound && typeof bound === 'object' ? `${tls ? 'tcps' : 'tcp'}://${bound.family === 'IPv6' ? `[${bound.address}]` : bound.address}:${bound.port}` : o.listen;
  process.stderr.write(`vfu receive: listening on ${where}${tls ? ' (TLS 1.3)' : ''}, destination ${o.to}\n`);
  process.on('SIGTERM', () => {
    server.close();
    for (const c of clients) c.close();
  });
}
