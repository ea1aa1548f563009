// PCI configuration space of an emulated device (vfio-user region 7).
//
// Every byte has three companions: its power-on value, a mask of the bits
// the guest may write (wmask) and a mask of the bits a guest write of 1
// clears (w1cmask).  Any other bit is read-only and guest writes to it are
// dropped, as on real hardware.  Capability headers and read-only
// capabilities are stricter: a write touching them is refused as a whole
// with EPERM, which is what libvfio-user answers there, so a client sees the
// same errno from either server.
import { Errno } from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';
import {
  BarFlag,
  Cfg,
  CapId,
  Dsn,
  Exp,
  ExtCapId,
  HeaderType,
  Msi,
  Msix,
  PCIE_CFG_SIZE,
  PCIE_EXT_CAP_START,
  PCI_CFG_SIZE,
  PCI_NUM_BARS,
  PCI_STD_HEADER_SIZE,
  PciCommand,
  PciStatus,
  PcieDeviceType,
  Pm,
  ROM_ADDRESS_MASK,
  ROM_ENABLE,
  ROM_MIN_SIZE,
  STATUS_RW1C,
  Vndr,
  Vsec,
  barOffset,
  extCapHeader,
  msiCapSize,
  pcieTypeHasLink,
  pcieTypeIsEndpoint,
  type PcieDeviceTypeId,
  type PowerState,
} from './constants.js';
import { type MsixCapability, decodeMsixCapability } from './msix.js';

/** What a config space is built from: the device's identity. */
export interface PciConfigOptions {
  /** PCI vendor id. */
  vendorId: number;
  /** PCI device id. */
  deviceId: number;
  /** Subsystem vendor id (default 0). */
  subsystemVendorId?: number;
  /** Subsystem id (default 0). */
  subsystemId?: number;
  /** 24 bits: base class << 16 | subclass << 8 | programming interface. */
  classCode?: number;
  /** Revision id (default 0). */
  revision?: number;
  /** 4 KiB PCI Express config space (with room for extended capabilities). */
  express?: boolean;
  /** 0 = no INTx, 1..4 = INTA..INTD. */
  interruptPin?: 0 | 1 | 2 | 3 | 4;
}

/** A BAR's address space. */
export type BarKind = 'mem' | 'io';
/** How a BAR is declared (addRegion does it for BAR regions). */
export interface BarSpec {
  /** Bytes of the region behind the BAR; 0 leaves the BAR unused. */
  size: number;
  /** Memory or I/O space. */
  kind: BarKind;
  /** A 64-bit memory BAR (uses the next BAR slot too). */
  is64?: boolean;
  /** Prefetchable memory. */
  prefetchable?: boolean;
}
/** A BAR as the guest programmed it. */
export interface BarInfo {
  /** BAR index (0-5). */
  index: number;
  /** Bytes of the region behind it. */
  size: number;
  /** What the BAR decodes: size rounded up to a power of two (16 B memory, 4 B I/O at least). */
  sizingSize: number;
  /** Memory or I/O space. */
  kind: BarKind;
  /** 64-bit BAR. */
  is64: boolean;
  /** Prefetchable memory. */
  prefetchable: boolean;
  /** Address currently programmed (flag bits removed). */
  address: bigint;
}
/** The expansion ROM BAR as the guest programmed it. */
export interface RomInfo {
  /** Bytes of the ROM. */
  size: number;
  /** What the BAR decodes (a power of two, at least 2 KiB). */
  sizingSize: number;
  /** Address programmed. */
  address: number;
  /** ROM decoding enabled. */
  enabled: boolean;
}

/** The MSI capability's state as the guest programmed it. */
export interface MsiState {
  /** MSI Enable. */
  enabled: boolean;
  /** Message address. */
  address: bigint;
  /** Message data. */
  data: number;
  /** Per-vector mask bits (0 without per-vector masking). */
  mask: number;
  /** Pending bits (per-vector masking). */
  pending: number;
  /** Vectors the guest enabled (Multiple Message Enable). */
  vectorsEnabled: number;
  /** Vectors the device asks for (Multiple Message Capable). */
  vectorsCapable: number;
  /** 64-bit message address. */
  is64: boolean;
  /** Per-vector masking capable. */
  perVectorMask: boolean;
}
/** The MSI-X Message Control bits a device hears about. */
export interface MsixControl {
  /** MSI-X Enable. */
  enabled: boolean;
  /** Function Mask. */
  functionMasked: boolean;
}
/** A capability placed in config space. */
export interface CapabilityInfo {
  /** Capability id (PCI_CAP_ID_* or PCI_EXT_CAP_ID_*). */
  id: number;
  /** Offset in config space. */
  offset: number;
  /** Bytes the capability defines (placement reserves it rounded up to a dword). */
  length: number;
  /** An extended (PCIe) capability. */
  extended: boolean;
  /** Guest writes anywhere in it are refused with EPERM. */
  readonly: boolean;
}

/** Where a capability goes: the first free dword-aligned spot unless given. */
export interface Placement {
  /** Config space offset (default: the next free one). */
  offset?: number;
}
/** Options of addPowerManagement(). */
export interface PmOptions extends Placement {
  /** D1 supported. */
  d1?: boolean;
  /** D2 supported. */
  d2?: boolean;
  /** PME_Support: bit 0 D0, 1 D1, 2 D2, 3 D3hot, 4 D3cold. */
  pmeSupport?: number;
  /** State is kept across D3hot -> D0 (the default, as for most virtual devices). */
  noSoftReset?: boolean;
}
/** Options of addMsi(). */
export interface MsiOptions extends Placement {
  /** Vectors the device asks for (Multiple Message Capable). */
  vectors: 1 | 2 | 4 | 8 | 16 | 32;
  /** 64-bit message address. */
  is64?: boolean;
  /** Per-vector masking. */
  perVectorMask?: boolean;
}
/** Options of addMsix(): where the table and the PBA are. */
export interface MsixOptions extends Placement {
  /** Vectors, 1..2048. */
  tableSize: number;
  /** BAR holding the vector table. */
  tableBar: number;
  /** Offset of the table in that BAR (8-byte aligned). */
  tableOffset: number;
  /** BAR holding the Pending Bit Array. */
  pbaBar: number;
  /** Offset of the PBA in that BAR (8-byte aligned). */
  pbaOffset: number;
}
/** Options of addExpress(). */
export interface ExpressOptions extends Placement {
  /** Device/port type (default: endpoint). */
  deviceType?: PcieDeviceTypeId;
  /** Advertise Function Level Reset. */
  flrCapable?: boolean;
}
/** Options of addVendor(). */
export interface VendorOptions extends Placement {
  /** Guest writes to it are refused (EPERM). */
  readonly?: boolean;
}
/** Options of addExtVendor() (a PCIe vendor-specific extended capability). */
export interface ExtVendorOptions extends Placement {
  /** VSEC id. */
  vsecId: number;
  /** VSEC revision. */
  vsecRev: number;
  /** The capability's body after its header. */
  body: Buffer | Uint8Array;
  /** Guest writes to it are refused (EPERM). */
  readonly?: boolean;
}

