// `nvme`: an NVMe PCIe controller with one namespace backed by a raw image
// file, built on the public device API.  See README.md ("NVMe controller")
// for what it offers and the identifiers it uses.
//
//   BAR0  controller registers, doorbells from 0x1000 (stride 4)
//   BAR4  MSI-X table (one vector per queue pair, admin included) at 0,
//         PBA at 0x1000
//   IRQs  MSI-X (queues + 1 vectors), MSI (1 vector), INTx
//
// Migration (v2, with pre-copy): the pre-copy data is a geometry header a
// destination checks at once (refusing a different image size, block
// size or queue count); the stop-copy data is the header and the
// controller's state.  The image file is shared storage: it is never
// copied, both sides open the same file.
import { createHash } from 'node:crypto';
import { realpathSync } from 'node:fs';
import { MsixTable } from '../../pci/msix.js';
import { Errno, IrqIndex, PciRegion } from '../../protocol/constants.js';
import { VfuError } from '../../protocol/errors.js';
import { VfioUserDevice } from '../../server/device.js';
import { NvmeReg } from './constants.js';
import { NvmeController, type NvmeStats } from './controller.js';
import { ImageFile } from './image.js';
import type { NvmeIdentity } from './pages.js';
import { NvmeMigration } from './migration.js';

/**
 * PCI vendor and device ID.  PCI-SIG has no range for experiments; 0xbeef
 * is not assigned to any vendor in the PCI ID repository (pci.ids) as of
 * this writing.  Linux's nvme driver binds by class code, not by ID.
 */
export const NVME_VENDOR_ID = 0xbeef;
/** The controller's PCI device id (see NVME_VENDOR_ID). */
export const NVME_DEVICE_ID = 0x4e56;
/** Mass storage / Non-Volatile memory controller / NVM Express. */
export const NVME_CLASS_CODE = 0x010802;

/** Options of {@link createNvme}. */
export interface NvmeOptions {
  /** The raw image file backing namespace 1. */
  image: string;
  /** Create the image at this size when absent; an existing image must have it. */
  size?: number;
  /** I/O queue pairs (default 4, at most 64). */
  queues?: number;
  /** Logical block size (default 512). */
  lbaSize?: 512 | 4096;
  /** Entries per queue at most (default 1024). */
  maxQueueEntries?: number;
  /**
   * Offer Doorbell Buffer Config (shadow doorbells) and an ioeventfd per
   * doorbell through GET_REGION_IO_FDS (default false).  An ioeventfd only
   * says that a doorbell was written, not the value, so it is usable only by
   * hosts that keep shadow doorbells in memory (such as our NvmeDriver).
   */
  shadowDoorbells?: boolean;
  /** Expose the legacy v1 migration region too. */
  v1?: boolean;
}

/** An NVMe controller ready to serve. */
export interface NvmeDevice {
  /** The device to serve. */
  device: VfioUserDevice;
  /** The controller model (registers, queues, commands). @internal */
  controller: NvmeController;
  /** The namespace's backing image. @internal */
  image: ImageFile;
  /** Command counters. @internal */
  readonly stats: NvmeStats;
  /** Closes the image (after the server is closed). */
  close(): void;
}

const MAX_QUEUES = 64;
function pow2AtLeast(n: number): number {
  return 2 ** Math.ceil(Math.log2(n));
}

