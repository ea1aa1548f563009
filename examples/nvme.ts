// An NVMe controller backed by a raw image file, served on a socket, and a
// small host driver that writes a block through it and reads it back.
//   node nvme.js /tmp/disk.img
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NvmeDriver, VfioUserClient, VfioUserServer, createNvme } from 'vfio-user';

const image = process.argv[2] ?? '/tmp/disk.img';
const nvme = createNvme({ image, size: 16 << 20 }); // created at 16 MiB if absent
const dir = mkdtempSync(join(tmpdir(), 'nvme-'));
const server = await VfioUserServer.listen(nvme.device, join(dir, 'nvme.sock'));

const client = await VfioUserClient.connect(join(dir, 'nvme.sock'));
const driver = await NvmeDriver.open(client, { ioQueues: 1 }); // maps its queues, enables the controller
try {
  const { model, blocks, blockSize } = driver.info;
  console.log(`${model}: ${blocks} blocks of ${blockSize} bytes`);
  const buf = driver.alloc(4096); // guest memory for the transfer
  client.memory.write(buf, Buffer.from('hello, block 0'));
  await driver.write(1, 0, 4096 / blockSize, buf); // queue 1, LBA 0
  client.memory.write(buf, Buffer.alloc(4096));
  await driver.read(1, 0, 4096 / blockSize, buf);
  console.log(`read back: ${client.memory.view(buf, 14).toString()}`);
} finally {
  driver.close();
  client.close();
  await server.close();
  nvme.close();
  rmSync(dir, { recursive: true, force: true });
}
