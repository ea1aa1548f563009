// A device of your own: a small DMA engine.  BAR0 holds its registers,
// BAR2 is 64 KiB of device memory the client may mmap, MSI-X vector 0
// signals a finished transfer, and the device state migrates.
//
//   BAR0 0x00  ID        (read-only) 0x1d0f0001
//   BAR0 0x08  DMA_ADDR  guest address (64-bit)
//   BAR0 0x10  DMA_LEN   bytes to copy (at most BAR2's size)
//   BAR0 0x14  DOORBELL  write 1: BAR2 -> guest memory, 2: guest memory -> BAR2
//   BAR0 0x18  DONE      transfers completed (read-only)
//
// DMA happens when the guest rings the doorbell, never at start-up: guest
// memory exists only once a client has mapped it.
import { Errno, IrqIndex, MigState, PciRegion, VfioUserDevice, VfuError } from 'vfio-user';

export const REG = { ID: 0x00, DMA_ADDR: 0x08, DMA_LEN: 0x10, DOORBELL: 0x14, DONE: 0x18 } as const;
export const DEVICE_ID = 0x1d0f0001;
const BAR2_SIZE = 64 * 1024;

export default function createDevice(): VfioUserDevice {
  const dev = new VfioUserDevice({ name: 'dma-engine', pci: { vendorId: 0x1d0f, deviceId: 0x0001, classCode: 0xff0000 } });
  const regs = Buffer.alloc(0x20);
  regs.writeUInt32LE(DEVICE_ID, REG.ID);

  dev.addRegion(PciRegion.BAR0, {
    size: 0x1000, // registers at 0x00, the MSI-X table and PBA at 0x800 / 0xc00
    access: {
      read: (offset, out) => {
        out.fill(0);
        if (offset < regs.length) regs.copy(out, 0, offset, offset + out.length);
      },
      write: (offset, data) => {
        if (offset === REG.DOORBELL && data.length === 4) return doorbell(data.readUInt32LE(0));
        if (offset < REG.DMA_ADDR || offset + data.length > REG.DOORBELL) {
          throw new VfuError(Errno.EPERM, `register 0x${offset.toString(16)} is read-only`); // the errno goes on the wire
        }
        data.copy(regs, offset);
      },
    },
  });
  const bar2 = dev.addRegion(PciRegion.BAR2, { size: BAR2_SIZE, memory: true }).memory!;
  dev.pci.addMsix({ tableSize: 1, tableBar: 0, tableOffset: 0x800, pbaBar: 0, pbaOffset: 0xc00 });
  dev.setIrqCount(IrqIndex.MSIX, 1);
  dev.setupDma();

  // Returning the promise makes the server reply to the doorbell write once
  // the transfer is done (and hold the client's later commands until then).
  async function doorbell(cmd: number): Promise<void> {
    const addr = Number(regs.readBigUInt64LE(REG.DMA_ADDR));
    const len = Math.min(regs.readUInt32LE(REG.DMA_LEN), BAR2_SIZE);
    if (cmd === 1) await dev.dma.write(addr, bar2.subarray(0, len)); // the pages are logged dirty for migration
    else if (cmd === 2) await dev.dma.read(addr, bar2.subarray(0, len));
    else throw new VfuError(Errno.EINVAL, `unknown doorbell command ${cmd}`);
    regs.writeUInt32LE(regs.readUInt32LE(REG.DONE) + 1, REG.DONE);
    dev.trigger(IrqIndex.MSIX, 0);
  }

  // A client going away ('lost-connection': a VMM restarting, `vfu lspci`
  // done) must not wipe the device; DEVICE_RESET and FLR do.
  dev.onReset((reason) => {
    if (reason === 'lost-connection') return;
    regs.fill(0, REG.DMA_ADDR);
    bar2.fill(0);
  });

  // Migration: the stop-copy stream is the registers then BAR2.
  const state = Buffer.alloc(regs.length + BAR2_SIZE);
  let pos = 0;
  dev.setupMigration({
    transition: (from, to) => {
      if (to === MigState.STOP_COPY) {
        regs.copy(state, 0);
        bar2.copy(state, regs.length);
      }
      if (from === MigState.RESUMING && to === MigState.STOP) {
        if (pos !== state.length) throw new VfuError(Errno.EINVAL, `incomplete device state: ${pos} of ${state.length} bytes`);
        state.copy(regs, 0, 0, regs.length);
        state.copy(bar2, 0, regs.length);
      }
      pos = 0;
    },
    readData: (max) => {
      const chunk = state.subarray(pos, pos + max); // a short read ends the stream
      pos += chunk.length;
      return chunk;
    },
    writeData: (data) => {
      if (pos + data.length > state.length) throw new VfuError(Errno.EINVAL, 'device state too long');
      pos += data.copy(state, pos);
    },
  });
  return dev;
}
