// The Framer on its own: reassembly across arbitrary read boundaries, refusal
// of bad sizes without losing sync, and descriptor ownership (attached to the
// message holding the last byte of the read that brought them, closed when
// nobody can claim them).
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import fc from 'fast-check';
import { Errno, HEADER_SIZE } from '../src/protocol/constants.js';
import { Framer, PLACE_MIN } from '../src/transport/framer.js';
import { type RawMsg, type SavedFrame, encodeMsg, pattern, saveFrame } from './helpers/frames.js';

const RUNS = Number(process.env.VFU_PROP_RUNS ?? 300);

interface Harness {
  framer: Framer;
  frames: SavedFrame[];
  closed: number[];
}

function harness(maxMessageSize = 4096, maxFds = 8): Harness {
  const frames: SavedFrame[] = [];
  const closed: number[] = [];
  const framer = new Framer((f) => frames.push(saveFrame(f)), { maxMessageSize, maxFds, closeFd: (fd) => closed.push(fd) });
  return { framer, frames, closed };
}

/** Delivers `data` through readTarget/commit as one read (split only if the target is smaller). */
function read(fr: Framer, data: Buffer, fds: number[] | null = null, truncated = false): void {
  let off = 0;
  while (off < data.length) {
    const t = fr.readTarget();
    assert.ok(t.len > 0);
    const n = Math.min(t.len, data.length - off);
    data.copy(t.buf, t.off, off, off + n);
    off += n;
    // Descriptors come with the last piece of a read, as with one recvmsg.
    const last = off === data.length;
    fr.commit(n, last ? fds : null, last && truncated);
  }
}

function msg(over: Partial<RawMsg> & { len?: number; seed?: number } = {}): RawMsg {
  const { len = 8, seed = 1, ...rest } = over;
  return { msgId: 1, cmd: 9, flags: 0, errorNo: 0, payload: pattern(len, seed), ...rest };
}

function expectedFrame(m: RawMsg, maxMessageSize: number, fds: number[] = []): SavedFrame {
  const msgSize = m.msgSize ?? HEADER_SIZE + m.payload.length;
  const base = { msgId: m.msgId, cmd: m.cmd, msgSize, flags: m.flags, errorNo: m.errorNo };
  if (msgSize < HEADER_SIZE) return { ...base, payload: Buffer.alloc(0), fds: [], rejected: Errno.EINVAL };
  if (msgSize > maxMessageSize) return { ...base, payload: Buffer.alloc(0), fds: [], rejected: Errno.EMSGSIZE };
  return { ...base, payload: m.payload, fds };
}

// -------------------------------------------------------------- arbitraries

const LIMIT = 512;

/** A message whose header and bytes on the wire agree, valid or not. */
const rawMsg: fc.Arbitrary<RawMsg> = fc.oneof(
  { weight: 8, arbitrary: fc.record({ msgId: fc.nat(0xffff), cmd: fc.nat(0xffff), flags: fc.nat(0xffffffff), errorNo: fc.nat(0xffffffff), len: fc.nat(LIMIT - HEADER_SIZE), seed: fc.nat() }) },
  // msg_size below the header size: a bare header on the wire.
  { weight: 1, arbitrary: fc.record({ msgId: fc.nat(0xffff), cmd: fc.nat(0xffff), flags: fc.nat(0xffffffff), errorNo: fc.nat(0xffffffff), len: fc.constant(0), seed: fc.nat(), msgSize: fc.nat(HEADER_SIZE - 1) }) },
  // msg_size above the limit: the whole body follows and must be skipped.
  { weight: 1, arbitrary: fc.record({ msgId: fc.nat(0xffff), cmd: fc.nat(0xffff), flags: fc.nat(0xffffffff), errorNo: fc.nat(0xffffffff), len: fc.integer({ min: LIMIT - HEADER_SIZE + 1, max: 3 * LIMIT }), seed: fc.nat(), msgSize: fc.constant(-1) }) },
).map(({ len, seed, msgSize, ...h }: { msgId: number; cmd: number; flags: number; errorNo: number; len: number; seed: number; msgSize?: number }) => {
  const m: RawMsg = { ...h, payload: pattern(len, seed) };
  if (msgSize !== undefined) m.msgSize = msgSize < 0 ? HEADER_SIZE + len : msgSize;
  return m;
});

