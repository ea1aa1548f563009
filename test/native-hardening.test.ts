// The addon's primitives against hostile arguments and hostile peers: what
// used to block the thread, leak, or touch memory it should not.
import { strict as assert } from 'node:assert';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { native } from '../src/native/index.js';
import { Errno } from '../src/protocol/constants.js';

const n = native!;

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
