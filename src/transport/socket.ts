// Making endpoints: listening on / connecting to a UNIX socket path, adopting
// an inherited descriptor, socket pairs.  The native addon is used when it
// is loaded; otherwise node:net (no descriptor passing).
import { Socket, createConnection, createServer, type Server } from 'node:net';
import { getSystemErrorMap } from 'node:util';
import { chmodSync, existsSync, lstatSync, renameSync, unlinkSync } from 'node:fs';
import { POLL_READABLE, native, requireNative, warnNativeFallback, type PollHandle } from '../native/index.js';
import { Errno } from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';
import type { Endpoint } from './endpoint.js';
import { NativeEndpoint } from './native-endpoint.js';
import { NetEndpoint } from './net-endpoint.js';

export interface EndpointLimits {
  maxMessageSize: number;
  maxFds: number;
}

/** 'native': the addon (descriptor passing); 'net': node:net (no descriptors). */
export type TransportKind = 'native' | 'net';

export function defaultTransport(): TransportKind {
  if (native) return 'native';
  warnNativeFallback();
  return 'net';
}

/** Closes a descriptor through the addon (no-op without it). */
export function closeFd(fd: number): void {
  if (native) native.close(fd);
}

/**
 * Removes a stale socket file left by a dead server (never other files, and
 * never the socket of a server still listening: that would take its path).
 */
async function removeStaleSocket(path: string): Promise<void> {
  if (!existsSync(path)) return;
  if (!lstatSync(path).isSocket()) throw new VfuError(Errno.EEXIST, `${path} exists and is not a socket`);
  if (await someoneListens(path)) throw new VfuError(Errno.EADDRINUSE, `${path}: a server is listening there`);
  try {
    unlinkSync(path);
  } catch {
    // removed meanwhile
  }
}

/** Whether a connect to `path` is answered (refused or missing: stale). */
function someoneListens(path: string): Promise<boolean> {
  const stale = (errno: number): boolean => errno === Errno.ECONNREFUSED || errno === Errno.ENOENT;
  if (native) {
    const fd = native.connect(path);
    if (fd >= 0) native.close(fd);
    return Promise.resolve(fd >= 0 || !stale(-fd));
  }
  return new Promise((resolve) => {
    const s = createConnection(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', (e: NodeJS.ErrnoException) => resolve(!(e.code === 'ECONNREFUSED' || e.code === 'ENOENT')));
  });
}

export interface Listener {
  readonly path: string;
  /** Called with each accepted connection. */
  onConnection: (ep: Endpoint) => void;
  close(): void;
  ref(keep: boolean): void;
}

/** How long a listener without a spare descriptor stops accepting at EMFILE. */
const ACCEPT_BACKOFF_MS = 100;

class NativeListener implements Listener {
  onConnection: (ep: Endpoint) => void = () => {};
  /** Connections accepted and closed at once for lack of descriptors. */
  dropped = 0;
  private readonly fd: number;
  private readonly poll: PollHandle;
  private closed = false;
  /** Not polling for a while: out of descriptors with no spare one. */
  private backoff: NodeJS.Timeout | null = null;

  constructor(
    readonly path: string,
    private readonly limits: EndpointLimits,
    mode: number,
  ) {
    const n = requireNative('listening with descriptor passing');
    this.fd = n.listen(path, 16, mode);
    this.poll = n.pollStart(this.fd, POLL_READABLE, () => this.acceptAll());
  }

  private acceptAll(): void {
    const n = native!;
    while (!this.closed) {
      const c = n.accept(this.fd);
      if (c >= 0) {
        this.onConnection(new NativeEndpoint(c, this.limits));
        continue;
      }
      // Out of descriptors: the addon accepted the connection with its spare
      // one and closed it (the client sees its connection closed), so none
      // stays in the backlog to make the poll spin.  Next one.
      if (c === -Errno.ECONNABORTED) {
        this.dropped++;
        continue;
      }
      // No spare to do that with: stop polling for a moment rather than spin.
      if (c === -Errno.EMFILE || c === -Errno.ENFILE) this.pause();
      return; // EAGAIN (or a transient error): wait for the next event
    }
  }

  private pause(): void {
    if (this.backoff !== null) return;
    native!.pollUpdate(this.poll, 0);
    this.backoff = setTimeout(() => {
      this.backoff = null;
      if (!this.closed) native!.pollUpdate(this.poll, POLL_READABLE);
    }, ACCEPT_BACKOFF_MS);
    this.backoff.unref();
  }

  ref(keep: boolean): void {
    if (!this.closed) native!.pollRef(this.poll, keep);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.backoff !== null) clearTimeout(this.backoff);
    native!.pollClose(this.poll);
    native!.close(this.fd);
    try {
      unlinkSync(this.path);
    } catch {
      // already gone
    }
  }
}

class NetListener implements Listener {
  onConnection: (ep: Endpoint) => void = () => {};
  private readonly server: Server;

