// MIG_DATA_READ / MIG_DATA_WRITE: the v2 device state stream.  Any chunk
// size up to max_data_xfer_size works (libvfio-user's framing breaks at
// 64 KiB writes); data goes out without extra copies.
import { Errno } from '../../protocol/constants.js';
import { VfuError } from '../../protocol/errors.js';
import { MigDataStruct } from '../../protocol/messages/migration.js';
import type { Endpoint } from '../../transport/endpoint.js';
import type { Frame } from '../../transport/framer.js';
import type { Session } from '../session.js';

function einval(why: string): VfuError {
  return new VfuError(Errno.EINVAL, why);
}

export function migDataRead(s: Session, f: Frame, via: Endpoint): void | Promise<void> {
  const p = f.payload;
  if (p.length < MigDataStruct.size) throw einval('short MIG_DATA_READ');
  const { argsz, size } = MigDataStruct.read(p);
  const mig = s.device.migration;
  if (mig === null) throw einval('device is not migratable');
  const limit = Math.min(s.opts.maxDataXferSize, s.clientCaps?.maxDataXferSize ?? s.opts.maxDataXferSize);
  if (size > limit) throw einval(`MIG_DATA_READ of ${size} bytes exceeds max_data_xfer_size ${limit}`);
  if (argsz < MigDataStruct.size + size) throw einval('MIG_DATA_READ argsz too small');
  // argsz and size give what the device produced; like libvfio-user we pad
  // the payload to the size asked for, because libvfio-user's client reads
  // exactly that many bytes (a shorter reply looks like a broken stream).
  const send = (data: Buffer): void => {
    const body = data.length < size ? Buffer.concat([data, Buffer.alloc(size - data.length)]) : data;
    s.conn.reply(via, f, MigDataStruct.encode({ argsz: MigDataStruct.size + data.length, size: data.length }), body.length ? body : null);
  };
  const r = mig.read(size);
  if (r instanceof Promise) return r.then(send);
  send(r);
}

export function migDataWrite(s: Session, f: Frame, via: Endpoint): void | Promise<void> {
  const p = f.payload;
  if (p.length < MigDataStruct.size) throw einval('short MIG_DATA_WRITE');
  const { argsz, size } = MigDataStruct.read(p);
  const mig = s.device.migration;
  if (mig === null) throw einval('device is not migratable');
  if (size > s.opts.maxDataXferSize) throw einval(`MIG_DATA_WRITE of ${size} bytes exceeds max_data_xfer_size`);
  if (argsz < MigDataStruct.size + size) throw einval('MIG_DATA_WRITE argsz too small');
  if (p.length !== MigDataStruct.size + size) throw einval(`MIG_DATA_WRITE carries ${p.length - MigDataStruct.size} bytes for size ${size}`);
  const r = mig.write(p.subarray(MigDataStruct.size));
  if (r instanceof Promise) return r.then(() => s.conn.reply(via, f, null));
  s.conn.reply(via, f, null);
}
