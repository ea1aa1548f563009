// `vfu read SOCKET REGION OFFSET [COUNT]` and `vfu write SOCKET REGION
// OFFSET HEXBYTES`: a device's registers from the shell (setpci / devmem
// for vfio-user).  A refused access is retried at other widths, by reads
// only, to say what the device does accept.
import { VfioUserClient, type RegionInfo } from '../client/client.js';
import { PciRegion, RegionFlag, errnoName } from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';
import { intOption } from './options.js';

const NAMES: Record<string, number> = {
  bar0: PciRegion.BAR0,
  bar1: PciRegion.BAR1,
  bar2: PciRegion.BAR2,
  bar3: PciRegion.BAR3,
  bar4: PciRegion.BAR4,
  bar5: PciRegion.BAR5,
  rom: PciRegion.ROM,
  config: PciRegion.CONFIG,
  vga: PciRegion.VGA,
  migration: 9,
};

/** REGION as the user wrote it: a name (bar0 … bar5, rom, config, vga, migration) or a number. */
export function parseRegion(s: string): number {
  const named = NAMES[s.toLowerCase()];
  if (named !== undefined) return named;
  if (/^(\d+|0x[0-9a-f]+)$/i.test(s)) return intOption('REGION', s, 0, 0xffffffff);
  throw new Error(`REGION: '${s}' is not one of ${Object.keys(NAMES).join(', ')} or a region number`);
}

function regionLabel(index: number): string {
  return Object.entries(NAMES).find(([, i]) => i === index)?.[0].toUpperCase() ?? `region ${index}`;
}

/** HEXBYTES: bytes in memory order, optionally separated ("01 02", "01:02", "0102"). */
export function parseHexBytes(s: string): Buffer {
  const clean = s.replace(/^0x/i, '').replace(/[\s:_-]/g, '');
  if (clean.length === 0 || clean.length % 2 !== 0 || !/^[0-9a-f]+$/i.test(clean)) {
    throw new Error(`HEXBYTES: '${s}' is not whole bytes in hex (e.g. 01000000 for the 32-bit value 1, little-endian)`);
  }
  return Buffer.from(clean, 'hex');
}

/** Hex dump lines: offset, 16 bytes, and for one register-sized value its little-endian number. */
export function formatBytes(offset: number, data: Buffer): string {
  const lines: string[] = [];
  for (let i = 0; i < data.length; i += 16) {
    const chunk = data.subarray(i, i + 16);
    lines.push(`${(offset + i).toString(16).padStart(8, '0')}: ${[...chunk].map((b) => b.toString(16).padStart(2, '0')).join(' ')}`);
  }
  if ([1, 2, 4, 8].includes(data.length)) {
    const v = data.length === 8 ? data.readBigUInt64LE(0) : BigInt(data.readUIntLE(0, data.length));
    lines[0] += `   (${data.length * 8}-bit LE 0x${v.toString(16).padStart(data.length * 2, '0')})`;
  }
  return lines.join('\n');
}

/** The region, checked present, accessible that way, and holding the range. */
async function region(c: VfioUserClient, index: number, offset: number, count: number, write: boolean): Promise<RegionInfo> {
  const { numRegions } = await c.deviceInfo();
  const name = regionLabel(index);
  if (index >= numRegions) throw new Error(`${name}: the device has regions 0-${numRegions - 1}`);
  const r = await c.regionInfo(index);
  if (r.size === 0) throw new Error(`${name}: the device does not have this region`);
  const flag = write ? RegionFlag.WRITE : RegionFlag.READ;
  if ((r.flags & flag) === 0) throw new Error(`${name} is not ${write ? 'writable' : 'readable'}`);
  if (offset + count > r.size) {
    throw new Error(`${name} is ${r.size} bytes (0x0-0x${(r.size - 1).toString(16)}): [0x${offset.toString(16)}, +${count}) is outside it`);
  }
  return r;
}

/** After a refusal: the widths (1, 2, 4, 8) a read is accepted with at `offset`'s alignment for each. */
async function acceptedWidths(c: VfioUserClient, index: number, offset: number, size: number): Promise<string> {
  const ok: string[] = [];
  for (const w of [1, 2, 4, 8]) {
    const at = offset - (offset % w);
    if (at + w > size) continue;
    try {
      await c.regionRead(index, at, w);
      ok.push(`${w} byte${w > 1 ? 's' : ''} at 0x${at.toString(16)}`);
    } catch {
      // not accepted
    }
  }
  return ok.length > 0 ? `reads are accepted with ${ok.join(', ')}` : 'no read of 1, 2, 4 or 8 bytes is accepted there either';
}

async function refused(c: VfioUserClient, e: unknown, what: string, index: number, offset: number, size: number): Promise<never> {
  if (!(e instanceof VfuError)) throw e;
  const hint = await acceptedWidths(c, index, offset, size);
  throw new Error(`the device refused ${what} (${errnoName(e.errno)}): ${hint}`);
}

/** `vfu read`. */
export async function readCommand(socket: string, regionArg: string, offsetArg: string, countArg: string | undefined): Promise<void> {
  const index = parseRegion(regionArg);
  const offset = intOption('OFFSET', offsetArg, 0);
  const count = countArg !== undefined ? intOption('COUNT', countArg, 1, 1 << 20) : 4;
  const c = await VfioUserClient.connect(socket);
  try {
    const r = await region(c, index, offset, count, false);
    let data: Buffer;
    try {
      data = await c.regionRead(index, offset, count);
    } catch (e) {
      return await refused(c, e, `a ${count}-byte read of ${regionLabel(index)} at 0x${offset.toString(16)}`, index, offset, r.size);
    }
    process.stdout.write(formatBytes(offset, data) + '\n');
  } finally {
    c.close();
  }
}

/** `vfu write`. */
export async function writeCommand(socket: string, regionArg: string, offsetArg: string, hexArg: string): Promise<void> {
  const index = parseRegion(regionArg);
  const offset = intOption('OFFSET', offsetArg, 0);
  const data = parseHexBytes(hexArg);
  const c = await VfioUserClient.connect(socket);
  try {
    const r = await region(c, index, offset, data.length, true);
    try {
      await c.regionWrite(index, offset, data);
    } catch (e) {
      await refused(c, e, `a ${data.length}-byte write to ${regionLabel(index)} at 0x${offset.toString(16)}`, index, offset, r.size);
    }
  } finally {
    c.close();
  }
}
