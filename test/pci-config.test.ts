// PCI configuration space emulation: header, BARs, ROM, capabilities, the
// EPERM/EINVAL rules, hooks, reset and migration, by example and by property.
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import fc from 'fast-check';
import { Errno } from '../src/protocol/constants.js';
import { VfuError } from '../src/protocol/errors.js';
import {
  CapId,
  Cfg,
  Exp,
  ExtCapId,
  Msi,
  Msix,
  PciCommand,
  PciConfigSpace,
  PciStatus,
  PcieDeviceType,
  Pm,
  STATUS_RW1C,
  type BarSpec,
  type MsiOptions,
  type MsiState,
} from '../src/pci/index.js';

function throwsErrno(fn: () => unknown, errno: number, what?: string): void {
  assert.throws(fn, (e: unknown) => e instanceof VfuError && e.errno === errno, what);
}

function device(express = false): PciConfigSpace {
  return new PciConfigSpace({ vendorId: 0x4e58, deviceId: 0x0001, subsystemVendorId: 0x1af4, subsystemId: 0x1100, classCode: 0x088000, revision: 3, express, interruptPin: 1 });
}

/** Everything the guest can see, for "nothing changed" checks. */
function state(p: PciConfigSpace): string {
  return p.snapshot().toString('hex');
}

// ---- header -------------------------------------------------------------

test('header: ids, class, revision, header type, pin, sizes', () => {
  const p = device();
  assert.equal(p.size, 256);
  assert.equal(device(true).size, 4096);
  assert.equal(p.read16(Cfg.VENDOR_ID), 0x4e58);
  assert.equal(p.read16(Cfg.DEVICE_ID), 0x0001);
  assert.equal(p.read8(Cfg.REVISION), 3);
  assert.equal(p.read8(Cfg.CLASS_PROG), 0x00);
  assert.equal(p.read8(Cfg.CLASS_SUB), 0x80);
  assert.equal(p.read8(Cfg.CLASS_BASE), 0x08);
  assert.equal(p.read8(Cfg.HEADER_TYPE), 0);
  assert.equal(p.read16(Cfg.SUBSYS_VENDOR), 0x1af4);
  assert.equal(p.read16(Cfg.SUBSYS_ID), 0x1100);
  assert.equal(p.read8(Cfg.INT_PIN), 1);
  assert.equal(p.read8(Cfg.CAP_PTR), 0);
  assert.equal(p.status & PciStatus.CAP_LIST, 0, 'no capability list yet');
  p.addPowerManagement();
  assert.equal(p.status & PciStatus.CAP_LIST, PciStatus.CAP_LIST);
  assert.equal(p.read8(Cfg.CAP_PTR), 0x40);
});

test('constructor validates its options', () => {
  throwsErrno(() => new PciConfigSpace({ vendorId: 0x10000, deviceId: 0 }), Errno.EINVAL);
  throwsErrno(() => new PciConfigSpace({ vendorId: 0, deviceId: -1 }), Errno.EINVAL);
  throwsErrno(() => new PciConfigSpace({ vendorId: 0, deviceId: 0, classCode: 0x1000000 }), Errno.EINVAL);
  throwsErrno(() => new PciConfigSpace({ vendorId: 0, deviceId: 0, interruptPin: 5 as 4 }), Errno.EINVAL);
  throwsErrno(() => new PciConfigSpace({ vendorId: 0, deviceId: 0, revision: 1.5 }), Errno.EINVAL);
});

test('read: any offset and length inside, copied at outOffset', () => {
  const p = device();
  const out = Buffer.alloc(300, 0xee);
  p.read(0, 256, out, 10);
  assert.ok(out.subarray(10, 266).equals(p.bytes));
  assert.equal(out[9], 0xee);
  assert.equal(out[266], 0xee);
  const small = Buffer.alloc(64);
  p.read(0, 64, small);
  assert.equal(small.readUInt16LE(0), 0x4e58);
  p.read(0x3d, 1, small, 63);
  assert.equal(small[63], 1);
  p.read(256, 0, small); // empty read at the end is a no-op
  throwsErrno(() => p.read(0, 65, small), Errno.EINVAL, 'output too small');
  throwsErrno(() => p.read(0, 4, small, 62), Errno.EINVAL, 'output offset too far');
});

test('out-of-range and malformed accesses fail with EINVAL and change nothing', () => {
  const p = device(true);
  const before = state(p);
  let writes = 0;
  p.on('configWrite', () => void writes++);
  const out = Buffer.alloc(8192);
  for (const [off, len] of [
    [-1, 1],
    [4096, 1],
    [4095, 2],
    [0, 4097],
    [4097, 0],
    [Number.MAX_SAFE_INTEGER, 2],
    [2 ** 64, 4],
    [1.5, 1],
    [Number.NaN, 1],
    [0, -1],
    [0, Number.POSITIVE_INFINITY],
  ] as const) {
    throwsErrno(() => p.read(off, len, out), Errno.EINVAL, `read ${off}+${len}`);
    if (len >= 0 && len < 5000) throwsErrno(() => p.write(off, Buffer.alloc(len, 0xff)), Errno.EINVAL, `write ${off}+${len}`);
  }
  assert.equal(state(p), before);
  assert.equal(writes, 0);
});

test('COMMAND: only the defined bits are writable; hook on change only', () => {
  const p = device();
  const seen: [number, number][] = [];
  p.hooks.command = (old, now) => void seen.push([old, now]);
  p.write16(Cfg.COMMAND, 0xffff);
  const all =
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
  assert.equal(p.command, all);
  assert.equal(p.command, 0x077f);
  assert.ok(p.commandIoEnabled && p.commandMemoryEnabled && p.busMasterEnabled && p.intxDisabled);
  p.write16(Cfg.COMMAND, 0xffff);
  p.write8(Cfg.COMMAND, PciCommand.MEMORY);
  assert.deepEqual(seen, [
    [0, 0x077f],
    [0x077f, 0x0702],
  ]);
  assert.ok(p.commandMemoryEnabled && !p.commandIoEnabled && !p.busMasterEnabled && p.intxDisabled);
});

test('STATUS: error bits are RW1C, the rest read-only; device side sets them', () => {
  const p = device();
  p.addMsi({ vectors: 1 });
  p.write16(Cfg.STATUS, 0xffff);
  assert.equal(p.status, PciStatus.CAP_LIST, 'guest cannot set anything');
  p.setStatusBits(STATUS_RW1C);
  p.setIntxStatus(true);
  assert.equal(p.status, STATUS_RW1C | PciStatus.CAP_LIST | PciStatus.INTERRUPT);
  p.write16(Cfg.STATUS, 0);
  assert.equal(p.status, STATUS_RW1C | PciStatus.CAP_LIST | PciStatus.INTERRUPT, 'writing 0 clears nothing');
  p.write16(Cfg.STATUS, PciStatus.SIG_TARGET_ABORT | PciStatus.CAP_LIST | PciStatus.INTERRUPT);
  assert.equal(p.status, (STATUS_RW1C & ~PciStatus.SIG_TARGET_ABORT) | PciStatus.CAP_LIST | PciStatus.INTERRUPT);
  p.write16(Cfg.STATUS, 0xffff);
  assert.equal(p.status, PciStatus.CAP_LIST | PciStatus.INTERRUPT);
  p.setIntxStatus(false);
  assert.equal(p.status, PciStatus.CAP_LIST);
  throwsErrno(() => p.setStatusBits(PciStatus.CAP_LIST), Errno.EINVAL);
});

