// The addon's primitives against hostile arguments and hostile peers: what
// used to block the thread, leak, or touch memory it should not.
import { strict as assert } from 'node:assert';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Worker } from 'node:worker_threads';
import { IO_RECV_LEN, IO_RECV_OFF, IO_STATE_LEN, POLL_READABLE, RECV_STATE_LEN, native } from '../src/native/index.js';
import { Errno } from '../src/protocol/constants.js';

const n = native!;
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

function fdinfo(fd: number): string {
  return readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
}

test('eventfdWrite gives up instead of sleeping when poll() would have said writable (the race, made deterministic)', () => {
  // poll() reports POLLOUT while the counter is below 0xfffffffffffffffe,
  // but a write of 2 at 0xfffffffffffffffd needs room for 2: the old
  // poll-then-write slept here forever, as it did when a client filled the
  // counter between the two calls.
  const fd = n.eventfd(0, 0);
  assert.equal(n.eventfdWrite(fd, -3), 0);
  assert.equal(n.eventfdWrite(fd, 2), -Errno.EAGAIN);
  assert.match(fdinfo(fd), /eventfd-count:\s*fffffffffffffffd\b/, 'nothing written');
  assert.equal(n.eventfdWrite(fd, 1), 0, 'room for 1 is still taken');
  assert.equal(n.eventfdWrite(fd, 1), -Errno.EAGAIN, 'full');
  assert.equal(parseInt(/flags:\s+(\d+)/.exec(fdinfo(fd))![1]!, 8) & 0o4000, 0, 'the file stays blocking');
  n.close(fd);
});

test('epoll set: a full eventfd is reported writable once drained, and not before', () => {
  const fd = n.eventfd(0, 0);
  const ep = n.epollCreate();
  const out = new Int32Array(4);
  n.eventfdWrite(fd, -2);
  assert.equal(n.epollCtl(ep, 1, fd, 2), 0);
  assert.equal(n.epollWait(ep, out), 0);
  assert.ok(n.eventfdRead(fd) > 0);
  assert.equal(n.epollWait(ep, out), 1);
  assert.equal(out[0], fd);
  assert.equal(n.epollCtl(ep, 2, fd), 0);
  assert.equal(n.epollCtl(ep, 7, fd), -Errno.EINVAL);
  const odd = new Uint8Array(new ArrayBuffer(17), 1) as unknown as Int32Array;
  assert.throws(() => n.epollWait(ep, odd), { errno: Errno.EINVAL }, 'a misaligned view is refused');
  n.close(ep);
  n.close(fd);
});

test('sendmsg: a descriptor array whose getter detaches the buffer sends nothing of the freed memory', () => {
  const [a, b] = n.socketpair();
  const ev = n.eventfd(0, 1);
  const data = new Uint8Array(1 << 20).fill(7);
  const fds: number[] = [];
  Object.defineProperty(fds, 0, {
    enumerable: true,
    get() {
      structuredClone(data.buffer, { transfer: [data.buffer] }); // detaches `data`; the copy is garbage
      gc(); // and its memory freed (under scripts/asan-test.sh, reading it is reported)
      return ev;
    },
  });
  // The pointer used to be taken before this getter ran (ASan: heap-use-after-free).
  assert.equal(n.sendmsg(a, data, null, fds), 0, 'the buffer is empty by the time it is read');
  assert.equal(data.byteLength, 0);
  for (const fd of [a, b, ev]) n.close(fd);
});

test('sendmsg: every element is read and checked before anything is sent', () => {
  const [a, b] = n.socketpair();
  assert.throws(() => n.sendmsg(a, new Uint8Array(4), null, [1, 'x' as unknown as number]), { errno: Errno.EINVAL });
  const state = new Int32Array(RECV_STATE_LEN);
  assert.equal(n.recvmsg(b, new Uint8Array(4), 0, 4, state), -Errno.EAGAIN, 'nothing was sent');
  n.close(a);
  n.close(b);
});

test('mmap: ranges beyond the file, bad protections and non-files are errors, not SIGBUS', () => {
  const page = n.pageSize();
  const fd = n.memfdCreate('hard', 2 * page, true);
  const live = n.liveMappings();
  assert.throws(() => n.mmap(fd, 0, 3 * page, 3), { errno: Errno.EINVAL }, 'longer than the file');
  assert.throws(() => n.mmap(fd, 2 * page, page, 3), { errno: Errno.EINVAL }, 'starts at its end');
  assert.throws(() => n.mmap(fd, 2 ** 52, 2 ** 52, 1), { errno: Errno.EINVAL }, 'far beyond');
  assert.throws(() => n.mmap(fd, page, Number.MAX_SAFE_INTEGER, 1), { errno: Errno.EINVAL }, 'offset + length wraps');
  for (const prot of [0, 4, 7, -1]) assert.throws(() => n.mmap(fd, 0, page, prot), { errno: Errno.EINVAL }, `prot ${prot}`);
  const ev = n.eventfd(0, 1);
  assert.throws(() => n.mmap(ev, 0, page, 3), { errno: 19 /* ENODEV */ }, 'an eventfd is not a file');
  n.close(ev);
  assert.equal(n.liveMappings(), live);
  const ab = n.mmap(fd, page, page, 3);
  new Uint8Array(ab)[page - 1] = 1;
  assert.equal(n.munmap(ab), 0);
  n.close(fd);
});