/** What a config space hook may return: anything; a rejected promise goes to onHookError. */
export type HookResult = unknown;
/**
 * What device code and the server hear about.  Hooks run synchronously
 * inside write(), after the whole write has been applied; a returned
 * promise is not awaited (see onHookError).
 */
export interface PciHooks {
  /** COMMAND changed. */
  command?: (old: number, now: number) => HookResult;
  /** A BAR register was written; for a 64-bit BAR, index is the lower half. */
  bar?: (index: number, address: bigint) => HookResult;
  /** The expansion ROM BAR was written. */
  rom?: (address: number, enabled: boolean) => HookResult;
  /** Any MSI register changed. */
  msi?: (state: MsiState) => HookResult;
  /** MSI-X Enable or Function Mask changed. */
  msix?: (state: MsixControl) => HookResult;
  /** The power state changed (PMCSR). */
  powerState?: (old: PowerState, now: PowerState) => HookResult;
  /** The guest initiated a Function Level Reset: reset the device (and call reset() here). */
  flr?: () => HookResult;
  /** Bytes written into the body of a (standard or extended) vendor capability. */
  vendorWrite?: (capOffset: number, offsetInCap: number, data: Buffer) => HookResult;
  /** After every successful write. */
  configWrite?: (offset: number, data: Buffer) => HookResult;
}
/** The config space events a device can hook (see PciHooks). */
export type PciEvent = keyof PciHooks;
/** The hook function type for a config space event. */
export type HookFn<K extends PciEvent> = NonNullable<PciHooks[K]>;

interface CapRecord extends CapabilityInfo {
  /** Reserved bytes (length rounded up to a dword). */
  alloc: number;
}

/** What a watcher sees of one write. */
interface WriteView {
  offset: number;
  end: number;
  data: Buffer;
  /** Bytes before the write, for [offset, end). */
  before: Buffer;
}
interface Watcher {
  start: number;
  end: number;
  /** Refuse the write (throw) before anything changes. */
  check?(w: WriteView): void;
  /** Fix up and queue notifications once the write is applied. */
  after?(w: WriteView, queue: (() => void)[]): void;
}

const COMMAND_WMASK =
  PciCommand.IO |
  PciCommand.MEMORY |
  PciCommand.MASTER |
  PciCommand.SPECIAL |
  PciCommand.INVALIDATE |
  PciCommand.VGA_PALETTE |
  PciCommand.PARITY |
  PciCommand.SERR |
  PciCommand.FAST_BACK |
  PciCommand.INTX_DISABLE;
/** Relaxed ordering, no snoop, 512-byte read requests: the spec's defaults. */
const DEVCTL_DEFAULT = Exp.DEVCTL_RELAX_EN | Exp.DEVCTL_NOSNOOP_EN | (2 << Exp.DEVCTL_READRQ_SHIFT);
const DEVCTL_WMASK = 0x7fff;
/** Largest BAR sizes we accept: I/O space is 64 KiB, 32-bit BARs hold bit 31. */
const MAX_IO_BAR = 0x10000;
const MAX_MEM32_BAR = 0x80000000;
const MAX_ROM = 0x80000000;

function fail(errno: number, message: string): never {
  throw new VfuError(errno, message);
}
function checkInt(name: string, v: unknown, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    fail(Errno.EINVAL, `${name} must be an integer in [${min}, ${max}], got ${String(v)}`);
  }
  return v;
}
function align4(n: number): number {
  return (n + 3) & ~3;
}
function pow2AtLeast(n: number, min: number): number {
  let s = min;
  while (s < n) s *= 2;
  return s;
}
function overlaps(a: number, aEnd: number, b: number, bEnd: number): boolean {
  return a < bEnd && b < aEnd;
}

/** A device's PCI config space (VfioUserDevice.pci): the type-0 header, BARs, capabilities, what the guest may write, and hooks on its writes. */
export class PciConfigSpace {
  /** 256 bytes, or 4096 for PCI Express. */
  readonly size: number;
  /** A PCI Express config space. */
  readonly express: boolean;
  /** Guest-visible bytes. */
  private readonly config: Buffer;
  /** Values restored by reset(). */
  private readonly powerOn: Buffer;
  private readonly wmask: Buffer;
  private readonly w1cmask: Buffer;
  /** Read-only bits the device itself changes (INTx status, MSI pending). */
  private readonly dmask: Buffer;
  private readonly protectedRanges: [number, number][] = [];
  private readonly watchers: Watcher[] = [];
  private readonly caps: CapRecord[] = [];
  private readonly bars: (BarSpec & { sizingSize: number; is64: boolean; prefetchable: boolean })[] = [];
  /** True at index i when BAR i is the upper dword of BAR i-1. */
  private readonly barUpper: boolean[] = new Array<boolean>(PCI_NUM_BARS).fill(false);
  private romSize = 0;
  private romSizing = 0;
  private msiOff: number | undefined;
  private msixOff: number | undefined;
  private pmOff: number | undefined;
  private pmStates = 0;
  private expOff: number | undefined;
  private flrCapable = false;
  private readonly listeners: { [K in PciEvent]?: HookFn<K>[] } = {};

  /** A single set of hooks; on() adds more subscribers beside it. */
  hooks: PciHooks = {};
  /** Where rejections of async hooks go (otherwise they are unhandled rejections). */
  onHookError: ((err: unknown, event: PciEvent) => void) | undefined;

