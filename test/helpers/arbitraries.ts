// fast-check arbitraries for typed message bodies: every value they produce
// is well formed, i.e. decode(encode(x)) must give x back exactly.  The
// constraints below are the codecs' canonical forms (optional byte fields are
// absent rather than empty, counts agree with their arrays, ...).
import fc from 'fast-check';
import { DirtyPagesFlag, DmaUnmapFlag, Feature, FeatureFlag, RegionCapId, RegionFlag } from '../../src/protocol/constants.js';
import type { CommandName } from '../../src/protocol/constants.js';
import type { FeatureData, RegionCap } from '../../src/protocol/messages/index.js';

export const u8 = fc.integer({ min: 0, max: 0xff });
export const u16 = fc.integer({ min: 0, max: 0xffff });
export const u32 = fc.integer({ min: 0, max: 0xffffffff });
export const i32 = fc.integer({ min: -0x80000000, max: 0x7fffffff });
export const u64 = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n });

export function bytes(minLength = 1, maxLength = 64): fc.Arbitrary<Buffer> {
  return fc.uint8Array({ minLength, maxLength }).map((a) => Buffer.from(a));
}

/** Drops keys whose value is undefined (codecs omit absent fields). */
function clean<T extends object>(o: T): T {
  const r: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) r[k] = v;
  return r as T;
}

/** A record whose `optional` keys may be missing (never present-but-undefined). */
function rec<T extends Record<string, unknown>>(
  required: { [K in keyof T]: fc.Arbitrary<T[K]> },
  optional: Record<string, fc.Arbitrary<unknown>> = {},
): fc.Arbitrary<T> {
  const opt: Record<string, fc.Arbitrary<unknown>> = {};
  for (const [k, a] of Object.entries(optional)) opt[k] = fc.option(a, { nil: undefined });
  return fc.record({ ...required, ...opt } as Record<string, fc.Arbitrary<unknown>>).map((o) => clean(o) as T);
}

const extra = { extra: bytes() };

const emptyBody = rec({}, extra);

const version = fc.oneof(
  rec({ major: u16, minor: u16 }),
  rec({ major: u16, minor: u16, json: fc.string({ unit: 'binary', maxLength: 40 }), nul: fc.constant(true) }),
  // Without the terminator the text must be non-empty and must not end in NUL.
  rec({
    major: u16,
    minor: u16,
    json: fc.string({ unit: 'binary', minLength: 1, maxLength: 40 }).filter((s) => !s.endsWith('\0')),
    nul: fc.constant(false),
  }),
);

const dmaMap = rec({ argsz: u32, flags: u32, offset: u64, addr: u64, size: u64 }, extra);

const bitmapHead = rec({ pgsize: u64, size: u64 });
function dmaUnmap(reply: boolean) {
  const BIT = DmaUnmapFlag.GET_DIRTY_BITMAP;
  const head = { argsz: u32, addr: u64, size: u64 };
  return fc.oneof(
    rec({ ...head, flags: u32.map((f) => (f | BIT) >>> 0), bitmap: bitmapHead }, reply ? { data: bytes() } : extra),
    rec({ ...head, flags: u32.map((f) => (f & ~BIT) >>> 0) }, extra),
    // The flag without room for the bitmap header: the bytes stay extra.
    rec({ ...head, flags: u32.map((f) => (f | BIT) >>> 0) }, { extra: bytes(1, 15) }),
  );
}

const deviceInfo = rec({ argsz: u32, flags: u32, numRegions: u32, numIrqs: u32 }, extra);
const regionInfoReq = rec({ argsz: u32, flags: u32, index: u32, capOffset: u32, size: u64, offset: u64 }, extra);

const sparseCap = rec(
  { id: fc.constant(RegionCapId.SPARSE_MMAP), version: u16, areas: fc.array(rec({ offset: u64, size: u64 }), { maxLength: 4 }) },
  { reserved: fc.integer({ min: 1, max: 0xffffffff }), pad: bytes(1, 12) },
);
const typeCap = rec({ id: fc.constant(RegionCapId.TYPE), version: u16, type: u32, subtype: u32 }, { pad: bytes(1, 12) });
const otherCap = rec({
  id: u16.filter((i) => i !== RegionCapId.SPARSE_MMAP && i !== RegionCapId.TYPE),
  version: u16,
  body: bytes(0, 24),
});
const anyCap = fc.oneof(sparseCap, typeCap, otherCap) as fc.Arbitrary<RegionCap>;

