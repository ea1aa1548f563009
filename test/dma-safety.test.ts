// Memory safety of DMA mappings: bounds at every edge, accesses in flight
// when DMA_UNMAP arrives (they fail cleanly, never touch a closed or reused
// descriptor; views go empty), the quiesce hook holding an unmap back, and
// the SIGBUS defence for files the client can truncate under our mapping.
import { strict as assert } from 'node:assert';
import { constants } from 'node:buffer';
import { spawnSync } from 'node:child_process';
import { closeSync, ftruncateSync, mkdtempSync, openSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createSample } from '../src/devices/sample.js';
import { native } from '../src/native/index.js';
import { Command, DmaMapFlag, Errno, PciRegion } from '../src/protocol/constants.js';
import { DmaMapStruct } from '../src/protocol/messages/dma.js';
import { RegionAccessStruct } from '../src/protocol/messages/region.js';
import { DmaController, type MessageDma } from '../src/server/dma.js';
import { VfioUserDevice } from '../src/server/device.js';
import type { Endpoint } from '../src/transport/endpoint.js';
import type { Frame } from '../src/transport/framer.js';
import { fdCount, rejectsWith, serve, until } from './helpers/server.js';

const n = native!;
const RW = DmaMapFlag.READ | DmaMapFlag.WRITE;
const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

describe('bounds', () => {
  test('every DMA access stops exactly at the mapping edges, in each access mode', async () => {
    const dma = new DmaController();
    const sealed = n.memfdCreate('b', 0x4000, true);
    const unsealed = n.memfdCreate('b', 0x4000, false);
    dma.map({ iova: 0x10000, size: 0x2000, fileOffset: 0x1000, flags: RW, fd: n.dup(sealed) });
    dma.map({ iova: 0x20000, size: 0x2000, fileOffset: 0x1000, flags: RW, fd: n.dup(unsealed) });
    assert.equal(dma.find(0x10000)!.mode, 'mmap');
    assert.equal(dma.find(0x20000)!.mode, 'file', 'an unsealed file is read with pread/pwrite');
    for (const base of [0x10000, 0x20000]) {
      const end = base + 0x2000;
      dma.writeSync(end - 4, Buffer.from('edge'));
      const b = Buffer.alloc(4);
      dma.readSync(end - 4, b);
      assert.equal(b.toString(), 'edge');
      await dma.read(base, Buffer.alloc(0x2000));
      await dma.write(base, Buffer.alloc(0x2000, 1));
      for (const [at, len] of [
        [end - 4, 5],
        [end, 1],
        [base - 1, 2],
        [base - 1, 1],
      ] as const) {
        assert.throws(() => dma.readSync(at, Buffer.alloc(len)), { errno: Errno.ENOENT }, `read [${at - base}, +${len})`);
        assert.throws(() => dma.writeSync(at, Buffer.alloc(len)), { errno: Errno.ENOENT });
        await rejectsWith(dma.read(at, Buffer.alloc(len)), Errno.ENOENT);
        await rejectsWith(dma.write(at, Buffer.alloc(len)), Errno.ENOENT);
      }
      assert.throws(() => dma.readSync(0.5, Buffer.alloc(1)), { errno: Errno.EINVAL });
      assert.throws(() => dma.readSync(2 ** 53, Buffer.alloc(1)), { errno: Errno.EINVAL });
    }
    // the file offset was honoured: byte 0x1000 of the file is iova 0x10000
    const f = Buffer.alloc(4);
    readSync(sealed, f, 0, 4, 0x1000 + 0x2000 - 4);
    assert.equal(f.toString(), '\x01\x01\x01\x01');
    assert.equal(dma.view(0x10000, 0x2000).length, 0x2000);
    assert.throws(() => dma.view(0x11fff, 2), { errno: Errno.ENOENT });
    assert.throws(() => dma.view(0x20000, 16), { errno: Errno.EFAULT }, 'no views of files we do not mmap');
    dma.unmapAll();
    n.close(sealed);
    n.close(unsealed);
  });

  test('region memory: REGION_READ/WRITE stop at the last byte of the region', async () => {
    const dev = createSample();
    const srv = await serve(dev.device);
    const c = await srv.connect();
    await c.regionWrite(PciRegion.BAR1, 0x3000 - 3, Buffer.from('end'));
    assert.equal((await c.regionRead(PciRegion.BAR1, 0x3000 - 3, 3)).toString(), 'end');
    await rejectsWith(c.regionRead(PciRegion.BAR1, 0x3000 - 3, 4), Errno.EINVAL);
    await rejectsWith(c.regionWrite(PciRegion.BAR1, 0x3000, Buffer.from('x')), Errno.EINVAL);
    const raw = RegionAccessStruct.encode({ offset: 0xffffffffn, region: PciRegion.BAR1, count: 2 });
    await rejectsWith(c.conn.request(Command.REGION_READ, raw), Errno.EINVAL);
    const far = RegionAccessStruct.encode({ offset: 2n ** 53n, region: PciRegion.CONFIG, count: 1 });
    await rejectsWith(c.conn.request(Command.REGION_READ, far), Errno.EINVAL);
    await srv.close();
  });
});

