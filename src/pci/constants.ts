// Numbers of PCI configuration space (PCI Local Bus 3.0, PCI Express Base
// spec, PCI Code and ID Assignment spec): register offsets, bit fields and
// capability ids, named once for the emulation and the decoder.

/** Conventional config space size; PCI Express devices have 4 KiB. */
export const PCI_CFG_SIZE = 256;
export const PCIE_CFG_SIZE = 4096;
/** Capabilities live after the 64-byte type 0 header. */
export const PCI_STD_HEADER_SIZE = 0x40;
/** Extended capabilities start here (PCI Express only). */
export const PCIE_EXT_CAP_START = 0x100;

/** Type 0 header register offsets. */
export const Cfg = {
  VENDOR_ID: 0x00,
  DEVICE_ID: 0x02,
  COMMAND: 0x04,
  STATUS: 0x06,
  REVISION: 0x08,
  /** Class code: prog-if at 0x09, subclass at 0x0a, base class at 0x0b. */
  CLASS_PROG: 0x09,
  CLASS_SUB: 0x0a,
  CLASS_BASE: 0x0b,
  CACHE_LINE: 0x0c,
  LATENCY: 0x0d,
  HEADER_TYPE: 0x0e,
  BIST: 0x0f,
  BAR0: 0x10,
  BAR1: 0x14,
  BAR2: 0x18,
  BAR3: 0x1c,
  BAR4: 0x20,
  BAR5: 0x24,
  CARDBUS_CIS: 0x28,
  SUBSYS_VENDOR: 0x2c,
  SUBSYS_ID: 0x2e,
  ROM: 0x30,
  CAP_PTR: 0x34,
  INT_LINE: 0x3c,
  INT_PIN: 0x3d,
  MIN_GNT: 0x3e,
  MAX_LAT: 0x3f,
} as const;

export const PCI_NUM_BARS = 6;
export function barOffset(index: number): number {
  return Cfg.BAR0 + 4 * index;
}

export const HeaderType = { NORMAL: 0, BRIDGE: 1, CARDBUS: 2, MULTI_FUNCTION: 0x80 } as const;

/** COMMAND register bits. */
export const PciCommand = {
  IO: 1 << 0,
  MEMORY: 1 << 1,
  MASTER: 1 << 2,
  SPECIAL: 1 << 3,
  INVALIDATE: 1 << 4,
  VGA_PALETTE: 1 << 5,
  PARITY: 1 << 6,
  WAIT: 1 << 7,
  SERR: 1 << 8,
  FAST_BACK: 1 << 9,
  INTX_DISABLE: 1 << 10,
} as const;

/** STATUS register bits. */
export const PciStatus = {
  IMM_READY: 1 << 0,
  INTERRUPT: 1 << 3,
  CAP_LIST: 1 << 4,
  MHZ66: 1 << 5,
  UDF: 1 << 6,
  FAST_BACK: 1 << 7,
  PARITY: 1 << 8,
  DEVSEL_MASK: 3 << 9,
  SIG_TARGET_ABORT: 1 << 11,
  REC_TARGET_ABORT: 1 << 12,
  REC_MASTER_ABORT: 1 << 13,
  SIG_SYSTEM_ERROR: 1 << 14,
  DETECTED_PARITY: 1 << 15,
} as const;
/** The error bits software clears by writing 1. */
export const STATUS_RW1C = 0xf900;

/** BAR low flag bits. */
export const BarFlag = {
  IO: 0x1,
  MEM_TYPE_MASK: 0x6,
  MEM_TYPE_32: 0x0,
  MEM_TYPE_1M: 0x2,
  MEM_TYPE_64: 0x4,
  PREFETCH: 0x8,
  MEM_FLAGS_MASK: 0xf,
  IO_FLAGS_MASK: 0x3,
} as const;
export const ROM_ENABLE = 0x1;
/** ROM address bits are 31:11. */
export const ROM_ADDRESS_MASK = 0xfffff800;
export const ROM_MIN_SIZE = 2048;

/** Standard capability ids. */
export const CapId = {
  PM: 0x01,
  AGP: 0x02,
  VPD: 0x03,
  SLOTID: 0x04,
  MSI: 0x05,
  CHSWP: 0x06,
  PCIX: 0x07,
  HT: 0x08,
  VNDR: 0x09,
  DBG: 0x0a,
  CCRC: 0x0b,
  SHPC: 0x0c,
  SSVID: 0x0d,
  AGP3: 0x0e,
  SECDEV: 0x0f,
  EXP: 0x10,
  MSIX: 0x11,
  SATA: 0x12,
  AF: 0x13,
  EA: 0x14,
} as const;

