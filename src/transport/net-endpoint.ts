// Endpoint over node:net (no descriptors): the pure-TypeScript fallback.
// Without SCM_RIGHTS there is no fd-backed DMA, no mmap of regions and no
// eventfd interrupts (the spec has no message-based interrupt since
// VM_INTERRUPT was removed); everything else works, DMA included, through
// DMA_READ/DMA_WRITE messages.
import type { Socket } from 'node:net';
import { NativeUnavailableError } from '../native/index.js';
import type { Endpoint } from './endpoint.js';
import { type Frame, Framer, type Placement } from './framer.js';

export class NetEndpoint implements Endpoint {
  readonly canPassFds = false;
  onFrame: (f: Frame) => void = () => {};
  onClose: (err: Error | null) => void = () => {};
  private readonly framer: Framer;
  private _closed = false;
  /** Not reading: the owner said so (holdReading), or the peer does not read our replies. */
  private holding = false;
  private backpressure = false;

  constructor(
    private readonly socket: Socket,
    opts: { maxMessageSize: number; maxFds: number },
  ) {
    this.framer = new Framer((f) => this.onFrame(f), { ...opts, maxFds: 0, closeFd: () => {} });
    socket.setNoDelay?.(true);
    socket.on('data', (chunk: Buffer) => this.framer.push(chunk));
    socket.on('error', (e) => this.finish(e));
    socket.on('close', () => this.finish(null));
    socket.on('end', () => socket.end());
  }

  get closed(): boolean {
    return this._closed;
  }

  setLimits(maxMessageSize: number): void {
    this.framer.setMaxMessageSize(maxMessageSize);
  }

  setPlacement(p: Placement | null): void {
    this.framer.placement = p;
  }

  private sendLimit = Infinity;

  setSendQueueLimit(bytes: number): void {
    this.sendLimit = bytes;
  }

  get queuedBytes(): number {
    return this.socket.writableLength;
  }

  ref(keep: boolean): void {
    if (keep) this.socket.ref();
    else this.socket.unref();
  }

  send(a: Buffer, b: Buffer | null, fds: readonly number[] | null, bStable = false): void {
    if (fds && fds.length > 0) throw new NativeUnavailableError('sending file descriptors');
    if (this._closed) return;
    // net.Socket keeps a reference until flushed: copy so callers may reuse,
    // except a stable `b`, which goes by reference (one writev with a).
    if (bStable && b && b.length) {
      this.socket.cork();
      this.socket.write(Buffer.from(a));
      this.socket.write(b);
      this.socket.uncork();
    } else {
      this.socket.write(b && b.length ? Buffer.concat([a, b]) : Buffer.from(a));
    }
    // backpressure: stop reading a peer that does not read our replies
    if (this.socket.writableLength > this.sendLimit && !this.backpressure) {
      this.backpressure = true;
      this.socket.pause();
      this.socket.once('drain', () => {
        this.backpressure = false;
        if (!this._closed && !this.holding) this.socket.resume();
      });
    }
  }

  holdReading(on: boolean): void {
    if (this.holding === on || this._closed) return;
    this.holding = on;
    this.framer.hold(on);
    if (on) this.socket.pause();
    else if (!this.backpressure) this.socket.resume();
  }

  get sending(): boolean {
    return !this._closed && this.socket.writableLength > 0;
  }

  whenDrained(): Promise<void> {
    if (this._closed || this.socket.writableLength === 0) return Promise.resolve();
    return new Promise((res) => this.socket.once('drain', () => res()));
  }

  cork(): void {
    this.socket.cork();
  }

  uncork(): void {
    this.socket.uncork();
  }

  close(): void {
    if (this._closed) return;
    this.socket.destroy();
    this.finish(null);
  }

  private finish(err: Error | null): void {
    if (this._closed) return;
    this._closed = true;
    this.framer.destroy();
    this.onClose(err);
  }
}
