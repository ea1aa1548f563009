// MSI-X table and PBA: layout, access rules, masking and pending bits.
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import fc from 'fast-check';
import { Errno } from '../src/protocol/constants.js';
import { VfuError } from '../src/protocol/errors.js';
import { MsixTable } from '../src/pci/index.js';

function throwsErrno(fn: () => unknown, errno: number, what?: string): void {
  assert.throws(fn, (e: unknown) => e instanceof VfuError && e.errno === errno, what);
}
function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
}

test('reset state: every vector masked, zero address and data, nothing pending', () => {
  const t = new MsixTable(3);
  assert.equal(t.tableSize, 48);
  assert.equal(t.pbaSize, 8);
  assert.equal(new MsixTable(64).pbaSize, 8);
  assert.equal(new MsixTable(65).pbaSize, 16);
  assert.equal(new MsixTable(2048).pbaSize, 256);
  for (let v = 0; v < 3; v++) {
    assert.deepEqual(t.entry(v), { address: 0n, data: 0, masked: true });
    assert.ok(t.isMasked(v));
    assert.ok(!t.isPending(v));
    assert.equal(t.readTable(v * 16 + 12, 4).readUInt32LE(0), 1);
  }
  assert.ok(t.readPba(0, 8).equals(Buffer.alloc(8)));
  for (const bad of [0, 2049, 1.5, -1, Number.NaN]) throwsErrno(() => new MsixTable(bad), Errno.EINVAL);
});

test('entries: dword and qword accesses; only the mask bit of vector control exists', () => {
  const t = new MsixTable(4);
  t.writeTable(16, u32(0xfee01000));
  t.writeTable(20, u32(0x1));
  const q = Buffer.alloc(8);
  q.writeUInt32LE(0x4021, 0);
  q.writeUInt32LE(0xfffffffe, 4);
  t.writeTable(24, q);
  assert.deepEqual(t.entry(1), { address: 0x1_fee01000n, data: 0x4021, masked: false });
  assert.equal(t.readTable(28, 4).readUInt32LE(0), 0, 'reserved control bits read 0');
  assert.equal(t.readTable(16, 8).readBigUInt64LE(0), 0x1_fee01000n);
  t.writeTable(28, u32(0xffffffff));
  assert.equal(t.readTable(28, 4).readUInt32LE(0), 1);
  assert.deepEqual(t.entry(0), { address: 0n, data: 0, masked: true }, 'neighbours untouched');
});

test('access rules: 4 or 8 bytes, naturally aligned, inside the table or PBA', () => {
  const t = new MsixTable(2);
  const before = t.snapshot();
  for (const [off, len] of [
    [0, 1],
    [0, 2],
    [0, 16],
    [2, 4],
    [4, 8],
    [32, 4],
    [28, 8],
    [-4, 4],
    [1.5, 4],
  ] as const) {
    throwsErrno(() => t.readTable(off, len), Errno.EINVAL, `read ${off}+${len}`);
    throwsErrno(() => t.writeTable(off, Buffer.alloc(len, 0xff)), Errno.EINVAL, `write ${off}+${len}`);
  }
  for (const [off, len] of [
    [8, 4],
    [4, 8],
    [0, 2],
    [-8, 8],
  ] as const) {
    throwsErrno(() => t.readPba(off, len), Errno.EINVAL);
    throwsErrno(() => t.writePba(off, Buffer.alloc(len)), Errno.EINVAL);
  }
  assert.ok(t.snapshot().equals(before));
  t.writePba(0, Buffer.alloc(8, 0xff));
  assert.ok(t.readPba(0, 8).equals(Buffer.alloc(8)), 'the PBA is read-only');
});

test('onUnmask: fires on the masked -> unmasked edge, not under the function mask', () => {
  const t = new MsixTable(4);
  const seen: number[] = [];
  t.onUnmask = (v) => void seen.push(v);
  t.writeTable(1 * 16 + 12, u32(0));
  t.writeTable(1 * 16 + 12, u32(0)); // already unmasked
  t.writeTable(2 * 16 + 8, u32(5)); // data only
  assert.deepEqual(seen, [1]);
  t.setFunctionMasked(true);
  assert.ok(t.isMasked(1));
  assert.ok(!t.isMasked(1, false));
  t.writeTable(3 * 16 + 12, u32(0));
  assert.deepEqual(seen, [1], 'function mask still set');
  t.setFunctionMasked(true);
  t.setFunctionMasked(false);
  assert.deepEqual(seen, [1, 1, 3], 'clearing the function mask unmasks 1 and 3');
  t.writeTable(3 * 16 + 12, u32(1));
  assert.ok(t.isMasked(3));
  assert.ok(t.isMasked(3, false));
  assert.ok(!t.isMasked(1, false));
  assert.ok(t.isMasked(1, true));
  throwsErrno(() => t.isMasked(4), Errno.EINVAL);
});

