// Loader for the optional native addon (native/vfu_native.c).
//
// Everything that needs file descriptors (SCM_RIGHTS, mmap, memfd, eventfd)
// goes through here.  When the addon is missing the package still works over
// Node's net.Socket for whatever the protocol allows without descriptors, and
// anything that needs one fails with NativeUnavailableError naming the addon.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

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
}

export class NativeUnavailableError extends Error {
  readonly errno = 95; // ENOTSUP
  constructor(what: string) {
    super(
      `${what} needs the vfio-user native addon (build/Release/vfu_native.node), which is not loaded` +
        (loadError ? `: ${loadError.message}` : '') +
        '. Rebuild it with `npm rebuild vfio-user` (needs g++ and Node headers).',
    );
    this.name = 'NativeUnavailableError';
  }
}

let loadError: Error | null = null;

function load(): NativeAddon | null {
  if (process.env.VFU_NO_NATIVE === '1') {
    loadError = new Error('disabled by VFU_NO_NATIVE=1');
    return null;
  }
  const require = createRequire(import.meta.url);
  // dist/src/native/index.js -> package root is three levels up
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const candidate = join(dir, 'build', 'Release', 'vfu_native.node');
    if (existsSync(candidate)) {
      try {
        return require(candidate) as NativeAddon;
      } catch (e) {
        loadError = e as Error;
        return null;
      }
    }
    dir = dirname(dir);
  }
  loadError = new Error('build/Release/vfu_native.node not found');
  return null;
}

/** The addon, or null when it could not be loaded. */
export const native: NativeAddon | null = load();

/** Why the addon is not loaded (null when it is). */
export function nativeLoadError(): Error | null {
  return loadError;
}

/** The addon, or throw NativeUnavailableError naming `what` needed it. */
export function requireNative(what: string): NativeAddon {
  if (native === null) throw new NativeUnavailableError(what);
  return native;
}

export const PAGE_SIZE: number = native ? native.pageSize() : 4096;
