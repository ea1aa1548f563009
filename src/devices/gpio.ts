// A 16-pin GPIO card modelled on the ACCES PCI-IDIO-16, libvfio-user's first
// example: BAR2 is an I/O block where writing a 1 to an output bit pulses
// that pin (0x0: pins 0-7, 0x4: pins 8-15) and the inputs (0x1, 0x5) read 1
// for every pin pulsed a multiple of three times.  Its pin counters migrate.
// `bar2: 'mem'` puts the same registers in memory space instead (the variant
// QEMU posts its writes to, with No_reply).
import { IrqIndex, PciRegion } from '../protocol/constants.js';
import { VfioUserDevice } from '../server/device.js';

/** The GPIO device and its pin counters. */
export interface GpioDevice {
  /** The device to serve. */
  device: VfioUserDevice;
  /** How many times each of the 16 pins was pulsed. */
  pins: Int32Array;
}

/** Options of {@link createGpio}. */
export interface GpioOptions {
  /** Whether BAR2 is in I/O space (the default, as the card has it) or memory space. */
  bar2?: 'io' | 'mem';
}

/** A PCI-IDIO-16 GPIO card (see the top of this file). */
export function createGpio(opts: GpioOptions = {}): GpioDevice {
  const device = new VfioUserDevice({ name: 'gpio', pci: { vendorId: 0x494f, deviceId: 0x0dc8 } });
  const pins = new Int32Array(16);
  let dirty = true;
  device.addRegion(PciRegion.BAR2, {
    size: 0x100,
    kind: opts.bar2 ?? 'io',
    access: {
      read(offset, out) {
        out.fill(0);
        if (offset === 0x1 || offset === 0x5) {
          const base = offset === 0x1 ? 0 : 8;
          let v = 0;
          for (let i = 0; i < 8; i++) if (pins[base + i]! % 3 === 0) v |= 1 << i;
          out[0] = v;
        }
      },
      write(offset, data) {
        if (offset === 0x0 || offset === 0x4) {
          const base = offset === 0x0 ? 0 : 8;
          for (let i = 0; i < 8; i++) if (data[0]! & (1 << i)) pins[base + i]!++;
        }
        dirty = true;
      },
    },
  });
  device.setIrqCount(IrqIndex.INTX, 1);
  device.setupDma();
  const bytes = Buffer.from(pins.buffer);
  device.setupMigration({
    transition: () => {},
    readData: (max) => {
      if (!dirty) return Buffer.alloc(0);
      dirty = false;
      return Buffer.from(bytes.subarray(0, Math.min(max, bytes.length)));
    },
    writeData: (data) => {
      data.copy(bytes, 0, 0, Math.min(data.length, bytes.length));
    },
  });
  device.on('migration', (_from: number, to: number) => {
    // each saving phase sends the pins again
    if (to === 3 || to === 6) dirty = true;
  });
  return { device, pins };
}
