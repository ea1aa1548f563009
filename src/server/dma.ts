// The client's memory as the device sees it: DMA mappings added and removed
// by DMA_MAP/DMA_UNMAP, address translation, and a scatter-gather API for
// device code.  Mappings that came with a descriptor are mmap()ed (or, with
// libvfio-user's FILE_IO flag, reached with pread/pwrite); the others are
// reached with DMA_READ/DMA_WRITE messages to the client.
//
// No access ever touches memory outside a mapping: every range is checked
// against the mapping table before any copy, mapped views are exact
// subarrays, and an unmapped ArrayBuffer is detached so stale views are empty.
// An asynchronous access re-checks its mapping after every await, so one
// that was unmapped meanwhile fails with ENOENT instead of reaching a closed
// (perhaps reused) descriptor.
//
// SIGBUS: a mapped file that shrinks turns accesses beyond its new end into
// SIGBUS, which kills the process.  Only files sealed against shrinking
// (F_SEAL_SHRINK, as memfds from our client and QEMU's memory-backend-memfd
// are) are mmap()ed; other files are reached with pread/pwrite, which return
// short counts (EIO here) instead of faulting.  See `UnsealedPolicy`.
//
// Costs: the table is a SortedMap (a balanced tree), so map, unmap and
// address lookup are O(log n) in the number of mappings and UNMAP_ALL is
// O(n).  pread/pwrite on 'file' mappings run on libuv's thread pool for
// read()/write(); readSync()/writeSync() do them on the calling thread, which
// for the files a client can pass (memfds, tmpfs, page-cached files) costs
// the copy; a file on a filesystem that can stall (FUSE, NFS) would stall
// the event loop there, so device code that may meet one uses read()/write().
import { constants as bufferConstants } from 'node:buffer';
import { fstatSync, read as fsRead, readFileSync, readSync, write as fsWrite, writeSync } from 'node:fs';
import { PAGE_SIZE, native, requireNative } from '../native/index.js';
import { DmaMapFlag, Errno } from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';
import { SortedMap, type SortedEntry } from '../util/sorted-map.js';

/** How a mapping is reached. */
export type DmaAccessMode = 'mmap' | 'file' | 'message';

/** A DMA mapping as device code sees it (onMap / onUnmap). */
export interface DmaMappingInfo {
  /** Guest address. */
  iova: number;
  /** Bytes. */
  size: number;
  /** 1 read, 2 write (DmaMapFlag bits). */
  prot: number;
  /** How the server reaches it. */
  mode: DmaAccessMode;
  /** Offset into the descriptor's file. */
  fileOffset: number;
}

/** A DMA mapping as the server holds it (DmaSegment.mapping). */
export interface DmaMapping extends DmaMappingInfo {
  /** The descriptor (-1 for message DMA). */
  readonly fd: number;
  /** Exact view of the mapped bytes (mmap mode), empty once unmapped. */
  view: Buffer;
  /** The ArrayBuffer returned by mmap (page aligned, unmapped on removal). */
  ab: ArrayBuffer | null;
  /** False once removed: in-flight accesses stop at their next step. */
  live: boolean;
  /** mmap()ed although not sealed (policy 'mmap'): sizes re-checked per access. */
  unsealed: boolean;
  /** pread/pwrite calls on the thread pool: the descriptor is closed after the last. */
  inflight: number;
}

/**
 * What to do with a descriptor not sealed against shrinking (a plain file,
 * an unsealed memfd), which its owner could truncate under our mapping:
 *  - 'file' (default): no mmap; reads and writes use pread/pwrite, which
 *    cannot fault (view() is refused with EFAULT for such mappings);
 *  - 'mmap': mmap anyway, re-checking the file size (fstat) before every
 *    access made through this API.  A truncation racing with an access, or
 *    one while device code holds a view(), still raises SIGBUS: the residual
 *    risk is the device author's to accept;
 *  - 'refuse': DMA_MAP fails with EINVAL.
 */
export type UnsealedPolicy = 'file' | 'mmap' | 'refuse';