  /** A config space with this identity. */
  constructor(opts: PciConfigOptions) {
    this.express = opts.express === true;
    this.size = this.express ? PCIE_CFG_SIZE : PCI_CFG_SIZE;
    this.config = Buffer.alloc(this.size);
    this.powerOn = Buffer.alloc(this.size);
    this.wmask = Buffer.alloc(this.size);
    this.w1cmask = Buffer.alloc(this.size);
    this.dmask = Buffer.alloc(this.size);

    this.init16(Cfg.VENDOR_ID, checkInt('vendorId', opts.vendorId, 0, 0xffff));
    this.init16(Cfg.DEVICE_ID, checkInt('deviceId', opts.deviceId, 0, 0xffff));
    this.init8(Cfg.REVISION, checkInt('revision', opts.revision ?? 0, 0, 0xff));
    const cls = checkInt('classCode', opts.classCode ?? 0, 0, 0xffffff);
    this.init8(Cfg.CLASS_PROG, cls & 0xff);
    this.init16(Cfg.CLASS_SUB, cls >> 8);
    this.init8(Cfg.HEADER_TYPE, HeaderType.NORMAL);
    this.init16(Cfg.SUBSYS_VENDOR, checkInt('subsystemVendorId', opts.subsystemVendorId ?? 0, 0, 0xffff));
    this.init16(Cfg.SUBSYS_ID, checkInt('subsystemId', opts.subsystemId ?? 0, 0, 0xffff));
    this.init8(Cfg.INT_PIN, checkInt('interruptPin', opts.interruptPin ?? 0, 0, 4));

    this.mask(this.wmask, Cfg.COMMAND, 2, COMMAND_WMASK);
    this.mask(this.w1cmask, Cfg.STATUS, 2, STATUS_RW1C);
    this.dmask[Cfg.STATUS] = PciStatus.INTERRUPT;
    this.wmask[Cfg.CACHE_LINE] = 0xff;
    this.wmask[Cfg.LATENCY] = 0xff;
    this.wmask[Cfg.INT_LINE] = 0xff;

    this.watch(Cfg.COMMAND, 2, {
      after: (w, queue) => {
        const old = this.before16(w, Cfg.COMMAND);
        const now = this.command;
        if (old !== now) queue.push(() => this.emit('command', old, now));
      },
    });
    this.watch(Cfg.BAR0, 4 * PCI_NUM_BARS, {
      after: (w, queue) => {
        for (let i = 0; i < PCI_NUM_BARS; i++) {
          const b = this.bars[i];
          if (!b || this.barUpper[i]) continue;
          const start = barOffset(i);
          if (!overlaps(w.offset, w.end, start, start + (b.is64 ? 8 : 4))) continue;
          const address = this.barAddress(i);
          queue.push(() => this.emit('bar', i, address));
        }
      },
    });
    this.watch(Cfg.ROM, 4, {
      after: (_w, queue) => {
        if (this.romSize === 0) return;
        const r = this.rom()!;
        queue.push(() => this.emit('rom', r.address, r.enabled));
      },
    });
  }

  // ---- building -------------------------------------------------------

  /** Declares BAR `index` (its size and kind). */
  setBar(index: number, spec: BarSpec): void {
    checkInt('BAR index', index, 0, PCI_NUM_BARS - 1);
    if (this.barUpper[index]) fail(Errno.EINVAL, `BAR${index} is the upper half of 64-bit BAR${index - 1}`);
    const size = checkInt(`BAR${index} size`, spec.size, 0, Number.MAX_SAFE_INTEGER);
    if (spec.kind !== 'mem' && spec.kind !== 'io') fail(Errno.EINVAL, `BAR${index}: kind must be 'mem' or 'io'`);
    const is64 = spec.is64 === true;
    const prefetchable = spec.prefetchable === true;
    if (size !== 0) {
      if (spec.kind === 'io' && (is64 || prefetchable)) fail(Errno.EINVAL, `BAR${index}: an I/O BAR is 32-bit and not prefetchable`);
      if (is64 && index % 2 !== 0) fail(Errno.EINVAL, `BAR${index}: a 64-bit BAR needs an even index`);
      if (is64 && this.bars[index + 1]) fail(Errno.EINVAL, `BAR${index}: 64-bit BAR needs BAR${index + 1}, which is in use`);
    }
    const sizingSize = size === 0 ? 0 : pow2AtLeast(size, spec.kind === 'io' ? 4 : 16);
    if (spec.kind === 'io' && sizingSize > MAX_IO_BAR) fail(Errno.EINVAL, `BAR${index}: I/O BARs are at most 64 KiB`);
    if (spec.kind === 'mem' && !is64 && sizingSize > MAX_MEM32_BAR) fail(Errno.EINVAL, `BAR${index}: a 32-bit BAR is at most 2 GiB`);

    // Forget the old definition, including a 64-bit upper half.
    const old = this.bars[index];
    this.clearBarDword(index);
    if (old?.is64) {
      this.clearBarDword(index + 1);
      this.barUpper[index + 1] = false;
    }
    delete this.bars[index];
    if (size === 0) return;

    this.bars[index] = { size, kind: spec.kind, sizingSize, is64, prefetchable };
    const off = barOffset(index);
    if (spec.kind === 'io') {
      this.init32(off, BarFlag.IO);
      this.mask(this.wmask, off, 4, ~(sizingSize - 1) & ~BarFlag.IO_FLAGS_MASK);
      return;
    }
    const flags = (is64 ? BarFlag.MEM_TYPE_64 : BarFlag.MEM_TYPE_32) | (prefetchable ? BarFlag.PREFETCH : 0);
    const addrMask = ~(BigInt(sizingSize) - 1n) & 0xffff_ffff_ffff_fff0n;
    this.init32(off, flags);
    this.mask(this.wmask, off, 4, Number(addrMask & 0xffff_ffffn));
    if (is64) {
      this.barUpper[index + 1] = true;
      this.mask(this.wmask, off + 4, 4, Number(addrMask >> 32n));
    }
  }

