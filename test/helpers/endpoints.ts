// Awaiting frames and closes on endpoints in tests.
import { readFileSync, readdirSync } from 'node:fs';
import type { Endpoint } from '../../src/transport/endpoint.js';
import { type SavedFrame, saveFrame } from './frames.js';

/** Collects an endpoint's frames (copied) and lets tests await them. */
export class FrameQueue {
  readonly frames: SavedFrame[] = [];
  closed: Error | null | undefined = undefined;
  private waiters: (() => void)[] = [];

  constructor(readonly ep: Endpoint) {
    ep.onFrame = (f) => {
      this.frames.push(saveFrame(f));
      this.wake();
    };
    ep.onClose = (err) => {
      this.closed = err;
      this.wake();
    };
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  private wait(what: string, done: () => boolean, timeoutMs: number): Promise<void> {
    if (done()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), timeoutMs);
      const check = (): void => {
        if (done()) {
          clearTimeout(timer);
          resolve();
        } else this.waiters.push(check);
      };
      this.waiters.push(check);
    });
  }

  /** Resolves once `n` frames in all have arrived. */
  async count(n: number, timeoutMs = 10_000): Promise<SavedFrame[]> {
    await this.wait(`${n} frames (have ${this.frames.length})`, () => this.frames.length >= n, timeoutMs);
    return this.frames.slice(0, n);
  }

  async next(timeoutMs = 10_000): Promise<SavedFrame> {
    const want = this.taken + 1;
    await this.wait(`frame ${want}`, () => this.frames.length >= want, timeoutMs);
    return this.frames[this.taken++]!;
  }
  private taken = 0;

  async whenClosed(timeoutMs = 10_000): Promise<Error | null> {
    await this.wait('close', () => this.closed !== undefined, timeoutMs);
    return this.closed!;
  }
}

/** Open descriptors of this process. */
export function openFds(): number[] {
  return readdirSync('/proc/self/fd')
    .map(Number)
    .filter((n) => Number.isInteger(n));
}

/** The `flags:` of /proc/self/fdinfo/<fd> (octal in the file). */
export function fdFlags(fd: number): number {
  const m = /^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  if (!m) throw new Error(`no flags for fd ${fd}`);
  return parseInt(m[1]!, 8);
}

export const O_CLOEXEC = 0o2000000;

export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export { turns } from './wait.js';