/** Sends DMA_READ/DMA_WRITE requests to the client (provided by the session). */
export interface MessageDma {
  /** Largest count the client accepts per message (its max_data_xfer_size). */
  readonly maxChunk: number;
  dmaRead(addr: number, count: number, into: Buffer, at: number): Promise<void>;
  dmaWrite(addr: number, data: Buffer): Promise<void>;
}

/** Limits on a client's DMA mappings (see RELIABILITY.md). */
export interface DmaLimits {
  /** Most mappings at once (libvfio-user: EINVAL beyond). */
  maxMappings: number;
  /** Largest total mapped size in bytes (ENOSPC beyond). */
  maxTotalSize: number;
  /** Largest single mapping (ENOSPC beyond, like libvfio-user's MAX_DMA_SIZE). */
  maxMappingSize: number;
}

/**
 * Areas of vm.max_map_count left to the process itself (V8's heap pages,
 * thread stacks, libraries, region memfds): a quarter of the limit, at
 * least 4096.  Measured: `vfu serve sample` has 141 areas at rest; a Node
 * process with a 490 MiB heap 1,901 (V8 maps its heap in 256 KiB pages,
 * about 4 areas per MiB), so the kernel's default leaves room for a 4 GiB
 * heap, about what V8 allows by default.
 */
function mappingsLeftByVmaLimit(): number {
  let limit = 65530; // the kernel's default
  try {
    const v = Number(readFileSync('/proc/sys/vm/max_map_count', 'utf8').trim());
    if (Number.isSafeInteger(v) && v > 0) limit = v;
  } catch {
    // not Linux, or no /proc: assume the default
  }
  return Math.max(1, limit - Math.max(4096, Math.floor(limit / 4)));
}

/**
 * Default limits.  maxMappings: each mmap()ed mapping is one memory area of
 * the process, and past vm.max_map_count mmap fails (and so do V8's own
 * allocations), so the default is 65535 (libvfio-user's) or what the
 * system's limit leaves after a margin, whichever is lower: 49,148 with the
 * kernel's default of 65,530.
 */
export const defaultDmaLimits: DmaLimits = {
  maxMappings: Math.min(65535, mappingsLeftByVmaLimit()),
  maxTotalSize: 2 ** 52,
  maxMappingSize: 8 * 2 ** 40,
};

/** One piece of a translated range, inside a single mapping. */
export interface DmaSegment {
  /** The mapping this piece lies in. */
  mapping: DmaMapping;
  /** IOVA of this piece. */
  iova: number;
  /** Offset within the mapping. */
  offset: number;
  /** Bytes. */
  length: number;
}

/** Marks written IOVA ranges dirty while logging is on. */
export type DirtySink = (iova: number, length: number) => void;

const PROT_READ = DmaMapFlag.READ;
const F_SEAL_SHRINK = 0x2;
/** Largest ArrayBuffer (and so mmap view) Node can make. */
const MAX_ARRAY_BUFFER = bufferConstants.MAX_LENGTH;
const PROT_WRITE = DmaMapFlag.WRITE;

function safeEnd(iova: number, size: number): number {
  const end = iova + size;
  if (!Number.isSafeInteger(iova) || !Number.isSafeInteger(size) || !Number.isSafeInteger(end)) {
    throw new VfuError(Errno.EINVAL, 'DMA range beyond 2^53');
  }
  return end;
}

/** The device's DMA into guest memory (VfioUserDevice.dma): read and write by guest address, with dirty pages logged. */
export class DmaController {
  /** Keyed by iova, non-overlapping. */
  private maps = new SortedMap<DmaMapping>();
  private total = 0;
  /** Descriptors not sealed against shrinking (see UnsealedPolicy). */
  unsealed: UnsealedPolicy = 'file';
  /** Set while a quiesce is in force: device DMA must wait. */
  quiesced = false;
  /** Where dirty pages are reported (the server's dirty log). @internal */
  dirty: DirtySink | null = null;
  /** DMA_READ/DMA_WRITE through the session, while a client is attached. @internal */
  messages: MessageDma | null = null;
  /** The device's onMap callback (setupDma). @internal */
  onMap: ((m: DmaMappingInfo) => void) | null = null;
  /** The device's onUnmap callback (setupDma). @internal */
  onUnmap: ((m: DmaMappingInfo) => void) | null = null;
  private warnedUnsealed = false;
  /** Where the controller reports noteworthy conditions. */
  log: (message: string) => void = () => {};