  /** Expansion ROM BAR; the size is rounded up to a power of two of at least 2 KiB; 0 removes it. */
  /** Interrupt pin (0 none, 1..4 INTA..INTD); read-only for the guest. */
  setInterruptPin(pin: 0 | 1 | 2 | 3 | 4): void {
    this.init8(Cfg.INT_PIN, checkInt('interruptPin', pin, 0, 4));
  }

  /** Declares an expansion ROM of `size` bytes. */
  setRom(size: number): void {
    checkInt('ROM size', size, 0, MAX_ROM);
    this.romSize = size;
    this.romSizing = size === 0 ? 0 : pow2AtLeast(size, ROM_MIN_SIZE);
    this.init32(Cfg.ROM, 0);
    this.mask(this.wmask, Cfg.ROM, 4, size === 0 ? 0 : (~(this.romSizing - 1) & ROM_ADDRESS_MASK) | ROM_ENABLE);
  }

  /** Adds the power management capability; returns its offset. */
  addPowerManagement(opts: PmOptions = {}): number {
    if (this.pmOff !== undefined) fail(Errno.EEXIST, 'power management capability already present');
    const pme = checkInt('pmeSupport', opts.pmeSupport ?? 0, 0, 0x1f);
    const off = this.addCap(CapId.PM, Pm.SIZE, false, opts.offset);
    const pmc = 3 /* PCI PM 1.2 */ | (opts.d1 ? Pm.PMC_D1 : 0) | (opts.d2 ? Pm.PMC_D2 : 0) | (pme << Pm.PMC_PME_SHIFT);
    this.init16(off + Pm.PMC, pmc);
    this.init16(off + Pm.PMCSR, opts.noSoftReset === false ? 0 : Pm.CSR_NO_SOFT_RESET);
    this.mask(this.wmask, off + Pm.PMCSR, 2, Pm.CSR_STATE_MASK | Pm.CSR_PME_ENABLE);
    this.mask(this.w1cmask, off + Pm.PMCSR, 2, Pm.CSR_PME_STATUS);
    this.pmOff = off;
    this.pmStates = 0b1001 | (opts.d1 ? 0b10 : 0) | (opts.d2 ? 0b100 : 0);
    this.watch(off + Pm.PMCSR, 2, {
      after: (w, queue) => {
        const old = (this.before16(w, off + Pm.PMCSR) & Pm.CSR_STATE_MASK) as PowerState;
        let now = (this.config.readUInt16LE(off + Pm.PMCSR) & Pm.CSR_STATE_MASK) as PowerState;
        if ((this.pmStates & (1 << now)) === 0) {
          // The spec has writes of an unsupported state complete and change nothing.
          this.config[off + Pm.PMCSR] = (this.config[off + Pm.PMCSR]! & ~Pm.CSR_STATE_MASK) | old;
          now = old;
        }
        if (old !== now) queue.push(() => this.emit('powerState', old, now));
      },
    });
    return off;
  }

  /** Adds the MSI capability; returns its offset. */
  addMsi(opts: MsiOptions): number {
    if (this.msiOff !== undefined) fail(Errno.EEXIST, 'MSI capability already present');
    const mmc = [1, 2, 4, 8, 16, 32].indexOf(opts.vectors);
    if (mmc < 0) fail(Errno.EINVAL, `MSI vectors must be 1, 2, 4, 8, 16 or 32, got ${String(opts.vectors)}`);
    const is64 = opts.is64 === true;
    const pvm = opts.perVectorMask === true;
    const off = this.addCap(CapId.MSI, msiCapSize(is64, pvm), false, opts.offset);
    this.init16(off + Msi.CONTROL, (mmc << Msi.CTRL_MMC_SHIFT) | (is64 ? Msi.CTRL_64BIT : 0) | (pvm ? Msi.CTRL_PVM : 0));
    this.mask(this.wmask, off + Msi.CONTROL, 2, Msi.CTRL_ENABLE | Msi.CTRL_MME_MASK);
    this.mask(this.wmask, off + Msi.ADDRESS_LO, 4, 0xfffffffc);
    if (is64) this.mask(this.wmask, off + Msi.ADDRESS_HI, 4, 0xffffffff);
    this.mask(this.wmask, off + (is64 ? Msi.DATA_64 : Msi.DATA_32), 2, 0xffff);
    if (pvm) {
      const vmask = opts.vectors === 32 ? 0xffffffff : (1 << opts.vectors) - 1;
      this.mask(this.wmask, off + (is64 ? Msi.MASK_64 : Msi.MASK_32), 4, vmask);
      this.mask(this.dmask, off + (is64 ? Msi.PENDING_64 : Msi.PENDING_32), 4, vmask);
    }
    this.msiOff = off;
    const len = msiCapSize(is64, pvm);
    this.watch(off, len, {
      check: (w) => {
        const at = off + Msi.CONTROL;
        if (at < w.offset || at >= w.end) return;
        const mme = (w.data[at - w.offset]! & Msi.CTRL_MME_MASK) >> Msi.CTRL_MME_SHIFT;
        if (mme > mmc) fail(Errno.EINVAL, `MSI: ${1 << mme} vectors enabled, device supports ${opts.vectors}`);
      },
      after: (w, queue) => {
        const start = Math.max(w.offset, off);
        const end = Math.min(w.end, off + len);
        const before = w.before.subarray(start - w.offset, end - w.offset);
        if (before.equals(this.config.subarray(start, end))) return;
        const s = this.msi!;
        queue.push(() => this.emit('msi', s));
      },
    });
    return off;
  }

