// Purpose-built migratable devices for the migration tests: one that records
// every FSM arc it is asked to take (and can be told to fail some), and one
// whose device state is megabytes of deterministic bytes streamed in order.
import { createHash } from 'node:crypto';
import { Errno, IrqIndex, MigState, type MigStateId, PciRegion } from '../../src/protocol/constants.js';
import { VfuError } from '../../src/protocol/errors.js';
import type { MigrationFeatures } from '../../src/migration/fsm.js';
import { VfioUserDevice } from '../../src/server/device.js';

export type Hop = [from: number, to: number];

export interface FsmDevice {
  device: VfioUserDevice;
  /** Every transition callback, in order. */
  hops: Hop[];
  /** Whether DMA was quiesced during each recorded hop. */
  quiescedDuring: boolean[];
  /** Arcs ("from,to") that throw, and what they throw. */
  fail: Map<string, Error>;
  /** Times the server quiesced the device. */
  quiesces: number;
}

/** A device with the given optional migration states that records its arcs. */
export function createFsmDevice(features: MigrationFeatures, name = 'fsm', v1 = false): FsmDevice {
  const device = new VfioUserDevice({ name, pci: { vendorId: 0x1234, deviceId: 0x0001 } });
  const st: FsmDevice = { device, hops: [], quiescedDuring: [], fail: new Map(), quiesces: 0 };
  device.onQuiesce(() => {
    st.quiesces++;
  });
  device.addRegion(PciRegion.BAR0, { size: 0x1000, memory: true });
  device.setIrqCount(IrqIndex.INTX, 1);
  device.setupDma();
  device.setupMigration({
    features,
    v1,
    transition(from, to) {
      st.hops.push([from, to]);
      st.quiescedDuring.push(device.dma.quiesced);
      const e = st.fail.get(`${from},${to}`);
      if (e) throw e;
    },
    readData: () => Buffer.alloc(0),
    writeData: () => {},
  });
  return st;
}

/** Deterministic bytes (xorshift32 from `seed`). */
export function patternBytes(size: number, seed: number): Buffer {
  const b = Buffer.alloc(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i + 4 <= size; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b.writeUInt32LE(x, i);
  }
  for (let i = size - (size % 4); i < size; i++) b[i] = (i * 31) & 0xff;
  return b;
}

export function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

export interface StreamDevice {
  device: VfioUserDevice;
  /** The device state (what migrates). */
  state: Buffer;
  /** Sizes of the writeData calls of the current RESUMING phase. */
  writes: number[];
  /** Of those, the ones received straight into the device's buffer (zeroCopy). */
  placed: number;
  /** Bytes received in the current RESUMING phase. */
  received: number;
  /** Errno RESUMING -> STOP fails with when the state is incomplete. */
  readonly incompleteErrno: number;
}

/**
 * A device whose state is `size` bytes.  PRE_COPY streams the first
 * `precopy` bytes, STOP_COPY the rest (all of it when pre-copy was skipped);
 * the destination takes the stream in order and refuses RESUMING -> STOP
 * with ENOMSG until it has exactly `size` bytes.
 */
export function createStreamDevice(opts: { size: number; precopy: number; seed: number; v1?: boolean; p2p?: boolean; zeroCopy?: boolean }): StreamDevice {
  const device = new VfioUserDevice({ name: 'stream', pci: { vendorId: 0x1234, deviceId: 0x0002 } });
  device.addRegion(PciRegion.BAR0, { size: 0x1000, memory: true });
  device.setupDma();
  const st: StreamDevice = {
    device,
    state: patternBytes(opts.size, opts.seed),
    writes: [],
    placed: 0,
    received: 0,
    incompleteErrno: Errno.ENOMSG,
  };
  let sent = 0;
  let incoming = Buffer.alloc(0);
  device.setupMigration({
    features: { preCopy: true, p2p: opts.p2p ?? false },
    ...(opts.v1 ? { v1: true } : {}),
    transition(from: MigStateId, to: MigStateId) {
      // A new save starts when pre-copy begins, or at STOP_COPY without one.
      if ((to === MigState.PRE_COPY && from === MigState.RUNNING) || (to === MigState.PRE_COPY_P2P && from === MigState.RUNNING_P2P)) sent = 0;
      if (to === MigState.STOP_COPY && from === MigState.STOP) sent = 0;
      if (to === MigState.RESUMING) {
        incoming = Buffer.alloc(opts.size);
        st.received = 0;
        st.writes = [];
        st.placed = 0;
      }
      if (from === MigState.RESUMING) {
        if (st.received !== opts.size) throw new VfuError(st.incompleteErrno, `incomplete state: ${st.received} of ${opts.size} bytes`);
        st.state = incoming;
      }
    },
    readData(max) {
      const limit = device.migration!.state === MigState.STOP_COPY ? opts.size : opts.precopy;
      const n = Math.max(0, Math.min(max, limit - sent));
      const out = st.state.subarray(sent, sent + n);
      sent += n;
      return out;
    },
    // zeroCopy: large writes are received straight into `incoming`
    ...(opts.zeroCopy ? { receiveBuffer: (n: number) => (st.received + n <= opts.size ? incoming.subarray(st.received, st.received + n) : null) } : {}),
    writeData(data) {
      if (st.received + data.length > opts.size) throw new VfuError(Errno.EOVERFLOW, 'more state than the device has');
      if (data.buffer === incoming.buffer && data.byteOffset === incoming.byteOffset + st.received) st.placed++;
      else data.copy(incoming, st.received);
      st.received += data.length;
      st.writes.push(data.length);
    },
    precopyInfo: () => ({ initialBytes: Math.max(0, opts.precopy - sent), dirtyBytes: 0 }),
    stopCopySize: () => opts.size - (device.migration!.saving ? sent : 0),
  });
  return st;
}
