// The public API's types as a newcomer meets them.  The `@ts-expect-error`
// lines are checked by the build itself (this file is compiled with the
// rest): if a misspelt event or a wrong listener ever compiles again, the
// directive is unused and `npm run build` fails.  The runtime part proves
// that ordinary arrow functions (returning numbers, Buffers, promises of
// anything) work as callbacks.
import { strict as assert } from 'node:assert';
import { describe, test } from 'node:test';
import {
  IrqIndex,
  MigState,
  PciRegion,
  VfioUserDevice,
  type VfioUserClient,
  type VfioUserServer,
} from '../src/index.js';
import { once, serve } from './helpers/server.js';

/** Never called: only compiled. */
export function compileOnly(dev: VfioUserDevice, server: VfioUserServer, client: VfioUserClient): void {
  // the right names and signatures compile...
  client.on('interrupt', (index: number, vector: number, count: number) => void [index, vector, count]);
  client.on('lost', (err: Error | null) => void err);
  dev.on('reset', (reason) => void reason.length);
  dev.on('disconnected', () => {});
  server.on('refused', () => {});

  // ...a misspelt event does not
  // @ts-expect-error 'interupt' is not a client event
  client.on('interupt', () => {});
  // @ts-expect-error 'rest' is not a device event
  dev.on('rest', () => {});
  // @ts-expect-error 'disconnect' is not a server event (it is 'disconnected')
  server.once('disconnect', () => {});

  // ...nor does a listener with the wrong signature
  // @ts-expect-error the interrupt index is a number
  client.on('interrupt', (index: string) => void index);
  // @ts-expect-error a reset reason is a string
  dev.on('reset', (reason: number) => void reason);
  // @ts-expect-error 'log' gives a level and a message
  dev.on('log', (level: string, message: string, extra: number) => void [level, message, extra]);
  // @ts-expect-error the server's session is not a number
  server.on('session', (s: number) => void s);
}

describe('API types', () => {
  test('ordinary arrow functions serve as callbacks (their values are ignored)', async () => {
    const regs = Buffer.alloc(16);
    const dev = new VfioUserDevice({ pci: { vendorId: 0x1234, deviceId: 0x5678 } });
    dev.addRegion(PciRegion.BAR0, {
      size: 16,
      // Buffer.copy returns a number
      access: { read: (o, out) => regs.copy(out, 0, o, o + out.length), write: async (o, d) => d.copy(regs, o) },
    });
    dev.setIrqCount(IrqIndex.MSIX, 1);
    let resets = 0;
    dev.onReset(() => ++resets);
    dev.onQuiesce(async () => 'quiet', () => true);
    dev.setupMigration({
      transition: async () => 42,
      readData: () => Buffer.alloc(0),
      writeData: (d) => d.length,
    });
    const srv = await serve(dev);
    try {
      const c = await srv.connect();
      await c.regionWrite(PciRegion.BAR0, 4, Buffer.from([1, 2, 3, 4]));
      assert.deepEqual([...(await c.regionRead(PciRegion.BAR0, 4, 4))], [1, 2, 3, 4]);
      await c.reset();
      assert.equal(resets, 1);
      await c.setMigrationState(MigState.STOP);
      assert.equal(await c.migrationState(), MigState.STOP);
      const gone = once(dev, 'disconnected');
      c.close();
      await gone;
      assert.equal(resets, 2);
    } finally {
      await srv.close();
    }
  });
});
