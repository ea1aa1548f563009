// Making endpoints: listening on / connecting to a UNIX socket path, adopting
// an inherited descriptor, socket pairs.  The native addon is used when it
// is loaded; otherwise node:net (no descriptor passing).
import { Socket, createConnection, createServer, type Server } from 'node:net';
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

class NativeListener implements Listener {
  onConnection: (ep: Endpoint) => void = () => {};
  private readonly fd: number;
  private readonly poll: PollHandle;
  private closed = false;

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
      if (c < 0) return; // EAGAIN, or a transient error (EMFILE): try next event
      this.onConnection(new NativeEndpoint(c, this.limits));
    }
  }

  ref(keep: boolean): void {
    if (!this.closed) native!.pollRef(this.poll, keep);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
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
    this.server.once('error', failed);
    // Bound under a temporary name, given its mode, then renamed: the path
    // never names a socket with the umask's (perhaps wider) permissions.
    const tmp = `${path}.${process.pid}~`;
    try {
      unlinkSync(tmp);
    } catch {
      // none left over
    }
    // bind() happens inside listen(): with the umask leaving exactly `mode`,
    // even the temporary name is never wider (umask cannot be set in worker
    // threads; the rename below still protects the real path there)
    let oldMask: number | null = null;
    try {
      oldMask = process.umask(0o777 & ~mode);
    } catch {
      // a worker thread
    }
    this.server.listen(tmp, () => {
      try {
        chmodSync(tmp, mode);
        renameSync(tmp, path);
      } catch (e) {
        this.server.close();
        failed(e as Error);
        return;
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
    // libuv unlinks the name it bound (the temporary one): remove ours
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
  if (kind === 'native') return new NativeListener(path, limits, mode);
  return await new Promise<Listener>((resolve, reject) => {
    const l: NetListener = new NetListener(path, limits, mode, () => resolve(l), reject);
  });
}

const CONNECT_RETRY_MS = 2000;

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
    for (let waited = 0; fd === -Errno.EAGAIN && waited < CONNECT_RETRY_MS; waited += 10) {
      await new Promise((r) => setTimeout(r, 10));
      fd = n.connect(path);
    }
    if (fd < 0) throw new VfuError(-fd, `connect ${path}`);
    return new NativeEndpoint(fd, limits);
  }
  return await new Promise<Endpoint>((resolve, reject) => {
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