/** Cut points (fractions of the stream) for splitting it into reads. */
const cuts = fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 30 });

function splitAt(total: number, fractions: number[]): number[] {
  const points = [...new Set(fractions.map((f) => Math.floor(f * total)).filter((p) => p > 0 && p < total))].sort((a, b) => a - b);
  const sizes: number[] = [];
  let prev = 0;
  for (const p of [...points, total]) {
    sizes.push(p - prev);
    prev = p;
  }
  return sizes.filter((s) => s > 0);
}

// -------------------------------------------------------------- properties

test('framing is independent of how the stream is split (push and readTarget/commit)', () => {
  fc.assert(
    fc.property(fc.array(rawMsg, { minLength: 1, maxLength: 20 }), cuts, (msgs, fr) => {
      const stream = Buffer.concat(msgs.map(encodeMsg));
      const expected = msgs.map((m) => expectedFrame(m, LIMIT));

      const whole = harness(LIMIT);
      whole.framer.push(stream);
      assert.deepStrictEqual(whole.frames, expected);

      const pushed = harness(LIMIT);
      let off = 0;
      for (const n of splitAt(stream.length, fr)) {
        pushed.framer.push(stream.subarray(off, off + n));
        off += n;
      }
      assert.deepStrictEqual(pushed.frames, expected);

      const committed = harness(LIMIT);
      off = 0;
      for (const n of splitAt(stream.length, fr)) {
        read(committed.framer, stream.subarray(off, off + n));
        off += n;
      }
      assert.deepStrictEqual(committed.frames, expected);
      assert.equal(committed.framer.buffered, 0);
    }),
    { numRuns: RUNS },
  );
});

test('descriptors go to the message holding the last byte of their read; the rest are closed, never more than maxFds held', () => {
  const MAXFDS = 3;
  fc.assert(
    fc.property(
      fc.array(rawMsg, { minLength: 1, maxLength: 12 }),
      cuts,
      fc.array(fc.nat(3), { minLength: 31, maxLength: 31 }),
      (msgs, fr, fdCounts) => {
        const stream = Buffer.concat(msgs.map(encodeMsg));
        // Where each message lies on the wire.
        const spans: { start: number; end: number }[] = [];
        let pos = 0;
        for (const m of msgs) {
          const len = encodeMsg(m).length;
          spans.push({ start: pos, end: pos + len });
          pos += len;
        }
        const owed = msgs.map(() => [] as number[]);
        const h = harness(LIMIT, MAXFDS);
        let nextFd = 1000;
        let off = 0;
        const all: number[] = [];
        splitAt(stream.length, fr).forEach((n, i) => {
          const fds = Array.from({ length: fdCounts[i]! }, () => nextFd++);
          all.push(...fds);
          const lastByte = off + n - 1;
          owed[spans.findIndex((s) => s.start <= lastByte && lastByte < s.end)]!.push(...fds);
          read(h.framer, stream.subarray(off, off + n), fds);
          off += n;
          // Counted as they arrive: never more held than one message may carry.
          const held = all.length - h.closed.length - h.frames.reduce((k, f) => k + f.fds.length, 0);
          assert.ok(held <= MAXFDS, `${held} descriptors held after a read`);
        });
        const expected = msgs.map((m, i) => {
          const f = expectedFrame(m, LIMIT, owed[i]);
          if (f.rejected === undefined && owed[i]!.length > MAXFDS) {
            return { ...f, payload: Buffer.alloc(0), fds: [], rejected: Errno.EINVAL };
          }
          return f;
        });
        assert.deepStrictEqual(h.frames, expected);
        // Every descriptor is either handed out once or closed once.
        const delivered = h.frames.flatMap((f) => f.fds);
        h.framer.destroy();
        assert.deepStrictEqual([...delivered, ...h.closed].sort((a, b) => a - b), all);
      },
    ),
    { numRuns: RUNS },
  );
});

// -------------------------------------------------------------- examples

test('several messages in one read are all delivered, in order', () => {
  const h = harness();
  const msgs = [msg({ msgId: 1, len: 0 }), msg({ msgId: 2, len: 100, seed: 2 }), msg({ msgId: 3, len: 5, seed: 3 })];
  h.framer.push(Buffer.concat(msgs.map(encodeMsg)));
  assert.deepStrictEqual(h.frames, msgs.map((m) => expectedFrame(m, 4096)));
  assert.equal(h.framer.buffered, 0);
});