const regionInfoReplyWithCaps = fc
  .record({
    argsz: u32,
    flags: u32.map((f) => (f | RegionFlag.CAPS) >>> 0),
    index: u32,
    size: u64,
    offset: u64,
    gap: bytes(0, 16),
    caps: fc.array(anyCap, { minLength: 1, maxLength: 4 }),
    post: bytes(0, 16),
  })
  .map(({ gap, caps, post, ...h }) => {
    const last = caps[caps.length - 1]!;
    // The last capability has no successor to pad up to; an unknown last
    // capability owns every byte to the end of the reply.
    if ('pad' in last) delete (last as { pad?: Buffer }).pad;
    const tail = 'body' in last ? Buffer.alloc(0) : post;
    const ex = Buffer.concat([gap, tail]);
    return { ...h, capOffset: 32 + gap.length, caps, ...(ex.length ? { extra: ex } : {}) };
  });
const regionInfoReply = fc.oneof(
  rec({ argsz: u32, flags: u32.map((f) => (f & ~RegionFlag.CAPS) >>> 0), index: u32, capOffset: u32, size: u64, offset: u64 }, extra),
  rec({ argsz: u32, flags: u32.map((f) => (f | RegionFlag.CAPS) >>> 0), index: u32, capOffset: fc.constant(0), size: u64, offset: u64 }, extra),
  rec({ argsz: u32, flags: u32, index: u32, capOffset: u32, size: u64, offset: u64 }),
  regionInfoReplyWithCaps,
);

const ioFdsReq = rec({ argsz: u32, flags: u32, index: u32, count: u32 }, extra);
const sub40 = rec({ offset: u64, size: u64, fdIndex: u32, type: u32, flags: u32, padding: u32, data: u64 });
const sub48 = rec({ offset: u64, size: u64, fdIndex: u32, type: u32, flags: u32, padding: u32, shadowOffset: u64, data: u64 });
const ioFdsReply = fc.oneof(
  fc
    .record({ argsz: u32, flags: u32, index: u32, entrySize: fc.constantFrom(40 as const, 48 as const), n: fc.integer({ min: 1, max: 4 }) })
    .chain(({ n, entrySize, ...h }) =>
      fc.array(entrySize === 40 ? sub40 : sub48, { minLength: n, maxLength: n }).map((subRegions) => ({ ...h, count: n, entrySize, subRegions })),
    ),
  // No entries: whatever follows is kept as bytes unless it divides into
  // 40- or 48-byte entries.
  rec<{ argsz: number; flags: number; index: number; count: number; extra?: Buffer }>({ argsz: u32, flags: u32, index: u32, count: u32 }, extra).filter((v) => {
    const n = v.extra?.length ?? 0;
    return n === 0 || v.count === 0 || (n / v.count !== 40 && n / v.count !== 48);
  }),
);

const irqInfo = rec({ argsz: u32, flags: u32, index: u32, count: u32 }, extra);
const setIrqs = rec({ argsz: u32, flags: u32, index: u32, start: u32, count: u32 }, { data: bytes() });
const regionAccess = rec({ offset: u64, region: u32, count: u32 }, { data: bytes() });
const dmaAccess = rec({ addr: u64, count: u64 }, { data: bytes() });
const dmaWriteReply = fc.oneof(
  rec({ addr: u64, count: u32.map(BigInt), countBytes: fc.constant(4 as const) }),
  rec({ addr: u64, count: u64, countBytes: fc.constant(8 as const) }, { data: bytes() }),
);

function dirtyPages(reply: boolean) {
  const BIT = DirtyPagesFlag.GET_BITMAP;
  const range = rec({ iova: u64, size: u64, pgsize: u64, bitmapSize: u64 });
  return fc.oneof(
    rec({ argsz: u32, flags: u32.map((f) => (f | BIT) >>> 0), range }, reply ? { bitmap: bytes() } : extra),
    rec({ argsz: u32, flags: u32.map((f) => (f & ~BIT) >>> 0) }, extra),
    rec({ argsz: u32, flags: u32.map((f) => (f | BIT) >>> 0) }, { extra: bytes(1, 31) }),
  );
}

