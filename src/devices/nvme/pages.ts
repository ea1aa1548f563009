// The data structures the controller returns to the host: Identify pages
// (controller, namespace, active namespace list, namespace identification
// descriptors) and log pages (SMART/Health, Firmware Slot, Commands
// Supported and Effects).  Pure functions of the controller's state.
import { AdminOp, IoOp, NVME_VS_1_4 } from './constants.js';

/** What identifies the controller and its one namespace. */
export interface NvmeIdentity {
  vendorId: number;
  subsystemVendorId: number;
  serial: string;
  model: string;
  firmware: string;
  /** 16 bytes: NGUID; its first 8 also make the EUI-64, all 16 the UUID. */
  nsGuid: Buffer;
  subnqn: string;
}

/** Controller capabilities reported in Identify Controller. */
export interface NvmeLimits {
  /** Maximum data transfer, as a power of two of 4 KiB pages. */
  mdts: number;
  /** Number of namespaces (we have one). */
  namespaces: number;
  /** Outstanding Async Event Requests allowed (1-based). */
  aerLimit: number;
  /** Error log entries kept (1-based). */
  errorLogEntries: number;
  /** Whether Doorbell Buffer Config is offered (OACS bit 8). */
  shadowDoorbells: boolean;
  /** Maximum outstanding commands per queue hint (MAXCMD), 0: none. */
  maxCmd: number;
}

/** ONCS: Dataset Management, Write Zeroes, Timestamp. */
export const ONCS = (1 << 2) | (1 << 3) | (1 << 6);
/** Composite temperature we report (Kelvin): 40 degrees C. */
export const COMPOSITE_TEMP_K = 313;
/** Warning and critical composite temperature thresholds (Kelvin). */
export const WCTEMP_K = 343;
export const CCTEMP_K = 358;

function ascii(buf: Buffer, at: number, len: number, s: string): void {
  buf.fill(0x20, at, at + len);
  buf.write(s.slice(0, len), at, 'latin1');
}

export function identifyController(id: NvmeIdentity, lim: NvmeLimits): Buffer {
  const b = Buffer.alloc(4096);
  b.writeUInt16LE(id.vendorId, 0);
  b.writeUInt16LE(id.subsystemVendorId, 2);
  ascii(b, 4, 20, id.serial);
  ascii(b, 24, 40, id.model);
  ascii(b, 64, 8, id.firmware);
  b[72] = 6; // RAB: recommended arbitration burst (2^6)
  b[77] = lim.mdts;
  b.writeUInt16LE(1, 78); // CNTLID
  b.writeUInt32LE(NVME_VS_1_4, 80);
  b.writeUInt32LE(1 << 8, 92); // OAES: namespace attribute notices (never sent)
  b[111] = 1; // CNTRLTYPE: I/O controller
  b.writeUInt16LE(lim.shadowDoorbells ? 1 << 8 : 0, 256); // OACS
  b[258] = 3; // ACL: 4 concurrent Aborts
  b[259] = lim.aerLimit - 1; // AERL
  b[260] = 0x03; // FRMW: slot 1 read-only, one slot
  b[261] = (1 << 1) | (1 << 2); // LPA: effects log, extended data
  b[262] = lim.errorLogEntries - 1; // ELPE
  b[263] = 0; // NPSS: one power state
  b.writeUInt16LE(WCTEMP_K, 266);
  b.writeUInt16LE(CCTEMP_K, 268);
  b.writeUInt16LE(1, 320); // KAS: 100 ms granularity
  b[512] = 0x66; // SQES
  b[513] = 0x44; // CQES
  b.writeUInt16LE(lim.maxCmd, 514);
  b.writeUInt32LE(lim.namespaces, 516); // NN
  b.writeUInt16LE(ONCS, 520);
  b[525] = 1; // VWC present
  b.writeUInt16LE(0, 526); // AWUN
  b.writeUInt32LE(0, 532); // SGLS: PRPs only
  b.write(id.subnqn.slice(0, 255), 768, 'latin1');
  // Power state 0: 25 W max (centiwatts), operational, latencies unreported.
  b.writeUInt16LE(2500, 2048);
  return b;
}

export function identifyNamespace(id: NvmeIdentity, blocks: number, lbaShift: number): Buffer {
  const b = Buffer.alloc(4096);
  const big = BigInt(blocks);
  b.writeBigUInt64LE(big, 0); // NSZE
  b.writeBigUInt64LE(big, 8); // NCAP
  b.writeBigUInt64LE(big, 16); // NUSE
  b[24] = 0; // NSFEAT
  b[25] = 0; // NLBAF: one format
  b[26] = 0; // FLBAS: format 0
  b[33] = 1 | (1 << 3); // DLFEAT: deallocated blocks read as zeros; Write Zeroes may deallocate
  id.nsGuid.copy(b, 104, 0, 16); // NGUID
  id.nsGuid.copy(b, 120, 0, 8); // EUI64
  b.writeUInt32LE(lbaShift << 16, 128); // LBAF0: no metadata, LBADS, best performance
  return b;
}