test('one byte at a time', () => {
  const h = harness();
  const msgs = [msg({ msgId: 7, len: 33 }), msg({ msgId: 8, len: 0 })];
  const s = Buffer.concat(msgs.map(encodeMsg));
  for (let i = 0; i < s.length; i++) {
    h.framer.push(s.subarray(i, i + 1));
    if (i < 16 + 33 - 1) assert.equal(h.frames.length, 0);
  }
  assert.deepStrictEqual(h.frames, msgs.map((m) => expectedFrame(m, 4096)));
});

test('msg_size below 16 is refused with EINVAL and the stream resumes 16 bytes later', () => {
  for (const size of [0, 1, 8, 15]) {
    const h = harness();
    const bad = msg({ msgId: 3, len: 0, msgSize: size });
    const good = msg({ msgId: 4, len: 20, seed: 9 });
    const s = Buffer.concat([encodeMsg(bad), encodeMsg(good)]);
    h.framer.push(s.subarray(0, 10));
    assert.equal(h.frames.length, 0);
    h.framer.push(s.subarray(10, 17));
    assert.equal(h.frames.length, 1);
    assert.equal(h.frames[0]!.rejected, Errno.EINVAL);
    assert.equal(h.frames[0]!.msgSize, size);
    assert.equal(h.frames[0]!.msgId, 3);
    h.framer.push(s.subarray(17));
    assert.deepStrictEqual(h.frames, [expectedFrame(bad, 4096), expectedFrame(good, 4096)]);
  }
});

test('msg_size above the limit: EMSGSIZE at once, body skipped as it streams in, next message intact', () => {
  const limit = 1024;
  const h = harness(limit);
  const big = msg({ msgId: 5, cmd: 10, len: 256 * 1024, seed: 5 });
  const next = msg({ msgId: 6, len: 40, seed: 6 });
  const s = Buffer.concat([encodeMsg(big), encodeMsg(next)]);
  h.framer.push(s.subarray(0, HEADER_SIZE));
  // Refused as soon as the header is in, before any of the body.
  assert.equal(h.frames.length, 1);
  assert.equal(h.frames[0]!.rejected, Errno.EMSGSIZE);
  assert.equal(h.frames[0]!.msgSize, HEADER_SIZE + 256 * 1024);
  assert.equal(h.frames[0]!.payload.length, 0);
  // The body arrives in many small pieces and is never kept.
  let off = HEADER_SIZE;
  const bodyEnd = HEADER_SIZE + 256 * 1024;
  while (off < bodyEnd - 1000) {
    const n = 1 + ((off * 7) % 997);
    h.framer.push(s.subarray(off, off + n));
    off += n;
    assert.equal(h.framer.buffered, 0);
  }
  // The last piece of the body shares a read with part of the next message.
  h.framer.push(s.subarray(off, bodyEnd + 10));
  assert.equal(h.frames.length, 1);
  h.framer.push(s.subarray(bodyEnd + 10));
  assert.deepStrictEqual(h.frames, [expectedFrame(big, limit), expectedFrame(next, limit)]);
});

test('oversized message through readTarget/commit: the read target never exceeds what skipping needs', () => {
  const limit = 1024;
  const h = harness(limit);
  const big = msg({ msgId: 5, len: 3 * 1024 * 1024, seed: 5 });
  const next = msg({ msgId: 6, len: 40, seed: 6 });
  const s = Buffer.concat([encodeMsg(big), encodeMsg(next)]);
  let off = 0;
  let reads = 0;
  while (off < s.length) {
    const t = h.framer.readTarget();
    const n = Math.min(t.len, s.length - off, 65536);
    s.copy(t.buf, t.off, off, off + n);
    h.framer.commit(n, null);
    off += n;
    reads++;
  }
  assert.ok(reads > 3);
  assert.deepStrictEqual(h.frames, [expectedFrame(big, limit), expectedFrame(next, limit)]);
});

