// DEVICE_FEATURE and the data of each feature we know.
import { Feature, FeatureFlag } from '../constants.js';
import { defineStruct } from '../struct.js';
import { type Codec, need } from './codec.js';

export const FeatureStruct = defineStruct('vfio_user_device_feature', { argsz: 'u32', flags: 'u32' });
export const MigrationFeatureStruct = defineStruct('vfio_user_device_feature_migration', { flags: 'u64' });
export const MigStateStruct = defineStruct('vfio_user_device_feature_mig_state', {
  deviceState: 'u32',
  dataFd: 'i32',
});
export const LoggingControlStruct = defineStruct('vfio_user_device_feature_dma_logging_control', {
  pageSize: 'u64',
  numRanges: 'u32',
  reserved: 'u32',
});
export const LoggingRangeStruct = defineStruct('vfio_user_device_feature_dma_logging_range', {
  iova: 'u64',
  length: 'u64',
});
export const LoggingReportStruct = defineStruct('vfio_user_device_feature_dma_logging_report', {
  iova: 'u64',
  length: 'u64',
  pageSize: 'u64',
});
/** Extension (see README): Linux's struct vfio_device_feature_mig_data_size. */
export const MigDataSizeStruct = defineStruct('vfio_device_feature_mig_data_size', { stopCopyLength: 'u64' });
/** Extension (see README): the fields of Linux's struct vfio_precopy_info. */
export const PrecopyInfoStruct = defineStruct('vfio_user_precopy_info', { initialBytes: 'u64', dirtyBytes: 'u64' });

export type FeatureData =
  | { kind: 'none' }
  | { kind: 'migration'; flags: bigint }
  | { kind: 'mig-state'; deviceState: number; dataFd: number }
  | { kind: 'logging-control'; pageSize: bigint; numRanges: number; reserved: number; ranges: { iova: bigint; length: bigint }[] }
  | { kind: 'logging-report'; iova: bigint; length: bigint; pageSize: bigint; bitmap?: Buffer }
  | { kind: 'mig-data-size'; stopCopyLength: bigint }
  | { kind: 'precopy-info'; initialBytes: bigint; dirtyBytes: bigint }
  | { kind: 'raw'; bytes: Buffer };

export interface DeviceFeatureBody {
  argsz: number;
  flags: number;
  data: FeatureData;
}

/** Decodes a feature's data by its index; anything unexpected stays raw. */
export function decodeFeatureData(index: number, d: Buffer): FeatureData {
  if (d.length === 0) return { kind: 'none' };
  switch (index) {
    case Feature.MIGRATION:
      if (d.length === MigrationFeatureStruct.size) return { kind: 'migration', ...MigrationFeatureStruct.read(d) };
      break;
    case Feature.MIG_DEVICE_STATE:
      if (d.length === MigStateStruct.size) return { kind: 'mig-state', ...MigStateStruct.read(d) };
      break;
    case Feature.DMA_LOGGING_START:
    case Feature.DMA_LOGGING_STOP: {
      if (d.length < LoggingControlStruct.size) break;
      const c = LoggingControlStruct.read(d);
      const room = (d.length - LoggingControlStruct.size) / LoggingRangeStruct.size;
      if (room !== c.numRanges) break;
      const ranges = [];
      for (let i = 0; i < c.numRanges; i++) ranges.push(LoggingRangeStruct.read(d, LoggingControlStruct.size + i * LoggingRangeStruct.size));
      return { kind: 'logging-control', ...c, ranges };
    }
    case Feature.DMA_LOGGING_REPORT: {
      if (d.length < LoggingReportStruct.size) break;
      const r = LoggingReportStruct.read(d);
      return d.length > LoggingReportStruct.size
        ? { kind: 'logging-report', ...r, bitmap: Buffer.from(d.subarray(LoggingReportStruct.size)) }
        : { kind: 'logging-report', ...r };
    }
    case Feature.MIG_DATA_SIZE:
      if (d.length === MigDataSizeStruct.size) return { kind: 'mig-data-size', ...MigDataSizeStruct.read(d) };
      break;
    case Feature.MIG_PRECOPY_INFO:
      if (d.length === PrecopyInfoStruct.size) return { kind: 'precopy-info', ...PrecopyInfoStruct.read(d) };
      break;
  }
  return { kind: 'raw', bytes: Buffer.from(d) };
}

export function encodeFeatureData(f: FeatureData): Buffer {
  switch (f.kind) {
    case 'none':
      return Buffer.alloc(0);
    case 'migration':
      return MigrationFeatureStruct.encode(f);
    case 'mig-state':
      return MigStateStruct.encode(f);
    case 'logging-control': {
      const b = Buffer.alloc(LoggingControlStruct.size + f.ranges.length * LoggingRangeStruct.size);
      LoggingControlStruct.write(b, f);
      f.ranges.forEach((r, i) => LoggingRangeStruct.write(b, r, LoggingControlStruct.size + i * LoggingRangeStruct.size));
      return b;
    }
    case 'logging-report': {
      const h = LoggingReportStruct.encode(f);
      return f.bitmap ? Buffer.concat([h, f.bitmap]) : h;
    }
    case 'mig-data-size':
      return MigDataSizeStruct.encode(f);
    case 'precopy-info':
      return PrecopyInfoStruct.encode(f);
    case 'raw':
      return Buffer.from(f.bytes);
  }
}

export const deviceFeature: Codec<DeviceFeatureBody> = {
  decode(p) {
    need(p, FeatureStruct.size, 'DEVICE_FEATURE');
    const h = FeatureStruct.read(p);
    return { ...h, data: decodeFeatureData(h.flags & FeatureFlag.MASK, p.subarray(FeatureStruct.size)) };
  },
  encode(v) {
    return Buffer.concat([FeatureStruct.encode(v), encodeFeatureData(v.data)]);
  },
};
export const deviceFeatureReply = deviceFeature;