/** Serial, namespace GUID and NQN derived from the image's real path (stable across restarts and migrations on one host). */
function identityFor(path: string, vendorId: number): NvmeIdentity {
  let real = path;
  try {
    real = realpathSync(path);
  } catch {
    /* keep the given path */
  }
  const h = createHash('sha256').update(`vfu-nvme:${real}`).digest();
  const serial = `VFU${h.subarray(0, 6).toString('hex').toUpperCase()}`;
  const guid = Buffer.from(h.subarray(8, 24));
  const hex = guid.toString('hex');
  const uuid = `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  return {
    vendorId,
    subsystemVendorId: vendorId,
    serial,
    model: 'vfio-user TypeScript NVMe',
    firmware: '0.1.0',
    nsGuid: guid,
    subnqn: `nqn.2014-08.org.nvmexpress:uuid:${uuid}`,
  };
}

interface Checked {
  queues: number;
  lbaSize: 512 | 4096;
  maxQueueEntries: number;
}

/** Validates the options (EINVAL naming the one that is wrong). */
function checkOptions(opts: NvmeOptions): Checked {
  const queues = opts.queues ?? 4;
  if (!Number.isInteger(queues) || queues < 1 || queues > MAX_QUEUES) throw new VfuError(Errno.EINVAL, `nvme: --queues must be 1..${MAX_QUEUES}, got ${queues}`);
  const lbaSize = opts.lbaSize ?? 512;
  if (lbaSize !== 512 && lbaSize !== 4096) throw new VfuError(Errno.EINVAL, `nvme: --lba must be 512 or 4096, got ${String(lbaSize)}`);
  const maxQueueEntries = opts.maxQueueEntries ?? 1024;
  if (!Number.isInteger(maxQueueEntries) || maxQueueEntries < 2 || maxQueueEntries > 65536) throw new VfuError(Errno.EINVAL, 'nvme: queue entries must be 2..65536');
  if (opts.size !== undefined && (opts.size < lbaSize || opts.size % lbaSize !== 0)) {
    throw new VfuError(Errno.EINVAL, `nvme: --size ${opts.size} is not a whole number of ${lbaSize}-byte blocks`);
  }
  return { queues, lbaSize, maxQueueEntries };
}

/** Opens (or creates) the image; it must hold at least one block. */
function openImage(opts: NvmeOptions, lbaSize: number): ImageFile {
  const image = ImageFile.open(opts.image, opts.size);
  if (image.size < lbaSize) {
    image.close();
    throw new VfuError(Errno.EINVAL, `nvme: image ${opts.image} is smaller than one block`);
  }
  return image;
}

/** BAR0: the controller's registers and doorbells. */
function addRegisterBar(device: VfioUserDevice, ctrl: NvmeController, vectors: number): void {
  device.addRegion(PciRegion.BAR0, {
    size: pow2AtLeast(NvmeReg.DOORBELLS + 8 * vectors),
    is64: true,
    access: {
      read: (offset, out) => ctrl.readBar0(offset, out),
      write: (offset, data) => ctrl.writeBar0(offset, data),
    },
  });
}

const PBA_AT = 0x1000;

/** BAR4: the MSI-X table at 0 and the PBA at PBA_AT. */
function addMsixBar(device: VfioUserDevice, msix: MsixTable, vectors: number): void {
  device.addRegion(PciRegion.BAR4, {
    size: 0x2000,
    is64: true,
    access: {
      read(offset, out) {
        if (offset < PBA_AT) {
          msix.readTable(offset, out.length).copy(out);
          return;
        }
        // Pending bits are the interrupt controller's (vectors masked with SET_IRQS).
        for (let v = 0; v < vectors; v++) {
          if (device.irqs.isPending(IrqIndex.MSIX, v)) msix.setPending(v);
          else msix.clearPending(v);
        }
        if (offset - PBA_AT + out.length > msix.pbaSize) out.fill(0);
        else msix.readPba(offset - PBA_AT, out.length).copy(out);
      },
      write(offset, data) {
        if (offset < PBA_AT) msix.writeTable(offset, data);
      },
    },
  });
}

/** PM, MSI, MSI-X and PCIe (with FLR) capabilities, and the interrupt counts behind them. */
function addInterrupts(device: VfioUserDevice, ctrl: NvmeController, vectors: number): void {
  device.pci.addPowerManagement();
  device.pci.addMsi({ vectors: 1, is64: true });
  device.pci.addMsix({ tableSize: vectors, tableBar: 4, tableOffset: 0, pbaBar: 4, pbaOffset: PBA_AT });
  device.pci.addExpress({ flrCapable: true });
  device.setIrqCount(IrqIndex.INTX, 1);
  device.setIrqCount(IrqIndex.MSI, 1);
  device.setIrqCount(IrqIndex.MSIX, vectors);
  device.onIrqState(IrqIndex.INTX, (_i, _s, _c, masked) => {
    if (!masked) ctrl.intxUnmasked();
  });
}

/**
 * Quiesce and reset.  A stopped device (migration) has its commands
 * resumed, and unconsumed completions signalled again, once it runs: on
 * the destination the interrupts the source raised went to the source's
 * eventfds.
 */
function addLifecycle(device: VfioUserDevice, ctrl: NvmeController, msix: MsixTable, migration: NvmeMigration): void {
  device.onQuiesce(
    () => ctrl.drain(),
    () => {
      ctrl.undrain();
      if (migration.resignal && ctrl.running) {
        migration.resignal = false;
        ctrl.resignalAll();
      }
    },
  );
  device.onReset(async (reason) => {
    await ctrl.controllerReset(`device reset: ${reason}`);
    ctrl.cc = 0;
    ctrl.aqa = 0;
    ctrl.asq = 0;
    ctrl.acq = 0;
    msix.reset();
  });
}

/** An NVMe 1.4 controller with one namespace backed by a raw image file (not yet served). */
export function createNvme(opts: NvmeOptions): NvmeDevice {
  const { queues, lbaSize, maxQueueEntries } = checkOptions(opts);
  const image = openImage(opts, lbaSize);
  const vectors = queues + 1;
  const device = new VfioUserDevice({
    name: 'nvme',
    pci: { vendorId: NVME_VENDOR_ID, deviceId: NVME_DEVICE_ID, subsystemVendorId: NVME_VENDOR_ID, subsystemId: NVME_DEVICE_ID, classCode: NVME_CLASS_CODE, express: true },
  });
  const ctrl = new NvmeController(device, image, {
    queues,
    maxQueueEntries,
    lbaShift: lbaSize === 512 ? 9 : 12,
    mdts: 6,
    identity: identityFor(opts.image, NVME_VENDOR_ID),
    shadowDoorbells: opts.shadowDoorbells === true,
  });
  const msix = new MsixTable(vectors);
  addRegisterBar(device, ctrl, vectors);
  addMsixBar(device, msix, vectors);
  addInterrupts(device, ctrl, vectors);
  device.setupDma();
  if (opts.shadowDoorbells) {
    for (let i = 0; i < 2 * vectors; i++) {
      device.addIoEventFd({ region: PciRegion.BAR0, offset: NvmeReg.DOORBELLS + 4 * i, size: 4, onSignal: () => ctrl.shadowNotify(i) });
    }
  }
  const migration = new NvmeMigration(ctrl, msix);
  addLifecycle(device, ctrl, msix, migration);
  migration.setup(device, opts.v1 === true);

  let closed = false;
  return {
    device,
    controller: ctrl,
    image,
    get stats() {
      return ctrl.stats;
    },
    close() {
      if (closed) return;
      closed = true;
      image.close();
    },
  };
}
