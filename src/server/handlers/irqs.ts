// DEVICE_SET_IRQS.
import { IrqSetFlag } from '../../protocol/constants.js';
import { einval } from '../../protocol/errors.js';
import { IrqSetStruct } from '../../protocol/messages/device.js';
import { decodeRequest } from '../../protocol/messages/index.js';
import type { Endpoint } from '../../transport/endpoint.js';
import type { Frame } from '../../transport/framer.js';
import type { HandlerContext } from './context.js';

export function setIrqs(s: HandlerContext, f: Frame, via: Endpoint): void {
  const r = decodeRequest('DEVICE_SET_IRQS', f.payload);
  if (r.argsz < IrqSetStruct.size) throw einval('DEVICE_SET_IRQS argsz too small');
  const bools = r.data ?? Buffer.alloc(0);
  if ((r.flags & IrqSetFlag.DATA_TYPE_MASK) === IrqSetFlag.DATA_BOOL && bools.length !== r.count) {
    throw einval(`DATA_BOOL with ${bools.length} bytes for ${r.count} vectors`);
  }
  s.device.irqs.set({ flags: r.flags, index: r.index, start: r.start, count: r.count, bools, fds: f.fds });
  if ((r.flags & IrqSetFlag.DATA_TYPE_MASK) === IrqSetFlag.DATA_EVENTFD) f.fds = []; // kept or closed by the controller
  s.conn.reply(via, f, null);
}
