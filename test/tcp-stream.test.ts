// The cross-host migration stream (client/tcp-stream.ts) over real sockets:
// the reader parses any split of a stream the same way and places PAGES
// where they belong; ranges larger than a chunk go across; a receiver that
// refuses something tells the sender why, and the sender fails promptly
// (also when the receiver just goes away); PAGES outside the layout the
// destination mapped are refused; a 1 GiB guest migrates over loopback.
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { type Server, type Socket, connect as tcpConnect, createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { after, afterEach, describe, test } from 'node:test';
import fc from 'fast-check';
import type { VfioUserClient } from '../src/client/client.js';
import { MigrationError, migrate } from '../src/client/migrate.js';
import { crc32c } from '../src/client/stream-crc.js';
import { tlsOptionsFromFiles } from '../src/client/stream-tls.js';
import { BrokenStreamError, ChunkReader, ChunkType, FLAG_CRC32C, FLAG_UNCHECKED, MAX_CHUNK, TcpTarget, encodeChunkHeader, receiveMigrations } from '../src/client/tcp-stream.js';
import { BAR1_SIZE, createSample } from '../src/devices/sample.js';
import { native } from '../src/native/index.js';
import { Errno, MigState } from '../src/protocol/constants.js';
import { VfuError } from '../src/protocol/errors.js';
import { serve, until } from './helpers/server.js';

const MiB = 1024 * 1024;

/** What each test opened: closed after it, pass or fail. */
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function frame(type: number, payload: Buffer): Buffer {
  return Buffer.concat([encodeChunkHeader(type, payload), payload]);
}

function pagesPayload(iova: number, data: Buffer): Buffer {
  const h = Buffer.alloc(8);
  h.writeBigUInt64LE(BigInt(iova));
  return Buffer.concat([h, data]);
}

describe('ChunkReader', () => {
  const chunkArb = fc.oneof(
    fc.record({ type: fc.constant<number>(ChunkType.DEVICE), data: fc.uint8Array({ maxLength: 300 }) }),
    fc.record({ type: fc.constant<number>(ChunkType.ACK), data: fc.uint8Array({ maxLength: 40 }) }),
    fc.record({ type: fc.constant<number>(ChunkType.FINISH), data: fc.constant(new Uint8Array(0)) }),
    fc.record({ type: fc.constant<number>(ChunkType.PAGES), iova: fc.integer({ min: 0, max: 4000 }), data: fc.uint8Array({ maxLength: 96 }) }),
  );
  const split = (b: Buffer, cuts: number[]): Buffer[] => {
    const at = [...new Set(cuts.map((c) => c % (b.length + 1)))].sort((x, y) => x - y);
    const parts: Buffer[] = [];
    let prev = 0;
    for (const c of [...at, b.length]) {
      parts.push(b.subarray(prev, c));
      prev = c;
    }
    return parts;
  };

  test('any split of a stream gives the same chunks; PAGES land at their IOVA', () => {
    fc.assert(
      fc.property(fc.array(chunkArb, { maxLength: 12 }), fc.array(fc.nat(), { maxLength: 20 }), (chunks, cuts) => {
        const mem = Buffer.alloc(4096 + 96);
        const want = Buffer.alloc(mem.length);
        const wire = Buffer.concat(
          chunks.map((c) => {
            const data = Buffer.from(c.data);
            if (c.type !== ChunkType.PAGES) return frame(c.type, data);
            data.copy(want, (c as { iova: number }).iova);
            return frame(c.type, pagesPayload((c as { iova: number }).iova, data));
          }),
        );
        const r = new ChunkReader((iova, length) => mem.subarray(iova, iova + length));
        const got = split(wire, cuts).flatMap((p) => r.push(p));
        assert.equal(r.pending, 0);
        assert.deepEqual(
          got.map((c) => [c.type, c.seq]),
          chunks.map((c, i) => [c.type, i]),
        );
        for (const [i, c] of chunks.entries()) {
          if (c.type === ChunkType.PAGES) assert.equal(got[i]!.placed!.length, c.data.length);
          else assert.deepEqual(got[i]!.payload, Buffer.from(c.data));
        }
        // pages written in stream order: later chunks win, as on the destination
        const expect = Buffer.alloc(mem.length);
        for (const c of chunks) if (c.type === ChunkType.PAGES) Buffer.from(c.data).copy(expect, (c as { iova: number }).iova);
        assert.deepEqual(mem, expect);
      }),
      { numRuns: 300 },
    );
  });

  test('a damaged payload byte is always refused (CRC, or a PAGES range the placer refuses)', () => {
    fc.assert(
      fc.property(chunkArb.filter((c) => c.data.length > 0), fc.nat(), fc.integer({ min: 1, max: 255 }), fc.array(fc.nat(), { maxLength: 6 }), (c, pos, flip, cuts) => {
        const data = Buffer.from(c.data);
        const payload = c.type === ChunkType.PAGES ? pagesPayload((c as { iova: number }).iova, data) : data;
        const wire = frame(c.type, payload);
        wire[16 + (pos % payload.length)]! ^= flip;
        const mem = Buffer.alloc(4096 + 96);
        const r = new ChunkReader((iova, length) => {
          if (iova + length > mem.length) throw new BrokenStreamError('outside');
          return mem.subarray(iova, iova + length);
        });
        assert.throws(() => split(wire, cuts).forEach((p) => r.push(p)), BrokenStreamError);
      }),
      { numRuns: 300 },
    );
  });

  test('a chunk without CRC (UNCHECKED) is taken over TLS only; unknown flags and reserved bits never', () => {
    const payload = Buffer.from('device bytes');
    const unchecked = frame(ChunkType.DEVICE, payload);
    unchecked.writeUInt8(FLAG_UNCHECKED, 5);
    unchecked.writeUInt32LE(0, 12);
    assert.throws(() => new ChunkReader().push(unchecked), /chunk 0: no CRC-32, which only a TLS stream may omit/);
    assert.deepEqual(new ChunkReader(undefined, true).push(unchecked)[0]!.payload, payload);
    const withCrc = Buffer.from(unchecked);
    withCrc.writeUInt32LE(0x1234, 12); // UNCHECKED must carry a zero CRC field
    assert.throws(() => new ChunkReader(undefined, true).push(withCrc), BrokenStreamError);
    for (const [at, v] of [[5, 0x80], [5, FLAG_UNCHECKED | FLAG_CRC32C], [6, 1], [7, 1]] as const) {
      const bad = frame(ChunkType.DEVICE, payload);
      bad.writeUInt8(v, at);
      assert.throws(() => new ChunkReader(undefined, true).push(bad), /reserved header bits set/);
    }
  });

  test('a chunk with a CRC-32C (flag CRC32C) is checked against it, on any stream; one damaged byte is refused', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 1, maxLength: 20_000 }), fc.nat(), fc.integer({ min: 1, max: 255 }), (data, pos, flip) => {
        const payload = Buffer.from(data);
        const wire = Buffer.concat([Buffer.alloc(16), payload]);
        wire.writeUInt32LE(0x4d554656, 0);
        wire.writeUInt8(ChunkType.DEVICE, 4);
        wire.writeUInt8(FLAG_CRC32C, 5);
        wire.writeUInt32LE(payload.length, 8);
        wire.writeUInt32LE(crc32c(payload), 12);
        for (const tls of [false, true]) assert.deepEqual(new ChunkReader(undefined, tls).push(wire)[0]!.payload, payload);
        wire[16 + (pos % payload.length)]! ^= flip;
        assert.throws(() => new ChunkReader().push(wire), /CRC mismatch/);
      }),
      { numRuns: 100 },
    );
  });

  test('a chunk announcing more than 16 MiB is refused at its header', () => {
    const h = encodeChunkHeader(ChunkType.DEVICE, Buffer.alloc(0));
    h.writeUInt32LE(MAX_CHUNK + 1, 8);
    assert.throws(() => new ChunkReader().push(h), /chunk 0: length 16777217 too large/);
  });
});

