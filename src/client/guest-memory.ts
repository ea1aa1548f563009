// Guest memory as the client (the VMM) owns it: ranges at guest physical
// addresses, each either shared (a sealed memfd the server can mmap) or
// private (a plain buffer the server reaches with DMA_READ/DMA_WRITE).
// Pages the server writes by message are logged here: the client is the one
// performing those writes, so it tracks them (the server reports them clean).
import { constants as bufferConstants } from 'node:buffer';
import { PAGE_SIZE, native } from '../native/index.js';
import { Errno } from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';

/** A range of guest RAM. */
export interface GuestRange {
  /** Guest address. */
  iova: number;
  /** Bytes. */
  size: number;
  /** The bytes; for shared ranges a view of the memfd mapping. */
  readonly bytes: Buffer;
  /** memfd (shared ranges), -1 for private ones. */
  readonly fd: number;
  /** Pages written by the server through DMA_WRITE messages. */
  readonly messageDirty: Uint8Array;
  /** Pages written by the guest's CPUs (through GuestMemory.write). */
  readonly cpuDirty: Uint8Array;
}

/** The guest RAM a client owns (VfioUserClient.memory): ranges to DMA-map, with dirty tracking. */
export class GuestMemory {
  private readonly ranges: GuestRange[] = [];
  private readonly abs = new Map<GuestRange, ArrayBuffer>();

  /** Every range, by address. */
  get all(): readonly GuestRange[] {
    return this.ranges;
  }

  /**
   * Adds guest RAM at [iova, iova+size).  `shared` (default: when the native
   * addon is loaded) backs it with a sealed memfd so it can be DMA-mapped
   * with its descriptor; otherwise it stays private to this process.
   */
  add(iova: number, size: number, opts: { shared?: boolean } = {}): GuestRange {
    if (!Number.isSafeInteger(iova) || !Number.isSafeInteger(size) || size <= 0) throw new VfuError(Errno.EINVAL, 'bad guest range');
    if (size > bufferConstants.MAX_LENGTH) throw new VfuError(Errno.EINVAL, `guest range larger than ${bufferConstants.MAX_LENGTH} bytes: add several`);
    if (this.ranges.some((r) => iova < r.iova + r.size && r.iova < iova + size)) throw new VfuError(Errno.EEXIST, 'guest ranges overlap');
    const shared = (opts.shared ?? native !== null) && native !== null;
    let bytes: Buffer;
    let fd = -1;
    let ab: ArrayBuffer | null = null;
    if (shared) {
      const len = Math.ceil(size / PAGE_SIZE) * PAGE_SIZE;
      fd = native!.memfdCreate('vfu-guest', len, true);
      ab = native!.mmap(fd, 0, len, 3);
      bytes = Buffer.from(ab, 0, size);
    } else {
      bytes = Buffer.alloc(size);
    }
    const pages = Math.ceil(size / PAGE_SIZE);
    const r: GuestRange = { iova, size, bytes, fd, messageDirty: new Uint8Array(pages), cpuDirty: new Uint8Array(pages) };
    this.ranges.push(r);
    this.ranges.sort((a, b) => a.iova - b.iova);
    if (ab) this.abs.set(r, ab);
    return r;
  }

  /** The range holding `iova`. */
  find(iova: number): GuestRange | undefined {
    return this.ranges.find((r) => r.iova <= iova && iova < r.iova + r.size);
  }

  /** The range holding all of [iova, iova+length), or undefined. */
  within(iova: number, length: number): GuestRange | undefined {
    const r = this.find(iova);
    return r !== undefined && iova + length <= r.iova + r.size ? r : undefined;
  }

  /** A view of guest memory (one range). */
  view(iova: number, length: number): Buffer {
    const r = this.within(iova, length);
    if (!r) throw new VfuError(Errno.EFAULT, `guest range [0x${iova.toString(16)}, +${length}) not present`);
    return r.bytes.subarray(iova - r.iova, iova - r.iova + length);
  }

  /** A guest CPU write: stores `data` and logs the pages dirty. */
  write(iova: number, data: Buffer): void {
    data.copy(this.view(iova, data.length));
    const r = this.find(iova)!;
    const first = Math.floor((iova - r.iova) / PAGE_SIZE);
    const last = Math.floor((iova - r.iova + Math.max(1, data.length) - 1) / PAGE_SIZE);
    r.cpuDirty.fill(1, first, last + 1);
  }

  /**
   * Takes (and clears) every page of `r` dirtied by the CPU or by message
   * DMA, as page numbers within the range.
   */
  takeDirty(r: GuestRange): number[] {
    const out: number[] = [];
    const a = r.cpuDirty;
    const b = r.messageDirty;
    for (let i = 0; i < a.length; i++) {
      if (a[i] || b[i]) {
        out.push(i);
        a[i] = 0;
        b[i] = 0;
      }
    }
    return out;
  }

  /** Records pages the server wrote by message. */
  markMessageDirty(iova: number, length: number): void {
    const r = this.within(iova, length);
    if (!r || length === 0) return;
    const first = Math.floor((iova - r.iova) / PAGE_SIZE);
    const last = Math.floor((iova - r.iova + length - 1) / PAGE_SIZE);
    r.messageDirty.fill(1, first, last + 1);
  }

  /** Takes (and clears) the message-dirty pages of a range, as guest page numbers. */
  takeMessageDirty(r: GuestRange): number[] {
    const out: number[] = [];
    for (let i = 0; i < r.messageDirty.length; i++) {
      if (r.messageDirty[i]) {
        out.push(i);
        r.messageDirty[i] = 0;
      }
    }
    return out;
  }

  /** Unmaps and closes everything. */
  dispose(): void {
    for (const [, ab] of this.abs) native?.munmap(ab);
    for (const r of this.ranges) if (r.fd >= 0) native?.close(r.fd);
    this.abs.clear();
    this.ranges.length = 0;
  }
}