  /** A controller with these limits. @internal */
  constructor(
    /** The mapping limits in force (setupDma, ServeOptions.dmaLimits). */
    readonly limits: DmaLimits = defaultDmaLimits,
  ) {}

  /** The mappings in IOVA order (a new array: O(n)). */
  get mappings(): readonly DmaMapping[] {
    return this.maps.values();
  }
  /** Mappings in place. */
  get count(): number {
    return this.maps.size;
  }
  /** Bytes mapped in all. */
  get totalSize(): number {
    return this.total;
  }

  /** The entry of the first mapping whose end is above `iova` (O(log n)). */
  private lowerBound(iova: number): SortedEntry<DmaMapping> | null {
    const e = this.maps.floor(iova);
    if (e === null) return this.maps.first;
    return e.value.iova + e.value.size > iova ? e : e.next;
  }

  /** The mapping containing `iova`, if any. */
  find(iova: number): DmaMapping | undefined {
    const m = this.maps.floor(iova)?.value;
    return m !== undefined && iova < m.iova + m.size ? m : undefined;
  }

  /**
   * Adds a mapping (DMA_MAP).  Takes ownership of `fd` on success; on failure
   * the caller still owns it.  Mapping exactly the same range again with the
   * same attributes succeeds (libvfio-user does the same); any other overlap
   * is EINVAL (libvfio-user; the spec text says EEXIST).
   */
  map(req: { iova: number; size: number; fileOffset: number; flags: number; fd: number | null }): DmaMapping {
    const { iova, size, fileOffset, flags, fd } = req;
    if (size <= 0) throw new VfuError(Errno.EINVAL, 'DMA map of size 0');
    const end = safeEnd(iova, size);
    safeEnd(fileOffset, size);
    const known = DmaMapFlag.READ | DmaMapFlag.WRITE | DmaMapFlag.MMAP | DmaMapFlag.FILE_IO;
    if (flags & ~known) throw new VfuError(Errno.EINVAL, `bad DMA map flags 0x${flags.toString(16)}`);
    if (flags & DmaMapFlag.MMAP && flags & DmaMapFlag.FILE_IO) throw new VfuError(Errno.EINVAL, 'MMAP and FILE_IO together');
    if (fd === null && flags & (DmaMapFlag.MMAP | DmaMapFlag.FILE_IO)) {
      throw new VfuError(Errno.EINVAL, 'MMAP/FILE_IO DMA map needs a file descriptor');
    }
    const prot = flags & (PROT_READ | PROT_WRITE);
    const hit = this.lowerBound(iova)?.value;
    if (hit !== undefined && hit.iova < end) {
      if (hit.iova === iova && hit.size === size && hit.prot === prot && hit.fileOffset === fileOffset && (fd === null) === (hit.fd < 0)) {
        if (fd !== null) native?.close(fd);
        return hit;
      }
      throw new VfuError(Errno.EINVAL, `DMA range [0x${iova.toString(16)}, 0x${end.toString(16)}) overlaps a mapping`);
    }
    if (this.maps.size >= this.limits.maxMappings) throw new VfuError(Errno.EINVAL, 'too many DMA mappings');
    if (size > this.limits.maxMappingSize) throw new VfuError(Errno.ENOSPC, 'DMA mapping too large');
    if (this.total + size > this.limits.maxTotalSize) throw new VfuError(Errno.ENOSPC, 'total DMA mapping size limit reached');

    let mode: DmaAccessMode = 'message';
    let ab: ArrayBuffer | null = null;
    let view = EMPTY;
    let unsealed = false;
    if (fd !== null) {
      const sealed = this.checkFile(fd, fileOffset, size);
      const aligned = fileOffset - (fileOffset % PAGE_SIZE);
      const delta = fileOffset - aligned;
      const len = Math.ceil((size + delta) / PAGE_SIZE) * PAGE_SIZE;
      // A mapping larger than the largest ArrayBuffer (4 GiB on Node 20:
      // guest RAM above 4G often is) cannot be one view: pread/pwrite it.
      const tooLarge = len > MAX_ARRAY_BUFFER;
      mode = flags & DmaMapFlag.FILE_IO || (!sealed && this.unsealed === 'file') || tooLarge ? 'file' : 'mmap';
      if (mode === 'mmap') {
        unsealed = !sealed;
        const n = requireNative('DMA mapping with a file descriptor');
        ab = n.mmap(fd, aligned, len, prot);
        view = Buffer.from(ab, delta, size);
      }
    }
    const m: DmaMapping = { iova, size, prot, mode, fileOffset, fd: fd ?? -1, view, ab, live: true, unsealed, inflight: 0 };
    this.maps.insert(iova, m);
    this.total += size;
    try {
      this.onMap?.(info(m));
    } catch (e) {
      // The device refused the mapping: undo it, the caller keeps the fd.
      this.maps.delete(iova);
      this.total -= size;
      m.live = false;
      if (m.ab) native!.munmap(m.ab);
      m.ab = null;
      m.view = EMPTY;
      throw e;
    }
    return m;
  }

