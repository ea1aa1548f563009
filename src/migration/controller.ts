// Runs a device's migration: the v2 state machine (every SET walks the
// derived shortest path, one device callback per arc) and the device state
// stream.  The v1 migration region (v1-region.ts) drives the same controller,
// so one device migrates either way.
import { Errno, MigState, type MigStateId, migStateNames } from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';
import { type MigrationFeatures, deriveNextState, isSavingState, migrationFlags, planPath } from './fsm.js';

/**
 * Thrown by a migration transition whose failure leaves the device's state
 * unusable (a destination given half a state, say): the device moves to the
 * ERROR state, which only a reset leaves.  Any other error leaves the state
 * where the walk had got to.
 */
export class DeviceStateLostError extends VfuError {
  /** The failure, with the errno to reply with. */
  constructor(errno: number, message?: string) {
    super(errno, message);
    this.name = 'DeviceStateLostError';
  }
}

/** Pre-copy sizing: what a device in PRE_COPY still has to send. */
export interface PrecopyInfo {
  /** Bytes of the initial image still to read in PRE_COPY. */
  initialBytes: number;
  /** Bytes dirtied since, as far as the device can tell. */
  dirtyBytes: number;
}

/** What a device provides to be migratable. */
export interface MigrationCallbacks {
  /** Optional states the device implements (STOP_COPY always). */
  features?: Partial<MigrationFeatures>;
  /**
   * One arc of the FSM (e.g. RUNNING -> PRE_COPY).  Throw (ideally a
   * VfuError) to fail it; the state then stays where the walk had got to.
   * Throw a {@link DeviceStateLostError} when the device's state is no
   * longer usable: the device then moves to ERROR (only a reset leaves it).
   */
  transition(from: MigStateId, to: MigStateId): unknown;
  /**
   * The next bytes of the outgoing stream, at most `max`.  In PRE_COPY fewer
   * than `max` means "nothing more for now"; in STOP_COPY it means the end.
   * The buffer is sent by reference, without a copy: it may be a view (of
   * the device's state, say), and its bytes must stay unchanged until the
   * next call (the server waits for it to be sent before calling again) or
   * the end of the migration.
   */
  readData(max: number): Buffer | Promise<Buffer>;
  /** The next bytes of the incoming stream (valid until return/first await). */
  writeData(data: Buffer): unknown;
  /**
   * Optional, for zero-copy restores: where the next `size` bytes of the
   * incoming stream may be received directly (a view of the device's state
   * at its write position, say), or null.  The server then receives a large
   * MIG_DATA_WRITE straight into it and calls writeData with that very
   * buffer, which the device need not copy.  Bytes may land there before
   * writeData is called (and stay, if the client goes away mid-message).
   */
  receiveBuffer?(size: number): Buffer | null;
  /** Pre-copy sizing (extension): what is left of the initial image and dirty. */
  precopyInfo?(): PrecopyInfo;
  /** Estimated size of the stop-copy stream, in any state (extension). */
  stopCopySize?(): number;
}

/** Counters of a device's migrations. */
export interface MigrationStats {
  /** Stream bytes read (MIG_DATA_READ). */
  bytesRead: number;
  /** Stream bytes written (MIG_DATA_WRITE). */
  bytesWritten: number;
  /** FSM arcs taken. */
  transitions: number;
}

/**
 * A device's migration state machine and stream (what setupMigration()
 * returns and VfioUserDevice.migration holds): read its `state`.
 */
export class MigrationController {
  /** The optional states the device implements. */
  readonly features: MigrationFeatures;
  /** VFIO_MIGRATION_* flags (MigrationFlag). */
  readonly flags: number;
  private readonly table: number[][];
  private _state: MigStateId = MigState.RUNNING;
  /** Counters. */
  readonly stats: MigrationStats = { bytesRead: 0, bytesWritten: 0, transitions: 0 };
  /** Observers of every state change (server bookkeeping, progress UIs). */
  onChange: ((from: MigStateId, to: MigStateId) => void) | null = null;

  /** A state machine over the device's callbacks (setupMigration() makes it). */
  constructor(
    /** The device's callbacks. */
    readonly callbacks: MigrationCallbacks,
  ) {
    this.features = { preCopy: callbacks.features?.preCopy ?? false, p2p: callbacks.features?.p2p ?? false };
    this.flags = migrationFlags(this.features);
    this.table = deriveNextState(this.features);
  }

  /** The current state (MigState). */
  get state(): MigStateId {
    return this._state;
  }

  /** The hops a SET to `target` would take (null: refused). */
  plan(target: number): number[] | null {
    if (!Number.isInteger(target) || target < 0 || target > 7) return null;
    return planPath(this.table, this._state, target);
  }

