// The config space decoder: on our own devices, on config space recorded from
// libvfio-user servers, and on garbage.
import { strict as assert } from 'node:assert';
import { join } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { Command } from '../src/protocol/constants.js';
import {
  CapId,
  Cfg,
  Exp,
  ExtCapId,
  Msi,
  PciCommand,
  PciConfigSpace,
  PciStatus,
  PcieDeviceType,
  Pm,
  className,
  decodeConfigSpace,
  formatDescription,
  type DecodedCap,
} from '../src/pci/index.js';
import { messages, vectorsDir } from './helpers/traces.js';

function fullDevice(): PciConfigSpace {
  const p = new PciConfigSpace({ vendorId: 0x1b36, deviceId: 0x0010, subsystemVendorId: 0x1af4, subsystemId: 0x1100, classCode: 0x010802, revision: 2, express: true, interruptPin: 1 });
  p.setBar(0, { size: 0x4000, kind: 'mem', is64: true });
  p.setBar(2, { size: 0x100, kind: 'io' });
  p.setBar(3, { size: 12 * 1024, kind: 'mem', prefetchable: true });
  p.setRom(0x8000);
  p.addPowerManagement({ d1: true, pmeSupport: 0x19 });
  p.addMsi({ vectors: 8, is64: true, perVectorMask: true });
  p.addMsix({ tableSize: 16, tableBar: 3, tableOffset: 0x1000, pbaBar: 3, pbaOffset: 0x2000 });
  p.addExpress({ flrCapable: true });
  p.addVendor(Buffer.from('vfio'));
  p.addSerialNumber(0x0011223344556677n);
  p.addExtVendor({ vsecId: 0x1234, vsecRev: 3, body: Buffer.from('0102030405', 'hex') });
  return p;
}

function detail<K extends string>(c: DecodedCap | undefined, kind: K): Extract<NonNullable<DecodedCap['detail']>, { kind: K }> {
  assert.ok(c?.detail, 'capability has a detail');
  assert.equal(c.detail.kind, kind);
  return c.detail as Extract<NonNullable<DecodedCap['detail']>, { kind: K }>;
}

