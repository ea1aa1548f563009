// The sender of the migration stream (TcpTarget) when the connection is
// reset at a chosen moment, over TCP and over TLS: before the ACK of HELLO,
// while FINISH or a CHECKSUM question waits for the socket to drain behind
// queued guest pages, and while the sender closes after a finished
// migration.  Each time the call in progress fails with a clear error and
// nothing escapes as an unhandled 'error' event or promise rejection (that
// crashed `vfu migrate` with a bare ECONNRESET: the pending reply's promise
// was left rejected when the send before it failed).
import { strict as assert } from 'node:assert';
import { readFileSync } from 'node:fs';
import { type Server, type Socket, connect as tcpConnect, createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { type TLSSocket, createServer as createTlsServer } from 'node:tls';
import { afterEach, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ChunkReader, ChunkType, TcpTarget, encodeChunkHeader } from '../src/client/tcp-stream.js';
import { turns, until } from './helpers/wait.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const pem = (name: string): Buffer => readFileSync(join(root, 'test', 'fixtures', 'tls', name));
const MiB = 1024 * 1024;
const LAYOUT = { ranges: [{ iova: 0x100000, size: 32 * MiB }], irqs: [] };

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c();
});

/** Unhandled errors of this process while a test runs (they would crash `vfu migrate`). */
const escaped: unknown[] = [];
process.on('unhandledRejection', (e) => escaped.push(e));
process.on('uncaughtException', (e) => escaped.push(e));

function frame(type: number, payload: Buffer): Buffer {
  return Buffer.concat([encodeChunkHeader(type, payload), payload]);
}

/**
 * A fake receiver (plain or TLS) behind a TCP proxy.  The receiver answers
 * HELLO (unless told not to), FINISH and CHECKSUM; the proxy can stop
 * reading from the sender (its buffers fill up) and reset the sender's
 * connection, whatever TLS does above it.
 */
async function rig(tls: boolean, answerHello = true) {
  const seen: number[] = [];
  const onChunk = (sock: Socket): void => {
    const r = new ChunkReader(undefined, tls); // over TLS the sender omits CRCs
    sock.on('data', (d: Buffer) => {
      for (const c of r.push(d)) {
        seen.push(c.type);
        if (c.type === ChunkType.HELLO && answerHello) sock.write(frame(ChunkType.ACK, Buffer.from('{"ok":true}')));
        if (c.type === ChunkType.FINISH) sock.write(frame(ChunkType.RESULT, Buffer.from('{"ok":true}')));
        if (c.type === ChunkType.CHECKSUM) sock.write(frame(ChunkType.CHECKSUM, Buffer.from('{"checksum":"x"}')));
      }
    });
    sock.on('error', () => {});
  };
  const receiver: Server = tls
    ? createTlsServer({ cert: pem('receiver.pem'), key: pem('receiver.key'), ca: pem('ca.pem'), minVersion: 'TLSv1.3' }, (s: TLSSocket) => onChunk(s))
    : createServer(onChunk);
  receiver.on('tlsClientError', () => {});
  await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
  const upstream: Socket[] = [];
  let sender: Socket | null = null;
  const proxy = createServer((a) => {
    sender = a;
    const b = tcpConnect({ host: '127.0.0.1', port: (receiver.address() as { port: number }).port });
    upstream.push(b);
    a.pipe(b);
    b.pipe(a);
    for (const x of [a, b]) x.on('error', () => {});
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
  cleanups.push(() => {
    sender?.destroy();
    for (const b of upstream) b.destroy();
    proxy.close();
    receiver.close();
  });
  const port = (proxy.address() as { port: number }).port;
  const target = new TcpTarget(`${tls ? 'tcps' : 'tcp'}://127.0.0.1:${port}`, tls ? { tls: { cert: pem('source.pem'), key: pem('source.key'), ca: pem('ca.pem') } } : {});
  cleanups.push(() => target.close());
  return {
    target,
    seen,
    /** Stops reading from the sender: its socket buffers fill, then its writes queue. */
    hold: () => {
      sender!.unpipe();
      sender!.pause();
    },
    /** Resets the sender's connection (RST). */
    reset: () => sender!.resetAndDestroy(),
    /** How much the sender has queued (written, not yet taken by the kernel). */
    queued: () => target.queuedBytes,
  };
}

/** `p` rejects with an Error naming a lost connection; nothing escaped meanwhile. */
async function failsCleanly(p: Promise<unknown>, what: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof Error, `${what}: ${String(e)}`);
    assert.match(e.message, /ECONNRESET|EPIPE|closed the connection|receiver/, what);
    return true;
  });
  await turns(5);
  assert.deepEqual(escaped.splice(0), [], `${what}: nothing unhandled`);
}

for (const tls of [false, true]) {
  describe(`the stream sender when the connection is reset (${tls ? 'TLS' : 'TCP'})`, () => {
    test('before the ACK of HELLO: begin() fails', async () => {
      const r = await rig(tls, false);
      const begin = r.target.begin(LAYOUT);
      await until(() => r.seen.includes(ChunkType.HELLO), 30_000, 'HELLO at the receiver');
      r.reset();
      await failsCleanly(begin, 'begin');
    });

    for (const call of ['finish', 'checksum'] as const) {
      test(`while ${call}() waits for the socket to drain behind queued pages: it fails, no unhandled rejection`, async () => {
        const r = await rig(tls);
        await r.target.begin(LAYOUT);
        r.hold();
        const pages = r.target.guestPages(0x100000, Buffer.alloc(32 * MiB, 0x5a));
        pages.catch(() => {});
        // enough queued that the small chunk's write reports "wait for drain"
        await until(() => r.queued() > 64 * 1024, 30_000, 'pages queued in the sender');
        const p = call === 'finish' ? r.target.finish() : r.target.checksum();
        r.reset();
        await failsCleanly(p, call);
        await failsCleanly(pages, 'guestPages');
      });
    }

    test('while the sender closes after a finished migration: nothing escapes', async () => {
      const r = await rig(tls);
      await r.target.begin(LAYOUT);
      await r.target.guestPages(0x100000, Buffer.alloc(MiB, 1));
      await r.target.finish();
      r.target.close();
      r.reset();
      await turns(5);
      assert.deepEqual(escaped.splice(0), []);
    });
  });
}
