// The device author's API: describe a PCI device (config space, regions,
// interrupts, DMA, migration, reset/quiesce callbacks), then serve it on a
// socket.  Shaped after libvfio-user's vfu_* calls, in idiomatic TypeScript.
import { EventEmitter } from 'node:events';
import { MigrationController, type MigrationCallbacks } from '../migration/controller.js';
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
} from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';
import { DmaController, type DmaLimits, type DmaMappingInfo, type UnsealedPolicy, defaultDmaLimits } from './dma.js';
import { IrqController, type IrqStateCallback } from './irqs.js';
import { DirtyLogging } from './dirty-logging.js';
import { IoEventFds, type IoEventFdSpec } from './ioeventfds.js';
import { Region, type RegionSpec } from './regions.js';

export type ResetReason = 'client' | 'lost-connection' | 'flr';

/** The device's identity in config space (the PCI model's options, minus the pin). */
export type PciIdentity = Omit<PciConfigOptions, 'interruptPin'>;

export interface DeviceOptions {
  pci: PciIdentity;
  /** Name used in logs. */
  name?: string;
}

export interface DmaOptions extends Partial<DmaLimits> {
  /** Throw to refuse a mapping (DMA_MAP fails with the error's errno). */
  onMap?: (m: DmaMappingInfo) => void;
  /** Informational: the mapping goes whatever this does (errors are logged). */
  onUnmap?: (m: DmaMappingInfo) => void;
  /** Descriptors not sealed against shrinking (default 'file': pread/pwrite, see UnsealedPolicy). */
  unsealedFds?: UnsealedPolicy;
}

export interface MigrationSetup extends MigrationCallbacks {
  /** Also expose the legacy v1 migration region (index 9). */
  v1?: boolean | { windowSize?: number };
}

/**
 * Events: 'connected', 'disconnected', 'reset' (reason), 'migration'
 * (from, to), 'log' (level, message).
 */
export class VfioUserDevice extends EventEmitter {
  readonly name: string;
  readonly pci: PciConfigSpace;
  readonly dma: DmaController;
  readonly irqs = new IrqController();
  readonly ioeventfds = new IoEventFds();
  readonly logging = new DirtyLogging();
  migration: MigrationController | null = null;
  migrationV1: MigrationRegionV1 | null = null;
  private readonly regionList: (Region | undefined)[] = [];
  private resetCb: ((reason: ResetReason) => void | Promise<void>) | null = null;
  private quiesceCb: (() => void | Promise<void>) | null = null;
  private resumeCb: (() => void) | null = null;
  private realized = false;
  /** Set by the config space when a write initiates an FLR (see region writes). */
  flrRequested = false;

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

  /** Reset callback: DEVICE_RESET ('client'), client gone, or PCIe FLR. */
  onReset(cb: (reason: ResetReason) => void | Promise<void>): void {
    this.resetCb = cb;
  }

  /**
   * Quiesce hook: before DMA map/unmap, reset and migration transitions the
   * server awaits it; the device must stop DMA until `resume` is called.
   */
  onQuiesce(quiesce: () => void | Promise<void>, resume?: () => void): void {
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

  /** Freezes the description (done by the server before the first client). */
  realize(): void {
    this.realized = true;
  }

  /** @internal: runs the quiesce hook and blocks device DMA. */
  async quiesce(): Promise<void> {
    if (this.quiesceCb) await this.quiesceCb();
    this.dma.quiesced = true;
  }

  /** @internal */
  resume(): void {
    if (!this.dma.quiesced) return;
    this.dma.quiesced = false;
    this.resumeCb?.();
  }

  /** @internal: a reset for `reason` (migration state is left alone, see controller). */
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

  log(level: 'debug' | 'info' | 'warn' | 'error', message: string): void {
    this.emit('log', level, message);
  }
}
