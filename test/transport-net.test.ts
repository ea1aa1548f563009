// The pure-TypeScript transport (node:net, no descriptors): framing,
// request/reply and large messages in-process, and a child process with the
// addon disabled (VFU_NO_NATIVE=1) that a native client talks to.
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { NativeUnavailableError, native } from '../src/native/index.js';
import { Command, Errno, HEADER_SIZE } from '../src/protocol/constants.js';
import { writeHeader } from '../src/protocol/header.js';
import { Connection } from '../src/transport/connection.js';
import type { Endpoint } from '../src/transport/endpoint.js';
import { closeFd, connect, listen } from '../src/transport/socket.js';
import { FrameQueue, delay } from './helpers/endpoints.js';
import { encodeMsg, pattern } from './helpers/frames.js';

const LIMITS = { maxMessageSize: 1024 * 1024 + 4096, maxFds: 4 };
const dir = mkdtempSync(join(tmpdir(), 'vfu-net-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let seq = 0;
const sockPath = (): string => join(dir, `s${seq++}.sock`);

function header(msgId: number, cmd: number, size: number): Buffer {
  const h = Buffer.allocUnsafe(HEADER_SIZE);
  writeHeader(h, msgId, cmd, size, 0, 0);
  return h;
}

/** A net listener and a net client connected to it. */
async function netPair(limits = LIMITS): Promise<{ client: Endpoint; server: Endpoint; close: () => void }> {
  const path = sockPath();
  const l = await listen(path, limits, { transport: 'net' });
  const accepted = new Promise<Endpoint>((res) => (l.onConnection = res));
  const client = await connect(path, limits, { transport: 'net' });
  const server = await accepted;
  assert.equal(client.canPassFds, false);
  assert.equal(server.canPassFds, false);
  return {
    client,
    server,
    close: () => {
      client.close();
      server.close();
      l.close();
    },
  };
}

test('net: framing across arbitrary writes, several messages per write', async () => {
  const path = sockPath();
  const l = await listen(path, LIMITS, { transport: 'net' });
  assert.equal(statSync(path).mode & 0o777, 0o600);
  const accepted = new Promise<Endpoint>((res) => (l.onConnection = res));
  const raw: Socket = createConnection(path);
  await new Promise((r) => raw.once('connect', r));
  raw.setNoDelay(true);
  const q = new FrameQueue(await accepted);
  const msgs = Array.from({ length: 6 }, (_, i) => encodeMsg({ msgId: i, cmd: 9, flags: 0, errorNo: 0, payload: pattern(i * 700, i) }));
  const s = Buffer.concat(msgs);
  // Pieces written apart in time, so they arrive as separate chunks.
  const cuts = [0, 3, 16, 17, 900, 901, 2500, 2600, s.length - 1, s.length];
  for (let i = 0; i + 1 < cuts.length; i++) {
    raw.write(s.subarray(cuts[i], cuts[i + 1]));
    await delay(2);
  }
  const got = await q.count(6);
  got.forEach((f, i) => {
    assert.equal(f.msgId, i);
    assert.ok(f.payload.equals(pattern(i * 700, i)));
  });
  // A bad size in the middle: refused and the stream stays in sync.
  raw.write(Buffer.concat([encodeMsg({ msgId: 50, cmd: 9, flags: 0, errorNo: 0, payload: Buffer.alloc(0), msgSize: 3 }), msgs[1]!]));
  const tail = await q.count(8);
  assert.equal(tail[6]!.rejected, Errno.EINVAL);
  assert.equal(tail[7]!.msgId, 1);
  raw.destroy();
  assert.equal(await q.whenClosed(), null);
  l.close();
});

test('net: request/reply through Connection, both directions', async () => {
  const { client, server, close } = await netPair();
  const cc = new Connection(client, { closeFd, replyTimeoutMs: 5000 });
  const sc = new Connection(server, { closeFd, replyTimeoutMs: 5000 });
  sc.onCommand = (f, via) => {
    if (f.cmd === Command.DEVICE_RESET) sc.replyError(via, f, Errno.EBUSY);
    else sc.reply(via, f, Buffer.concat([Buffer.from('echo:'), f.payload]));
  };
  cc.onCommand = (f, via) => cc.reply(via, f, Buffer.from('client-ok'));
  const rs = await Promise.all([1, 2, 3].map((i) => cc.request(Command.REGION_READ, Buffer.from(`r${i}`))));
  assert.deepStrictEqual(
    rs.map((r) => r.payload.toString()),
    ['echo:r1', 'echo:r2', 'echo:r3'],
  );
  assert.equal((await sc.request(Command.DMA_READ, Buffer.alloc(16))).payload.toString(), 'client-ok');
  await assert.rejects(cc.request(Command.DEVICE_RESET, null), (e: unknown) => (e as { errno?: number }).errno === Errno.EBUSY);
  // extra payload parts are gathered too
  const r = await cc.request(Command.REGION_WRITE, Buffer.from('a'), { extra: Buffer.from('bc') });
  assert.equal(r.payload.toString(), 'echo:abc');
  cc.close();
  sc.close();
  close();
});

test('net: large messages (4 MiB with a raised limit, 32 x 1 MiB streamed, copied or by reference, EMSGSIZE otherwise)', async () => {
  const { client, server, close } = await netPair({ maxMessageSize: 8 * 1024 * 1024, maxFds: 0 });
  const q = new FrameQueue(server);
  const big = pattern(4 * 1024 * 1024, 3);
  client.send(header(1, Command.REGION_WRITE, HEADER_SIZE + big.length), big, null);
  // even messages by copy, odd ones with a stable payload (by reference)
  for (let i = 0; i < 32; i++) client.send(header(2 + i, Command.REGION_WRITE, HEADER_SIZE + (1 << 20)), pattern(1 << 20, i), null, i % 2 === 1);
  await client.whenDrained();
  assert.equal(client.sending, false);
  const got = await q.count(33, 30_000);
  assert.ok(got[0]!.payload.equals(big));
  for (let i = 0; i < 32; i++) assert.ok(got[1 + i]!.payload.equals(pattern(1 << 20, i)), `message ${i}`);
  server.setLimits(1024, 0);
  client.send(header(99, Command.REGION_WRITE, HEADER_SIZE + big.length), big, null);
  client.send(header(100, Command.REGION_WRITE, HEADER_SIZE + 1), Buffer.from('z'), null);
  const all = await q.count(35);
  assert.equal(all[33]!.rejected, Errno.EMSGSIZE);
  assert.equal(all[34]!.msgId, 100);
  close();
});

test('net: sending descriptors throws NativeUnavailableError naming the native addon', async () => {
  const { client, close } = await netPair();
  assert.throws(
    () => client.send(header(1, Command.DMA_MAP, HEADER_SIZE), null, [0]),
    (e: unknown) => e instanceof NativeUnavailableError && /native addon/.test(e.message) && e.errno === Errno.ENOTSUP,
  );
  const cc = new Connection(client, { closeFd });
  await assert.rejects(cc.request(Command.DMA_MAP, Buffer.alloc(32), { fds: [0] }), (e: unknown) => e instanceof NativeUnavailableError);
  assert.equal(cc.inFlight, 0);
  // Fire-and-forget requests report it the same way (a rejection, not a throw).
  const p = cc.request(Command.DMA_MAP, Buffer.alloc(32), { fds: [0], noReply: true });
  await assert.rejects(p, (e: unknown) => e instanceof NativeUnavailableError);
  // No fds: fine.
  client.send(header(2, Command.DEVICE_RESET, HEADER_SIZE), null, []);
  cc.close();
  close();
});

interface ChildReport {
  nativeIsNull: boolean;
  loadError: string | null;
  defaultTransport: string;
  requireNative: { name: string; message: string; errno?: number } | null;
  requireNativeIsClass: boolean;
  endpointPair: { name: string; message: string } | null;
  connectNative: { name: string; message: string } | null;
  listenNative: { name: string; message: string } | null;
  listenAgain: { name: string; message: string; errno?: number } | null;
}

test('VFU_NO_NATIVE=1 child: no addon, requireNative throws, net transport serves a native client', async () => {
  const path = sockPath();
  const fixture = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'no-native-peer.js');
  // A stale socket file (bound, never unlinked) for the child to replace.
  if (native) native.close(native.listen(path + '.stale', 1, 0o600));
  const child = spawn(process.execPath, [fixture, path], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, VFU_NO_NATIVE: '1' },
  });
  const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
  try {
    await talkToChild(child.stdout!, path);
  } catch (e) {
    // Never leave the child behind a failed assertion.
    child.kill();
    throw e;
  }
  assert.equal(await exited, 0);
});

