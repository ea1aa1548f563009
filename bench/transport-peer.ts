// Child process of bench/transport.ts: serves the socket it inherits as fd 3
// with the given transport ('native' or 'net').
//   a request whose payload is at most 64 bytes: echoed back;
//   a larger request: a header-only ack;
//   No_reply messages: counted only (streaming sink);
//   DEVICE_RESET: replies with the byte count sunk since the last one (u64).
import { Command, HEADER_SIZE, HeaderFlag } from '../src/protocol/constants.js';
import { writeHeader } from '../src/protocol/header.js';
import { endpointFromFd, type TransportKind } from '../src/transport/socket.js';

const kind = (process.argv[2] ?? 'native') as TransportKind;
const ep = endpointFromFd(3, { maxMessageSize: 2 * 1024 * 1024, maxFds: 0 }, { transport: kind });
const out = Buffer.alloc(HEADER_SIZE + 64);
let sunk = 0;

ep.onFrame = (f) => {
  if (f.flags & HeaderFlag.NO_REPLY) {
    sunk += f.payload.length;
    return;
  }
  let len = 0;
  if (f.cmd === Command.DEVICE_RESET) {
    out.writeBigUInt64LE(BigInt(sunk), HEADER_SIZE);
    sunk = 0;
    len = 8;
  } else if (f.payload.length <= 64) {
    f.payload.copy(out, HEADER_SIZE);
    len = f.payload.length;
  }
  writeHeader(out, f.msgId, f.cmd, HEADER_SIZE + len, HeaderFlag.TYPE_REPLY, 0);
  ep.send(out.subarray(0, HEADER_SIZE + len), null, null);
};
ep.onClose = () => process.exit(0);