/** Extended capability ids. */
export const ExtCapId = {
  ERR: 0x0001,
  VC: 0x0002,
  DSN: 0x0003,
  PWR: 0x0004,
  RCLD: 0x0005,
  RCILC: 0x0006,
  RCEC: 0x0007,
  MFVC: 0x0008,
  VC9: 0x0009,
  RCRB: 0x000a,
  VNDR: 0x000b,
  CAC: 0x000c,
  ACS: 0x000d,
  ARI: 0x000e,
  ATS: 0x000f,
  SRIOV: 0x0010,
  MRIOV: 0x0011,
  MCAST: 0x0012,
  PRI: 0x0013,
  REBAR: 0x0015,
  DPA: 0x0016,
  TPH: 0x0017,
  LTR: 0x0018,
  SECPCI: 0x0019,
  PMUX: 0x001a,
  PASID: 0x001b,
  DPC: 0x001d,
  L1SS: 0x001e,
  PTM: 0x001f,
  DVSEC: 0x0023,
  DLF: 0x0025,
  PL_16GT: 0x0026,
} as const;

const capNames: Record<number, string> = {
  [CapId.PM]: 'Power Management',
  [CapId.AGP]: 'AGP',
  [CapId.VPD]: 'Vital Product Data',
  [CapId.SLOTID]: 'Slot Identification',
  [CapId.MSI]: 'MSI',
  [CapId.CHSWP]: 'CompactPCI Hot Swap',
  [CapId.PCIX]: 'PCI-X',
  [CapId.HT]: 'HyperTransport',
  [CapId.VNDR]: 'Vendor Specific',
  [CapId.DBG]: 'Debug port',
  [CapId.CCRC]: 'CompactPCI Central Resource Control',
  [CapId.SHPC]: 'PCI Standard Hot-Plug Controller',
  [CapId.SSVID]: 'Bridge Subsystem Vendor ID',
  [CapId.AGP3]: 'AGP 8x',
  [CapId.SECDEV]: 'Secure Device',
  [CapId.EXP]: 'PCI Express',
  [CapId.MSIX]: 'MSI-X',
  [CapId.SATA]: 'SATA HBA',
  [CapId.AF]: 'PCI Advanced Features',
  [CapId.EA]: 'Enhanced Allocation',
};
const extCapNames: Record<number, string> = {
  [ExtCapId.ERR]: 'Advanced Error Reporting',
  [ExtCapId.VC]: 'Virtual Channel',
  [ExtCapId.DSN]: 'Device Serial Number',
  [ExtCapId.PWR]: 'Power Budgeting',
  [ExtCapId.RCLD]: 'Root Complex Link Declaration',
  [ExtCapId.RCILC]: 'Root Complex Internal Link Control',
  [ExtCapId.RCEC]: 'Root Complex Event Collector',
  [ExtCapId.MFVC]: 'Multi-Function Virtual Channel',
  [ExtCapId.VC9]: 'Virtual Channel (MFVC present)',
  [ExtCapId.RCRB]: 'Root Complex Register Block',
  [ExtCapId.VNDR]: 'Vendor Specific Extended',
  [ExtCapId.CAC]: 'Configuration Access Correlation',
  [ExtCapId.ACS]: 'Access Control Services',
  [ExtCapId.ARI]: 'Alternative Routing-ID Interpretation',
  [ExtCapId.ATS]: 'Address Translation Services',
  [ExtCapId.SRIOV]: 'Single Root I/O Virtualization',
  [ExtCapId.MRIOV]: 'Multi-Root I/O Virtualization',
  [ExtCapId.MCAST]: 'Multicast',
  [ExtCapId.PRI]: 'Page Request Interface',
  [ExtCapId.REBAR]: 'Resizable BAR',
  [ExtCapId.DPA]: 'Dynamic Power Allocation',
  [ExtCapId.TPH]: 'TPH Requester',
  [ExtCapId.LTR]: 'Latency Tolerance Reporting',
  [ExtCapId.SECPCI]: 'Secondary PCI Express',
  [ExtCapId.PMUX]: 'Protocol Multiplexing',
  [ExtCapId.PASID]: 'Process Address Space ID',
  [ExtCapId.DPC]: 'Downstream Port Containment',
  [ExtCapId.L1SS]: 'L1 PM Substates',
  [ExtCapId.PTM]: 'Precision Time Measurement',
  [ExtCapId.DVSEC]: 'Designated Vendor-Specific',
  [ExtCapId.DLF]: 'Data Link Feature',
  [ExtCapId.PL_16GT]: 'Physical Layer 16.0 GT/s',
};
export function capName(id: number): string {
  return capNames[id] ?? `Unknown capability 0x${id.toString(16).padStart(2, '0')}`;
}
export function extCapName(id: number): string {
  return extCapNames[id] ?? `Unknown extended capability 0x${id.toString(16).padStart(4, '0')}`;
}