test('writable header bytes: cache line, latency, interrupt line; others silently read-only', () => {
  const p = device();
  const before = p.bytes;
  p.write(0, Buffer.alloc(64, 0xff));
  const after = p.bytes;
  for (let a = 0; a < 64; a++) {
    if (a === Cfg.CACHE_LINE || a === Cfg.LATENCY || a === Cfg.INT_LINE) assert.equal(after[a], 0xff, `0x${a.toString(16)}`);
    else if (a === Cfg.COMMAND) assert.equal(after[a], 0x7f);
    else if (a === Cfg.COMMAND + 1) assert.equal(after[a], 0x07);
    else assert.equal(after[a], before[a], `0x${a.toString(16)} is read-only`);
  }
});

// ---- BARs -----------------------------------------------------------------

test('BARs: sizing reads back ~(size-1) | flags; the region may be smaller than its BAR', () => {
  const p = device();
  p.setBar(0, { size: 4096, kind: 'mem' });
  p.setBar(1, { size: 12 * 1024, kind: 'mem', prefetchable: true });
  p.setBar(2, { size: 256, kind: 'io' });
  p.setBar(3, { size: 1, kind: 'io' });
  p.setBar(4, { size: 2 ** 33, kind: 'mem', is64: true, prefetchable: true });
  assert.equal(p.read32(Cfg.BAR0), 0x0);
  assert.equal(p.read32(Cfg.BAR1), 0x8);
  assert.equal(p.read32(Cfg.BAR2), 0x1);
  assert.equal(p.read32(Cfg.BAR4), 0xc);
  for (let i = 0; i < 6; i++) p.write32(Cfg.BAR0 + 4 * i, 0xffffffff);
  assert.equal(p.read32(Cfg.BAR0), 0xfffff000);
  assert.equal(p.read32(Cfg.BAR1), 0xffffc008, '12 KiB region, 16 KiB BAR');
  assert.equal(p.read32(Cfg.BAR2), 0xffffff01);
  assert.equal(p.read32(Cfg.BAR3), 0xfffffffd, 'I/O BARs decode at least 4 bytes');
  assert.equal(p.read32(Cfg.BAR4), 0x0000000c, 'all low address bits are inside 8 GiB');
  assert.equal(p.read32(Cfg.BAR5), 0xfffffffe);
  assert.deepEqual(p.bar(1), { index: 1, size: 12288, sizingSize: 16384, kind: 'mem', is64: false, prefetchable: true, address: 0xffffc000n });
  assert.equal(p.bar(4)?.address, 0xfffffffe00000000n);
  assert.equal(p.bar(5), undefined, 'upper half');
  p.write32(Cfg.BAR1, 0x12345678);
  assert.equal(p.read32(Cfg.BAR1), 0x12344008);
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(0x0000_0012_3456_7890n);
  p.write(Cfg.BAR4, b);
  assert.equal(p.bar(4)?.address, 0x12_0000_0000n, 'rounded down to 8 GiB');
  p.write32(Cfg.BAR2, 0xc0de);
  assert.equal(p.bar(2)?.address, 0xc000n);
});

test('BARs: hook once per BAR touched with the full address', () => {
  const p = device();
  p.setBar(0, { size: 0x10000, kind: 'mem', is64: true });
  p.setBar(2, { size: 0x1000, kind: 'mem' });
  const seen: [number, bigint][] = [];
  p.on('bar', (i, a) => void seen.push([i, a]));
  const b = Buffer.alloc(12);
  b.writeUInt32LE(0xfebf0000, 0);
  b.writeUInt32LE(0x1, 4);
  b.writeUInt32LE(0xfe000000, 8);
  p.write(Cfg.BAR0, b);
  p.write32(Cfg.BAR3, 0xffffffff); // unused BAR: no hook
  p.write32(Cfg.BAR0 + 4, 0x2);
  assert.deepEqual(seen, [
    [0, 0x1_febf_0000n],
    [2, 0xfe000000n],
    [0, 0x2_febf_0000n],
  ]);
});

test('BARs: validation', () => {
  const p = device();
  throwsErrno(() => p.setBar(6, { size: 16, kind: 'mem' }), Errno.EINVAL);
  throwsErrno(() => p.setBar(-1, { size: 16, kind: 'mem' }), Errno.EINVAL);
  throwsErrno(() => p.setBar(1, { size: 16, kind: 'mem', is64: true }), Errno.EINVAL, 'odd index');
  throwsErrno(() => p.setBar(5, { size: 16, kind: 'mem', is64: true }), Errno.EINVAL, 'no partner');
  throwsErrno(() => p.setBar(0, { size: 16, kind: 'io', is64: true }), Errno.EINVAL);
  throwsErrno(() => p.setBar(0, { size: 16, kind: 'io', prefetchable: true }), Errno.EINVAL);
  throwsErrno(() => p.setBar(0, { size: 2 ** 31 + 1, kind: 'mem' }), Errno.EINVAL, '32-bit BAR over 2 GiB');
  throwsErrno(() => p.setBar(0, { size: 0x10001, kind: 'io' }), Errno.EINVAL);
  throwsErrno(() => p.setBar(0, { size: -1, kind: 'mem' }), Errno.EINVAL);
  throwsErrno(() => p.setBar(0, { size: 16, kind: 'rom' as 'mem' }), Errno.EINVAL);
  p.setBar(1, { size: 16, kind: 'mem' });
  throwsErrno(() => p.setBar(0, { size: 16, kind: 'mem', is64: true }), Errno.EINVAL, 'partner in use');
  p.setBar(2, { size: 16, kind: 'mem', is64: true });
  throwsErrno(() => p.setBar(3, { size: 16, kind: 'mem' }), Errno.EINVAL, 'upper half');
  // Redefining the 64-bit BAR as 32-bit frees its partner.
  p.setBar(2, { size: 16, kind: 'mem' });
  p.setBar(3, { size: 16, kind: 'io' });
  assert.equal(p.bar(3)?.kind, 'io');
  // Size 0 removes a BAR.
  p.setBar(3, { size: 0, kind: 'io' });
  assert.equal(p.bar(3), undefined);
  p.write32(Cfg.BAR3, 0xffffffff);
  assert.equal(p.read32(Cfg.BAR3), 0);
});

test('expansion ROM: sizing, enable bit, absent ROM reads 0', () => {
  const p = device();
  p.write32(Cfg.ROM, 0xffffffff);
  assert.equal(p.read32(Cfg.ROM), 0);
  assert.equal(p.rom(), undefined);
  p.setRom(40000);
  const seen: [number, boolean][] = [];
  p.hooks.rom = (a, e) => void seen.push([a, e]);
  p.write32(Cfg.ROM, 0xfffff800);
  assert.equal(p.read32(Cfg.ROM), 0xffff0000, '40000 bytes need a 64 KiB ROM BAR');
  p.write32(Cfg.ROM, 0xfeb40001);
  assert.deepEqual(p.rom(), { size: 40000, sizingSize: 65536, address: 0xfeb40000, enabled: true });
  assert.deepEqual(seen, [
    [0xffff0000, false],
    [0xfeb40000, true],
  ]);
  p.setRom(1);
  p.write32(Cfg.ROM, 0xffffffff);
  assert.equal(p.read32(Cfg.ROM), 0xfffff801, 'at least 2 KiB');
  throwsErrno(() => p.setRom(2 ** 31 + 1), Errno.EINVAL);
  p.setRom(0);
  assert.equal(p.read32(Cfg.ROM), 0);
});

