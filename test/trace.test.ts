// `vfu trace`: decoding saved traces (--read) and the live logging proxy
// between our client and our server, with descriptors (DMA memfds, the
// region fd, eventfds) and the twin socket relayed, and JSON lines that read
// back through --read, test/helpers/traces.ts and the codecs.
import { strict as assert } from 'node:assert';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { formatTrace, isMessageRecord, readTraceFile, startTraceProxy, type TraceProxy, type TraceRecord } from '../src/cli/trace.js';
import { VfioUserClient } from '../src/client/client.js';
import { createSample, type SampleDevice } from '../src/devices/sample.js';
import { HeaderFlag, IrqIndex, PciRegion } from '../src/protocol/constants.js';
import { Header, encodeHeader } from '../src/protocol/header.js';
import { codecFor } from '../src/protocol/messages/index.js';
import { fdCount, once, serve, tempDir, until, type Served } from './helpers/server.js';
import { loadTrace, messages, traceFiles, vectorsDir } from './helpers/traces.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const cli = join(root, 'dist', 'src', 'cli', 'main.js');

function vfu(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('vfu trace --read', () => {
  for (const file of traceFiles()) {
    test(`${basename(file)}: one line per record, every message decoded`, () => {
      const records = readTraceFile(file);
      const lines = formatTrace(records);
      const nonEmpty = readFileSync(file, 'utf8').split('\n').filter((l) => l.trim() !== '').length;
      assert.equal(records.length, nonEmpty);
      assert.equal(lines.length, nonEmpty);
      const msgs = records.filter(isMessageRecord);
      assert.equal(msgs.length, messages(file).length);
      for (const [i, r] of records.entries()) {
        const line = lines[i]!;
        assert.doesNotMatch(line, /\n/);
        if (isMessageRecord(r)) {
          assert.match(line, new RegExp(` ${r.dir} ${r.cmd_name} ${r.type === 'command' ? 'cmd' : 'reply'} #${r.msg_id}\\b`));
          assert.doesNotMatch(line, /undecodable|payload\[/, `seq ${r.seq}: ${line}`);
          if (r.nfds > 0) assert.match(line, / fds=\[/);
        } else {
          assert.match(line, new RegExp(` -- ${(r as { event: string }).event}\\b`));
        }
      }
    });
  }

  test('exact lines (VERSION, an error reply, sparse-mmap region info with its fd, DMA, feature, marker)', () => {
    const src = formatTrace(readTraceFile(join(vectorsDir(), 'libvfio-user-session1-src.jsonl')));
    for (const want of [
      '   0.000095 src -- listening on run/vfio-user.sock -> run/vfio-user.sock.real',
      '   0.009039 src#1 c2s VERSION cmd #55893 v0.2 {"capabilities":{"max_msg_fds":32,"max_data_xfer_size":1024}}',
      '   0.009204 src#1 s2c VERSION reply #55893 v0.2 {"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576,"migration":{"pgsize":4096}}}',
      '   0.009429 src#1 s2c REGION_READ reply #61455 ERROR EINVAL(22)',
      '   0.010126 src#1 s2c DEVICE_GET_REGION_INFO reply #43981 region=BAR1 argsz=80 flags=READ|WRITE|MMAP|CAPS size=0x3000 offset=0x0 cap_offset=32 sparse-mmap[0x0+0x1000 0x2000+0x1000] fds=[memfile (deleted) size=12288]',
      '   0.011523 src#1 c2s DMA_MAP cmd #4660 iova=0x0 size=0x1000 offset=0x0 flags=READ|WRITE fds=[memfile (deleted) size=65536]',
      '   0.014558 src#1 c2s DEVICE_SET_IRQS cmd #7086 index=INTx start=0 count=1 flags=DATA_EVENTFD|ACTION_TRIGGER fds=[eventfd]',
      '   1.015372 src#1 s2c DMA_WRITE cmd #1 addr=0x0 count=1024 data[1024]=41*1024',
      '   1.017040 src#1 s2c DEVICE_FEATURE reply #153 DMA_LOGGING_REPORT GET argsz=40 iova=0x1000 length=0x1000 page_size=4096 bitmap[8] dirty 1/1 [0]',
      '   1.020327 src#1 c2s DEVICE_FEATURE cmd #64177 MIG_DEVICE_STATE SET argsz=16 state=PRE_COPY data_fd=-1',
      '   1.026073 src#1 s2c MIG_DATA_READ reply #26860 argsz=16 size=8 data=0x000000006b0958a3 +pad[1016]',
      '  11.091358 src#1 c2s -- eof',
      '  11.091915 src#1 -- closed',
    ]) {
      assert.ok(src.includes(want), `missing line:\n${want}\nnear:\n${src.filter((l) => l.slice(0, 11) === want.slice(0, 11)).join('\n')}`);
    }
    const qemu = formatTrace(readTraceFile(join(vectorsDir(), 'qemu-10.2-gpio-guest.jsonl')));
    assert.equal(qemu[1], '   0.009776 -- marker {"step":"qemu_start"}');
    assert.ok(qemu.includes('   0.046277 gpio-guest#1 c2s DMA_MAP cmd #2 iova=0xfffc0000 size=0x40000 offset=0x0 flags=READ'));
  });

  test('the command line prints the same lines, and --json adds them as "text"', () => {
    const file = join(vectorsDir(), 'libvfio-user-session1-dst.jsonl');
    const r = vfu(['trace', '--read', file]);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(r.stdout.split('\n').slice(0, -1), formatTrace(readTraceFile(file)));
    const j = vfu(['trace', '--read', file, '--json']);
    assert.equal(j.status, 0, j.stderr);
    const out = j.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as TraceRecord & { text: string });
    assert.equal(out.length, 87);
    assert.equal(out[2]!.text, formatTrace(readTraceFile(file))[2]);
    assert.equal(out[2]!.seq, 3);
    const bad = vfu(['trace', '--read', join(root, 'package.json')]);
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr, /package\.json:1:/);
    assert.notEqual(vfu(['trace', '--listen', '/tmp/x']).status, 0);
  });
});

/** Every message of a JSON-lines trace re-encodes byte for byte. */
function checkReencodes(file: string): number {
  let n = 0;
  for (const m of messages(file)) {
    const payload = Buffer.from(m.payload, 'hex');
    assert.equal(m.payload_truncated, false);
    assert.equal(payload.length, m.payload_len);
    assert.equal(m.msg_size, 16 + payload.length);
    const hdr = encodeHeader({ msgId: m.msg_id, cmd: m.cmd, msgSize: m.msg_size, flags: m.flags, errorNo: m.error_no });
    assert.deepEqual(Header.read(hdr), { msgId: m.msg_id, cmd: m.cmd, msgSize: m.msg_size, flags: m.flags, errorNo: m.error_no });
    if (m.error) continue;
    const codec = codecFor(m.cmd, (m.flags & HeaderFlag.TYPE_MASK) === HeaderFlag.TYPE_REPLY);
    assert.ok(codec, `seq ${m.seq}: codec`);
    assert.ok(codec.encode(codec.decode(payload)).equals(payload), `seq ${m.seq} ${m.cmd_name} ${m.type} re-encodes`);
    n++;
  }
  return n;
}

describe('vfu trace between our client and our server', () => {
  let dev: SampleDevice;
  let srv: Served;
  let proxy: TraceProxy;
  const t = tempDir('vfu-trace-');
  const jsonFile = join(t.dir, 'session.jsonl');
  const printed: string[] = [];
  const records: TraceRecord[] = [];
  let fdsIdle = 0;

  before(async () => {
    dev = createSample();
    srv = await serve(dev.device);
    proxy = await startTraceProxy({
      listen: join(t.dir, 'trace.sock'),
      connect: srv.path,
      json: jsonFile,
      label: 'test',
      out: (l) => printed.push(l),
      onRecord: (r) => records.push(r),
    });
  });
  after(async () => {
    await proxy.close();
    await srv.close();
    t.cleanup();
  });

  const connect = (opts: { twinSocket?: boolean } = {}): Promise<VfioUserClient> =>
    VfioUserClient.connect(proxy.path, { replyTimeoutMs: 10_000, maxDataXferSize: 4096, ...opts });

  const ended = async (conn: number): Promise<void> => {
    await until(() => records.some((r) => r.conn === conn && (r as { event?: string }).event === 'closed'));
    await until(() => srv.server.session === null);
  };

  test('the socket is private', () => {
    assert.equal(statSync(proxy.path).mode & 0o777, 0o600);
    assert.equal((records[0] as { event: string }).event, 'listening');
    fdsIdle = fdCount();
  });

  test('descriptors go through: DMA memfd, region fd (mmap works), eventfd interrupt; DMA by messages', async () => {
    const c = await connect();
    assert.equal((await c.deviceInfo()).numRegions, 9);
    // BAR1's fd comes back through the proxy and maps the server's memory
    const bar1 = await c.regionInfo(PciRegion.BAR1);
    assert.ok(bar1.fd >= 0);
    const areas = c.mapRegion(bar1);
    areas[1]!.bytes.write('through the proxy', 0);
    assert.equal(dev.bar1.subarray(0x2000, 0x2011).toString(), 'through the proxy');
    dev.bar1.write('and back', 0x10);
    assert.equal(areas[0]!.bytes.subarray(0x10, 0x18).toString(), 'and back');
    for (const a of areas) a.unmap();
    // guest memory mapped with its memfd: the server writes it directly
    const shared = c.memory.add(0x10000, 0x4000);
    await c.dmaMap({ iova: 0x10000, size: 0x4000 });
    assert.equal(dev.device.dma.find(0x10000)!.mode, 'mmap');
    dev.device.dma.writeSync(0x10100, Buffer.from('direct'));
    assert.equal(shared.bytes.subarray(0x100, 0x106).toString(), 'direct');
    // private memory: DMA_WRITE/DMA_READ requests from the server
    const priv = c.memory.add(0x100000, 0x4000, { shared: false });
    await c.dmaMap({ iova: 0x100000, size: 0x4000, withFd: false });
    const data = Buffer.alloc(6000, 0x5a);
    await dev.device.dma.write(0x100100, data, { messages: true });
    assert.ok(priv.bytes.subarray(0x100, 0x100 + 6000).equals(data));
    const back = Buffer.alloc(6000);
    await dev.device.dma.read(0x100100, back, { messages: true });
    assert.ok(back.equals(data));
    // an interrupt through the eventfd the client handed over
    await c.enableInterrupts(IrqIndex.INTX, 1);
    const irq = once<[number, number]>(c, 'interrupt');
    assert.equal(dev.device.trigger(IrqIndex.INTX, 0), true);
    assert.deepEqual((await irq).slice(0, 2), [IrqIndex.INTX, 0]);
    await c.dmaUnmapAll();
    c.close();
    await ended(1);
  });

  test('twin socket: the server requests come through the relayed pair', async () => {
    const c = await connect({ twinSocket: true });
    assert.ok(c.conn.hasTwin, 'client got a twin socket');
    assert.equal(c.conn.requestEndpoint, c.conn.main, 'the client keeps its own requests on the main socket');
    assert.notEqual(srv.server.session!.conn.requestEndpoint, srv.server.session!.conn.main, 'server uses its twin');
    const priv = c.memory.add(0x200000, 0x2000, { shared: false });
    await c.dmaMap({ iova: 0x200000, size: 0x2000, withFd: false });
    await dev.device.dma.write(0x200010, Buffer.from('over the twin'), { messages: true });
    assert.equal(priv.bytes.subarray(0x10, 0x1d).toString(), 'over the twin');
    // and the main socket still works after that
    assert.equal((await c.regionRead(PciRegion.CONFIG, 0, 2)).readUInt16LE(0), 0xdead);
    c.close();
    await ended(2);
    // the proxy closed its copies of every descriptor it relayed
    assert.equal(fdCount(), fdsIdle);
  });

  test('the command line: vfu trace --listen --connect --json, stopped by SIGTERM', async () => {
    const sock = join(t.dir, 'cli.sock');
    const file = join(t.dir, 'cli.jsonl');
    const child = spawn(process.execPath, [cli, 'trace', '--listen', sock, '--connect', srv.path, '--json', file, '--label', 'cli'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
    try {
      await until(() => existsSync(sock));
      const c = await VfioUserClient.connect(sock, { replyTimeoutMs: 10_000 });
      assert.equal((await c.irqInfo(IrqIndex.INTX)).count, 1);
      c.close();
      await until(() => out.includes(' -- closed'));
    } finally {
      child.kill('SIGTERM');
    }
    assert.equal(await exited, 0, out);
    assert.match(out, /^ +[\d.]+ cli#1 c2s DEVICE_GET_IRQ_INFO cmd #\d+ index=INTx argsz=16$/m);
    assert.match(out, /^ +[\d.]+ cli#1 s2c DEVICE_GET_IRQ_INFO reply #\d+ index=INTx count=1 flags=EVENTFD\|MASKABLE$/m);
    assert.deepEqual(formatTrace(readTraceFile(file)), out.split('\n').slice(0, -1));
    await until(() => srv.server.session === null);
  });

  test('an upstream that is not there: the client is closed, the failure logged', async () => {
    const lost: TraceRecord[] = [];
    const p2 = await startTraceProxy({ listen: join(t.dir, 'nowhere.sock'), connect: join(t.dir, 'missing.sock'), quiet: true, onRecord: (r) => lost.push(r) });
    try {
      await assert.rejects(VfioUserClient.connect(p2.path, { replyTimeoutMs: 5000 }));
      const failed = lost.find((r) => (r as { event?: string }).event === 'connect-failed') as { error?: string } | undefined;
      assert.equal(failed?.error, 'ENOENT');
      assert.equal(p2.active, 0);
    } finally {
      await p2.close();
    }
  });

  test('what was printed and written: the recorded format, readable back, byte-exact', async () => {
    await proxy.close();
    const lines = readFileSync(jsonFile, 'utf8').split('\n').filter(Boolean);
    assert.equal(lines.length, records.length);
    assert.equal(printed.length, records.length);
    // the same as --read prints, line for line
    assert.deepEqual(formatTrace(readTraceFile(jsonFile)), printed);
    const r = vfu(['trace', '--read', jsonFile]);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(r.stdout.split('\n').slice(0, -1), printed);
    // the loader of the recorded sessions reads it, and every message re-encodes
    const loaded = loadTrace(jsonFile);
    assert.equal(loaded.length, lines.length);
    assert.ok(checkReencodes(jsonFile) > 20);
    // the field order and spelling of the recorded traces
    const first = lines.find((l) => l.includes('"dir": "c2s"'))!;
    assert.deepEqual(Object.keys(JSON.parse(first) as object), [
      'seq', 't', 'label', 'conn', 'dir', 'msg_id', 'cmd', 'cmd_name', 'msg_size', 'flags', 'type', 'no_reply', 'error',
      'error_no', 'nfds', 'fds', 'payload_len', 'payload', 'payload_truncated',
    ]);
    assert.match(first, /^\{"seq": \d+, "t": [\d.e-]+, "label": "test", "conn": 1, "dir": "c2s", "msg_id": \d+, "cmd": 1, "cmd_name": "VERSION"/);
    const msgs = messages(jsonFile);
    const seqs = loaded.map((l) => l.seq);
    assert.deepEqual(seqs, seqs.map((_, i) => i + 1));
    const events = loaded.filter((l) => !('cmd' in l)).map((l) => `${(l as { conn?: number }).conn ?? '-'}:${(l as { event: string }).event}`);
    assert.deepEqual(events.slice(0, 2), ['-:listening', '1:connected']);
    assert.ok(events.includes('1:closed') && events.includes('2:connected') && events.includes('2:closed'));
    // descriptors were recorded with the message that carried them
    const fdsOf = (cmd: string, type: string, conn = 1): string[][] =>
      msgs.filter((m) => m.cmd_name === cmd && m.type === type && m.conn === conn && m.nfds > 0).map((m) => m.fds);
    assert.deepEqual(fdsOf('DEVICE_GET_REGION_INFO', 'reply'), [['memfd (deleted) [regular, size=12288]']]);
    assert.deepEqual(fdsOf('DMA_MAP', 'command'), [['memfd (deleted) [regular, size=16384]']]);
    assert.deepEqual(fdsOf('DEVICE_SET_IRQS', 'command'), [['anon_inode:[eventfd]']]);
    assert.deepEqual(fdsOf('VERSION', 'reply', 2), [['socket']]);
    // server requests: on the main socket first, on the twin the second time
    const dmaWrites = msgs.filter((m) => m.cmd_name === 'DMA_WRITE' && m.dir === 's2c');
    assert.ok(dmaWrites.some((m) => m.conn === 1 && !('twin' in m)));
    const twinWrites = dmaWrites.filter((m) => m.conn === 2);
    assert.equal(twinWrites.length, 1);
    assert.equal((twinWrites[0] as { twin?: boolean }).twin, true);
    assert.ok(msgs.some((m) => m.cmd_name === 'DMA_WRITE' && m.dir === 'c2s' && m.conn === 2 && (m as { twin?: boolean }).twin === true));
    assert.ok(printed.some((l) => / test#2 s2c\(twin\) DMA_WRITE cmd #\d+ addr=0x200010 count=13 data\[13\]=6f76657220746865207477696e$/.test(l)), printed.join('\n'));
    assert.ok(printed.some((l) => / test#1 c2s DEVICE_SET_IRQS cmd #\d+ index=INTx start=0 count=1 flags=DATA_EVENTFD\|ACTION_TRIGGER fds=\[eventfd\]$/.test(l)));
  });
});
