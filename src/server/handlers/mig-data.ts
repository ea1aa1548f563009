// MIG_DATA_READ / MIG_DATA_WRITE: the v2 device state stream.  Any chunk
// size up to max_data_xfer_size works (libvfio-user's framing breaks at
// 64 KiB writes); data goes out, and comes in, without extra copies.
import type { MigrationController } from '../../migration/controller.js';
import { HEADER_SIZE } from '../../protocol/constants.js';
import { einval } from '../../protocol/errors.js';
import { MigDataStruct } from '../../protocol/messages/migration.js';
import type { Endpoint } from '../../transport/endpoint.js';
import type { Frame } from '../../transport/framer.js';
import type { HandlerContext } from './context.js';

/**
 * `n` zero bytes from one shared, never written buffer: the padding of the
 * empty read that ends every phase would otherwise allocate (and fault in)
 * up to max_data_xfer_size each time.
 */
let zeroBuf = Buffer.alloc(0);
function zeros(n: number): Buffer {
  if (zeroBuf.length < n) zeroBuf = Buffer.alloc(n);
  return zeroBuf.subarray(0, n);
}

export function migDataRead(s: HandlerContext, f: Frame, via: Endpoint): void | Promise<void> {
  const p = f.payload;
  if (p.length < MigDataStruct.size) throw einval('short MIG_DATA_READ');
  const argsz = p.readUInt32LE(MigDataStruct.off.argsz);
  const size = p.readUInt32LE(MigDataStruct.off.size);
  const mig = s.device.migration;
  if (mig === null) throw einval('device is not migratable');
  const limit = Math.min(s.opts.maxDataXferSize, s.clientCaps?.maxDataXferSize ?? s.opts.maxDataXferSize);
  if (size > limit) throw einval(`MIG_DATA_READ of ${size} bytes exceeds max_data_xfer_size ${limit}`);
  if (argsz < MigDataStruct.size + size) throw einval('MIG_DATA_READ argsz too small');
  // The device's buffer is sent by reference, not copied (see send below),
  // and the device may reuse it on its next readData call: so a client that
  // pipelines its reads waits until the previous reply has left the socket.
  if (via.sending) return via.whenDrained().then(() => readAndSend(s, mig, f, via, size));
  return readAndSend(s, mig, f, via, size);
}

function readAndSend(s: HandlerContext, mig: MigrationController, f: Frame, via: Endpoint, size: number): void | Promise<void> {
  const r = mig.read(size);
  if (r instanceof Promise) return r.then((data) => send(s, f, via, size, data));
  send(s, f, via, size, r);
}

function send(s: HandlerContext, f: Frame, via: Endpoint, size: number, data: Buffer): void {
  // argsz and size give what the device produced; like libvfio-user we pad
  // the payload to the size asked for, because libvfio-user's client reads
  // exactly that many bytes (a shorter reply looks like a broken stream).
  const body = data.length === size ? data : data.length === 0 ? zeros(size) : Buffer.concat([data, zeros(size - data.length)]);
  // Header and vfio_user_mig_data laid out in the session's reply buffer
  // (copied if the socket cannot take them at once); the data follows in
  // the same sendmsg, by reference: a 1 MiB chunk is never copied in user
  // space, which is most of what a copy-based send cost.
  const head = s.replyBuf.subarray(0, HEADER_SIZE + MigDataStruct.size);
  head.writeUInt32LE(MigDataStruct.size + data.length, HEADER_SIZE + MigDataStruct.off.argsz);
  head.writeUInt32LE(data.length, HEADER_SIZE + MigDataStruct.off.size);
  s.conn.replyPrebuilt(via, f, head, body.length ? body : null, true);
}

export function migDataWrite(s: HandlerContext, f: Frame, via: Endpoint): void | Promise<void> {
  const p = f.payload;
  if (p.length < MigDataStruct.size) throw einval('short MIG_DATA_WRITE');
  const argsz = p.readUInt32LE(MigDataStruct.off.argsz);
  const size = p.readUInt32LE(MigDataStruct.off.size);
  const mig = s.device.migration;
  if (mig === null) throw einval('device is not migratable');
  if (size > s.opts.maxDataXferSize) throw einval(`MIG_DATA_WRITE of ${size} bytes exceeds max_data_xfer_size`);
  if (argsz < MigDataStruct.size + size) throw einval('MIG_DATA_WRITE argsz too small');
  // A large body may have been received straight into the device's own
  // buffer (the session's placement hook): then it is handed back as is, with no
  // copy at all.  Otherwise the bytes are a view of the receive buffer and
  // the device copies them once, into its state.
  const carried = p.length - MigDataStruct.size + (f.placed ? f.placed.length : 0);
  if (carried !== size) throw einval(`MIG_DATA_WRITE carries ${carried} bytes for size ${size}`);
  const r = mig.write(f.placed ?? p.subarray(MigDataStruct.size));
  if (r instanceof Promise) return r.then(() => s.conn.reply(via, f, null));
  s.conn.reply(via, f, null);
}
