// DEVICE_GET_REGION_INFO (with its capability chain), REGION_READ,
// REGION_WRITE, REGION_WRITE_MULTI, DEVICE_GET_REGION_IO_FDS.
import { RegionCapId, RegionFlag } from '../constants.js';
import { type StructValue, defineStruct } from '../struct.js';
import { type Codec, malformed, need, tail, withTail } from './codec.js';
import { fixedWithExtra } from './device.js';

export const RegionInfoStruct = defineStruct('vfio_region_info', {
  argsz: 'u32',
  flags: 'u32',
  index: 'u32',
  capOffset: 'u32',
  size: 'u64',
  offset: 'u64',
});
export const CapHeaderStruct = defineStruct('vfio_info_cap_header', { id: 'u16', version: 'u16', next: 'u32' });
export const SparseMmapStruct = defineStruct('vfio_region_info_cap_sparse_mmap', {
  nrAreas: 'u32',
  reserved: 'u32',
});
export const SparseAreaStruct = defineStruct('vfio_region_sparse_mmap_area', { offset: 'u64', size: 'u64' });
export const RegionTypeStruct = defineStruct('vfio_region_info_cap_type', { type: 'u32', subtype: 'u32' });

export interface SparseArea {
  offset: bigint;
  size: bigint;
}
/**
 * `pad`: bytes between a known capability's end and the next one's start
 * (the chain may leave room), kept so that re-encoding gives the same bytes.
 */
export type RegionCap =
  | { id: typeof RegionCapId.SPARSE_MMAP; version: number; areas: SparseArea[]; reserved?: number; pad?: Buffer }
  | { id: typeof RegionCapId.TYPE; version: number; type: number; subtype: number; pad?: Buffer }
  | { id: number; version: number; body: Buffer };

/** DEVICE_GET_REGION_INFO request and reply. */
export type RegionInfoBody = StructValue<typeof RegionInfoStruct> & {
  /** Parsed capability chain (replies with the CAPS flag). */
  caps?: RegionCap[];
  /** Bytes not described by the struct or the chain (e.g. a request's zeroed buffer). */
  extra?: Buffer;
};

function capSize(c: RegionCap): number {
  const pad = 'pad' in c && c.pad ? c.pad.length : 0;
  if (c.id === RegionCapId.SPARSE_MMAP && 'areas' in c) {
    return CapHeaderStruct.size + SparseMmapStruct.size + c.areas.length * SparseAreaStruct.size + pad;
  }
  if (c.id === RegionCapId.TYPE && 'subtype' in c) return CapHeaderStruct.size + RegionTypeStruct.size + pad;
  return CapHeaderStruct.size + (c as { body: Buffer }).body.length;
}

/** Encodes a chain laid out back to back from `base` (offsets from the info struct). */
export function encodeCaps(caps: RegionCap[], base: number): Buffer {
  const total = caps.reduce((n, c) => n + capSize(c), 0);
  const b = Buffer.alloc(total);
  let at = 0;
  caps.forEach((c, i) => {
    const size = capSize(c);
    const next = i === caps.length - 1 ? 0 : base + at + size;
    CapHeaderStruct.write(b, { id: c.id, version: c.version, next }, at);
    const body = at + CapHeaderStruct.size;
    if (c.id === RegionCapId.SPARSE_MMAP && 'areas' in c) {
      SparseMmapStruct.write(b, { nrAreas: c.areas.length, reserved: c.reserved ?? 0 }, body);
      c.areas.forEach((a, k) => SparseAreaStruct.write(b, a, body + SparseMmapStruct.size + k * SparseAreaStruct.size));
    } else if (c.id === RegionCapId.TYPE && 'subtype' in c) {
      RegionTypeStruct.write(b, { type: c.type, subtype: c.subtype }, body);
    } else {
      (c as { body: Buffer }).body.copy(b, body);
    }
    if ('pad' in c && c.pad) c.pad.copy(b, at + size - c.pad.length);
    at += size;
  });
  return b;
}

/**
 * Walks a capability chain inside `p` (a whole region info payload).  Rejects
 * loops, backward or out-of-range links, and areas that do not fit.
 */
