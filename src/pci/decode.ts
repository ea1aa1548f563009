// Reads PCI configuration bytes back into a structured description (what
// `vfu lspci` prints).  Pure: it only looks at the bytes, and it never trusts
// them: pointer loops, pointers into the header or past the end, and
// truncated capabilities end the walk with a note instead of an exception.
import {
  BarFlag,
  CapId,
  Cfg,
  Dsn,
  Exp,
  ExtCapHeader,
  ExtCapId,
  HeaderType,
  Msi,
  Msix,
  PCIE_EXT_CAP_START,
  PCI_CFG_SIZE,
  PCI_STD_HEADER_SIZE,
  PciStatus,
  Pm,
  ROM_ADDRESS_MASK,
  ROM_ENABLE,
  Vndr,
  Vsec,
  capName,
  extCapName,
  msiCapSize,
  pcieDeviceTypeName,
  pcieTypeHasLink,
  powerStateNames,
  type PowerState,
} from './constants.js';
import { type MsixCapability, decodeMsixCapability } from './msix.js';

export interface DecodeOptions {
  /** Region sizes per BAR index: the bytes alone cannot tell them. */
  barSizes?: readonly (number | undefined)[];
  romSize?: number;
}

export interface DecodedBar {
  index: number;
  kind: 'io' | 'mem';
  is64: boolean;
  prefetchable: boolean;
  address: bigint;
  /** The register as read (low dword). */
  raw: number;
  size?: number;
}
export interface DecodedRom {
  address: number;
  enabled: boolean;
  raw: number;
  size?: number;
}

export interface PmDetail {
  kind: 'pm';
  version: number;
  d1: boolean;
  d2: boolean;
  pmeSupport: number;
  powerState: PowerState;
  powerStateName: string;
  noSoftReset: boolean;
  pmeEnabled: boolean;
  pmeStatus: boolean;
}
export interface MsiDetail {
  kind: 'msi';
  enabled: boolean;
  is64: boolean;
  perVectorMask: boolean;
  vectorsCapable: number;
  vectorsEnabled: number;
  address: bigint;
  data: number;
  mask?: number;
  pending?: number;
}
export interface MsixDetail extends MsixCapability {
  kind: 'msix';
}
export interface PcieLink {
  maxSpeed: string;
  maxWidth: number;
  speed: string;
  width: number;
}
export interface ExpressDetail {
  kind: 'express';
  version: number;
  deviceType: number;
  deviceTypeName: string;
  slotImplemented: boolean;
  interruptMessage: number;
  flrCapable: boolean;
  maxPayloadSupported: number;
  maxPayload: number;
  maxReadRequest: number;
  devCtl: number;
  devStatus: number;
  link?: PcieLink;
}
export interface VendorDetail {
  kind: 'vendor';
  length: number;
  body: Buffer;
}
export interface DsnDetail {
  kind: 'dsn';
  serial: bigint;
  /** Most significant byte first, as lspci prints it. */
  text: string;
}
export interface VsecDetail {
  kind: 'vsec';
  vsecId: number;
  vsecRev: number;
  vsecLength: number;
  body: Buffer;
}
export type CapDetail = PmDetail | MsiDetail | MsixDetail | ExpressDetail | VendorDetail | DsnDetail | VsecDetail;

export interface DecodedCap {
  offset: number;
  id: number;
  name: string;
  extended: boolean;
  /** Extended capabilities only. */
  version?: number;
  next: number;
  detail?: CapDetail;
  note?: string;
}

export interface PciDescription {
  size: number;
  vendorId: number;
  deviceId: number;
  command: number;
  commandFlags: string[];
  status: number;
  statusFlags: string[];
  revision: number;
  classCode: number;
  className: string;
  headerType: number;
  multiFunction: boolean;
  subsystemVendorId: number;
  subsystemId: number;
  bars: DecodedBar[];
  rom?: DecodedRom;
  interruptPin: number;
  /** 'INTA'..'INTD', 'none' or 'invalid'. */
  interruptPinName: string;
  interruptLine: number;
  capabilities: DecodedCap[];
  extendedCapabilities: DecodedCap[];
  /** What looked wrong, in reading order. */
  notes: string[];
}

