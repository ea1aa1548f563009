// A lost connection is not a reset of the device's registers: the built-in
// devices keep their state when a client goes away, so `vfu lspci` (which
// connects, reads and leaves) and `vfu migrate` (which leaves both ends when
// done) never wipe them.  Each case writes a register, lets the CLI connect
// and go, and reads the register back with a new client.
import { strict as assert } from 'node:assert';
import { describe, test } from 'node:test';
import { createBigState } from '../src/devices/bigstate.js';
import { createGpio } from '../src/devices/gpio.js';
import { createSample } from '../src/devices/sample.js';
import { PciRegion } from '../src/protocol/constants.js';
import type { VfioUserDevice } from '../src/server/device.js';
import { cli, start } from './helpers/procs.js';
import { serve, type Served } from './helpers/server.js';

/** Runs `vfu ARGS` (asynchronously: the servers live in this process). */
async function vfu(...args: string[]): Promise<string> {
  const p = start([cli, ...args]);
  const [code] = await p.exited;
  assert.equal(code, 0, `vfu ${args.join(' ')} failed: ${p.stderr()}`);
  return p.stdout();
}

/** Serves `dev` and records its resets. */
async function served(dev: VfioUserDevice): Promise<{ srv: Served; resets: string[] }> {
  const resets: string[] = [];
  dev.on('reset', (reason) => resets.push(reason));
  return { srv: await serve(dev), resets };
}

describe('built-in devices keep their state across a lost connection', () => {
  test('sample: BAR0 and BAR1 survive vfu lspci and a client that disconnects', async () => {
    const { srv, resets } = await served(createSample().device);
    try {
      const a = await srv.connect();
      const t = Buffer.alloc(8);
      t.writeBigInt64LE(1n); // a time long past: the device does not arm its timer
      await a.regionWrite(PciRegion.BAR0, 0, t);
      await a.regionWrite(PciRegion.BAR1, 0x100, Buffer.from('kept'));
      a.close();
      assert.match(await vfu('lspci', srv.path), /dead:beef/i);
      const b = await srv.connect();
      assert.equal((await b.regionRead(PciRegion.BAR1, 0x100, 4)).toString(), 'kept');
      // BAR0 reads "now minus the programmed time": far from 0 when the time was kept
      assert.ok((await b.regionRead(PciRegion.BAR0, 0, 8)).readBigInt64LE(0) > 1_000_000n);
      assert.ok(resets.length >= 2 && resets.every((r) => r === 'lost-connection'), resets.join());
    } finally {
      await srv.close();
    }
  });

  test('gpio: pin counters survive vfu lspci', async () => {
    const { srv } = await served(createGpio().device);
    try {
      const a = await srv.connect();
      await a.regionWrite(PciRegion.BAR2, 0, Buffer.from([0x01])); // pulse pin 0 once
      assert.equal((await a.regionRead(PciRegion.BAR2, 1, 1))[0], 0xfe);
      a.close();
      await vfu('lspci', srv.path);
      const b = await srv.connect();
      assert.equal((await b.regionRead(PciRegion.BAR2, 1, 1))[0], 0xfe);
    } finally {
      await srv.close();
    }
  });

  test('bigstate: BAR0 bytes survive vfu lspci', async () => {
    const { srv } = await served(createBigState({ stateMib: 1, precopyMib: 0 }).device);
    try {
      const a = await srv.connect();
      await a.regionWrite(PciRegion.BAR0, 64, Buffer.from('still here'));
      a.close();
      await vfu('lspci', srv.path);
      const b = await srv.connect();
      assert.equal((await b.regionRead(PciRegion.BAR0, 64, 10)).toString(), 'still here');
    } finally {
      await srv.close();
    }
  });

  test('gpio: vfu migrate leaves the destination with the source state, and the source unchanged', async () => {
    const src = await served(createGpio().device);
    const dst = await served(createGpio().device);
    try {
      const a = await src.srv.connect();
      await a.regionWrite(PciRegion.BAR2, 4, Buffer.from([0x81])); // pins 8 and 15 once
      a.close();
      await vfu('migrate', '--from', src.srv.path, '--to', dst.srv.path, '--quiet');
      const d = await dst.srv.connect();
      assert.equal((await d.regionRead(PciRegion.BAR2, 5, 1))[0], 0x7e);
      const s = await src.srv.connect();
      assert.equal((await s.regionRead(PciRegion.BAR2, 5, 1))[0], 0x7e);
      assert.ok(dst.resets.every((r) => r === 'lost-connection'));
    } finally {
      await src.srv.close();
      await dst.srv.close();
    }
  });
});