// ---- capabilities -----------------------------------------------------------

test('capabilities: placement, chain order, explicit offsets, errors', () => {
  const p = device(true);
  assert.equal(p.addPowerManagement(), 0x40);
  assert.equal(p.addMsi({ vectors: 1 }), 0x48, 'PM is 8 bytes');
  assert.equal(p.addMsix({ tableSize: 4, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x40 }), 0x54, 'MSI 32-bit is 10 bytes, rounded to 12');
  assert.equal(p.addExpress({ offset: 0xc0 }), 0xc0);
  assert.equal(p.addVendor(Buffer.alloc(5)), 0x60);
  assert.equal(p.read8(Cfg.CAP_PTR), 0x40);
  assert.deepEqual(
    [0x40, 0x48, 0x54, 0x60, 0xc0].map((o) => [p.read8(o), p.read8(o + 1)]),
    [
      [CapId.PM, 0x48],
      [CapId.MSI, 0x54],
      [CapId.MSIX, 0x60],
      [CapId.VNDR, 0xc0],
      [CapId.EXP, 0],
    ],
  );
  throwsErrno(() => p.addVendor(Buffer.alloc(1), { offset: 0x42 }), Errno.EINVAL, 'unaligned');
  throwsErrno(() => p.addVendor(Buffer.alloc(1), { offset: 0x3c }), Errno.EINVAL, 'in the header');
  throwsErrno(() => p.addVendor(Buffer.alloc(1), { offset: 0x100 }), Errno.EINVAL, 'standard caps stay below 0x100');
  throwsErrno(() => p.addVendor(Buffer.alloc(1), { offset: 0xc4 }), Errno.EINVAL, 'overlaps PCIe');
  throwsErrno(() => p.addVendor(Buffer.alloc(9), { offset: 0xf8 }), Errno.ENOSPC, 'runs past 0x100');
  throwsErrno(() => p.addVendor(Buffer.alloc(253)), Errno.EINVAL, 'length byte overflow');
  throwsErrno(() => p.addMsi({ vectors: 2 }), Errno.EEXIST);
  throwsErrno(() => p.addPowerManagement(), Errno.EEXIST);
  throwsErrno(() => p.addMsix({ tableSize: 1, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 8 }), Errno.EEXIST);
  throwsErrno(() => p.addExpress(), Errno.EEXIST);
  // The gap before 0xc0 is used before the space after it.
  assert.equal(p.addVendor(Buffer.alloc(0x58 - 3)), 0x68);
  throwsErrno(() => p.addVendor(Buffer.alloc(0x40)), Errno.ENOSPC);
  assert.equal(p.addVendor(Buffer.alloc(1)), 0xfc);
  throwsErrno(() => p.addVendor(Buffer.alloc(1)), Errno.ENOSPC, 'full');

  // Extended: starts at 0x100, version 1 headers, id | version << 16 | next << 20.
  throwsErrno(() => p.addSerialNumber(1n, { offset: 0x200 }), Errno.EINVAL, 'first extended capability must be at 0x100');
  assert.equal(p.addSerialNumber(0x1122334455667788n), 0x100);
  assert.equal(p.addExtVendor({ vsecId: 0xabcd, vsecRev: 2, body: Buffer.alloc(6), offset: 0x200 }), 0x200);
  assert.equal(p.addExtVendor({ vsecId: 1, vsecRev: 0, body: Buffer.alloc(0) }), 0x10c);
  assert.equal(p.read32(0x100), ExtCapId.DSN | (1 << 16) | (0x10c << 20));
  assert.equal(p.read32(0x10c), ExtCapId.VNDR | (1 << 16) | (0x200 << 20));
  assert.equal(p.read32(0x200), ExtCapId.VNDR | (1 << 16));
  assert.equal(p.read32(0x204), 0xabcd | (2 << 16) | (14 << 20), 'VSEC header with length');
  assert.equal(p.read32(0x104), 0x55667788);
  assert.equal(p.read32(0x108), 0x11223344);
  throwsErrno(() => p.addSerialNumber(2n), Errno.EEXIST);
  throwsErrno(() => p.addExtVendor({ vsecId: 1, vsecRev: 0, body: Buffer.alloc(8), offset: 0xffc }), Errno.ENOSPC);
  throwsErrno(() => p.addExtVendor({ vsecId: 0x10000, vsecRev: 0, body: Buffer.alloc(0) }), Errno.EINVAL);
  throwsErrno(() => p.addExtVendor({ vsecId: 1, vsecRev: 16, body: Buffer.alloc(0) }), Errno.EINVAL);
  throwsErrno(() => p.addExtVendor({ vsecId: 1, vsecRev: 0, body: Buffer.alloc(0x1000) }), Errno.EINVAL);

  const conv = device();
  throwsErrno(() => conv.addSerialNumber(1n), Errno.EINVAL, 'no extended space in 256 bytes');
  throwsErrno(() => conv.addExtVendor({ vsecId: 1, vsecRev: 0, body: Buffer.alloc(0) }), Errno.EINVAL);
  throwsErrno(() => conv.addSerialNumber(-1n), Errno.EINVAL);
  assert.deepEqual(p.findCapability(CapId.MSIX), 0x54);
  assert.deepEqual(p.findCapability(ExtCapId.DSN, true), 0x100);
  assert.equal(p.findCapability(CapId.AGP), undefined);
});

test('EPERM: writes touching capability headers or read-only capabilities change nothing', () => {
  const p = device(true);
  p.setBar(0, { size: 4096, kind: 'mem' });
  const pm = p.addPowerManagement();
  const vndr = p.addVendor(Buffer.from('abcdef'));
  const rovndr = p.addVendor(Buffer.from('xyz'), { readonly: true });
  const dsn = p.addSerialNumber(42n);
  const vsec = p.addExtVendor({ vsecId: 7, vsecRev: 1, body: Buffer.alloc(8) });
  const rovsec = p.addExtVendor({ vsecId: 8, vsecRev: 1, body: Buffer.alloc(4), readonly: true });
  const before = state(p);
  let writes = 0;
  p.hooks.configWrite = () => void writes++;
  const cases: [number, number][] = [
    [pm, 1],
    [pm + 1, 1],
    [pm - 2, 4], // spans into the header
    [0, 256], // everything, including writable COMMAND
    [Cfg.COMMAND, 0x40], // reaches the first capability
    [vndr + 2, 1], // vendor length byte
    [rovndr + 3, 1],
    [rovndr + 5, 1],
    [dsn, 4],
    [dsn + 4, 8],
    [dsn + 11, 1],
    [vsec + 3, 1],
    [vsec + 4, 4], // VSEC header
    [rovsec + 8, 4],
    [0xf0, 0x20], // crosses from standard space into the extended header at 0x100
  ];
  for (const [off, len] of cases) throwsErrno(() => p.write(off, Buffer.alloc(len, 0xff)), Errno.EPERM, `write 0x${off.toString(16)}+${len}`);
  assert.equal(state(p), before);
  assert.equal(writes, 0);
  // Neighbouring writable bytes are fine.
  p.write(vndr + 3, Buffer.alloc(6, 0x55));
  p.write(vsec + 8, Buffer.alloc(8, 0x66));
  p.write(pm + 4, Buffer.of(3));
  assert.equal(writes, 3);
  assert.equal(p.protectedRegions.length, 6);
});

