// The MSI-X table and Pending Bit Array a device keeps in one of its BARs.
// The server routes BAR accesses that fall on them here; the MSI-X
// capability in config space only says where they are.
import { Errno } from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';
import { Msix } from './constants.js';

/** One MSI-X table entry. */
export interface MsixEntry {
  /** Message address. */
  address: bigint;
  /** Message data. */
  data: number;
  /** The entry's own Mask bit (the function mask is separate). */
  masked: boolean;
}

/** The MSI-X capability's fields as a device and lspci see them. */
export interface MsixCapability {
  /** MSI-X Enable. */
  enabled: boolean;
  /** Function Mask. */
  functionMasked: boolean;
  /** Vectors. */
  tableSize: number;
  /** BAR of the table. */
  tableBar: number;
  /** Offset of the table in it. */
  tableOffset: number;
  /** BAR of the Pending Bit Array. */
  pbaBar: number;
  /** Offset of the PBA in it. */
  pbaOffset: number;
}

/** Decodes the MSI-X capability from its Message Control, Table and PBA words. */
export function decodeMsixCapability(ctl: number, table: number, pba: number): MsixCapability {
  return {
    enabled: (ctl & Msix.CTRL_ENABLE) !== 0,
    functionMasked: (ctl & Msix.CTRL_FUNCTION_MASK) !== 0,
    tableSize: (ctl & Msix.CTRL_TABLE_SIZE_MASK) + 1,
    tableBar: table & Msix.BIR_MASK,
    tableOffset: (table & Msix.OFFSET_MASK) >>> 0,
    pbaBar: pba & Msix.BIR_MASK,
    pbaOffset: (pba & Msix.OFFSET_MASK) >>> 0,
  };
}

function fail(errno: number, message: string): never {
  throw new VfuError(errno, message);
}

/** An MSI-X vector table and Pending Bit Array a device keeps in its BAR (serve its reads and writes from the BAR's access callbacks). */
export class MsixTable {
  /** Vectors in the table. */
  readonly vectors: number;
  private readonly table: Buffer;
  private readonly pba: Buffer;
  private fnMasked = false;
  /** A vector became unmasked: deliver it now if it is pending. */
  onUnmask: ((vector: number) => void) | undefined;

  /** A table of `vectors` entries, all masked. */
  constructor(vectors: number) {
    if (!Number.isInteger(vectors) || vectors < 1 || vectors > Msix.MAX_VECTORS) {
      fail(Errno.EINVAL, `MSI-X vectors must be in [1, ${Msix.MAX_VECTORS}], got ${String(vectors)}`);
    }
    this.vectors = vectors;
    this.table = Buffer.alloc(vectors * Msix.ENTRY_SIZE);
    // The PBA is a whole number of qwords.
    this.pba = Buffer.alloc(Math.ceil(vectors / 64) * 8);
    this.reset();
  }

  /** Bytes of the table in its BAR. */
  get tableSize(): number {
    return this.table.length;
  }
  /** Bytes of the PBA in its BAR. */
  get pbaSize(): number {
    return this.pba.length;
  }

  /** Every vector masked, addresses and data zero, nothing pending (the spec's reset state). */
  reset(): void {
    this.table.fill(0);
    for (let v = 0; v < this.vectors; v++) this.table.writeUInt32LE(Msix.ENTRY_CTRL_MASKED, v * Msix.ENTRY_SIZE + Msix.ENTRY_CTRL);
    this.pba.fill(0);
    this.fnMasked = false;
  }

  /** A guest read of the table. */
  readTable(offset: number, length: number): Buffer {
    this.checkAccess('table', this.table.length, offset, length);
    return Buffer.from(this.table.subarray(offset, offset + length));
  }

  /** A guest write to the table. */
  writeTable(offset: number, data: Buffer | Uint8Array): void {
    this.checkAccess('table', this.table.length, offset, data.length);
    const first = Math.floor(offset / Msix.ENTRY_SIZE);
    const last = Math.floor((offset + data.length - 1) / Msix.ENTRY_SIZE);
    const wasMasked: boolean[] = [];
    for (let v = first; v <= last; v++) wasMasked.push(this.entryMasked(v));
    for (let i = 0; i < data.length; i++) {
      const a = offset + i;
      const field = a % Msix.ENTRY_SIZE;
      if (field < Msix.ENTRY_CTRL) this.table[a] = data[i]!;
      // Vector Control: only the Mask bit exists; the rest is reserved.
      else if (field === Msix.ENTRY_CTRL) this.table[a] = data[i]! & Msix.ENTRY_CTRL_MASKED;
    }
    for (let v = first; v <= last; v++) {
      if (wasMasked[v - first] && !this.entryMasked(v) && !this.fnMasked) this.onUnmask?.(v);
    }
  }