const baseClassNames: Record<number, string> = {
  0x00: 'Unclassified device',
  0x01: 'Mass storage controller',
  0x02: 'Network controller',
  0x03: 'Display controller',
  0x04: 'Multimedia controller',
  0x05: 'Memory controller',
  0x06: 'Bridge',
  0x07: 'Communication controller',
  0x08: 'Generic system peripheral',
  0x09: 'Input device controller',
  0x0a: 'Docking station',
  0x0b: 'Processor',
  0x0c: 'Serial bus controller',
  0x0d: 'Wireless controller',
  0x0e: 'Intelligent controller',
  0x0f: 'Satellite communications controller',
  0x10: 'Encryption controller',
  0x11: 'Signal processing controller',
  0x12: 'Processing accelerators',
  0x13: 'Non-Essential Instrumentation',
  0x40: 'Coprocessor',
  0xff: 'Unassigned class',
};
const subClassNames: Record<number, string> = {
  0x0000: 'Non-VGA unclassified device',
  0x0001: 'VGA compatible unclassified device',
  0x0100: 'SCSI storage controller',
  0x0101: 'IDE interface',
  0x0104: 'RAID bus controller',
  0x0106: 'SATA controller',
  0x0107: 'Serial Attached SCSI controller',
  0x0108: 'Non-Volatile memory controller',
  0x0180: 'Mass storage controller',
  0x0200: 'Ethernet controller',
  0x0280: 'Network controller',
  0x0300: 'VGA compatible controller',
  0x0302: '3D controller',
  0x0380: 'Display controller',
  0x0401: 'Multimedia audio controller',
  0x0403: 'Audio device',
  0x0500: 'RAM memory',
  0x0600: 'Host bridge',
  0x0601: 'ISA bridge',
  0x0604: 'PCI bridge',
  0x0680: 'Bridge',
  0x0700: 'Serial controller',
  0x0780: 'Communication controller',
  0x0880: 'System peripheral',
  0x0c03: 'USB controller',
  0x0c05: 'SMBus',
  0x1200: 'Processing accelerators',
};

/** A name for a 24-bit class code (base, subclass, prog-if); prog-if is ignored. */
export function className(classCode: number): string {
  const base = (classCode >>> 16) & 0xff;
  const sub = (classCode >>> 8) & 0xff;
  return subClassNames[(base << 8) | sub] ?? baseClassNames[base] ?? `Unknown class 0x${base.toString(16).padStart(2, '0')}`;
}

const commandBitNames = ['I/O', 'Mem', 'BusMaster', 'SpecCycle', 'MemWINV', 'VGASnoop', 'ParErr', 'Stepping', 'SERR', 'FastB2B', 'DisINTx'];
const linkSpeeds = ['', '2.5GT/s', '5GT/s', '8GT/s', '16GT/s', '32GT/s', '64GT/s'];
function linkSpeed(code: number): string {
  return linkSpeeds[code] || `unknown (${code})`;
}

function hex(n: number, width = 2): string {
  return `0x${n.toString(16).padStart(width, '0')}`;
}

/** Bounds-aware little-endian reads; bytes past the end read as 0. */
class Bytes {
  constructor(private readonly b: Buffer) {}
  get length(): number {
    return this.b.length;
  }
  has(at: number, n: number): boolean {
    return at >= 0 && at + n <= this.b.length;
  }
  u8(at: number): number {
    return this.has(at, 1) ? this.b.readUInt8(at) : 0;
  }
  u16(at: number): number {
    return this.has(at, 2) ? this.b.readUInt16LE(at) : 0;
  }
  u32(at: number): number {
    return this.has(at, 4) ? this.b.readUInt32LE(at) : 0;
  }
  slice(at: number, end: number): Buffer {
    return Buffer.from(this.b.subarray(Math.max(0, at), Math.min(end, this.b.length)));
  }
}

