// describeMessage / describeFds: exact lines for every kind of body, error
// replies, refused frames, unknown commands and garbage; every recorded
// message gets a line without an "undecodable" note.
import { strict as assert } from 'node:assert';
import { basename } from 'node:path';
import { test } from 'node:test';
import { describeFds, describeMessage } from '../src/protocol/describe.js';
import {
  Command,
  DirtyPagesFlag,
  Errno,
  Feature,
  FeatureFlag,
  HEADER_SIZE,
  HeaderFlag,
  IoEventFdFlag,
  IoFdType,
  IrqSetFlag,
  MigState,
  MigrationFlag,
  RegionCapId,
  RegionFlag,
} from '../src/protocol/constants.js';
import { type HeaderFields } from '../src/protocol/header.js';
import { encodeReply, encodeRequest } from '../src/protocol/messages/index.js';
import { messages, traceFiles } from './helpers/traces.js';

function hdr(cmd: number, payload: Buffer, flags = 0, msgId = 7, errorNo = 0): HeaderFields {
  return { msgId, cmd, msgSize: HEADER_SIZE + payload.length, flags, errorNo };
}
function req(cmd: keyof typeof Command, body: never): string {
  const p = encodeRequest(cmd, body);
  return describeMessage(hdr(Command[cmd], p), p);
}
function rep(cmd: keyof typeof Command, body: never): string {
  const p = encodeReply(cmd, body);
  return describeMessage(hdr(Command[cmd], p, HeaderFlag.TYPE_REPLY), p);
}

test('describeMessage: header flags, errors, refusals, unknown commands, garbage', () => {
  const empty = Buffer.alloc(0);
  assert.equal(
    describeMessage(hdr(Command.REGION_READ, empty, HeaderFlag.TYPE_REPLY | HeaderFlag.ERROR, 3, Errno.EINVAL), empty),
    'REGION_READ reply #3 ERROR EINVAL(22)',
  );
  assert.equal(describeMessage(hdr(Command.DEVICE_RESET, empty, HeaderFlag.NO_REPLY, 1), empty), 'DEVICE_RESET cmd #1 no_reply');
  assert.equal(
    describeMessage({ msgId: 9, cmd: Command.REGION_WRITE, msgSize: 1 << 30, flags: 0, errorNo: 0 }, empty, { rejected: Errno.EMSGSIZE }),
    'REGION_WRITE cmd #9 REJECTED EMSGSIZE(90) msg_size=1073741824',
  );
  const junk = Buffer.from('0102030405060708090a0b0c0d0e0f101112', 'hex');
  assert.equal(describeMessage(hdr(99, junk), junk), 'CMD_99 cmd #7 payload[18]=0102030405060708090a0b0c0d0e0f10…');
  assert.equal(
    describeMessage(hdr(Command.DMA_MAP, junk.subarray(0, 5)), junk.subarray(0, 5)),
    'DMA_MAP cmd #7 undecodable (DMA_MAP: 5 bytes, need 32 (EINVAL)): payload[5]=0102030405',
  );
  assert.equal(describeMessage(hdr(Command.VERSION, empty, 0x1f), empty), 'VERSION type15 #7 no_reply');
  assert.equal(describeMessage({ ...hdr(Command.DEVICE_RESET, empty), flags: 0x100 }, empty), 'DEVICE_RESET cmd #7 flags=0x100');
  assert.equal(
    describeMessage({ ...hdr(Command.REGION_READ, junk.subarray(0, 4)), msgSize: 100 }, junk.subarray(0, 4), { payloadTruncated: true }),
    'REGION_READ cmd #7 undecodable (region access: 4 bytes, need 16 (EINVAL)): payload[4]=01020304 (payload truncated to 4 of 84 bytes)',
  );
});

