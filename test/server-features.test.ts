// Server features beyond the basic commands, over real sockets: FLR through
// the PCIe capability, REGION_WRITE_MULTI, MSI-X set up in batches, the async
// quiesce hook, ioeventfds (GET_REGION_IO_FDS), client reconnect, the gpio
// sample, and the --fd / SIGTERM conventions of `vfu serve`.
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { VfioUserClient } from '../src/client/client.js';
import { createGpio } from '../src/devices/gpio.js';
import { createSample } from '../src/devices/sample.js';
import { native } from '../src/native/index.js';
import { Exp } from '../src/pci/constants.js';
import { Command, IrqIndex, PciRegion } from '../src/protocol/constants.js';
import { VfioUserDevice } from '../src/server/device.js';
import { NativeEndpoint } from '../src/transport/native-endpoint.js';
import { fdCount, once, serve, tempDir, until } from './helpers/server.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const cli = join(root, 'dist', 'src', 'cli', 'main.js');

function expressDevice(): { dev: VfioUserDevice; cap: number; resets: string[] } {
  const dev = new VfioUserDevice({ pci: { vendorId: 0x1af4, deviceId: 0x1000, express: true } });
  const cap = dev.pci.addExpress({ flrCapable: true });
  dev.pci.addMsix({ tableSize: 40, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x800 });
  dev.addRegion(PciRegion.BAR0, { size: 0x1000, memory: true });
  dev.setIrqCount(IrqIndex.MSIX, 40);
  const resets: string[] = [];
  dev.onReset((r) => void resets.push(r));
  return { dev, cap, resets };
}

test('an FLR written through the PCIe capability resets the device', async () => {
  const { dev, cap, resets } = expressDevice();
  const srv = await serve(dev);
  const c = await srv.connect();
  assert.equal((await c.regionInfo(PciRegion.CONFIG)).size, 4096);
  const ctl = Buffer.alloc(2);
  ctl.writeUInt16LE(Exp.DEVCTL_BCR_FLR);
  await c.regionWrite(PciRegion.CONFIG, cap + Exp.DEVCTL, ctl);
  assert.deepEqual(resets, ['flr']);
  assert.equal((await c.regionRead(PciRegion.CONFIG, cap + Exp.DEVCTL, 2)).readUInt16LE(0) & Exp.DEVCTL_BCR_FLR, 0);
  c.close();
  await srv.close();
});

test('MSI-X: 40 vectors set up in batches of max_msg_fds, each one delivered', async () => {
  const { dev } = expressDevice();
  const srv = await serve(dev, { maxMsgFds: 16 });
  const c = await srv.connect();
  const sent = c.conn.stats.sent;
  await c.enableInterrupts(IrqIndex.MSIX, 40);
  assert.equal(c.conn.stats.sent - sent, 3, 'three SET_IRQS messages (16 + 16 + 8)');
  for (const v of [0, 15, 16, 35, 39]) {
    const got = once<[number, number]>(c, 'interrupt');
    assert.ok(dev.trigger(IrqIndex.MSIX, v));
    assert.deepEqual((await got).slice(0, 2), [IrqIndex.MSIX, v]);
  }
  c.close();
  await srv.close();
});

test('REGION_WRITE_MULTI applies every write in order', async () => {
  const s = createSample();
  const srv = await serve(s.device);
  const c = await srv.connect();
  assert.equal(c.serverCaps.writeMultiple, true);
  const sent = c.conn.stats.sent;
  await c.regionWriteMulti([
    { index: PciRegion.BAR1, offset: 0, data: Buffer.from('abcdefgh') },
    { index: PciRegion.BAR1, offset: 8, data: Buffer.from('ijkl') },
    { index: PciRegion.BAR1, offset: 2, data: Buffer.from('XY') },
  ]);
  assert.equal(c.conn.stats.sent - sent, 1, 'one message');
  assert.equal(s.bar1.subarray(0, 12).toString(), 'abXYefghijkl');
  c.close();
  await srv.close();
});

