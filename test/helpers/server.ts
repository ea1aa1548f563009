// Test helpers: a device served on a fresh socket path, a connected client.
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { constants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { VfioUserClient, type ClientOptions } from '../../src/client/client.js';
import type { VfioUserDevice } from '../../src/server/device.js';
import { VfioUserServer, type ServeOptions } from '../../src/server/server.js';

export function tempDir(prefix = 'vfu-test-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export interface Served {
  server: VfioUserServer;
  path: string;
  connect(opts?: ClientOptions): Promise<VfioUserClient>;
  close(): Promise<void>;
}

export async function serve(device: VfioUserDevice, opts: ServeOptions = {}): Promise<Served> {
  const t = tempDir();
  const path = join(t.dir, 'vfu.sock');
  const server = await VfioUserServer.listen(device, path, opts);
  const clients: VfioUserClient[] = [];
  return {
    server,
    path,
    async connect(copts: ClientOptions = {}) {
      const c = await VfioUserClient.connect(path, { replyTimeoutMs: 10_000, ...(opts.transport ? { transport: opts.transport } : {}), ...copts });
      clients.push(c);
      return c;
    },
    async close() {
      for (const c of clients) c.close();
      await server.close();
      t.cleanup();
    },
  };
}

/** Open descriptors of this process. */
export function fdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

/** Waits for `ev` on `em` (rejects after `ms`). */
export function once<T extends unknown[]>(em: NodeJS.EventEmitter, ev: string, ms = 10_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timed out waiting for ${ev}`)), ms);
    em.once(ev, (...args: unknown[]) => {
      clearTimeout(t);
      resolve(args as T);
    });
  });
}

export { until } from './wait.js';

/**
 * Connects to a server that another process is starting.  A peer that binds
 * before it listens (libvfio-user does: the socket file appears first) refuses
 * connections for a moment, so ECONNREFUSED and ENOENT are retried until `ms`.
 */
export async function connectWhenListening(path: string, opts: ClientOptions = {}, ms = 10_000): Promise<VfioUserClient> {
  const end = Date.now() + ms;
  for (;;) {
    try {
      return await VfioUserClient.connect(path, opts);
    } catch (e) {
      const errno = (e as { errno?: number }).errno;
      const starting = errno === constants.errno.ECONNREFUSED || errno === constants.errno.ENOENT;
      if (!starting || Date.now() > end) throw e;
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}

export async function rejectsWith(p: Promise<unknown>, errno: number): Promise<void> {
  try {
    await p;
  } catch (e) {
    const got = (e as { errno?: number }).errno;
    if (got !== errno) throw new Error(`expected errno ${errno}, got ${got}: ${(e as Error).message}`);
    return;
  }
  throw new Error(`expected errno ${errno}, but it succeeded`);
}
