// `vfu serve nvme` judged by Linux's own driver (issue #12, "A real guest"):
// QEMU's vfio-user-pci client in front of it, a Linux guest whose stock nvme
// driver binds it; /dev/nvme0n1 has the image's size; O_DIRECT writes of a
// pattern read back in the guest and are found in the image file on the host;
// the data survives a guest reboot, a QMP system_reset and an unplug and
// replug of the device (device_del / device_add).  Needs QEMU and the test
// guest (VFU_QEMU, VFU_GUEST_KERNEL, VFU_GUEST_INITRD; README "Tests and
// tools"); skipped otherwise.
import { strict as assert } from 'node:assert';
import { closeSync, openSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { checkPattern, firstNonZero, QemuGuest, qemuSkip, startVfu, type VfuServer } from './helpers/qemu-guest.js';
import { tempDir } from './helpers/server.js';

const IMAGE_BYTES = 64 << 20;
const KiB = 1024;
const MiB = 1024 * KiB;

/** The regions written and checked: [offset, length, seed] (4 KiB multiples; the last one ends at the end of the disk). */
const regions: [number, number, number][] = [
  [0, 1 * MiB, 1],
  [5 * MiB + 12 * KiB, 300 * KiB, 2],
  [IMAGE_BYTES - 128 * KiB, 128 * KiB, 3],
];

function appendOpt(append: string | undefined) {
  return append ? { append } : {};
}

/** The controller under test: `vfu serve nvme` on the image. */
function startNvme(image: string, socket: string, lba: number, shadow: boolean): Promise<VfuServer> {
  return startVfu(['nvme', '-v', '--image', image, '--lba', String(lba), ...(shadow ? ['--shadow-doorbells'] : [])], socket);
}

// MSI-X with 2 vCPUs (two I/O queues, a vector each) and 512-byte blocks;
// INTx with one vCPU and 4 KiB blocks; and with Doorbell Buffer Config
// offered, which Linux then uses (shadow doorbells with EventIdx)
for (const variant of [
  { name: 'MSI-X, 2 I/O queues, 512-byte blocks', append: undefined, cpus: 2, lba: 512, shadow: false },
  { name: 'INTx (pci=nomsi), 4 KiB blocks', append: 'pci=nomsi', cpus: 1, lba: 4096, shadow: false },
  { name: 'MSI-X, 2 I/O queues, shadow doorbells (--shadow-doorbells)', append: undefined, cpus: 2, lba: 512, shadow: true },
]) {
  describe(`a Linux guest under QEMU uses vfu serve nvme as a disk, ${variant.name}`, { skip: qemuSkip, timeout: 600_000 }, () => {
    const t = qemuSkip ? undefined : tempDir('vfu-qemu-nvme-');
    const image = t ? join(t.dir, 'disk.img') : '';
    let server: VfuServer | undefined;
    let g: QemuGuest | undefined;
    let failed = false;

    /** Runs a step; on failure, adds the guest's and the server's logs to the error. */
    async function step(fn: () => Promise<void>): Promise<void> {
      try {
        await fn();
      } catch (e) {
        failed = true;
        if (g) (e as Error).message += `\n${g.diagnostics()}\n--- vfu serve nvme:\n${server?.stderr().slice(-3000)}`;
        throw e;
      }
    }

    /** Waits until the guest's nvme driver has the controller live and its namespace as a block device. */
    async function nvmeLive(): Promise<string> {
      await g!.waitFor('grep -qx live /sys/class/nvme/nvme*/state && test -b /dev/nvme0n1', 90_000);
      return g!.sh('cd /sys/class/nvme/nvme0 && echo "model=$(cat model) serial=$(cat serial) fw=$(cat firmware_rev)"');
    }

    async function verifyAll(): Promise<void> {
      for (const [off, len, seed] of regions) await g!.sh(`vfutest verify /dev/nvme0n1 ${off} ${len} ${seed}`, 120_000);
    }

    before(async () => {
      const fd = openSync(image, 'w');
      ftruncateSync(fd, IMAGE_BYTES);
      closeSync(fd);
      server = await startNvme(image, join(t!.dir, 'nvme.sock'), variant.lba, variant.shadow);
      await step(async () => {
        g = await QemuGuest.start({ socket: server!.socket, cpus: variant.cpus, ...appendOpt(variant.append) });
      });
    });

    after(async () => {
      await g?.close(failed);
      await server?.stop();
      t?.cleanup();
    });

    it('the nvme driver binds; /dev/nvme0n1 has the image size', () =>
      step(async () => {
        const ids = await nvmeLive();
        assert.match(ids, /model=\S/, 'a model string');
        const cls = await g!.sh('cat /sys/class/nvme/nvme0/device/class');
        assert.equal(cls.trim(), '0x010802', 'class code 01 08 02');
        const size = Number((await g!.sh('vfutest size /dev/nvme0n1')).trim());
        assert.equal(size, IMAGE_BYTES);
        const lbs = Number((await g!.sh('cat /sys/block/nvme0n1/queue/logical_block_size')).trim());
        assert.equal(lbs, variant.lba, 'logical block size');
        // the interrupts the driver got: one MSI-X vector per queue, or the shared INTx line
        const irqs = await g!.sh('cat /sys/class/nvme/nvme0/device/msi_irqs/* 2>/dev/null; grep nvme /proc/interrupts');
        if (variant.append === undefined) {
          assert.ok((irqs.match(/^msix$/gm) ?? []).length >= 3, `MSI-X vectors for the admin and both I/O queues:\n${irqs}`);
          assert.match(irqs, /nvme0q2/);
        } else {
          assert.doesNotMatch(irqs, /^msix?$/m, `no MSI or MSI-X with pci=nomsi:\n${irqs}`);
          assert.match(irqs, /IO-APIC.*nvme0q0/);
        }
        // the guest turned the shadow doorbells on (Doorbell Buffer Config) exactly when offered
        const dbbc = /nvme: shadow doorbells at/.test(server!.stderr());
        assert.equal(dbbc, variant.shadow, variant.shadow ? 'the guest sent Doorbell Buffer Config' : 'no Doorbell Buffer Config without the option');
      }));

    it('O_DIRECT writes of a pattern read back in the guest and land in the image file', () =>
      step(async () => {
        for (const [off, len, seed] of regions) await g!.sh(`vfutest write /dev/nvme0n1 ${off} ${len} ${seed}`, 120_000);
        await verifyAll();
        for (const [off, len, seed] of regions) {
          assert.equal(checkPattern(image, off, len, seed), -1, `image file holds seed ${seed} at ${off} (+${len})`);
        }
        // what was not written is still zero
        const gap = await g!.sh('dd if=/dev/nvme0n1 bs=4096 skip=512 count=1 iflag=direct 2>/dev/null | hexdump -C | head -n 3');
        assert.match(gap, /^00000000 {2}00 00 00 00/);
      }));

    it('four writers at once on disjoint ranges: every range reads back and is in the image', () =>
      step(async () => {
        const base = 16 * MiB;
        const par = (verb: string) =>
          `p=; for i in 0 1 2 3; do vfutest ${verb} /dev/nvme0n1 $((${base} + i * ${MiB})) ${MiB} $((10 + i)) & p="$p $!"; done; rc=0; for x in $p; do wait $x || rc=1; done; exit $rc`;
        await g!.sh(par('write'), 120_000);
        await g!.sh(par('verify'), 120_000);
        for (let i = 0; i < 4; i++) assert.equal(checkPattern(image, base + i * MiB, MiB, 10 + i), -1, `writer ${i} in the image`);
      }));

    it('Write Zeroes and Dataset Management (discard) zero their range and nothing else', () =>
      step(async () => {
        const base = 24 * MiB;
        await g!.sh(`vfutest write /dev/nvme0n1 ${base} ${512 * KiB} 5`);
        await g!.sh(`vfutest zeroout /dev/nvme0n1 ${base} ${128 * KiB}`);
        await g!.sh(`vfutest discard /dev/nvme0n1 ${base + 128 * KiB} ${128 * KiB}`);
        await g!.sh(`vfutest zeros /dev/nvme0n1 ${base} ${256 * KiB}`);
        await g!.sh(`vfutest verify /dev/nvme0n1 ${base + 256 * KiB} ${256 * KiB} 5`);
        assert.equal(firstNonZero(image, base, 256 * KiB), -1, 'zeroed and discarded blocks are zeros in the image');
        assert.equal(checkPattern(image, base + 256 * KiB, 256 * KiB, 5), -1, 'the rest is untouched');
      }));

    it('the data survives a guest reboot', () =>
      step(async () => {
        const before = g!.boots();
        g!.send('reboot -f');
        await g!.ready(before + 1);
        await nvmeLive();
        await verifyAll();
      }));

    it('the data survives a QMP system_reset', () =>
      step(async () => {
        const before = g!.boots();
        await g!.qmp('system_reset');
        await g!.ready(before + 1);
        await nvmeLive();
        await verifyAll();
      }));

    it('device_del unplugs the controller and device_add brings it back with the data', () =>
      step(async () => {
        const since = g!.events.length;
        await g!.qmp('device_del', { id: 'dev0' });
        await g!.event('DEVICE_DELETED', since, 90_000, (m) => (m['data'] as { device?: string }).device === 'dev0');
        await g!.waitFor('test ! -e /dev/nvme0n1 && ! ls /sys/class/nvme/ 2>/dev/null | grep -q nvme', 30_000);
        await g!.qmp('device_add', QemuGuest.deviceArgs(server!.socket));
        await nvmeLive();
        await verifyAll();
        // and it still writes: a new pattern at 32 MiB, checked in the image file
        await g!.sh(`vfutest write /dev/nvme0n1 ${32 * MiB} ${256 * KiB} 9`);
        await g!.sh(`vfutest verify /dev/nvme0n1 ${32 * MiB} ${256 * KiB} 9`);
        assert.equal(checkPattern(image, 32 * MiB, 256 * KiB, 9), -1);
        assert.equal(server!.child.exitCode, null, 'the server is still running');
      }));

    it('a system_reset while eight writers run: the controller comes back and the data written before is intact', () =>
      step(async () => {
        // eight loops writing and checking 2 MiB each at 40-56 MiB, until the reset cuts them off
        await g!.sh(
          `for i in 0 1 2 3 4 5 6 7; do (while :; do vfutest write /dev/nvme0n1 $((${40 * MiB} + i * ${2 * MiB})) ${2 * MiB} $((20 + i)) && vfutest verify /dev/nvme0n1 $((${40 * MiB} + i * ${2 * MiB})) ${2 * MiB} $((20 + i)) || echo BAD; done >/dev/null 2>&1) & done`,
        );
        // the reset lands once their writes reach the image
        await g!.until(() => [0, 7].every((i) => checkPattern(image, 40 * MiB + i * 2 * MiB, 4 * KiB, 20 + i) === -1), 60_000, 'the writers\' first blocks in the image');
        const before = g!.boots();
        await g!.qmp('system_reset');
        await g!.ready(before + 1);
        await nvmeLive();
        await verifyAll();
        const base = 16 * MiB;
        await g!.sh(`for i in 0 1 2 3; do vfutest verify /dev/nvme0n1 $((${base} + i * ${MiB})) ${MiB} $((10 + i)) || exit 1; done`, 120_000);
      }));

    it("the guest's kernel logged no nvme timeout, abort, reset or failure", () =>
      step(async () => {
        const log = g!.console();
        assert.match(log, /nvme nvme0: \d+\/0\/0 default\/read\/poll queues/, 'the console has the driver\'s lines');
        const bad = log
          .split('\n')
          .filter((l) => /nvme/.test(l) && /timeout|abort|reset|fail|error|disabl|down|dead/i.test(l));
        assert.deepEqual(bad, [], 'kernel lines about the controller going wrong');
      }));
  });
}
