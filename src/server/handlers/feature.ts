// DEVICE_FEATURE: MIGRATION, MIG_DEVICE_STATE, DMA_LOGGING_START/STOP/REPORT
// and, for clients that asked for them in VERSION, the pre-copy sizing
// extension (MIG_DATA_SIZE, MIG_PRECOPY_INFO).  GET, SET and PROBE follow the
// kernel's rules; errnos follow libvfio-user.
import { Errno, Feature, FeatureFlag, MigState } from '../../protocol/constants.js';
import { VfuError, einval } from '../../protocol/errors.js';
import {
  FeatureStruct,
  LoggingControlStruct,
  LoggingRangeStruct,
  LoggingReportStruct,
  MigDataSizeStruct,
  MigStateStruct,
  MigrationFeatureStruct,
  PrecopyInfoStruct,
} from '../../protocol/messages/feature.js';
import { u64ToNumber } from '../../protocol/struct.js';
import { bitmapSize } from '../../migration/dirty.js';
import type { Endpoint } from '../../transport/endpoint.js';
import type { Frame } from '../../transport/framer.js';
import { copyOf } from '../../util/bytes.js';
import type { HandlerContext } from './context.js';
import { checkBitmapSize, dirtyBitmapReply, startLogging } from './dirty-reports.js';
import { quiesced } from './dma.js';

const { GET, SET, PROBE } = FeatureFlag;
const HDR = FeatureStruct.size;

/** Operations a feature supports for this device and client (0: none). */
function supported(s: HandlerContext, feature: number): number {
  const mig = s.device.migration !== null;
  const sizing = mig && typeof s.clientCaps?.migSizing === 'object';
  switch (feature) {
    case Feature.MIGRATION:
      return mig ? GET | PROBE : 0;
    case Feature.MIG_DEVICE_STATE:
      return mig ? GET | SET | PROBE : 0;
    case Feature.DMA_LOGGING_START:
    case Feature.DMA_LOGGING_STOP:
      return SET | PROBE;
    case Feature.DMA_LOGGING_REPORT:
      return GET | PROBE;
    case Feature.MIG_DATA_SIZE:
    case Feature.MIG_PRECOPY_INFO:
      return sizing ? GET | PROBE : 0;
    default:
      return 0;
  }
}

/**
 * Replies with the feature header and `data`, then `extra` (a bitmap, sent
 * by reference: see Connection.reply).  `flags` is read from the request
 * unless given (a handler that awaited may find its payload view reused).
 */
function replyWith(s: HandlerContext, f: Frame, via: Endpoint, data: Buffer, extra: Buffer | null = null, flags = f.payload.readUInt32LE(FeatureStruct.off.flags)): void {
  const head = Buffer.allocUnsafe(HDR + data.length);
  FeatureStruct.write(head, { argsz: HDR + data.length + (extra ? extra.length : 0), flags });
  data.copy(head, HDR);
  s.conn.reply(via, f, head, extra);
}

export function deviceFeature(s: HandlerContext, f: Frame, via: Endpoint): void | Promise<void> {
  const p = f.payload;
  if (p.length < HDR) throw einval('short DEVICE_FEATURE');
  const { argsz, flags } = FeatureStruct.read(p);
  const feature = flags & FeatureFlag.MASK;
  const ops = flags & ~FeatureFlag.MASK;
  const sup = supported(s, feature);
  if (sup === 0 || (ops & sup) !== ops || ops === 0) throw einval(`feature ${feature}: operations 0x${ops.toString(16)} not supported`);
  const data = p.subarray(HDR);

  if (ops & PROBE || (ops & GET && ops & SET)) {
    if (!(ops & PROBE)) throw einval('GET and SET together without PROBE');
    if (argsz < p.length) throw einval('DEVICE_FEATURE argsz too small');
    s.conn.reply(via, f, Buffer.from(p));
    return;
  }
  if (ops === GET) return featureGet(s, f, via, feature, argsz, data);
  if (argsz < p.length) throw einval('DEVICE_FEATURE argsz too small');
  return featureSet(s, f, via, feature, data);
}