export function decodeConfigSpace(input: Uint8Array, opts: DecodeOptions = {}): PciDescription {
  const notes: string[] = [];
  const b = new Bytes(Buffer.from(input.buffer, input.byteOffset, input.byteLength));
  if (b.length < PCI_STD_HEADER_SIZE) notes.push(`only ${b.length} bytes: the header is truncated (missing bytes read as 0)`);

  const command = b.u16(Cfg.COMMAND);
  const status = b.u16(Cfg.STATUS);
  const classCode = b.u8(Cfg.CLASS_PROG) | (b.u16(Cfg.CLASS_SUB) << 8);
  const headerByte = b.u8(Cfg.HEADER_TYPE);
  const headerType = headerByte & 0x7f;
  const pin = b.u8(Cfg.INT_PIN);

  const desc: PciDescription = {
    size: b.length,
    vendorId: b.u16(Cfg.VENDOR_ID),
    deviceId: b.u16(Cfg.DEVICE_ID),
    command,
    commandFlags: commandBitNames.filter((_, i) => (command & (1 << i)) !== 0),
    status,
    statusFlags: statusFlags(status),
    revision: b.u8(Cfg.REVISION),
    classCode,
    className: className(classCode),
    headerType,
    multiFunction: (headerByte & HeaderType.MULTI_FUNCTION) !== 0,
    subsystemVendorId: headerType === HeaderType.NORMAL ? b.u16(Cfg.SUBSYS_VENDOR) : 0,
    subsystemId: headerType === HeaderType.NORMAL ? b.u16(Cfg.SUBSYS_ID) : 0,
    bars: [],
    interruptPin: pin,
    interruptPinName: pin === 0 ? 'none' : pin <= 4 ? `INT${'ABCD'[pin - 1]}` : 'invalid',
    interruptLine: b.u8(Cfg.INT_LINE),
    capabilities: [],
    extendedCapabilities: [],
    notes,
  };
  if (desc.vendorId === 0xffff) notes.push('vendor id 0xffff: no function responds here');

  // Bridges have two BARs and their ROM at 0x38; CardBus has neither.
  const nbars = headerType === HeaderType.NORMAL ? 6 : headerType === HeaderType.BRIDGE ? 2 : 0;
  if (headerType > HeaderType.CARDBUS) notes.push(`unknown header type ${headerType}`);
  else if (headerType !== HeaderType.NORMAL) notes.push(`header type ${headerType}: only BARs and capabilities are decoded`);
  desc.bars = decodeBars(b, nbars, opts, notes);
  const romAt = headerType === HeaderType.NORMAL ? Cfg.ROM : headerType === HeaderType.BRIDGE ? 0x38 : -1;
  if (romAt >= 0) {
    const raw = b.u32(romAt);
    if (raw !== 0 || opts.romSize) {
      desc.rom = { address: (raw & ROM_ADDRESS_MASK) >>> 0, enabled: (raw & ROM_ENABLE) !== 0, raw };
      if (opts.romSize) desc.rom.size = opts.romSize;
    }
  }

  if (status & PciStatus.CAP_LIST) {
    const ptrAt = headerType === HeaderType.CARDBUS ? 0x14 : Cfg.CAP_PTR;
    desc.capabilities = walkStandard(b, b.u8(ptrAt) & 0xfc, notes);
  }
  if (b.length > PCI_CFG_SIZE) desc.extendedCapabilities = walkExtended(b, notes);
  return desc;
}

