// The sample devices `vfu serve NAME` can run.
import type { VfioUserDevice } from '../server/device.js';
import { createBigState } from './bigstate.js';
import { createGpio } from './gpio.js';
import { createNvme } from './nvme/nvme.js';
import { parseSize } from './nvme/image.js';
import { createSample } from './sample.js';

export interface DeviceFactoryOptions {
  /** Expose the legacy v1 migration region too. */
  v1?: boolean;
  [k: string]: unknown;
}

export const deviceFactories: Record<string, (o: DeviceFactoryOptions) => VfioUserDevice> = {
  gpio: () => createGpio().device,
  sample: (o) => createSample({ ...(o.v1 ? { v1: true } : {}) }).device,
  bigstate: (o) =>
    createBigState({
      ...(typeof o['stateMib'] === 'number' ? { stateMib: o['stateMib'] } : {}),
      ...(typeof o['precopyMib'] === 'number' ? { precopyMib: o['precopyMib'] } : {}),
      ...(o.v1 ? { v1: true } : {}),
      ...(o['verify'] === false ? { verify: false } : {}),
    }).device,
  nvme: (o) => {
    if (typeof o['image'] !== 'string') throw new Error('nvme needs --image FILE');
    const lba = o['lba'] === undefined ? 512 : Number(o['lba']);
    return createNvme({
      image: o['image'],
      ...(typeof o['size'] === 'string' ? { size: parseSize(o['size']) } : {}),
      ...(o['queues'] !== undefined ? { queues: Number(o['queues']) } : {}),
      lbaSize: lba as 512 | 4096,
      ...(o['shadowDoorbells'] === true ? { shadowDoorbells: true } : {}),
      ...(o.v1 ? { v1: true } : {}),
    }).device;
  },
};
