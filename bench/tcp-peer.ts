// The bench's same-run ceiling for the migration stream: a bare TCP stream
// between two Node processes on loopback, 1 MiB writes, nothing parsed.
//
//   node dist/bench/tcp-peer.js sink            listens on 127.0.0.1:0, prints port=N, then gbps=... once the sender is done
//   node dist/bench/tcp-peer.js source PORT MIB  streams MIB MiB to PORT
import { connect, createServer } from 'node:net';

const [mode, a, b] = process.argv.slice(2);
if (mode === 'sink') {
  const srv = createServer((s) => {
    let n = 0;
    let t0 = 0;
    s.on('data', (d: Buffer) => {
      if (n === 0) t0 = performance.now();
      n += d.length;
    });
    s.on('end', () => {
      process.stdout.write(`gbps=${(n / (performance.now() - t0) / 1e6).toFixed(3)} bytes=${n}\n`);
      srv.close();
    });
  });
  srv.listen(0, '127.0.0.1', () => process.stdout.write(`port=${(srv.address() as { port: number }).port}\n`));
} else if (mode === 'source') {
  const s = connect(Number(a), '127.0.0.1', async () => {
    const chunk = Buffer.alloc(1 << 20, 0x5a);
    for (let i = 0; i < Number(b); i++) if (!s.write(chunk)) await new Promise((r) => s.once('drain', r));
    s.end();
  });
} else {
  process.stderr.write('usage: tcp-peer.js sink | source PORT MIB\n');
  process.exit(2);
}