describe('unmapping while an access is in flight', () => {
  test('message DMA in progress when DMA_UNMAP arrives: the rest of the access fails with ENOENT', async () => {
    const dev = createSample();
    const srv = await serve(dev.device);
    const c = await srv.connect({ maxDataXferSize: 1024 });
    c.memory.add(0x100000, 0x4000, { shared: false });
    await c.dmaMap({ iova: 0x100000, size: 0x4000 });
    const dma = dev.device.dma;
    assert.equal(dma.find(0x100000)!.mode, 'message');
    // the test answers the device's DMA_READs itself, once the unmap is done
    const held: [Frame, Endpoint][] = [];
    Object.defineProperty(c, 'onServerRequest', {
      value: (f: Frame, via: Endpoint) => void held.push([{ ...f, payload: Buffer.from(f.payload), fds: [] }, via]),
    });
    const reading = dma.read(0x100000, Buffer.alloc(3000));
    await until(() => held.length === 1);
    await c.dmaUnmap(0x100000, 0x4000);
    assert.equal(dma.count, 0);
    const [f, via] = held[0]!;
    c.conn.reply(via, f, f.payload.subarray(0, 16), Buffer.alloc(Number(f.payload.readBigUInt64LE(8))));
    await rejectsWith(reading, Errno.ENOENT);
    assert.equal(held.length, 1, 'no DMA_READ was sent for the unmapped range');
    await srv.close();
  });

  test('a file-backed access waiting on messages never reaches the descriptor after unmap (even once its number is reused)', async () => {
    const dma = new DmaController();
    const gate = deferred();
    const messages: MessageDma = {
      maxChunk: 1 << 20,
      dmaRead: async () => gate.promise,
      dmaWrite: async () => gate.promise,
    };
    dma.messages = messages;
    const file = n.memfdCreate('victim', 0x1000, false);
    dma.map({ iova: 0x0, size: 0x1000, fileOffset: 0, flags: RW, fd: null });
    dma.map({ iova: 0x1000, size: 0x1000, fileOffset: 0, flags: RW | DmaMapFlag.FILE_IO, fd: n.dup(file) });
    const oldFd = dma.find(0x1000)!.fd;
    const writing = dma.write(0x0, Buffer.alloc(0x2000, 0xaa)); // message part first, then the file
    dma.unmap(0x1000, 0x1000);
    // the descriptor number is free again: something else takes it
    const dir = mkdtempSync(join(tmpdir(), 'vfu-reuse-'));
    const other = openSync(join(dir, 'other'), 'w+');
    assert.equal(other, oldFd, 'the kernel hands out the lowest free number');
    gate.resolve();
    await rejectsWith(writing, Errno.ENOENT);
    const b = Buffer.alloc(16);
    assert.equal(readSync(other, b, 0, 16, 0), 0, 'nothing was written into the other file');
    closeSync(other);
    rmSync(dir, { recursive: true, force: true });
    dma.unmapAll();
    n.close(file);
  });

  test('a view obtained before the unmap becomes empty, never dangling', async () => {
    const dev = createSample();
    const srv = await serve(dev.device);
    const c = await srv.connect();
    c.memory.add(0x10000, 0x2000);
    await c.dmaMap({ iova: 0x10000, size: 0x2000 });
    const v = dev.device.dma.view(0x10000, 0x100, DmaMapFlag.WRITE);
    v.write('through a view');
    assert.equal(c.memory.view(0x10000, 14).toString(), 'through a view');
    await c.dmaUnmap(0x10000, 0x2000);
    assert.equal(v.length, 0);
    assert.equal(v.buffer.byteLength, 0, 'the ArrayBuffer is detached');
    v.write('ignored'); // writes to an empty view do nothing (and do not crash)
    await srv.close();
  });

  test('with a quiesce hook, DMA_UNMAP waits until the device has stopped its DMA', async () => {
    const dev = new VfioUserDevice({ pci: { vendorId: 1, deviceId: 2 } });
    let inFlight: Promise<void> | null = null;
    const events: string[] = [];
    dev.onQuiesce(
      async () => {
        events.push('quiesce');
        await inFlight;
        events.push('quiesced');
      },
      () => events.push('resume'),
    );
    const srv = await serve(dev);
    const c = await srv.connect({ maxDataXferSize: 512 });
    c.memory.add(0x100000, 0x2000, { shared: false });
    await c.dmaMap({ iova: 0x100000, size: 0x2000 });
    events.length = 0;
    inFlight = dev.dma.read(0x100000, Buffer.alloc(0x2000)).then(() => void events.push('dma done'));
    await c.dmaUnmap(0x100000, 0x2000);
    assert.deepEqual(events, ['quiesce', 'dma done', 'quiesced', 'resume']);
    assert.equal(dev.dma.count, 0);
    await srv.close();
  });
});

