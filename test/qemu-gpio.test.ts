// `vfu serve gpio` seen by a real guest: QEMU's vfio-user-pci client realises
// it behind a PCIe root port, and Linux (no driver for it) enumerates it; the
// guest reads its identity and BARs from sysfs and pulses pins through BAR2's
// I/O ports with no driver in between (test/guest/vfutest.c).  Needs QEMU and
// the test guest (VFU_QEMU, VFU_GUEST_KERNEL, VFU_GUEST_INITRD; README "Tests
// and tools"); skipped otherwise.
import { strict as assert } from 'node:assert';
import { join } from 'node:path';
import { test } from 'node:test';
import { QemuGuest, qemuSkip, startVfu, type VfuServer } from './helpers/qemu-guest.js';
import { tempDir } from './helpers/server.js';

/** The guest's PCI functions: sysfs path, vendor, device, class, and BARs as [start, end, flags] per `resource` line. */
interface GuestPci {
  path: string;
  vendor: number;
  device: number;
  klass: number;
  bars: [bigint, bigint, bigint][];
}

async function guestPci(g: QemuGuest): Promise<GuestPci[]> {
  const out = await g.sh('for d in /sys/bus/pci/devices/*; do echo "DEV $d $(cat $d/vendor) $(cat $d/device) $(cat $d/class)"; cat $d/resource; done');
  const devs: GuestPci[] = [];
  for (const line of out.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f[0] === 'DEV') devs.push({ path: f[1]!, vendor: Number(f[2]), device: Number(f[3]), klass: Number(f[4]), bars: [] });
    else if (f.length === 3 && devs.length > 0) devs.at(-1)!.bars.push([BigInt(f[0]!), BigInt(f[1]!), BigInt(f[2]!)]);
  }
  return devs;
}

const IORESOURCE_IO = 0x100n;
const IORESOURCE_MEM = 0x200n;

test('a Linux guest under QEMU enumerates vfu serve gpio and drives BAR2 without a driver', { skip: qemuSkip, timeout: 300_000 }, async () => {
  const t = tempDir('vfu-qemu-gpio-');
  let server: VfuServer | undefined;
  let g: QemuGuest | undefined;
  let ok = false;
  try {
    server = await startVfu(['gpio', '-v'], join(t.dir, 'gpio.sock'));
    g = await QemuGuest.start({ socket: server.socket });

    const devs = await guestPci(g);
    const gpio = devs.filter((d) => d.vendor === 0x494f && d.device === 0x0dc8);
    assert.equal(gpio.length, 1, `one PCI-IDIO-16 in the guest: ${JSON.stringify(devs.map((d) => [d.path, d.vendor.toString(16), d.device.toString(16)]))}`);
    const d = gpio[0]!;
    // BAR0, BAR1 absent; BAR2 256 bytes of I/O space
    assert.equal(d.bars[0]![2], 0n, 'no BAR0');
    assert.equal(d.bars[1]![2], 0n, 'no BAR1');
    const [start, end, flags] = d.bars[2]!;
    assert.equal(end - start + 1n, 0x100n, 'BAR2 is 256 bytes');
    assert.ok(flags & IORESOURCE_IO, 'BAR2 is in I/O space');
    assert.equal(flags & IORESOURCE_MEM, 0n);
    // the card's root port is a bridge in front of it
    assert.ok(devs.some((p) => p.vendor === 0x1b36 && p.device === 0x000c), 'the pcie-root-port is there');

    // no driver binds it; enable decoding through sysfs, then talk to the ports
    const bar2 = `${d.path}/resource2`;
    await g.sh(`test ! -e ${d.path}/driver && echo 1 > ${d.path}/enable`);
    const peek = async (off: number) => Number((await g!.sh(`vfutest peek ${bar2} ${off} 1`)).trim());
    assert.equal(await peek(0x1), 0xff, 'pins 0-7 read 1 when pulsed a multiple of 3 times (0 so far)');
    assert.equal(await peek(0x5), 0xff);
    await g.sh(`vfutest poke ${bar2} 0 1 0x01`);
    assert.equal(await peek(0x1), 0xfe, 'pin 0 pulsed once');
    await g.sh(`vfutest poke ${bar2} 4 1 0x80 && vfutest poke ${bar2} 4 1 0x80`);
    assert.equal(await peek(0x5), 0x7f, 'pin 15 pulsed twice');
    await g.sh(`vfutest poke ${bar2} 0 1 0x01 && vfutest poke ${bar2} 0 1 0x01 && vfutest poke ${bar2} 4 1 0x80`);
    assert.equal(await peek(0x1), 0xff, 'pin 0 pulsed 3 times');
    assert.equal(await peek(0x5), 0xff, 'pin 15 pulsed 3 times');
    // an offset the card does not decode reads 0 and ignores writes
    await g.sh(`vfutest poke ${bar2} 0x10 1 0xff`);
    assert.equal(await peek(0x10), 0);
    assert.equal(await peek(0x1), 0xff);
    assert.equal(server.child.exitCode, null, 'the server is still running');
    ok = true;
  } catch (e) {
    if (g) (e as Error).message += `\n${g.diagnostics()}\n--- vfu serve gpio:\n${server?.stderr().slice(-3000)}`;
    throw e;
  } finally {
    await g?.close(!ok);
    await server?.stop();
    t.cleanup();
  }
});