/** Two sample servers, a source client with `guestBytes` of RAM mapped, a receiver in this process. */
async function setup(guestBytes: number, opts: { dstRejectsData?: boolean | 'stop-copy' } = {}) {
  const a = createSample();
  const b = createSample();
  if (opts.dstRejectsData) {
    const cb = b.device.migration!.callbacks;
    const take = cb.writeData;
    let writes = 0;
    cb.writeData = (data) => {
      // 'stop-copy': the pre-copy data (the first write) is taken
      if (opts.dstRejectsData === 'stop-copy' && writes++ === 0) return take(data);
      throw new VfuError(Errno.EIO, 'injected: destination rejects data');
    };
  }
  const sa = await serve(a.device);
  const sb = await serve(b.device);
  const src = await sa.connect();
  const range = src.memory.add(0x100000, guestBytes);
  await src.dmaMap({ iova: 0x100000, size: guestBytes });
  let dst: VfioUserClient | null = null;
  let outcome: { ok: boolean; error?: Error; guestBytes: number } | null = null;
  const receiver = await receiveMigrations('127.0.0.1', 0, {
    connectDestination: async () => (dst = await sb.connect()),
    onDone: (r) => (outcome = r),
  });
  const port = (receiver.address() as { port: number }).port;
  let closed = false;
  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    receiver.close();
    dst?.close();
    await sa.close();
    await sb.close();
  };
  cleanups.push(close);
  return {
    a,
    b,
    src,
    range,
    port,
    dst: () => dst,
    outcome: () => outcome as { ok: boolean; error?: Error; guestBytes: number } | null,
    close,
  };
}