/** Power Management capability (offsets from the capability start). */
export const Pm = {
  PMC: 2,
  PMCSR: 4,
  BSE: 6,
  DATA: 7,
  SIZE: 8,
  /** PMC fields. */
  PMC_VERSION_MASK: 0x7,
  PMC_PME_CLOCK: 1 << 3,
  PMC_DSI: 1 << 5,
  PMC_AUX_SHIFT: 6,
  PMC_AUX_MASK: 0x7 << 6,
  PMC_D1: 1 << 9,
  PMC_D2: 1 << 10,
  PMC_PME_SHIFT: 11,
  PMC_PME_MASK: 0x1f << 11,
  /** PMCSR fields. */
  CSR_STATE_MASK: 0x3,
  CSR_NO_SOFT_RESET: 1 << 3,
  CSR_PME_ENABLE: 1 << 8,
  CSR_DATA_SEL_MASK: 0xf << 9,
  CSR_DATA_SCALE_MASK: 0x3 << 13,
  CSR_PME_STATUS: 1 << 15,
} as const;
/** A power state: 0 D0 ... 3 D3hot. */
export type PowerState = 0 | 1 | 2 | 3;
export const powerStateNames = ['D0', 'D1', 'D2', 'D3hot'] as const;

/** MSI capability. */
export const Msi = {
  CONTROL: 2,
  ADDRESS_LO: 4,
  /** 64-bit layout. */
  ADDRESS_HI: 8,
  DATA_32: 8,
  DATA_64: 12,
  MASK_32: 12,
  MASK_64: 16,
  PENDING_32: 16,
  PENDING_64: 20,
  CTRL_ENABLE: 1 << 0,
  CTRL_MMC_SHIFT: 1,
  CTRL_MMC_MASK: 0x7 << 1,
  CTRL_MME_SHIFT: 4,
  CTRL_MME_MASK: 0x7 << 4,
  CTRL_64BIT: 1 << 7,
  CTRL_PVM: 1 << 8,
} as const;
/** Bytes an MSI capability occupies for its options (PCI spec 6.8.1). */
export function msiCapSize(is64: boolean, perVectorMask: boolean): number {
  if (perVectorMask) return is64 ? 24 : 20;
  return is64 ? 14 : 10;
}

/** MSI-X capability. */
export const Msix = {
  CONTROL: 2,
  TABLE: 4,
  PBA: 8,
  SIZE: 12,
  CTRL_TABLE_SIZE_MASK: 0x7ff,
  CTRL_FUNCTION_MASK: 1 << 14,
  CTRL_ENABLE: 1 << 15,
  BIR_MASK: 0x7,
  OFFSET_MASK: 0xfffffff8,
  ENTRY_SIZE: 16,
  ENTRY_ADDR_LO: 0,
  ENTRY_ADDR_HI: 4,
  ENTRY_DATA: 8,
  ENTRY_CTRL: 12,
  ENTRY_CTRL_MASKED: 1 << 0,
  MAX_VECTORS: 2048,
} as const;

/** PCI Express capability (version 2 layout). */
export const Exp = {
  FLAGS: 2,
  DEVCAP: 4,
  DEVCTL: 8,
  DEVSTA: 10,
  LNKCAP: 12,
  LNKCTL: 16,
  LNKSTA: 18,
  SLTCAP: 20,
  SLTCTL: 24,
  SLTSTA: 26,
  RTCTL: 28,
  RTCAP: 30,
  RTSTA: 32,
  DEVCAP2: 36,
  DEVCTL2: 40,
  DEVSTA2: 42,
  LNKCAP2: 44,
  LNKCTL2: 48,
  LNKSTA2: 50,
  SLTCAP2: 52,
  SLTCTL2: 56,
  SLTSTA2: 58,
  SIZE_V2: 60,
  /** FLAGS (PCI Express Capabilities register). */
  FLAGS_VERSION_MASK: 0xf,
  FLAGS_TYPE_SHIFT: 4,
  FLAGS_TYPE_MASK: 0xf << 4,
  FLAGS_SLOT: 1 << 8,
  FLAGS_IRQ_SHIFT: 9,
  FLAGS_IRQ_MASK: 0x1f << 9,
  /** DEVCAP */
  DEVCAP_PAYLOAD_MASK: 0x7,
  DEVCAP_PHANTOM_MASK: 0x3 << 3,
  DEVCAP_EXT_TAG: 1 << 5,
  DEVCAP_RBER: 1 << 15,
  DEVCAP_FLR: 1 << 28,
  /** DEVCTL */
  DEVCTL_CERE: 1 << 0,
  DEVCTL_NFERE: 1 << 1,
  DEVCTL_FERE: 1 << 2,
  DEVCTL_URRE: 1 << 3,
  DEVCTL_RELAX_EN: 1 << 4,
  DEVCTL_PAYLOAD_SHIFT: 5,
  DEVCTL_PAYLOAD_MASK: 0x7 << 5,
  DEVCTL_EXT_TAG: 1 << 8,
  DEVCTL_PHANTOM: 1 << 9,
  DEVCTL_AUX_PME: 1 << 10,
  DEVCTL_NOSNOOP_EN: 1 << 11,
  DEVCTL_READRQ_SHIFT: 12,
  DEVCTL_READRQ_MASK: 0x7 << 12,
  /** Initiate Function Level Reset (endpoints). */
  DEVCTL_BCR_FLR: 1 << 15,
  /** DEVSTA */
  DEVSTA_CED: 1 << 0,
  DEVSTA_NFED: 1 << 1,
  DEVSTA_FED: 1 << 2,
  DEVSTA_URD: 1 << 3,
  DEVSTA_AUXPD: 1 << 4,
  DEVSTA_TRPND: 1 << 5,
  /** LNKCAP / LNKSTA */
  LNK_SPEED_MASK: 0xf,
  LNK_WIDTH_SHIFT: 4,
  LNK_WIDTH_MASK: 0x3f << 4,
  /** DEVCAP2 */
  DEVCAP2_CTO_RANGES_MASK: 0xf,
  DEVCAP2_CTO_DISABLE: 1 << 4,
  DEVCAP2_ARI: 1 << 5,
  /** DEVCTL2 */
  DEVCTL2_CTO_VALUE_MASK: 0xf,
  DEVCTL2_CTO_DISABLE: 1 << 4,
  DEVCTL2_ARI: 1 << 5,
} as const;