function statusFlags(s: number): string[] {
  const out: string[] = [];
  const named: [number, string][] = [
    [PciStatus.INTERRUPT, 'INTx'],
    [PciStatus.CAP_LIST, 'Cap'],
    [PciStatus.MHZ66, '66MHz'],
    [PciStatus.UDF, 'UDF'],
    [PciStatus.FAST_BACK, 'FastB2B'],
    [PciStatus.PARITY, 'ParErr'],
    [PciStatus.SIG_TARGET_ABORT, '>TAbort'],
    [PciStatus.REC_TARGET_ABORT, '<TAbort'],
    [PciStatus.REC_MASTER_ABORT, '<MAbort'],
    [PciStatus.SIG_SYSTEM_ERROR, '>SERR'],
    [PciStatus.DETECTED_PARITY, '<PERR'],
  ];
  for (const [bit, name] of named) if (s & bit) out.push(name);
  const devsel = (s & PciStatus.DEVSEL_MASK) >> 9;
  out.push(`DEVSEL=${['fast', 'medium', 'slow', '??'][devsel]}`);
  return out;
}

function decodeBars(b: Bytes, nbars: number, opts: DecodeOptions, notes: string[]): DecodedBar[] {
  const bars: DecodedBar[] = [];
  for (let i = 0; i < nbars; i++) {
    const raw = b.u32(Cfg.BAR0 + 4 * i);
    const size = opts.barSizes?.[i];
    if (raw === 0 && !size) continue;
    let bar: DecodedBar;
    if (raw & BarFlag.IO) {
      bar = { index: i, kind: 'io', is64: false, prefetchable: false, address: BigInt((raw & ~BarFlag.IO_FLAGS_MASK) >>> 0), raw };
    } else {
      const type = raw & BarFlag.MEM_TYPE_MASK;
      let is64 = type === BarFlag.MEM_TYPE_64;
      if (type !== BarFlag.MEM_TYPE_32 && !is64) notes.push(`BAR${i}: reserved memory type ${type >> 1}`);
      if (is64 && i === nbars - 1) {
        notes.push(`BAR${i}: 64-bit BAR without an upper half`);
        is64 = false;
      }
      let address = BigInt((raw & ~BarFlag.MEM_FLAGS_MASK) >>> 0);
      if (is64) address |= BigInt(b.u32(Cfg.BAR0 + 4 * (i + 1))) << 32n;
      bar = { index: i, kind: 'mem', is64, prefetchable: (raw & BarFlag.PREFETCH) !== 0, address, raw };
    }
    if (size) bar.size = size;
    bars.push(bar);
    if (bar.is64) i++;
  }
  return bars;
}

function walkStandard(b: Bytes, first: number, notes: string[]): DecodedCap[] {
  const caps: DecodedCap[] = [];
  const seen = new Set<number>();
  const end = Math.min(b.length, PCI_CFG_SIZE);
  for (let ptr = first; ptr !== 0; ) {
    if (ptr < PCI_STD_HEADER_SIZE) {
      notes.push(`capability pointer ${hex(ptr)} points into the header`);
      break;
    }
    if (ptr + 2 > end) {
      notes.push(`capability pointer ${hex(ptr)} is past the end`);
      break;
    }
    if (seen.has(ptr)) {
      notes.push(`capability chain loops back to ${hex(ptr)}`);
      break;
    }
    seen.add(ptr);
    const id = b.u8(ptr);
    const next = b.u8(ptr + 1) & 0xfc;
    const cap: DecodedCap = { offset: ptr, id, name: capName(id), extended: false, next };
    decodeStandardCap(b, cap, end);
    if (cap.note) notes.push(`capability ${hex(ptr)}: ${cap.note}`);
    caps.push(cap);
    ptr = next;
  }
  return caps;
}

