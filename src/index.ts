// vfio-user for TypeScript: the public API.
export * from './protocol/constants.js';
export { VfuError, errnoOf } from './protocol/errors.js';
export { parseCapabilities, formatCapabilities, type Capabilities } from './protocol/capabilities.js';
export { describeMessage } from './protocol/describe.js';
export { native, nativeLoadError, NativeUnavailableError } from './native/index.js';

export {
  VfioUserDevice,
  type DeviceOptions,
  type DeviceEvents,
  type DmaOptions,
  type LogLevel,
  type PciIdentity,
  type ResetReason,
  type MigrationSetup,
} from './server/device.js';
export { VfioUserServer, type ServeOptions, type ServerEvents } from './server/server.js';
export { RemoteError } from './transport/connection.js';
export type { RegionSpec, RegionAccess, SparseArea } from './server/regions.js';
export type { DmaMappingInfo, DmaSegment } from './server/dma.js';

export { PciConfigSpace, MsixTable, decodeConfigSpace, formatDescription } from './pci/index.js';

export { MigrationController, type MigrationCallbacks, type PrecopyInfo } from './migration/controller.js';
export { deriveNextState, planPath, migrationFlags, type MigrationFeatures } from './migration/fsm.js';
export { DirtyBitmap, DirtyLog, bitmapSize, type DirtyLogOptions, type LogRange } from './migration/dirty.js';

export { VfioUserClient, type ClientOptions, type ClientEvents, type RegionInfo, type DeviceInfo, type IrqInfo } from './client/client.js';
export { deviceProfile, compareProfiles, type DeviceProfile } from './client/compare.js';
export { GuestMemory, type GuestRange } from './client/guest-memory.js';
export {
  migrate,
  LocalTarget,
  MigrationError,
  MigrationNotConvergedError,
  formatReport,
  type DowntimeParts,
  type FinishTimes,
  type MigrateOptions,
  type MigrationReport,
  type MigrationTarget,
  type TransferRates,
} from './client/migrate.js';
export { TcpTarget, receiveMigrations, ChunkReader, BrokenStreamError, type TcpTargetOptions, type ReceiveOptions } from './client/tcp-stream.js';

export { createSample } from './devices/sample.js';
export { createGpio } from './devices/gpio.js';
export { createBigState } from './devices/bigstate.js';
export { createNvme, NVME_VENDOR_ID, NVME_DEVICE_ID, NVME_CLASS_CODE, type NvmeOptions, type NvmeDevice } from './devices/nvme/nvme.js';
export { NvmeDriver, NvmeStatusError, type NvmeDriverOptions, type NvmeCompletion, type NvmeInfo } from './client/nvme/driver.js';
