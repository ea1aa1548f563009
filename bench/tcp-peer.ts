// The bench's same-run baselines for the migration stream, between two Node
// processes on loopback, nothing parsed:
//
//   node dist/bench/tcp-peer.js sink                  listens on 127.0.0.1:0, prints port=N, then gbps=... once the sender is done
//   node dist/bench/tcp-peer.js source PORT MIB       streams MIB MiB to PORT in 1 MiB writes (the ceiling)
//   node dist/bench/tcp-peer.js echo KIND FIXTURES    listens; for each burst (u64 length, bytes) answers one byte
//   node dist/bench/tcp-peer.js burst KIND FIXTURES PORT BYTES REPS
//                                                     connects, sends REPS bursts of BYTES, each timed from its
//                                                     first write to the answer; prints ms=the median
//
// KIND is tcp, x509 or psk (TLS 1.3 with the test credentials in FIXTURES):
// the downtime's baseline is the final data sent over the same kind of
// stream as the migration, the connection (and handshake) made beforehand.
import { readFileSync } from 'node:fs';
import { type Socket, connect, createServer } from 'node:net';
import { join } from 'node:path';
import { type ConnectionOptions, type TlsOptions, connect as tlsConnect, createServer as createTlsServer } from 'node:tls';

const [mode, a, b, c, d, e] = process.argv.slice(2);

function serverTls(kind: string, fixtures: string): TlsOptions {
  const f = (n: string): Buffer => readFileSync(join(fixtures, n));
  if (kind === 'x509') return { cert: f('receiver.pem'), key: f('receiver.key'), ca: f('ca.pem'), requestCert: true, minVersion: 'TLSv1.3' };
  const [, psk] = pskOf(fixtures);
  return { minVersion: 'TLSv1.3', ciphers: 'TLS_AES_128_GCM_SHA256', pskCallback: () => psk };
}

function clientTls(kind: string, fixtures: string): ConnectionOptions {
  const f = (n: string): Buffer => readFileSync(join(fixtures, n));
  if (kind === 'x509') return { cert: f('source.pem'), key: f('source.key'), ca: f('ca.pem'), minVersion: 'TLSv1.3' };
  const [identity, psk] = pskOf(fixtures);
  return { minVersion: 'TLSv1.3', ciphers: 'TLS_AES_128_GCM_SHA256', pskCallback: () => ({ identity, psk }), checkServerIdentity: () => undefined };
}

/** The first IDENTITY:HEXKEY of the fixtures' PSK file. */
function pskOf(fixtures: string): [string, Buffer] {
  const [identity, hex] = readFileSync(join(fixtures, 'source.psk'), 'utf8').trim().split('\n')[0]!.split(':') as [string, string];
  return [identity, Buffer.from(hex, 'hex')];
}

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
} else if (mode === 'echo') {
  const onConn = (s: Socket): void => {
    let want = -1;
    let head = Buffer.alloc(0);
    s.on('data', (d: Buffer) => {
      while (d.length > 0) {
        if (want < 0) {
          head = Buffer.concat([head, d]);
          if (head.length < 8) return;
          want = Number(head.readBigUInt64LE(0));
          d = head.subarray(8);
          head = Buffer.alloc(0);
        }
        const n = Math.min(want, d.length);
        want -= n;
        d = d.subarray(n);
        if (want === 0) {
          s.write(Buffer.of(1));
          want = -1;
        }
      }
    });
    s.on('end', () => srv.close());
  };
  const srv = a === 'tcp' ? createServer(onConn) : createTlsServer(serverTls(a!, b!), onConn);
  srv.listen(0, '127.0.0.1', () => process.stdout.write(`port=${(srv.address() as { port: number }).port}\n`));
} else if (mode === 'burst') {
  const [kind, fixtures, port, bytes, reps] = [a!, b!, Number(c), Number(d), Number(e)];
  const ready = (s: Socket): void => {
    s.setNoDelay(true);
    void (async () => {
      const data = Buffer.alloc(bytes, 0x5a);
      const head = Buffer.alloc(8);
      head.writeBigUInt64LE(BigInt(bytes));
      const times: number[] = [];
      for (let i = 0; i < reps; i++) {
        const answered = new Promise((r) => s.once('data', r));
        const t0 = performance.now();
        s.write(head);
        s.write(data);
        await answered;
        times.push(performance.now() - t0);
      }
      times.sort((x, y) => x - y);
      process.stdout.write(`ms=${times[times.length >> 1]!.toFixed(4)}\n`);
      s.end();
    })();
  };
  const s: Socket = kind === 'tcp' ? connect(port, '127.0.0.1', () => ready(s)) : tlsConnect({ host: '127.0.0.1', port, ...clientTls(kind, fixtures) }, () => ready(s));
} else {
  process.stderr.write('usage: tcp-peer.js sink | source PORT MIB | echo KIND FIXTURES | burst KIND FIXTURES PORT BYTES REPS\n');
  process.exit(2);
}
