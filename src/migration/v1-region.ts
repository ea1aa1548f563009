// Legacy migration (v1): the migration region of libvfio-user's protocol up
// to 0.9 and of Linux's original VFIO migration.  Registers at the start of
// the region (device_state u32 @0, reserved @4, pending_bytes u64 @8,
// data_offset u64 @16, data_size u64 @24), the data window after them.
//
// Saving loop (client): read pending_bytes (0: done), read data_offset (we
// stage the next chunk in the window), read data_size, read the data.
// Restoring loop: read data_offset, write the data into the window, write
// data_size (we hand those bytes to the device).
//
// The region drives the same MigrationController as v2, so a device has one
// set of save/load callbacks for both protocols.
import { Errno, MigState, MigV1State, type MigStateId } from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';
import type { MigrationController } from './controller.js';

export const V1Reg = {
  DEVICE_STATE: 0,
  RESERVED: 4,
  PENDING_BYTES: 8,
  DATA_OFFSET: 16,
  DATA_SIZE: 24,
  /** Where the data window starts (page aligned, so it could be mmapped). */
  DATA: 4096,
} as const;

const V1_ERROR = MigV1State.SAVING | MigV1State.RESUMING;

/** v1 device_state bits for a v2 state. */
export function v1FromV2(s: MigStateId): number {
  switch (s) {
    case MigState.STOP:
      return MigV1State.STOP;
    case MigState.RUNNING:
    case MigState.RUNNING_P2P:
      return MigV1State.RUNNING;
    case MigState.STOP_COPY:
      return MigV1State.SAVING;
    case MigState.PRE_COPY:
    case MigState.PRE_COPY_P2P:
      return MigV1State.SAVING | MigV1State.RUNNING;
    case MigState.RESUMING:
      return MigV1State.RESUMING;
    default:
      return V1_ERROR;
  }
}

/** The v2 state a v1 device_state value asks for, or null if invalid. */
export function v2FromV1(bits: number): MigStateId | null {
  switch (bits) {
    case MigV1State.STOP:
      return MigState.STOP;
    case MigV1State.RUNNING:
      return MigState.RUNNING;
    case MigV1State.SAVING:
      return MigState.STOP_COPY;
    case MigV1State.SAVING | MigV1State.RUNNING:
      return MigState.PRE_COPY;
    case MigV1State.RESUMING:
      return MigState.RESUMING;
    default:
      return null; // ERROR cannot be requested; the rest are invalid
  }
}

export class MigrationRegionV1 {
  readonly size: number;
  private readonly window: Buffer;
  /** Bytes staged in the window for the client (saving). */
  private staged = -1;
  /** The staged chunk has been handed out (data_offset read). */
  private handedOut = false;

  constructor(
    private readonly ctrl: MigrationController,
    readonly windowSize = 1024 * 1024,
  ) {
    this.size = V1Reg.DATA + windowSize;
    this.window = Buffer.alloc(windowSize);
  }

  /** Region read callback. */
  async read(offset: number, out: Buffer): Promise<void> {
    if (offset >= V1Reg.DATA) {
      this.window.copy(out, 0, offset - V1Reg.DATA, offset - V1Reg.DATA + out.length);
      return;
    }
    switch (offset) {
      case V1Reg.DEVICE_STATE:
        this.need(out.length, 4);
        out.writeUInt32LE(v1FromV2(this.ctrl.state));
        return;
      case V1Reg.PENDING_BYTES: {
        this.need(out.length, 8);
        // A new iteration: drop the chunk already handed out, and poll again
        // when the device had nothing last time.
        if (this.handedOut || this.staged === 0) this.discard();
        const pending = this.ctrl.saving ? await this.stage() : 0;
        out.writeBigUInt64LE(BigInt(pending));
        return;
      }
      case V1Reg.DATA_OFFSET:
        this.need(out.length, 8);
        if (this.ctrl.saving) {
          if (this.staged < 0) await this.stage();
          this.handedOut = true;
        }
        out.writeBigUInt64LE(BigInt(V1Reg.DATA));
        return;
      case V1Reg.DATA_SIZE:
        this.need(out.length, 8);
        out.writeBigUInt64LE(BigInt(Math.max(0, this.staged)));
        return;
      case V1Reg.RESERVED:
        out.fill(0);
        return;
      default:
        throw new VfuError(Errno.EINVAL, `v1 migration register read at ${offset}`);
    }
  }

  /** Region write callback. */
  async write(offset: number, data: Buffer): Promise<void> {
    if (offset >= V1Reg.DATA) {
      data.copy(this.window, offset - V1Reg.DATA);
      return;
    }
    switch (offset) {
      case V1Reg.DEVICE_STATE: {
        this.need(data.length, 4);
        const target = v2FromV1(data.readUInt32LE(0));
        if (target === null) throw new VfuError(Errno.EINVAL, `invalid v1 device_state ${data.readUInt32LE(0)}`);
        this.discard();
        await this.ctrl.setState(target);
        return;
      }
      case V1Reg.DATA_SIZE: {
        this.need(data.length, 8);
        const n = data.readBigUInt64LE(0);
        if (n > BigInt(this.window.length)) throw new VfuError(Errno.EINVAL, `data_size ${n} beyond the window`);
        await this.ctrl.write(this.window.subarray(0, Number(n)));
        return;
      }
      case V1Reg.RESERVED:
        return;
      default:
        // pending_bytes and data_offset are read-only
        throw new VfuError(Errno.EINVAL, `v1 migration register write at ${offset}`);
    }
  }

  private need(len: number, want: number): void {
    if (len !== want) throw new VfuError(Errno.EINVAL, `v1 migration register accessed with ${len} bytes (needs ${want})`);
  }

  private discard(): void {
    this.staged = -1;
    this.handedOut = false;
  }

  /** Stages the next chunk if none is; returns pending bytes. */
  private async stage(): Promise<number> {
    if (this.staged < 0) {
      const b = await this.ctrl.read(this.window.length);
      b.copy(this.window, 0);
      this.staged = b.length;
      this.handedOut = false;
    }
    if (this.staged === 0) return 0;
    let rest = 0;
    try {
      rest = this.ctrl.stopCopySize();
    } catch {
      rest = 0;
    }
    return this.staged + rest;
  }
}