test('state arrays must be aligned: recvmsg and pollSetIo refuse a misaligned view', () => {
  const [a, b] = n.socketpair();
  const odd = new Int32Array(new ArrayBuffer(4 * IO_STATE_LEN + 4));
  const misaligned = new Uint8Array(odd.buffer, 1, 4 * IO_STATE_LEN) as unknown as Int32Array;
  assert.throws(() => n.recvmsg(a, new Uint8Array(8), 0, 8, misaligned), { errno: Errno.EINVAL });
  const h = n.pollStart(a, POLL_READABLE, () => {});
  assert.throws(() => n.pollSetIo(h, null, misaligned, null), { errno: Errno.EINVAL });
  const state = new Int32Array(IO_STATE_LEN);
  assert.throws(() => n.pollSetIo(h, new Uint16Array(8) as unknown as Uint8Array, state, null), { errno: Errno.EINVAL }, 'buffers are byte arrays');
  assert.throws(() => n.pollSetIo(h, null, new Uint32Array(IO_STATE_LEN) as unknown as Int32Array, null), { errno: Errno.EINVAL }, 'the state is an Int32Array');
  n.pollClose(h);
  n.close(a);
  n.close(b);
});

test('pollStart: refused arguments throw and leave nothing behind', () => {
  const [a, b] = n.socketpair();
  assert.throws(() => n.pollStart(a, POLL_READABLE, 'not a function' as unknown as () => void), { errno: Errno.EINVAL });
  const file = n.memfdCreate('not-pollable', 4096, false);
  assert.throws(() => n.pollStart(file, POLL_READABLE, () => {}), { errno: Errno.EPERM }, 'epoll refuses regular files');
  const h = n.pollStart(a, POLL_READABLE, () => {}); // the fd is still free to be polled
  n.pollClose(h);
  for (const fd of [a, b, file]) n.close(fd);
});

test('receive-ahead into a buffer JS detached after registering it reads nothing', async () => {
  const [a, b] = n.socketpair();
  const state = new Int32Array(IO_STATE_LEN);
  const rbuf = new Uint8Array(64);
  state[IO_RECV_OFF] = 0;
  state[IO_RECV_LEN] = 64;
  let got: number | null | undefined;
  const h = n.pollStart(a, POLL_READABLE, (_ev, _st, g) => {
    got = g;
    n.pollUpdate(h, 0);
  });
  n.pollSetIo(h, rbuf, state, null);
  structuredClone(rbuf.buffer, { transfer: [rbuf.buffer] });
  assert.equal(n.sendmsg(b, new Uint8Array([1, 2, 3]), null, null), 3);
  while (got === undefined) await new Promise((r) => setImmediate(r));
  assert.equal(got, null, 'no read into memory the buffer no longer owns');
  assert.equal(n.recvmsg(a, new Uint8Array(8), 0, 8, new Int32Array(RECV_STATE_LEN)), 3, 'the bytes are still there');
  n.pollClose(h);
  n.close(a);
  n.close(b);
});

test('worker threads may load the addon: mappings made and unmapped on both threads at once stay consistent; the write guard works there', async () => {
  const page = n.pageSize();
  const live = n.liveMappings();
  const url = new URL('../src/native/index.js', import.meta.url).href;
  const code = `(async () => {
    const { native: n } = await import(${JSON.stringify(url)});
    const fd = n.memfdCreate('w', ${page}, true);
    for (let i = 0; i < 2000; i++) n.munmap(n.mmap(fd, 0, ${page}, 3));
    n.close(fd);
    // the eventfd write guard works on this thread too (its own timer, deleted when the thread ends)
    const e = n.eventfd(0, 0);
    n.eventfdWrite(e, -2);
    if (n.eventfdWrite(e, 1) !== -11) process.exit(3);
    n.close(e);
  })().catch((e) => { console.error(e); process.exit(1); });`;
  const w = new Worker(code, { eval: true });
  const done = new Promise<number>((res, rej) => {
    w.once('exit', res);
    w.once('error', rej);
  });
  const fd = n.memfdCreate('m', page, true);
  for (let i = 0; i < 2000; i++) n.munmap(n.mmap(fd, 0, page, 3));
  n.close(fd);
  assert.equal(await done, 0);
  assert.equal(n.liveMappings(), live);
});
