// Loader for the optional native addon (native/vfu_native.c).
//
// Everything that needs file descriptors (SCM_RIGHTS, mmap, memfd, eventfd)
// goes through here.  When the addon is missing the package still works over
// Node's net.Socket for whatever the protocol allows without descriptors, and
// anything that needs one fails with NativeUnavailableError naming the addon.
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Errno } from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';

/** Opaque poll handle returned by pollStart. */
export interface PollHandle {
  readonly __pollHandle: unique symbol;
}

export const POLL_READABLE = 1;
export const POLL_WRITABLE = 2;

/** epollCtl operations (the Linux values). */
export const EPOLL_ADD = 1;
export const EPOLL_DEL = 2;
export const EPOLL_MOD = 3;

/** recvmsg state array length: [nfds, flags, fds...] */
export const RECV_STATE_LEN = 2 + 253;
export const RECV_FLAG_CTRUNC = 1;
/** pollSetIo: the state array's slots after the recvmsg results. */
export const IO_RECV_OFF = RECV_STATE_LEN;
export const IO_RECV_LEN = RECV_STATE_LEN + 1;
export const IO_OUT_LEN = RECV_STATE_LEN + 2;
export const IO_IN_CALLBACK = RECV_STATE_LEN + 3;
export const IO_STATE_LEN = RECV_STATE_LEN + 4;

export interface NativeAddon {
  socketpair(): [number, number];
  listen(path: string, backlog?: number, mode?: number): number;
  accept(fd: number): number;
  connect(path: string): number;
  sendmsg(fd: number, a: Uint8Array, b: Uint8Array | null, fds: readonly number[] | null): number;
  recvmsg(fd: number, buf: Uint8Array, off: number, len: number, state: Int32Array): number;
  close(fd: number): number;
  dup(fd: number): number;
  setNonBlocking(fd: number): number;
  isUnixStream(fd: number): number;
  /**
   * Raises a socket's send buffer (SO_SNDBUF) to hold `bytes`, never
   * lowering it: what the kernel then reports (twice the bytes asked, up to
   * twice net.core.wmem_max, which caps the request), or -errno.  `bytes` 0
   * only reads it.
   */
  raiseSendBuffer(fd: number, bytes: number): number;
  /** `got`: the result of the receive-ahead read (pollSetIo), or null when none was made. */
  pollStart(fd: number, events: number, cb: (events: number, status: number, got: number | null) => void): PollHandle;
  pollUpdate(h: PollHandle, events: number): number;
  pollClose(h: PollHandle): void;
  pollRef(h: PollHandle, ref: boolean): void;
  /**
   * Per-handle I/O help (`state` null unregisters):
   *  - receive-ahead: on readable, recvmsg into recvBuf[state[IO_RECV_OFF],
   *    +state[IO_RECV_LEN]) before calling back (nothing when that length
   *    is 0), the fds going to `state` as with recvmsg;
   *  - outbox: while a callback runs state[IO_IN_CALLBACK] is 1, and the
   *    bytes put in outbox[0, state[IO_OUT_LEN]) are sent once it returns;
   *    what the socket does not take is left at the outbox's front, with
   *    the handle polling for writability.
   */
  pollSetIo(h: PollHandle, recvBuf: Uint8Array | null, state: Int32Array | null, outbox: Uint8Array | null): void;
  memfdCreate(name: string, size: number, seal: boolean): number;
  getSeals(fd: number): number;
  mmap(fd: number, offset: number, length: number, prot: number): ArrayBuffer;
  munmap(ab: ArrayBuffer): number;
  liveMappings(): number;
  pageSize(): number;
  eventfd(initial?: number, flags?: number): number;
  eventfdRead(fd: number): number;
  /**
   * Adds `value` (default 1) to an eventfd's counter: 0, or -EAGAIN when the
   * counter has no room (the write would wait for its reader; it never
   * does, whatever the file's blocking mode), or another -errno.
   */
  eventfdWrite(fd: number, value?: number): number;
  /** 1 when `fd` is an eventfd, 0 when it is something else, -errno (EBADF). */
  isEventfd(fd: number): number;
  /** A private epoll set (close-on-exec), or -errno. */
  epollCreate(): number;
  /**
   * Adds (EPOLL_ADD), removes or changes `fd`'s entry for POLL_READABLE /
   * POLL_WRITABLE readiness: 0 or -errno.  Remove an entry before closing its
   * fd (epoll keys on the open file, which a peer may keep open).
   */
  epollCtl(epfd: number, op: number, fd: number, events?: number): number;
  /** The fds that are ready, into `out`, without waiting: their number or -errno. */
  epollWait(epfd: number, out: Int32Array): number;
  /** [pid (0: still running, <0: -errno), exit code (-1 if none), signal]. */
  waitpid(pid: number, nohang: boolean): [number, number, number];
  /**
   * A dirty bitmap refined by 8 (4 KiB tracking pages to 512-byte report
   * pages): with E the first `bits` bits of `src` (later ones, and bytes past
   * its end, reading as 0) each repeated 8 times, the first `n`
   * little-endian 64-bit words of `dst` get E's bits from `shift` on, each
   * OR-ed with the next one when `fold`.  `n`, or -EINVAL when `dst` is
   * shorter or `shift` negative.
   */
  spreadBits8(src: Uint32Array, dst: ArrayBufferView, n: number, shift: number, fold: boolean, bits: number): number;
  /** CRC-32C of `buf` continuing `crc` (0 to start). */
  crc32c(buf: Uint8Array, crc: number): number;
  /** Copies `src` to dst[at, +src.length) and returns the CRC-32C of the copy, continuing `crc`. */
  copyCrc32c(dst: Uint8Array, at: number, src: Uint8Array, crc: number): number;
  /**
   * The final walk of a DMA mapping with one 4 KiB flag a page: page p of
   * `pageSize` bytes is dirty when pending[p], bit p of `bitmap` (past its
   * end, or null: 0), cpu[hostBase + p] or msg[hostBase + p] is set; each
   * is cleared as it is found, and the dirty pages are copied from `src`
   * to the same offsets of `dst` (views of the mapping, one length, covered
   * by pending.length pages).  out = [pages, bytes, pending marks taken].
   * 0, or -EINVAL (nothing touched) when the arrays do not fit together.
   */
  copyDirty(dst: Uint8Array, src: Uint8Array, pending: Uint8Array, bitmap: Uint8Array | null, cpu: Uint8Array, msg: Uint8Array, hostBase: number, pageSize: number, out: Float64Array): number;
}