  /** Adds the MSI-X capability (the table and PBA live in the given BARs); returns its offset. */
  addMsix(opts: MsixOptions): number {
    if (this.msixOff !== undefined) fail(Errno.EEXIST, 'MSI-X capability already present');
    checkInt('MSI-X tableSize', opts.tableSize, 1, Msix.MAX_VECTORS);
    checkInt('MSI-X tableBar', opts.tableBar, 0, PCI_NUM_BARS - 1);
    checkInt('MSI-X pbaBar', opts.pbaBar, 0, PCI_NUM_BARS - 1);
    checkInt('MSI-X tableOffset', opts.tableOffset, 0, Msix.OFFSET_MASK);
    checkInt('MSI-X pbaOffset', opts.pbaOffset, 0, Msix.OFFSET_MASK);
    if (opts.tableOffset % 8 !== 0 || opts.pbaOffset % 8 !== 0) fail(Errno.EINVAL, 'MSI-X table and PBA offsets must be 8-byte aligned');
    const off = this.addCap(CapId.MSIX, Msix.SIZE, false, opts.offset);
    this.init16(off + Msix.CONTROL, opts.tableSize - 1);
    this.init32(off + Msix.TABLE, (opts.tableOffset | opts.tableBar) >>> 0);
    this.init32(off + Msix.PBA, (opts.pbaOffset | opts.pbaBar) >>> 0);
    this.mask(this.wmask, off + Msix.CONTROL, 2, Msix.CTRL_ENABLE | Msix.CTRL_FUNCTION_MASK);
    this.msixOff = off;
    this.watch(off + Msix.CONTROL, 2, {
      after: (w, queue) => {
        if (this.before16(w, off + Msix.CONTROL) === this.config.readUInt16LE(off + Msix.CONTROL)) return;
        const { enabled, functionMasked } = this.msix!;
        queue.push(() => this.emit('msix', { enabled, functionMasked }));
      },
    });
    return off;
  }

  /** Adds the PCI Express capability; returns its offset. */
  addExpress(opts: ExpressOptions = {}): number {
    if (this.expOff !== undefined) fail(Errno.EEXIST, 'PCI Express capability already present');
    const type = checkInt('deviceType', opts.deviceType ?? PcieDeviceType.ENDPOINT, 0, 0xf);
    const flr = opts.flrCapable === true;
    if (flr && !pcieTypeIsEndpoint(type)) fail(Errno.EINVAL, 'only endpoints can be FLR capable');
    const off = this.addCap(CapId.EXP, Exp.SIZE_V2, false, opts.offset);
    this.init16(off + Exp.FLAGS, 2 | (type << Exp.FLAGS_TYPE_SHIFT));
    this.init32(off + Exp.DEVCAP, Exp.DEVCAP_RBER | (flr ? Exp.DEVCAP_FLR : 0));
    this.init16(off + Exp.DEVCTL, DEVCTL_DEFAULT);
    this.mask(this.wmask, off + Exp.DEVCTL, 2, DEVCTL_WMASK);
    this.mask(this.w1cmask, off + Exp.DEVSTA, 2, Exp.DEVSTA_CED | Exp.DEVSTA_NFED | Exp.DEVSTA_FED | Exp.DEVSTA_URD);
    if (pcieTypeHasLink(type)) {
      // A 2.5 GT/s x1 link that is always up; software cannot retrain it.
      this.init32(off + Exp.LNKCAP, 1 | (1 << Exp.LNK_WIDTH_SHIFT));
      this.init16(off + Exp.LNKSTA, 1 | (1 << Exp.LNK_WIDTH_SHIFT));
      this.init32(off + Exp.LNKCAP2, 1 << 1);
      this.init16(off + Exp.LNKCTL2, 1);
    }
    const ari = type === PcieDeviceType.ROOT_PORT || type === PcieDeviceType.DOWNSTREAM_PORT;
    this.init32(off + Exp.DEVCAP2, Exp.DEVCAP2_CTO_RANGES_MASK | Exp.DEVCAP2_CTO_DISABLE | (ari ? Exp.DEVCAP2_ARI : 0));
    this.mask(this.wmask, off + Exp.DEVCTL2, 2, Exp.DEVCTL2_CTO_VALUE_MASK | Exp.DEVCTL2_CTO_DISABLE | (ari ? Exp.DEVCTL2_ARI : 0));
    this.expOff = off;
    this.flrCapable = flr;
    // "Initiate FLR" is outside wmask, so it always reads back 0.
    const flrByte = off + Exp.DEVCTL + 1;
    const flrBit = Exp.DEVCTL_BCR_FLR >> 8;
    this.watch(flrByte, 1, {
      check: (w) => {
        if (pcieTypeIsEndpoint(type) && !flr && (w.data[flrByte - w.offset]! & flrBit) !== 0) {
          fail(Errno.EINVAL, 'FLR initiated but the device is not FLR capable');
        }
      },
      after: (w, queue) => {
        if (flr && (w.data[flrByte - w.offset]! & flrBit) !== 0) queue.push(() => this.emit('flr'));
      },
    });
    return off;
  }

  /** Vendor-specific capability: body follows the id/next/length header; writable unless readonly. */
  addVendor(body: Buffer | Uint8Array, opts: VendorOptions = {}): number {
    const len = Vndr.BODY + body.length;
    if (len > 0xff) fail(Errno.EINVAL, `vendor capability body of ${body.length} bytes does not fit its length byte`);
    const ro = opts.readonly === true;
    const off = this.addCap(CapId.VNDR, len, false, opts.offset, ro, Vndr.BODY);
    this.init8(off + Vndr.LENGTH, len);
    this.initBytes(off + Vndr.BODY, body);
    if (!ro) {
      this.fill(this.wmask, off + Vndr.BODY, body.length, 0xff);
      this.watchVendor(off, Vndr.BODY, len);
    }
    return off;
  }

  /** Device Serial Number (extended, read-only). */
  addSerialNumber(serial: bigint, opts: Placement = {}): number {
    if (typeof serial !== 'bigint' || serial < 0n || serial > 0xffff_ffff_ffff_ffffn) fail(Errno.EINVAL, 'serial number must be a u64 bigint');
    if (this.caps.some((c) => c.extended && c.id === ExtCapId.DSN)) fail(Errno.EEXIST, 'serial number capability already present');
    const off = this.addCap(ExtCapId.DSN, Dsn.SIZE, true, opts.offset, true);
    this.init32(off + Dsn.SERIAL_LO, Number(serial & 0xffff_ffffn));
    this.init32(off + Dsn.SERIAL_HI, Number(serial >> 32n));
    return off;
  }

