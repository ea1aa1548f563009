// Node compiles its own JavaScript (Buffer.concat, Buffer#copy, the BigInt
// reads and writes, the timers) when a process first calls it: 40-190 us a
// function on this VM, with or without eager compile flags, against 1-12 us
// once warm.  A migration's downtime window runs code that a fresh process
// (`vfu serve`, `vfu migrate`, `vfu receive`) has run once or never: the
// destination's first Buffer.concat, Buffer#copy and readBigInt64LE were
// the sample device's restore, with the guest paused.  Processes that take
// part call these once beforehand, on small buffers of their own.
import { performance } from 'node:perf_hooks';

let warmed = false;

/** Calls Node's Buffer, timer and clock functions once (the first call in a process; later calls return at once). */
export function warmNodeBuiltins(): void {
  if (warmed) return;
  warmed = true;
  const a = Buffer.alloc(32);
  const b = Buffer.concat([a.subarray(0, 16), Buffer.from(a.subarray(16))]);
  b.writeBigInt64LE(1n, 0);
  b.writeBigUInt64LE(1n, 8);
  b.writeUInt32LE(1, 16);
  b.writeUInt16LE(1, 20);
  b.writeUInt8(1, 22);
  void (b.readBigInt64LE(0) + b.readBigUInt64LE(8));
  void (b.readUInt32LE(16) + b.readUInt16LE(20) + b.readUInt8(22));
  b.copy(a, 0, 0, 16);
  a.set(b.subarray(16), 16);
  a.fill(0);
  a.equals(b);
  Buffer.allocUnsafe(16).toString('utf8', 0, 4);
  Buffer.allocUnsafeSlow(16);
  JSON.parse(Buffer.from(JSON.stringify({ ok: true })).toString('utf8'));
  performance.now();
  // two durations: a second timer list goes into Node's priority queue
  // (its insert and removal code runs only then, and is compiled then)
  const timers = [setTimeout(() => {}, 1000), setTimeout(() => {}, 1001), setTimeout(() => {}, 999)];
  for (const t of timers) clearTimeout(t);
}
