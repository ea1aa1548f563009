// Where libvfio-user is weak on the wire, and we are not: a header that
// arrives in two reads (libvfio-user drops such a client), a rejected header
// followed by more messages in the same write (libvfio-user leaves the body
// in the socket and parses it as headers), and MIG_DATA_WRITE of 64 KiB or
// more (libvfio-user's framing breaks).  Each over a raw socket.
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { createBigState } from '../src/devices/bigstate.js';
import { createSample } from '../src/devices/sample.js';
import { Command, Errno, HEADER_SIZE, HeaderFlag, MigState, PciRegion } from '../src/protocol/constants.js';
import { writeHeader } from '../src/protocol/header.js';
import { RegionAccessStruct } from '../src/protocol/messages/region.js';
import { version } from '../src/protocol/messages/version.js';
import { FrameQueue } from './helpers/endpoints.js';
import { serve } from './helpers/server.js';
import { NetEndpoint } from '../src/transport/net-endpoint.js';
import { createConnection } from 'node:net';

function message(id: number, cmd: number, payload: Buffer, msgSize = HEADER_SIZE + payload.length): Buffer {
  const h = Buffer.alloc(HEADER_SIZE);
  writeHeader(h, id, cmd, msgSize, HeaderFlag.TYPE_COMMAND, 0);
  return Buffer.concat([h, payload]);
}

/** A raw connection: we write bytes ourselves (node:net buffers them), replies come through a framer. */
async function rawConnect(path: string): Promise<{ q: FrameQueue; write(b: Buffer): void; close(): void }> {
  const sock = createConnection(path);
  await new Promise<void>((r) => sock.once('connect', () => r()));
  const q = new FrameQueue(new NetEndpoint(sock, { maxMessageSize: 1 << 22, maxFds: 0 }));
  return { q, write: (b) => void sock.write(b), close: () => sock.destroy() };
}

const pause = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const versionMsg = message(1, Command.VERSION, version.encode({ major: 0, minor: 2, json: '{}', nul: true }));

test('a header that arrives in two reads (and one split byte by byte) is served', async () => {
  const s = createSample();
  const srv = await serve(s.device);
  const c = await rawConnect(srv.path);
  c.write(versionMsg.subarray(0, 7));
  await pause(20);
  c.write(versionMsg.subarray(7));
  assert.equal((await c.q.next()).cmd, Command.VERSION);
  const read = message(2, Command.REGION_READ, RegionAccessStruct.encode({ offset: 0n, region: PciRegion.CONFIG, count: 2 }));
  for (const byte of read) {
    c.write(Buffer.from([byte]));
    await pause(1);
  }
  const r = await c.q.next();
  assert.equal(r.flags & HeaderFlag.ERROR, 0);
  assert.equal(r.payload.readUInt16LE(RegionAccessStruct.size), 0xdead);
  c.close();
  await srv.close();
});

test('a rejected header does not desynchronise the stream: the messages after it in the same write are answered', async () => {
  const s = createSample();
  const srv = await serve(s.device);
  const c = await rawConnect(srv.path);
  c.write(versionMsg);
  await c.q.next();
  const body = Buffer.alloc(4096, 0x41); // looks like headers if misparsed
  const oversize = message(2, Command.REGION_WRITE, body, HEADER_SIZE + (2 << 20) + body.length);
  const filler = Buffer.alloc((2 << 20) - 0, 0x42); // the rest of the declared body
  const tooShort = Buffer.alloc(HEADER_SIZE);
  writeHeader(tooShort, 3, Command.REGION_READ, 8, 0, 0); // msg_size below 16
  const good = message(4, Command.REGION_READ, RegionAccessStruct.encode({ offset: 0n, region: PciRegion.CONFIG, count: 4 }));
  c.write(Buffer.concat([oversize, filler, tooShort, good]));
  const r2 = await c.q.next();
  assert.deepEqual([r2.msgId, r2.flags & HeaderFlag.ERROR ? r2.errorNo : 0], [2, Errno.EINVAL]);
  const r3 = await c.q.next();
  assert.deepEqual([r3.msgId, r3.errorNo], [3, Errno.EINVAL]);
  const r4 = await c.q.next();
  assert.equal(r4.msgId, 4);
  assert.equal(r4.flags & HeaderFlag.ERROR, 0);
  assert.equal(r4.payload.readUInt16LE(RegionAccessStruct.size + 2), 0xbeef);
  c.close();
  await srv.close();
});

test('MIG_DATA_WRITE of 64 KiB, 256 KiB and 1 MiB chunks arrives whole', async () => {
  const src = createBigState({ stateMib: 3 });
  const dst = createBigState({ stateMib: 3, seed: 99 });
  const s1 = await serve(src.device);
  const s2 = await serve(dst.device);
  const a = await s1.connect();
  const b = await s2.connect();
  await a.setMigrationState(MigState.STOP_COPY);
  await b.setMigrationState(MigState.RESUMING);
  const sizes = [64 * 1024, 256 * 1024, 1024 * 1024];
  let i = 0;
  for (;;) {
    const chunk = await a.migDataRead(sizes[i++ % sizes.length]!);
    if (chunk.length === 0) break;
    await b.migDataWrite(chunk);
  }
  await b.setMigrationState(MigState.STOP);
  assert.equal(dst.receivedCrc, src.expectedCrc);
  a.close();
  b.close();
  await s1.close();
  await s2.close();
});