async function talkToChild(stdout: NodeJS.ReadableStream, path: string): Promise<void> {
  const lines = createInterface({ input: stdout });
  const first = await new Promise<string>((res, rej) => {
    lines.once('line', res);
    lines.once('close', () => rej(new Error('child exited before reporting')));
  });
  const rep = JSON.parse(first) as ChildReport;
  assert.equal(rep.nativeIsNull, true);
  assert.match(rep.loadError ?? '', /VFU_NO_NATIVE/);
  assert.equal(rep.defaultTransport, 'net');
  assert.equal(rep.requireNativeIsClass, true);
  assert.equal(rep.requireNative?.name, 'NativeUnavailableError');
  assert.equal(rep.requireNative?.errno, Errno.ENOTSUP);
  assert.match(rep.requireNative!.message, /^mapping memory needs the vfio-user native addon/);
  assert.equal(rep.listenAgain?.errno, Errno.EADDRINUSE, 'a second listen on a live path is refused');
  for (const k of ['endpointPair', 'connectNative', 'listenNative'] as const) {
    assert.equal(rep[k]?.name, 'NativeUnavailableError', `${k}: ${JSON.stringify(rep[k])}`);
  }

  // The child listens over node:net; we connect with whatever we have.
  const ep = await connect(path, { maxMessageSize: 8 * 1024 * 1024 + HEADER_SIZE, maxFds: 4 });
  assert.equal(ep.canPassFds, native !== null);
  const c = new Connection(ep, { closeFd, replyTimeoutMs: 10_000 });
  const small = await c.request(Command.REGION_WRITE, Buffer.from('hello'));
  assert.equal(small.payload.toString(), 'hello');
  const big = pattern(8 * 1024 * 1024, 8);
  const echoed = await c.request(Command.REGION_WRITE, big);
  assert.ok(echoed.payload.equals(big));
  const withFd = await c.request(Command.DMA_MAP, Buffer.alloc(32));
  assert.match(withFd.payload.toString(), /^NativeUnavailableError: sending file descriptors needs the vfio-user native addon/);
  c.close();
}