test('power management: state writable, unsupported states ignored, PME bits', () => {
  const p = device();
  const off = p.addPowerManagement({ d2: true, pmeSupport: 0b11001 });
  assert.equal(p.read16(off + Pm.PMC), 3 | Pm.PMC_D2 | (0b11001 << Pm.PMC_PME_SHIFT));
  assert.equal(p.read16(off + Pm.PMCSR), Pm.CSR_NO_SOFT_RESET);
  const seen: [number, number][] = [];
  p.hooks.powerState = (o, n) => void seen.push([o, n]);
  p.write16(off + Pm.PMCSR, 3);
  assert.equal(p.powerState, 3);
  p.write16(off + Pm.PMCSR, 1); // D1 not supported: no change
  assert.equal(p.powerState, 3);
  p.write16(off + Pm.PMCSR, 2);
  p.write16(off + Pm.PMCSR, 0xffff & ~3);
  assert.equal(p.read16(off + Pm.PMCSR), Pm.CSR_NO_SOFT_RESET | Pm.CSR_PME_ENABLE, 'PME_Status cannot be set by the guest');
  assert.deepEqual(seen, [
    [0, 3],
    [3, 2],
    [2, 0],
  ]);
  p.write16(off + Pm.PMC, 0);
  assert.equal(p.read16(off + Pm.PMC) & Pm.PMC_D2, Pm.PMC_D2, 'PMC is read-only');
  // PME_Status is write-1-to-clear (set it through a migration snapshot).
  const snap = p.snapshot();
  snap.writeUInt16LE(Pm.CSR_PME_STATUS | Pm.CSR_NO_SOFT_RESET, off + Pm.PMCSR);
  p.restore(snap);
  p.write16(off + Pm.PMCSR, 0);
  assert.equal(p.read16(off + Pm.PMCSR) & Pm.CSR_PME_STATUS, Pm.CSR_PME_STATUS);
  p.write16(off + Pm.PMCSR, Pm.CSR_PME_STATUS);
  assert.equal(p.read16(off + Pm.PMCSR), Pm.CSR_NO_SOFT_RESET);
  const q = device();
  const o2 = q.addPowerManagement({ noSoftReset: false });
  assert.equal(q.read16(o2 + Pm.PMCSR), 0);
});

for (const [is64, pvm, size] of [
  [false, false, 10],
  [true, false, 14],
  [false, true, 20],
  [true, true, 24],
] as const) {
  test(`MSI layout: ${is64 ? '64' : '32'}-bit${pvm ? ' with per-vector mask' : ''} (${size} bytes)`, () => {
    const p = device();
    const off = p.addMsi({ vectors: 8, is64, perVectorMask: pvm });
    assert.equal(p.capabilities[0]?.length, size);
    const ctl = p.read16(off + Msi.CONTROL);
    assert.equal(ctl, (3 << 1) | (is64 ? Msi.CTRL_64BIT : 0) | (pvm ? Msi.CTRL_PVM : 0));
    const states: MsiState[] = [];
    p.on('msi', (s) => void states.push(s));
    p.write32(off + Msi.ADDRESS_LO, 0xfee0100f);
    if (is64) p.write32(off + Msi.ADDRESS_HI, 0x12);
    p.write16(off + (is64 ? Msi.DATA_64 : Msi.DATA_32), 0x4041);
    if (pvm) {
      p.write32(off + (is64 ? Msi.MASK_64 : Msi.MASK_32), 0xffffffff);
      p.write32(off + (is64 ? Msi.PENDING_64 : Msi.PENDING_32), 0xffffffff);
      p.setMsiPending(7, true);
      throwsErrno(() => p.setMsiPending(8, true), Errno.EINVAL);
    } else {
      throwsErrno(() => p.setMsiPending(0, true), Errno.EINVAL);
    }
    p.write16(off + Msi.CONTROL, 0xffff & ~Msi.CTRL_MME_MASK);
    p.write16(off + Msi.CONTROL, Msi.CTRL_ENABLE | (2 << Msi.CTRL_MME_SHIFT));
    p.write16(off + Msi.CONTROL, Msi.CTRL_ENABLE | (2 << Msi.CTRL_MME_SHIFT)); // unchanged: no hook
    assert.deepEqual(p.msi, {
      enabled: true,
      address: is64 ? 0x12_fee0100cn : 0xfee0100cn,
      data: 0x4041,
      mask: pvm ? 0xff : 0,
      pending: pvm ? 0x80 : 0,
      vectorsEnabled: 4,
      vectorsCapable: 8,
      is64,
      perVectorMask: pvm,
    });
    assert.equal(states.length, (is64 ? 5 : 4) + (pvm ? 1 : 0), 'one hook per change');
    assert.deepEqual(states.at(-1), p.msi);
    assert.equal(p.read16(off + Msi.CONTROL) & ~(Msi.CTRL_ENABLE | Msi.CTRL_MME_MASK), ctl, 'MMC, 64-bit, PVM read-only');
  });
}

test('MSI: enabling more vectors than capable is EINVAL and changes nothing', () => {
  const p = device();
  const off = p.addMsi({ vectors: 4 });
  p.write8(off + Msi.CONTROL, 2 << Msi.CTRL_MME_SHIFT);
  const before = state(p);
  throwsErrno(() => p.write8(off + Msi.CONTROL, (3 << Msi.CTRL_MME_SHIFT) | Msi.CTRL_ENABLE), Errno.EINVAL);
  throwsErrno(() => p.write(off + Msi.CONTROL, Buffer.alloc(6, 0xff)), Errno.EINVAL);
  assert.equal(state(p), before);
  throwsErrno(() => p.addMsi({ vectors: 3 as 4 }), Errno.EEXIST);
  throwsErrno(() => device().addMsi({ vectors: 64 as 32 }), Errno.EINVAL);
  throwsErrno(() => device().addMsi({ vectors: 3 as 4 }), Errno.EINVAL);
});