  /** Vendor-Specific Extended Capability: header, VSEC header (id, rev, length), body. */
  addExtVendor(opts: ExtVendorOptions): number {
    checkInt('vsecId', opts.vsecId, 0, 0xffff);
    checkInt('vsecRev', opts.vsecRev, 0, 0xf);
    const len = Vsec.BODY + opts.body.length;
    if (len > Vsec.MAX_LENGTH) fail(Errno.EINVAL, `VSEC body of ${opts.body.length} bytes does not fit its length field`);
    const ro = opts.readonly === true;
    const off = this.addCap(ExtCapId.VNDR, len, true, opts.offset, ro, Vsec.BODY);
    this.init32(off + Vsec.HEADER, (opts.vsecId | (opts.vsecRev << 16) | (len << 20)) >>> 0);
    this.initBytes(off + Vsec.BODY, opts.body);
    if (!ro) {
      this.fill(this.wmask, off + Vsec.BODY, opts.body.length, 0xff);
      this.watchVendor(off, Vsec.BODY, len);
    }
    return off;
  }

  // ---- guest access ---------------------------------------------------

  /** Copies config bytes [offset, offset+length) into out at outOffset. */
  read(offset: number, length: number, out: Buffer, outOffset = 0): void {
    this.checkRange(offset, length);
    if (!Number.isSafeInteger(outOffset) || outOffset < 0 || outOffset > out.length || length > out.length - outOffset) {
      fail(Errno.EINVAL, `config read of ${length} bytes does not fit the output buffer`);
    }
    this.config.copy(out, outOffset, offset, offset + length);
  }

  /** A guest write: all of it is checked first, then applied through the masks, then hooks run. */
  write(offset: number, data: Buffer | Uint8Array): void {
    this.checkRange(offset, data.length);
    if (data.length === 0) return;
    const end = offset + data.length;
    for (const [s, e] of this.protectedRanges) {
      if (overlaps(offset, end, s, e)) fail(Errno.EPERM, `config write [0x${offset.toString(16)}, 0x${end.toString(16)}) touches a protected capability range`);
    }
    const buf = Buffer.from(data.buffer, data.byteOffset, data.length);
    const w: WriteView = { offset, end, data: buf, before: Buffer.from(this.config.subarray(offset, end)) };
    const touched = this.watchers.filter((x) => overlaps(offset, end, x.start, x.end));
    for (const x of touched) x.check?.(w);

    for (let i = 0; i < buf.length; i++) {
      const a = offset + i;
      const d = buf[i]!;
      const wm = this.wmask[a]!;
      this.config[a] = ((this.config[a]! & ~wm) | (d & wm)) & ~(d & this.w1cmask[a]!);
    }

    const queue: (() => void)[] = [];
    for (const x of touched) x.after?.(w, queue);
    const copy = Buffer.from(buf);
    queue.push(() => this.emit('configWrite', offset, copy));
    for (const q of queue) q();
  }

  /** Reads a byte. */
  read8(offset: number): number {
    this.checkRange(offset, 1);
    return this.config.readUInt8(offset);
  }
  /** Reads a little-endian 16-bit word. */
  read16(offset: number): number {
    this.checkRange(offset, 2);
    return this.config.readUInt16LE(offset);
  }
  /** Reads a little-endian 32-bit word. */
  read32(offset: number): number {
    this.checkRange(offset, 4);
    return this.config.readUInt32LE(offset);
  }
  /** Writes a byte as the guest would (masks and hooks apply). */
  write8(offset: number, value: number): void {
    this.write(offset, Buffer.of(value & 0xff));
  }
  /** Writes a 16-bit word as the guest would. */
  write16(offset: number, value: number): void {
    const b = Buffer.alloc(2);
    b.writeUInt16LE(value & 0xffff);
    this.write(offset, b);
  }
  /** Writes a 32-bit word as the guest would. */
  write32(offset: number, value: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(value >>> 0);
    this.write(offset, b);
  }

  // ---- hooks ----------------------------------------------------------

  /** Subscribes beside `hooks`; returns the unsubscribe function. */
  on<K extends PciEvent>(event: K, cb: HookFn<K>): () => void {
    const listeners = this.listeners as Record<PciEvent, unknown[] | undefined>;
    const list = (listeners[event] ??= []) as HookFn<K>[];
    list.push(cb);
    return () => {
      const i = list.indexOf(cb);
      if (i >= 0) list.splice(i, 1);
    };
  }

  private emit<K extends PciEvent>(event: K, ...args: Parameters<HookFn<K>>): void {
    const fns: HookFn<K>[] = [];
    const h = this.hooks[event];
    if (h) fns.push(h as HookFn<K>);
    fns.push(...((this.listeners[event] ?? []) as HookFn<K>[]));
    for (const fn of fns) {
      const r: unknown = (fn as (...a: unknown[]) => HookResult)(...args);
      const onErr = this.onHookError;
      if (onErr && r !== null && typeof r === 'object' && typeof (r as PromiseLike<void>).then === 'function') {
        (r as PromiseLike<void>).then(undefined, (e: unknown) => onErr(e, event));
      }
    }
  }

  // ---- device side ----------------------------------------------------

  /** Back to power-on values (ids and capabilities stay); no hooks run. */
  reset(): void {
    this.powerOn.copy(this.config);
  }

  /** All config bytes, for migration. */
  snapshot(): Buffer {
    return Buffer.from(this.config);
  }

  /**
   * Loads a snapshot() of a device built the same way: every read-only bit
   * the device does not drive must match, else EINVAL and nothing changes.
   * No hooks run.
   */
  restore(buf: Buffer | Uint8Array): void {
    if (buf.length !== this.size) fail(Errno.EINVAL, `config snapshot has ${buf.length} bytes, expected ${this.size}`);
    for (let a = 0; a < this.size; a++) {
      const fixed = ~(this.wmask[a]! | this.w1cmask[a]! | this.dmask[a]!) & 0xff;
      if (((buf[a]! ^ this.config[a]!) & fixed) !== 0) {
        fail(Errno.EINVAL, `config snapshot disagrees with the device layout at 0x${a.toString(16)}`);
      }
    }
    this.config.set(buf);
  }

  /** A copy of the current bytes. */
  get bytes(): Buffer {
    return Buffer.from(this.config);
  }

  /** Raises STATUS error bits (the ones software clears by writing 1). */
  setStatusBits(bits: number): void {
    checkInt('status bits', bits, 0, 0xffff);
    if ((bits & ~STATUS_RW1C) !== 0) fail(Errno.EINVAL, 'only the RW1C status bits can be raised');
    this.config.writeUInt16LE(this.status | bits, Cfg.STATUS);
  }