test('decodes a device built with PciConfigSpace', () => {
  const p = fullDevice();
  p.write16(Cfg.COMMAND, PciCommand.MEMORY | PciCommand.MASTER);
  p.write32(Cfg.BAR0, 0xfe000000);
  p.write32(Cfg.BAR0 + 4, 0x1);
  p.write32(Cfg.BAR2, 0xc000);
  p.write32(Cfg.BAR3, 0xfd000000);
  p.write32(Cfg.ROM, 0xfc000001);
  p.write8(Cfg.INT_LINE, 11);
  const msi = p.findCapability(CapId.MSI)!;
  p.write32(msi + Msi.ADDRESS_LO, 0xfee00000);
  p.write16(msi + Msi.DATA_64, 0x49);
  p.write16(msi + Msi.CONTROL, Msi.CTRL_ENABLE | (3 << Msi.CTRL_MME_SHIFT));
  p.write16(p.findCapability(CapId.PM)! + Pm.PMCSR, 3);
  p.setStatusBits(PciStatus.REC_MASTER_ABORT);

  const d = decodeConfigSpace(p.bytes, { barSizes: [0x4000, undefined, 0x100, 12 * 1024], romSize: 0x8000 });
  assert.equal(d.size, 4096);
  assert.equal(d.vendorId, 0x1b36);
  assert.equal(d.deviceId, 0x0010);
  assert.equal(d.revision, 2);
  assert.equal(d.classCode, 0x010802);
  assert.equal(d.className, 'Non-Volatile memory controller');
  assert.equal(d.headerType, 0);
  assert.equal(d.multiFunction, false);
  assert.equal(d.subsystemVendorId, 0x1af4);
  assert.equal(d.subsystemId, 0x1100);
  assert.deepEqual(d.commandFlags, ['Mem', 'BusMaster']);
  assert.deepEqual(d.statusFlags, ['Cap', '<MAbort', 'DEVSEL=fast']);
  assert.equal(d.interruptPinName, 'INTA');
  assert.equal(d.interruptLine, 11);
  assert.deepEqual(d.bars, [
    { index: 0, kind: 'mem', is64: true, prefetchable: false, address: 0x1_fe000000n, raw: 0xfe000004, size: 0x4000 },
    { index: 2, kind: 'io', is64: false, prefetchable: false, address: 0xc000n, raw: 0xc001, size: 0x100 },
    { index: 3, kind: 'mem', is64: false, prefetchable: true, address: 0xfd000000n, raw: 0xfd000008, size: 12 * 1024 },
  ]);
  assert.deepEqual(d.rom, { address: 0xfc000000, enabled: true, raw: 0xfc000001, size: 0x8000 });
  assert.deepEqual(d.notes, []);

  const all = [...d.capabilities, ...d.extendedCapabilities];
  assert.deepEqual(
    all.map((c) => [c.offset, c.id, c.extended]),
    p.capabilities.map((c) => [c.offset, c.id, c.extended]),
  );
  assert.deepEqual(d.capabilities.map((c) => c.name), ['Power Management', 'MSI', 'MSI-X', 'PCI Express', 'Vendor Specific']);
  const pm = detail(d.capabilities[0], 'pm');
  assert.deepEqual(pm, { kind: 'pm', version: 3, d1: true, d2: false, pmeSupport: 0x19, powerState: 3, powerStateName: 'D3hot', noSoftReset: true, pmeEnabled: false, pmeStatus: false });
  assert.deepEqual(detail(d.capabilities[1], 'msi'), {
    kind: 'msi',
    enabled: true,
    is64: true,
    perVectorMask: true,
    vectorsCapable: 8,
    vectorsEnabled: 8,
    address: 0xfee00000n,
    data: 0x49,
    mask: 0,
    pending: 0,
  });
  assert.deepEqual(detail(d.capabilities[2], 'msix'), { kind: 'msix', enabled: false, functionMasked: false, tableSize: 16, tableBar: 3, tableOffset: 0x1000, pbaBar: 3, pbaOffset: 0x2000 });
  const exp = detail(d.capabilities[3], 'express');
  assert.equal(exp.version, 2);
  assert.equal(exp.deviceType, PcieDeviceType.ENDPOINT);
  assert.equal(exp.deviceTypeName, 'Endpoint');
  assert.equal(exp.flrCapable, true);
  assert.equal(exp.maxPayload, 128);
  assert.equal(exp.maxReadRequest, 512);
  assert.deepEqual(exp.link, { maxSpeed: '2.5GT/s', maxWidth: 1, speed: '2.5GT/s', width: 1 });
  const v = detail(d.capabilities[4], 'vendor');
  assert.equal(v.length, 7);
  assert.equal(v.body.toString(), 'vfio');
  assert.deepEqual(detail(d.extendedCapabilities[0], 'dsn'), { kind: 'dsn', serial: 0x0011223344556677n, text: '00-11-22-33-44-55-66-77' });
  assert.equal(d.extendedCapabilities[0]!.version, 1);
  assert.deepEqual(detail(d.extendedCapabilities[1], 'vsec'), { kind: 'vsec', vsecId: 0x1234, vsecRev: 3, vsecLength: 13, body: Buffer.from('0102030405', 'hex') });

  const text = formatDescription(d);
  assert.match(text, /^Non-Volatile memory controller \[010802\]: device 1b36:0010 \(rev 02\)/);
  assert.match(text, /Region 0: Memory \(64-bit, non-prefetchable\) at 1fe000000 \[size=16384\]/);
  assert.match(text, /Region 2: I\/O ports at c000/);
  assert.match(text, /Expansion ROM at fc000000 \[enabled\]/);
  assert.match(text, /Capabilities: \[48\] MSI: Enable\+ Count=8\/8 64bit Maskable/);
  assert.match(text, /PCI Express v2 Endpoint, FLR, link 2.5GT\/s x1/);
  assert.match(text, /Capabilities: \[100 v1\] Device Serial Number 00-11-22-33-44-55-66-77/);
});

/** The first full config space read a recorded session's server answered. */
function recordedConfig(file: string): Buffer {
  for (const m of messages(join(vectorsDir(), file))) {
    if (m.cmd !== Command.REGION_READ || m.type !== 'reply' || m.error) continue;
    const p = Buffer.from(m.payload, 'hex');
    if (p.readUInt32LE(8) === 7 && p.readBigUInt64LE(0) === 0n && p.readUInt32LE(12) >= 64) return p.subarray(16, 16 + p.readUInt32LE(12));
  }
  throw new Error(`no config read in ${file}`);
}

