// DEVICE_GET_INFO, DEVICE_GET_IRQ_INFO, DEVICE_SET_IRQS, DEVICE_RESET.
import { type StructValue, defineStruct } from '../struct.js';
import { type Codec, type EmptyBody, emptyBody, withTail } from './codec.js';

export const DeviceInfoStruct = defineStruct('vfio_user_device_info', {
  argsz: 'u32',
  flags: 'u32',
  numRegions: 'u32',
  numIrqs: 'u32',
});
/** DEVICE_GET_INFO request and reply. */
export type DeviceInfoBody = StructValue<typeof DeviceInfoStruct> & { extra?: Buffer };

/** A fixed struct optionally followed by bytes we keep verbatim. */
export function fixedWithExtra<T extends object>(
  s: { size: number; read(b: Buffer, at?: number): T; encode(v: T): Buffer },
  what: string,
): Codec<T & { extra?: Buffer }> {
  return withTail(s, what, 'extra');
}

export const deviceGetInfo: Codec<DeviceInfoBody> = fixedWithExtra(DeviceInfoStruct, 'DEVICE_GET_INFO');
export const deviceGetInfoReply = deviceGetInfo;

export const IrqInfoStruct = defineStruct('vfio_irq_info', {
  argsz: 'u32',
  flags: 'u32',
  index: 'u32',
  count: 'u32',
});
/** DEVICE_GET_IRQ_INFO request and reply. */
export type IrqInfoBody = StructValue<typeof IrqInfoStruct> & { extra?: Buffer };
export const deviceGetIrqInfo: Codec<IrqInfoBody> = fixedWithExtra(IrqInfoStruct, 'DEVICE_GET_IRQ_INFO');
export const deviceGetIrqInfoReply = deviceGetIrqInfo;

export const IrqSetStruct = defineStruct('vfio_irq_set', {
  argsz: 'u32',
  flags: 'u32',
  index: 'u32',
  start: 'u32',
  count: 'u32',
});
/** DEVICE_SET_IRQS request. */
export type IrqSetBody = StructValue<typeof IrqSetStruct> & {
  /** DATA_BOOL: one byte per vector (anything else that followed is kept too). */
  data?: Buffer;
};
export const deviceSetIrqs: Codec<IrqSetBody> = withTail(IrqSetStruct, 'DEVICE_SET_IRQS', 'data');
export const deviceSetIrqsReply: Codec<EmptyBody> = emptyBody;
export const deviceReset: Codec<EmptyBody> = emptyBody;
export const deviceResetReply: Codec<EmptyBody> = emptyBody;