  /** STATUS Interrupt Status: whether the device asserts INTx. */
  setIntxStatus(asserted: boolean): void {
    const s = this.status;
    this.config.writeUInt16LE(asserted ? s | PciStatus.INTERRUPT : s & ~PciStatus.INTERRUPT, Cfg.STATUS);
  }

  /** MSI Pending bit of a vector (needs per-vector masking). */
  setMsiPending(vector: number, pending: boolean): void {
    const s = this.msi;
    if (!s || !s.perVectorMask) fail(Errno.EINVAL, 'no MSI capability with per-vector masking');
    checkInt('MSI vector', vector, 0, s.vectorsCapable - 1);
    const at = this.msiOff! + (s.is64 ? Msi.PENDING_64 : Msi.PENDING_32);
    const bit = 2 ** vector;
    const v = this.config.readUInt32LE(at);
    const now = pending ? v | bit : v & ~bit;
    this.config.writeUInt32LE(now >>> 0, at);
  }

  /** Raises PCI Express Device Status error bits (0..3). */
  setExpressDeviceStatus(bits: number): void {
    if (this.expOff === undefined) fail(Errno.EINVAL, 'no PCI Express capability');
    checkInt('device status bits', bits, 0, 0xf);
    const at = this.expOff + Exp.DEVSTA;
    this.config.writeUInt16LE(this.config.readUInt16LE(at) | bits, at);
  }

  // ---- state for the server ---------------------------------------------

  /** The COMMAND register. */
  get command(): number {
    return this.config.readUInt16LE(Cfg.COMMAND);
  }
  /** The STATUS register. */
  get status(): number {
    return this.config.readUInt16LE(Cfg.STATUS);
  }
  /** I/O space decoding enabled. */
  get commandIoEnabled(): boolean {
    return (this.command & PciCommand.IO) !== 0;
  }
  /** Memory space decoding enabled. */
  get commandMemoryEnabled(): boolean {
    return (this.command & PciCommand.MEMORY) !== 0;
  }
  /** Bus mastering (DMA) enabled. */
  get busMasterEnabled(): boolean {
    return (this.command & PciCommand.MASTER) !== 0;
  }
  /** INTx disabled by the guest. */
  get intxDisabled(): boolean {
    return (this.command & PciCommand.INTX_DISABLE) !== 0;
  }

  /** undefined for an unused BAR and for the upper half of a 64-bit one. */
  bar(index: number): BarInfo | undefined {
    checkInt('BAR index', index, 0, PCI_NUM_BARS - 1);
    const b = this.bars[index];
    if (!b) return undefined;
    return { index, size: b.size, sizingSize: b.sizingSize, kind: b.kind, is64: b.is64, prefetchable: b.prefetchable, address: this.barAddress(index) };
  }

  /** The expansion ROM as programmed, if there is one. */
  rom(): RomInfo | undefined {
    if (this.romSize === 0) return undefined;
    const v = this.config.readUInt32LE(Cfg.ROM);
    return { size: this.romSize, sizingSize: this.romSizing, address: (v & ROM_ADDRESS_MASK) >>> 0, enabled: (v & ROM_ENABLE) !== 0 };
  }

  /** The MSI state, with the MSI capability. */
  get msi(): MsiState | undefined {
    const off = this.msiOff;
    if (off === undefined) return undefined;
    const ctl = this.config.readUInt16LE(off + Msi.CONTROL);
    const is64 = (ctl & Msi.CTRL_64BIT) !== 0;
    const pvm = (ctl & Msi.CTRL_PVM) !== 0;
    const lo = BigInt(this.config.readUInt32LE(off + Msi.ADDRESS_LO));
    const hi = is64 ? BigInt(this.config.readUInt32LE(off + Msi.ADDRESS_HI)) : 0n;
    return {
      enabled: (ctl & Msi.CTRL_ENABLE) !== 0,
      address: (hi << 32n) | lo,
      data: this.config.readUInt16LE(off + (is64 ? Msi.DATA_64 : Msi.DATA_32)),
      mask: pvm ? this.config.readUInt32LE(off + (is64 ? Msi.MASK_64 : Msi.MASK_32)) : 0,
      pending: pvm ? this.config.readUInt32LE(off + (is64 ? Msi.PENDING_64 : Msi.PENDING_32)) : 0,
      vectorsEnabled: 1 << ((ctl & Msi.CTRL_MME_MASK) >> Msi.CTRL_MME_SHIFT),
      vectorsCapable: 1 << ((ctl & Msi.CTRL_MMC_MASK) >> Msi.CTRL_MMC_SHIFT),
      is64,
      perVectorMask: pvm,
    };
  }

  /** The MSI-X capability's fields, with it. */
  get msix(): MsixCapability | undefined {
    const off = this.msixOff;
    if (off === undefined) return undefined;
    const c = this.config;
    return decodeMsixCapability(c.readUInt16LE(off + Msix.CONTROL), c.readUInt32LE(off + Msix.TABLE), c.readUInt32LE(off + Msix.PBA));
  }

  /** The power state (D0-D3hot), with power management. */
  get powerState(): PowerState | undefined {
    if (this.pmOff === undefined) return undefined;
    return (this.config.readUInt16LE(this.pmOff + Pm.PMCSR) & Pm.CSR_STATE_MASK) as PowerState;
  }

  /** Whether FLR is advertised. */
  get isFlrCapable(): boolean {
    return this.flrCapable;
  }

  /** The capabilities placed, in order. */
  get capabilities(): CapabilityInfo[] {
    return this.caps
      .map(({ id, offset, length, extended, readonly }) => ({ id, offset, length, extended, readonly }))
      .sort((a, b) => Number(a.extended) - Number(b.extended) || a.offset - b.offset);
  }

  /** Offset of the first capability with this id, or undefined. */
  findCapability(id: number, extended = false): number | undefined {
    return this.capabilities.find((c) => c.id === id && c.extended === extended)?.offset;
  }

  /** Copies of the per-byte masks: bits the guest may write, bits it clears by writing 1. */
  masks(): {
    /** Writable bits. */
    wmask: Buffer;
    /** Write-1-to-clear bits. */
    w1cmask: Buffer;
  } {
    return { wmask: Buffer.from(this.wmask), w1cmask: Buffer.from(this.w1cmask) };
  }