/** Active namespace IDs greater than `after` (we have only NSID 1). */
export function activeNamespaceList(after: number): Buffer {
  const b = Buffer.alloc(4096);
  if (after < 1) b.writeUInt32LE(1, 0);
  return b;
}

/** Namespace Identification Descriptors: EUI-64, NGUID, UUID. */
export function namespaceDescriptors(id: NvmeIdentity): Buffer {
  const b = Buffer.alloc(4096);
  let at = 0;
  const put = (type: number, data: Buffer): void => {
    b[at] = type;
    b[at + 1] = data.length;
    data.copy(b, at + 4);
    at += 4 + data.length;
  };
  put(1, id.nsGuid.subarray(0, 8));
  put(2, id.nsGuid.subarray(0, 16));
  const uuid = Buffer.from(id.nsGuid);
  uuid[6] = (uuid[6]! & 0x0f) | 0x80; // version 8 (custom), RFC 9562
  uuid[8] = (uuid[8]! & 0x3f) | 0x80;
  put(3, uuid);
  return b;
}

/** SMART / Health counters (the controller's, migrated with it). */
export interface SmartCounters {
  /** 512-byte units read and written (reported in thousands, rounded up). */
  unitsRead: number;
  unitsWritten: number;
  readCommands: number;
  writeCommands: number;
  powerCycles: number;
  unsafeShutdowns: number;
  mediaErrors: number;
  errorEntries: number;
}

function u128(b: Buffer, at: number, v: number): void {
  b.writeBigUInt64LE(BigInt(Math.floor(v)), at);
}

export function smartLog(c: SmartCounters, criticalWarning: number, poweredOnMs: number): Buffer {
  const b = Buffer.alloc(512);
  b[0] = criticalWarning;
  b.writeUInt16LE(COMPOSITE_TEMP_K, 1);
  b[3] = 100; // available spare
  b[4] = 10; // threshold
  b[5] = 0; // percentage used
  u128(b, 32, Math.ceil(c.unitsRead / 1000));
  u128(b, 48, Math.ceil(c.unitsWritten / 1000));
  u128(b, 64, c.readCommands);
  u128(b, 80, c.writeCommands);
  u128(b, 112, c.powerCycles);
  u128(b, 128, poweredOnMs / 3_600_000);
  u128(b, 144, c.unsafeShutdowns);
  u128(b, 160, c.mediaErrors);
  u128(b, 176, c.errorEntries);
  b.writeUInt16LE(COMPOSITE_TEMP_K, 200); // temperature sensor 1
  return b;
}

export function firmwareSlotLog(firmware: string): Buffer {
  const b = Buffer.alloc(512);
  b[0] = 1; // active: slot 1
  ascii(b, 8, 8, firmware);
  return b;
}

/** Commands Supported and Effects: CSUPP, and LBCC for media writers. */
export function commandEffectsLog(shadowDoorbells: boolean): Buffer {
  const b = Buffer.alloc(4096);
  const CSUPP = 1;
  const LBCC = 2;
  const admin: number[] = [
    AdminOp.DELETE_SQ,
    AdminOp.CREATE_SQ,
    AdminOp.GET_LOG_PAGE,
    AdminOp.DELETE_CQ,
    AdminOp.CREATE_CQ,
    AdminOp.IDENTIFY,
    AdminOp.ABORT,
    AdminOp.SET_FEATURES,
    AdminOp.GET_FEATURES,
    AdminOp.ASYNC_EVENT,
    AdminOp.KEEP_ALIVE,
  ];
  if (shadowDoorbells) admin.push(AdminOp.DOORBELL_BUFFER_CONFIG);
  for (const op of admin) b.writeUInt32LE(CSUPP, op * 4);
  b.writeUInt32LE(CSUPP, 1024 + IoOp.FLUSH * 4);
  b.writeUInt32LE(CSUPP, 1024 + IoOp.READ * 4);
  for (const op of [IoOp.WRITE, IoOp.WRITE_ZEROES, IoOp.DSM]) b.writeUInt32LE(CSUPP | LBCC, 1024 + op * 4);
  return b;
}

/** One Error Information log entry (64 bytes). */
export interface ErrorEntry {
  count: number;
  sqid: number;
  cid: number;
  status: number;
  lba: number;
  nsid: number;
}

export function errorLog(entries: readonly ErrorEntry[], max: number): Buffer {
  const b = Buffer.alloc(64 * max);
  // Newest first.
  for (let i = 0; i < Math.min(entries.length, max); i++) {
    const e = entries[entries.length - 1 - i]!;
    const at = i * 64;
    b.writeBigUInt64LE(BigInt(e.count), at);
    b.writeUInt16LE(e.sqid, at + 8);
    b.writeUInt16LE(e.cid, at + 10);
    b.writeUInt16LE((e.status << 1) & 0xfffe, at + 12);
    b.writeUInt16LE(0xffff, at + 14); // parameter error location: not given
    b.writeBigUInt64LE(BigInt(e.lba), at + 16);
    b.writeUInt32LE(e.nsid, at + 24);
  }
  return b;
}
