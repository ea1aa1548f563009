// The device author's API: describe a PCI device (config space, regions,
// interrupts, DMA, migration, reset/quiesce callbacks), then serve it on a
// socket.  Shaped after libvfio-user's vfu_* calls, in idiomatic TypeScript.
import { EventEmitter } from 'node:events';
import { MigrationController, type MigrationCallbacks } from '../migration/controller.js';
import { DirtyLog } from '../migration/dirty.js';
import type { Capabilities } from '../protocol/capabilities.js';
import { MigrationRegionV1 } from '../migration/v1-region.js';
import { PciConfigSpace, type PciConfigOptions } from '../pci/config-space.js';
import {
  Errno,
  IrqIndex,
  MIGR_REGION_V1_INDEX,
  PCI_NUM_REGIONS,
  PciRegion,
  REGION_SUBTYPE_MIGRATION,
  REGION_TYPE_MIGRATION,
  type MigStateId,
} from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';
import { warmNodeBuiltins } from '../util/warm.js';
import { DmaController, type DmaLimits, type DmaMappingInfo, type UnsealedPolicy, defaultDmaLimits } from './dma.js';
import { IrqController, type IrqStateCallback } from './irqs.js';
import { IoEventFds, type IoEventFdSpec } from './ioeventfds.js';
import { Region, type RegionSpec } from './regions.js';

/**
 * Why the reset hook runs:
 * - `'client'`: the client sent DEVICE_RESET (a VMM resetting the device,
 *   as on a guest reboot);
 * - `'flr'`: the guest initiated a PCIe Function Level Reset through config
 *   space (config space is back to its power-on values already);
 * - `'lost-connection'`: the client went away (closed, crashed, or was a
 *   short-lived tool such as `vfu lspci`, or the source side at the end of
 *   `vfu migrate`).  Its DMA mappings and interrupt descriptors are gone, but
 *   nothing says the device should forget its registers: a device that keeps
 *   its state here survives an inspection and a reconnecting VMM.  Clear only
 *   what belonged to the client (queues pointing into guest memory, say).
 */
export type ResetReason = 'client' | 'lost-connection' | 'flr';

/** Severity of a device 'log' event. */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

/**
 * The events of a {@link VfioUserDevice} and their listeners' arguments
 * (`device.on('reset', (reason) => ...)`).
 */
export interface DeviceEvents {
  /** A client finished negotiating (VERSION); its capabilities. */
  connected: [caps: Capabilities];
  /**
   * The client went away and the clean-up is over: mappings dropped, a
   * migration in progress walked back to RUNNING, the reset hook run with
   * 'lost-connection'.  The next client may connect.
   */
  disconnected: [];
  /** A reset is starting (before the onReset hook runs). */
  reset: [reason: ResetReason];
  /** The migration state machine moved along one arc. */
  migration: [from: MigStateId, to: MigStateId];
  /**
   * The client attached an eventfd to this interrupt vector (SET_IRQS):
   * trigger() reaches the client from now on.  A device with an interrupt
   * to deliver before that (a fresh migration destination) waits for this.
   */
  irqAttached: [index: number, vector: number];
  /** A diagnostic from the server or the device (nothing is printed unless you listen). */
  log: [level: LogLevel, message: string];
  /** The server released the device's resources (dispose()). */
  close: [];
}

/** The device's identity in config space (the PCI model's options, minus the pin). */
export type PciIdentity = Omit<PciConfigOptions, 'interruptPin'>;

/** Options of a new {@link VfioUserDevice}. */
export interface DeviceOptions {
  /** Vendor, device, subsystem ids, class code, revision, PCIe or not. */
  pci: PciIdentity;
  /** Name used in logs. */
  name?: string;
}

/** DMA callbacks and limits of a device (see {@link VfioUserDevice.setupDma}). */
export interface DmaOptions extends Partial<DmaLimits> {
  /** Throw to refuse a mapping (DMA_MAP fails with the error's errno). */
  onMap?: (m: DmaMappingInfo) => void;
  /** Informational: the mapping goes whatever this does (errors are logged). */
  onUnmap?: (m: DmaMappingInfo) => void;
  /** Descriptors not sealed against shrinking (default 'file': pread/pwrite, see UnsealedPolicy). */
  unsealedFds?: UnsealedPolicy;
}

/** What {@link VfioUserDevice.setupMigration} takes: the device's migration callbacks, and v1. */
export interface MigrationSetup extends MigrationCallbacks {
  /** Also expose the legacy v1 migration region (index 9). */
  v1?:
    | boolean
    | {
        /** Bytes of the v1 data window (default 1 MiB). */
        windowSize?: number;
      };
}