  /** Byte ranges [start, end) where any guest write is refused with EPERM. */
  get protectedRegions(): readonly (readonly [number, number])[] {
    return this.protectedRanges.map(([s, e]) => [s, e] as const);
  }

  // ---- internals --------------------------------------------------------

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset > this.size || length > this.size - offset) {
      fail(Errno.EINVAL, `config access of ${String(length)} bytes at ${String(offset)} is outside [0, ${this.size})`);
    }
  }

  private barAddress(index: number): bigint {
    const b = this.bars[index]!;
    const off = barOffset(index);
    const lo = this.config.readUInt32LE(off) & ~(b.kind === 'io' ? BarFlag.IO_FLAGS_MASK : BarFlag.MEM_FLAGS_MASK);
    const hi = b.is64 ? BigInt(this.config.readUInt32LE(off + 4)) : 0n;
    return (hi << 32n) | BigInt(lo >>> 0);
  }

  private clearBarDword(index: number): void {
    const off = barOffset(index);
    this.init32(off, 0);
    this.fill(this.wmask, off, 4, 0);
  }

  /** Places a capability, protects its header, links the chain and returns its offset. */
  private addCap(id: number, length: number, extended: boolean, at: number | undefined, readonly = false, headerLen?: number): number {
    const off = this.place(length, extended, at);
    this.caps.push({ id, offset: off, length, alloc: align4(length), extended, readonly });
    const hdr = headerLen ?? (extended ? 4 : 2);
    this.protectedRanges.push([off, off + (readonly ? length : hdr)]);
    if (extended) this.init32(off, extCapHeader(id, 1, 0));
    else this.init8(off, id);
    this.relink(extended);
    return off;
  }

  private place(length: number, extended: boolean, at: number | undefined): number {
    if (extended && !this.express) fail(Errno.EINVAL, 'extended capabilities need a PCI Express (4 KiB) config space');
    const lo = extended ? PCIE_EXT_CAP_START : PCI_STD_HEADER_SIZE;
    const hi = extended ? this.size : PCI_CFG_SIZE;
    const alloc = align4(length);
    const clash = (a: number): CapRecord | undefined => this.caps.find((c) => overlaps(a, a + alloc, c.offset, c.offset + c.alloc));
    if (at !== undefined) {
      if (!Number.isInteger(at) || at % 4 !== 0 || at < lo || at >= hi) {
        fail(Errno.EINVAL, `capability offset ${String(at)} must be dword aligned in [0x${lo.toString(16)}, 0x${hi.toString(16)})`);
      }
      if (at + alloc > hi) fail(Errno.ENOSPC, `capability of ${length} bytes does not fit at 0x${at.toString(16)}`);
      const c = clash(at);
      if (c) fail(Errno.EINVAL, `capability at 0x${at.toString(16)} overlaps the one at 0x${c.offset.toString(16)}`);
      // The extended chain has no pointer register: it starts at 0x100.
      if (extended && at !== lo && !this.caps.some((x) => x.extended && x.offset === lo)) {
        fail(Errno.EINVAL, `the first extended capability must be at 0x${lo.toString(16)}`);
      }
      return at;
    }
    for (let a = lo; a + alloc <= hi; ) {
      const c = clash(a);
      if (!c) return a;
      a = c.offset + c.alloc;
    }
    fail(Errno.ENOSPC, `no room for a capability of ${length} bytes`);
  }

  /** Rewrites next pointers in offset order, so the chain only moves forward. */
  private relink(extended: boolean): void {
    const list = this.caps.filter((c) => c.extended === extended).sort((a, b) => a.offset - b.offset);
    if (extended) {
      list.forEach((c, i) => {
        const version = (this.config.readUInt32LE(c.offset) >>> 16) & 0xf;
        this.init32(c.offset, extCapHeader(c.id, version, list[i + 1]?.offset ?? 0));
      });
      return;
    }
    this.init8(Cfg.CAP_PTR, list[0]?.offset ?? 0);
    list.forEach((c, i) => this.init8(c.offset + 1, list[i + 1]?.offset ?? 0));
    for (const b of [this.config, this.powerOn]) b[Cfg.STATUS] = b[Cfg.STATUS]! | (list.length > 0 ? PciStatus.CAP_LIST : 0);
  }

  private watchVendor(off: number, bodyAt: number, len: number): void {
    this.watch(off + bodyAt, len - bodyAt, {
      after: (w, queue) => {
        const start = Math.max(w.offset, off + bodyAt);
        const end = Math.min(w.end, off + len);
        const data = Buffer.from(w.data.subarray(start - w.offset, end - w.offset));
        queue.push(() => this.emit('vendorWrite', off, start - off, data));
      },
    });
  }

  private watch(start: number, length: number, w: Omit<Watcher, 'start' | 'end'>): void {
    if (length > 0) this.watchers.push({ start, end: start + length, ...w });
  }

  private before16(w: WriteView, at: number): number {
    const byte = (a: number): number => (a >= w.offset && a < w.end ? w.before[a - w.offset]! : this.config[a]!);
    return byte(at) | (byte(at + 1) << 8);
  }

  private init8(off: number, v: number): void {
    this.config.writeUInt8(v, off);
    this.powerOn.writeUInt8(v, off);
  }
  private init16(off: number, v: number): void {
    this.config.writeUInt16LE(v, off);
    this.powerOn.writeUInt16LE(v, off);
  }
  private init32(off: number, v: number): void {
    this.config.writeUInt32LE(v >>> 0, off);
    this.powerOn.writeUInt32LE(v >>> 0, off);
  }
  private initBytes(off: number, b: Buffer | Uint8Array): void {
    this.config.set(b, off);
    this.powerOn.set(b, off);
  }
  /** Writes an n-byte little-endian mask value. */
  private mask(buf: Buffer, off: number, n: number, v: number): void {
    const u = v >>> 0;
    for (let i = 0; i < n; i++) buf[off + i] = (u >>> (8 * i)) & 0xff;
  }
  private fill(buf: Buffer, off: number, n: number, v: number): void {
    buf.fill(v, off, off + n);
  }
}