  /**
   * Checks a DMA descriptor: a regular file (nothing else can be mapped or
   * read at an offset safely) holding the whole range now.  Returns whether
   * it is sealed against shrinking; unsealed ones are refused, read with
   * pread/pwrite or mmap()ed per `unsealed` (see UnsealedPolicy).
   */
  private checkFile(fd: number, offset: number, size: number): boolean {
    let st;
    try {
      st = fstatSync(fd);
    } catch (e) {
      throw new VfuError(Errno.EBADF, `DMA map fd: ${(e as Error).message}`);
    }
    if (!st.isFile()) throw new VfuError(Errno.EINVAL, 'DMA map descriptor is not a regular file');
    if (offset + size > st.size) {
      throw new VfuError(Errno.EINVAL, `DMA map [${offset}, +${size}) beyond the end of its file (${st.size})`);
    }
    const seals = native ? native.getSeals(fd) : -1;
    const sealed = seals >= 0 && (seals & F_SEAL_SHRINK) !== 0;
    if (!sealed) {
      if (this.unsealed === 'refuse') throw new VfuError(Errno.EINVAL, 'DMA map descriptor is not sealed against shrinking (F_SEAL_SHRINK)');
      if (this.unsealed === 'mmap' && !this.warnedUnsealed) {
        this.warnedUnsealed = true;
        this.log('DMA-mapped file is not sealed against shrinking: a client truncating it while the device holds a view would crash this server (SIGBUS)');
      }
    }
    return sealed;
  }

  /**
   * For unsealed files mapped anyway: EFAULT unless the file still holds the
   * mapping's bytes [offset, offset+length).
   */
  private checkStillBacked(m: DmaMapping, offset: number, length: number): void {
    if (!m.unsealed) return;
    let size: number;
    try {
      size = fstatSync(m.fd).size;
    } catch {
      size = 0;
    }
    if (m.fileOffset + offset + length > size) {
      throw new VfuError(Errno.EFAULT, `the file behind DMA mapping 0x${m.iova.toString(16)} shrank to ${size} bytes`);
    }
  }

  /** ENOENT for a mapping removed while an access waited. */
  private checkLive(m: DmaMapping): void {
    if (!m.live) throw new VfuError(Errno.ENOENT, `DMA mapping 0x${m.iova.toString(16)} was unmapped`);
  }

  /** Removes the mapping [iova, iova+size) exactly (DMA_UNMAP); ENOENT otherwise. */
  unmap(iova: number, size: number): DmaMappingInfo {
    const m = this.find(iova);
    if (m === undefined || m.iova !== iova || m.size !== size) {
      throw new VfuError(Errno.ENOENT, `no DMA mapping [0x${iova.toString(16)}, +0x${size.toString(16)})`);
    }
    this.remove(m);
    return info(m);
  }

