// DEVICE_GET_INFO, DEVICE_GET_REGION_INFO (argsz retry, sparse-mmap and type
// capabilities, the region's fd), DEVICE_GET_IRQ_INFO, DEVICE_GET_REGION_IO_FDS.
import { DeviceFlag, Errno, PCI_NUM_IRQS, PciRegion, RegionCapId, RegionFlag } from '../../protocol/constants.js';
import { VfuError, einval } from '../../protocol/errors.js';
import { DeviceInfoStruct, IrqInfoStruct } from '../../protocol/messages/device.js';
import {
  IoFdsStruct,
  RegionInfoStruct,
  SubRegion48Struct,
  encodeCaps,
  type RegionCap,
} from '../../protocol/messages/region.js';
import { decodeRequest } from '../../protocol/messages/index.js';
import type { Endpoint } from '../../transport/endpoint.js';
import type { Frame } from '../../transport/framer.js';
import type { HandlerContext } from './context.js';

export function deviceGetInfo(s: HandlerContext, f: Frame, via: Endpoint): void {
  const req = decodeRequest('DEVICE_GET_INFO', f.payload);
  if (req.argsz < DeviceInfoStruct.size) throw einval('DEVICE_GET_INFO argsz too small');
  s.conn.reply(
    via,
    f,
    DeviceInfoStruct.encode({
      argsz: DeviceInfoStruct.size,
      flags: DeviceFlag.PCI | DeviceFlag.RESET,
      numRegions: s.device.numRegions,
      numIrqs: PCI_NUM_IRQS,
    }),
  );
}

export function deviceGetRegionInfo(s: HandlerContext, f: Frame, via: Endpoint): void {
  const req = decodeRequest('DEVICE_GET_REGION_INFO', f.payload);
  if (req.argsz < RegionInfoStruct.size) throw einval('DEVICE_GET_REGION_INFO argsz too small');
  const dev = s.device;
  if (req.index >= dev.numRegions) throw einval(`no region ${req.index}`);
  const info = { argsz: RegionInfoStruct.size, flags: 0, index: req.index, capOffset: 0, size: 0n, offset: 0n };
  const caps: RegionCap[] = [];
  let fd = -1;
  if (req.index === PciRegion.CONFIG) {
    info.flags = RegionFlag.READ | RegionFlag.WRITE;
    info.size = BigInt(dev.pci.size);
  } else {
    const r = dev.region(req.index);
    if (r !== undefined && r.size > 0) {
      info.size = BigInt(r.size);
      info.flags = r.flags(s.canPassFds);
      if (r.mappable(s.canPassFds)) {
        fd = r.fd;
        caps.push({ id: RegionCapId.SPARSE_MMAP, version: 1, areas: r.sparse.map((a) => ({ offset: BigInt(a.offset), size: BigInt(a.size) })) });
      }
      if (r.type) caps.push({ id: RegionCapId.TYPE, version: 1, type: r.type.type, subtype: r.type.subtype });
    }
  }
  if (caps.length === 0) {
    s.conn.reply(via, f, RegionInfoStruct.encode(info));
    return;
  }
  const capBytes = encodeCaps(caps, RegionInfoStruct.size);
  info.argsz = RegionInfoStruct.size + capBytes.length;
  if (req.argsz < info.argsz) {
    // Too small for the capabilities: say how much is needed (the client
    // retries), and send neither the chain nor the descriptor.
    s.conn.reply(via, f, RegionInfoStruct.encode(info));
    return;
  }
  info.flags |= RegionFlag.CAPS;
  info.capOffset = RegionInfoStruct.size;
  s.conn.reply(via, f, RegionInfoStruct.encode(info), capBytes, fd >= 0 ? [fd] : null);
}

export function deviceGetIrqInfo(s: HandlerContext, f: Frame, via: Endpoint): void {
  const req = decodeRequest('DEVICE_GET_IRQ_INFO', f.payload);
  if (req.argsz < IrqInfoStruct.size) throw einval('DEVICE_GET_IRQ_INFO argsz too small');
  if (req.index >= PCI_NUM_IRQS) throw einval(`no IRQ index ${req.index}`);
  const irqs = s.device.irqs;
  s.conn.reply(
    via,
    f,
    IrqInfoStruct.encode({ argsz: IrqInfoStruct.size, flags: irqs.infoFlags(req.index), index: req.index, count: irqs.count(req.index) }),
  );
}

export function deviceGetRegionIoFds(s: HandlerContext, f: Frame, via: Endpoint): void {
  const req = decodeRequest('DEVICE_GET_REGION_IO_FDS', f.payload);
  if (req.flags !== 0 || req.count !== 0) throw einval('GET_REGION_IO_FDS flags and count must be 0');
  const dev = s.device;
  if (req.index >= dev.numRegions) throw einval(`no region ${req.index}`);
  const r = dev.region(req.index);
  if (req.index !== PciRegion.CONFIG && (r === undefined || r.size === 0)) throw einval(`region ${req.index} is not present`);
  if (req.argsz < IoFdsStruct.size || req.argsz > s.opts.maxDataXferSize) throw einval('bad GET_REGION_IO_FDS argsz');
  const subs = dev.ioeventfds.forRegion(req.index);
  const entry = SubRegion48Struct.size;
  const needed = IoFdsStruct.size + subs.length * entry;
  const head = { argsz: needed, flags: 0, index: req.index, count: subs.length };
  if (subs.length === 0 || req.argsz < needed) {
    s.conn.reply(via, f, IoFdsStruct.encode(head));
    return;
  }
  if (!s.canPassFds) throw new VfuError(Errno.ENOTSUP, 'ioeventfds need descriptor passing');
  const fds: number[] = [];
  const body = Buffer.alloc(subs.length * entry);
  subs.forEach((e, i) => {
    let fdIndex = fds.indexOf(e.fd);
    if (fdIndex < 0) fdIndex = fds.push(e.fd) - 1;
    SubRegion48Struct.write(
      body,
      { offset: e.offset, size: e.size, fdIndex, type: e.type, flags: e.flags, padding: 0, shadowOffset: 0n, data: e.datamatch },
      i * entry,
    );
  });
  s.conn.reply(via, f, IoFdsStruct.encode(head), body, fds);
}
