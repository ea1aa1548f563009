// Memory amplification through dirty reports (issue #10 §3): a 32-byte
// DMA_LOGGING_START over [0, 2^52) at 1 TiB pages (a 512-byte tracking
// bitmap), then DMA_LOGGING_REPORTs that each ask for a bitmap at the cap,
// from a client that does not read the replies.  The server builds each
// report in its one report buffer and sends it by reference, and builds the
// next only once the previous has left: its RSS grows by at most the cap
// plus the send-queue limit, whatever the number of requests.  Before, every
// report allocated a bitmap and the send queue copied it (twice the cap per
// request).  The server is a child process; its memory is read from /proc.
import { strict as assert } from 'node:assert';
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { Command, Errno, Feature, FeatureFlag, HEADER_SIZE, HeaderFlag } from '../src/protocol/constants.js';
import { writeHeader } from '../src/protocol/header.js';
import { FeatureStruct, LoggingControlStruct, LoggingRangeStruct, LoggingReportStruct } from '../src/protocol/messages/feature.js';
import { version } from '../src/protocol/messages/version.js';
import { root, start } from './helpers/procs.js';
import { tempDir, until } from './helpers/server.js';

const MiB = 1024 * 1024;
const TiB = 2 ** 40;
const CAP = 64 * MiB; // maxDirtyBitmapBytes: the largest report, and its buffer
const SEND_QUEUE = 4 * MiB; // maxSendQueueBytes
/** Heap and code the server may grow by besides (JIT, handling the requests). */
const SLACK = 32 * MiB;

function status(pid: number, key: string): number {
  const m = new RegExp(`${key}:\\s*(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no ${key} for ${pid}`);
  return Number(m[1]) * 1024;
}

function cpuTicks(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return Number(f[11]) + Number(f[12]);
}

function message(id: number, cmd: number, body: Buffer): Buffer {
  const h = Buffer.alloc(HEADER_SIZE);
  writeHeader(h, id, cmd, HEADER_SIZE + body.length, HeaderFlag.TYPE_COMMAND, 0);
  return Buffer.concat([h, body]);
}

function feature(flags: number, data: Buffer, argsz = FeatureStruct.size + data.length): Buffer {
  return Buffer.concat([FeatureStruct.encode({ argsz, flags }), data]);
}

/** Counts whole replies arriving on a socket (bodies skipped, headers kept). */
class Replies {
  readonly heads: { cmd: number; flags: number; errorNo: number; size: number }[] = [];
  bytes = 0;
  private pending = Buffer.alloc(0);
  private skip = 0;
  constructor(sock: Socket) {
    sock.on('data', (d: Buffer) => this.push(d));
  }
  private push(d: Buffer): void {
    this.bytes += d.length;
    let b = this.pending.length ? Buffer.concat([this.pending, d]) : d;
    for (;;) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, b.length);
        this.skip -= n;
        b = b.subarray(n);
        if (this.skip > 0) break;
      }
      if (b.length < HEADER_SIZE) break;
      const size = b.readUInt32LE(4);
      this.heads.push({ cmd: b.readUInt16LE(2), flags: b.readUInt32LE(8), errorNo: b.readUInt32LE(12), size });
      b = b.subarray(HEADER_SIZE);
      this.skip = size - HEADER_SIZE;
    }
    this.pending = Buffer.from(b);
  }
}

