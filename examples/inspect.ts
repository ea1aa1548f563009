// A client: looks at the DMA engine, maps guest memory, runs one transfer
// and waits for its interrupt, then exits.
//   node inspect.js /tmp/dma.sock
import { IrqIndex, PciRegion, VfioUserClient } from 'vfio-user';

const c = await VfioUserClient.connect(process.argv[2] ?? '/tmp/dma.sock');
try {
  console.log('device', await c.deviceInfo());
  const bar2 = await c.regionInfo(PciRegion.BAR2);
  console.log(`BAR2: ${bar2.size} bytes, mappable: ${bar2.fd >= 0}`);
  const id = (await c.regionRead(PciRegion.BAR0, 0x00, 4)).readUInt32LE(0);
  console.log(`ID 0x${id.toString(16)}`);

  // 1 MiB of guest RAM (a sealed memfd passed to the server) at 0x100000
  const ram = c.memory.add(0x100000, 1 << 20);
  await c.dmaMap({ iova: 0x100000, size: 1 << 20 });
  await c.enableInterrupts(IrqIndex.MSIX, 1);
  const irq = new Promise<number>((resolve) => c.once('interrupt', (_index, vector) => resolve(vector)));

  // put a message in BAR2 (through the mapping), then let the device copy it to guest RAM
  const [area] = c.mapRegion(bar2);
  area!.bytes.write('hello from BAR2');
  const le64 = Buffer.alloc(8);
  le64.writeBigUInt64LE(0x100000n);
  await c.regionWrite(PciRegion.BAR0, 0x08, le64); // DMA_ADDR
  await c.regionWrite(PciRegion.BAR0, 0x10, Buffer.from([15, 0, 0, 0])); // DMA_LEN
  await c.regionWrite(PciRegion.BAR0, 0x14, Buffer.from([1, 0, 0, 0])); // DOORBELL: BAR2 -> guest
  console.log(`interrupt on vector ${await irq}`);
  console.log(`guest RAM: ${ram.bytes.subarray(0, 15).toString()}`);
  area!.unmap();
} finally {
  c.close(); // without it the process would stay alive
}