  /** Removes every mapping (UNMAP_ALL, client gone, shutdown): O(n). */
  unmapAll(): void {
    const all = this.maps.values();
    this.maps.clear();
    for (const m of all) this.release(m);
  }

  /**
   * Removes a mapping whatever the device says: the client's memory is going
   * away, so an onUnmap callback that throws is logged, not obeyed (a throw
   * here would stop unmapAll half way and leak the rest).
   */
  private remove(m: DmaMapping): void {
    if (this.maps.get(m.iova)?.value === m) this.maps.delete(m.iova);
    this.release(m);
  }

  /** The rest of remove(), for a mapping already out of the table. */
  private release(m: DmaMapping): void {
    this.total -= m.size;
    m.live = false;
    try {
      this.onUnmap?.(info(m));
    } catch (e) {
      this.log(`onUnmap callback failed (the mapping is removed anyway): ${(e as Error)?.message ?? e}`);
    }
    if (m.ab) native!.munmap(m.ab);
    m.ab = null;
    m.view = EMPTY;
    // A pread/pwrite still on the thread pool closes it when it ends: closed
    // now, the number could be reused and the call reach another file.
    if (m.fd >= 0 && m.inflight === 0) native?.close(m.fd);
  }

  /**
   * Splits [iova, iova+length) into pieces within mappings; ENOENT for any
   * gap, EACCES when a mapping lacks the protection asked for.
   */
  translate(iova: number, length: number, prot: number = PROT_READ): DmaSegment[] {
    if (length === 0) return [];
    const end = safeEnd(iova, length);
    const out: DmaSegment[] = [];
    let at = iova;
    let e = this.lowerBound(iova);
    while (at < end) {
      const m = e?.value;
      if (m === undefined || m.iova > at) throw new VfuError(Errno.ENOENT, `IOVA 0x${at.toString(16)} is not mapped`);
      if ((m.prot & prot) !== prot) throw new VfuError(Errno.EACCES, `mapping at 0x${m.iova.toString(16)} lacks ${prot & PROT_WRITE ? 'write' : 'read'} access`);
      const n = Math.min(end, m.iova + m.size) - at;
      out.push({ mapping: m, iova: at, offset: at - m.iova, length: n });
      at += n;
      e = e!.next;
    }
    return out;
  }

  private checkQuiesced(): void {
    if (this.quiesced) throw new VfuError(Errno.EBUSY, 'device is quiesced: no DMA until it resumes');
  }

  /**
   * A zero-copy view of guest memory (one mmap()ed mapping only).  Asking
   * for write access marks the range dirty at once, since writes through the
   * view cannot be observed.  The view is emptied if the range is unmapped.
   */
  view(iova: number, length: number, prot: number = PROT_READ): Buffer {
    this.checkQuiesced();
    const segs = this.translate(iova, length, prot);
    if (segs.length !== 1 || segs[0]!.mapping.mode !== 'mmap') {
      throw new VfuError(Errno.EFAULT, 'range is not within one memory-mapped DMA region');
    }
    const s = segs[0]!;
    this.checkStillBacked(s.mapping, s.offset, length);
    if (prot & PROT_WRITE) this.dirty?.(iova, length);
    return s.mapping.view.subarray(s.offset, s.offset + length);
  }

  /** Whether the whole range can be accessed synchronously (no messages). */
  isDirect(iova: number, length: number): boolean {
    try {
      return this.translate(iova, length).every((s) => s.mapping.mode !== 'message');
    } catch {
      return false;
    }
  }

  /**
   * The mmap()ed mapping holding all of [iova, iova+length) with `prot`, if
   * there is one: the common case of readSync/writeSync, served without
   * building a segment list (translate() allocates per call).
   */
  private direct(iova: number, length: number, prot: number): DmaMapping | undefined {
    if (!Number.isSafeInteger(iova)) return undefined; // translate() reports it
    const m = this.find(iova);
    // unsealed mappings take the slow path: their file size is re-checked
    if (m === undefined || m.mode !== 'mmap' || m.unsealed || (m.prot & prot) !== prot) return undefined;
    return iova + length <= m.iova + m.size && length > 0 ? m : undefined;
  }

