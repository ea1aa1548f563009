// Numbers of the vfio-user protocol (QEMU docs/interop/vfio-user.rst) and of
// the Linux VFIO uAPI it borrows from (include/uapi/linux/vfio.h).

/** Protocol version we speak (libvfio-user's LIB_VFIO_USER_MAJOR/MINOR). */
export const VERSION_MAJOR = 0;
/** Minor protocol version we speak. */
export const VERSION_MINOR = 2;

/** vfio-user command numbers (the header's `command` field). @enum */
export const Command = {
  VERSION: 1,
  DMA_MAP: 2,
  DMA_UNMAP: 3,
  DEVICE_GET_INFO: 4,
  DEVICE_GET_REGION_INFO: 5,
  DEVICE_GET_REGION_IO_FDS: 6,
  DEVICE_GET_IRQ_INFO: 7,
  DEVICE_SET_IRQS: 8,
  REGION_READ: 9,
  REGION_WRITE: 10,
  DMA_READ: 11,
  DMA_WRITE: 12,
  DEVICE_RESET: 13,
  /** Legacy (migration v1): removed from the current spec, kept for v1 mode. */
  DIRTY_PAGES: 14,
  REGION_WRITE_MULTI: 15,
  DEVICE_FEATURE: 16,
  MIG_DATA_READ: 17,
  MIG_DATA_WRITE: 18,
} as const;
/** A command's name ("DMA_MAP", ...). */
export type CommandName = keyof typeof Command;
/** A command's number. */
export type CommandId = (typeof Command)[CommandName];

const commandNames = new Map<number, CommandName>(
  (Object.keys(Command) as CommandName[]).map((k) => [Command[k], k]),
);
/** A command's name, or `CMD_N` for an unknown one. */
export function commandName(cmd: number): string {
  return commandNames.get(cmd) ?? `CMD_${cmd}`;
}

/** Header flags. @enum */
export const HeaderFlag = {
  TYPE_MASK: 0xf,
  TYPE_COMMAND: 0x0,
  TYPE_REPLY: 0x1,
  NO_REPLY: 0x10,
  ERROR: 0x20,
} as const;

/** Bytes of the message header. */
export const HEADER_SIZE = 16;

/** Capability defaults from the spec. */
export const DEFAULT_MAX_DATA_XFER_SIZE = 1024 * 1024;
/** `max_msg_fds` when the peer does not say (the spec's default). */
export const DEFAULT_MAX_MSG_FDS = 1;
/** `max_dma_maps` when the peer does not say. */
export const DEFAULT_MAX_DMA_MAPS = 65535;
/** `pgsizes` when the peer does not say. */
export const DEFAULT_PGSIZES = 4096;
/** Linux caps descriptors per message at SCM_MAX_FD. */
export const LINUX_MAX_FDS = 253;

/** VFIO_DEVICE_FLAGS_* @enum */
export const DeviceFlag = { RESET: 1 << 0, PCI: 1 << 1 } as const;

/** PCI region indexes (VFIO_PCI_*_REGION_INDEX). @enum */
export const PciRegion = {
  BAR0: 0,
  BAR1: 1,
  BAR2: 2,
  BAR3: 3,
  BAR4: 4,
  BAR5: 5,
  ROM: 6,
  CONFIG: 7,
  VGA: 8,
} as const;
/** The standard PCI regions (BAR0-5, ROM, config, VGA). */
export const PCI_NUM_REGIONS = 9;
/** libvfio-user's index for the v1 migration region. */
export const MIGR_REGION_V1_INDEX = 9;

/** VFIO_REGION_INFO_FLAG_* @enum */
export const RegionFlag = { READ: 1 << 0, WRITE: 1 << 1, MMAP: 1 << 2, CAPS: 1 << 3 } as const;

/** VFIO_REGION_INFO_CAP_* ids @enum */
export const RegionCapId = { SPARSE_MMAP: 1, TYPE: 2 } as const;
/** VFIO_REGION_TYPE_MIGRATION / SUBTYPE (v1, now "deprecated" in Linux). */
export const REGION_TYPE_MIGRATION = 3;
/** See REGION_TYPE_MIGRATION. */
export const REGION_SUBTYPE_MIGRATION = 1;

/** IRQ indexes (VFIO_PCI_*_IRQ_INDEX). @enum */
export const IrqIndex = { INTX: 0, MSI: 1, MSIX: 2, ERR: 3, REQ: 4 } as const;
/** The interrupt indexes (INTx, MSI, MSI-X, ERR, REQ). */
export const PCI_NUM_IRQS = 5;
/** Names of the interrupt indexes, by IrqIndex. */
export const irqIndexNames = ['INTx', 'MSI', 'MSI-X', 'ERR', 'REQ'] as const;

/** VFIO_IRQ_INFO_* @enum */
export const IrqInfoFlag = { EVENTFD: 1 << 0, MASKABLE: 1 << 1, AUTOMASKED: 1 << 2, NORESIZE: 1 << 3 } as const;

/** VFIO_IRQ_SET_* @enum */
export const IrqSetFlag = {
  DATA_NONE: 1 << 0,
  DATA_BOOL: 1 << 1,
  DATA_EVENTFD: 1 << 2,
  ACTION_MASK: 1 << 3,
  ACTION_UNMASK: 1 << 4,
  ACTION_TRIGGER: 1 << 5,
  DATA_TYPE_MASK: 0x7,
  ACTION_TYPE_MASK: 0x38,
} as const;

