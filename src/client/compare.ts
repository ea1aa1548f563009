// Are two devices the same kind, so that one's migration state makes sense
// on the other?  What a VMM compares before it migrates: the PCI identity,
// every region's size and flags, the interrupt counts and the migration
// capabilities.  `vfu migrate` refuses a mismatch unless --force.
import { Cfg } from '../pci/constants.js';
import { MigrationFlag, PciRegion, RegionFlag, irqIndexNames } from '../protocol/constants.js';
import type { VfioUserClient } from './client.js';

/** What identifies a device's kind, as a client sees it. */
export interface DeviceProfile {
  /** PCI vendor id. */
  vendorId: number;
  /** PCI device id. */
  deviceId: number;
  /** PCI subsystem vendor id. */
  subsystemVendorId: number;
  /** PCI subsystem id. */
  subsystemId: number;
  /** Class code (24 bits: base class, subclass, programming interface). */
  classCode: number;
  /** PCI revision id. */
  revision: number;
  /** Regions the device reports. */
  numRegions: number;
  /** Size and READ/WRITE/MMAP flags of each region (size 0: absent). */
  regions: {
      /** Region index. */
      index: number;
      /** Bytes. */
      size: number;
      /** RegionFlag READ/WRITE/MMAP bits. */
      flags: number;
    }[];
  /** Vectors per interrupt index (IrqIndex order). */
  irqs: number[];
  /** VFIO_MIGRATION_* flags (0: not migratable). */
  migrationFlags: number;
}

/** Reads a device's profile through a connected client. */
export async function deviceProfile(c: VfioUserClient): Promise<DeviceProfile> {
  const info = await c.deviceInfo();
  const cfg = await c.regionRead(PciRegion.CONFIG, 0, 0x30);
  const regions: DeviceProfile['regions'] = [];
  for (let i = 0; i < info.numRegions; i++) {
    const r = await c.regionInfo(i);
    regions.push({ index: i, size: r.size, flags: r.flags & (RegionFlag.READ | RegionFlag.WRITE | RegionFlag.MMAP) });
  }
  const irqs: number[] = [];
  for (let i = 0; i < info.numIrqs; i++) irqs.push((await c.irqInfo(i)).count);
  return {
    vendorId: cfg.readUInt16LE(Cfg.VENDOR_ID),
    deviceId: cfg.readUInt16LE(Cfg.DEVICE_ID),
    subsystemVendorId: cfg.readUInt16LE(Cfg.SUBSYS_VENDOR),
    subsystemId: cfg.readUInt16LE(Cfg.SUBSYS_ID),
    classCode: cfg.readUIntLE(Cfg.CLASS_PROG, 3),
    revision: cfg.readUInt8(Cfg.REVISION),
    numRegions: info.numRegions,
    regions,
    irqs,
    migrationFlags: await c.migrationFlags(),
  };
}

const regionNames = ['BAR0', 'BAR1', 'BAR2', 'BAR3', 'BAR4', 'BAR5', 'ROM', 'config', 'VGA', 'migration (v1)'];

function hex(n: number, digits = 4): string {
  return `0x${n.toString(16).padStart(digits, '0')}`;
}

function regionFlags(f: number): string {
  const s = [f & RegionFlag.READ ? 'R' : '', f & RegionFlag.WRITE ? 'W' : '', f & RegionFlag.MMAP ? ' mmap' : ''].join('');
  return s === '' ? 'none' : s;
}

function migrationFlags(f: number): string {
  if (f === 0) return 'not migratable';
  const names = Object.entries(MigrationFlag)
    .filter(([, bit]) => (f & bit) !== 0)
    .map(([name]) => name);
  return names.join('|');
}

/**
 * The differences between two profiles, one line each ("device id: source
 * 0xbeef, destination 0x0dc8"); empty when they match.
 */
export function compareProfiles(a: DeviceProfile, b: DeviceProfile, names: [string, string] = ['source', 'destination']): string[] {
  const out: string[] = [];
  const diff = (what: string, x: string, y: string): void => {
    if (x !== y) out.push(`${what}: ${names[0]} ${x}, ${names[1]} ${y}`);
  };
  diff('vendor id', hex(a.vendorId), hex(b.vendorId));
  diff('device id', hex(a.deviceId), hex(b.deviceId));
  diff('subsystem vendor id', hex(a.subsystemVendorId), hex(b.subsystemVendorId));
  diff('subsystem id', hex(a.subsystemId), hex(b.subsystemId));
  diff('class code', hex(a.classCode, 6), hex(b.classCode, 6));
  diff('revision', hex(a.revision, 2), hex(b.revision, 2));
  diff('number of regions', String(a.numRegions), String(b.numRegions));
  for (let i = 0; i < Math.max(a.regions.length, b.regions.length); i++) {
    const x = a.regions[i] ?? { size: 0, flags: 0 };
    const y = b.regions[i] ?? { size: 0, flags: 0 };
    const name = regionNames[i] ?? `region ${i}`;
    diff(`${name} size`, String(x.size), String(y.size));
    if (x.size > 0 && y.size > 0) diff(`${name} flags`, regionFlags(x.flags), regionFlags(y.flags));
  }
  for (let i = 0; i < Math.max(a.irqs.length, b.irqs.length); i++) {
    diff(`${irqIndexNames[i] ?? `IRQ index ${i}`} vectors`, String(a.irqs[i] ?? 0), String(b.irqs[i] ?? 0));
  }
  diff('migration', migrationFlags(a.migrationFlags), migrationFlags(b.migrationFlags));
  return out;
}