test('fds attach to the message holding the last byte of the read', () => {
  const h = harness();
  const a = encodeMsg(msg({ msgId: 1, len: 10 }));
  const b = encodeMsg(msg({ msgId: 2, len: 10 }));
  const c = encodeMsg(msg({ msgId: 3, len: 10 }));
  // Read 1 ends exactly at the end of A: A owns [10].
  read(h.framer, a, [10]);
  // Read 2 ends inside B (B is not complete yet): B owns [11].
  read(h.framer, b.subarray(0, 5), [11]);
  // Read 3 finishes B and ends inside C: C owns [12, 13].
  read(h.framer, Buffer.concat([b.subarray(5), c.subarray(0, 20)]), [12, 13]);
  // Read 4 finishes C with more fds for C.
  read(h.framer, c.subarray(20), [14]);
  assert.deepStrictEqual(
    h.frames.map((f) => [f.msgId, f.fds]),
    [
      [1, [10]],
      [2, [11]],
      [3, [12, 13, 14]],
    ],
  );
  assert.deepStrictEqual(h.closed, []);
});

test('fds of refused messages are closed, never passed on', () => {
  const limit = 256;
  const h = harness(limit);
  const small = encodeMsg(msg({ msgId: 1, len: 0, msgSize: 4 }));
  const big = encodeMsg(msg({ msgId: 2, len: 1000 }));
  const ok = encodeMsg(msg({ msgId: 3, len: 8 }));
  read(h.framer, small, [20]); // undersized: closed at once
  assert.deepStrictEqual(h.closed, [20]);
  read(h.framer, big.subarray(0, 100), [21]); // header of the oversized one
  assert.deepStrictEqual(h.closed, [20, 21], 'closed at once, not when its body has been skipped');
  read(h.framer, big.subarray(100, 600), [22]); // inside its body
  assert.deepStrictEqual(h.closed, [20, 21, 22]);
  read(h.framer, big.subarray(600), [23]); // ends exactly at its end
  assert.deepStrictEqual(h.closed, [20, 21, 22, 23]);
  read(h.framer, ok, [24]);
  assert.deepStrictEqual(
    h.frames.map((f) => [f.msgId, f.rejected, f.fds]),
    [
      [1, Errno.EINVAL, []],
      [2, Errno.EMSGSIZE, []],
      [3, undefined, [24]],
    ],
  );
});

test('a read spanning the end of a skipped body and the next message gives its fds to the next message', () => {
  const h = harness(256);
  const big = encodeMsg(msg({ msgId: 2, len: 1000 }));
  const ok = encodeMsg(msg({ msgId: 3, len: 8 }));
  read(h.framer, big.subarray(0, 500));
  read(h.framer, Buffer.concat([big.subarray(500), ok]), [30, 31]);
  assert.deepStrictEqual(h.closed, []);
  assert.deepStrictEqual(h.frames.map((f) => [f.msgId, f.fds]), [
    [2, []],
    [3, [30, 31]],
  ]);
});

test('more fds than maxFds: the message is refused with EINVAL and all its fds closed', () => {
  const h = harness(4096, 2);
  const m = msg({ msgId: 1, len: 4 });
  const n = msg({ msgId: 2, len: 4 });
  read(h.framer, encodeMsg(m), [40, 41, 42]);
  read(h.framer, encodeMsg(n), [43, 44]);
  assert.deepStrictEqual(h.closed.sort(), [40, 41, 42]);
  assert.deepStrictEqual(h.frames, [
    { ...expectedFrame(m, 4096), payload: Buffer.alloc(0), rejected: Errno.EINVAL },
    expectedFrame(n, 4096, [43, 44]),
  ]);
});

test('a message brought a byte at a time, each with descriptors: closed as soon as they exceed maxFds, the message refused when it ends', () => {
  const h = harness(1 << 20, 2);
  const big = encodeMsg(msg({ msgId: 1, len: 1000 }));
  let fd = 100;
  read(h.framer, big.subarray(0, 16), [fd++, fd++]); // the limit: kept
  assert.deepStrictEqual(h.closed, []);
  for (let i = 16; i < 40; i++) {
    read(h.framer, big.subarray(i, i + 1), [fd++, fd++, fd++]);
    assert.equal(fd - 100 - h.closed.length, 0, `byte ${i}: all closed at once`);
  }
  read(h.framer, big.subarray(40), [fd++]);
  assert.equal(h.closed.length, fd - 100);
  const next = msg({ msgId: 2, len: 4 });
  read(h.framer, encodeMsg(next), [500, 501]);
  assert.deepStrictEqual(
    h.frames.map((f) => [f.msgId, f.rejected, f.fds]),
    [
      [1, Errno.EINVAL, []],
      [2, undefined, [500, 501]],
    ],
  );
});