  /**
   * VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE SET: completes the whole path
   * before returning (or before the promise resolves, once a transition
   * callback returns one: synchronous devices never wait on a promise, as
   * in read()).  EINVAL when the target is unreachable; a failing arc
   * throws (rejects) with the callback's errno, leaving `state` at the last
   * state reached (or ERROR when the callback asked for it).
   */
  setState(target: number): void | Promise<void> {
    const path = this.plan(target);
    if (path === null) {
      throw new VfuError(Errno.EINVAL, `no migration path ${migStateNames[this._state]} -> ${migStateNames[target] ?? target}`);
    }
    return this.walk(path, 0);
  }

  /** Takes the arcs path[i..], synchronously until a callback returns a promise. */
  private walk(path: number[], i: number): void | Promise<void> {
    for (; i < path.length; i++) {
      const next = path[i] as MigStateId;
      let r: unknown;
      try {
        r = this.callbacks.transition(this._state, next);
      } catch (e) {
        this.failed(e);
      }
      // a thenable, as `await` took before
      if (r !== null && typeof r === 'object' && typeof (r as PromiseLike<void>).then === 'function') {
        const rest = i + 1;
        return Promise.resolve(r).then(
          () => {
            this.enter(next);
            return this.walk(path, rest);
          },
          (e: unknown) => this.failed(e),
        );
      }
      this.enter(next);
    }
  }

  /** A transition callback failed: ERROR when it said the state is lost; rethrows. */
  private failed(e: unknown): never {
    if (e instanceof DeviceStateLostError) this.enter(MigState.ERROR);
    throw e;
  }

  private enter(s: MigStateId): void {
    const from = this._state;
    this._state = s;
    this.stats.transitions++;
    this.onChange?.(from, s);
  }

  /** Whether the device is saving (PRE_COPY, PRE_COPY_P2P, STOP_COPY). */
  get saving(): boolean {
    return isSavingState(this._state);
  }

  /**
   * MIG_DATA_READ: only in PRE_COPY(_P2P) and STOP_COPY.  Synchronous when
   * the device's callback is, so the hot path never waits on a promise.
   */
  read(max: number): Buffer | Promise<Buffer> {
    if (!this.saving) throw new VfuError(Errno.EINVAL, `MIG_DATA_READ in ${migStateNames[this._state]}`);
    const r = this.callbacks.readData(max);
    const got = (b: Buffer): Buffer => {
      if (b.length > max) throw new VfuError(Errno.EIO, `device returned ${b.length} bytes for a ${max}-byte read`);
      this.stats.bytesRead += b.length;
      return b;
    };
    return r instanceof Promise ? r.then(got) : got(r);
  }

  /** MIG_DATA_WRITE: only in RESUMING (synchronous when the callback is). */
  write(data: Buffer): void | Promise<void> {
    if (this._state !== MigState.RESUMING) throw new VfuError(Errno.EINVAL, `MIG_DATA_WRITE in ${migStateNames[this._state]}`);
    const n = data.length;
    const r = this.callbacks.writeData(data);
    if (r instanceof Promise) {
      return r.then(() => {
        this.stats.bytesWritten += n;
      });
    }
    this.stats.bytesWritten += n;
  }

  /**
   * Where the next `size` bytes of a MIG_DATA_WRITE may be received (the
   * device's receiveBuffer), or null: only in RESUMING, and only a buffer
   * of exactly that size.
   */
  receiveBuffer(size: number): Buffer | null {
    if (this._state !== MigState.RESUMING || !this.callbacks.receiveBuffer) return null;
    const b = this.callbacks.receiveBuffer(size);
    return b !== null && b.length === size ? b : null;
  }

  /** Pre-copy sizing: only in PRE_COPY (EINVAL otherwise). */
  precopyInfo(): PrecopyInfo {
    if (this._state !== MigState.PRE_COPY && this._state !== MigState.PRE_COPY_P2P) {
      throw new VfuError(Errno.EINVAL, 'pre-copy info outside PRE_COPY');
    }
    return this.callbacks.precopyInfo?.() ?? { initialBytes: 0, dirtyBytes: 0 };
  }

  /** The device's estimate of its stop-copy stream (0 without the callback). */
  stopCopySize(): number {
    return this.callbacks.stopCopySize?.() ?? 0;
  }

  /**
   * Device reset: leaves the migration state alone (libvfio-user #844 reset
   * it behind the client's back), except that it is the only way out of
   * ERROR, back to RUNNING.
   */
  onDeviceReset(): void {
    if (this._state === MigState.ERROR) this.enter(MigState.RUNNING);
  }
}
