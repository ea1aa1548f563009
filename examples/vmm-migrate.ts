// A small VMM: owns the guest RAM, programs the device on one server, then
// live-migrates it to another (which runs the same device) and checks the
// register made it.
//   node vmm-migrate.js /tmp/src.sock /tmp/dst.sock
import { LocalTarget, PciRegion, VfioUserClient, formatReport, migrate } from 'vfio-user';

const [from = '/tmp/src.sock', to = '/tmp/dst.sock'] = process.argv.slice(2);
const src = await VfioUserClient.connect(from);
const dst = await VfioUserClient.connect(to);
try {
  const ram = src.memory.add(0, 16 << 20); // 16 MiB of guest RAM, mapped for the device's DMA
  ram.bytes.write('guest data');
  await src.dmaMap({ iova: 0, size: 16 << 20 });
  await src.regionWrite(PciRegion.BAR0, 0x10, Buffer.from([0x34, 0x12, 0, 0])); // DMA_LEN

  // RAM and device state go across; the destination maps its own copy of the RAM
  const report = await migrate(src, new LocalTarget(dst));
  console.log(formatReport(report));

  const len = (await dst.regionRead(PciRegion.BAR0, 0x10, 4)).readUInt32LE(0);
  console.log(`destination DMA_LEN 0x${len.toString(16)}, RAM: ${dst.memory.view(0, 10).toString()}`);
} finally {
  src.close();
  dst.close();
}