test('MSI-X capability: table size and locations read-only, enable and function mask writable', () => {
  const p = device();
  const off = p.addMsix({ tableSize: 2048, tableBar: 4, tableOffset: 0x2000, pbaBar: 5, pbaOffset: 0x8 });
  assert.equal(p.read16(off + Msix.CONTROL), 2047);
  assert.equal(p.read32(off + Msix.TABLE), 0x2004);
  assert.equal(p.read32(off + Msix.PBA), 0x000d);
  const seen: unknown[] = [];
  p.hooks.msix = (s) => void seen.push(s);
  p.write(off + Msix.CONTROL, Buffer.from('ffffffffffffffffffff', 'hex'));
  assert.deepEqual(p.msix, { enabled: true, functionMasked: true, tableSize: 2048, tableBar: 4, tableOffset: 0x2000, pbaBar: 5, pbaOffset: 8 });
  p.write8(off + Msix.CONTROL + 1, 0x80);
  p.write8(off + Msix.CONTROL + 1, 0x80);
  assert.deepEqual(seen, [
    { enabled: true, functionMasked: true },
    { enabled: true, functionMasked: false },
  ]);
  for (const bad of [
    { tableSize: 0 },
    { tableSize: 2049 },
    { tableBar: 6 },
    { pbaBar: -1 },
    { tableOffset: 4 },
    { pbaOffset: 0x1_0000_0000 },
  ]) {
    throwsErrno(() => device().addMsix({ tableSize: 1, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 8, ...bad }), Errno.EINVAL, JSON.stringify(bad));
  }
});

test('PCI Express: v2 layout, DevCtl mask and defaults, DevStatus RW1C, link read-only', () => {
  const p = device(true);
  const off = p.addExpress();
  assert.equal(p.capabilities[0]?.length, 60);
  assert.equal(p.read16(off + Exp.FLAGS), 2 | (PcieDeviceType.ENDPOINT << 4));
  assert.equal(p.read32(off + Exp.DEVCAP) & Exp.DEVCAP_FLR, 0);
  assert.equal(p.read16(off + Exp.DEVCTL), 0x2810);
  p.write16(off + Exp.DEVCTL, 0x7fff);
  assert.equal(p.read16(off + Exp.DEVCTL), 0x7fff);
  p.write16(off + Exp.DEVCTL, 0);
  assert.equal(p.read16(off + Exp.DEVCTL), 0);
  p.setExpressDeviceStatus(0xf);
  p.write16(off + Exp.DEVSTA, 0x5);
  assert.equal(p.read16(off + Exp.DEVSTA), 0xa);
  throwsErrno(() => p.setExpressDeviceStatus(0x10), Errno.EINVAL);
  const link = p.read32(off + Exp.LNKCAP);
  assert.equal(link, 0x11);
  p.write32(off + Exp.LNKCAP, 0);
  p.write16(off + Exp.LNKCTL, 0xffff);
  p.write16(off + Exp.LNKSTA, 0xffff);
  assert.equal(p.read32(off + Exp.LNKCAP), 0x11);
  assert.equal(p.read16(off + Exp.LNKCTL), 0);
  assert.equal(p.read16(off + Exp.LNKSTA), 0x11);
  p.write16(off + Exp.DEVCTL2, 0xffff);
  assert.equal(p.read16(off + Exp.DEVCTL2), 0x1f, 'endpoint: completion timeout value and disable');
  const rp = device(true);
  const o2 = rp.addExpress({ deviceType: PcieDeviceType.ROOT_PORT });
  rp.write16(o2 + Exp.DEVCTL2, 0xffff);
  assert.equal(rp.read16(o2 + Exp.DEVCTL2), 0x3f, 'ports can enable ARI forwarding');
  rp.write16(o2 + Exp.DEVCTL, 0xffff); // bit 15 is not FLR on a port: just read-only
  assert.equal(rp.read16(o2 + Exp.DEVCTL), 0x7fff);
  throwsErrno(() => device(true).addExpress({ deviceType: PcieDeviceType.ROOT_PORT, flrCapable: true }), Errno.EINVAL);
  const ie = device(true);
  const o3 = ie.addExpress({ deviceType: PcieDeviceType.RC_INTEGRATED_ENDPOINT });
  assert.equal(ie.read32(o3 + Exp.LNKCAP), 0, 'integrated endpoints have no link');
});

test('FLR: hook fires only when capable, bit reads back 0, EINVAL otherwise', () => {
  const p = device(true);
  const off = p.addExpress({ flrCapable: true });
  assert.ok(p.isFlrCapable);
  assert.equal(p.read32(off + Exp.DEVCAP) & Exp.DEVCAP_FLR, Exp.DEVCAP_FLR);
  let flrs = 0;
  p.hooks.flr = () => {
    flrs++;
    p.reset();
  };
  p.write16(Cfg.COMMAND, PciCommand.MEMORY);
  p.write16(off + Exp.DEVCTL, Exp.DEVCTL_BCR_FLR | 0x0020);
  assert.equal(flrs, 1);
  assert.equal(p.read16(off + Exp.DEVCTL), 0x2810, 'reset by the hook; FLR bit reads 0');
  assert.equal(p.command, 0);
  p.write16(off + Exp.DEVCTL, 0x0020);
  assert.equal(flrs, 1);
  assert.equal(p.read16(off + Exp.DEVCTL), 0x0020);

  const q = device(true);
  const o2 = q.addExpress();
  let qflrs = 0;
  q.on('flr', () => void qflrs++);
  const before = state(q);
  throwsErrno(() => q.write16(o2 + Exp.DEVCTL, Exp.DEVCTL_BCR_FLR | 0x0020), Errno.EINVAL);
  throwsErrno(() => q.write8(o2 + Exp.DEVCTL + 1, 0x80), Errno.EINVAL);
  assert.equal(state(q), before);
  assert.equal(qflrs, 0);
});

test('vendor capabilities: body writable with a hook; extended vendor too', () => {
  const p = device(true);
  const v = p.addVendor(Buffer.from('0102030405', 'hex'));
  const x = p.addExtVendor({ vsecId: 0x10, vsecRev: 1, body: Buffer.from('aabbccdd', 'hex') });
  assert.equal(p.read8(v + 2), 8);
  assert.equal(p.read32(v + 3), 0x04030201);
  const seen: [number, number, string][] = [];
  p.hooks.vendorWrite = (c, o, d) => void seen.push([c, o, d.toString('hex')]);
  p.write(v + 4, Buffer.from('eeff', 'hex'));
  p.write(x + 8, Buffer.from('11223344', 'hex'));
  // A write past the body's end reaches padding and free space: only the body part is reported.
  p.write(v + 7, Buffer.from('9999', 'hex'));
  assert.deepEqual(seen, [
    [v, 4, 'eeff'],
    [x, 8, '11223344'],
    [v, 7, '99'],
  ]);
  assert.equal(p.read32(v + 3), 0x04ffee01);
  assert.equal(p.read8(v + 7), 0x99);
  assert.equal(p.read32(x + 8), 0x44332211);
  assert.equal(p.read8(v + 8), 0, 'padding is read-only');
});

// ---- hooks -----------------------------------------------------------------

test('hooks: hooks object and on() listeners, unsubscribe, configWrite after each success', () => {
  const p = device();
  const log: string[] = [];
  p.hooks = { configWrite: (o, d) => void log.push(`h ${o} ${d.toString('hex')}`), command: () => void log.push('h command') };
  const off = p.on('configWrite', (o) => void log.push(`l ${o}`));
  p.on('command', () => void log.push('l command'));
  p.write16(Cfg.COMMAND, 2);
  off();
  p.write8(Cfg.INT_LINE, 5);
  assert.deepEqual(log, ['h command', 'l command', 'h 4 0200', 'l 4', 'h 60 05']);
});

