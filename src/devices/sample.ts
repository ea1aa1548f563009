// The device of libvfio-user's samples/server, externally identical so that
// its samples/client can drive it: ids dead:beef (subsystem cafe:babe); BAR0
// an 8-byte register holding an absolute time (seconds) at which the device
// raises INTx and then performs DMA on the client's first two mapped regions
// (the second directly through its mapping, the first with DMA_READ/WRITE
// messages) and checks what it reads back; BAR1 a 12 KiB memory area (or
// `bar1Size`), its first and third pages mmappable.  Its migration stream is
// BAR1 then BAR0: 12,288 bytes in PRE_COPY, 12,296 in STOP_COPY (with the
// default size).  A destination receives whatever part of the pre-copy data
// the client read, then the stop-copy image: the last 12,296 bytes are what
// it restores (RESUMING -> STOP fails with EINVAL when data came but not a
// whole image).
import { crc32 } from 'node:zlib';
import { Errno, IrqIndex, MigState, type MigStateId, PciRegion } from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';
import { VfioUserDevice } from '../server/device.js';
import type { DmaMappingInfo } from '../server/dma.js';

/** BAR1's size unless `bar1Size` says otherwise. */
export const BAR1_SIZE = 0x3000;
const CHUNK = 1024;
const CHUNKS = 4;
const MAX_TIMEOUT_MS = 2 ** 31 - 1;

/** The sample device and what tests observe of it. */
export interface SampleDevice {
  /** The device to serve. */
  device: VfioUserDevice;
  /** BAR1's memory (what the client may mmap). */
  bar1: Buffer;
  /** BAR0: the programmed absolute time. */
  readonly bar0: bigint;
  /** Outcome of the DMA checks run after each timer interrupt. */
  dmaChecks: {
    /** Checks that read back what was written. */
    ok: number;
    /** Checks that did not. */
    failed: number;
  };
  /** Interrupts raised by the timer. */
  interrupts: number;
}

/** Options of {@link createSample}. */
export interface SampleOptions {
  /** Offer PRE_COPY (default true). */
  preCopy?: boolean;
  /** Also expose the v1 migration region. */
  v1?: boolean;
  /** BAR1's size: whole pages, at least three (pages 0 and 2 are mmappable). */
  bar1Size?: number;
}

/** A sample device (see the top of this file), ready to serve. */
export function createSample(opts: SampleOptions = {}): SampleDevice {
  const bar1Size = opts.bar1Size ?? BAR1_SIZE;
  if (!Number.isInteger(bar1Size) || bar1Size < 0x3000 || bar1Size % 0x1000 !== 0) {
    throw new VfuError(Errno.EINVAL, `sample: BAR1 size ${bar1Size} is not whole pages, at least three`);
  }
  const s = new Sample(bar1Size);
  s.addRegions();
  s.setupDmaSlots();
  s.setupMigration(opts);
  s.device.on('close', () => s.disarm());
  return s;
}

/** The device's state and behaviour; createSample wires it to a VfioUserDevice. */
class Sample implements SampleDevice {
  readonly device = new VfioUserDevice({
    name: 'sample',
    pci: { vendorId: 0xdead, deviceId: 0xbeef, subsystemVendorId: 0xcafe, subsystemId: 0xbabe },
  });
  bar1: Buffer = Buffer.alloc(0);
  dmaChecks = { ok: 0, failed: 0 };
  interrupts = 0;
  private bar0Time = 0n;
  private timer: NodeJS.Timeout | null = null;
  private migState: MigStateId = MigState.RUNNING;
  /** Source: stream bytes read so far in this state. */
  private transferred = 0;
  /** Destination: the last `image` bytes received, as a ring, and how many came. */
  private incoming: Buffer = Buffer.alloc(0);
  private received = 0;
  /** Where restore() reads BAR0 out of the ring. */
  private readonly bar0Bytes = Buffer.alloc(8);
  private readonly slots: (DmaMappingInfo | null)[] = new Array(96).fill(null);
  /** The stop-copy image: BAR1 then BAR0. */
  private readonly image: number;

  constructor(private readonly bar1Size: number) {
    this.image = bar1Size + 8;
  }

  get bar0(): bigint {
    return this.bar0Time;
  }

  // ------------------------------------------------------------- regions

