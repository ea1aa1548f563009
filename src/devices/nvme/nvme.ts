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
import { Errno, IrqIndex, MigState, type MigStateId, PciRegion } from '../../protocol/constants.js';
import { VfuError } from '../../protocol/errors.js';
import { VfioUserDevice } from '../../server/device.js';
import { NvmeReg } from './constants.js';
import { NvmeController, type NvmeStats } from './controller.js';
import { ImageFile } from './image.js';
import type { NvmeIdentity } from './pages.js';
import { type NvmeGeometry, checkGeometry, geometryOf, loadState, saveState } from './state.js';

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

/** An NVMe 1.4 controller with one namespace backed by a raw image file. */
export function createNvme(opts: NvmeOptions): NvmeDevice {
  const queues = opts.queues ?? 4;
  if (!Number.isInteger(queues) || queues < 1 || queues > MAX_QUEUES) throw new VfuError(Errno.EINVAL, `nvme: --queues must be 1..${MAX_QUEUES}, got ${queues}`);
  const lbaSize = opts.lbaSize ?? 512;
  if (lbaSize !== 512 && lbaSize !== 4096) throw new VfuError(Errno.EINVAL, `nvme: --lba must be 512 or 4096, got ${String(lbaSize)}`);
  const mqe = opts.maxQueueEntries ?? 1024;
  if (!Number.isInteger(mqe) || mqe < 2 || mqe > 65536) throw new VfuError(Errno.EINVAL, 'nvme: queue entries must be 2..65536');
  if (opts.size !== undefined && (opts.size < lbaSize || opts.size % lbaSize !== 0)) {
    throw new VfuError(Errno.EINVAL, `nvme: --size ${opts.size} is not a whole number of ${lbaSize}-byte blocks`);
  }
  const image = ImageFile.open(opts.image, opts.size);
  if (image.size < lbaSize) {
    image.close();
    throw new VfuError(Errno.EINVAL, `nvme: image ${opts.image} is smaller than one block`);
  }
  const vectors = queues + 1;
  const device = new VfioUserDevice({
    name: 'nvme',
    pci: { vendorId: NVME_VENDOR_ID, deviceId: NVME_DEVICE_ID, subsystemVendorId: NVME_VENDOR_ID, subsystemId: NVME_DEVICE_ID, classCode: NVME_CLASS_CODE, express: true },
  });
  const ctrl = new NvmeController(device, image, {
    queues,
    maxQueueEntries: mqe,
    lbaShift: lbaSize === 512 ? 9 : 12,
    mdts: 6,
    identity: identityFor(opts.image, NVME_VENDOR_ID),
    shadowDoorbells: opts.shadowDoorbells === true,
  });

  device.addRegion(PciRegion.BAR0, {
    size: pow2AtLeast(NvmeReg.DOORBELLS + 8 * vectors),
    is64: true,
    access: {
      read: (offset, out) => ctrl.readBar0(offset, out),
      write: (offset, data) => ctrl.writeBar0(offset, data),
    },
  });
  const msix = new MsixTable(vectors);
  const PBA_AT = 0x1000;
  device.addRegion(PciRegion.BAR4, {
    size: 0x2000,
    is64: true,
    access: {
      read(offset, out) {
        if (offset < PBA_AT) msix.readTable(offset, out.length).copy(out);
        else {
          // Pending bits are the interrupt controller's (vectors masked with SET_IRQS).
          for (let v = 0; v < vectors; v++) {
            if (device.irqs.isPending(IrqIndex.MSIX, v)) msix.setPending(v);
            else msix.clearPending(v);
          }
          if (offset - PBA_AT + out.length > msix.pbaSize) out.fill(0);
          else msix.readPba(offset - PBA_AT, out.length).copy(out);
        }
      },
      write(offset, data) {
        if (offset < PBA_AT) msix.writeTable(offset, data);
      },
    },
  });
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
  device.setupDma();
  if (opts.shadowDoorbells) {
    for (let i = 0; i < 2 * vectors; i++) {
      device.addIoEventFd({ region: PciRegion.BAR0, offset: NvmeReg.DOORBELLS + 4 * i, size: 4, onSignal: () => ctrl.shadowNotify(i) });
    }
  }

  // A stopped device (migration) has its commands resumed, and unconsumed
  // completions signalled again, once it runs: on the destination the
  // interrupts the source raised went to the source's eventfds.
  let resignal = false;
  device.onQuiesce(
    () => ctrl.drain(),
    () => {
      ctrl.undrain();
      if (resignal && ctrl.running) {
        resignal = false;
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

  // ------------------------------------------------------------ migration
  const geometry: NvmeGeometry = geometryOf(ctrl);
  let out: Buffer = Buffer.alloc(0);
  let outPos = 0;
  let inbox: Buffer[] = [];
  let inboxBytes = 0;
  let received = 0;
  let state: unknown = null;
  let headerOk = false;

  const parseInbox = (): void => {
    for (;;) {
      if (inboxBytes < 8) return;
      const all = inbox.length === 1 ? inbox[0]! : Buffer.concat(inbox);
      inbox = [all];
      const tag = all.readUInt32LE(0);
      const len = all.readUInt32LE(4);
      if ((tag !== REC_GEOMETRY && tag !== REC_STATE) || len > MAX_RECORD) {
        throw new VfuError(Errno.EINVAL, `nvme: migration stream: bad record (tag ${tag}, ${len} bytes)`);
      }
      if (all.length < 8 + len) return;
      let value: unknown;
      try {
        value = JSON.parse(all.subarray(8, 8 + len).toString());
      } catch {
        throw new VfuError(Errno.EINVAL, 'nvme: migration stream: record is not JSON');
      }
      if (tag === REC_GEOMETRY) {
        checkGeometry(geometry, value);
        headerOk = true;
      } else {
        if (!headerOk) throw new VfuError(Errno.EINVAL, 'nvme: migration stream: state before geometry');
        state = value;
      }
      inbox = [all.subarray(8 + len)];
      inboxBytes = all.length - 8 - len;
    }
  };

  let mig: MigStateId = MigState.RUNNING;
  device.setupMigration({
    features: { preCopy: true, p2p: true },
    ...(opts.v1 ? { v1: true } : {}),
    transition(from, to) {
      if (from === MigState.RESUMING) {
        if (received > 0) {
          if (state === null || inboxBytes !== 0) {
            received = 0;
            throw new VfuError(Errno.EINVAL, 'nvme: incomplete migration state');
          }
          const snap = loadState(ctrl, state);
          if (snap) msix.restore(snap);
          state = null;
          received = 0;
        }
      }
      if (to === MigState.PRE_COPY) {
        out = record(REC_GEOMETRY, geometry);
        outPos = 0;
      } else if (to === MigState.STOP_COPY) {
        out = Buffer.concat([record(REC_GEOMETRY, geometry), record(REC_STATE, saveState(ctrl, msix.snapshot()))]);
        outPos = 0;
      } else if (to === MigState.RESUMING) {
        inbox = [];
        inboxBytes = 0;
        received = 0;
        state = null;
        headerOk = false;
      }
      const runs = to === MigState.RUNNING || to === MigState.PRE_COPY;
      if (runs && !ctrl.running) resignal = true;
      ctrl.running = runs;
      mig = to;
    },
    readData(max) {
      const n = Math.min(max, out.length - outPos);
      const chunk = out.subarray(outPos, outPos + n);
      outPos += n;
      return chunk;
    },
    writeData(data) {
      received += data.length;
      inbox.push(Buffer.from(data));
      inboxBytes += data.length;
      parseInbox();
    },
    precopyInfo: () => ({ initialBytes: mig === MigState.PRE_COPY ? out.length - outPos : 0, dirtyBytes: 0 }),
    stopCopySize: () => (mig === MigState.STOP_COPY ? out.length - outPos : JSON.stringify(saveState(ctrl, msix.snapshot())).length + 256),
  });

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