function decodeStandardCap(b: Bytes, cap: DecodedCap, end: number): void {
  const at = cap.offset;
  const fits = (n: number): boolean => {
    if (at + n <= end) return true;
    cap.note = `truncated: needs ${n} bytes`;
    return false;
  };
  switch (cap.id) {
    case CapId.PM: {
      if (!fits(Pm.SIZE)) return;
      const pmc = b.u16(at + Pm.PMC);
      const csr = b.u16(at + Pm.PMCSR);
      const state = (csr & Pm.CSR_STATE_MASK) as PowerState;
      cap.detail = {
        kind: 'pm',
        version: pmc & Pm.PMC_VERSION_MASK,
        d1: (pmc & Pm.PMC_D1) !== 0,
        d2: (pmc & Pm.PMC_D2) !== 0,
        pmeSupport: (pmc & Pm.PMC_PME_MASK) >> Pm.PMC_PME_SHIFT,
        powerState: state,
        powerStateName: powerStateNames[state],
        noSoftReset: (csr & Pm.CSR_NO_SOFT_RESET) !== 0,
        pmeEnabled: (csr & Pm.CSR_PME_ENABLE) !== 0,
        pmeStatus: (csr & Pm.CSR_PME_STATUS) !== 0,
      };
      return;
    }
    case CapId.MSI: {
      if (!fits(4)) return;
      const ctl = b.u16(at + Msi.CONTROL);
      const is64 = (ctl & Msi.CTRL_64BIT) !== 0;
      const pvm = (ctl & Msi.CTRL_PVM) !== 0;
      if (!fits(msiCapSize(is64, pvm))) return;
      const mmc = (ctl & Msi.CTRL_MMC_MASK) >> Msi.CTRL_MMC_SHIFT;
      const mme = (ctl & Msi.CTRL_MME_MASK) >> Msi.CTRL_MME_SHIFT;
      const lo = BigInt(b.u32(at + Msi.ADDRESS_LO));
      const hi = is64 ? BigInt(b.u32(at + Msi.ADDRESS_HI)) : 0n;
      const d: MsiDetail = {
        kind: 'msi',
        enabled: (ctl & Msi.CTRL_ENABLE) !== 0,
        is64,
        perVectorMask: pvm,
        vectorsCapable: 1 << mmc,
        vectorsEnabled: 1 << mme,
        address: (hi << 32n) | lo,
        data: b.u16(at + (is64 ? Msi.DATA_64 : Msi.DATA_32)),
      };
      if (pvm) {
        d.mask = b.u32(at + (is64 ? Msi.MASK_64 : Msi.MASK_32));
        d.pending = b.u32(at + (is64 ? Msi.PENDING_64 : Msi.PENDING_32));
      }
      if (mmc > 5) cap.note = `reserved Multiple Message Capable value ${mmc}`;
      else if (mme > mmc) cap.note = `${1 << mme} vectors enabled but ${1 << mmc} capable`;
      cap.detail = d;
      return;
    }
    case CapId.MSIX: {
      if (!fits(Msix.SIZE)) return;
      cap.detail = { kind: 'msix', ...decodeMsixCapability(b.u16(at + Msix.CONTROL), b.u32(at + Msix.TABLE), b.u32(at + Msix.PBA)) };
      return;
    }
    case CapId.EXP: {
      // Version 1 capabilities may stop after the link registers.
      if (!fits(Exp.LNKCAP)) return;
      const flags = b.u16(at + Exp.FLAGS);
      const type = (flags & Exp.FLAGS_TYPE_MASK) >> Exp.FLAGS_TYPE_SHIFT;
      const devCap = b.u32(at + Exp.DEVCAP);
      const devCtl = b.u16(at + Exp.DEVCTL);
      const d: ExpressDetail = {
        kind: 'express',
        version: flags & Exp.FLAGS_VERSION_MASK,
        deviceType: type,
        deviceTypeName: pcieDeviceTypeName(type),
        slotImplemented: (flags & Exp.FLAGS_SLOT) !== 0,
        interruptMessage: (flags & Exp.FLAGS_IRQ_MASK) >> Exp.FLAGS_IRQ_SHIFT,
        flrCapable: (devCap & Exp.DEVCAP_FLR) !== 0,
        maxPayloadSupported: 128 << Math.min(devCap & Exp.DEVCAP_PAYLOAD_MASK, 5),
        maxPayload: 128 << Math.min((devCtl & Exp.DEVCTL_PAYLOAD_MASK) >> Exp.DEVCTL_PAYLOAD_SHIFT, 5),
        maxReadRequest: 128 << Math.min((devCtl & Exp.DEVCTL_READRQ_MASK) >> Exp.DEVCTL_READRQ_SHIFT, 5),
        devCtl,
        devStatus: b.u16(at + Exp.DEVSTA),
      };
      if (pcieTypeHasLink(type) && at + Exp.SLTCAP <= end) {
        const lnkCap = b.u32(at + Exp.LNKCAP);
        const lnkSta = b.u16(at + Exp.LNKSTA);
        d.link = {
          maxSpeed: linkSpeed(lnkCap & Exp.LNK_SPEED_MASK),
          maxWidth: (lnkCap & Exp.LNK_WIDTH_MASK) >> Exp.LNK_WIDTH_SHIFT,
          speed: linkSpeed(lnkSta & Exp.LNK_SPEED_MASK),
          width: (lnkSta & Exp.LNK_WIDTH_MASK) >> Exp.LNK_WIDTH_SHIFT,
        };
      }
      if (d.version >= 2 && at + Exp.SIZE_V2 > end) cap.note = 'version 2 capability truncated';
      cap.detail = d;
      return;
    }
    case CapId.VNDR: {
      if (!fits(Vndr.BODY)) return;
      const length = b.u8(at + Vndr.LENGTH);
      if (length < Vndr.BODY) cap.note = `vendor capability length ${length} is shorter than its header`;
      else if (at + length > end) cap.note = `vendor capability length ${length} runs past the end`;
      cap.detail = { kind: 'vendor', length, body: b.slice(at + Vndr.BODY, Math.min(at + length, end)) };
      return;
    }
  }
}