export function decodeCaps(p: Buffer, first: number): { caps: RegionCap[]; end: number } {
  const caps: RegionCap[] = [];
  let at = first;
  let end = first;
  const seen = new Set<number>();
  while (at !== 0) {
    if (seen.has(at) || at < RegionInfoStruct.size || at + CapHeaderStruct.size > p.length) {
      throw malformed(`region capability at ${at} outside the reply`);
    }
    seen.add(at);
    const h = CapHeaderStruct.read(p, at);
    // A link into this capability's own header would make it overlap the next.
    if (h.next !== 0 && h.next < at + CapHeaderStruct.size) throw malformed('region capability chain goes backwards');
    const body = at + CapHeaderStruct.size;
    const limit = h.next !== 0 ? h.next : p.length;
    if (limit > p.length) throw malformed('region capability chain past the reply');
    if (h.id === RegionCapId.SPARSE_MMAP) {
      need(p, body + SparseMmapStruct.size, 'sparse mmap capability');
      const s = SparseMmapStruct.read(p, body);
      const areasEnd = body + SparseMmapStruct.size + s.nrAreas * SparseAreaStruct.size;
      if (areasEnd > limit) throw malformed(`sparse mmap capability: ${s.nrAreas} areas do not fit`);
      const areas: SparseArea[] = [];
      for (let k = 0; k < s.nrAreas; k++) areas.push(SparseAreaStruct.read(p, body + SparseMmapStruct.size + k * SparseAreaStruct.size));
      caps.push({ id: RegionCapId.SPARSE_MMAP, version: h.version, areas, ...(s.reserved ? { reserved: s.reserved } : {}) });
      end = areasEnd;
    } else if (h.id === RegionCapId.TYPE) {
      if (body + RegionTypeStruct.size > limit) throw malformed('type capability truncated');
      const t = RegionTypeStruct.read(p, body);
      caps.push({ id: RegionCapId.TYPE, version: h.version, type: t.type, subtype: t.subtype });
      end = body + RegionTypeStruct.size;
    } else {
      caps.push({ id: h.id, version: h.version, body: Buffer.from(p.subarray(body, limit)) });
      end = limit;
    }
    if (h.next !== 0 && end < h.next) {
      (caps[caps.length - 1] as { pad?: Buffer }).pad = Buffer.from(p.subarray(end, h.next));
      end = h.next;
    }
    at = h.next;
  }
  return { caps, end };
}

export const deviceGetRegionInfo: Codec<RegionInfoBody> = fixedWithExtra(RegionInfoStruct, 'DEVICE_GET_REGION_INFO');

export const deviceGetRegionInfoReply: Codec<RegionInfoBody> = {
  decode(p) {
    need(p, RegionInfoStruct.size, 'DEVICE_GET_REGION_INFO reply');
    const v: RegionInfoBody = RegionInfoStruct.read(p);
    let end = RegionInfoStruct.size;
    if (v.flags & RegionFlag.CAPS && v.capOffset !== 0 && p.length > RegionInfoStruct.size) {
      const r = decodeCaps(p, v.capOffset);
      v.caps = r.caps;
      if (v.capOffset !== RegionInfoStruct.size) {
        // a gap before the chain: keep it so the encoding stays exact
        v.extra = Buffer.from(p.subarray(RegionInfoStruct.size, v.capOffset));
      }
      end = r.end;
      if (end < p.length) v.extra = Buffer.concat([v.extra ?? Buffer.alloc(0), p.subarray(end)]);
      return v;
    }
    if (p.length > end) v.extra = tail(p, end);
    return v;
  },
  encode(v) {
    const head = RegionInfoStruct.encode(v);
    if (!v.caps || v.caps.length === 0) return v.extra ? Buffer.concat([head, v.extra]) : head;
    const gap = Math.max(0, v.capOffset - RegionInfoStruct.size);
    const pre = v.extra && gap > 0 ? v.extra.subarray(0, gap) : Buffer.alloc(gap);
    const post = v.extra && v.extra.length > gap ? v.extra.subarray(gap) : Buffer.alloc(0);
    return Buffer.concat([head, pre, encodeCaps(v.caps, v.capOffset), post]);
  },
};

export const RegionAccessStruct = defineStruct('vfio_user_region_access', {
  offset: 'u64',
  region: 'u32',
  count: 'u32',
});
/** REGION_READ / REGION_WRITE request and reply. */
export type RegionAccessBody = StructValue<typeof RegionAccessStruct> & {
  /** REGION_WRITE request / REGION_READ reply: the bytes. */
  data?: Buffer;
};
const regionAccess: Codec<RegionAccessBody> = withTail(RegionAccessStruct, 'region access', 'data');
export const regionRead = regionAccess;
export const regionReadReply = regionAccess;
export const regionWrite = regionAccess;
export const regionWriteReply = regionAccess;

