// Descriptors of every kind a fuzz case may attach, and counting our own.
import { closeSync, ftruncateSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../../src/native/index.js';
import type { FdSpec } from './corpus.js';

let tmp: string | null = null;
let serial = 0;

function tmpDir(): string {
  tmp ??= mkdtempSync(join(tmpdir(), 'vfu-fuzz-fds-'));
  return tmp;
}

/** Opens a descriptor of the given kind (the caller closes it). */
export function openFd(spec: FdSpec): number {
  const n = native!;
  switch (spec.kind) {
    case 'memfd':
      return n.memfdCreate('fuzz', spec.size ?? 65536, true);
    case 'memfd-unsealed':
      return n.memfdCreate('fuzz-unsealed', spec.size ?? 65536, false);
    case 'eventfd':
      return n.eventfd(0, 1);
    case 'eventfd-blocking':
      return n.eventfd(0, 0);
    case 'eventfd-full': {
      const fd = n.eventfd(0, 0);
      n.eventfdWrite(fd, -2);
      return fd;
    }
    case 'devnull':
      return openSync('/dev/null', 'r+');
    case 'socket': {
      const [a, b] = n.socketpair();
      n.close(b);
      return a;
    }
    case 'dir':
      return openSync(tmpDir(), 'r');
    case 'tmpfile': {
      const p = join(tmpDir(), `f${process.pid}-${serial++}`);
      const fd = openSync(p, 'w+');
      unlinkSync(p);
      ftruncateSync(fd, spec.size ?? 4096);
      return fd;
    }
  }
}

export function closeFds(fds: number[]): void {
  for (const fd of fds) {
    try {
      closeSync(fd);
    } catch {
      // already closed
    }
  }
}

export function cleanupFdTemp(): void {
  if (tmp) rmSync(tmp, { recursive: true, force: true });
  tmp = null;
}

/** Open descriptors of this process. */
export function openFdCount(): number {
  return readdirSync('/proc/self/fd').length - 1; // minus the one readdir itself holds
}

/** Lines of /proc/self/maps naming a memfd (DMA mappings, region memory). */
export function memfdMappings(pid: number | 'self' = 'self'): number {
  return readMaps(pid).filter((l) => l.includes('/memfd:')).length;
}

export function readMaps(pid: number | 'self' = 'self'): string[] {
  return readFileSyncSafe(`/proc/${pid}/maps`).split('\n').filter((l) => l.trim() !== '');
}

function readFileSyncSafe(p: string): string {
  try {
    return readFileSync(p, 'utf8');
  } catch {
    return '';
  }
}