function walkExtended(b: Bytes, notes: string[]): DecodedCap[] {
  const caps: DecodedCap[] = [];
  const seen = new Set<number>();
  for (let ptr = PCIE_EXT_CAP_START; ; ) {
    if (!b.has(ptr, ExtCapHeader.SIZE)) {
      notes.push(`extended capability pointer ${hex(ptr, 3)} is past the end`);
      break;
    }
    const header = b.u32(ptr);
    // An all-zero header at 0x100 is how a device says it has none.
    if (header === 0 && ptr === PCIE_EXT_CAP_START) break;
    if (header === 0xffffffff) {
      notes.push(`extended capability header at ${hex(ptr, 3)} reads as all ones`);
      break;
    }
    seen.add(ptr);
    const id = header & ExtCapHeader.ID_MASK;
    const version = (header >>> ExtCapHeader.VERSION_SHIFT) & ExtCapHeader.VERSION_MASK;
    const next = (header >>> ExtCapHeader.NEXT_SHIFT) & 0xffc;
    const cap: DecodedCap = { offset: ptr, id, name: extCapName(id), extended: true, version, next };
    decodeExtendedCap(b, cap);
    if (cap.note) notes.push(`extended capability ${hex(ptr, 3)}: ${cap.note}`);
    caps.push(cap);
    if (next === 0) break;
    if (next < PCIE_EXT_CAP_START) {
      notes.push(`extended capability pointer ${hex(next, 3)} points below 0x100`);
      break;
    }
    if (seen.has(next)) {
      notes.push(`extended capability chain loops back to ${hex(next, 3)}`);
      break;
    }
    ptr = next;
  }
  return caps;
}

function decodeExtendedCap(b: Bytes, cap: DecodedCap): void {
  const at = cap.offset;
  switch (cap.id) {
    case ExtCapId.DSN: {
      if (!b.has(at, Dsn.SIZE)) {
        cap.note = `truncated: needs ${Dsn.SIZE} bytes`;
        return;
      }
      const serial = (BigInt(b.u32(at + Dsn.SERIAL_HI)) << 32n) | BigInt(b.u32(at + Dsn.SERIAL_LO));
      const text = serial
        .toString(16)
        .padStart(16, '0')
        .match(/../g)!
        .join('-');
      cap.detail = { kind: 'dsn', serial, text };
      return;
    }
    case ExtCapId.VNDR: {
      if (!b.has(at, Vsec.BODY)) {
        cap.note = `truncated: needs ${Vsec.BODY} bytes`;
        return;
      }
      const h = b.u32(at + Vsec.HEADER);
      const vsecLength = h >>> 20;
      if (vsecLength < Vsec.BODY) cap.note = `VSEC length ${vsecLength} is shorter than its headers`;
      else if (!b.has(at, vsecLength)) cap.note = `VSEC length ${vsecLength} runs past the end`;
      cap.detail = {
        kind: 'vsec',
        vsecId: h & 0xffff,
        vsecRev: (h >>> 16) & 0xf,
        vsecLength,
        body: b.slice(at + Vsec.BODY, at + Math.max(vsecLength, Vsec.BODY)),
      };
      return;
    }
  }
}