test('four cap-sized dirty reports to a client that does not read: server RSS grows by at most the cap plus the send queue', async () => {
  const t = tempDir();
  const path = join(t.dir, 's.sock');
  const opts = { maxDirtyBitmapBytes: CAP, maxSendQueueBytes: SEND_QUEUE };
  const p = start([join(root, 'dist', 'test', 'helpers', 'serve-child.js'), path, JSON.stringify(opts)]);
  let sock: Socket | null = null;
  try {
    await until(() => p.stdout().includes('listening'), 20_000, 'the server');
    sock = connect(path);
    const replies = new Replies(sock);
    sock.write(message(1, Command.VERSION, version.encode({ major: 0, minor: 2, json: '{"capabilities":{}}', nul: true })));
    // [0, 2^52) at 1 TiB pages: 4096 tracked pages, 512 bytes of bitmap.
    const ctl = Buffer.concat([
      LoggingControlStruct.encode({ pageSize: BigInt(TiB), numRanges: 1, reserved: 0 }),
      LoggingRangeStruct.encode({ iova: 0n, length: 2n ** 52n }),
    ]);
    sock.write(message(2, Command.DEVICE_FEATURE, feature(Feature.DMA_LOGGING_START | FeatureFlag.SET, ctl)));
    await until(() => replies.heads.length === 2, 20_000, 'VERSION and DMA_LOGGING_START replies');
    assert.equal(replies.heads[1]!.flags & HeaderFlag.ERROR, 0, 'logging started');
    // The server at rest, before any report.
    await until(() => status(p.pid, 'VmRSS') > 0);
    const rest = status(p.pid, 'VmRSS');

    // A report of 2 TiB at 4 KiB pages is a 64 MiB bitmap, the cap; a
    // report one byte of bitmap larger is refused (E2BIG) before anything
    // is built, and so costs nothing.
    const length = CAP * 8 * 4096; // bytes of IOVA whose 4 KiB-page bitmap is CAP bytes
    const rep = (len: number): Buffer =>
      feature(
        Feature.DMA_LOGGING_REPORT | FeatureFlag.GET,
        LoggingReportStruct.encode({ iova: 0n, length: BigInt(len), pageSize: 4096n }),
        FeatureStruct.size + LoggingReportStruct.size + len / 4096 / 8,
      );
    sock.pause(); // from now on the client reads nothing
    for (let i = 0; i < 4; i++) sock.write(message(10 + i, Command.DEVICE_FEATURE, rep(length)));
    sock.write(message(20, Command.DEVICE_FEATURE, rep(length + 64 * 4096)));
    // The first report is built; then wait for the server to go idle (its
    // CPU time still for a while): whatever it does without our reading, it
    // has done.
    await until(() => status(p.pid, 'VmRSS') > rest + CAP / 2, 30_000, 'the first report built');
    let last = -1;
    let still = 0;
    await until(
      () => {
        const c = cpuTicks(p.pid);
        still = c === last ? still + 1 : 0;
        last = c;
        return still >= 10;
      },
      60_000,
      'the server idle',
      50,
    );
    const peakUnread = status(p.pid, 'VmHWM') - rest;

    // Now read everything: four bitmaps and the refusal, in order.
    sock.resume();
    await until(() => replies.heads.length === 7, 120_000, 'the replies');
    const reports = replies.heads.slice(2);
    for (const r of reports.slice(0, 4)) {
      assert.equal(r.flags & HeaderFlag.ERROR, 0, `report refused: errno ${r.errorNo}`);
      assert.equal(r.size, HEADER_SIZE + FeatureStruct.size + LoggingReportStruct.size + CAP);
    }
    assert.equal(reports[4]!.flags & HeaderFlag.ERROR, HeaderFlag.ERROR, 'a report above the cap is refused');
    assert.equal(reports[4]!.errorNo, Errno.E2BIG);
    const peak = status(p.pid, 'VmHWM') - rest;
    const bound = CAP + SEND_QUEUE + SLACK;
    console.log(`# server RSS growth: ${(peakUnread / MiB).toFixed(1)} MiB while unread, ${(peak / MiB).toFixed(1)} MiB peak after four ${CAP / MiB} MiB reports (bound ${bound / MiB} MiB)`);
    assert.ok(peakUnread <= bound, `RSS grew ${(peakUnread / MiB).toFixed(1)} MiB while the client did not read`);
    assert.ok(peak <= bound, `RSS grew ${(peak / MiB).toFixed(1)} MiB`);
  } finally {
    sock?.destroy();
    p.child.kill('SIGTERM');
    await p.exited;
    t.cleanup();
  }
});
