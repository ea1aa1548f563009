// A `sample` device served with the ServeOptions given as JSON, for tests
// that watch a server process from outside (its RSS in /proc):
//   node dist/test/helpers/serve-child.js SOCKET-PATH '{"maxDirtyBitmapBytes": ...}'
// Prints "listening" once the socket accepts connections; SIGTERM ends it.
import { createSample } from '../../src/devices/sample.js';
import { VfioUserServer } from '../../src/server/server.js';

const [path, json] = process.argv.slice(2);
const dev = createSample();
const server = await VfioUserServer.listen(dev.device, path!, JSON.parse(json ?? '{}'));
process.on('SIGTERM', () => void server.close().then(() => process.exit(0)));
process.stdout.write('listening\n');