/**
 * DMA_MAP flags.  The spec defines READ and WRITE only; libvfio-user also
 * accepts MMAP (bit 2) and FILE_IO (bit 3) to choose how an fd-backed region
 * is reached.  We accept all four (what real peers send) and default to mmap
 * when an fd comes with the message.
 * @enum
 */
export const DmaMapFlag = { READ: 1 << 0, WRITE: 1 << 1, MMAP: 1 << 2, FILE_IO: 1 << 3 } as const;

/**
 * DMA_UNMAP flags.  Bit 0 (GET_DIRTY_BITMAP) belongs to the legacy v1
 * dirty-page interface, bit 1 (ALL) to the current spec; libvfio-user uses
 * the same two bits, so both peers agree on the wire.
 * @enum
 */
export const DmaUnmapFlag = { GET_DIRTY_BITMAP: 1 << 0, ALL: 1 << 1 } as const;

/** DEVICE_FEATURE flags and indexes. @enum */
export const FeatureFlag = { MASK: 0xffff, GET: 1 << 16, SET: 1 << 17, PROBE: 1 << 18 } as const;
/** DEVICE_FEATURE indexes (VFIO_DEVICE_FEATURE_*). @enum */
export const Feature = {
  MIGRATION: 1,
  MIG_DEVICE_STATE: 2,
  DMA_LOGGING_START: 6,
  DMA_LOGGING_STOP: 7,
  DMA_LOGGING_REPORT: 8,
  /** Linux's VFIO_DEVICE_FEATURE_MIG_DATA_SIZE; vfio-user extension, see README. */
  MIG_DATA_SIZE: 9,
  /** Our vfio-user extension mirroring VFIO_MIG_GET_PRECOPY_INFO; see README. */
  MIG_PRECOPY_INFO: 0x8001,
} as const;
/** A DEVICE_FEATURE index's name, or `FEATURE_N`. */
export function featureName(index: number): string {
  for (const [k, v] of Object.entries(Feature)) if (v === index) return k;
  return `FEATURE_${index}`;
}

/** VFIO_MIGRATION_* feature bits. @enum */
export const MigrationFlag = { STOP_COPY: 1 << 0, P2P: 1 << 1, PRE_COPY: 1 << 2 } as const;

/** enum vfio_device_mig_state @enum */
export const MigState = {
  ERROR: 0,
  STOP: 1,
  RUNNING: 2,
  STOP_COPY: 3,
  RESUMING: 4,
  RUNNING_P2P: 5,
  PRE_COPY: 6,
  PRE_COPY_P2P: 7,
} as const;
/** A migration state's name ("RUNNING", ...). */
export type MigStateName = keyof typeof MigState;
/** A migration state's number. */
export type MigStateId = (typeof MigState)[MigStateName];
/** The migration states (0-7). */
export const NUM_MIG_STATES = 8;
/** Names of the migration states, by MigState. */
export const migStateNames: readonly MigStateName[] = [
  'ERROR',
  'STOP',
  'RUNNING',
  'STOP_COPY',
  'RESUMING',
  'RUNNING_P2P',
  'PRE_COPY',
  'PRE_COPY_P2P',
];

/** Migration v1 device_state bits (VFIO_DEVICE_STATE_V1_*). @enum */
export const MigV1State = { STOP: 0, RUNNING: 1 << 0, SAVING: 1 << 1, RESUMING: 1 << 2 } as const;

/** Legacy DIRTY_PAGES flags (VFIO_IOMMU_DIRTY_PAGES_FLAG_*). @enum */
export const DirtyPagesFlag = { START: 1 << 0, STOP: 1 << 1, GET_BITMAP: 1 << 2 } as const;

/** GET_REGION_IO_FDS sub-region types. @enum */
export const IoFdType = { IOEVENTFD: 0, IOREGIONFD: 1, IOEVENTFD_SHADOW: 2 } as const;
/** KVM_IOEVENTFD_FLAG_* used in sub-region flags. @enum */
export const IoEventFdFlag = { DATAMATCH: 1 << 0, PIO: 1 << 1, DEASSIGN: 1 << 2 } as const;

/** The errno values this protocol uses (Linux numbering). @enum */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EIO: 5,
  E2BIG: 7,
  EBADF: 9,
  EACCES: 13,
  EAGAIN: 11,
  ENOMEM: 12,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  ENOSPC: 28,
  ERANGE: 34,
  ENOSYS: 38,
  ENOMSG: 42,
  EPROTO: 71,
  EOVERFLOW: 75,
  EBADMSG: 74,
  EMSGSIZE: 90,
  ENOTSUP: 95,
  EADDRINUSE: 98,
  ECONNABORTED: 103,
  ECONNRESET: 104,
  ENOTCONN: 107,
  ESHUTDOWN: 108,
  ETIMEDOUT: 110,
  ECONNREFUSED: 111,
} as const;
const errnoNames = new Map<number, string>(Object.entries(Errno).map(([k, v]) => [v, k]));
/** An errno's name ("EINVAL"), or `errno N`. */
export function errnoName(e: number): string {
  return errnoNames.get(e) ?? `errno ${e}`;
}
