// Shared memory and eventfds between two processes: descriptors passed over
// a UNIX socket, mapped on both sides, written by one and seen by the other.
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { requireNative } from '../src/native/index.js';
import { Command, Errno } from '../src/protocol/constants.js';
import { Connection } from '../src/transport/connection.js';
import type { Endpoint } from '../src/transport/endpoint.js';
import { closeFd, listen } from '../src/transport/socket.js';
import { pattern } from './helpers/frames.js';

const n = requireNative('cross-process tests');
const F_SEAL_SEAL = 1;
const F_SEAL_SHRINK = 2;
const F_SEAL_GROW = 4;
const SIZE = 64 * 1024;
const fixture = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'memfd-peer.js');
const dir = mkdtempSync(join(tmpdir(), 'vfu-xproc-'));
after(() => rmSync(dir, { recursive: true, force: true }));

async function withChild(body: (conn: Connection) => Promise<void>): Promise<void> {
  const path = join(dir, `peer-${process.pid}-${Date.now()}.sock`);
  const l = await listen(path, { maxMessageSize: 1 << 20, maxFds: 4 });
  const accepted = new Promise<Endpoint>((res) => (l.onConnection = res));
  const child = spawn(process.execPath, [fixture, path], { stdio: ['ignore', 'inherit', 'inherit'] });
  const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
  const ep = await accepted;
  l.close();
  const conn = new Connection(ep, { closeFd, replyTimeoutMs: 10_000 });
  try {
    await body(conn);
  } finally {
    conn.close();
  }
  assert.equal(await exited, 0, 'child exits cleanly with no mappings left');
}

function seedSize(seed: number, size: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(seed, 0);
  b.writeUInt32LE(size, 4);
  return b;
}

test('parent memfd + eventfd: the child writes, the parent sees it through its own mapping', async () => {
  const live0 = n.liveMappings();
  const memfd = n.memfdCreate('vfu-parent', SIZE, true);
  assert.equal(n.getSeals(memfd) & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  const efd = n.eventfd(0, 1);
  assert.equal(n.eventfdRead(efd), -Errno.EAGAIN, 'non-blocking eventfd starts at zero');
  const ab = n.mmap(memfd, 0, SIZE, 3);
  assert.equal(n.liveMappings(), live0 + 1);
  const view = new Uint8Array(ab);
  view.fill(0xee);
  await withChild(async (conn) => {
    const r = await conn.request(Command.DMA_MAP, seedSize(1234, SIZE), { fds: [memfd, efd] });
    // The child mapped once and unmapped again.
    assert.deepStrictEqual([r.payload.readUInt32LE(0), r.payload.readUInt32LE(4)], [0, 0]);
    assert.ok(Buffer.from(ab).equals(pattern(SIZE, 1234)), 'pattern visible through our mapping');
    assert.equal(n.eventfdRead(efd), 7);
    assert.equal(n.eventfdRead(efd), -Errno.EAGAIN);
  });
  n.munmap(ab);
  assert.equal(ab.byteLength, 0, 'munmap detaches the ArrayBuffer');
  assert.equal(view.length, 0, 'and its views');
  assert.equal(n.munmap(ab), 0, 'a second munmap is a no-op');
  assert.equal(n.liveMappings(), live0);
  n.close(memfd);
  n.close(efd);
});

test('child memfd + eventfd: the parent maps it, sees the child pattern, writes back and signals', async () => {
  const live0 = n.liveMappings();
  await withChild(async (conn) => {
    const r = await conn.request(Command.DEVICE_GET_REGION_INFO, seedSize(99, SIZE));
    assert.equal(r.fds.length, 2);
    const [memfd, efd] = r.fds as [number, number];
    assert.equal(n.getSeals(memfd) & (F_SEAL_SHRINK | F_SEAL_GROW), F_SEAL_SHRINK | F_SEAL_GROW);
    const ab = n.mmap(memfd, 0, SIZE, 3);
    assert.ok(Buffer.from(ab).equals(pattern(SIZE, 99)), 'child pattern visible');
    pattern(SIZE, 4321).copy(new Uint8Array(ab));
    n.eventfdWrite(efd, 2);
    n.eventfdWrite(efd, 3);
    const ok = await conn.request(Command.REGION_READ, seedSize(4321, SIZE));
    assert.equal(ok.payload.toString(), 'ok');
    n.munmap(ab);
    assert.equal(ab.byteLength, 0);
    n.close(memfd);
    n.close(efd);
  });
  assert.equal(n.liveMappings(), live0);
});

test('mappings at an offset and read-only mappings', () => {
  const page = n.pageSize();
  const fd = n.memfdCreate('vfu-off', 4 * page, false);
  const whole = n.mmap(fd, 0, 4 * page, 3);
  const tail = n.mmap(fd, 2 * page, page, 1);
  new Uint8Array(whole).fill(0x5a, 2 * page, 3 * page);
  assert.ok(new Uint8Array(tail).every((b) => b === 0x5a));
  assert.throws(() => n.mmap(fd, 1, page, 1), (e: unknown) => (e as { errno?: number }).errno === Errno.EINVAL);
  n.munmap(tail);
  n.munmap(whole);
  assert.throws(() => n.munmap(new ArrayBuffer(8)), (e: unknown) => (e as { errno?: number }).errno === Errno.EINVAL);
  n.close(fd);
});
