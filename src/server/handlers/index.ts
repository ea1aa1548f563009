// Dispatch table: command -> handler.  A new command means a new entry here
// and a module of its own, not an edit in the middle of a switch.
import { Command } from '../../protocol/constants.js';
import type { Handler } from './context.js';
import { dmaMap, dmaUnmap } from './dma.js';
import { deviceFeature } from './feature.js';
import { deviceGetInfo, deviceGetIrqInfo, deviceGetRegionInfo, deviceGetRegionIoFds } from './info.js';
import { setIrqs } from './irqs.js';
import { dirtyPages } from './dirty-pages.js';
import { migDataRead, migDataWrite } from './mig-data.js';
import { regionRead, regionWrite, regionWriteMulti } from './region-access.js';
import { deviceReset } from './reset.js';
import { negotiate } from './version.js';

export type { Handler, HandlerContext, SessionOptions } from './context.js';

/** The handler of each command, by command number. */
export const handlers: (Handler | undefined)[] = [];
handlers[Command.VERSION] = negotiate;
handlers[Command.DMA_MAP] = dmaMap;
handlers[Command.DMA_UNMAP] = dmaUnmap;
handlers[Command.DEVICE_GET_INFO] = deviceGetInfo;
handlers[Command.DEVICE_GET_REGION_INFO] = deviceGetRegionInfo;
handlers[Command.DEVICE_GET_REGION_IO_FDS] = deviceGetRegionIoFds;
handlers[Command.DEVICE_GET_IRQ_INFO] = deviceGetIrqInfo;
handlers[Command.DEVICE_SET_IRQS] = setIrqs;
handlers[Command.REGION_READ] = regionRead;
handlers[Command.REGION_WRITE] = regionWrite;
handlers[Command.DEVICE_RESET] = deviceReset;
handlers[Command.DIRTY_PAGES] = dirtyPages;
handlers[Command.REGION_WRITE_MULTI] = regionWriteMulti;
handlers[Command.DEVICE_FEATURE] = deviceFeature;
handlers[Command.MIG_DATA_READ] = migDataRead;
handlers[Command.MIG_DATA_WRITE] = migDataWrite;
