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

export interface SampleDevice {
  device: VfioUserDevice;
  /** BAR1's memory (what the client may mmap). */
  bar1: Buffer;
  /** BAR0: the programmed absolute time. */
  readonly bar0: bigint;
  /** Outcome of the DMA checks run after each timer interrupt. */
  dmaChecks: { ok: number; failed: number };
  /** Interrupts raised by the timer. */
  interrupts: number;
}

export interface SampleOptions {
  preCopy?: boolean;
  v1?: boolean;
  /** BAR1's size: whole pages, at least three (pages 0 and 2 are mmappable). */
  bar1Size?: number;
}

export function createSample(opts: SampleOptions = {}): SampleDevice {
  const bar1Size = opts.bar1Size ?? BAR1_SIZE;
  if (!Number.isInteger(bar1Size) || bar1Size < 0x3000 || bar1Size % 0x1000 !== 0) {
    throw new VfuError(Errno.EINVAL, `sample: BAR1 size ${bar1Size} is not whole pages, at least three`);
  }
  /** The stop-copy image: BAR1 then BAR0. */
  const IMAGE = bar1Size + 8;
  const device = new VfioUserDevice({
    name: 'sample',
    pci: { vendorId: 0xdead, deviceId: 0xbeef, subsystemVendorId: 0xcafe, subsystemId: 0xbabe },
  });
  let bar0 = 0n;
  let timer: NodeJS.Timeout | null = null;
  let migState: MigStateId = MigState.RUNNING;
  let transferred = 0;
  // Destination: the last IMAGE bytes received, as a ring, and how many came.
  let incoming = Buffer.alloc(0);
  let received = 0;
  const slots: (DmaMappingInfo | null)[] = new Array(96).fill(null);
  const st: SampleDevice = {
    device,
    bar1: Buffer.alloc(0),
    get bar0() {
      return bar0;
    },
    dmaChecks: { ok: 0, failed: 0 },
    interrupts: 0,
  };

  const nowSec = (): bigint => BigInt(Math.floor(Date.now() / 1000));
  const disarm = (): void => {
    if (timer) clearTimeout(timer);
    timer = null;
  };
  // Like setitimer(t - now): whole seconds, and nothing when not in the future.
  // setTimeout cannot wait beyond 2^31-1 ms (it fires at once instead): a
  // time further away is reached in steps.
  const arm = (t: bigint): void => {
    disarm();
    const delay = t - nowSec();
    if (delay <= 0n) return;
    const ms = Number(delay) * 1000;
    if (ms > MAX_TIMEOUT_MS) {
      timer = setTimeout(() => arm(t), MAX_TIMEOUT_MS);
      return;
    }
    timer = setTimeout(() => {
      timer = null;
      void fire();
    }, ms);
  };

  const fire = async (): Promise<void> => {
    // If the client has not given us its eventfd yet (a fresh migration
    // destination), deliver as soon as it does rather than losing it.
    if (!device.irqs.trigger(IrqIndex.INTX, 0)) {
      await new Promise<void>((resolve) => {
        const prev = device.irqs.onEventfdAttached;
        device.irqs.onEventfdAttached = (i, v) => {
          prev?.(i, v);
          if (i === IrqIndex.INTX) {
            device.irqs.onEventfdAttached = prev;
            resolve();
          }
        };
      });
      device.irqs.trigger(IrqIndex.INTX, 0);
    }
    st.interrupts++;
    device.log('debug', 'timer interrupt raised; doing DMA');
    try {
      await dmaIo(1, false);
      await dmaIo(0, true);
    } catch (e) {
      st.dmaChecks.failed++;
      device.log('error', `sample DMA failed: ${(e as Error).message}`);
    }
  };

  // Writes 4 KiB in 1 KiB chunks, reads it back in 2 KiB chunks, compares.
  const dmaIo = async (slot: number, messages: boolean): Promise<void> => {
    const m = slots[slot];
    if (!m) {
      device.log('debug', `no DMA region in slot ${slot}`);
      return;
    }
    device.log('debug', `DMA ${messages ? 'by messages' : 'direct'} at 0x${m.iova.toString(16)}`);
    const buf = Buffer.alloc(CHUNK * CHUNKS);
    for (let i = 0; i < CHUNKS; i++) {
      const chunk = buf.subarray(i * CHUNK, (i + 1) * CHUNK).fill(0x41 + i);
      if (messages) await device.dma.write(m.iova + i * CHUNK, chunk, { messages: true });
      else device.dma.writeSync(m.iova + i * CHUNK, chunk);
    }
    const crc1 = crc32(buf);
    const back = Buffer.alloc(buf.length);
    for (let i = 0; i < CHUNKS; i += 2) {
      const part = back.subarray(i * CHUNK, (i + 2) * CHUNK);
      if (messages) await device.dma.read(m.iova + i * CHUNK, part, { messages: true });
      else device.dma.readSync(m.iova + i * CHUNK, part);
    }
    if (crc32(back) === crc1) st.dmaChecks.ok++;
    else {
      st.dmaChecks.failed++;
      device.log('error', `DMA write and read mismatch in slot ${slot}`);
    }
  };

  device.addRegion(PciRegion.BAR0, {
    size: 8,
    kind: 'io',
    access: {
      read(offset, out) {
        if (offset !== 0 || out.length !== 8) throw Object.assign(new Error('bad BAR0 access'), { errno: 22 });
        out.writeBigInt64LE(nowSec() - bar0);
      },
      write(offset, data) {
        if (offset !== 0 || data.length !== 8) throw Object.assign(new Error('bad BAR0 access'), { errno: 22 });
        const t = data.readBigInt64LE(0);
        if (migState === MigState.RUNNING) arm(t);
        bar0 = t;
      },
    },
  });
  const bar1 = device.addRegion(PciRegion.BAR1, {
    size: bar1Size,
    memory: true,
    sparse: [
      { offset: 0, size: 0x1000 },
      { offset: 0x2000, size: 0x1000 },
    ],
    access: {
      read(offset, out) {
        st.bar1.copy(out, 0, offset, offset + out.length);
      },
      write(offset, data) {
        data.copy(st.bar1, offset);
      },
    },
  });
  st.bar1 = bar1.memory!;
  device.setIrqCount(IrqIndex.INTX, 1);
  device.setupDma({
    onMap: (m) => {
      const i = slots.indexOf(null);
      if (i >= 0) slots[i] = m;
    },
    onUnmap: (m) => {
      const i = slots.findIndex((x) => x !== null && x.iova === m.iova && x.size === m.size);
      if (i >= 0) slots[i] = null;
    },
  });
  device.onReset(() => {});

  const total = (): number => bar1Size + (migState === MigState.STOP_COPY ? 8 : 0);
  const bar0Bytes = (): Buffer => {
    const b = Buffer.alloc(8);
    b.writeBigInt64LE(bar0);
    return b;
  };
  device.setupMigration({
    features: { preCopy: opts.preCopy ?? true },
    ...(opts.v1 ? { v1: true } : {}),
    transition(from, to) {
      if (from === MigState.RESUMING) restore();
      if (to === MigState.STOP_COPY) {
        disarm();
        transferred = 0;
      } else if (to === MigState.PRE_COPY) {
        transferred = 0;
      } else if (to === MigState.RESUMING) {
        incoming = Buffer.alloc(IMAGE);
        received = 0;
      } else if (to === MigState.RUNNING) {
        arm(bar0);
      }
      migState = to;
    },
    readData(max) {
      const end = Math.min(total(), transferred + max);
      const out = Buffer.alloc(Math.max(0, end - transferred));
      let o = 0;
      for (let at = transferred; at < end; ) {
        if (at < bar1Size) {
          const n = Math.min(end, bar1Size) - at;
          st.bar1.copy(out, o, at, at + n);
          o += n;
          at += n;
        } else {
          const n = end - at;
          bar0Bytes().copy(out, o, at - bar1Size, at - bar1Size + n);
          o += n;
          at += n;
        }
      }
      transferred = end;
      return out;
    },
    writeData(data) {
      // Keep only the newest IMAGE bytes: the pre-copy part before them is
      // superseded by the stop-copy image, which always comes last.
      let src = data;
      if (src.length > IMAGE) src = src.subarray(src.length - IMAGE);
      const at = (received + data.length - src.length) % IMAGE;
      const first = Math.min(src.length, IMAGE - at);
      src.copy(incoming, at, 0, first);
      src.copy(incoming, 0, first);
      received += data.length;
    },
    precopyInfo: () => ({ initialBytes: Math.max(0, bar1Size - transferred), dirtyBytes: 0 }),
    stopCopySize: () => bar1Size + 8,
  });
  const restore = (): void => {
    if (received === 0) return; // nothing sent: the device stays as it was
    if (received < IMAGE) {
      // Refuse, and drop what came: the client may send a whole image again,
      // or leave RESUMING with the device as it was.
      const n = received;
      received = 0;
      throw new VfuError(Errno.EINVAL, `incomplete device state: ${n} of at least ${IMAGE} bytes`);
    }
    const at = received % IMAGE;
    const image = Buffer.concat([incoming.subarray(at), incoming.subarray(0, at)]);
    image.copy(st.bar1, 0, 0, bar1Size);
    bar0 = image.readBigInt64LE(bar1Size);
    received = 0;
  };
  device.on('close', disarm);
  return st;
}