  constructor(
    readonly path: string,
    limits: EndpointLimits,
    mode: number,
    ready: () => void,
    failed: (e: Error) => void,
  ) {
    this.server = createServer((s: Socket) => this.onConnection(new NetEndpoint(s, limits)));
    this.server.once('error', (e: NodeJS.ErrnoException) => failed(namePath(e, path)));
    // bind() happens inside listen(): with the umask leaving exactly `mode`
    // the file is created with that mode, under its own name (so ss and
    // /proc/net/unix show it).  Worker threads cannot set the umask: there
    // it is bound under a temporary name, given its mode, then renamed, so
    // the path never names a socket with wider permissions.
    let oldMask: number | null = null;
    try {
      oldMask = process.umask(0o777 & ~mode);
    } catch {
      // a worker thread
    }
    const bindAt = oldMask !== null ? path : `${path}.${process.pid}~`;
    if (oldMask === null) {
      try {
        unlinkSync(bindAt);
      } catch {
        // none left over
      }
    }
    this.server.listen(bindAt, () => {
      if (bindAt !== path) {
        try {
          chmodSync(bindAt, mode);
          renameSync(bindAt, path);
        } catch (e) {
          this.server.close();
          failed(namePath(e as NodeJS.ErrnoException, path));
          return;
        }
      }
      ready();
    });
    if (oldMask !== null) process.umask(oldMask);
  }

  ref(keep: boolean): void {
    if (keep) this.server.ref();
    else this.server.unref();
  }

  close(): void {
    this.server.close();
    // libuv unlinks the name it bound (perhaps the temporary one): remove ours
    try {
      unlinkSync(this.path);
    } catch {
      // already gone
    }
  }
}

/** Listens on a UNIX socket path, created with mode 0600 by default. */
export async function listen(
  path: string,
  limits: EndpointLimits,
  opts: { transport?: TransportKind; mode?: number } = {},
): Promise<Listener> {
  const kind = opts.transport ?? defaultTransport();
  const mode = opts.mode ?? 0o600;
  if (kind === 'native') requireNative('listening with descriptor passing');
  await removeStaleSocket(path);
  if (kind === 'native') {
    try {
      return new NativeListener(path, limits, mode);
    } catch (e) {
      throw namePath(e as NodeJS.ErrnoException, path);
    }
  }
  return await new Promise<Listener>((resolve, reject) => {
    const l: NetListener = new NetListener(path, limits, mode, () => resolve(l), reject);
  });
}

const CONNECT_RETRY_MS = 2000;
/**
 * A server refuses connections between its bind() and listen(): two system
 * calls for ours (its file appears at bind), longer for libvfio-user.  A
 * client that saw the file appear retries ECONNREFUSED this long.
 */
const CONNECT_REFUSED_RETRY_MS = 100;

/**
 * An error about a socket path that says which: `bind /run/x.sock: permission
 * denied (EACCES)`.  Keeps the errno (positive) for callers that test it.
 */
function pathError(op: string, path: string, errno: number): VfuError {
  const n = Math.abs(errno) || Errno.EIO;
  const reason = getSystemErrorMap().get(-n)?.[1] ?? `errno ${n}`;
  return new VfuError(n, `${op} ${path}: ${reason}`);
}

/** pathError() for a thrown Node or addon error (the addon's messages start with the call). */
function namePath(e: NodeJS.ErrnoException, path: string, op?: string): VfuError {
  return pathError(op ?? e.syscall ?? e.message.split(':')[0] ?? 'socket', path, typeof e.errno === 'number' ? e.errno : Errno.EIO);
}

/** Connects to a UNIX socket path. */
export async function connect(
  path: string,
  limits: EndpointLimits,
  opts: { transport?: TransportKind } = {},
): Promise<Endpoint> {
  const kind = opts.transport ?? defaultTransport();
  if (kind === 'native') {
    const n = requireNative('connecting with descriptor passing');
    // A non-blocking connect fails with EAGAIN while the server's accept
    // backlog is full (many clients at once): retry for a while.
    let fd = n.connect(path);
    for (let waited = 0; (fd === -Errno.EAGAIN && waited < CONNECT_RETRY_MS) || (fd === -Errno.ECONNREFUSED && waited < CONNECT_REFUSED_RETRY_MS); waited += 10) {
      await new Promise((r) => setTimeout(r, 10));
      fd = n.connect(path);
    }
    if (fd < 0) throw pathError('connect', path, fd);
    return new NativeEndpoint(fd, limits);
  }
  for (let waited = 0; ; waited += 10) {
    try {
      return await netConnect(path, limits);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      if (err.code !== 'ECONNREFUSED' || waited >= CONNECT_REFUSED_RETRY_MS) throw namePath(err, path, 'connect');
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}

function netConnect(path: string, limits: EndpointLimits): Promise<Endpoint> {
  return new Promise<Endpoint>((resolve, reject) => {
    const s = createConnection(path);
    s.once('error', reject);
    s.once('connect', () => {
      s.removeListener('error', reject);
      resolve(new NetEndpoint(s, limits));
    });
  });
}

/** Adopts an inherited, already connected socket (`--fd N`). */
export function endpointFromFd(fd: number, limits: EndpointLimits, opts: { transport?: TransportKind } = {}): Endpoint {
  const kind = opts.transport ?? defaultTransport();
  if (kind === 'native') {
    const n = requireNative('--fd');
    const r = n.isUnixStream(fd);
    if (r < 0) throw new VfuError(-r, `fd ${fd}`);
    if (r !== 1) throw new VfuError(Errno.ENOTSUP, `fd ${fd} is not a UNIX stream socket`);
    const nb = n.setNonBlocking(fd);
    if (nb < 0) throw new VfuError(-nb, `fd ${fd}`);
    return new NativeEndpoint(fd, limits);
  }
  // node:net can wrap an inherited socket descriptor too.
  return new NetEndpoint(new Socket({ fd, readable: true, writable: true }), limits);
}

/** A connected pair of native endpoints (twin sockets, tests). */
export function endpointPair(limits: EndpointLimits): [Endpoint, Endpoint] {
  const [a, b] = requireNative('socket pairs').socketpair();
  return [new NativeEndpoint(a, limits), new NativeEndpoint(b, limits)];
}