test('pending bits, signal() and delivery on unmask', () => {
  const t = new MsixTable(70);
  const delivered: number[] = [];
  t.onUnmask = (v) => {
    if (t.isPending(v)) {
      t.clearPending(v);
      delivered.push(v);
    }
  };
  assert.equal(t.signal(66), false, 'masked at reset');
  assert.ok(t.isPending(66));
  t.setPending(0);
  t.setPending(9);
  const pba = Buffer.concat([t.readPba(0, 8), t.readPba(8, 8)]);
  assert.equal(pba.readBigUInt64LE(0), (1n << 0n) | (1n << 9n));
  assert.equal(pba.readBigUInt64LE(8), 1n << 2n);
  assert.equal(t.readPba(8, 4).readUInt32LE(0), 4);
  t.writeTable(66 * 16 + 12, u32(0));
  assert.deepEqual(delivered, [66]);
  assert.ok(!t.isPending(66));
  assert.equal(t.signal(66), true);
  assert.ok(!t.isPending(66));
  t.clearPending(9);
  assert.ok(!t.isPending(9) && t.isPending(0));
  for (const bad of [-1, 70, 0.5]) {
    throwsErrno(() => t.setPending(bad), Errno.EINVAL);
    throwsErrno(() => t.clearPending(bad), Errno.EINVAL);
    throwsErrno(() => t.isPending(bad), Errno.EINVAL);
    throwsErrno(() => t.entry(bad), Errno.EINVAL);
  }
});

test('snapshot/restore and reset', () => {
  const a = new MsixTable(5);
  a.writeTable(16, u32(0xfee00000));
  a.writeTable(28, u32(0));
  a.setPending(4);
  a.setFunctionMasked(true);
  const b = new MsixTable(5);
  b.restore(a.snapshot());
  assert.ok(b.snapshot().equals(a.snapshot()));
  assert.ok(b.functionMasked && b.isPending(4) && !b.entry(1).masked);
  throwsErrno(() => b.restore(Buffer.alloc(10)), Errno.EINVAL);
  // Reserved bits in a snapshot do not come back.
  const raw = a.snapshot();
  raw.writeUInt32LE(0xfffffffe, 12);
  raw[5 * 16] = 0xff;
  b.restore(raw);
  assert.equal(b.readTable(12, 4).readUInt32LE(0), 0);
  assert.equal(b.readPba(0, 8).readBigUInt64LE(0), 0x1fn);
  b.reset();
  assert.ok(b.snapshot().equals(new MsixTable(5).snapshot()));
});

test('property: accesses are valid exactly when 4/8 bytes, aligned and inside', () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 2048 }), fc.integer({ min: -64, max: 2048 * 16 + 64 }), fc.integer({ min: 0, max: 16 }), (n, off, len) => {
      const t = new MsixTable(n);
      const ok = (len === 4 || len === 8) && off >= 0 && off % len === 0;
      const okTable = ok && off + len <= t.tableSize;
      const okPba = ok && off + len <= t.pbaSize;
      if (okTable) assert.equal(t.readTable(off, len).length, len);
      else throwsErrno(() => t.readTable(off, len), Errno.EINVAL);
      if (okPba) assert.equal(t.readPba(off, len).length, len);
      else throwsErrno(() => t.readPba(off, len), Errno.EINVAL);
    }),
    { numRuns: 500 },
  );
});

type Op = { k: 'w'; v: number; field: number; value: number } | { k: 'fm'; on: boolean } | { k: 'sig'; v: number } | { k: 'clr'; v: number };

test('property: the table behaves like a simple model; onUnmask marks exactly the unmask edges', () => {
  const n = 9;
  const opArb: fc.Arbitrary<Op> = fc.oneof(
    fc.record({ k: fc.constant('w' as const), v: fc.integer({ min: 0, max: n - 1 }), field: fc.integer({ min: 0, max: 3 }), value: fc.oneof(fc.constantFrom(0, 1), fc.nat({ max: 0xffffffff })) }),
    fc.record({ k: fc.constant('fm' as const), on: fc.boolean() }),
    fc.record({ k: fc.constant('sig' as const), v: fc.integer({ min: 0, max: n - 1 }) }),
    fc.record({ k: fc.constant('clr' as const), v: fc.integer({ min: 0, max: n - 1 }) }),
  );
  fc.assert(
    fc.property(fc.array(opArb, { maxLength: 80 }), (ops) => {
      const t = new MsixTable(n);
      const model = Array.from({ length: n }, () => ({ lo: 0, hi: 0, data: 0, masked: true, pending: false }));
      let fm = false;
      let unmasks: number[] = [];
      t.onUnmask = (v) => void unmasks.push(v);
      for (const op of ops) {
        unmasks = [];
        const expected: number[] = [];
        switch (op.k) {
          case 'w': {
            t.writeTable(op.v * 16 + op.field * 4, u32(op.value));
            const m = model[op.v]!;
            if (op.field === 0) m.lo = op.value;
            else if (op.field === 1) m.hi = op.value;
            else if (op.field === 2) m.data = op.value;
            else {
              const now = (op.value & 1) === 1;
              if (m.masked && !now && !fm) expected.push(op.v);
              m.masked = now;
            }
            break;
          }
          case 'fm':
            t.setFunctionMasked(op.on);
            if (fm && !op.on) model.forEach((m, v) => !m.masked && expected.push(v));
            fm = op.on;
            break;
          case 'sig': {
            const m = model[op.v]!;
            const deliver: boolean = !(fm || m.masked);
            assert.equal(t.signal(op.v), deliver);
            if (!deliver) m.pending = true;
            break;
          }
          case 'clr':
            t.clearPending(op.v);
            model[op.v]!.pending = false;
            break;
        }
        assert.deepEqual(unmasks, expected);
      }
      model.forEach((m, v) => {
        assert.deepEqual(t.entry(v), { address: (BigInt(m.hi) << 32n) | BigInt(m.lo), data: m.data, masked: m.masked });
        assert.equal(t.isPending(v), m.pending);
        assert.equal(t.isMasked(v), fm || m.masked);
      });
    }),
    { numRuns: 300 },
  );
});