const writeEntry = rec({ offset: u64, region: u32, count: u32, data: u64 });
const writeMulti = fc.oneof(
  fc.array(writeEntry, { maxLength: 6 }).chain((writes) =>
    rec({ wrCnt: fc.constant(BigInt(writes.length)), writes: fc.constant(writes) }, extra),
  ),
  // A count larger than the entries present: a short tail stays bytes.
  fc.array(writeEntry, { maxLength: 6 }).chain((writes) =>
    rec(
      { wrCnt: fc.bigInt({ min: BigInt(writes.length + 1), max: 2n ** 64n - 1n }), writes: fc.constant(writes) },
      { extra: bytes(1, 23) },
    ),
  ),
);
const writeMultiReply = rec({ wrCnt: u64 }, extra);

const KNOWN_FEATURES = new Set<number>(Object.values(Feature));
const featureFlags = (index: number) => u32.map((f) => ((f & ~FeatureFlag.MASK) | index) >>> 0);
const featureCase = (index: fc.Arbitrary<number>, data: fc.Arbitrary<FeatureData>) =>
  index.chain((i) => fc.record({ argsz: u32, flags: featureFlags(i), data }, { noNullPrototype: true }));
const ranges = fc.array(rec({ iova: u64, length: u64 }), { maxLength: 4 });
const deviceFeature = fc.oneof(
  featureCase(u16, fc.constant({ kind: 'none' as const })),
  featureCase(fc.constant(Feature.MIGRATION), rec({ kind: fc.constant('migration' as const), flags: u64 })),
  featureCase(fc.constant(Feature.MIG_DEVICE_STATE), rec({ kind: fc.constant('mig-state' as const), deviceState: u32, dataFd: i32 })),
  featureCase(
    fc.constantFrom(Feature.DMA_LOGGING_START, Feature.DMA_LOGGING_STOP),
    fc.record({ pageSize: u64, reserved: u32, ranges }, { noNullPrototype: true }).map((r) => ({ kind: 'logging-control' as const, ...r, numRanges: r.ranges.length })),
  ),
  featureCase(
    fc.constant(Feature.DMA_LOGGING_REPORT),
    rec({ kind: fc.constant('logging-report' as const), iova: u64, length: u64, pageSize: u64 }, { bitmap: bytes() }),
  ),
  featureCase(fc.constant(Feature.MIG_DATA_SIZE), rec({ kind: fc.constant('mig-data-size' as const), stopCopyLength: u64 })),
  featureCase(
    fc.constant(Feature.MIG_PRECOPY_INFO),
    rec({ kind: fc.constant('precopy-info' as const), initialBytes: u64, dirtyBytes: u64 }),
  ),
  featureCase(
    u16.filter((i) => !KNOWN_FEATURES.has(i)),
    rec({ kind: fc.constant('raw' as const), bytes: bytes() }),
  ),
);

const migData = rec({ argsz: u32, size: u32 }, { data: bytes() });

/** Well-formed typed bodies for every command's request and reply. */
export const bodies: Record<CommandName, { request: fc.Arbitrary<unknown>; reply: fc.Arbitrary<unknown> }> = {
  VERSION: { request: version, reply: version },
  DMA_MAP: { request: dmaMap, reply: emptyBody },
  DMA_UNMAP: { request: dmaUnmap(false), reply: dmaUnmap(true) },
  DEVICE_GET_INFO: { request: deviceInfo, reply: deviceInfo },
  DEVICE_GET_REGION_INFO: { request: regionInfoReq, reply: regionInfoReply },
  DEVICE_GET_REGION_IO_FDS: { request: ioFdsReq, reply: ioFdsReply },
  DEVICE_GET_IRQ_INFO: { request: irqInfo, reply: irqInfo },
  DEVICE_SET_IRQS: { request: setIrqs, reply: emptyBody },
  REGION_READ: { request: regionAccess, reply: regionAccess },
  REGION_WRITE: { request: regionAccess, reply: regionAccess },
  DMA_READ: { request: dmaAccess, reply: dmaAccess },
  DMA_WRITE: { request: dmaAccess, reply: dmaWriteReply },
  DEVICE_RESET: { request: emptyBody, reply: emptyBody },
  DIRTY_PAGES: { request: dirtyPages(false), reply: dirtyPages(true) },
  REGION_WRITE_MULTI: { request: writeMulti, reply: writeMultiReply },
  DEVICE_FEATURE: { request: deviceFeature, reply: deviceFeature },
  MIG_DATA_READ: { request: migData, reply: migData },
  MIG_DATA_WRITE: { request: migData, reply: emptyBody },
};