/** A short lspci-like text rendering of a description. */
export function formatDescription(d: PciDescription): string {
  const h4 = (n: number): string => n.toString(16).padStart(4, '0');
  const lines = [
    `${d.className} [${d.classCode.toString(16).padStart(6, '0')}]: device ${h4(d.vendorId)}:${h4(d.deviceId)} (rev ${d.revision.toString(16).padStart(2, '0')})`,
    `\tSubsystem: ${h4(d.subsystemVendorId)}:${h4(d.subsystemId)}`,
    `\tControl: ${d.commandFlags.join(' ') || '-'}`,
    `\tStatus: ${d.statusFlags.join(' ')}`,
  ];
  if (d.interruptPin) lines.push(`\tInterrupt: pin ${d.interruptPinName.slice(3)} routed to IRQ ${d.interruptLine}`);
  for (const bar of d.bars) {
    const kind = bar.kind === 'io' ? 'I/O ports' : `Memory (${bar.is64 ? '64-bit' : '32-bit'}, ${bar.prefetchable ? 'prefetchable' : 'non-prefetchable'})`;
    lines.push(`\tRegion ${bar.index}: ${kind} at ${bar.address.toString(16)}${bar.size ? ` [size=${bar.size}]` : ''}`);
  }
  if (d.rom) lines.push(`\tExpansion ROM at ${d.rom.address.toString(16)} [${d.rom.enabled ? 'enabled' : 'disabled'}]${d.rom.size ? ` [size=${d.rom.size}]` : ''}`);
  for (const c of [...d.capabilities, ...d.extendedCapabilities]) {
    lines.push(`\tCapabilities: [${c.offset.toString(16)}${c.extended ? ` v${c.version}` : ''}] ${c.name}${capSummary(c.detail)}`);
  }
  for (const n of d.notes) lines.push(`\tNote: ${n}`);
  return lines.join('\n');
}

function capSummary(d: CapDetail | undefined): string {
  if (!d) return '';
  switch (d.kind) {
    case 'pm':
      return ` version ${d.version}, ${d.powerStateName}${d.pmeEnabled ? ', PME enabled' : ''}`;
    case 'msi':
      return `: Enable${d.enabled ? '+' : '-'} Count=${d.vectorsEnabled}/${d.vectorsCapable} ${d.is64 ? '64bit' : '32bit'}${d.perVectorMask ? ' Maskable' : ''}`;
    case 'msix':
      return `: Enable${d.enabled ? '+' : '-'} Count=${d.tableSize} Masked${d.functionMasked ? '+' : '-'} Table: BAR${d.tableBar} +${d.tableOffset.toString(16)} PBA: BAR${d.pbaBar} +${d.pbaOffset.toString(16)}`;
    case 'express':
      return ` v${d.version} ${d.deviceTypeName}${d.flrCapable ? ', FLR' : ''}${d.link ? `, link ${d.link.speed} x${d.link.width}` : ''}`;
    case 'vendor':
      return ` Len=${d.length}`;
    case 'dsn':
      return ` ${d.text}`;
    case 'vsec':
      return `: ID=${d.vsecId.toString(16).padStart(4, '0')} Rev=${d.vsecRev} Len=${d.vsecLength}`;
  }
}