  /** A guest read of the PBA. */
  readPba(offset: number, length: number): Buffer {
    this.checkAccess('PBA', this.pba.length, offset, length);
    return Buffer.from(this.pba.subarray(offset, offset + length));
  }

  /** The PBA is read-only: a valid write is accepted and dropped. */
  writePba(offset: number, data: Buffer | Uint8Array): void {
    this.checkAccess('PBA', this.pba.length, offset, data.length);
  }

  /** Mirrors the capability's Function Mask; clearing it unmasks every vector not masked itself. */
  setFunctionMasked(masked: boolean): void {
    const was = this.fnMasked;
    this.fnMasked = masked;
    if (was && !masked) {
      for (let v = 0; v < this.vectors; v++) if (!this.entryMasked(v)) this.onUnmask?.(v);
    }
  }
  /** The Function Mask as last set. */
  get functionMasked(): boolean {
    return this.fnMasked;
  }

  /** Whether vector v may not be delivered (its mask or the function mask). */
  isMasked(v: number, functionMasked: boolean = this.fnMasked): boolean {
    this.checkVector(v);
    return functionMasked || this.entryMasked(v);
  }

  /** Vector `v`'s entry. */
  entry(v: number): MsixEntry {
    this.checkVector(v);
    const at = v * Msix.ENTRY_SIZE;
    const lo = BigInt(this.table.readUInt32LE(at + Msix.ENTRY_ADDR_LO));
    const hi = BigInt(this.table.readUInt32LE(at + Msix.ENTRY_ADDR_HI));
    return { address: (hi << 32n) | lo, data: this.table.readUInt32LE(at + Msix.ENTRY_DATA), masked: this.entryMasked(v) };
  }

  /** Marks vector `v` pending. */
  setPending(v: number): void {
    this.checkVector(v);
    this.pba[v >> 3] = this.pba[v >> 3]! | (1 << (v & 7));
  }
  /** Clears vector `v`'s pending bit. */
  clearPending(v: number): void {
    this.checkVector(v);
    this.pba[v >> 3] = this.pba[v >> 3]! & ~(1 << (v & 7));
  }
  /** Whether vector `v` is pending. */
  isPending(v: number): boolean {
    this.checkVector(v);
    return (this.pba[v >> 3]! & (1 << (v & 7))) !== 0;
  }

  /**
   * The device raises vector v: true means deliver it now; false means it
   * is masked and was marked pending instead (onUnmask comes later).
   */
  signal(v: number): boolean {
    if (this.isMasked(v)) {
      this.setPending(v);
      return false;
    }
    return true;
  }

  /** Table, PBA and the function mask, for migration. */
  snapshot(): Buffer {
    return Buffer.concat([this.table, this.pba, Buffer.of(this.fnMasked ? 1 : 0)]);
  }

  /** Loads a snapshot() (migration). */
  restore(buf: Buffer | Uint8Array): void {
    const want = this.table.length + this.pba.length + 1;
    if (buf.length !== want) fail(Errno.EINVAL, `MSI-X snapshot has ${buf.length} bytes, expected ${want}`);
    this.table.set(buf.subarray(0, this.table.length));
    for (let v = 0; v < this.vectors; v++) {
      const at = v * Msix.ENTRY_SIZE + Msix.ENTRY_CTRL;
      this.table.writeUInt32LE(this.table.readUInt32LE(at) & Msix.ENTRY_CTRL_MASKED, at);
    }
    this.pba.set(buf.subarray(this.table.length, this.table.length + this.pba.length));
    // Bits past the last vector do not exist.
    for (let v = this.vectors; v < this.pba.length * 8; v++) this.pba[v >> 3] = this.pba[v >> 3]! & ~(1 << (v & 7));
    this.fnMasked = buf[want - 1] !== 0;
  }

  private entryMasked(v: number): boolean {
    return (this.table[v * Msix.ENTRY_SIZE + Msix.ENTRY_CTRL]! & Msix.ENTRY_CTRL_MASKED) !== 0;
  }

  private checkVector(v: number): void {
    if (!Number.isInteger(v) || v < 0 || v >= this.vectors) fail(Errno.EINVAL, `MSI-X vector ${String(v)} out of [0, ${this.vectors})`);
  }

  // The spec allows aligned dword and qword accesses only.
  private checkAccess(what: string, size: number, offset: number, length: number): void {
    if (length !== 4 && length !== 8) fail(Errno.EINVAL, `MSI-X ${what} access of ${String(length)} bytes (must be 4 or 8)`);
    if (!Number.isSafeInteger(offset) || offset < 0 || offset % length !== 0) fail(Errno.EINVAL, `MSI-X ${what} access at ${String(offset)} is not ${length}-byte aligned`);
    if (offset > size - length) fail(Errno.EINVAL, `MSI-X ${what} access at ${offset} is outside [0, ${size})`);
  }
}