/** Marks every 4 KiB page with its number (cheap, and any misplaced page shows). */
function markPages(b: Buffer): void {
  for (let o = 0; o + 8 <= b.length; o += 4096) b.writeDoubleLE(o / 4096 + 0.5, o);
}

describe('migration over loopback TCP', () => {
  /**
   * A sample destination behind a receiver in this process, whose client
   * `wrap` sees first (to record or refuse requests), and a target
   * connected to it; all closed after the test.
   */
  async function wrappedReceiver(wrap: (c: VfioUserClient) => void): Promise<{ b: ReturnType<typeof createSample>; target: TcpTarget }> {
    const b = createSample();
    const sb = await serve(b.device);
    let dst: VfioUserClient | null = null;
    const receiver = await receiveMigrations('127.0.0.1', 0, {
      connectDestination: async () => {
        const c = await sb.connect();
        wrap(c);
        return (dst = c);
      },
    });
    const target = new TcpTarget(`tcp://127.0.0.1:${(receiver.address() as { port: number }).port}`);
    cleanups.push(async () => {
      target.close();
      receiver.close();
      dst?.close();
      await sb.close();
    });
    return { b, target };
  }

  test('a contiguous range larger than a chunk: split on the way, all of it arrives', async () => {
    const s = await setup(40 * MiB);
    randomBytes(MiB).copy(s.range.bytes);
    markPages(s.range.bytes.subarray(MiB));
    const target = new TcpTarget(`tcp://127.0.0.1:${s.port}`);
    const report = await migrate(s.src, target, { maxRounds: 1 });
    target.close();
    assert.equal(report.guestBytes, 40 * MiB);
    assert.ok(report.overlapped, 'the device stop-copy data was read alongside the final pages');
    await until(() => s.outcome() !== null);
    assert.equal(s.outcome()!.ok, true);
    assert.equal(s.outcome()!.guestBytes, 40 * MiB);
    assert.ok(s.dst()!.memory.view(0x100000, 40 * MiB).equals(s.range.bytes), 'destination RAM equals the source');
    assert.equal(s.b.device.migration!.state, MigState.RUNNING);
    await s.close();
  });

  test('scattered pages, packed many to a send buffer, with SYNCs between: each SYNC answers once every page before it is in place', async () => {
    const size = 8 * MiB;
    const s = await setup(size);
    const target = new TcpTarget(`tcp://127.0.0.1:${s.port}`);
    cleanups.push(() => target.close());
    await target.begin({ ranges: [{ iova: 0x100000, size }], irqs: [] });
    const want = Buffer.alloc(size);
    for (let i = 0; i < 1500; i++) {
      const at = ((i * 769) % 2048) * 4096;
      const data = randomBytes(Math.min(4096 * (1 + (i % 3)), size - at));
      data.copy(want, at);
      await target.guestPages(0x100000 + at, data);
      if (i % 300 === 299) {
        await target.drain();
        assert.ok(s.dst()!.memory.view(0x100000, size).equals(want), `after SYNC ${(i + 1) / 300}: the destination holds every page sent`);
      }
    }
  });

  test('stop-copy device data, the final pages and FINISH leave in one write, and the destination runs with them', async () => {
    const size = 4 * MiB;
    const s = await setup(size);
    const target = new TcpTarget(`tcp://127.0.0.1:${s.port}`);
    cleanups.push(() => target.close());
    await target.begin({ ranges: [{ iova: 0x100000, size }], irqs: [] });
    // the sample's stop-copy image: BAR1, then BAR0 (0: no timer armed)
    const image = Buffer.concat([randomBytes(BAR1_SIZE), Buffer.alloc(8)]);
    const page = randomBytes(4096);
    const before = target.writes;
    await target.deviceData(image);
    await target.guestPages(0x100000 + 8192, page);
    assert.equal(target.writes, before, 'the device data and the page wait for what follows');
    await target.finish();
    assert.equal(target.writes - before, 1, 'device data, page and FINISH in one write');
    // and every answer (ACK, RESULT) came through the addon too: Node's
    // socket, which reads ahead from connect, took none of their bytes
    if (native) assert.equal((target as unknown as { sock: Socket }).sock.bytesRead, 0);
    assert.ok(s.b.bar1.equals(image.subarray(0, BAR1_SIZE)), 'the destination restored the device data');
    assert.ok(s.dst()!.memory.view(0x100000 + 8192, 4096).equals(page), 'the page is in place');
    assert.equal(s.b.device.migration!.state, MigState.RUNNING);
  });

  test('a sender that keeps the stream open after the RESULT: the receiver reports the success anyway', async () => {
    const s = await setup(4 * MiB);
    const target = new TcpTarget(`tcp://127.0.0.1:${s.port}`);
    cleanups.push(() => target.close());
    await migrate(s.src, target, { maxRounds: 1 });
    await until(() => s.outcome() !== null);
    assert.equal(s.outcome()!.ok, true);
    assert.equal(s.b.device.migration!.state, MigState.RUNNING);
  });

  test('touch() before the window: the receiver makes a request to the destination that changes nothing, then answers; a refusal of it fails nothing', async () => {
    const size = 4 * MiB;
    for (const refuse of [false, true]) {
      const sets: number[] = [];
      const { b, target } = await wrappedReceiver((c) => {
        const set = c.setMigrationState.bind(c);
        // after HELLO's RESUMING: record (and, with `refuse`, refuse) what comes
        c.setMigrationState = (st: number) => {
          sets.push(st);
          return refuse && sets.length > 1 && st === MigState.RESUMING ? Promise.reject(new VfuError(Errno.EINVAL, 'injected')) : set(st);
        };
      });
      await target.begin({ ranges: [{ iova: 0x100000, size }], irqs: [] });
      assert.deepEqual(sets, [MigState.RESUMING], `refuse=${refuse}: HELLO enters RESUMING`);
      await target.touch();
      assert.deepEqual(sets, [MigState.RESUMING, MigState.RESUMING], `refuse=${refuse}: the touch is a SET of the state the destination is in, before the answer`);
      assert.equal(b.device.migration!.state, MigState.RESUMING);
      await target.deviceData(Buffer.concat([randomBytes(BAR1_SIZE), Buffer.alloc(8)]));
      await target.finish();
      assert.equal(b.device.migration!.state, MigState.RUNNING, `refuse=${refuse}: the migration goes on`);
    }
  });

  test('the receiver writes stop-copy device data that came with FINISH in one batch with STOP and RUNNING', async () => {
    const calls: string[] = [];
    const { b, target } = await wrappedReceiver((c) => {
      let depth = 0;
      const batch = c.batch.bind(c);
      c.batch = <T>(fn: () => T): T => {
        depth++;
        calls.push('[');
        try {
          return batch(fn);
        } finally {
          depth--;
          calls.push(']');
        }
      };
      const write = c.migDataWrite.bind(c);
      c.migDataWrite = (d: Buffer) => {
        calls.push(`write ${d.length}${depth > 0 ? '' : ' alone'}`);
        return write(d);
      };
      const set = c.setMigrationState.bind(c);
      c.setMigrationState = (st: number) => {
        calls.push(`SET ${st}${depth > 0 ? '' : ' alone'}`);
        return set(st);
      };
    });
    await target.begin({ ranges: [{ iova: 0x100000, size: 4 * MiB }], irqs: [] });
    calls.length = 0;
    const image = Buffer.concat([randomBytes(BAR1_SIZE), Buffer.alloc(8)]);
    await target.deviceData(image);
    await target.finish();
    assert.deepEqual(calls, ['[', `write ${image.length}`, `SET ${MigState.STOP}`, `SET ${MigState.RUNNING}`, ']']);
    assert.ok(b.bar1.equals(image.subarray(0, BAR1_SIZE)), 'the destination restored the device data');
    assert.equal(b.device.migration!.state, MigState.RUNNING);
  });

  test("the receiver's refusal reaches the sender at once, with its reason; both ends roll back", async () => {
    const s = await setup(4 * MiB, { dstRejectsData: true });
    const target = new TcpTarget(`tcp://127.0.0.1:${s.port}`);
    await assert.rejects(migrate(s.src, target, { maxRounds: 1 }), (e: unknown) => {
      assert.ok(e instanceof MigrationError, String(e));
      assert.match(e.message, /the receiver aborted: .*injected: destination rejects data/);
      return true;
    });
    await until(() => s.outcome() !== null);
    assert.equal(s.outcome()!.ok, false);
    assert.equal(await s.src.migrationState(), MigState.RUNNING);
    await until(() => s.b.device.migration!.state === MigState.RUNNING && s.b.device.dma.count === 0);
    await s.close();
  });

  test('stop-copy device state the destination refuses (sent without waiting, FINISH right behind it): the migration fails, both ends roll back', async () => {
    const s = await setup(4 * MiB, { dstRejectsData: 'stop-copy' });
    const target = new TcpTarget(`tcp://127.0.0.1:${s.port}`);
    await assert.rejects(migrate(s.src, target, { maxRounds: 1 }), (e: unknown) => {
      assert.ok(e instanceof MigrationError, String(e));
      assert.match(e.message, /injected: destination rejects data/);
      return true;
    });
    await until(() => s.outcome() !== null);
    assert.equal(s.outcome()!.ok, false);
    assert.match(s.outcome()!.error!.message, /injected: destination rejects data/);
    assert.equal(await s.src.migrationState(), MigState.RUNNING);
    await until(() => s.b.device.migration!.state === MigState.RUNNING && s.b.device.dma.count === 0);
    await s.close();
  });

  test('a receiver that goes away mid-stream: the sender fails instead of waiting forever', async () => {
    const s = await setup(64 * MiB);
    // a fake receiver: accepts HELLO, then hangs up once pages flow
    const socks: Socket[] = [];
    const fake: Server = createServer((sock) => {
      socks.push(sock);
      let seen = 0;
      let answered = false;
      const r = new ChunkReader();
      sock.on('data', (d: Buffer) => {
        seen += d.length;
        if (!answered && r.push(d).some((c) => c.type === ChunkType.HELLO)) {
          answered = true;
          sock.write(frame(ChunkType.ACK, Buffer.from('{"ok":true}')));
        }
        if (seen > 8 * MiB) sock.destroy();
      });
      sock.on('error', () => {});
    });
    await new Promise<void>((r) => fake.listen(0, '127.0.0.1', r));
    cleanups.push(() => {
      for (const x of socks) x.destroy();
      fake.close();
    });
    const target = new TcpTarget(`tcp://127.0.0.1:${(fake.address() as { port: number }).port}`);
    await assert.rejects(migrate(s.src, target, { maxRounds: 1 }), (e: unknown) => {
      assert.ok(e instanceof MigrationError, String(e));
      assert.match(e.message, /pre-copy round 0: .*(closed the connection|ECONNRESET|EPIPE)/);
      return true;
    });
    assert.equal(await s.src.migrationState(), MigState.RUNNING);
  });
});

