// The command line end to end: vfu lspci, vfu migrate (local and across TCP
// to vfu receive), with bigstate devices whose destination checks the CRC of
// what it received; and a damaged TCP stream is refused and rolled back.
import { strict as assert } from 'node:assert';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { type AddressInfo, connect as tcpConnect } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { crc32 } from 'node:zlib';
import { VfioUserClient } from '../src/client/client.js';
import { ChunkType, encodeChunkHeader, receiveMigrations } from '../src/client/tcp-stream.js';
import { fillPseudoRandom } from '../src/devices/bigstate.js';
import { createSample } from '../src/devices/sample.js';
import { MigState } from '../src/protocol/constants.js';
import { serve, tempDir, until } from './helpers/server.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const cli = join(root, 'dist', 'src', 'cli', 'main.js');
const t = tempDir('vfu-cli-');
const children: ChildProcess[] = [];
after(() => {
  for (const c of children) c.kill('SIGKILL');
  t.cleanup();
});

function serveChild(device: string, sock: string, ...args: string[]): { proc: ChildProcess; log: () => string } {
  const proc = spawn(process.execPath, [cli, 'serve', device, '--socket-path', sock, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  proc.stderr!.on('data', (d) => (log += d));
  children.push(proc);
  return { proc, log: () => log };
}

function run(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((res) => {
    const p = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.on('exit', (code) => res({ code, out, err }));
  });
}

const STATE_MIB = 8;
function expectedCrc(): string {
  const b = Buffer.alloc(STATE_MIB * 1024 * 1024);
  fillPseudoRandom(b, 1);
  return crc32(b).toString(16).padStart(8, '0');
}

test('vfu lspci prints the sample device like lspci -vv', async () => {
  const sock = join(t.dir, 'lspci.sock');
  serveChild('sample', sock);
  await until(() => existsSync(sock));
  const r = spawnSync(process.execPath, [cli, 'lspci', sock], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  for (const want of ['dead:beef', 'Subsystem: cafe:babe', 'Region 0: I/O ports', 'Region 1: Memory', 'size=12288', 'sparse [0x0+0x1000] [0x2000+0x1000]', 'INTx: 1 vector', 'Migration: STOP_COPY PRE_COPY']) {
    assert.ok(r.stdout.includes(want), `missing "${want}" in\n${r.stdout}`);
  }
  const j = spawnSync(process.execPath, [cli, 'lspci', sock, '--json'], { encoding: 'utf8' });
  const parsed = JSON.parse(j.stdout) as { device: { numRegions: number }; migration: number };
  assert.equal(parsed.device.numRegions, 9);
  assert.equal(parsed.migration, 5);
});

test('vfu migrate between two local bigstate servers: the destination gets every byte', async () => {
  const a = join(t.dir, 'a.sock');
  const b = join(t.dir, 'b.sock');
  serveChild('bigstate', a, '--state-mib', String(STATE_MIB), '--precopy-mib', '2');
  const dst = serveChild('bigstate', b, '--state-mib', String(STATE_MIB));
  await until(() => existsSync(a) && existsSync(b));
  const r = await run(['migrate', '--from', a, '--to', b, '--json', '--guest-mib', '4']);
  assert.equal(r.code, 0, r.err);
  const report = JSON.parse(r.out) as { deviceBytes: number; guestBytes: number; downtimeMs: number };
  assert.equal(report.deviceBytes, STATE_MIB * 1024 * 1024);
  assert.ok(report.guestBytes >= 4 * 1024 * 1024);
  await until(() => dst.log().includes('crc32'));
  assert.match(dst.log(), new RegExp(`received ${STATE_MIB * 1024 * 1024} bytes, crc32 0x${expectedCrc()}`));
});

test('vfu migrate to tcp:// and vfu receive: the same across a network', async () => {
  const a = join(t.dir, 'ta.sock');
  const b = join(t.dir, 'tb.sock');
  serveChild('bigstate', a, '--state-mib', String(STATE_MIB), '--precopy-mib', '4');
  const dst = serveChild('bigstate', b, '--state-mib', String(STATE_MIB));
  await until(() => existsSync(a) && existsSync(b));
  const recv = spawn(process.execPath, [cli, 'receive', '--listen', 'tcp://127.0.0.1:0', '--to', b], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(recv);
  let rout = '';
  let rerr = '';
  recv.stdout.on('data', (d) => (rout += d));
  recv.stderr.on('data', (d) => (rerr += d));
  await until(() => /listening on tcp:\/\/127\.0\.0\.1:\d+/.test(rerr));
  const port = Number(/listening on tcp:\/\/127\.0\.0\.1:(\d+)/.exec(rerr)![1]);
  const m = await run(['migrate', '--from', a, '--to', `tcp://127.0.0.1:${port}`, '--guest-mib', '2', '-q']);
  assert.equal(m.code, 0, m.err);
  assert.match(m.out, /downtime/);
  await until(() => rout.includes('received'));
  await until(() => dst.log().includes('crc32'));
  assert.match(dst.log(), new RegExp(`crc32 0x${expectedCrc()}`));
});

test('a damaged migration stream is refused: the destination is reset, the receiver says which chunk', async () => {
  const s = createSample();
  const srv = await serve(s.device);
  let outcome: { ok: boolean; error?: Error } | null = null;
  const server = await receiveMigrations('127.0.0.1', 0, {
    connectDestination: () => VfioUserClient.connect(srv.path),
    onDone: (r) => (outcome = r),
  });
  const sock = tcpConnect({ host: '127.0.0.1', port: (server.address() as AddressInfo).port });
  await new Promise<void>((r) => sock.once('connect', () => r()));
  const hello = Buffer.from(JSON.stringify({ version: 1, layout: { ranges: [], irqs: [] } }));
  sock.write(encodeChunkHeader(ChunkType.HELLO, hello));
  sock.write(hello);
  await until(() => s.device.migration!.state === MigState.RESUMING); // HELLO applied
  const data = Buffer.alloc(4096, 7);
  const h = encodeChunkHeader(ChunkType.DEVICE, data);
  h.writeUInt32LE(h.readUInt32LE(12) ^ 1, 12); // corrupt the CRC
  sock.write(h);
  sock.write(data);
  await until(() => outcome !== null);
  assert.equal(outcome!.ok, false);
  assert.match(outcome!.error!.message, /chunk 1: CRC mismatch/);
  await until(() => s.device.migration!.state === MigState.RUNNING);
  sock.destroy();
  server.close();
  await srv.close();
});
