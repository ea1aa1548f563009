// `bigstate`: the fixture for the migration benchmarks.  BAR0 is a 4 KiB
// register block served by callbacks (bytes 0-7: a counter that increments
// on every read; the rest reads back what was written).  Its migration
// state is N MiB of deterministic pseudo-random bytes: pre-copy streams the
// first M MiB, stop-copy the rest (all of it when there was no pre-copy).
// A destination checks what it received and logs its CRC-32 on reaching STOP.
import { crc32 } from 'node:zlib';
import { DeviceStateLostError } from '../migration/controller.js';
import { Errno, MigState, type MigStateId, PciRegion } from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';
import { VfioUserDevice } from '../server/device.js';

/** Options of {@link createBigState}. */
export interface BigStateOptions {
  /** Device state size in MiB (default 64). */
  stateMib?: number;
  /** MiB of it streamed in pre-copy. */
  precopyMib?: number;
  /** Generate the state (source); a destination starts zeroed. */
  seed?: number;
  /** Also expose the legacy v1 migration region (1 MiB data window). */
  v1?: boolean;
  /**
   * Check a received state by its CRC-32 on RESUMING -> STOP (default).
   * Without, only its length is checked: the CRC of 64 MiB takes ~28 ms,
   * which would otherwise count as migration downtime.
   */
  verify?: boolean;
}

/** The bigstate device and its state. */
export interface BigStateDevice {
  /** The device to serve. */
  device: VfioUserDevice;
  /** Its migration state. */
  state: Buffer;
  /** CRC-32 of the source state (what a destination must end up with). */
  readonly expectedCrc: number;
  /** Set on a destination once RESUMING -> STOP accepted the data. */
  receivedCrc: number | null;
  /** Reads of the BAR0 counter. */
  bar0Reads: bigint;
}

/** xorshift32 fill: fast, deterministic, no allocation per word. */
export function fillPseudoRandom(buf: Buffer, seed: number): void {
  const words = new Uint32Array(buf.buffer, buf.byteOffset, Math.floor(buf.length / 4));
  let x = seed >>> 0 || 0x9e3779b9;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
  for (let i = words.length * 4; i < buf.length; i++) buf[i] = i & 0xff;
}

/** The benchmark fixture: a device with a large, verifiable migration state (see the top of this file). */
export function createBigState(o: BigStateOptions = {}): BigStateDevice {
  const size = Math.round((o.stateMib ?? 64) * 1024 * 1024);
  const pre = Math.min(size, Math.round((o.precopyMib ?? 0) * 1024 * 1024));
  const device = new VfioUserDevice({ name: 'bigstate', pci: { vendorId: 0x1b36, deviceId: 0x0010, classCode: 0xff0000 } });
  const state = Buffer.alloc(size);
  fillPseudoRandom(state, o.seed ?? 1);
  const expectedCrc = crc32(state);
  const bar0 = Buffer.alloc(4096);
  // A plain number (exact to 2^53 reads) written as two u32 halves: BigInt
  // arithmetic allocated on every read of this hot register.
  let counter = 0;
  let mig: MigStateId = MigState.RUNNING;
  let pos = 0; // read position in the outgoing stream
  let wpos = 0; // write position of the incoming stream
  const st: BigStateDevice = {
    device,
    state,
    expectedCrc,
    receivedCrc: null,
    get bar0Reads() {
      return BigInt(counter);
    },
  };

  device.addRegion(PciRegion.BAR0, {
    size: 4096,
    access: {
      read(offset, out) {
        if (offset < 8) {
          counter++;
          bar0.writeUInt32LE(counter >>> 0, 0);
          bar0.writeUInt32LE(Math.floor(counter / 2 ** 32), 4);
        }
        bar0.copy(out, 0, offset, offset + out.length);
      },
      write(offset, data) {
        const skip = offset < 8 ? 8 - offset : 0;
        if (skip < data.length) data.copy(bar0, offset + skip, skip);
      },
    },
  });
  device.setupDma();
  device.setupMigration({
    features: { preCopy: true },
    ...(o.v1 ? { v1: true } : {}),
    transition(from, to) {
      if (to === MigState.PRE_COPY) pos = 0;
      if (from === MigState.STOP && to === MigState.STOP_COPY) pos = 0;
      if (to === MigState.RESUMING) wpos = 0;
      if (from === MigState.RESUMING && to === MigState.STOP) {
        if (wpos !== size) {
          throw new DeviceStateLostError(Errno.EINVAL, `bigstate: received ${wpos} of ${size} bytes`);
        }
        // unchecked: nothing to say (even a debug line, formatted and
        // emitted, is cold code in the downtime window)
        if (o.verify !== false) {
          st.receivedCrc = crc32(state);
          device.log('info', `bigstate: received ${size} bytes, crc32 0x${st.receivedCrc.toString(16).padStart(8, '0')}`);
        }
      }
      mig = to;
    },
    readData(max) {
      const end = mig === MigState.STOP_COPY ? size : Math.max(pos, pre);
      const n = Math.min(max, end - pos);
      const out = state.subarray(pos, pos + n); // a view: sent before the next call
      pos += n;
      return out;
    },
    // Zero-copy restore: large chunks are received straight into the state
    // at the write position; writeData then gets that very view back.
    receiveBuffer(n) {
      return wpos + n <= size ? state.subarray(wpos, wpos + n) : null;
    },
    writeData(data) {
      if (wpos + data.length > size) throw new VfuError(Errno.EINVAL, 'bigstate: stream too long');
      if (data.buffer !== state.buffer || data.byteOffset !== state.byteOffset + wpos) data.copy(state, wpos);
      wpos += data.length;
    },
    precopyInfo: () => ({ initialBytes: Math.max(0, pre - pos), dirtyBytes: 0 }),
    stopCopySize: () => size - (mig === MigState.PRE_COPY ? pos : 0),
  });
  return st;
}