test('descriptors inside a body being skipped (msg_size 0xffffffff) are closed at once', () => {
  const h = harness(4096, 8);
  const hdr = Buffer.alloc(HEADER_SIZE);
  hdr.writeUInt16LE(9, 0);
  hdr.writeUInt32LE(0xffffffff, 4);
  read(h.framer, hdr, [1]);
  for (let i = 0; i < 10; i++) read(h.framer, Buffer.alloc(4096), [10 + i]);
  assert.deepStrictEqual(h.closed, [1, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]);
  assert.deepStrictEqual(h.frames.map((f) => [f.msgId, f.rejected]), [[9, Errno.EMSGSIZE]]);
});

test('fds split over two reads of one message count together against maxFds', () => {
  const h = harness(4096, 2);
  const b = encodeMsg(msg({ msgId: 1, len: 40 }));
  read(h.framer, b.subarray(0, 20), [50, 51]);
  read(h.framer, b.subarray(20), [52]);
  assert.equal(h.frames[0]!.rejected, Errno.EINVAL);
  assert.deepStrictEqual(h.closed.sort(), [50, 51, 52]);
});

test('the kernel truncation flag reaches the frame', () => {
  const h = harness();
  read(h.framer, encodeMsg(msg({ msgId: 1 })), [60], true);
  assert.equal(h.frames[0]!.fdsTruncated, true);
  assert.deepStrictEqual(h.frames[0]!.fds, [60]);
});

test('destroy() closes descriptors nobody claimed and stops delivery', () => {
  const h = harness();
  const b = encodeMsg(msg({ msgId: 1, len: 100 }));
  read(h.framer, b.subarray(0, 50), [70, 71]);
  read(h.framer, b.subarray(50, 60), [72]);
  assert.deepStrictEqual(h.closed, []);
  h.framer.destroy();
  assert.deepStrictEqual(h.closed, [70, 71, 72]);
  h.framer.push(b.subarray(60));
  assert.equal(h.frames.length, 0);
});

test('destroy() from inside onFrame stops the messages behind it', () => {
  const closed: number[] = [];
  const seen: number[] = [];
  const fr: Framer = new Framer(
    (f) => {
      seen.push(f.msgId);
      fr.destroy();
    },
    { maxMessageSize: 4096, maxFds: 4, closeFd: (fd) => closed.push(fd) },
  );
  const s = Buffer.concat([encodeMsg(msg({ msgId: 1 })), encodeMsg(msg({ msgId: 2 }))]);
  read(fr, s.subarray(0, 30));
  read(fr, s.subarray(30), [80]);
  assert.deepStrictEqual(seen, [1]);
  assert.deepStrictEqual(closed, [80]);
});

test('a large message grows the buffer; limits can be raised at run time', () => {
  const h = harness(1024);
  const big = msg({ msgId: 1, len: 4 * 1024 * 1024, seed: 77 });
  h.framer.setMaxMessageSize(8 * 1024 * 1024);
  const s = encodeMsg(big);
  let off = 0;
  while (off < s.length) {
    const n = Math.min(100_000, s.length - off);
    h.framer.push(s.subarray(off, off + n));
    off += n;
  }
  assert.equal(h.frames.length, 1);
  assert.ok(h.frames[0]!.payload.equals(big.payload));
  // After it, small messages still frame normally.
  h.framer.push(encodeMsg(msg({ msgId: 2, len: 3 })));
  assert.equal(h.frames[1]!.msgId, 2);
});

// ---------------------------------------------------------------- placement

const PLACE_CMD = 18;
const PLACE_HEAD = 8;
const PLACE_LIMIT = 64 * 1024;

/** Small messages, and large ones (of the command the hook places) around PLACE_MIN. */
const placeMsg: fc.Arbitrary<RawMsg> = fc.oneof(
  fc.record({ msgId: fc.nat(0xffff), len: fc.nat(200), seed: fc.nat(), cmd: fc.constantFrom(9, PLACE_CMD) }),
  fc.record({
    msgId: fc.nat(0xffff),
    len: fc.integer({ min: PLACE_MIN + PLACE_HEAD - 100, max: 3 * PLACE_MIN }),
    seed: fc.nat(),
    cmd: fc.constantFrom(9, PLACE_CMD, PLACE_CMD),
  }),
).map(({ len, seed, ...h }) => ({ ...h, flags: 0, errorNo: 0, payload: pattern(len, seed) }));

