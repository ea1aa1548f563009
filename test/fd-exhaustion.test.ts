// Descriptor exhaustion (issue 10, section 2), over real sockets against a
// `vfu serve sample` child with a low RLIMIT_NOFILE, its descriptors counted
// in /proc/<pid>/fd:
//  - a message brought a byte at a time, each byte with 253 descriptors,
//    holds at most max_msg_fds of them (the rest are closed as they arrive),
//    and is refused with EINVAL when it ends, the stream in sync;
//  - descriptors arriving inside a body being skipped are closed at once;
//  - with no descriptor left, a connecting client is accepted and closed
//    (with the addon's spare descriptor) instead of hanging in the backlog
//    while the server spins on it.
// Whether the server closed every copy of a descriptor is told by a socket
// pair: we send copies of one end and drop ours; the other end reads EOF
// once no copy is left anywhere (in flight or in the server).
import { strict as assert } from 'node:assert';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { native } from '../src/native/index.js';
import { Command, Errno, HEADER_SIZE, HeaderFlag } from '../src/protocol/constants.js';
import { writeHeader } from '../src/protocol/header.js';
import { NativeEndpoint } from '../src/transport/native-endpoint.js';
import { FrameQueue } from './helpers/endpoints.js';
import { type Proc, cli, fdsOf } from './helpers/procs.js';
import { until } from './helpers/wait.js';
import { rawSession, type RawSession } from './helpers/raw.js';
import { tempDir } from './helpers/server.js';

const n = native!;
const LIMIT = 256;

/** A `vfu serve sample` child whose RLIMIT_NOFILE is `limit`. */
async function serveLimited(path: string, limit: number): Promise<Proc> {
  const child = spawn('prlimit', [`--nofile=${limit}:${limit}`, '--', process.execPath, cli, 'serve', 'sample', '--socket-path', path, '--verbose'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<[number | null, NodeJS.Signals | null]>((res) => child.once('exit', (code, sig) => res([code, sig])));
  // the file appears at bind(), before listen(): connecting then is refused
  await until(() => err.includes(`listening on ${path}`) || child.exitCode !== null, 30_000, `server listening on ${path}`);
  if (!existsSync(path)) throw new Error(`vfu serve on ${path} did not start: ${err}`);
  return { child, pid: child.pid!, exited, stdout: () => out, stderr: () => err };
}

/** A socket pair: copies of `give` go to the server; `eof` resolves once none is left open. */
function probe(): { give: number; eof: Promise<Error | null>; done: () => void } {
  const [give, keep] = n.socketpair();
  const ep = new NativeEndpoint(keep, { maxMessageSize: 4096, maxFds: 0 });
  const q = new FrameQueue(ep);
  return { give, eof: q.whenClosed(30_000), done: () => ep.close() };
}

function header(id: number, cmd: number, msgSize: number): Buffer {
  const h = Buffer.alloc(HEADER_SIZE);
  writeHeader(h, id, cmd, msgSize, HeaderFlag.TYPE_COMMAND, 0);
  return h;
}

describe('descriptor exhaustion, against a server with RLIMIT_NOFILE ' + LIMIT, () => {
  const t = tempDir();
  const path = join(t.dir, 's.sock');
  let srv: Proc;
  before(async () => {
    srv = await serveLimited(path, LIMIT);
  });
  after(async () => {
    srv.child.kill('SIGTERM');
    await srv.exited;
    t.cleanup();
  });

  async function session(): Promise<{ s: RawSession; rest: number }> {
    const s = await rawSession(path);
    // what the server holds with this client attached
    return { s, rest: fdsOf(srv.pid) };
  }

  test('a message sent a byte at a time, each byte with 253 descriptors, holds at most max_msg_fds; EINVAL when it ends', async () => {
    const { s, rest } = await session();
    const p = probe();
    const body = 64 * 1024;
    s.ep.send(header(40, Command.REGION_WRITE, HEADER_SIZE + body), null, null);
    const copies = Array.from({ length: 253 }, () => p.give);
    const bytes = 40;
    for (let i = 0; i < bytes; i++) s.ep.send(Buffer.alloc(1), null, copies);
    await s.ep.whenDrained();
    n.close(p.give);
    // 10,120 descriptors sent: all closed while the message is still arriving
    assert.equal(await p.eof, null);
    assert.ok(fdsOf(srv.pid) <= rest, `server holds ${fdsOf(srv.pid)} descriptors, ${rest} at rest`);
    s.ep.send(Buffer.alloc(body - bytes), null, null);
    const r = await s.q.next();
    assert.deepEqual([r.msgId, r.flags & HeaderFlag.ERROR, r.errorNo], [40, HeaderFlag.ERROR, Errno.EINVAL]);
    // in sync: the next message is answered
    s.send(Command.DEVICE_GET_INFO, Buffer.from([16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), { id: 41 });
    const info = await s.q.next();
    assert.equal(info.msgId, 41);
    assert.equal(info.flags & HeaderFlag.ERROR, 0);
    p.done();
    s.close();
  });

  test('descriptors arriving inside a body being skipped (msg_size 0xffffffff) are closed at once', async () => {
    const { s, rest } = await session();
    const p = probe();
    s.ep.send(header(50, Command.REGION_WRITE, 0xffffffff), null, [p.give]);
    for (let i = 0; i < 20; i++) s.ep.send(Buffer.alloc(100), null, [p.give, p.give]);
    await s.ep.whenDrained();
    n.close(p.give);
    assert.equal(await p.eof, null);
    const r = await s.q.next();
    assert.deepEqual([r.msgId, r.errorNo], [50, Errno.EINVAL]);
    assert.ok(fdsOf(srv.pid) <= rest, `server holds ${fdsOf(srv.pid)} descriptors, ${rest} at rest`);
    p.done();
    s.close();
  });

  test('out of descriptors, connecting clients are closed at once (none left in the backlog), and the attached one is still served', async () => {
    const { s } = await session();
    const fds = readdirSync(`/proc/${srv.pid}/fd`).map(Number);
    // the lowest free descriptor number as the limit: the server is full
    let full = 0;
    while (fds.includes(full)) full++;
    const spare = Math.max(...fds.filter((fd) => readlinkSync(`/proc/${srv.pid}/fd/${fd}`) === '/dev/null'));
    assert.ok(spare < full, `the spare descriptor (${spare}) lies below the limit (${full})`);
    const set = (soft: number): void => {
      const r = spawnSync('prlimit', ['--pid', String(srv.pid), `--nofile=${soft}:${LIMIT}`]);
      assert.equal(r.status, 0, r.stderr.toString());
    };
    set(full);
    try {
      const held = fdsOf(srv.pid);
      const late = Array.from({ length: 5 }, () => {
        const fd = n.connect(path);
        assert.ok(fd >= 0, `connect: ${-fd}`);
        const ep = new NativeEndpoint(fd, { maxMessageSize: 4096, maxFds: 0 });
        return new FrameQueue(ep);
      });
      for (const q of late) {
        await q.whenClosed(30_000);
        assert.equal(q.frames.length, 0);
      }
      s.send(Command.DEVICE_GET_INFO, Buffer.from([16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), { id: 60 });
      const info = await s.q.next();
      assert.deepEqual([info.msgId, info.flags & HeaderFlag.ERROR], [60, 0]);
      assert.equal(fdsOf(srv.pid), held);
    } finally {
      set(LIMIT);
    }
    s.close();
    // and the next client is served once the limit allows it
    const again = await rawSession(path);
    again.close();
  });
});
