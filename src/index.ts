// vfio-user for TypeScript: the public API.  What a device author, a VMM
// author or a tool meets is exported here; the raw native addon, the
// transport and the server's sessions are not (see docs/native.md).
export * from './protocol/constants.js';
export { VfuError, errnoOf } from './protocol/errors.js';
export { parseCapabilities, formatCapabilities, type Capabilities } from './protocol/capabilities.js';
export { describeMessage } from './protocol/describe.js';
export { nativeLoadError, NativeUnavailableError, transportStatus, type TransportStatus } from './native/index.js';

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

export { PciConfigSpace, MsixTable } from './pci/index.js';

export { MigrationController, DeviceStateLostError, type MigrationCallbacks, type PrecopyInfo } from './migration/controller.js';
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
export {
  TcpTarget,
  receiveMigrations,
  ChunkReader,
  ChunkType,
  BrokenStreamError,
  type TcpTargetOptions,
  type ReceiveOptions,
} from './client/tcp-stream.js';
export {
  V1Register,
  v1DeviceState,
  setV1DeviceState,
  migrateV1Save,
  migrateV1Restore,
  v1BitmapSize,
  dirtyPagesStart,
  dirtyPagesStop,
  dirtyPagesGetBitmap,
  dmaUnmapWithDirtyBitmap,
  type V1Options,
  type V1SaveOptions,
  type V1SaveResult,
  type V1RestoreOptions,
} from './client/migration-v1.js';

export { createSample } from './devices/sample.js';
export { createGpio } from './devices/gpio.js';
export { createBigState } from './devices/bigstate.js';
export { createNvme, NVME_VENDOR_ID, NVME_DEVICE_ID, NVME_CLASS_CODE, type NvmeOptions, type NvmeDevice } from './devices/nvme/nvme.js';
export { NvmeDriver, NvmeStatusError, type NvmeDriverOptions, type NvmeCompletion, type NvmeInfo } from './client/nvme/driver.js';

// Types that the exports above take or return.
export type { PciConfigOptions, PciHooks, PciEvent, HookFn, BarKind, MsixControl, HookResult, CapabilityInfo, MsiState, BarInfo, RomInfo, BarSpec } from './pci/config-space.js';
export type { ExpressOptions, ExtVendorOptions, MsiOptions, MsixOptions, PmOptions, Placement, VendorOptions } from './pci/config-space.js';
export type { MsixEntry, MsixCapability } from './pci/msix.js';
export { PcieDeviceType, type PowerState, type PcieDeviceTypeId } from './pci/constants.js';
export type { MigrationStats } from './migration/controller.js';
export type { MigrationCaps, MigSizingCaps } from './protocol/capabilities.js';
export type { HeaderFields } from './protocol/header.js';
export type { DescribeOptions } from './protocol/describe.js';
export type { TransportKind } from './transport/socket.js';
export type { DmaController, DmaAccessMode, UnsealedPolicy, DmaMapping, DmaLimits } from './server/dma.js';
export type { Region } from './server/regions.js';
export type { IoEventFdSpec } from './server/ioeventfds.js';
export type { IrqStateCallback } from './server/irqs.js';
export type { DmaMapRequest, DmaMappingRecord } from './client/client.js';
export type { PhaseStats, RoundStats, GuestLayout, ProgressEvent, Phase } from './client/migrate.js';
export type { Chunk, PagePlacer } from './client/tcp-stream.js';
export type { SampleDevice, SampleOptions } from './devices/sample.js';
export type { GpioDevice, GpioOptions } from './devices/gpio.js';
export type { BigStateDevice, BigStateOptions } from './devices/bigstate.js';