test('the quiesce hook delays DMA map and reset until the device is idle', async () => {
  const s = createSample();
  const order: string[] = [];
  let release: (() => void) | null = null;
  let hold = true;
  s.device.onQuiesce(
    () =>
      new Promise<void>((r) => {
        order.push('quiesce');
        release = () => r();
        if (!hold) r();
      }),
    () => order.push('resume'),
  );
  s.device.onReset(() => void order.push('reset'));
  const srv = await serve(s.device);
  const c = await srv.connect();
  c.memory.add(0, 0x1000);
  const mapped = c.dmaMap({ iova: 0, size: 0x1000 });
  const info = c.deviceInfo(); // queued behind the map
  await until(() => order.length === 1);
  assert.equal(s.device.dma.count, 0, 'not mapped while the device is still busy');
  assert.equal(s.device.dma.quiesced, false);
  release!();
  await mapped;
  await info;
  assert.equal(s.device.dma.count, 1);
  const reset = c.reset();
  await until(() => order.length === 3);
  release!();
  await reset;
  assert.deepEqual(order, ['quiesce', 'resume', 'quiesce', 'reset', 'resume']);
  hold = false;
  c.close();
  await srv.close();
});

test('ioeventfds: GET_REGION_IO_FDS hands out the fd, signalling it reaches the device', async () => {
  const s = createSample();
  const signals: number[] = [];
  s.device.addIoEventFd({ region: PciRegion.BAR1, offset: 0x100, size: 4, datamatch: 7n, onSignal: (n) => void signals.push(n) });
  const srv = await serve(s.device);
  const c = await srv.connect();
  const r = await c.regionIoFds(PciRegion.BAR1);
  assert.equal(r.subRegions.length, 1);
  assert.equal(r.subRegions[0]!.offset, 0x100n);
  assert.equal(r.subRegions[0]!.data, 7n);
  assert.equal(r.fds.length, 1);
  native!.eventfdWrite(r.fds[0]!, 1);
  await until(() => signals.length === 1);
  assert.equal((await c.regionIoFds(PciRegion.BAR0)).subRegions.length, 0);
  for (const fd of r.fds) native!.close(fd);
  c.close();
  await srv.close();
});

test('client reconnect re-establishes DMA mappings and interrupts', async () => {
  const s = createSample();
  const srv = await serve(s.device);
  const c = await srv.connect();
  c.memory.add(0x10000, 0x2000);
  await c.dmaMap({ iova: 0x10000, size: 0x2000 });
  await c.enableInterrupts(IrqIndex.INTX, 1);
  const gone = once(srv.server, 'disconnected');
  await c.reconnect();
  await gone;
  await until(() => s.device.dma.count === 1 && s.device.irqs.hasEventfd(IrqIndex.INTX, 0));
  s.device.dma.writeSync(0x10000, Buffer.from('after reconnect'));
  assert.equal(c.memory.view(0x10000, 15).toString(), 'after reconnect');
  const irq = once(c, 'interrupt');
  s.device.trigger(IrqIndex.INTX);
  await irq;
  c.close();
  await srv.close();
});