  addRegions(): void {
    this.device.addRegion(PciRegion.BAR0, {
      size: 8,
      kind: 'io',
      access: {
        read: (offset, out) => {
          if (offset !== 0 || out.length !== 8) throw new VfuError(Errno.EINVAL, 'bad BAR0 access');
          out.writeBigInt64LE(nowSec() - this.bar0Time);
        },
        write: (offset, data) => {
          if (offset !== 0 || data.length !== 8) throw new VfuError(Errno.EINVAL, 'bad BAR0 access');
          const t = data.readBigInt64LE(0);
          if (this.migState === MigState.RUNNING) this.arm(t);
          this.bar0Time = t;
        },
      },
    });
    const bar1 = this.device.addRegion(PciRegion.BAR1, {
      size: this.bar1Size,
      memory: true,
      sparse: [
        { offset: 0, size: 0x1000 },
        { offset: 0x2000, size: 0x1000 },
      ],
      access: {
        read: (offset, out) => void this.bar1.copy(out, 0, offset, offset + out.length),
        write: (offset, data) => void data.copy(this.bar1, offset),
      },
    });
    this.bar1 = bar1.memory!;
    this.device.setIrqCount(IrqIndex.INTX, 1);
  }

  // ------------------------------------------------------- timer and DMA

  disarm(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  // Like setitimer(t - now): whole seconds, and nothing when not in the future.
  // setTimeout cannot wait beyond 2^31-1 ms (it fires at once instead): a
  // time further away is reached in steps.
  private arm(t: bigint): void {
    this.disarm();
    const delay = t - nowSec();
    if (delay <= 0n) return;
    const ms = Number(delay) * 1000;
    if (ms > MAX_TIMEOUT_MS) {
      this.timer = setTimeout(() => this.arm(t), MAX_TIMEOUT_MS);
      return;
    }
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.fire();
    }, ms);
  }

  private async fire(): Promise<void> {
    await this.raiseIntx();
    this.interrupts++;
    this.device.log('debug', 'timer interrupt raised; doing DMA');
    try {
      await this.dmaIo(1, false);
      await this.dmaIo(0, true);
    } catch (e) {
      this.dmaChecks.failed++;
      this.device.log('error', `sample DMA failed: ${(e as Error).message}`);
    }
  }

  // If the client has not given us its eventfd yet (a fresh migration
  // destination), deliver as soon as it does rather than losing it.
  private async raiseIntx(): Promise<void> {
    const dev = this.device;
    if (dev.trigger(IrqIndex.INTX, 0)) return;
    await new Promise<void>((resolve) => {
      const attached = (index: number): void => {
        if (index !== IrqIndex.INTX) return;
        dev.off('irqAttached', attached);
        resolve();
      };
      dev.on('irqAttached', attached);
    });
    dev.trigger(IrqIndex.INTX, 0);
  }

  setupDmaSlots(): void {
    const slots = this.slots;
    this.device.setupDma({
      onMap: (m) => {
        const i = slots.indexOf(null);
        if (i >= 0) slots[i] = m;
      },
      onUnmap: (m) => {
        const i = slots.findIndex((x) => x !== null && x.iova === m.iova && x.size === m.size);
        if (i >= 0) slots[i] = null;
      },
    });
    // Like libvfio-user's sample, a reset (of any kind) leaves BAR0 and BAR1
    // alone: `vfu lspci` or a VMM reconnecting finds the device as it was.
    this.device.onReset(() => {});
  }

  // Writes 4 KiB in 1 KiB chunks, reads it back in 2 KiB chunks, compares.
  private async dmaIo(slot: number, messages: boolean): Promise<void> {
    const m = this.slots[slot];
    const dma = this.device.dma;
    if (!m) {
      this.device.log('debug', `no DMA region in slot ${slot}`);
      return;
    }
    this.device.log('debug', `DMA ${messages ? 'by messages' : 'direct'} at 0x${m.iova.toString(16)}`);
    const buf = Buffer.alloc(CHUNK * CHUNKS);
    for (let i = 0; i < CHUNKS; i++) {
      const chunk = buf.subarray(i * CHUNK, (i + 1) * CHUNK).fill(0x41 + i);
      // messages: false is direct access only (a file mapping's pwrite runs off the event loop)
      await dma.write(m.iova + i * CHUNK, chunk, { messages });
    }
    const back = Buffer.alloc(buf.length);
    for (let i = 0; i < CHUNKS; i += 2) {
      const part = back.subarray(i * CHUNK, (i + 2) * CHUNK);
      await dma.read(m.iova + i * CHUNK, part, { messages });
    }
    if (crc32(back) === crc32(buf)) this.dmaChecks.ok++;
    else {
      this.dmaChecks.failed++;
      this.device.log('error', `DMA write and read mismatch in slot ${slot}`);
    }
  }

  // ----------------------------------------------------------- migration

  setupMigration(opts: SampleOptions): void {
    this.device.setupMigration({
      features: { preCopy: opts.preCopy ?? true },
      ...(opts.v1 ? { v1: true } : {}),
      transition: (from, to) => this.transition(from, to),
      readData: (max) => this.readData(max),
      writeData: (data) => this.writeData(data),
      precopyInfo: () => ({ initialBytes: Math.max(0, this.bar1Size - this.transferred), dirtyBytes: 0 }),
      stopCopySize: () => this.image,
    });
  }

  private transition(from: MigStateId, to: MigStateId): void {
    if (from === MigState.RESUMING) this.restore();
    if (to === MigState.STOP_COPY) {
      this.disarm();
      this.transferred = 0;
    } else if (to === MigState.PRE_COPY) {
      this.transferred = 0;
    } else if (to === MigState.RESUMING) {
      this.incoming = Buffer.alloc(this.image);
      this.received = 0;
    } else if (to === MigState.RUNNING) {
      this.arm(this.bar0Time);
    }
    this.migState = to;
  }

  /** The stream: BAR1 in PRE_COPY, BAR1 then BAR0 in STOP_COPY. */
  private readData(max: number): Buffer {
    const total = this.bar1Size + (this.migState === MigState.STOP_COPY ? 8 : 0);
    const start = this.transferred;
    const end = Math.min(total, start + max);
    const out = Buffer.alloc(Math.max(0, end - start));
    const fromBar1 = Math.max(0, Math.min(end, this.bar1Size) - start);
    if (fromBar1 > 0) this.bar1.copy(out, 0, start, start + fromBar1);
    if (end > this.bar1Size) {
      const b0 = Buffer.alloc(8);
      b0.writeBigInt64LE(this.bar0Time);
      const at = Math.max(start, this.bar1Size);
      b0.copy(out, at - start, at - this.bar1Size, end - this.bar1Size);
    }
    this.transferred = end;
    return out;
  }

  // Keep only the newest `image` bytes: the pre-copy part before them is
  // superseded by the stop-copy image, which always comes last.
  private writeData(data: Buffer): void {
    const size = this.image;
    const src = data.length > size ? data.subarray(data.length - size) : data;
    const at = (this.received + data.length - src.length) % size;
    const first = Math.min(src.length, size - at);
    src.copy(this.incoming, at, 0, first);
    src.copy(this.incoming, 0, first);
    this.received += data.length;
  }

  private restore(): void {
    const n = this.received;
    if (n === 0) return; // nothing sent: the device stays as it was
    this.received = 0;
    // Refuse, and drop what came: the client may send a whole image again,
    // or leave RESUMING with the device as it was.
    if (n < this.image) throw new VfuError(Errno.EINVAL, `incomplete device state: ${n} of at least ${this.image} bytes`);
    // the image starts at the ring's oldest byte: read out of the ring in
    // place (a Buffer.concat of it first cost ~50 us of the downtime window
    // on the destination, its allocation and copies run for the first time)
    const at = n % this.image;
    ringRead(this.incoming, at, this.bar1.subarray(0, this.bar1Size));
    ringRead(this.incoming, (at + this.bar1Size) % this.image, this.bar0Bytes);
    this.bar0Time = this.bar0Bytes.readBigInt64LE(0);
  }
}

/** Fills `out` from `ring` starting at `from`, wrapping around its end. */
function ringRead(ring: Buffer, from: number, out: Buffer): void {
  const first = Math.min(out.length, ring.length - from);
  out.set(ring.subarray(from, from + first));
  if (first < out.length) out.set(ring.subarray(0, out.length - first), first);
}

function nowSec(): bigint {
  return BigInt(Math.floor(Date.now() / 1000));
}
