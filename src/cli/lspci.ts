// `vfu lspci PATH`: connects to a server and prints the device as `lspci -vv`
// would: ids, class, BARs with their sizes and flags, capabilities decoded,
// interrupts and migration features.
import { VfioUserClient } from '../client/client.js';
import { decodeConfigSpace, formatDescription } from '../pci/decode.js';
import { IrqInfoFlag, MigrationFlag, PCI_NUM_IRQS, PciRegion, RegionFlag, irqIndexNames } from '../protocol/constants.js';

export async function lspciCommand(path: string, o: { json?: boolean }): Promise<void> {
  const c = await VfioUserClient.connect(path);
  try {
    const info = await c.deviceInfo();
    const regions = [];
    for (let i = 0; i < info.numRegions; i++) regions.push(await c.regionInfo(i));
    const cfg = await c.regionRead(PciRegion.CONFIG, 0, regions[PciRegion.CONFIG]!.size);
    const desc = decodeConfigSpace(cfg, {
      barSizes: regions.slice(0, 6).map((r) => (r.size > 0 ? r.size : undefined)),
      ...(regions[PciRegion.ROM] && regions[PciRegion.ROM].size > 0 ? { romSize: regions[PciRegion.ROM].size } : {}),
    });
    const irqs = [];
    for (let i = 0; i < Math.min(info.numIrqs, PCI_NUM_IRQS); i++) irqs.push(await c.irqInfo(i));
    const mig = await c.migrationFlags();
    if (o.json) {
      process.stdout.write(
        JSON.stringify(
          { device: info, config: desc, regions: regions.map(({ fd: _fd, caps: _caps, ...r }) => r), irqs, migration: mig },
          (_k, v: unknown) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v),
          2,
        ) + '\n',
      );
      return;
    }
    const lines = [`vfio-user device at ${path} (protocol ${c.serverVersion.major}.${c.serverVersion.minor})`, formatDescription(desc)];
    lines.push('\tRegions:');
    for (const r of regions) {
      if (r.size === 0) continue;
      const flags = [r.flags & RegionFlag.READ ? 'read' : '', r.flags & RegionFlag.WRITE ? 'write' : '', r.flags & RegionFlag.MMAP ? 'mmap' : '']
        .filter(Boolean)
        .join(',');
      const extra = [
        r.sparse ? `sparse ${r.sparse.map((a) => `[0x${a.offset.toString(16)}+0x${a.size.toString(16)}]`).join(' ')}` : '',
        r.type ? `type ${r.type.type}/${r.type.subtype}` : '',
      ]
        .filter(Boolean)
        .join(' ');
      lines.push(`\t\tregion ${r.index}: size 0x${r.size.toString(16)} ${flags}${extra ? ' ' + extra : ''}`);
    }
    lines.push('\tInterrupts:');
    for (const q of irqs) {
      if (q.count === 0) continue;
      const f = [q.flags & IrqInfoFlag.EVENTFD ? 'eventfd' : '', q.flags & IrqInfoFlag.MASKABLE ? 'maskable' : '', q.flags & IrqInfoFlag.AUTOMASKED ? 'automasked' : '']
        .filter(Boolean)
        .join(',');
      lines.push(`\t\t${irqIndexNames[q.index]}: ${q.count} vector${q.count > 1 ? 's' : ''} (${f})`);
    }
    const mf = [mig & MigrationFlag.STOP_COPY ? 'STOP_COPY' : '', mig & MigrationFlag.PRE_COPY ? 'PRE_COPY' : '', mig & MigrationFlag.P2P ? 'P2P' : '']
      .filter(Boolean)
      .join(' ');
    lines.push(`\tMigration: ${mig ? mf : 'not supported'}${c.hasMigSizing ? ' (pre-copy sizing extension)' : ''}`);
    process.stdout.write(lines.join('\n') + '\n');
  } finally {
    c.close();
  }
}