test('hooks: async rejections go to onHookError; write stays synchronous', async () => {
  const p = device(true);
  p.addExpress({ flrCapable: true });
  const errors: [unknown, string][] = [];
  let reported!: () => void;
  const whenReported = new Promise<void>((r) => (reported = r));
  p.onHookError = (e, ev) => {
    errors.push([e, ev]);
    reported();
  };
  let done = false;
  p.hooks.flr = async () => {
    await new Promise((r) => setTimeout(r, 1));
    done = true;
    throw new Error('reset failed');
  };
  p.write16(0x40 + Exp.DEVCTL, Exp.DEVCTL_BCR_FLR);
  assert.equal(done, false);
  await whenReported;
  assert.equal(done, true);
  assert.equal(errors.length, 1);
  assert.equal(errors[0]![1], 'flr');
});

// ---- reset and migration ----------------------------------------------------

function fullDevice(): PciConfigSpace {
  const p = device(true);
  p.setBar(0, { size: 0x4000, kind: 'mem', is64: true });
  p.setBar(2, { size: 0x100, kind: 'io' });
  p.setBar(3, { size: 0x1000, kind: 'mem' });
  p.setRom(0x8000);
  p.addPowerManagement({ d1: true });
  p.addMsi({ vectors: 32, is64: true, perVectorMask: true });
  p.addMsix({ tableSize: 8, tableBar: 3, tableOffset: 0, pbaBar: 3, pbaOffset: 0x800 });
  p.addExpress({ flrCapable: true });
  p.addVendor(Buffer.alloc(9, 0x11));
  p.addSerialNumber(0xdeadbeefn);
  p.addExtVendor({ vsecId: 3, vsecRev: 1, body: Buffer.alloc(12, 0x22) });
  return p;
}

test('reset restores every writable byte and keeps ids and capabilities', () => {
  const p = fullDevice();
  const initial = state(p);
  const { wmask, w1cmask } = p.masks();
  for (let a = 0; a < p.size; a += 4) {
    try {
      p.write32(a, 0xffffffff);
    } catch (e) {
      assert.ok(e instanceof VfuError && (e.errno === Errno.EPERM || e.errno === Errno.EINVAL));
    }
  }
  p.setStatusBits(STATUS_RW1C);
  p.setIntxStatus(true);
  p.setMsiPending(3, true);
  assert.notEqual(state(p), initial);
  assert.ok(p.commandMemoryEnabled);
  p.reset();
  assert.equal(state(p), initial);
  assert.equal(p.bar(0)?.address, 0n);
  assert.equal(p.msi?.enabled, false);
  assert.equal(p.msix?.enabled, false);
  assert.ok(wmask.equals(p.masks().wmask) && w1cmask.equals(p.masks().w1cmask));
});

test('snapshot/restore: round trip into an identical device; mismatches are EINVAL', () => {
  const src = fullDevice();
  src.write16(Cfg.COMMAND, PciCommand.MEMORY | PciCommand.MASTER);
  src.write32(Cfg.BAR0, 0xfe000000);
  src.write32(0x48 + Msi.ADDRESS_LO, 0xfee00000);
  src.setStatusBits(PciStatus.REC_MASTER_ABORT);
  const snap = src.snapshot();
  const dst = fullDevice();
  let hooks = 0;
  dst.hooks.configWrite = () => void hooks++;
  dst.restore(snap);
  assert.equal(state(dst), state(src));
  assert.equal(dst.bar(0)?.address, 0xfe000000n);
  assert.ok(dst.busMasterEnabled);
  assert.equal(hooks, 0);

  const other = fullDevice();
  const before = state(other);
  throwsErrno(() => other.restore(snap.subarray(0, 256)), Errno.EINVAL);
  const bad = Buffer.from(snap);
  bad.writeUInt16LE(0x1234, Cfg.DEVICE_ID);
  throwsErrno(() => other.restore(bad), Errno.EINVAL, 'different device id');
  const bad2 = Buffer.from(snap);
  bad2[0x41] = 0; // a capability next pointer
  throwsErrno(() => other.restore(bad2), Errno.EINVAL, 'different chain');
  const bad3 = Buffer.from(snap);
  bad3[Cfg.BAR2] = 0; // BAR flags
  throwsErrno(() => other.restore(bad3), Errno.EINVAL, 'different BAR kind');
  const bad4 = Buffer.from(snap);
  bad4[0x60 + Msix.TABLE] ^= 0x08; // MSI-X table offset: read-only, not a header
  throwsErrno(() => other.restore(bad4), Errno.EINVAL, 'different MSI-X layout');
  const bad5 = Buffer.from(snap);
  bad5[Cfg.BAR0] |= 0x10; // below the 16 KiB BAR's size: always 0
  throwsErrno(() => other.restore(bad5), Errno.EINVAL, 'impossible BAR value');
  assert.equal(state(other), before);
  // Bits the device drives itself travel with the snapshot.
  src.setIntxStatus(true);
  src.setMsiPending(31, true);
  other.restore(src.snapshot());
  assert.ok((other.status & PciStatus.INTERRUPT) !== 0);
  assert.equal(other.msi?.pending, 0x80000000);
});

// ---- properties -------------------------------------------------------------

const barSpecArb: fc.Arbitrary<{ index: number; spec: BarSpec }> = fc.oneof(
  fc.record({
    index: fc.integer({ min: 0, max: 5 }),
    spec: fc.record({ size: fc.integer({ min: 1, max: 0x10000 }), kind: fc.constant('io' as const) }),
  }),
  fc.record({
    index: fc.integer({ min: 0, max: 5 }),
    spec: fc.record({ size: fc.integer({ min: 1, max: 2 ** 31 }), kind: fc.constant('mem' as const), prefetchable: fc.boolean() }),
  }),
  fc.record({
    index: fc.constantFrom(0, 2, 4),
    spec: fc.record({
      size: fc.oneof(fc.integer({ min: 1, max: 2 ** 32 }), fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER })),
      kind: fc.constant('mem' as const),
      is64: fc.constant(true),
      prefetchable: fc.boolean(),
    }),
  }),
);

test('property: BAR sizing and address programming', () => {
  fc.assert(
    fc.property(barSpecArb, fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), ({ index, spec }, addr) => {
      const p = device();
      p.setBar(index, spec);
      const info = p.bar(index)!;
      const min = spec.kind === 'io' ? 4 : 16;
      const sz = info.sizingSize;
      assert.ok(sz >= spec.size && sz >= min && Number.isInteger(Math.log2(sz)), `sizing size ${sz} for ${spec.size}`);
      assert.ok(sz === min || sz / 2 < spec.size, 'smallest power of two');
      const flags = spec.kind === 'io' ? 1 : (spec.is64 ? 4 : 0) | (spec.prefetchable ? 8 : 0);
      const off = Cfg.BAR0 + 4 * index;
      assert.equal(p.read32(off), flags);
      const size = BigInt(sz);
      p.write32(off, 0xffffffff);
      if (spec.is64) p.write32(off + 4, 0xffffffff);
      assert.equal(p.read32(off), Number(~(size - 1n) & 0xffff_ffffn & ~BigInt(spec.kind === 'io' ? 3 : 15)) + flags);
      if (spec.is64) assert.equal(p.read32(off + 4), Number(~((size - 1n) >> 32n) & 0xffff_ffffn));
      // Program an address: it rounds down to the BAR size.
      const width = spec.is64 ? 64n : 32n;
      const a = BigInt.asUintN(Number(width), addr);
      const b = Buffer.alloc(8);
      b.writeBigUInt64LE(a);
      p.write(off, b.subarray(0, spec.is64 ? 8 : 4));
      assert.equal(p.bar(index)!.address, a & ~(size - 1n) & (2n ** width - 1n));
      assert.equal(p.read32(off) & (spec.kind === 'io' ? 3 : 15), flags, 'flags read-only');
    }),
    { numRuns: 400 },
  );
});