test('decodes config space recorded from libvfio-user servers', () => {
  const gpio = decodeConfigSpace(recordedConfig('qemu-10.2-gpio-guest.jsonl'));
  assert.equal(gpio.size, 256);
  assert.equal(gpio.vendorId, 0x494f);
  assert.equal(gpio.deviceId, 0x0dc8);
  assert.equal(gpio.className, 'Non-VGA unclassified device');
  assert.equal(gpio.interruptPinName, 'INTA');
  assert.deepEqual(gpio.capabilities, []);
  assert.deepEqual(gpio.extendedCapabilities, []);
  // That server leaves bit 0 set in every BAR register before QEMU programs them.
  assert.deepEqual(
    gpio.bars.map((b) => [b.index, b.kind, b.address]),
    [0, 1, 2, 3, 4, 5].map((i) => [i, 'io', 0n]),
  );

  const mem = decodeConfigSpace(recordedConfig('qemu-10.2-gpiomem-guest.jsonl'), { barSizes: [undefined, undefined, 256] });
  const bar2 = mem.bars.find((b) => b.index === 2);
  assert.deepEqual(bar2, { index: 2, kind: 'mem', is64: false, prefetchable: false, address: 0n, raw: 0, size: 256 });

  for (const file of ['qemu-10.2-servermem-t1.jsonl', 'libvfio-user-session1-src.jsonl']) {
    const d = decodeConfigSpace(recordedConfig(file));
    assert.equal(d.vendorId, 0xdead, file);
    assert.equal(d.deviceId, 0xbeef);
    assert.equal(d.subsystemVendorId, 0xcafe);
    assert.equal(d.subsystemId, 0xbabe);
    assert.equal(d.interruptPinName, 'INTA');
    assert.deepEqual(d.notes, []);
  }
  // In the QEMU session BAR1 is a memory BAR (its register reads 0); the sample client saw it read as 1.
  assert.deepEqual(decodeConfigSpace(recordedConfig('qemu-10.2-servermem-t1.jsonl')).bars.map((b) => b.index), [0, 2, 3, 4, 5]);
  assert.deepEqual(decodeConfigSpace(recordedConfig('libvfio-user-session1-src.jsonl')).bars.map((b) => b.index), [0, 1, 2, 3, 4, 5]);
});

test('class names', () => {
  assert.equal(className(0x088000), 'System peripheral');
  assert.equal(className(0x020000), 'Ethernet controller');
  assert.equal(className(0x010802), 'Non-Volatile memory controller');
  assert.equal(className(0x000000), 'Non-VGA unclassified device');
  assert.equal(className(0x030000), 'VGA compatible controller');
  assert.equal(className(0x0c0330), 'USB controller');
  assert.equal(className(0x0c8000), 'Serial bus controller', 'unknown subclass: the base class name');
  assert.equal(className(0x7f0000), 'Unknown class 0x7f');
});

/** A 256- or 4096-byte config with a capability list, for hand-made damage. */
function raw(size = 256): Buffer {
  const b = Buffer.alloc(size);
  b.writeUInt16LE(0x1234, 0);
  b.writeUInt16LE(0x5678, 2);
  b.writeUInt16LE(PciStatus.CAP_LIST, Cfg.STATUS);
  return b;
}

test('garbage: standard chain loops, header pointers, truncation', () => {
  const b = raw();
  b[Cfg.CAP_PTR] = 0x40;
  b[0x40] = CapId.VNDR;
  b[0x41] = 0x50;
  b[0x42] = 3;
  b[0x50] = 0x77;
  b[0x51] = 0x43; // low bits are reserved: points to 0x40 again
  let d = decodeConfigSpace(b);
  assert.deepEqual(d.capabilities.map((c) => c.offset), [0x40, 0x50]);
  assert.equal(d.capabilities[1]!.name, 'Unknown capability 0x77');
  assert.match(d.notes.join('\n'), /loops back to 0x40/);

  b[0x51] = 0x20;
  d = decodeConfigSpace(b);
  assert.match(d.notes.join('\n'), /points into the header/);

  // Capabilities that run past the end of the 256 bytes.
  b[0x51] = 0xf4;
  b[0xf4] = CapId.MSI;
  b[0xf5] = 0xfc;
  b.writeUInt16LE(Msi.CTRL_64BIT | Msi.CTRL_PVM, 0xf6);
  b[0xfc] = CapId.EXP;
  b[0xfd] = 0;
  d = decodeConfigSpace(b);
  assert.deepEqual(d.capabilities.map((c) => c.offset), [0x40, 0x50, 0xf4, 0xfc]);
  assert.equal(d.capabilities[2]!.detail, undefined);
  assert.match(d.capabilities[2]!.note!, /truncated/);
  assert.equal(d.capabilities[3]!.detail, undefined);

  // Vendor capability with a silly length.
  b[0x42] = 1;
  d = decodeConfigSpace(b);
  assert.match(d.notes.join('\n'), /shorter than its header/);
  b[0x42] = 0xff;
  d = decodeConfigSpace(b);
  assert.match(d.notes.join('\n'), /runs past the end/);

  // Status says no capability list: the pointer is not followed.
  b.writeUInt16LE(0, Cfg.STATUS);
  assert.deepEqual(decodeConfigSpace(b).capabilities, []);

  // Too short for a header.
  d = decodeConfigSpace(Buffer.from('3412', 'hex'));
  assert.equal(d.vendorId, 0x1234);
  assert.match(d.notes[0]!, /truncated/);
  assert.deepEqual(decodeConfigSpace(Buffer.alloc(0)).bars, []);
  assert.match(decodeConfigSpace(Buffer.alloc(64, 0xff)).notes.join('\n'), /0xffff/);
});

