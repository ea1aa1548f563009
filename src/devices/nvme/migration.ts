// The controller's migration stream (v2 with pre-copy): records of a tag, a
// length and a JSON body.  Pre-copy sends the geometry header, which a
// destination checks at once (refusing another image size, block size or
// queue count); stop-copy sends the header again and the controller's state.
import type { MsixTable } from '../../pci/msix.js';
import { Errno, MigState, type MigStateId } from '../../protocol/constants.js';
import { VfuError } from '../../protocol/errors.js';
import type { VfioUserDevice } from '../../server/device.js';
import type { NvmeController } from './controller.js';
import { type NvmeGeometry, checkGeometry, geometryOf, loadState, saveState } from './state.js';

/** Largest record in the migration stream. */
const MAX_RECORD = 16 << 20;
const REC_GEOMETRY = 1;
const REC_STATE = 2;

function record(tag: number, value: unknown): Buffer {
  const body = Buffer.from(JSON.stringify(value));
  const head = Buffer.alloc(8);
  head.writeUInt32LE(tag, 0);
  head.writeUInt32LE(body.length, 4);
  return Buffer.concat([head, body]);
}

/** Saves and restores one controller through the device's migration callbacks. */
export class NvmeMigration {
  private readonly geometry: NvmeGeometry;
  private out: Buffer = Buffer.alloc(0);
  private outPos = 0;
  private inbox: Buffer[] = [];
  private inboxBytes = 0;
  private received = 0;
  private state: unknown = null;
  private headerOk = false;
  private mig: MigStateId = MigState.RUNNING;
  /** Set when the controller starts running again after a stop (its interrupts then need signalling again). */
  resignal = false;

  constructor(
    private readonly ctrl: NvmeController,
    private readonly msix: MsixTable,
  ) {
    this.geometry = geometryOf(ctrl);
  }

  /** Registers the callbacks with the device. */
  setup(device: VfioUserDevice, v1: boolean): void {
    device.setupMigration({
      features: { preCopy: true, p2p: true },
      ...(v1 ? { v1: true } : {}),
      transition: (from, to) => this.transition(from, to),
      readData: (max) => this.read(max),
      writeData: (data) => this.write(data),
      precopyInfo: () => ({ initialBytes: this.mig === MigState.PRE_COPY ? this.out.length - this.outPos : 0, dirtyBytes: 0 }),
      stopCopySize: () =>
        this.mig === MigState.STOP_COPY ? this.out.length - this.outPos : JSON.stringify(saveState(this.ctrl, this.msix.snapshot())).length + 256,
    });
  }

  private transition(from: MigStateId, to: MigStateId): void {
    if (from === MigState.RESUMING) this.restore();
    if (to === MigState.PRE_COPY) this.produce([record(REC_GEOMETRY, this.geometry)]);
    else if (to === MigState.STOP_COPY) this.produce([record(REC_GEOMETRY, this.geometry), record(REC_STATE, saveState(this.ctrl, this.msix.snapshot()))]);
    else if (to === MigState.RESUMING) this.startReceiving();
    const runs = to === MigState.RUNNING || to === MigState.PRE_COPY;
    if (runs && !this.ctrl.running) this.resignal = true;
    this.ctrl.running = runs;
    this.mig = to;
  }

  private produce(records: Buffer[]): void {
    this.out = Buffer.concat(records);
    this.outPos = 0;
  }

  private read(max: number): Buffer {
    const n = Math.min(max, this.out.length - this.outPos);
    const chunk = this.out.subarray(this.outPos, this.outPos + n);
    this.outPos += n;
    return chunk;
  }

  private startReceiving(): void {
    this.inbox = [];
    this.inboxBytes = 0;
    this.received = 0;
    this.state = null;
    this.headerOk = false;
  }

  private write(data: Buffer): void {
    this.received += data.length;
    this.inbox.push(Buffer.from(data));
    this.inboxBytes += data.length;
    this.parseInbox();
  }

  /** Leaving RESUMING: applies the state received (nothing received: nothing to apply). */
  private restore(): void {
    if (this.received === 0) return;
    if (this.state === null || this.inboxBytes !== 0) {
      this.received = 0;
      throw new VfuError(Errno.EINVAL, 'nvme: incomplete migration state');
    }
    const snap = loadState(this.ctrl, this.state);
    if (snap) this.msix.restore(snap);
    this.state = null;
    this.received = 0;
  }

  /** Takes every whole record out of what has arrived. */
  private parseInbox(): void {
    for (;;) {
      if (this.inboxBytes < 8) return;
      const all = this.inbox.length === 1 ? this.inbox[0]! : Buffer.concat(this.inbox);
      this.inbox = [all];
      const tag = all.readUInt32LE(0);
      const len = all.readUInt32LE(4);
      if ((tag !== REC_GEOMETRY && tag !== REC_STATE) || len > MAX_RECORD) {
        throw new VfuError(Errno.EINVAL, `nvme: migration stream: bad record (tag ${tag}, ${len} bytes)`);
      }
      if (all.length < 8 + len) return;
      this.apply(tag, all.subarray(8, 8 + len));
      this.inbox = [all.subarray(8 + len)];
      this.inboxBytes = all.length - 8 - len;
    }
  }

  private apply(tag: number, body: Buffer): void {
    let value: unknown;
    try {
      value = JSON.parse(body.toString());
    } catch {
      throw new VfuError(Errno.EINVAL, 'nvme: migration stream: record is not JSON');
    }
    if (tag === REC_GEOMETRY) {
      checkGeometry(this.geometry, value);
      this.headerOk = true;
    } else {
      if (!this.headerOk) throw new VfuError(Errno.EINVAL, 'nvme: migration stream: state before geometry');
      this.state = value;
    }
  }
}
