// MIG_DATA_READ / MIG_DATA_WRITE (v2) and the legacy DIRTY_PAGES command (v1).
import { DirtyPagesFlag } from '../constants.js';
import { type StructValue, defineStruct } from '../struct.js';
import { type Codec, type EmptyBody, emptyBody, need, tail, withTail } from './codec.js';

export const MigDataStruct = defineStruct('vfio_user_mig_data', { argsz: 'u32', size: 'u32' });
/** MIG_DATA_READ / MIG_DATA_WRITE request and reply. */
export type MigDataBody = StructValue<typeof MigDataStruct> & {
  /** MIG_DATA_WRITE request / MIG_DATA_READ reply: the bytes. */
  data?: Buffer;
};
const migData: Codec<MigDataBody> = withTail(MigDataStruct, 'MIG_DATA', 'data');
export const migDataRead = migData;
/**
 * `size` says how many bytes the device produced; the payload is padded to
 * the size asked for (data_len 1024 with size 8 in the trace), as
 * libvfio-user does and its client expects.  Readers use only `size` bytes.
 */
export const migDataReadReply = migData;
export const migDataWrite = migData;
export const migDataWriteReply: Codec<EmptyBody> = emptyBody;

/** Legacy struct vfio_user_dirty_pages. */
export const DirtyPagesStruct = defineStruct('vfio_user_dirty_pages', { argsz: 'u32', flags: 'u32' });
/**
 * Legacy struct vfio_user_bitmap_range.  The 0.9 spec text describes a
 * 24-byte kernel-style bitmap (40 bytes in all); libvfio-user, the only
 * implementation, sent its packed 16-byte vfio_user_bitmap (32 in all).
 * We follow the implementation.
 */
export const BitmapRangeStruct = defineStruct('vfio_user_bitmap_range', {
  iova: 'u64',
  size: 'u64',
  pgsize: 'u64',
  bitmapSize: 'u64',
});
/** DIRTY_PAGES request and reply. */
export type DirtyPagesBody = StructValue<typeof DirtyPagesStruct> & {
  range?: StructValue<typeof BitmapRangeStruct>;
  /** Reply to GET_BITMAP: the bitmap. */
  bitmap?: Buffer;
  extra?: Buffer;
};
function decodeDirty(p: Buffer, reply: boolean): DirtyPagesBody {
  need(p, DirtyPagesStruct.size, 'DIRTY_PAGES');
  const v: DirtyPagesBody = DirtyPagesStruct.read(p);
  let at = DirtyPagesStruct.size;
  if (v.flags & DirtyPagesFlag.GET_BITMAP && p.length >= at + BitmapRangeStruct.size) {
    v.range = BitmapRangeStruct.read(p, at);
    at += BitmapRangeStruct.size;
    if (reply && p.length > at) {
      v.bitmap = tail(p, at);
      at = p.length;
    }
  }
  if (p.length > at) v.extra = tail(p, at);
  return v;
}
function encodeDirty(v: DirtyPagesBody): Buffer {
  const parts = [DirtyPagesStruct.encode(v)];
  if (v.range) parts.push(BitmapRangeStruct.encode(v.range));
  if (v.bitmap) parts.push(v.bitmap);
  if (v.extra) parts.push(v.extra);
  return Buffer.concat(parts);
}
export const dirtyPages: Codec<DirtyPagesBody> = { decode: (p) => decodeDirty(p, false), encode: encodeDirty };
export const dirtyPagesReply: Codec<DirtyPagesBody> = { decode: (p) => decodeDirty(p, true), encode: encodeDirty };