test('garbage: extended chain loops, low pointers, all ones, truncated', () => {
  const b = raw(4096);
  const hdr = (at: number, id: number, next: number): void => void b.writeUInt32LE((id | (1 << 16) | (next << 20)) >>> 0, at);
  hdr(0x100, ExtCapId.DSN, 0x200);
  hdr(0x200, ExtCapId.ERR, 0x100);
  let d = decodeConfigSpace(b);
  assert.deepEqual(d.extendedCapabilities.map((c) => [c.offset, c.name]), [
    [0x100, 'Device Serial Number'],
    [0x200, 'Advanced Error Reporting'],
  ]);
  assert.match(d.notes.join('\n'), /loops back to 0x100/);
  hdr(0x200, ExtCapId.VNDR, 0x80);
  b.writeUInt32LE(0x0001 | (4 << 20), 0x204); // VSEC length 4 < 8
  d = decodeConfigSpace(b);
  assert.match(d.notes.join('\n'), /points below 0x100/);
  assert.match(d.notes.join('\n'), /shorter than its headers/);
  hdr(0x200, ExtCapId.VNDR, 0xffc);
  b.writeUInt32LE(0x0001 | (8 << 20), 0x204);
  b.writeUInt32LE(0xffffffff, 0xffc);
  d = decodeConfigSpace(b);
  assert.match(d.notes.join('\n'), /all ones/);
  hdr(0xffc, ExtCapId.DSN, 0);
  d = decodeConfigSpace(b);
  assert.match(d.notes.join('\n'), /extended capability 0xffc: truncated/);
  // A zero header at 0x100 means none.
  b.writeUInt32LE(0, 0x100);
  d = decodeConfigSpace(b);
  assert.deepEqual(d.extendedCapabilities, []);
  assert.deepEqual(d.notes, []);
});

test('BAR decoding edge cases: 64-bit in the last slot, reserved type, bridge header', () => {
  const b = raw();
  b.writeUInt32LE(0xf0000004, Cfg.BAR5);
  b.writeUInt32LE(0xe0000002, Cfg.BAR4);
  const d = decodeConfigSpace(b);
  assert.deepEqual(d.bars.map((x) => [x.index, x.is64]), [
    [4, false],
    [5, false],
  ]);
  assert.match(d.notes.join('\n'), /BAR4: reserved memory type 1/);
  assert.match(d.notes.join('\n'), /BAR5: 64-bit BAR without an upper half/);
  b[Cfg.HEADER_TYPE] = 0x81;
  b.writeUInt32LE(0xfe000000, Cfg.BAR0);
  const br = decodeConfigSpace(b);
  assert.equal(br.headerType, 1);
  assert.equal(br.multiFunction, true);
  assert.deepEqual(br.bars.map((x) => x.index), [0]);
  assert.match(br.notes.join('\n'), /header type 1/);
});