type CapOp =
  | { k: 'pm'; d1: boolean; d2: boolean; at?: number }
  | { k: 'msi'; o: MsiOptions }
  | { k: 'msix'; size: number; at?: number }
  | { k: 'exp'; flr: boolean; at?: number }
  | { k: 'vndr'; len: number; ro: boolean; at?: number }
  | { k: 'dsn'; serial: bigint; at?: number }
  | { k: 'vsec'; len: number; ro: boolean; at?: number };

const atStd = fc.option(fc.integer({ min: 0x10, max: 0x3f }).map((n) => n * 4), { freq: 3, nil: undefined });
const atExt = fc.option(fc.integer({ min: 0x40, max: 0x3ff }).map((n) => n * 4), { freq: 3, nil: undefined });
const capOpArb: fc.Arbitrary<CapOp> = fc.oneof(
  fc.record({ k: fc.constant('pm' as const), d1: fc.boolean(), d2: fc.boolean(), at: atStd }, { requiredKeys: ['k', 'd1', 'd2'] }),
  fc.record({
    k: fc.constant('msi' as const),
    o: fc.record({ vectors: fc.constantFrom(1, 2, 4, 8, 16, 32) as fc.Arbitrary<MsiOptions['vectors']>, is64: fc.boolean(), perVectorMask: fc.boolean(), offset: atStd }, { requiredKeys: ['vectors'] }),
  }),
  fc.record({ k: fc.constant('msix' as const), size: fc.integer({ min: 1, max: 2048 }), at: atStd }, { requiredKeys: ['k', 'size'] }),
  fc.record({ k: fc.constant('exp' as const), flr: fc.boolean(), at: atStd }, { requiredKeys: ['k', 'flr'] }),
  fc.record({ k: fc.constant('vndr' as const), len: fc.integer({ min: 0, max: 40 }), ro: fc.boolean(), at: atStd }, { requiredKeys: ['k', 'len', 'ro'] }),
  fc.record({ k: fc.constant('dsn' as const), serial: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), at: atExt }, { requiredKeys: ['k', 'serial'] }),
  fc.record({ k: fc.constant('vsec' as const), len: fc.integer({ min: 0, max: 300 }), ro: fc.boolean(), at: atExt }, { requiredKeys: ['k', 'len', 'ro'] }),
);

/** Builds a device from random operations; refused placements must fail cleanly. */
function build(express: boolean, ops: CapOp[], bars: { index: number; spec: BarSpec }[] = []): PciConfigSpace {
  const p = device(express);
  for (const { index, spec } of bars) {
    try {
      p.setBar(index, spec);
    } catch (e) {
      assert.ok(e instanceof VfuError && e.errno === Errno.EINVAL);
    }
  }
  for (const op of ops) {
    const before = state(p);
    try {
      switch (op.k) {
        case 'pm':
          p.addPowerManagement({ d1: op.d1, d2: op.d2, offset: op.at });
          break;
        case 'msi':
          p.addMsi(op.o);
          break;
        case 'msix':
          p.addMsix({ tableSize: op.size, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x8000, offset: op.at });
          break;
        case 'exp':
          p.addExpress({ flrCapable: op.flr, offset: op.at });
          break;
        case 'vndr':
          p.addVendor(Buffer.alloc(op.len, 0xa5), { readonly: op.ro, offset: op.at });
          break;
        case 'dsn':
          p.addSerialNumber(op.serial, { offset: op.at });
          break;
        case 'vsec':
          p.addExtVendor({ vsecId: 0x55, vsecRev: 1, body: Buffer.alloc(op.len, 0x5a), readonly: op.ro, offset: op.at });
          break;
      }
    } catch (e) {
      assert.ok(e instanceof VfuError, String(e));
      assert.ok(([Errno.EINVAL, Errno.ENOSPC, Errno.EEXIST] as number[]).includes(e.errno), e.message);
      assert.equal(state(p), before, 'a refused capability leaves no trace');
    }
  }
  return p;
}

test('property: capability chains terminate, move forward, never overlap', () => {
  fc.assert(
    fc.property(fc.boolean(), fc.array(capOpArb, { maxLength: 25, size: 'medium' }), (express, ops) => {
      const p = build(express, ops);
      const caps = p.capabilities;
      const std = caps.filter((c) => !c.extended);
      const ext = caps.filter((c) => c.extended);
      // Standard chain from CAP_PTR.
      const walked: number[] = [];
      for (let ptr = p.read8(Cfg.CAP_PTR); ptr !== 0; ptr = p.read8(ptr + 1)) {
        assert.ok(ptr >= 0x40 && ptr % 4 === 0 && ptr + 2 <= 256, `pointer 0x${ptr.toString(16)}`);
        assert.ok(walked.length === 0 || ptr > walked.at(-1)!, 'next pointers increase');
        walked.push(ptr);
        assert.ok(walked.length <= 48);
      }
      assert.deepEqual(walked, std.map((c) => c.offset));
      assert.deepEqual(walked.map((o) => p.read8(o)), std.map((c) => c.id));
      assert.equal((p.status & PciStatus.CAP_LIST) !== 0, std.length > 0);
      // Extended chain from 0x100.
      const ewalked: number[] = [];
      if (p.size === 4096 && p.read32(0x100) !== 0) {
        for (let ptr = 0x100; ; ) {
          assert.ok(ptr >= 0x100 && ptr % 4 === 0 && ptr + 4 <= 4096);
          assert.ok(ewalked.length === 0 || ptr > ewalked.at(-1)!);
          ewalked.push(ptr);
          const h = p.read32(ptr);
          assert.equal((h >>> 16) & 0xf, 1, 'version 1');
          const next = h >>> 20;
          if (next === 0) break;
          ptr = next;
        }
      }
      assert.deepEqual(ewalked, ext.map((c) => c.offset));
      if (!express) assert.equal(ext.length, 0);
      // No two capabilities share a byte; all stay in their space.
      const sorted = [...caps].sort((a, b) => a.offset - b.offset);
      for (let i = 0; i < sorted.length; i++) {
        const c = sorted[i]!;
        assert.ok(c.extended ? c.offset >= 0x100 && c.offset + c.length <= 4096 : c.offset >= 0x40 && c.offset + c.length <= 256);
        if (i > 0) assert.ok(sorted[i - 1]!.offset + sorted[i - 1]!.length <= c.offset, 'overlap');
      }
    }),
    { numRuns: 300 },
  );
});

