// Device regions: the nine PCI indexes (BARs, ROM, config, VGA) plus
// device-specific ones.  A region is served by access callbacks, by server
// memory (a sealed memfd the client may mmap, whole or in sparse areas), or
// both (callbacks see REGION_READ/WRITE, the mapping bypasses them).
import { PAGE_SIZE, native } from '../native/index.js';
import { Errno, RegionFlag } from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';

/**
 * Callbacks that serve a region's REGION_READ / REGION_WRITE.  Either may be
 * `async` (the server then holds later commands until it settles); any
 * other return value is ignored, so `(o, out) => regs.copy(out, 0, o)` is
 * fine.  Throw a {@link VfuError} to reply with its errno.
 */
export interface RegionAccess {
  /** Fill `out` (exactly the bytes asked for) from `offset`. */
  read?(offset: number, out: Buffer): unknown;
  /**
   * Apply `data` at `offset`.  `data` is a view of the receive buffer: it is
   * valid until the callback returns or first awaits; copy what you keep.
   */
  write?(offset: number, data: Buffer): unknown;
}

/** A part of a memory-backed region the client may mmap. */
export interface SparseArea {
  /** Byte offset in the region (page-aligned). */
  offset: number;
  /** Length in bytes. */
  size: number;
}

/** How {@link VfioUserDevice.addRegion} describes a region. */
export interface RegionSpec {
  /** Bytes (a BAR's size is rounded up to a power of two in config space). */
  size: number;
  /** Client may read / write (default both). */
  readable?: boolean;
  /** Client may write (default true). */
  writable?: boolean;
  /** For BARs: memory or I/O space, 64-bit, prefetchable. */
  kind?: 'mem' | 'io';
  /** A 64-bit BAR (takes two BAR slots). */
  is64?: boolean;
  /** A prefetchable memory BAR. */
  prefetchable?: boolean;
  /**
   * Back the region with server memory the client can mmap.  With `sparse`,
   * only those areas are advertised as mappable.
   */
  memory?: boolean;
  /** With `memory`: only these areas are mappable. */
  sparse?: SparseArea[];
  /** VFIO_REGION_INFO_CAP_TYPE for device-specific regions. */
  type?: {
    /** VFIO_REGION_TYPE_*. */
    type: number;
    /** VFIO_REGION_SUBTYPE_*. */
    subtype: number;
  };
  /** Callbacks serving REGION_READ / REGION_WRITE. */
  access?: RegionAccess;
}

/** A region as the server holds it (see {@link VfioUserDevice.region}). */
export class Region {
  /** The region index. */
  readonly index: number;
  /** Bytes. */
  readonly size: number;
  /** Client may read. */
  readonly readable: boolean;
  /** Client may write. */
  readonly writable: boolean;
  /** Memory or I/O space (BARs). */
  readonly kind: 'mem' | 'io';
  /** A 64-bit BAR. */
  readonly is64: boolean;
  /** A prefetchable BAR. */
  readonly prefetchable: boolean;
  /** Its access callbacks. */
  readonly access: RegionAccess | undefined;
  /** The region type capability, if any. */
  readonly type:
    | {
        /** VFIO_REGION_TYPE_*. */
        type: number;
        /** VFIO_REGION_SUBTYPE_*. */
        subtype: number;
      }
    | undefined;
  /** The mappable areas (memory-backed regions). */
  readonly sparse: SparseArea[];
  /** The region's memory (memory-backed regions), exactly `size` bytes. */
  readonly memory: Buffer | null;
  /** The memfd behind `memory` (-1 without the native addon). */
  readonly fd: number;
  private ab: ArrayBuffer | null = null;

  constructor(index: number, spec: RegionSpec) {
    if (!Number.isSafeInteger(spec.size) || spec.size < 0) throw new VfuError(Errno.EINVAL, `region ${index}: bad size`);
    this.index = index;
    this.size = spec.size;
    this.readable = spec.readable ?? true;
    this.writable = spec.writable ?? true;
    this.kind = spec.kind ?? 'mem';
    this.is64 = spec.is64 ?? false;
    this.prefetchable = spec.prefetchable ?? false;
    this.access = spec.access;
    this.type = spec.type;
    for (const a of spec.sparse ?? []) {
      if (a.offset < 0 || a.size <= 0 || a.offset + a.size > spec.size || a.offset % PAGE_SIZE !== 0) {
        throw new VfuError(Errno.EINVAL, `region ${index}: sparse area [${a.offset}, +${a.size}) invalid`);
      }
    }
    if (spec.sparse && !spec.memory) throw new VfuError(Errno.EINVAL, `region ${index}: sparse areas need memory`);
    if (spec.memory && spec.size > 0) {
      const len = Math.ceil(spec.size / PAGE_SIZE) * PAGE_SIZE;
      if (native) {
        this.fd = native.memfdCreate(`vfu-region${index}`, len, true);
        this.ab = native.mmap(this.fd, 0, len, 3);
        this.memory = Buffer.from(this.ab, 0, spec.size);
      } else {
        // Without the addon the memory stays private: served by messages only.
        this.fd = -1;
        this.memory = Buffer.alloc(spec.size);
      }
      this.sparse = spec.sparse ?? [{ offset: 0, size: spec.size }];
    } else {
      this.fd = -1;
      this.memory = null;
      this.sparse = [];
    }
  }

  /** Whether the client may mmap (an fd exists and the transport passes it). */
  mappable(canPassFds: boolean): boolean {
    return this.fd >= 0 && canPassFds;
  }

  /** VFIO_REGION_INFO_FLAG_* as REGION_INFO reports them. */
  flags(canPassFds: boolean): number {
    if (this.size === 0) return 0;
    return (this.readable ? RegionFlag.READ : 0) | (this.writable ? RegionFlag.WRITE : 0) | (this.mappable(canPassFds) ? RegionFlag.MMAP : 0);
  }

  /** Releases the memory (server shutdown). */
  dispose(): void {
    if (this.ab) native?.munmap(this.ab);
    this.ab = null;
    if (this.fd >= 0) native?.close(this.fd);
  }
}