/** REGION_WRITE_MULTI: wr_cnt then fixed 24-byte entries carrying up to 8 bytes each. */
export const WriteMultiHeadStruct = defineStruct('vfio_user_write_multi', { wrCnt: 'u64' });
export const WriteMultiEntryStruct = defineStruct('vfio_user_write_multi_data', {
  offset: 'u64',
  region: 'u32',
  count: 'u32',
  data: 'u64',
});
/** One REGION_WRITE_MULTI entry; `data` is the 8 bytes on the wire (only `count` of them matter). */
export type WriteMultiEntry = StructValue<typeof WriteMultiEntryStruct>;
/** REGION_WRITE_MULTI request. */
export type WriteMultiBody = StructValue<typeof WriteMultiHeadStruct> & {
  writes: WriteMultiEntry[];
  extra?: Buffer;
};
export const regionWriteMulti: Codec<WriteMultiBody> = {
  decode(p) {
    need(p, WriteMultiHeadStruct.size, 'REGION_WRITE_MULTI');
    const { wrCnt } = WriteMultiHeadStruct.read(p);
    const room = Math.floor((p.length - WriteMultiHeadStruct.size) / WriteMultiEntryStruct.size);
    const n = wrCnt < BigInt(room) ? Number(wrCnt) : room;
    const writes: WriteMultiEntry[] = [];
    for (let i = 0; i < n; i++) writes.push(WriteMultiEntryStruct.read(p, WriteMultiHeadStruct.size + i * WriteMultiEntryStruct.size));
    const end = WriteMultiHeadStruct.size + n * WriteMultiEntryStruct.size;
    const v: WriteMultiBody = { wrCnt, writes };
    if (p.length > end) v.extra = tail(p, end);
    return v;
  },
  encode(v) {
    const b = Buffer.alloc(WriteMultiHeadStruct.size + v.writes.length * WriteMultiEntryStruct.size);
    WriteMultiHeadStruct.write(b, { wrCnt: v.wrCnt });
    v.writes.forEach((w, i) => WriteMultiEntryStruct.write(b, w, WriteMultiHeadStruct.size + i * WriteMultiEntryStruct.size));
    return v.extra ? Buffer.concat([b, v.extra]) : b;
  },
};
export const regionWriteMultiReply: Codec<{ wrCnt: bigint; extra?: Buffer }> = fixedWithExtra(
  WriteMultiHeadStruct,
  'REGION_WRITE_MULTI reply',
);

export const IoFdsStruct = defineStruct('vfio_user_region_io_fds', {
  argsz: 'u32',
  flags: 'u32',
  index: 'u32',
  count: 'u32',
});
/** The spec's 40-byte sub-region entry (ioeventfd or ioregionfd). */
export const SubRegion40Struct = defineStruct('vfio_user_sub_region_io_fd', {
  offset: 'u64',
  size: 'u64',
  fdIndex: 'u32',
  type: 'u32',
  flags: 'u32',
  padding: 'u32',
  data: 'u64',
});
/** libvfio-user's 48-byte entry: a shadow memory offset before datamatch. */
export const SubRegion48Struct = defineStruct('vfio_user_sub_region_ioeventfd', {
  offset: 'u64',
  size: 'u64',
  fdIndex: 'u32',
  type: 'u32',
  flags: 'u32',
  padding: 'u32',
  shadowOffset: 'u64',
  data: 'u64',
});
/**
 * One sub-region entry, either layout: `padding` is libvfio-user's
 * shadow_mem_fd_index, `data` the datamatch (ioeventfd) or user_data
 * (ioregionfd); `shadowOffset` only in the 48-byte form.
 */
export type SubRegion = StructValue<typeof SubRegion40Struct> & { shadowOffset?: bigint };
/** DEVICE_GET_REGION_IO_FDS request and reply. */
export type IoFdsBody = StructValue<typeof IoFdsStruct> & {
  /**
   * Reply entries.  Their size is (payload - 16) / count: 48 from
   * libvfio-user (which we also send), 40 in the spec.  Both are accepted.
   */
  subRegions?: SubRegion[];
  entrySize?: 40 | 48;
  extra?: Buffer;
};
export const deviceGetRegionIoFds: Codec<IoFdsBody> = fixedWithExtra(IoFdsStruct, 'DEVICE_GET_REGION_IO_FDS');
export const deviceGetRegionIoFdsReply: Codec<IoFdsBody> = {
  decode(p) {
    need(p, IoFdsStruct.size, 'DEVICE_GET_REGION_IO_FDS reply');
    const v: IoFdsBody = IoFdsStruct.read(p);
    const rest = p.length - IoFdsStruct.size;
    if (rest === 0) return v;
    const size = v.count > 0 ? rest / v.count : 0;
    if (size !== 40 && size !== 48) {
      v.extra = tail(p, IoFdsStruct.size);
      return v;
    }
    v.entrySize = size;
    v.subRegions = [];
    for (let i = 0; i < v.count; i++) {
      const at = IoFdsStruct.size + i * size;
      v.subRegions.push(size === 48 ? SubRegion48Struct.read(p, at) : SubRegion40Struct.read(p, at));
    }
    return v;
  },
  encode(v) {
    const head = IoFdsStruct.encode(v);
    if (!v.subRegions) return v.extra ? Buffer.concat([head, v.extra]) : head;
    const size = v.entrySize ?? 48;
    const b = Buffer.alloc(v.subRegions.length * size);
    v.subRegions.forEach((s, i) => {
      if (size === 48) SubRegion48Struct.write(b, { ...s, shadowOffset: s.shadowOffset ?? 0n }, i * size);
      else SubRegion40Struct.write(b, s, i * size);
    });
    return Buffer.concat([head, b, v.extra ?? Buffer.alloc(0)]);
  },
};