/**
 * A PCI device to serve over vfio-user: describe it (regions, interrupts,
 * DMA, migration, reset and quiesce hooks), then hand it to
 * {@link VfioUserServer.listen}.  Its events are listed in {@link DeviceEvents}.
 */
export class VfioUserDevice extends EventEmitter<DeviceEvents> {
  /** Name used in logs (DeviceOptions.name). */
  readonly name: string;
  /** The PCI config space model: add capabilities (addMsix, addPm, ...), watch writes. */
  readonly pci: PciConfigSpace;
  /** DMA into the client's memory: `dma.read` / `dma.write` (dirty pages are logged). */
  readonly dma: DmaController;
  /** The interrupt vectors and the client's eventfds (use trigger() and setIrqCount()). @internal */
  readonly irqs = new IrqController();
  /** The ioeventfds the client may wire up (use addIoEventFd()). @internal */
  readonly ioeventfds = new IoEventFds();
  /** Dirty page log of the device's DMA writes (DMA_LOGGING_*, v1 DIRTY_PAGES). @internal */
  readonly logging = new DirtyLog();
  /** The migration state machine once setupMigration() was called (its `state`). */
  migration: MigrationController | null = null;
  /** The v1 migration region, with setupMigration({ v1 }). @internal */
  migrationV1: MigrationRegionV1 | null = null;
  private readonly regionList: (Region | undefined)[] = [];
  private resetCb: ((reason: ResetReason) => unknown) | null = null;
  private quiesceCb: (() => unknown) | null = null;
  private resumeCb: (() => unknown) | null = null;
  private realized = false;
  /** Set by the config space when a write initiates an FLR (see region writes). @internal */
  flrRequested = false;

  /** A device with this identity; add regions, interrupts, DMA and migration, then serve it. */
  constructor(opts: DeviceOptions) {
    super();
    this.name = opts.name ?? 'vfio-user device';
    this.pci = new PciConfigSpace({
      vendorId: opts.pci.vendorId,
      deviceId: opts.pci.deviceId,
      subsystemVendorId: opts.pci.subsystemVendorId ?? 0,
      subsystemId: opts.pci.subsystemId ?? 0,
      classCode: opts.pci.classCode ?? 0,
      revision: opts.pci.revision ?? 0,
      express: opts.pci.express ?? false,
      interruptPin: 0,
    });
    this.pci.on('flr', () => {
      this.flrRequested = true;
    });
    this.dma = new DmaController({ ...defaultDmaLimits });
    this.dma.dirty = (iova, length) => this.logging.mark(iova, length);
    this.dma.log = (m) => this.log('warn', m);
    this.irqs.onEventfdAttached = (index, vector) => this.emit('irqAttached', index, vector);
  }

  private mutable(): void {
    if (this.realized) throw new VfuError(Errno.EBUSY, 'device already realized');
  }

  /**
   * Describes region `index`.  BARs (0-5) are also sized in config space;
   * the config region (7) is served by the config space model.
   */
  addRegion(index: number, spec: RegionSpec): Region {
    this.mutable();
    if (!Number.isInteger(index) || index < 0 || index > 255) throw new VfuError(Errno.EINVAL, `bad region index ${index}`);
    if (index === PciRegion.CONFIG) throw new VfuError(Errno.EINVAL, 'the config region is built from the PCI model');
    if (index === MIGR_REGION_V1_INDEX && this.migrationV1) throw new VfuError(Errno.EEXIST, 'region 9 is the v1 migration region');
    const r = new Region(index, spec);
    if (index <= PciRegion.BAR5) {
      this.pci.setBar(index, { size: r.size, kind: r.kind, is64: r.is64, prefetchable: r.prefetchable });
    } else if (index === PciRegion.ROM && r.size > 0) {
      this.pci.setRom(Math.max(2048, 2 ** Math.ceil(Math.log2(r.size))));
    }
    this.regionList[index] = r;
    return r;
  }

  /** Region `index`, if the device has it. */
  region(index: number): Region | undefined {
    return this.regionList[index];
  }

  /** Number of regions reported by DEVICE_GET_INFO. */
  get numRegions(): number {
    return Math.max(PCI_NUM_REGIONS, this.regionList.length);
  }

  /** Sets how many vectors an interrupt type has (INTx also sets the pin). */
  setIrqCount(index: number, count: number): void {
    this.mutable();
    this.irqs.setCount(index, count);
    if (index === IrqIndex.INTX) this.pci.setInterruptPin(count > 0 ? 1 : 0);
  }

  /** Called on MASK/UNMASK of a vector range. */
  onIrqState(index: number, cb: IrqStateCallback): void {
    this.irqs.onStateChange(index, cb);
  }

