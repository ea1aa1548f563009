// DEVICE_SET_IRQS.
import { Errno, IrqSetFlag } from '../../protocol/constants.js';
import { VfuError } from '../../protocol/errors.js';
import { IrqSetStruct } from '../../protocol/messages/device.js';
import type { Endpoint } from '../../transport/endpoint.js';
import type { Frame } from '../../transport/framer.js';
import type { Session } from '../session.js';

export function setIrqs(s: Session, f: Frame, via: Endpoint): void {
  const p = f.payload;
  if (p.length < IrqSetStruct.size) throw new VfuError(Errno.EINVAL, 'short DEVICE_SET_IRQS');
  const r = IrqSetStruct.read(p);
  if (r.argsz < IrqSetStruct.size) throw new VfuError(Errno.EINVAL, 'DEVICE_SET_IRQS argsz too small');
  const bools = p.subarray(IrqSetStruct.size);
  if ((r.flags & IrqSetFlag.DATA_TYPE_MASK) === IrqSetFlag.DATA_BOOL && bools.length !== r.count) {
    throw new VfuError(Errno.EINVAL, `DATA_BOOL with ${bools.length} bytes for ${r.count} vectors`);
  }
  s.device.irqs.set({ flags: r.flags, index: r.index, start: r.start, count: r.count, bools, fds: f.fds });
  if ((r.flags & IrqSetFlag.DATA_TYPE_MASK) === IrqSetFlag.DATA_EVENTFD) f.fds = []; // kept or closed by the controller
  s.conn.reply(via, f, null);
}