/**
 * Thrown when something needs a file descriptor (mapping guest memory,
 * mmapping a region, eventfds) and the native addon is not loaded.
 */
export class NativeUnavailableError extends VfuError {
  /** `what` needed a descriptor. */
  constructor(what: string) {
    super(
      Errno.ENOTSUP,
      `${what} needs the vfio-user native addon, which is not loaded` +
        (loadError ? ` (${loadError.message})` : '') +
        '. Rebuild it with `npm rebuild vfio-user` (needs a C compiler and the Node headers).',
    );
    this.name = 'NativeUnavailableError';
  }
}

let loadError: Error | null = null;
let loadedFrom: string | null = null;

/** The package root: the nearest directory above this file with our package.json. */
function packageRoot(): string | null {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'binding.gyp')) && existsSync(join(dir, 'package.json'))) return dir;
    dir = dirname(dir);
  }
  return null;
}

/** The addon's sources, relative to the package root. */
const SOURCES = ['binding.gyp', 'native/vfu_native.c'];

/** SHA-256 over the addon's sources (as scripts/native-source.mjs computes it). */
function sourceHash(root: string): string | null {
  try {
    const h = createHash('sha256');
    for (const f of SOURCES) {
      h.update(f + '\0');
      h.update(readFileSync(join(root, f)));
    }
    return h.digest('hex');
  } catch {
    return null;
  }
}

/**
 * A prebuilt binary is used only when it was built from the sources beside
 * it (prebuilds/<platform>/BUILD.json): after a change to the C code a stale
 * binary would not match what the JavaScript expects.
 */
function prebuildMatches(root: string, file: string): boolean {
  try {
    const info = JSON.parse(readFileSync(join(dirname(file), 'BUILD.json'), 'utf8')) as { source?: string };
    return info.source !== undefined && info.source === sourceHash(root);
  } catch {
    return false;
  }
}

/**
 * A source build older than the sources (a pull or checkout brought other
 * C code, and nothing rebuilt it) may lack what the JavaScript calls: it
 * is not loaded (a rebuild, `npm rebuild`, brings it back).
 */
function sourceBuildStale(root: string, file: string): boolean {
  try {
    const built = statSync(file).mtimeMs;
    return SOURCES.some((f) => statSync(join(root, f)).mtimeMs > built);
  } catch {
    return false;
  }
}

