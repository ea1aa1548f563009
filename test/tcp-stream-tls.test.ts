// The migration stream over TLS 1.3 (issue: cross-host migration was open
// to anyone on the network).  With the credentials in test/fixtures/tls
// (see its README): the right peer migrates, and nobody can read the guest's
// memory on the wire; no certificate, a certificate from another CA, a name
// not allowed, a wrong pre-shared key and plain TCP to a TLS listener are
// each refused with a message that says so, the destination untouched.
// And `vfu receive` will not listen in the clear beyond loopback.
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { type Socket, connect as tcpConnect, createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { type ConnectionOptions, type TlsOptions, connect as tlsConnect, createServer as createTlsServer } from 'node:tls';
import { afterEach, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { VfioUserClient } from '../src/client/client.js';
import { MigrationError, migrate } from '../src/client/migrate.js';
import { readIntoBuffers, tlsOptionsFromFiles } from '../src/client/stream-tls.js';
import { TcpTarget, receiveMigrations } from '../src/client/tcp-stream.js';
import { createSample } from '../src/devices/sample.js';
import { MigState } from '../src/protocol/constants.js';
import { serve, tempDir, until } from './helpers/server.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const cli = join(root, 'dist', 'src', 'cli', 'main.js');
const fx = (name: string): string => join(root, 'test', 'fixtures', 'tls', name);
const pem = (name: string): Buffer => readFileSync(fx(name));
const MiB = 1024 * 1024;
const SECRET = Buffer.from('GUEST-SECRET-do-not-show-on-the-wire');

/** What each test opened: closed after it, pass or fail. */
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** mutual X.509 as the receiver sets it up */
const receiverX509: TlsOptions = { cert: pem('receiver.pem'), key: pem('receiver.key'), ca: pem('ca.pem') };
const senderX509 = (who: string): ConnectionOptions => ({ cert: pem(`${who}.pem`), key: pem(`${who}.key`), ca: pem('ca.pem') });

interface Outcome {
  ok: boolean;
  error?: Error;
}

/**
 * Two sample servers, a source with 4 MiB of guest RAM, a receiver with
 * `tls` (and `allow`) in this process, and a TCP proxy in front of it that
 * keeps every byte the sender sent.
 */
async function setup(tls: TlsOptions | undefined, allow?: string[]) {
  const a = createSample();
  const b = createSample();
  const sa = await serve(a.device);
  const sb = await serve(b.device);
  const src = await sa.connect();
  const range = src.memory.add(0x100000, 4 * MiB);
  await src.dmaMap({ iova: 0x100000, size: 4 * MiB });
  for (let o = 0; o < 4 * MiB; o += 64 * 1024) SECRET.copy(range.bytes, o);
  let dst: VfioUserClient | null = null;
  let connected = 0;
  let outcome: Outcome | null = null;
  const refused: string[] = [];
  const receiver = await receiveMigrations('127.0.0.1', 0, {
    ...(tls ? { tls } : {}),
    ...(allow ? { allowPeers: allow } : {}),
    connectDestination: async () => (connected++, (dst = await sb.connect())),
    onDone: (r) => (outcome = r),
    onRefused: (r) => refused.push(r.reason),
  });
  const wire: Buffer[] = [];
  const socks: Socket[] = [];
  const proxy = createServer((c) => {
    const up = tcpConnect({ host: '127.0.0.1', port: (receiver.address() as { port: number }).port });
    socks.push(c, up);
    c.on('data', (d: Buffer) => (wire.push(Buffer.from(d)), up.write(d)));
    up.on('data', (d: Buffer) => c.write(d));
    c.on('close', () => up.destroy());
    up.on('close', () => c.destroy());
    for (const s of [c, up]) s.on('error', () => {});
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
  const port = (proxy.address() as { port: number }).port;
  let closed = false;
  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    for (const s of socks) s.destroy();
    proxy.close();
    receiver.close();
    dst?.close();
    await sa.close();
    await sb.close();
  };
  cleanups.push(close);
  return {
    b,
    src,
    range,
    port,
    refused,
    wire: () => Buffer.concat(wire),
    dst: () => dst,
    connected: () => connected,
    outcome: () => outcome as Outcome | null,
    /** Nothing reached the destination: never connected, still RUNNING, nothing mapped. */
    assertUntouched() {
      assert.equal(connected, 0, 'the receiver never connected to the destination');
      assert.equal(b.device.migration!.state, MigState.RUNNING);
      assert.equal(b.device.dma.count, 0);
      assert.equal(outcome, null, 'no migration was started');
    },
    close,
  };
}

describe('migration over TLS 1.3', () => {
  test('mutual X.509, allowed name: the right peer migrates, and the wire shows none of the guest memory', async () => {
    const s = await setup(receiverX509, ['source']);
    const target = new TcpTarget(`tcps://127.0.0.1:${s.port}`, { tls: senderX509('source') });
    const report = await migrate(s.src, target, { maxRounds: 1 });
    target.close();
    assert.equal(report.guestBytes, 4 * MiB);
    await until(() => s.outcome() !== null);
    assert.equal(s.outcome()!.ok, true, s.outcome()!.error?.message);
    assert.ok(s.dst()!.memory.view(0x100000, 4 * MiB).equals(s.range.bytes));
    assert.ok(s.wire().length > 4 * MiB, 'everything went through the proxy');
    assert.equal(s.wire().indexOf(SECRET), -1, 'the guest memory is not readable on the wire');
    assert.equal(s.refused.length, 0);
    await s.close();
  });

  test('TLS-PSK: the same key migrates', async () => {
    const s = await setup(tlsOptionsFromFiles({ tlsPskFile: fx('source.psk') }, 'server'), ['source']);
    const target = new TcpTarget(`tcps://127.0.0.1:${s.port}`, { tls: tlsOptionsFromFiles({ tlsPskFile: fx('source.psk') }, 'client')! });
    await migrate(s.src, target, { maxRounds: 1 });
    target.close();
    await until(() => s.outcome() !== null);
    assert.equal(s.outcome()!.ok, true);
    assert.ok(s.dst()!.memory.view(0x100000, 4 * MiB).equals(s.range.bytes));
    assert.equal(s.wire().indexOf(SECRET), -1);
    await s.close();
  });

  const refusals: { what: string; receiver: () => TlsOptions | undefined; url: 'tcp' | 'tcps'; sender: () => ConnectionOptions | undefined; sees: RegExp; logs: RegExp }[] = [
    {
      what: 'no certificate',
      receiver: () => receiverX509,
      url: 'tcps',
      sender: () => ({ ca: pem('ca.pem') }),
      sees: /the receiver aborted: refused: no client certificate/,
      logs: /^no client certificate/,
    },
    {
      what: 'a certificate from another CA (with the allowed name)',
      receiver: () => receiverX509,
      url: 'tcps',
      sender: () => ({ cert: pem('intruder.pem'), key: pem('intruder.key'), ca: pem('ca.pem') }),
      sees: /the receiver aborted: refused: the certificate of peer "source", "source.example" is not signed by a CA this receiver trusts/,
      logs: /not signed by a CA this receiver trusts \(UNABLE_TO_VERIFY_LEAF_SIGNATURE\)/,
    },
    {
      what: 'a name not allowed (the CA vouches for it)',
      receiver: () => receiverX509,
      url: 'tcps',
      sender: () => senderX509('stranger'),
      sees: /the receiver aborted: refused: peer "stranger", "stranger.example" is not among the allowed names/,
      logs: /not among the allowed names/,
    },
    {
      what: 'a wrong pre-shared key',
      receiver: () => tlsOptionsFromFiles({ tlsPskFile: fx('source.psk') }, 'server'),
      url: 'tcps',
      sender: () => tlsOptionsFromFiles({ tlsPskFile: fx('wrong.psk') }, 'client'),
      sees: /pre-shared keys differ/,
      logs: /pre-shared keys differ/,
    },
    {
      what: 'plain TCP to a TLS listener',
      receiver: () => receiverX509,
      url: 'tcp',
      sender: () => undefined,
      sees: /closed the connection without answering \(if it listens with TLS, use tcps:\/\//,
      logs: /does not speak TLS/,
    },
  ];
  for (const r of refusals) {
    test(`refused: ${r.what}; the destination untouched, the source running`, async () => {
      const s = await setup(r.receiver(), ['source']);
      const tls = r.sender();
      const target = new TcpTarget(`${r.url}://127.0.0.1:${s.port}`, tls ? { tls } : {});
      await assert.rejects(migrate(s.src, target, { maxRounds: 1 }), (e: unknown) => {
        assert.ok(e instanceof MigrationError, String(e));
        assert.equal(e.step, 'preparing the destination');
        assert.match(e.message, r.sees);
        return true;
      });
      target.close();
      await until(() => s.refused.length > 0);
      assert.match(s.refused[0]!, r.logs);
      s.assertUntouched();
      assert.equal(await s.src.migrationState(), MigState.RUNNING);
      await s.close();
    });
  }

  test('TLS to a plain listener: the sender says the receiver does not speak TLS', async () => {
    const s = await setup(undefined);
    const target = new TcpTarget(`tcps://127.0.0.1:${s.port}`, { tls: senderX509('source') });
    await assert.rejects(migrate(s.src, target, { maxRounds: 1 }), /TLS handshake with the receiver failed: .*does not speak TLS/);
    target.close();
    await until(() => s.outcome() !== null);
    assert.equal(s.connected(), 0);
    assert.equal(s.b.device.dma.count, 0);
    await s.close();
  });
});

describe('the receiver decrypting into its own buffers', () => {
  test('readIntoBuffers: a TLS server socket decrypts straight into the buffers given, in order; false pauses it, resume() goes on', async () => {
    const want = randomBytes(2 * MiB + 12345);
    const into = Buffer.alloc(want.length);
    const spare = Buffer.alloc(4096);
    let at = 0;
    let reads = 0;
    let pauses = 0;
    let used: boolean | null = null;
    const server = createTlsServer(tlsOptionsFromFiles({ tlsPskFile: fx('source.psk') }, 'server')!, (sock) => {
      used = readIntoBuffers(
        sock,
        (b) => (at += b.copy(into, at)),
        () => (at < into.length ? into.subarray(at, Math.min(into.length, at + 100_000)) : spare),
        (n, b) => {
          assert.ok(b.buffer === into.buffer && b.byteOffset === at, 'the bytes are where the last buffer given was');
          at += n;
          if (++reads % 7 !== 0) return true;
          pauses++;
          setImmediate(() => sock.resume());
          return false;
        },
      );
      sock.resume();
    });
    cleanups.push(() => void server.close());
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const c = tlsConnect({ host: '127.0.0.1', port: (server.address() as { port: number }).port, ...tlsOptionsFromFiles({ tlsPskFile: fx('source.psk') }, 'client')! });
    cleanups.push(() => void c.destroy());
    await new Promise<void>((r) => c.once('secureConnect', () => r()));
    for (let o = 0; o < want.length; o += 300_000) c.write(want.subarray(o, o + 300_000));
    await until(() => at === want.length);
    assert.equal(used, true, 'this Node has what readIntoBuffers needs');
    assert.ok(into.equals(want));
    assert.ok(pauses > 0);
  });
});

describe('vfu receive and vfu migrate with TLS', () => {
  function run(args: string[]): { done: Promise<{ code: number | null; out: string; err: string }>; err: () => string; kill: () => void } {
    const p = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    cleanups.push(() => void p.kill('SIGKILL'));
    return { done: new Promise((res) => p.on('exit', (code) => res({ code, out, err }))), err: () => err, kill: () => p.kill('SIGTERM') };
  }

  test('plain TCP beyond loopback is refused unless --insecure, and says why', async () => {
    const t = tempDir('vfu-tls-');
    cleanups.push(() => t.cleanup());
    const r = await run(['receive', '--listen', 'tcp://0.0.0.0:0', '--to', join(t.dir, 'none.sock')]).done;
    assert.equal(r.code, 1);
    assert.match(r.err, /refusing to listen on 0\.0\.0\.0 without TLS: anyone who can reach the port could write into the guest's memory/);
    const ok = run(['receive', '--listen', 'tcp://0.0.0.0:0', '--to', join(t.dir, 'none.sock'), '--insecure']);
    await until(() => /listening on tcp:\/\/0\.0\.0\.0:\d+/.test(ok.err()));
    ok.kill();
    await ok.done;
  });

  test('vfu migrate --to tcps:// to vfu receive --tls-allow: migrates; a stranger is refused and the receiver keeps waiting', async () => {
    const a = createSample();
    const b = createSample();
    const sa = await serve(a.device);
    const sb = await serve(b.device);
    cleanups.push(async () => (await sa.close(), await sb.close()));
    const tlsArgs = (who: string): string[] => ['--tls-cert', fx(`${who}.pem`), '--tls-key', fx(`${who}.key`), '--tls-ca', fx('ca.pem')];
    const recv = run(['receive', '--listen', 'tcps://127.0.0.1:0', '--to', sb.path, ...tlsArgs('receiver'), '--tls-allow', 'source.example']);
    await until(() => /listening on tcps:\/\/127\.0\.0\.1:\d+ \(TLS 1\.3\)/.test(recv.err()));
    const url = /listening on (tcps:\S+)/.exec(recv.err())![1]!;
    const stranger = await run(['migrate', '--from', sa.path, '--to', url, '--guest-mib', '1', '-q', ...tlsArgs('stranger')]).done;
    assert.equal(stranger.code, 1);
    assert.match(stranger.err, /refused: peer "stranger", "stranger.example" is not among the allowed names/);
    assert.match(recv.err(), /refused 127\.0\.0\.1:\d+: peer "stranger", "stranger.example" is not among the allowed names/);
    assert.equal(b.device.dma.count, 0);
    const m = await run(['migrate', '--from', sa.path, '--to', url, '--guest-mib', '2', '-q', ...tlsArgs('source')]).done;
    assert.equal(m.code, 0, m.err);
    assert.match(m.out, /downtime/);
    const r = await recv.done;
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /received: device running/);
    assert.equal(b.device.migration!.state, MigState.RUNNING);
  });
});
