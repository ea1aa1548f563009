// DMA_MAP, DMA_UNMAP (with the legacy dirty-bitmap tail), DMA_READ, DMA_WRITE.
import { DmaUnmapFlag } from '../constants.js';
import { type StructValue, defineStruct } from '../struct.js';
import { type Codec, type EmptyBody, emptyBody, need, tail, withTail } from './codec.js';

export const DmaMapStruct = defineStruct('vfio_user_dma_map', {
  argsz: 'u32',
  flags: 'u32',
  offset: 'u64',
  addr: 'u64',
  size: 'u64',
});
/** DMA_MAP request. */
export type DmaMapBody = StructValue<typeof DmaMapStruct> & { extra?: Buffer };
export const dmaMap: Codec<DmaMapBody> = withTail(DmaMapStruct, 'DMA_MAP', 'extra');
export const dmaMapReply: Codec<EmptyBody> = emptyBody;

export const DmaUnmapStruct = defineStruct('vfio_user_dma_unmap', {
  argsz: 'u32',
  flags: 'u32',
  addr: 'u64',
  size: 'u64',
});
/** struct vfio_user_bitmap: the legacy (v1) dirty bitmap header. */
export const BitmapStruct = defineStruct('vfio_user_bitmap', { pgsize: 'u64', size: 'u64' });

/** DMA_UNMAP request and reply. */
export type DmaUnmapBody = StructValue<typeof DmaUnmapStruct> & {
  /** Present with GET_DIRTY_BITMAP (v1). */
  bitmap?: StructValue<typeof BitmapStruct>;
  /** Reply only: the dirty bitmap bytes (v1). */
  data?: Buffer;
  extra?: Buffer;
};

function decodeUnmap(p: Buffer, reply: boolean): DmaUnmapBody {
  need(p, DmaUnmapStruct.size, 'DMA_UNMAP');
  const v: DmaUnmapBody = DmaUnmapStruct.read(p);
  let at = DmaUnmapStruct.size;
  if (v.flags & DmaUnmapFlag.GET_DIRTY_BITMAP && p.length >= at + BitmapStruct.size) {
    v.bitmap = BitmapStruct.read(p, at);
    at += BitmapStruct.size;
    if (reply && p.length > at) {
      v.data = tail(p, at);
      at = p.length;
    }
  }
  if (p.length > at) v.extra = tail(p, at);
  return v;
}
function encodeUnmap(v: DmaUnmapBody): Buffer {
  const parts = [DmaUnmapStruct.encode(v)];
  if (v.bitmap) parts.push(BitmapStruct.encode(v.bitmap));
  if (v.data) parts.push(v.data);
  if (v.extra) parts.push(v.extra);
  return Buffer.concat(parts);
}
export const dmaUnmap: Codec<DmaUnmapBody> = { decode: (p) => decodeUnmap(p, false), encode: encodeUnmap };
/** The reply echoes the request (plus the bitmap for v1 GET_DIRTY_BITMAP). */
export const dmaUnmapReply: Codec<DmaUnmapBody> = { decode: (p) => decodeUnmap(p, true), encode: encodeUnmap };

/** struct vfio_user_dma_region_access: address then a 64-bit count. */
export const DmaAccessStruct = defineStruct('vfio_user_dma_region_access', { addr: 'u64', count: 'u64' });

/** DMA_READ / DMA_WRITE request and reply. */
export type DmaAccessBody = StructValue<typeof DmaAccessStruct> & {
  /** DMA_WRITE request / DMA_READ reply: the bytes. */
  data?: Buffer;
  /**
   * DMA_WRITE reply only: width of `count`.  The spec gives 4 bytes; both
   * libvfio-user and its sample client use 8 (the trace shows 16-byte
   * replies).  We send 8 and accept either.
   */
  countBytes?: 4 | 8;
};
const dmaAccess = withTail(DmaAccessStruct, 'DMA access', 'data');
const decodeAccess = (p: Buffer): DmaAccessBody => dmaAccess.decode(p);
const encodeAccess = (v: DmaAccessBody): Buffer => dmaAccess.encode({ addr: v.addr, count: v.count, ...(v.data ? { data: v.data } : {}) });
export const dmaRead: Codec<DmaAccessBody> = { decode: decodeAccess, encode: encodeAccess };
export const dmaReadReply: Codec<DmaAccessBody> = dmaRead;
export const dmaWrite: Codec<DmaAccessBody> = { decode: decodeAccess, encode: encodeAccess };
export const dmaWriteReply: Codec<DmaAccessBody> = {
  decode(p) {
    if (p.length === 12) return { addr: p.readBigUInt64LE(0), count: BigInt(p.readUInt32LE(8)), countBytes: 4 };
    const v = decodeAccess(p);
    v.countBytes = 8;
    return v;
  },
  encode(v) {
    if (v.countBytes === 4) {
      const b = Buffer.alloc(12);
      b.writeBigUInt64LE(v.addr, 0);
      b.writeUInt32LE(Number(v.count), 8);
      return b;
    }
    return encodeAccess(v);
  },
};

export type { EmptyBody };