test('a client killed with SIGKILL: the server drops its resources and takes the next client', async () => {
  const s = createSample();
  const srv = await serve(s.device);
  const fds0 = fdCount();
  const child = spawn(process.execPath, [join(root, 'dist', 'test', 'fixtures', 'map-and-hang.js'), srv.path], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((r) => child.stdout!.once('data', () => r()));
  assert.equal(s.device.dma.count, 1);
  assert.ok(s.device.irqs.hasEventfd(IrqIndex.INTX, 0));
  assert.equal(s.bar1.subarray(0, 5).toString(), 'child');
  const gone = once(srv.server, 'disconnected');
  child.kill('SIGKILL');
  await gone;
  assert.equal(s.device.dma.count, 0);
  assert.equal(s.device.irqs.fdCount, 0);
  await until(() => child.exitCode !== null || child.signalCode !== null);
  child.stdout!.destroy();
  await until(() => fdCount() === fds0);
  assert.equal(fdCount(), fds0, 'no descriptor leaked in the server');
  const c = await srv.connect();
  assert.equal((await c.regionRead(PciRegion.BAR1, 0, 5)).toString(), 'child', 'device state intact');
  c.close();
  await srv.close();
});

test('the gpio sample counts output pulses on its inputs', async () => {
  const g = createGpio();
  const srv = await serve(g.device);
  const c = await srv.connect();
  assert.equal((await c.regionInfo(PciRegion.BAR2)).size, 0x100);
  const cfg = await c.regionRead(PciRegion.CONFIG, 0, 4);
  assert.deepEqual([cfg.readUInt16LE(0), cfg.readUInt16LE(2)], [0x494f, 0x0dc8]);
  assert.equal((await c.regionRead(PciRegion.BAR2, 1, 1))[0], 0xff, 'every pin at 0 pulses reads 1');
  for (let i = 0; i < 2; i++) await c.regionWrite(PciRegion.BAR2, 0, Buffer.from([0x01]));
  assert.equal((await c.regionRead(PciRegion.BAR2, 1, 1))[0], 0xfe, 'pin 0 pulsed twice reads 0');
  await c.regionWrite(PciRegion.BAR2, 0, Buffer.from([0x01]));
  assert.equal((await c.regionRead(PciRegion.BAR2, 1, 1))[0], 0xff);
  c.close();
  await srv.close();
});

test('vfu serve --fd N serves an inherited socket and exits when it closes', async () => {
  const [mine, theirs] = native!.socketpair();
  const child = spawn(process.execPath, [cli, 'serve', 'sample', '--fd', '3'], { stdio: ['ignore', 'ignore', 'inherit', theirs] });
  native!.close(theirs);
  const c = await VfioUserClient.fromEndpoint(new NativeEndpoint(mine, { maxMessageSize: 2 << 20, maxFds: 16 }));
  assert.equal((await c.deviceInfo()).numRegions, 9);
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  c.close();
  assert.equal(await exited, 0);
});

test('vfu serve honours SIGTERM: exits 0 and removes its socket', async () => {
  const t = tempDir();
  const path = join(t.dir, 's.sock');
  const child = spawn(process.execPath, [cli, 'serve', 'gpio', '--socket-path', path], { stdio: 'ignore' });
  await until(() => existsSync(path));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  child.kill('SIGTERM');
  assert.equal(await exited, 0);
  assert.equal(existsSync(path), false);
  t.cleanup();
});

test('a command arriving before VERSION is refused, then negotiation still works', async () => {
  const s = createSample();
  const srv = await serve(s.device);
  const c = await srv.connect();
  // (the client negotiated already; check the server refuses a second VERSION)
  await assert.rejects(c.conn.request(Command.VERSION, Buffer.from([0, 0, 2, 0])), { errno: 22 });
  c.close();
  await srv.close();
});

test("the server leaves the client's eventfd blocking (O_NONBLOCK would be shared)", async () => {
  const { readFileSync } = await import('node:fs');
  const { IrqSetStruct } = await import('../src/protocol/messages/device.js');
  const { IrqSetFlag } = await import('../src/protocol/constants.js');
  const s = createSample();
  const srv = await serve(s.device);
  const c = await srv.connect();
  const efd = native!.eventfd(0, 0); // blocking, as libvfio-user's sample client makes it
  const body = IrqSetStruct.encode({ argsz: 20, flags: IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_TRIGGER, index: IrqIndex.INTX, start: 0, count: 1 });
  await c.conn.request(Command.DEVICE_SET_IRQS, body, { fds: [efd] });
  const flags = parseInt(/flags:\s+(\d+)/.exec(readFileSync(`/proc/self/fdinfo/${efd}`, 'utf8'))![1]!, 8);
  assert.equal(flags & 0o4000, 0, 'still blocking');
  assert.ok(s.device.trigger(IrqIndex.INTX));
  assert.equal(native!.eventfdRead(efd), 1);
  native!.close(efd);
  c.close();
  await srv.close();
});