/** Device/Port Type values of the PCI Express Capabilities register. @enum */
export const PcieDeviceType = {
  ENDPOINT: 0x0,
  LEGACY_ENDPOINT: 0x1,
  ROOT_PORT: 0x4,
  UPSTREAM_PORT: 0x5,
  DOWNSTREAM_PORT: 0x6,
  PCIE_TO_PCI_BRIDGE: 0x7,
  PCI_TO_PCIE_BRIDGE: 0x8,
  RC_INTEGRATED_ENDPOINT: 0x9,
  RC_EVENT_COLLECTOR: 0xa,
} as const;
/** A PCIe device/port type (PcieDeviceType). */
export type PcieDeviceTypeId = (typeof PcieDeviceType)[keyof typeof PcieDeviceType];
const pcieTypeNames: Record<number, string> = {
  0x0: 'Endpoint',
  0x1: 'Legacy Endpoint',
  0x4: 'Root Port',
  0x5: 'Upstream Port',
  0x6: 'Downstream Port',
  0x7: 'PCI-Express to PCI/PCI-X Bridge',
  0x8: 'PCI/PCI-X to PCI-Express Bridge',
  0x9: 'Root Complex Integrated Endpoint',
  0xa: 'Root Complex Event Collector',
};
export function pcieDeviceTypeName(t: number): string {
  return pcieTypeNames[t] ?? `Unknown type ${t}`;
}
/** Types whose bit 15 of Device Control is Initiate FLR. */
export function pcieTypeIsEndpoint(t: number): boolean {
  return t === PcieDeviceType.ENDPOINT || t === PcieDeviceType.LEGACY_ENDPOINT || t === PcieDeviceType.RC_INTEGRATED_ENDPOINT;
}
/** Root-complex-integrated functions have no link. */
export function pcieTypeHasLink(t: number): boolean {
  return t !== PcieDeviceType.RC_INTEGRATED_ENDPOINT && t !== PcieDeviceType.RC_EVENT_COLLECTOR;
}

/** Extended capability header: id 15:0, version 19:16, next 31:20. */
export const ExtCapHeader = {
  ID_MASK: 0xffff,
  VERSION_SHIFT: 16,
  VERSION_MASK: 0xf,
  NEXT_SHIFT: 20,
  NEXT_MASK: 0xfff,
  SIZE: 4,
} as const;
export function extCapHeader(id: number, version: number, next: number): number {
  return ((id & 0xffff) | ((version & 0xf) << 16) | ((next & 0xfff) << 20)) >>> 0;
}

/** Device Serial Number capability: header + 64-bit serial. */
export const Dsn = { SERIAL_LO: 4, SERIAL_HI: 8, SIZE: 12 } as const;
/** Vendor-Specific Extended capability: header + VSEC header (id 15:0, rev 19:16, length 31:20). */
export const Vsec = { HEADER: 4, BODY: 8, MAX_LENGTH: 0xfff } as const;
/** Standard vendor capability: id, next, length, then the body. */
export const Vndr = { LENGTH: 2, BODY: 3 } as const;
