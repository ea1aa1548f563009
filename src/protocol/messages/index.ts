// Registry: for every command, the codec of its request body and of its
// reply body.  Both the server and the client encode and decode through it.
import { Command, type CommandName } from '../constants.js';
import type { Codec } from './codec.js';
import * as device from './device.js';
import * as dma from './dma.js';
import * as feature from './feature.js';
import * as migration from './migration.js';
import * as region from './region.js';
import * as version from './version.js';

export const codecs = {
  VERSION: { request: version.version, reply: version.version },
  DMA_MAP: { request: dma.dmaMap, reply: dma.dmaMapReply },
  DMA_UNMAP: { request: dma.dmaUnmap, reply: dma.dmaUnmapReply },
  DEVICE_GET_INFO: { request: device.deviceGetInfo, reply: device.deviceGetInfoReply },
  DEVICE_GET_REGION_INFO: { request: region.deviceGetRegionInfo, reply: region.deviceGetRegionInfoReply },
  DEVICE_GET_REGION_IO_FDS: { request: region.deviceGetRegionIoFds, reply: region.deviceGetRegionIoFdsReply },
  DEVICE_GET_IRQ_INFO: { request: device.deviceGetIrqInfo, reply: device.deviceGetIrqInfoReply },
  DEVICE_SET_IRQS: { request: device.deviceSetIrqs, reply: device.deviceSetIrqsReply },
  REGION_READ: { request: region.regionRead, reply: region.regionReadReply },
  REGION_WRITE: { request: region.regionWrite, reply: region.regionWriteReply },
  DMA_READ: { request: dma.dmaRead, reply: dma.dmaReadReply },
  DMA_WRITE: { request: dma.dmaWrite, reply: dma.dmaWriteReply },
  DEVICE_RESET: { request: device.deviceReset, reply: device.deviceResetReply },
  DIRTY_PAGES: { request: migration.dirtyPages, reply: migration.dirtyPagesReply },
  REGION_WRITE_MULTI: { request: region.regionWriteMulti, reply: region.regionWriteMultiReply },
  DEVICE_FEATURE: { request: feature.deviceFeature, reply: feature.deviceFeatureReply },
  MIG_DATA_READ: { request: migration.migDataRead, reply: migration.migDataReadReply },
  MIG_DATA_WRITE: { request: migration.migDataWrite, reply: migration.migDataWriteReply },
} as const satisfies Record<CommandName, { request: Codec<unknown>; reply: Codec<unknown> }>;

type Codecs = typeof codecs;
export type RequestBody<C extends CommandName> = Codecs[C]['request'] extends Codec<infer T> ? T : never;
export type ReplyBody<C extends CommandName> = Codecs[C]['reply'] extends Codec<infer T> ? T : never;

const byId = new Map<number, CommandName>(
  (Object.keys(Command) as CommandName[]).map((n) => [Command[n], n]),
);

export function codecFor(cmd: number, reply: boolean): Codec<unknown> | undefined {
  const name = byId.get(cmd);
  if (name === undefined) return undefined;
  return (reply ? codecs[name].reply : codecs[name].request) as Codec<unknown>;
}

export function encodeRequest<C extends CommandName>(cmd: C, body: RequestBody<C>): Buffer {
  return (codecs[cmd].request as Codec<RequestBody<C>>).encode(body);
}
export function decodeReply<C extends CommandName>(cmd: C, payload: Buffer): ReplyBody<C> {
  return (codecs[cmd].reply as Codec<ReplyBody<C>>).decode(payload);
}
export function decodeRequest<C extends CommandName>(cmd: C, payload: Buffer): RequestBody<C> {
  return (codecs[cmd].request as Codec<RequestBody<C>>).decode(payload);
}
export function encodeReply<C extends CommandName>(cmd: C, body: ReplyBody<C>): Buffer {
  return (codecs[cmd].reply as Codec<ReplyBody<C>>).encode(body);
}

export * from './codec.js';
export * from './device.js';
export * from './dma.js';
export * from './feature.js';
export * from './migration.js';
export * from './region.js';
export * from './version.js';