const psk = join(resolve(dirname(fileURLToPath(import.meta.url)), '..', '..'), 'test', 'fixtures', 'tls', 'source.psk');

describe('a hostile sender', () => {
  /** A receiver in this process and a raw connection to it (over TLS-PSK with `tls`: the receiver then decrypts into its own buffers). */
  async function hostile(layout: { iova: number; size: number }[], tls = false) {
    const b = createSample();
    const sb = await serve(b.device);
    let dst: VfioUserClient | null = null;
    let outcome: { ok: boolean; error?: Error } | null = null;
    const receiver = await receiveMigrations('127.0.0.1', 0, {
      connectDestination: async () => (dst = await sb.connect()),
      onDone: (r) => (outcome = r),
      ...(tls ? { tls: tlsOptionsFromFiles({ tlsPskFile: psk }, 'server')! } : {}),
    });
    const port = (receiver.address() as { port: number }).port;
    const sock: Socket = tls ? tlsConnect({ host: '127.0.0.1', port, ...tlsOptionsFromFiles({ tlsPskFile: psk }, 'client')! }) : tcpConnect({ host: '127.0.0.1', port });
    await new Promise<void>((r) => sock.once(tls ? 'secureConnect' : 'connect', () => r()));
    const back = new ChunkReader();
    const got: { type: number; text: string }[] = [];
    sock.on('data', (d: Buffer) => got.push(...back.push(d).map((c) => ({ type: c.type, text: c.payload.toString('utf8') }))));
    cleanups.push(async () => {
      sock.destroy();
      receiver.close();
      dst?.close();
      await sb.close();
    });
    sock.write(frame(ChunkType.HELLO, Buffer.from(JSON.stringify({ version: 1, layout: { ranges: layout, irqs: [] } }))));
    await until(() => got.some((c) => c.type === ChunkType.ACK));
    return {
      b,
      sock,
      got,
      dst: () => dst!,
      outcome: () => outcome as { ok: boolean; error?: Error } | null,
    };
  }

  for (const [what, iova, size, tls] of [
    ['below the mapped range', 0x80000, 4096, false],
    ['across its end', 0x100000 + MiB - 4096, 8192, false],
    ['far above it (2^52)', 2 ** 52, 4096, false],
    ['beyond any address (2^64 - 4096)', 2 ** 64 - 4096, 4096, false],
    ['below the mapped range, over TLS', 0x80000, 4096, true],
    ['across its end, over TLS', 0x100000 + MiB - 64 * 1024, 128 * 1024, true],
  ] as const) {
    test(`PAGES ${what} are refused, nothing written, the destination reset and the sender told`, async () => {
      const h = await hostile([{ iova: 0x100000, size: MiB }], tls);
      assert.equal(h.b.device.migration!.state, MigState.RESUMING);
      const mem = h.dst().memory.view(0x100000, MiB);
      // a small chunk and a large one inside (over TLS: staged, then decrypted in place), then the refused one
      h.sock.write(frame(ChunkType.PAGES, pagesPayload(0x100000, Buffer.alloc(4096, 0x11))));
      h.sock.write(frame(ChunkType.PAGES, pagesPayload(0x100000 + 4096, Buffer.alloc(64 * 1024, 0x33))));
      h.sock.write(frame(ChunkType.PAGES, pagesPayload(iova, Buffer.alloc(size, 0x22))));
      await until(() => h.outcome() !== null);
      assert.equal(h.outcome()!.ok, false);
      assert.match(h.outcome()!.error!.message, /chunk 3: PAGES .*(outside the guest memory the destination mapped|beyond any guest memory)/);
      assert.equal(mem.subarray(0, 4096).every((x) => x === 0x11), true, 'the small chunk inside was applied');
      assert.equal(mem.subarray(4096, 4096 + 64 * 1024).every((x) => x === 0x33), true, 'the large chunk inside was applied');
      assert.equal(mem.subarray(4096 + 64 * 1024).every((x) => x === 0), true, 'nothing of the refused one');
      await until(() => h.got.some((c) => c.type === ChunkType.ABORT));
      assert.match(h.got.find((c) => c.type === ChunkType.ABORT)!.text, /chunk 3: PAGES/);
      await until(() => h.b.device.migration!.state === MigState.RUNNING && h.b.device.dma.count === 0);
    });
  }

  test('a HELLO with a malformed layout is refused before anything is mapped', async () => {
    const b = createSample();
    const sb = await serve(b.device);
    let outcome: { ok: boolean; error?: Error } | null = null;
    let connected = 0;
    const receiver = await receiveMigrations('127.0.0.1', 0, {
      connectDestination: async () => (connected++, sb.connect()),
      onDone: (r) => (outcome = r),
    });
    const sock = tcpConnect({ host: '127.0.0.1', port: (receiver.address() as { port: number }).port });
    sock.on('error', () => {});
    sock.write(frame(ChunkType.HELLO, Buffer.from(JSON.stringify({ version: 1, layout: { ranges: [{ iova: -1, size: 1e300 }], irqs: [] } }))));
    await until(() => outcome !== null);
    assert.match(outcome!.error!.message, /bad guest range/);
    assert.equal(connected, 0);
    assert.equal(b.device.dma.count, 0);
    sock.destroy();
    receiver.close();
    await sb.close();
  });
});

