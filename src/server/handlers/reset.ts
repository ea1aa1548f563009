// DEVICE_RESET: quiesce, then the device's reset callback.
import type { Endpoint } from '../../transport/endpoint.js';
import type { Frame } from '../../transport/framer.js';
import type { HandlerContext } from './context.js';
import { quiesced } from './dma.js';

export function deviceReset(s: HandlerContext, f: Frame, via: Endpoint): void | Promise<void> {
  return quiesced(s, async () => {
    await s.device.reset('client');
    s.conn.reply(via, f, null);
  });
}