function load(): NativeAddon | null {
  if (process.env.VFU_NO_NATIVE === '1') {
    loadError = new Error('disabled by VFU_NO_NATIVE=1');
    return null;
  }
  const root = packageRoot();
  if (root === null) {
    loadError = new Error('package root not found');
    return null;
  }
  const require = createRequire(import.meta.url);
  let file: string;
  try {
    // node-gyp-build: build/Release (a source build) first, then prebuilds/<platform>-<arch>/
    file = (require('node-gyp-build') as { resolve(dir: string): string }).resolve(root);
  } catch {
    loadError = new Error(`no source build (build/Release) and no prebuilt binary for ${process.platform}-${process.arch}`);
    return null;
  }
  if (!file.includes(`${sep}prebuilds${sep}`) && sourceBuildStale(root, file)) {
    // the prebuilt binary, when it was built from these sources
    const pre = join(root, 'prebuilds', `${process.platform}-${process.arch}`, 'vfio-user.node');
    if (!existsSync(pre) || !prebuildMatches(root, pre)) {
      loadError = new Error('the source build (build/Release) is older than native/vfu_native.c: rebuild it with `npm rebuild`');
      return null;
    }
    file = pre;
  }
  if (file.includes(`${sep}prebuilds${sep}`) && !prebuildMatches(root, file)) {
    loadError = new Error('the prebuilt binary was built from other sources and there is no source build');
    return null;
  }
  let addon: NativeAddon;
  try {
    addon = require(file) as NativeAddon;
  } catch (e) {
    loadError = e as Error;
    return null;
  }
  // Whatever slipped past the checks above (a build touched after its
  // sources changed, say): an addon without every call is not used at all,
  // so no caller has to ask whether a call exists.
  const missing = (Object.keys(ADDON_CALLS) as (keyof NativeAddon)[]).filter((k) => typeof addon[k] !== 'function');
  if (missing.length > 0) {
    loadError = new Error(`the addon at ${file} lacks ${missing.join(', ')} (built from older sources): rebuild it with \`npm rebuild\``);
    return null;
  }
  loadedFrom = file;
  return addon;
}

/** Every call of NativeAddon (the compiler keeps this list complete). */
const ADDON_CALLS = {
  socketpair: true, listen: true, accept: true, connect: true, sendmsg: true, recvmsg: true, close: true, dup: true,
  setNonBlocking: true, isUnixStream: true, raiseSendBuffer: true, pollStart: true, pollUpdate: true, pollClose: true,
  pollRef: true, pollSetIo: true, memfdCreate: true, getSeals: true, mmap: true, munmap: true, liveMappings: true,
  pageSize: true, eventfd: true, eventfdRead: true, eventfdWrite: true, isEventfd: true, epollCreate: true,
  epollCtl: true, epollWait: true, waitpid: true, spreadBits8: true, crc32c: true, copyCrc32c: true, copyDirty: true,
} satisfies Record<keyof NativeAddon, true>;

/** The addon, or null when it could not be loaded. */
export const native: NativeAddon | null = load();

/** Why the addon is not loaded (null when it is). */
export function nativeLoadError(): Error | null {
  return loadError;
}

/** Which transport the package uses, and why (what `vfu --version` prints). */
export interface TransportStatus {
  /** 'native': the addon (descriptors, mmap, eventfds); 'node:net': the fallback. */
  transport: 'native' | 'node:net';
  /** Where the addon came from: a prebuilt binary shipped in the package, or a build from source. */
  origin: 'prebuilt' | 'source build' | null;
  /** The addon's file, when loaded. */
  file: string | null;
  /** Why the fallback is in use (null with the addon). */
  reason: string | null;
}

/** The transport in use and why. */
export function transportStatus(): TransportStatus {
  if (native === null) return { transport: 'node:net', origin: null, file: null, reason: loadError?.message ?? 'not loaded' };
  const prebuilt = loadedFrom !== null && loadedFrom.includes(`${sep}prebuilds${sep}`);
  return { transport: 'native', origin: prebuilt ? 'prebuilt' : 'source build', file: loadedFrom, reason: null };
}

let warned = false;

/**
 * The first time a socket falls back to `node:net` because the addon is
 * missing, one line on stderr says so (not when VFU_NO_NATIVE=1 asked for it).
 */
export function warnNativeFallback(): void {
  if (warned || native !== null || process.env.VFU_NO_NATIVE === '1') return;
  warned = true;
  process.stderr.write(
    `vfio-user: native addon not loaded (${loadError?.message ?? 'unknown'}); using node:net: no descriptor passing, mmap or interrupts (VFU_NO_NATIVE=1 silences this)\n`,
  );
}

/** The addon, or throw NativeUnavailableError naming `what` needed it. */
export function requireNative(what: string): NativeAddon {
  if (native === null) throw new NativeUnavailableError(what);
  return native;
}

export const PAGE_SIZE: number = native ? native.pageSize() : 4096;
