// Serves the DMA engine on a UNIX socket until SIGINT / SIGTERM.
//   node serve.js /tmp/dma.sock
import { VfioUserServer } from 'vfio-user';
import createDevice from './my-device.js';

const path = process.argv[2] ?? '/tmp/dma.sock';
const device = createDevice();
device.on('reset', (reason) => console.log(`reset (${reason})`));
const server = await VfioUserServer.listen(device, path); // created mode 0600
console.log(`listening on ${path}`);

// The server does not handle signals: close() removes the socket and
// releases the device's memory.
const stop = (): void => void server.close().then(() => process.exit(0));
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