function featureGet(s: HandlerContext, f: Frame, via: Endpoint, feature: number, argsz: number, data: Buffer): void | Promise<void> {
  const mig = s.device.migration;
  switch (feature) {
    case Feature.MIGRATION:
      if (argsz < HDR + MigrationFeatureStruct.size) throw einval('argsz too small for MIGRATION');
      replyWith(s, f, via, MigrationFeatureStruct.encode({ flags: BigInt(mig!.flags) }));
      return;
    case Feature.MIG_DEVICE_STATE:
      if (argsz < HDR + MigStateStruct.size) throw einval('argsz too small for MIG_DEVICE_STATE');
      replyWith(s, f, via, MigStateStruct.encode({ deviceState: mig!.state, dataFd: -1 }));
      return;
    case Feature.MIG_DATA_SIZE:
      if (argsz < HDR + MigDataSizeStruct.size) throw einval('argsz too small for MIG_DATA_SIZE');
      replyWith(s, f, via, MigDataSizeStruct.encode({ stopCopyLength: BigInt(mig!.stopCopySize()) }));
      return;
    case Feature.MIG_PRECOPY_INFO: {
      if (argsz < HDR + PrecopyInfoStruct.size) throw einval('argsz too small for MIG_PRECOPY_INFO');
      const i = mig!.precopyInfo();
      replyWith(s, f, via, PrecopyInfoStruct.encode({ initialBytes: BigInt(i.initialBytes), dirtyBytes: BigInt(i.dirtyBytes) }));
      return;
    }
    case Feature.DMA_LOGGING_REPORT: {
      if (data.length < LoggingReportStruct.size) throw einval('short DMA_LOGGING_REPORT');
      const r = LoggingReportStruct.read(data);
      const iova = u64ToNumber(r.iova);
      const length = u64ToNumber(r.length);
      const pageSize = u64ToNumber(r.pageSize);
      if (Number.isNaN(iova) || Number.isNaN(length) || Number.isNaN(pageSize) || !Number.isSafeInteger(iova + length)) {
        throw einval('DMA_LOGGING_REPORT range beyond 2^53');
      }
      if (pageSize === 0 || (pageSize & (pageSize - 1)) !== 0 || pageSize > 2 ** 40) throw einval(`report page size ${pageSize}`);
      const size = bitmapSize(length, pageSize);
      checkBitmapSize(s, size);
      if (argsz < HDR + LoggingReportStruct.size + size) throw einval('argsz too small for the bitmap');
      const head = copyOf(data.subarray(0, LoggingReportStruct.size));
      const flags = f.payload.readUInt32LE(FeatureStruct.off.flags);
      return dirtyBitmapReply(s, via, size, (bitmap) => {
        s.device.logging.report(iova, length, pageSize, bitmap);
        replyWith(s, f, via, head, bitmap, flags);
      });
    }
  }
  throw einval(`feature ${feature} has no GET`);
}

function featureSet(s: HandlerContext, f: Frame, via: Endpoint, feature: number, data: Buffer): void | Promise<void> {
  const echo = copyOf(f.payload);
  switch (feature) {
    case Feature.MIG_DEVICE_STATE: {
      if (data.length < MigStateStruct.size) throw einval('short MIG_DEVICE_STATE');
      const target = MigStateStruct.read(data).deviceState;
      const mig = s.device.migration!;
      // ERROR is never a state to ask for, not even while in it.
      if (target === MigState.ERROR) throw einval('migration state ERROR cannot be requested');
      if (target === mig.state) {
        // Requesting the current state is a no-op: no callback, no quiesce.
        s.conn.reply(via, f, echo);
        return;
      }
      if (mig.plan(target) === null) throw einval(`no path to migration state ${target}`);
      return quiesced(s, () => {
        const r = mig.setState(target);
        if (r instanceof Promise) return r.then(() => s.conn.reply(via, f, echo));
        s.conn.reply(via, f, echo);
      });
    }
    case Feature.DMA_LOGGING_START: {
      if (data.length < LoggingControlStruct.size) throw einval('short DMA_LOGGING_START');
      const c = LoggingControlStruct.read(data);
      const n = (data.length - LoggingControlStruct.size) / LoggingRangeStruct.size;
      if (n !== c.numRanges) throw einval(`DMA_LOGGING_START: ${c.numRanges} ranges in ${data.length} bytes`);
      const pageSize = u64ToNumber(c.pageSize);
      if (Number.isNaN(pageSize) || pageSize === 0) throw einval('DMA_LOGGING_START page size');
      let ranges: { iova: number; length: number }[] | null = null;
      if (n > 0) {
        if (n > 65536) throw new VfuError(Errno.E2BIG, 'too many logging ranges');
        ranges = [];
        for (let i = 0; i < n; i++) {
          const r = LoggingRangeStruct.read(data, LoggingControlStruct.size + i * LoggingRangeStruct.size);
          const iova = u64ToNumber(r.iova);
          const length = u64ToNumber(r.length);
          if (Number.isNaN(iova) || Number.isNaN(length) || length === 0 || !Number.isSafeInteger(iova + length)) {
            throw einval('DMA_LOGGING_START range');
          }
          ranges.push({ iova, length });
        }
      }
      startLogging(s, pageSize, ranges);
      s.conn.reply(via, f, echo);
      return;
    }
    case Feature.DMA_LOGGING_STOP:
      s.device.logging.stop();
      s.conn.reply(via, f, echo);
      return;
  }
  throw einval(`feature ${feature} has no SET`);
}