// Mostly small writes where the registers and capabilities are, some anywhere, some long.
const writeArb = fc.oneof(
  { weight: 6, arbitrary: fc.record({ off: fc.integer({ min: 0, max: 0x13f }), data: fc.uint8Array({ minLength: 1, maxLength: 8 }) }) },
  { weight: 4, arbitrary: fc.record({ off: fc.integer({ min: 0, max: 0x4f }).map((n) => n * 4), data: fc.uint8Array({ minLength: 4, maxLength: 4 }) }) },
  { weight: 2, arbitrary: fc.record({ off: fc.integer({ min: 0, max: 4095 }), data: fc.uint8Array({ minLength: 1, maxLength: 8 }) }) },
  { weight: 1, arbitrary: fc.record({ off: fc.integer({ min: 0, max: 4095 }), data: fc.uint8Array({ minLength: 1, maxLength: 300 }) }) },
);

test('property: random writes respect masks and protected ranges, and fail atomically', () => {
  fc.assert(
    fc.property(fc.boolean(), fc.array(capOpArb, { minLength: 2, maxLength: 12 }), fc.array(barSpecArb, { maxLength: 4 }), fc.array(writeArb, { minLength: 10, maxLength: 60 }), (express, ops, bars, writes) => {
      const p = build(express, ops, bars);
      const { wmask, w1cmask } = p.masks();
      const prot = p.protectedRegions;
      const initial = p.bytes;
      const pm = p.findCapability(CapId.PM);
      const pmcsr = pm === undefined ? -1 : pm + Pm.PMCSR;
      for (const { off, data } of writes) {
        const before = p.bytes;
        const end = off + data.length;
        try {
          p.write(off, data);
        } catch (e) {
          assert.ok(e instanceof VfuError);
          assert.ok(p.bytes.equals(before), 'failed write changed something');
          if (e.errno === Errno.EPERM) assert.ok(prot.some(([s, t]) => off < t && s < end), 'EPERM without a protected byte');
          else if (end > p.size) assert.equal(e.errno, Errno.EINVAL);
          else assert.equal(e.errno, Errno.EINVAL, e.message); // MME over MMC, or FLR without FLR
          continue;
        }
        assert.ok(end <= p.size);
        assert.ok(!prot.some(([s, t]) => off < t && s < end), 'protected byte written');
        const after = p.bytes;
        for (let a = 0; a < p.size; a++) {
          const d = a >= off && a < end ? data[a - off]! : undefined;
          if (d === undefined) assert.equal(after[a], before[a], `0x${a.toString(16)} outside the write changed`);
          // Writes of an unsupported power state are dropped.
          else if (a !== pmcsr) assert.equal(after[a], ((before[a]! & ~wmask[a]!) | (d & wmask[a]!)) & ~(d & w1cmask[a]!), `0x${a.toString(16)}`);
          const ro = ~(wmask[a]! | w1cmask[a]!) & 0xff;
          assert.equal(after[a]! & ro, before[a]! & ro, `read-only bits changed at 0x${a.toString(16)}`);
          // RW1C bits only ever clear.
          assert.equal(after[a]! & w1cmask[a]! & ~before[a]!, 0);
        }
      }
      // Bytes nobody may write still hold their power-on values.
      const after = p.bytes;
      for (const [s, t] of prot) assert.ok(after.subarray(s, t).equals(initial.subarray(s, t)));
      for (const a of [0, 1, 2, 3, 8, 9, 10, 11, 0x0e, 0x2c, 0x2d, 0x2e, 0x2f, 0x34, 0x3d]) assert.equal(after[a], initial[a]);
    }),
    { numRuns: 200 },
  );
});

test('property: out-of-range accesses are EINVAL without side effects', () => {
  const p = fullDevice();
  const before = state(p);
  let hooks = 0;
  p.hooks.configWrite = () => void hooks++;
  const out = Buffer.alloc(1 << 14);
  fc.assert(
    fc.property(
      fc.oneof(
        fc.record({ off: fc.integer({ min: -(2 ** 40), max: -1 }), len: fc.integer({ min: 0, max: 8 }) }),
        fc.record({ off: fc.integer({ min: 0, max: 4096 }), len: fc.integer({ min: 1, max: 8192 }) }).filter(({ off, len }) => off + len > 4096),
        fc.record({ off: fc.integer({ min: 4097, max: Number.MAX_SAFE_INTEGER }), len: fc.integer({ min: 0, max: 8 }) }),
        fc.record({ off: fc.double({ noInteger: true }), len: fc.integer({ min: 0, max: 8 }) }),
      ),
      ({ off, len }) => {
        throwsErrno(() => p.read(off, len, out), Errno.EINVAL);
        throwsErrno(() => p.write(off, Buffer.alloc(len, 0xff)), Errno.EINVAL);
      },
    ),
    { numRuns: 500 },
  );
  assert.equal(state(p), before);
  assert.equal(hooks, 0);
});

test('property: MME above MMC is EINVAL, at or below is accepted', () => {
  fc.assert(
    fc.property(fc.constantFrom(1, 2, 4, 8, 16, 32) as fc.Arbitrary<MsiOptions['vectors']>, fc.integer({ min: 0, max: 0xff }), (vectors, byte) => {
      const p = device();
      const off = p.addMsi({ vectors });
      const mme = (byte >> 4) & 7;
      if (1 << mme > vectors) {
        throwsErrno(() => p.write8(off + Msi.CONTROL, byte), Errno.EINVAL);
        assert.equal(p.msi!.vectorsEnabled, 1);
      } else {
        p.write8(off + Msi.CONTROL, byte);
        assert.equal(p.msi!.vectorsEnabled, 1 << mme);
        assert.equal(p.msi!.enabled, (byte & 1) === 1);
      }
    }),
  );
});

test('property: FLR hook fires exactly when capable and requested', () => {
  fc.assert(
    fc.property(fc.boolean(), fc.integer({ min: 0, max: 0xffff }), (capable, value) => {
      const p = device(true);
      const off = p.addExpress({ flrCapable: capable });
      let flrs = 0;
      p.on('flr', () => void flrs++);
      const requested = (value & Exp.DEVCTL_BCR_FLR) !== 0;
      if (requested && !capable) {
        throwsErrno(() => p.write16(off + Exp.DEVCTL, value), Errno.EINVAL);
        assert.equal(p.read16(off + Exp.DEVCTL), 0x2810);
      } else {
        p.write16(off + Exp.DEVCTL, value);
        assert.equal(p.read16(off + Exp.DEVCTL), value & 0x7fff);
      }
      assert.equal(flrs, requested && capable ? 1 : 0);
    }),
  );
});

test('property: reset after random writes restores power-on state', () => {
  fc.assert(
    fc.property(fc.array(capOpArb, { minLength: 2, maxLength: 10 }), fc.array(barSpecArb, { maxLength: 4 }), fc.array(writeArb, { minLength: 5, maxLength: 30 }), (ops, bars, writes) => {
      const p = build(true, ops, bars);
      const initial = state(p);
      for (const { off, data } of writes) {
        try {
          p.write(off, data);
        } catch {
          // refused writes are covered elsewhere
        }
      }
      p.reset();
      assert.equal(state(p), initial);
    }),
    { numRuns: 150 },
  );
});