  /** Raises an interrupt (see IrqController.trigger). */
  trigger(index: number = IrqIndex.INTX, vector = 0): boolean {
    return this.irqs.trigger(index, vector);
  }

  /** Enables DMA: callbacks on map/unmap and limits (without it DMA_MAP is still accepted). */
  setupDma(opts: DmaOptions = {}): void {
    this.mutable();
    Object.assign(this.dma.limits, {
      ...(opts.maxMappings !== undefined ? { maxMappings: opts.maxMappings } : {}),
      ...(opts.maxTotalSize !== undefined ? { maxTotalSize: opts.maxTotalSize } : {}),
      ...(opts.maxMappingSize !== undefined ? { maxMappingSize: opts.maxMappingSize } : {}),
    });
    this.dma.onMap = opts.onMap ?? null;
    this.dma.onUnmap = opts.onUnmap ?? null;
    if (opts.unsealedFds !== undefined) this.dma.unsealed = opts.unsealedFds;
  }

  /** Makes the device migratable (v2, and v1 too with `v1`). */
  setupMigration(setup: MigrationSetup): MigrationController {
    this.mutable();
    warmNodeBuiltins(); // a migration's window would be their first calls
    const ctrl = new MigrationController(setup);
    ctrl.onChange = (from, to) => this.emit('migration', from, to);
    this.migration = ctrl;
    if (setup.v1) {
      const windowSize = typeof setup.v1 === 'object' ? setup.v1.windowSize : undefined;
      const v1 = new MigrationRegionV1(ctrl, windowSize);
      this.migrationV1 = v1;
      this.regionList[MIGR_REGION_V1_INDEX] = new Region(MIGR_REGION_V1_INDEX, {
        size: v1.size,
        type: { type: REGION_TYPE_MIGRATION, subtype: REGION_SUBTYPE_MIGRATION },
        access: { read: (o, out) => v1.read(o, out), write: (o, d) => v1.write(o, d) },
      });
    }
    return ctrl;
  }

  /**
   * The reset hook: DEVICE_RESET from the client (`'client'`), a PCIe FLR
   * (`'flr'`), or the client gone (`'lost-connection'`, which also runs
   * when a tool like `vfu lspci` disconnects: keep the device's registers
   * then, see {@link ResetReason}).  It may return a promise, which is
   * awaited (with device DMA quiesced); its value is ignored.
   */
  onReset(cb: (reason: ResetReason) => unknown): void {
    this.resetCb = cb;
  }

  /**
   * Quiesce hook: before DMA map/unmap, reset and migration transitions the
   * server awaits it; the device must stop DMA until `resume` is called.
   */
  onQuiesce(quiesce: () => unknown, resume?: () => unknown): void {
    this.quiesceCb = quiesce;
    this.resumeCb = resume ?? null;
  }

  /** Registers an ioeventfd the client may wire up (GET_REGION_IO_FDS). */
  addIoEventFd(spec: IoEventFdSpec): number {
    const r = this.regionList[spec.region];
    if (spec.region !== PciRegion.CONFIG && (r === undefined || spec.offset + spec.size > r.size)) {
      throw new VfuError(Errno.EINVAL, 'ioeventfd outside its region');
    }
    return this.ioeventfds.add(spec);
  }

  /** Freezes the description (done by the server before the first client). @internal */
  realize(): void {
    this.realized = true;
  }

  /**
   * Runs the quiesce hook and blocks device DMA (the server does); done
   * before returning unless the hook returned a promise. @internal
   */
  quiesce(): void | Promise<void> {
    const r = this.quiesceCb?.();
    if (r instanceof Promise) {
      return r.then(() => {
        this.dma.quiesced = true;
      });
    }
    this.dma.quiesced = true;
  }

  /** Unblocks device DMA and runs the resume hook (the server does). @internal */
  resume(): void {
    if (!this.dma.quiesced) return;
    this.dma.quiesced = false;
    this.resumeCb?.();
  }

  /** A reset for `reason` (migration state is left alone, see controller); the server calls it. @internal */
  async reset(reason: ResetReason): Promise<void> {
    if (reason === 'flr') this.pci.reset();
    this.migration?.onDeviceReset();
    this.emit('reset', reason);
    if (this.resetCb) await this.resetCb(reason);
  }

  /** Releases region memory and descriptors. */
  dispose(): void {
    this.dma.unmapAll();
    this.irqs.reset();
    this.ioeventfds.dispose();
    for (const r of this.regionList) r?.dispose();
    this.emit('close');
  }

  /** Emits a 'log' event (device code may log through it too). */
  log(level: LogLevel, message: string): void {
    this.emit('log', level, message);
  }
}