test('describeMessage: bodies of every command', () => {
  assert.equal(req('VERSION', { major: 0, minor: 2, json: '{ "capabilities": { "max_msg_fds": 8 } }', nul: true } as never), 'VERSION cmd #7 v0.2 {"capabilities":{"max_msg_fds":8}}');
  assert.equal(req('VERSION', { major: 0, minor: 2 } as never), 'VERSION cmd #7 v0.2 (no capabilities)');
  assert.equal(req('VERSION', { major: 0, minor: 2, json: '{bad', nul: false } as never), 'VERSION cmd #7 v0.2 "{bad" (no NUL)');
  assert.equal(
    req('DMA_MAP', { argsz: 32, flags: 3, offset: 0x1000n, addr: 0x10000n, size: 0x4000n } as never),
    'DMA_MAP cmd #7 iova=0x10000 size=0x4000 offset=0x1000 flags=READ|WRITE',
  );
  assert.equal(req('DMA_UNMAP', { argsz: 24, flags: 2, addr: 0n, size: 0n } as never), 'DMA_UNMAP cmd #7 iova=0x0 size=0x0 flags=ALL');
  assert.equal(
    rep('DMA_UNMAP', { argsz: 40, flags: 1, addr: 0n, size: 0x8000n, bitmap: { pgsize: 4096n, size: 8n }, data: Buffer.from('0500000000000000', 'hex') } as never),
    'DMA_UNMAP reply #7 iova=0x0 size=0x8000 flags=GET_DIRTY_BITMAP argsz=40 bitmap pgsize=4096 size=8 bitmap[8] dirty 2/8 [0,2]',
  );
  assert.equal(
    rep('DEVICE_GET_REGION_INFO', {
      argsz: 88,
      flags: RegionFlag.READ | RegionFlag.WRITE | RegionFlag.CAPS,
      index: 9,
      capOffset: 32,
      size: 0x1000n,
      offset: 0n,
      caps: [
        { id: RegionCapId.SPARSE_MMAP, version: 1, areas: [{ offset: 0n, size: 0x1000n }] },
        { id: RegionCapId.TYPE, version: 1, type: 3, subtype: 1 },
      ],
    } as never),
    'DEVICE_GET_REGION_INFO reply #7 region=MIGR argsz=88 flags=READ|WRITE|CAPS size=0x1000 offset=0x0 cap_offset=32 sparse-mmap[0x0+0x1000] type=3/1(migration-v1)',
  );
  assert.equal(
    rep('DEVICE_GET_REGION_IO_FDS', {
      argsz: 64,
      flags: 0,
      index: 2,
      count: 1,
      entrySize: 48,
      subRegions: [{ offset: 0x10n, size: 4n, fdIndex: 0, type: IoFdType.IOEVENTFD, flags: IoEventFdFlag.DATAMATCH, padding: 0, shadowOffset: 0n, data: 0xabn }],
    } as never),
    'DEVICE_GET_REGION_IO_FDS reply #7 region=BAR2 argsz=64 count=1 [0x10+0x4 fd#0 ioeventfd flags=DATAMATCH data=0xab]',
  );
  assert.equal(
    req('DEVICE_SET_IRQS', { argsz: 22, flags: IrqSetFlag.DATA_BOOL | IrqSetFlag.ACTION_MASK, index: 2, start: 3, count: 2, data: Buffer.from([1, 0]) } as never),
    'DEVICE_SET_IRQS cmd #7 index=MSI-X start=3 count=2 flags=DATA_BOOL|ACTION_MASK bools=[1,0]',
  );
  assert.equal(
    req('REGION_WRITE', { offset: 0x30n, region: 7, count: 4, data: Buffer.from('00f8ffff', 'hex') } as never),
    'REGION_WRITE cmd #7 region=CONFIG offset=0x30 count=4 data=0xfffff800',
  );
  assert.equal(
    req('REGION_WRITE', { offset: 0n, region: 1, count: 20, data: Buffer.from('000102030405060708090a0b0c0d0e0f10111213', 'hex') } as never),
    'REGION_WRITE cmd #7 region=BAR1 offset=0x0 count=20 data[20]=000102030405060708090a0b0c0d0e0f…',
  );
  assert.equal(rep('DMA_WRITE', { addr: 0x400n, count: 1024n, countBytes: 4 } as never), 'DMA_WRITE reply #7 addr=0x400 count=1024 (32-bit count)');
  assert.equal(
    req('REGION_WRITE_MULTI', { wrCnt: 2n, writes: [{ offset: 4n, region: 2, count: 2, data: 0x1234n }, { offset: 8n, region: 2, count: 1, data: 0x7n }] } as never),
    'REGION_WRITE_MULTI cmd #7 wr_cnt=2 [BAR2+0x4:2=0x1234, BAR2+0x8:1=0x07]',
  );
  assert.equal(
    req('DIRTY_PAGES', { argsz: 40, flags: DirtyPagesFlag.GET_BITMAP, range: { iova: 0n, size: 0x10000n, pgsize: 4096n, bitmapSize: 8n } } as never),
    'DIRTY_PAGES cmd #7 flags=GET_BITMAP iova=0x0 size=0x10000 pgsize=4096 bitmap_size=8',
  );
  const feat = (flags: number, data: object, reply = false): string =>
    (reply ? rep : req)('DEVICE_FEATURE', { argsz: 8 + 64, flags, data } as never);
  assert.equal(
    feat(Feature.MIGRATION | FeatureFlag.GET, { kind: 'migration', flags: BigInt(MigrationFlag.STOP_COPY | MigrationFlag.PRE_COPY) }, true),
    'DEVICE_FEATURE reply #7 MIGRATION GET argsz=72 flags=STOP_COPY|PRE_COPY',
  );
  assert.equal(
    feat(Feature.MIG_DEVICE_STATE | FeatureFlag.SET, { kind: 'mig-state', deviceState: MigState.STOP_COPY, dataFd: -1 }),
    'DEVICE_FEATURE cmd #7 MIG_DEVICE_STATE SET argsz=72 state=STOP_COPY data_fd=-1',
  );
  assert.equal(feat(Feature.DMA_LOGGING_START | FeatureFlag.PROBE | FeatureFlag.SET, { kind: 'none' }), 'DEVICE_FEATURE cmd #7 DMA_LOGGING_START SET|PROBE argsz=72');
  assert.equal(
    feat(Feature.DMA_LOGGING_START | FeatureFlag.SET, {
      kind: 'logging-control',
      pageSize: 4096n,
      numRanges: 2,
      reserved: 0,
      ranges: [
        { iova: 0n, length: 0x1000n },
        { iova: 0x8000n, length: 0x2000n },
      ],
    }),
    'DEVICE_FEATURE cmd #7 DMA_LOGGING_START SET argsz=72 page_size=4096 ranges[2]=0x0+0x1000,0x8000+0x2000',
  );
  assert.equal(
    feat(
      Feature.DMA_LOGGING_REPORT | FeatureFlag.GET,
      { kind: 'logging-report', iova: 0n, length: 0x100000n, pageSize: 4096n, bitmap: Buffer.concat([Buffer.from([0x81]), Buffer.alloc(31)]) },
      true,
    ),
    'DEVICE_FEATURE reply #7 DMA_LOGGING_REPORT GET argsz=72 iova=0x0 length=0x100000 page_size=4096 bitmap[32] dirty 2/256 [0,7]',
  );
  assert.equal(feat(Feature.MIG_DATA_SIZE | FeatureFlag.GET, { kind: 'mig-data-size', stopCopyLength: 12296n }, true), 'DEVICE_FEATURE reply #7 MIG_DATA_SIZE GET argsz=72 stop_copy_length=12296');
  assert.equal(feat(0x123 | FeatureFlag.GET, { kind: 'raw', bytes: Buffer.from('0102', 'hex') }), 'DEVICE_FEATURE cmd #7 FEATURE_291 GET argsz=72 raw=0x0201');
  const padded = Buffer.concat([Buffer.from('1000000008000000', 'hex'), Buffer.from('a358096b00000000', 'hex'), Buffer.alloc(1016)]);
  assert.equal(
    describeMessage(hdr(Command.MIG_DATA_READ, padded, HeaderFlag.TYPE_REPLY), padded),
    'MIG_DATA_READ reply #7 argsz=16 size=8 data=0x000000006b0958a3 +pad[1016]',
  );
});

test('describeFds', () => {
  assert.equal(describeFds([]), '');
  assert.equal(
    describeFds(['anon_inode:[eventfd]', 'memfile (deleted) [regular, size=65536]', 'socket']),
    'fds=[eventfd, memfile (deleted) size=65536, socket]',
  );
});

for (const file of traceFiles()) {
  test(`describeMessage decodes every message of ${basename(file)}`, () => {
    for (const m of messages(file)) {
      const p = Buffer.from(m.payload, 'hex');
      const line = describeMessage({ msgId: m.msg_id, cmd: m.cmd, msgSize: m.msg_size, flags: m.flags, errorNo: m.error_no }, p);
      assert.ok(line.startsWith(`${m.cmd_name} ${m.type === 'command' ? 'cmd' : 'reply'} #${m.msg_id}`), line);
      assert.doesNotMatch(line, /undecodable|payload\[/, `seq ${m.seq}: ${line}`);
      assert.doesNotMatch(line, /\n/);
    }
  });
}