describe('SIGBUS: the client truncates a file it passed', () => {
  async function mapRaw(policy?: 'file' | 'mmap' | 'refuse'): Promise<{ fd: number; dev: ReturnType<typeof createSample>; close: () => Promise<void>; map: () => Promise<unknown> }> {
    const dev = createSample();
    if (policy) dev.device.dma.unsealed = policy;
    const srv = await serve(dev.device);
    const c = await srv.connect();
    const fd = n.memfdCreate('unsealed', 0x4000, false);
    const body = DmaMapStruct.encode({ argsz: 32, flags: RW, offset: 0n, addr: 0x10000n, size: 0x4000n });
    return { fd, dev, map: () => c.conn.request(Command.DMA_MAP, body, { fds: [fd] }), close: async () => (n.close(fd), await srv.close()) };
  }

  test("default policy ('file'): no mmap, so a truncation gives errors, not SIGBUS", async () => {
    const t = await mapRaw();
    await t.map();
    const dma = t.dev.device.dma;
    assert.equal(dma.find(0x10000)!.mode, 'file');
    assert.equal(dma.isDirect(0x10000, 16), true, 'still reached without messages');
    dma.writeSync(0x13ff0, Buffer.from('before'));
    ftruncateSync(t.fd, 0);
    assert.throws(() => dma.readSync(0x13ff0, Buffer.alloc(6)), { errno: Errno.EIO });
    await rejectsWith(dma.read(0x10000, Buffer.alloc(16)), Errno.EIO);
    dma.writeSync(0x10000, Buffer.from('after')); // pwrite past the end grows the file: harmless
    assert.throws(() => dma.view(0x10000, 16), { errno: Errno.EFAULT });
    await t.close();
  });

  test("policy 'mmap': sizes re-checked before each access, EFAULT after a truncation", async () => {
    const t = await mapRaw('mmap');
    await t.map();
    const dma = t.dev.device.dma;
    assert.equal(dma.find(0x10000)!.mode, 'mmap');
    dma.writeSync(0x13ff0, Buffer.from('before'));
    ftruncateSync(t.fd, 0x2000);
    dma.writeSync(0x11ff0, Buffer.from('still backed'));
    assert.throws(() => dma.readSync(0x13ff0, Buffer.alloc(6)), { errno: Errno.EFAULT });
    assert.throws(() => dma.writeSync(0x12000, Buffer.alloc(1)), { errno: Errno.EFAULT });
    await rejectsWith(dma.read(0x12000, Buffer.alloc(16)), Errno.EFAULT);
    assert.throws(() => dma.view(0x11000, 0x1001), { errno: Errno.EFAULT });
    await t.close();
  });

  test("policy 'refuse': DMA_MAP of an unsealed file is EINVAL; a sealed memfd cannot shrink at all", async () => {
    const t = await mapRaw('refuse');
    await rejectsWith(t.map(), Errno.EINVAL);
    assert.equal(t.dev.device.dma.count, 0);
    await t.close();
    const sealed = n.memfdCreate('sealed', 4096, true);
    assert.throws(() => ftruncateSync(sealed, 0), { code: 'EPERM' });
    n.close(sealed);
  });

  test('descriptors that are not regular files are refused (EINVAL), and leave nothing open', async () => {
    const dev = createSample();
    const srv = await serve(dev.device);
    const c = await srv.connect();
    await until(() => srv.server.session !== null);
    const fds0 = fdCount();
    for (const make of [() => n.eventfd(0, 0), () => n.socketpair()[0], () => openSync('/dev/zero', 'r+')]) {
      const fd = make();
      for (const flags of [RW, RW | DmaMapFlag.FILE_IO]) {
        const body = DmaMapStruct.encode({ argsz: 32, flags, offset: 0n, addr: 0x10000n, size: 0x1000n });
        await rejectsWith(c.conn.request(Command.DMA_MAP, body, { fds: [fd] }), Errno.EINVAL);
      }
      closeSync(fd);
    }
    assert.equal(dev.device.dma.count, 0);
    assert.ok(fdCount() <= fds0 + 1, 'the other end of the socket pair is all that is left');
    await srv.close();
  });

  test('the residual risk is real: under the mmap policy, a view held across a truncation kills the process', () => {
    const script = `
      import { DmaController } from ${JSON.stringify(join(root, 'dist/src/server/dma.js'))};
      import { native } from ${JSON.stringify(join(root, 'dist/src/native/index.js'))};
      const dma = new DmaController();
      dma.unsealed = 'mmap';
      const fd = native.memfdCreate('x', 8192, false);
      dma.map({ iova: 0, size: 8192, fileOffset: 0, flags: 3, fd: native.dup(fd) });
      const v = dma.view(0, 8192, 2);
      (await import('node:fs')).ftruncateSync(fd, 0);
      v[4096] = 1; // SIGBUS
      console.log('survived');
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 20_000 });
    assert.equal(r.signal, 'SIGBUS', `${r.stdout}${r.stderr}`);
  });
});

describe('DMA callbacks of the device that throw', () => {
  test('onMap throws: DMA_MAP fails with its errno and leaves no mapping, mmap or descriptor', async () => {
    const dev = new VfioUserDevice({ pci: { vendorId: 1, deviceId: 2 } });
    let refuse = true;
    dev.setupDma({
      onMap: () => {
        if (refuse) throw Object.assign(new Error('device refuses'), { errno: Errno.ENOSPC });
      },
    });
    const srv = await serve(dev);
    const c = await srv.connect();
    c.memory.add(0x10000, 0x2000);
    await until(() => srv.server.session !== null);
    const fds0 = fdCount();
    const maps0 = n.liveMappings();
    await rejectsWith(c.dmaMap({ iova: 0x10000, size: 0x2000 }), Errno.ENOSPC);
    assert.equal(dev.dma.count, 0);
    assert.equal(dev.dma.totalSize, 0);
    assert.equal(n.liveMappings(), maps0);
    assert.equal(fdCount(), fds0, 'the descriptor was closed (once: nothing else lost its number)');
    refuse = false;
    await c.dmaMap({ iova: 0x10000, size: 0x2000 });
    assert.equal(dev.dma.count, 1);
    await srv.close();
  });

  test('onUnmap throws: the mapping goes anyway, and UNMAP_ALL removes every one', async () => {
    const dev = new VfioUserDevice({ pci: { vendorId: 1, deviceId: 2 } });
    const logs: string[] = [];
    dev.on('log', (_l: string, m: string) => logs.push(m));
    dev.setupDma({
      onUnmap: () => {
        throw new Error('device objects');
      },
    });
    const srv = await serve(dev);
    const c = await srv.connect();
    for (let i = 0; i < 3; i++) {
      c.memory.add(0x10000 * (i + 1), 0x1000);
      await c.dmaMap({ iova: 0x10000 * (i + 1), size: 0x1000 });
    }
    const maps0 = n.liveMappings();
    await c.dmaUnmap(0x10000, 0x1000);
    assert.equal(dev.dma.count, 2);
    await c.dmaUnmapAll();
    assert.equal(dev.dma.count, 0);
    assert.equal(n.liveMappings(), maps0 - 3);
    assert.ok(logs.some((m) => m.includes('onUnmap callback failed')));
    await srv.close();
  });
});

describe('mappings larger than the largest ArrayBuffer (4 GiB on Node 20)', () => {
  const big = constants.MAX_LENGTH + 0x100000;

  test('the addon refuses such an mmap with an error (it used to free twice and abort)', () => {
    const fd = n.memfdCreate('big', big, true); // sparse; as long as the mapping, which mmap() checks first
    const live = n.liveMappings();
    assert.throws(() => n.mmap(fd, 0, big, 3), { code: 'ERR_BUFFER_TOO_LARGE' });
    assert.equal(n.liveMappings(), live);
    n.close(fd);
  });

  test('a DMA_MAP that large is reached with pread/pwrite, and works at both ends', async () => {
    const dev = createSample();
    const srv = await serve(dev.device);
    const c = await srv.connect();
    const fd = n.memfdCreate('guest-ram-above-4g', big, true); // sparse
    const body = DmaMapStruct.encode({ argsz: 32, flags: RW, offset: 0n, addr: 0x100000000n, size: BigInt(big) });
    await c.conn.request(Command.DMA_MAP, body, { fds: [fd] });
    const m = dev.device.dma.find(0x100000000)!;
    assert.equal(m.mode, 'file');
    dev.device.dma.writeSync(0x100000000 + big - 4, Buffer.from('last'));
    const b = Buffer.alloc(4);
    readSync(fd, b, 0, 4, big - 4);
    assert.equal(b.toString(), 'last');
    await c.dmaUnmapAll();
    n.close(fd);
    await srv.close();
  });

  test('the client: a guest range that large is EINVAL (add several), a region area beyond its file is EINVAL', async () => {
    const dev = createSample();
    const srv = await serve(dev.device);
    const c = await srv.connect();
    assert.throws(() => c.memory.add(0, big), { errno: Errno.EINVAL });
    const info = await c.regionInfo(PciRegion.BAR1);
    const live = n.liveMappings();
    for (const lie of [{ size: 0x100000, sparse: null }, { sparse: [{ offset: 0, size: 0x1000 }, { offset: 0x2000, size: 0x2000 }] }]) {
      assert.throws(() => c.mapRegion({ ...info, ...lie }), { errno: Errno.EINVAL });
    }
    assert.equal(n.liveMappings(), live, 'nothing left mapped by the refused attempts');
    const areas = c.mapRegion(info);
    assert.equal(areas.length, 2);
    for (const a of areas) a.unmap();
    await srv.close();
  });
});