  /** Reads guest memory into `out` synchronously (mmap/file mappings only). */
  readSync(iova: number, out: Buffer): void {
    this.checkQuiesced();
    const m = this.direct(iova, out.length, PROT_READ);
    if (m !== undefined) {
      const at = iova - m.iova;
      m.view.copy(out, 0, at, at + out.length);
      return;
    }
    const segs = this.translate(iova, out.length, PROT_READ);
    let o = 0;
    if (segs.some((s) => s.mapping.mode === 'message')) throw new VfuError(Errno.EAGAIN, 'range needs DMA messages: use read()');
    for (const s of segs) this.checkStillBacked(s.mapping, s.offset, s.length);
    for (const s of segs) {
      if (s.mapping.mode === 'mmap') s.mapping.view.copy(out, o, s.offset, s.offset + s.length);
      else preadFully(s.mapping.fd, out, o, s.length, s.mapping.fileOffset + s.offset);
      o += s.length;
    }
  }

  /** Writes `data` into guest memory synchronously (mmap/file mappings only). */
  writeSync(iova: number, data: Buffer): void {
    this.checkQuiesced();
    const m = this.direct(iova, data.length, PROT_WRITE);
    if (m !== undefined) {
      data.copy(m.view, iova - m.iova);
      this.dirty?.(iova, data.length);
      return;
    }
    const segs = this.translate(iova, data.length, PROT_WRITE);
    if (segs.some((s) => s.mapping.mode === 'message')) throw new VfuError(Errno.EAGAIN, 'range needs DMA messages: use write()');
    for (const s of segs) this.checkStillBacked(s.mapping, s.offset, s.length);
    let o = 0;
    for (const s of segs) {
      if (s.mapping.mode === 'mmap') data.copy(s.mapping.view, s.offset, o, o + s.length);
      else pwriteFully(s.mapping.fd, data, o, s.length, s.mapping.fileOffset + s.offset);
      o += s.length;
    }
    this.dirty?.(iova, data.length);
  }

  /**
   * Runs `op` over a segment in chunks of at most `max` bytes (the client's
   * max_data_xfer_size), checking before each that it is still mapped.
   */
  private async inChunks(s: DmaSegment, max: number, op: (addr: number, n: number, at: number) => Promise<void>): Promise<void> {
    for (let done = 0; done < s.length; ) {
      this.checkLive(s.mapping);
      const n = Math.min(max, s.length - done);
      await op(s.iova + done, n, done);
      done += n;
    }
  }

  /** EAGAIN when `messages: false` forbids the messages a segment needs. */
  private checkNoMessages(segs: DmaSegment[], opts: { messages?: boolean }, what: string): void {
    if (opts.messages === false && segs.some((s) => s.mapping.mode === 'message')) {
      throw new VfuError(Errno.EAGAIN, `range needs DMA messages: ${what} without messages: false`);
    }
  }

  /**
   * Reads guest memory, by messages where needed (chunked by the client's
   * limit).  `messages: true` uses DMA_READ even for mapped memory, `false`
   * never (EAGAIN where it would be needed).  'file' mappings are read on
   * the thread pool.
   */
  async read(iova: number, out: Buffer, opts: { messages?: boolean } = {}): Promise<void> {
    this.checkQuiesced();
    const segs = this.translate(iova, out.length, PROT_READ);
    this.checkNoMessages(segs, opts, 'read()');
    let o = 0;
    for (const s of segs) {
      if (s.mapping.mode === 'message' || opts.messages) {
        const md = this.requireMessages();
        const base = o;
        await this.inChunks(s, md.maxChunk, (addr, n, at) => md.dmaRead(addr, n, out, base + at));
      } else {
        this.checkLive(s.mapping);
        this.checkStillBacked(s.mapping, s.offset, s.length);
        if (s.mapping.mode === 'mmap') s.mapping.view.copy(out, o, s.offset, s.offset + s.length);
        else await this.fileIo(s.mapping, false, out, o, s.length, s.mapping.fileOffset + s.offset);
      }
      o += s.length;
    }
  }