describe('a 1 GiB guest', () => {
  const GiB = 1024 * MiB;
  let s: Awaited<ReturnType<typeof setup>> | null = null;
  after(async () => {
    await s?.close();
  });
  test('migrates over loopback TCP, every byte in place (memfd-backed on both ends)', { timeout: 600_000 }, async () => {
    s = await setup(GiB);
    assert.ok(s.range.fd >= 0, 'memfd-backed');
    randomBytes(MiB).copy(s.range.bytes);
    markPages(s.range.bytes.subarray(MiB));
    const target = new TcpTarget(`tcp://127.0.0.1:${s.port}`);
    const report = await migrate(s.src, target, { maxRounds: 1 });
    target.close();
    assert.equal(report.guestBytes, GiB);
    await until(() => s!.outcome() !== null, 60_000);
    assert.equal(s.outcome()!.ok, true, s.outcome()!.error?.message);
    assert.ok(s.dst()!.memory.view(0x100000, GiB).equals(s.range.bytes), 'destination RAM equals the source');
    const r0 = report.rounds[0]!;
    process.stderr.write(`1 GiB over loopback TCP: round 0 ${(r0.guestBytes / r0.ms / 1e6).toFixed(2)} GB/s, downtime ${report.downtimeMs.toFixed(1)} ms\n`);
    await s.close();
    s = null;
  });
});