/** A framer whose hook places PLACE_CMD bodies (every other one, when `decline`). */
function placingHarness(decline: boolean): Harness & { offers: number; placedInto: Buffer[] } {
  const h = { ...harness(PLACE_LIMIT, 64), offers: 0, placedInto: [] as Buffer[] };
  h.framer = new Framer(
    (f) => {
      const saved = saveFrame(f);
      if (f.placed) {
        assert.equal(f.payload.length, PLACE_HEAD);
        assert.ok(h.placedInto.includes(f.placed), 'placed is the hook\'s own buffer');
        saved.payload = Buffer.concat([saved.payload, f.placed]);
      }
      h.frames.push(saved);
    },
    { maxMessageSize: PLACE_LIMIT, maxFds: 64, closeFd: (fd) => h.closed.push(fd) },
  );
  h.framer.placement = {
    headLen: PLACE_HEAD,
    place(cmd, _flags, msgSize, head) {
      assert.equal(head.length, PLACE_HEAD);
      h.offers++;
      if (cmd !== PLACE_CMD || (decline && h.offers % 2 === 0)) return null;
      const b = Buffer.alloc(msgSize - HEADER_SIZE - PLACE_HEAD);
      h.placedInto.push(b);
      return b;
    },
  };
  return h;
}

test('placement: bodies received into the hook\'s buffers frame exactly as buffered ones, whatever the reads and wherever the fds', () => {
  fc.assert(
    fc.property(fc.array(placeMsg, { minLength: 1, maxLength: 8 }), cuts, fc.boolean(), (msgs, fr, decline) => {
      const stream = Buffer.concat(msgs.map(encodeMsg));
      const sizes = splitAt(stream.length, fr);
      // the same reads, each bringing one descriptor, with and without placement
      const feed = (framer: Framer): void => {
        let off = 0;
        sizes.forEach((n, i) => {
          read(framer, stream.subarray(off, off + n), [1000 + i]);
          off += n;
        });
      };
      const plain = harness(PLACE_LIMIT, 64);
      feed(plain.framer);
      const placed = placingHarness(decline);
      feed(placed.framer);
      assert.deepStrictEqual(placed.frames, plain.frames);
      assert.equal(placed.framer.buffered, 0);
      // pushed (the node:net transport) as well
      const pushed = placingHarness(decline);
      let off = 0;
      for (const n of sizes) {
        pushed.framer.push(stream.subarray(off, off + n));
        off += n;
      }
      assert.deepStrictEqual(pushed.frames.map((f) => f.payload), plain.frames.map((f) => f.payload));
    }),
    { numRuns: Math.max(50, RUNS / 3) },
  );
});

test('placement: offered once per message, only for large bodies not yet complete; the bytes read before land in the buffer too', () => {
  const h = placingHarness(false);
  const small = encodeMsg(msg({ msgId: 1, cmd: PLACE_CMD, len: PLACE_MIN - 1 }));
  const whole = encodeMsg(msg({ msgId: 2, cmd: PLACE_CMD, len: 2 * PLACE_MIN }));
  read(h.framer, Buffer.concat([small, whole])); // complete in one read: not offered
  assert.equal(h.offers, 0);
  const big = msg({ msgId: 3, cmd: PLACE_CMD, len: 3 * PLACE_MIN, seed: 9 });
  const s = encodeMsg(big);
  read(h.framer, s.subarray(0, HEADER_SIZE + 4)); // head not complete: not yet
  assert.equal(h.offers, 0);
  read(h.framer, s.subarray(HEADER_SIZE + 4, 5000));
  assert.equal(h.offers, 1);
  assert.equal(h.framer.buffered, HEADER_SIZE + PLACE_HEAD, 'the body bytes read so far moved to the placement buffer');
  for (let off = 5000; off < s.length; off += 7000) read(h.framer, s.subarray(off, Math.min(s.length, off + 7000)));
  assert.equal(h.offers, 1);
  assert.equal(h.frames.length, 3);
  assert.ok(h.frames[2]!.payload.equals(big.payload));
  assert.equal(h.framer.buffered, 0);
});
