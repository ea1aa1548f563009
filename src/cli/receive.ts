// `vfu receive --listen tcp://HOST:PORT --to PATH`: the destination host's
// end of a cross-host migration.  Applies the stream to the destination
// server and reports; exits after one migration unless --keep-listening.
import { VfioUserClient } from '../client/client.js';
import { parseTcpUrl, receiveMigrations } from '../client/tcp-stream.js';

export interface ReceiveCliOptions {
  listen: string;
  to: string;
  json?: boolean;
  keepListening?: boolean;
}

export async function receiveCommand(o: ReceiveCliOptions): Promise<void> {
  const { host, port } = parseTcpUrl(o.listen);
  const clients: VfioUserClient[] = [];
  const server = await receiveMigrations(host, port, {
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
  const where = bound && typeof bound === 'object' ? `tcp://${bound.family === 'IPv6' ? `[${bound.address}]` : bound.address}:${bound.port}` : o.listen;
  process.stderr.write(`vfu receive: listening on ${where}, destination ${o.to}\n`);
  process.on('SIGTERM', () => {
    server.close();
    for (const c of clients) c.close();
  });
}