test('property: any bytes decode without throwing and with bounded, in-range chains', () => {
  fc.assert(
    fc.property(
      fc.oneof(fc.uint8Array({ minLength: 256, maxLength: 256 }), fc.uint8Array({ minLength: 0, maxLength: 600 }), fc.uint8Array({ minLength: 4096, maxLength: 4096 })),
      fc.boolean(),
      (bytes, capList) => {
        if (capList && bytes.length > 7) bytes[6]! |= PciStatus.CAP_LIST;
        const d = decodeConfigSpace(bytes);
        assert.ok(d.capabilities.length <= 48);
        assert.ok(d.extendedCapabilities.length <= (4096 - 256) / 4);
        for (const c of d.capabilities) assert.ok(c.offset >= 0x40 && c.offset + 2 <= Math.min(256, bytes.length) && c.offset % 4 === 0);
        for (const c of d.extendedCapabilities) assert.ok(c.offset >= 0x100 && c.offset + 4 <= bytes.length && c.offset % 4 === 0);
        assert.equal(new Set(d.capabilities.map((c) => c.offset)).size, d.capabilities.length);
        assert.equal(new Set(d.extendedCapabilities.map((c) => c.offset)).size, d.extendedCapabilities.length);
        assert.equal(typeof formatDescription(d), 'string');
      },
    ),
    { numRuns: 1000 },
  );
});

test('property: decoding a random device finds exactly its capabilities', () => {
  const capArb = fc.oneof(
    fc.constant({ k: 'pm' as const }),
    fc.record({ k: fc.constant('msi' as const), vectors: fc.constantFrom(1, 2, 4, 8, 16, 32) as fc.Arbitrary<1 | 2 | 4 | 8 | 16 | 32>, is64: fc.boolean(), pvm: fc.boolean() }),
    fc.record({ k: fc.constant('msix' as const), n: fc.integer({ min: 1, max: 2048 }) }),
    fc.record({ k: fc.constant('exp' as const), flr: fc.boolean() }),
    fc.record({ k: fc.constant('vndr' as const), len: fc.integer({ min: 0, max: 60 }) }),
    fc.record({ k: fc.constant('dsn' as const), serial: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }) }),
    fc.record({ k: fc.constant('vsec' as const), len: fc.integer({ min: 0, max: 200 }) }),
  );
  fc.assert(
    fc.property(fc.boolean(), fc.array(capArb, { maxLength: 15 }), (express, ops) => {
      const p = new PciConfigSpace({ vendorId: 1, deviceId: 2, express });
      for (const op of ops) {
        try {
          if (op.k === 'pm') p.addPowerManagement();
          else if (op.k === 'msi') p.addMsi({ vectors: op.vectors, is64: op.is64, perVectorMask: op.pvm });
          else if (op.k === 'msix') p.addMsix({ tableSize: op.n, tableBar: 1, tableOffset: 0, pbaBar: 2, pbaOffset: 0 });
          else if (op.k === 'exp') p.addExpress({ flrCapable: op.flr });
          else if (op.k === 'vndr') p.addVendor(Buffer.alloc(op.len, 1));
          else if (op.k === 'dsn') p.addSerialNumber(op.serial);
          else p.addExtVendor({ vsecId: 9, vsecRev: 1, body: Buffer.alloc(op.len, 2) });
        } catch {
          // duplicates, no room, no extended space: covered by the config tests
        }
      }
      const d = decodeConfigSpace(p.bytes);
      assert.deepEqual(d.notes, []);
      const all = [...d.capabilities, ...d.extendedCapabilities];
      assert.deepEqual(
        all.map((c) => [c.offset, c.id, c.extended]),
        p.capabilities.map((c) => [c.offset, c.id, c.extended]),
      );
      for (const c of all) {
        const known = [CapId.PM, CapId.MSI, CapId.MSIX, CapId.EXP, CapId.VNDR].includes(c.id as 1) || (c.extended && [ExtCapId.DSN, ExtCapId.VNDR].includes(c.id as 3));
        assert.ok(known && c.detail, `decoded ${c.name}`);
        if (c.detail?.kind === 'msix') assert.equal(c.detail.tableSize, p.msix!.tableSize);
        if (c.detail?.kind === 'msi') assert.equal(c.detail.vectorsCapable, p.msi!.vectorsCapable);
        if (c.detail?.kind === 'express') assert.equal(c.detail.flrCapable, p.isFlrCapable);
        if (c.detail?.kind === 'vendor') assert.equal(c.detail.body.length, c.detail.length - 3);
      }
      const exp = p.findCapability(CapId.EXP);
      if (exp !== undefined) assert.equal(p.read16(exp + Exp.DEVCTL), 0x2810);
    }),
    { numRuns: 300 },
  );
});