  /**
   * pread/pwrite the whole of [at, at+len) on the thread pool; the mapping's
   * descriptor stays open until it is done (see release()).
   */
  private async fileIo(m: DmaMapping, write: boolean, buf: Buffer, at: number, len: number, pos: number): Promise<void> {
    const what = write ? 'write to' : 'read from';
    this.checkLive(m); // before counting: a removed mapping's descriptor may be closed already
    m.inflight++;
    try {
      while (len > 0) {
        const n = await new Promise<number>((res, rej) => {
          const done = (err: Error | null, bytes: number): void => (err ? rej(new VfuError(Errno.EIO, `${what} DMA file: ${err.message}`)) : res(bytes));
          if (write) fsWrite(m.fd, buf, at, len, pos, done);
          else fsRead(m.fd, buf, at, len, pos, done);
        });
        if (n <= 0) throw new VfuError(Errno.EIO, `short ${what} DMA file`);
        at += n;
        len -= n;
        pos += n;
        if (len > 0) this.checkLive(m);
      }
    } finally {
      if (--m.inflight === 0 && !m.live && m.fd >= 0) native?.close(m.fd);
    }
  }

  /**
   * Writes guest memory, by messages where needed (`messages` as for
   * read(); 'file' mappings on the thread pool).  Pages written directly
   * are logged dirty here; pages written by DMA_WRITE messages are the
   * client's to track (it performs those writes itself).
   */
  async write(iova: number, data: Buffer, opts: { messages?: boolean } = {}): Promise<void> {
    this.checkQuiesced();
    const segs = this.translate(iova, data.length, PROT_WRITE);
    this.checkNoMessages(segs, opts, 'write()');
    let o = 0;
    for (const s of segs) {
      if (s.mapping.mode === 'message' || opts.messages) {
        const md = this.requireMessages();
        const base = o;
        await this.inChunks(s, md.maxChunk, (addr, n, at) => md.dmaWrite(addr, data.subarray(base + at, base + at + n)));
      } else {
        this.checkLive(s.mapping);
        this.checkStillBacked(s.mapping, s.offset, s.length);
        if (s.mapping.mode === 'mmap') {
          data.copy(s.mapping.view, s.offset, o, o + s.length);
        } else {
          await this.fileIo(s.mapping, true, data, o, s.length, s.mapping.fileOffset + s.offset);
        }
        this.dirty?.(s.iova, s.length);
      }
      o += s.length;
    }
  }

  /** Marks a range dirty (device code that wrote through view()). */
  markDirty(iova: number, length: number): void {
    this.translate(iova, length, PROT_READ);
    this.dirty?.(iova, length);
  }

  private requireMessages(): MessageDma {
    if (this.messages === null) throw new VfuError(Errno.ENOTCONN, 'no client to send DMA messages to');
    return this.messages;
  }
}

function info(m: DmaMapping): DmaMappingInfo {
  return { iova: m.iova, size: m.size, prot: m.prot, mode: m.mode, fileOffset: m.fileOffset };
}

function preadFully(fd: number, out: Buffer, at: number, len: number, pos: number): void {
  while (len > 0) {
    const n = readSync(fd, out, at, len, pos);
    if (n <= 0) throw new VfuError(Errno.EIO, 'short read from DMA file');
    at += n;
    len -= n;
    pos += n;
  }
}

function pwriteFully(fd: number, data: Buffer, at: number, len: number, pos: number): void {
  while (len > 0) {
    const n = writeSync(fd, data, at, len, pos);
    if (n <= 0) throw new VfuError(Errno.EIO, 'short write to DMA file');
    at += n;
    len -= n;
    pos += n;
  }
}

const EMPTY = Buffer.alloc(0);
