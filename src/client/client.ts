// The VMM's side of vfio-user: connect and negotiate, discover the device,
// access regions, map guest memory for DMA (with descriptors, or served to
// the server's DMA_READ/DMA_WRITE requests), interrupts as eventfds, reset,
// every DEVICE_FEATURE, and the migration data stream.
//
// Everything the server sends is validated: a reply that does not match its
// request, garbage, or a DMA request outside guest memory gets an error (the
// latter an EFAULT reply), never a crash.  Requests time out (configurable)
// and losing the server is reported as a 'lost' event (see ClientEvents).
import { constants as bufferConstants } from 'node:buffer';
import { EventEmitter } from 'node:events';
import { fstatSync } from 'node:fs';
import { POLL_READABLE, native, requireNative, type PollHandle } from '../native/index.js';
import { formatCapabilities, parseCapabilities, type Capabilities } from '../protocol/capabilities.js';
import {
  Command,
  DEFAULT_MAX_DATA_XFER_SIZE,
  DmaMapFlag,
  DmaUnmapFlag,
  Errno,
  Feature,
  FeatureFlag,
  IrqSetFlag,
  MigState,
  RegionCapId,
  VERSION_MAJOR,
  VERSION_MINOR,
  commandName,
  featureName,
  migStateNames,
} from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';
import { DeviceInfoStruct, IrqInfoStruct, IrqSetStruct } from '../protocol/messages/device.js';
import { DmaAccessStruct, DmaMapStruct, DmaUnmapStruct } from '../protocol/messages/dma.js';
import {
  FeatureStruct,
  LoggingControlStruct,
  LoggingRangeStruct,
  LoggingReportStruct,
  MigDataSizeStruct,
  MigStateStruct,
  MigrationFeatureStruct,
  PrecopyInfoStruct,
} from '../protocol/messages/feature.js';
import { MigDataStruct } from '../protocol/messages/migration.js';
import {
  IoFdsStruct,
  RegionAccessStruct,
  RegionInfoStruct,
  WriteMultiEntryStruct,
  WriteMultiHeadStruct,
  type RegionCap,
  type SubRegion,
} from '../protocol/messages/region.js';
import { decodeReply, encodeRequest } from '../protocol/messages/index.js';
import { version } from '../protocol/messages/version.js';
import { Connection, RemoteError, type Reply } from '../transport/connection.js';
import type { Endpoint } from '../transport/endpoint.js';
import type { Frame } from '../transport/framer.js';
import { NativeEndpoint } from '../transport/native-endpoint.js';
import { closeFd, connect, type TransportKind } from '../transport/socket.js';
import { copyOf } from '../util/bytes.js';
import { GuestMemory } from './guest-memory.js';

/** Options of {@link VfioUserClient.connect}. */
export interface ClientOptions {
  /** 'native' (descriptor passing, the default with the addon) or 'net' (node:net). */
  transport?: TransportKind;
  /** What we accept per data message (our max_data_xfer_size). */
  maxDataXferSize?: number;
  /** Descriptors we accept per message. */
  maxMsgFds?: number;
  /** Ask for twin-socket mode (server requests on their own socket). */
  twinSocket?: boolean;
  /** Ask for REGION_WRITE_MULTI. */
  writeMultiple?: boolean;
  /** Ask for the pre-copy sizing extension. */
  migSizing?: boolean;
  /** Reply timeout in ms (0: none). */
  replyTimeoutMs?: number;
  /**
   * Largest dirty bitmap reply we accept (bytes).  With maxDataXferSize it
   * bounds every reply: a larger one is refused (the request fails with
   * EMSGSIZE) and its body skipped as it streams in, never buffered.
   */
  maxBitmapSize?: number;
  /** Our requests in flight at once (ENOSPC beyond; default 4096). */
  maxPendingRequests?: number;
  /** Our replies to the server's DMA requests waiting to be written before we stop reading (default 16 MiB). */
  maxSendQueueBytes?: number;
}

/** DEVICE_GET_INFO's answer. */
export interface DeviceInfo {
  /** VFIO_DEVICE_FLAGS_* (DeviceFlag: RESET, PCI). */
  flags: number;
  /** Regions the device reports (indexes 0 to numRegions-1). */
  numRegions: number;
  /** Interrupt indexes the device reports. */
  numIrqs: number;
}

/** DEVICE_GET_REGION_INFO's answer, decoded. */
export interface RegionInfo {
  /** The region index (PciRegion, or a device-specific one). */
  index: number;
  /** VFIO_REGION_INFO_FLAG_* (RegionFlag: READ, WRITE, MMAP, CAPS). */
  flags: number;
  /** Bytes (0: the region is absent). */
  size: number;
  /** Offset of the region in its descriptor (for mmap). */
  offset: number;
  /** The capabilities in the reply, decoded (sparse and type are above). @internal */
  caps: RegionCap[];
  /** The mappable areas (sparse mmap capability), or null when the whole region maps. */
  sparse:
    | {
        /** Offset in the region. */
        offset: number;
        /** Bytes. */
        size: number;
      }[]
    | null;
  /** The region type capability (device-specific regions), or null. */
  type: {
      /** VFIO_REGION_TYPE_*. */
      type: number;
      /** VFIO_REGION_SUBTYPE_*. */
      subtype: number;
    } | null;
  /** The region's descriptor when mappable (owned by the client: closed on close()). */
  fd: number;
}

/** DEVICE_GET_IRQ_INFO's answer. */
export interface IrqInfo {
  /** The interrupt index (IrqIndex). */
  index: number;
  /** VFIO_IRQ_INFO_* (IrqInfoFlag). */
  flags: number;
  /** Vectors of this index. */
  count: number;
}

/** What {@link VfioUserClient.dmaMap} maps: a range of guest memory (added to `memory` first). */
export interface DmaMapRequest {
  /** Guest (I/O virtual) address. */
  iova: number;
  /** Bytes. */
  size: number;
  /** Read/write permission for the device (default both). */
  prot?: number;
  /** Pass the memfd (true, default when possible) or serve DMA by messages. */
  withFd?: boolean;
}

/** A DMA mapping this client made (see dmaMappings). */
export interface DmaMappingRecord {
  /** Guest address. */
  iova: number;
  /** Bytes. */
  size: number;
  /** The device's permissions (DmaMapFlag READ/WRITE). */
  prot: number;
  /** Whether the memfd went with it (else the server uses DMA messages). */
  withFd: boolean;
}

const NO_OPTIONS = Object.freeze({});
/** Migration states there are (MigState ERROR..PRE_COPY_P2P). */
const MIG_STATES = 8;
/** A feature reply's data, not wanted. */
const ignoreData = (): void => {};

/** A DEVICE_FEATURE request: the header (argsz covers `data` or the `replyData` bytes expected back, the larger), then `data`. */
function featureRequest(flags: number, data: Buffer | null, replyData: number): Buffer {
  const head = FeatureStruct.encode({ argsz: FeatureStruct.size + Math.max(data ? data.length : 0, replyData), flags });
  return data ? Buffer.concat([head, data]) : head;
}

function bad(cmd: number, why: string): VfuError {
  return new VfuError(Errno.EPROTO, `${commandName(cmd)} reply: ${why}`);
}

/** The events of a {@link VfioUserClient} and their listeners' arguments. */
export interface ClientEvents {
  /**
   * An interrupt fired: its index (IrqIndex), vector, and how many times
   * since the last event (eventfd counts coalesce).
   */
  interrupt: [index: number, vector: number, count: number];
  /**
   * The connection to the server ended without close() (server exited,
   * socket broken, protocol violation): `err` says why, null for a plain
   * end of stream.  Pending requests have failed; call reconnect() or close().
   */
  lost: [err: Error | null];
  /**
   * The same failure as 'lost' when there is an error, emitted only if
   * someone listens (so an unhandled 'error' never throws).
   */
  error: [err: Error];
  /** reconnect() re-established the connection, mappings and interrupts. */
  reconnected: [];
  /** close() was called: everything the client held is released. */
  close: [];
}

/**
 * The VMM's side of a vfio-user connection (see {@link VfioUserClient.connect}).
 * Its events are listed in {@link ClientEvents}; call close() when done, or
 * the process stays alive.
 */
export class VfioUserClient extends EventEmitter<ClientEvents> {
  /** The request/reply connection (tests and tools reach the wire through it). @internal */
  conn!: Connection;
  /** What the server said it can do in VERSION. */
  serverCaps!: Capabilities;
  /** The protocol version the server answered. */
  serverVersion: {
      /** Major version. */
      major: number;
      /** Minor version. */
      minor: number;
    } = { major: 0, minor: 0 };
  /** The guest RAM this client owns and maps to the device (add, view, write). */
  readonly memory = new GuestMemory();
  /** Protocol violations by the server that we survived. */
  violations = 0;
  private readonly mapped = new Map<number, DmaMappingRecord>();
  private readonly irqPolls: { fd: number; poll: PollHandle; index: number; vector: number }[] = [];
  private readonly irqConfig = new Map<number, number>();
  private regionFds: number[] = [];
  /** MIG_DEVICE_STATE SET requests, by state, all made on first use. */
  private migStateRequests: Buffer[] | null = null;
  /** The MIG_DATA_READ request, rewritten for each read. */
  private readonly migReadReq = Buffer.alloc(MigDataStruct.size);
  /** DMA_LOGGING_REPORT requests already encoded (one per mapping, in practice). */
  private readonly reportRequests: { iova: number; length: number; pageSize: number; req: Buffer }[] = [];
  /** REGION_READ requests are laid out here (see regionRead). */
  private readonly accessReq = Buffer.alloc(RegionAccessStruct.size);
  private _closed = false;
  private path: string | null = null;

  private constructor(
    /** The options given to connect(). */
    readonly opts: ClientOptions,
  ) {
    super();
  }

  /** Whether close() was called. */
  get closed(): boolean {
    return this._closed;
  }

  private get maxData(): number {
    return this.opts.maxDataXferSize ?? DEFAULT_MAX_DATA_XFER_SIZE;
  }

  /** Connects to a server socket and negotiates. */
  static async connect(path: string, opts: ClientOptions = {}): Promise<VfioUserClient> {
    const c = new VfioUserClient(opts);
    c.path = path;
    await c.attach(await c.open(path));
    return c;
  }

  /** Uses an already connected endpoint (an inherited fd, a socket pair). @internal */
  static async fromEndpoint(ep: Endpoint, opts: ClientOptions = {}): Promise<VfioUserClient> {
    const c = new VfioUserClient(opts);
    await c.attach(ep);
    return c;
  }

  private limits(): { maxMessageSize: number; maxFds: number } {
    const bitmap = this.opts.maxBitmapSize ?? 256 * 1024 * 1024;
    return { maxMessageSize: Math.max(this.maxData, bitmap) + 4096, maxFds: this.opts.maxMsgFds ?? 16 };
  }

  private open(path: string): Promise<Endpoint> {
    return connect(path, this.limits(), this.opts.transport ? { transport: this.opts.transport } : {});
  }

  private async attach(ep: Endpoint): Promise<void> {
    // our limits, also on an endpoint made elsewhere (fromEndpoint)
    const limits = this.limits();
    ep.setLimits(limits.maxMessageSize, limits.maxFds);
    ep.setSendQueueLimit(this.opts.maxSendQueueBytes ?? 16 * 1024 * 1024);
    this.conn = new Connection(ep, {
      replyTimeoutMs: this.opts.replyTimeoutMs ?? 30_000,
      ...(this.opts.maxPendingRequests !== undefined ? { maxPending: this.opts.maxPendingRequests } : {}),
      closeFd,
    });
    this.conn.onCommand = (f, via) => this.onServerRequest(f, via);
    this.conn.onClose = (err) => {
      if (err && this.listenerCount('error') > 0) this.emit('error', err);
      if (!this._closed) this.emit('lost', err);
    };
    try {
      await this.negotiate(ep);
    } catch (e) {
      // nobody gets this client: its connection must not outlive the failure
      this.conn.onClose = () => {};
      this.conn.close();
      throw e;
    }
  }

  private async negotiate(ep: Endpoint): Promise<void> {
    const canFds = ep.canPassFds;
    const ours: Partial<Capabilities> = {
      maxMsgFds: canFds ? (this.opts.maxMsgFds ?? 16) : 0,
      maxDataXferSize: this.maxData,
      maxDmaMaps: 65535,
      pgsizes: 4096,
      migration: { pgsize: 4096, maxBitmapSize: this.opts.maxBitmapSize ?? 256 * 1024 * 1024 },
      writeMultiple: this.opts.writeMultiple ?? true,
    };
    if (this.opts.twinSocket && canFds) ours.twinSocket = { supported: true };
    if (this.opts.migSizing ?? true) ours.migSizing = true;
    ours.errorText = true;
    const body = version.encode({ major: VERSION_MAJOR, minor: VERSION_MINOR, json: formatCapabilities(ours), nul: true });
    let r: Reply;
    try {
      r = await this.conn.request(Command.VERSION, body);
    } catch (e) {
      // The server refuses a second client with EBUSY: say what that means.
      if (e instanceof RemoteError && e.errno === Errno.EBUSY) {
        const at = this.path !== null ? `the server at ${this.path}` : 'the server';
        throw new VfuError(Errno.EBUSY, `${at} already has a client (vfio-user servers take one at a time)`);
      }
      throw e;
    }
    try {
      const v = version.decode(r.payload);
      if (v.major !== VERSION_MAJOR) throw bad(Command.VERSION, `major ${v.major}`);
      if (v.minor > VERSION_MINOR) throw bad(Command.VERSION, `minor ${v.minor} above ours`);
      this.serverVersion = { major: v.major, minor: v.minor };
      this.serverCaps = parseCapabilities(v.json, v.nul);
      this.conn.errorText = this.serverCaps.errorText === true;
      const twin = this.serverCaps.twinSocket;
      if (twin?.supported && ours.twinSocket) {
        const fd = twin.fdIndex !== undefined ? r.fds[twin.fdIndex] : undefined;
        if (fd === undefined) throw bad(Command.VERSION, 'twin socket promised but no descriptor');
        // Whatever the server sent must be a socket we can poll without
        // blocking; until the endpoint owns it, `finally` closes it.
        if (native?.isUnixStream(fd) !== 1 || native.setNonBlocking(fd) < 0) {
          throw bad(Command.VERSION, 'twin socket descriptor is not a UNIX stream socket');
        }
        const twinEp = new NativeEndpoint(fd, this.limits());
        twinEp.setSendQueueLimit(this.opts.maxSendQueueBytes ?? 16 * 1024 * 1024);
        r.fds.splice(twin.fdIndex!, 1);
        this.conn.attachTwin(twinEp, false);
      }
    } finally {
      for (const fd of r.fds) closeFd(fd);
    }
  }

  /** Whether the server side takes descriptors (DMA with fds, eventfds). */
  get fdsOk(): boolean {
    return this.conn.main.canPassFds && this.serverCaps.maxMsgFds > 0;
  }

  private async call(cmd: number, payload: Buffer | null, fds: readonly number[] | null = null, extra: Buffer | null = null): Promise<Reply> {
    return this.conn.request(cmd, payload, { fds, extra });
  }

  private noFds(r: Reply): Reply {
    if (r.fds.length) {
      this.violations++;
      for (const fd of r.fds) closeFd(fd);
      r.fds = [];
    }
    return r;
  }

  // ------------------------------------------------------------ discovery

  /** DEVICE_GET_INFO: flags, number of regions and of interrupt indexes. */
  async deviceInfo(): Promise<DeviceInfo> {
    const r = this.noFds(await this.call(Command.DEVICE_GET_INFO, encodeRequest('DEVICE_GET_INFO', { argsz: DeviceInfoStruct.size, flags: 0, numRegions: 0, numIrqs: 0 })));
    if (r.payload.length < DeviceInfoStruct.size) throw bad(Command.DEVICE_GET_INFO, 'short');
    const v = decodeReply('DEVICE_GET_INFO', r.payload);
    if (v.numRegions > 1024 || v.numIrqs > 64) throw bad(Command.DEVICE_GET_INFO, 'implausible counts');
    return { flags: v.flags, numRegions: v.numRegions, numIrqs: v.numIrqs };
  }

  /** Region info, retrying with the argsz the server asks for (capabilities). */
  async regionInfo(index: number): Promise<RegionInfo> {
    let argsz = RegionInfoStruct.size;
    for (let attempt = 0; attempt < 3; attempt++) {
      const req = Buffer.alloc(argsz);
      RegionInfoStruct.write(req, { argsz, flags: 0, index, capOffset: 0, size: 0n, offset: 0n });
      const r = await this.call(Command.DEVICE_GET_REGION_INFO, req);
      let v;
      try {
        v = decodeReply('DEVICE_GET_REGION_INFO', r.payload);
      } catch (e) {
        for (const fd of r.fds) closeFd(fd);
        throw bad(Command.DEVICE_GET_REGION_INFO, (e as Error).message);
      }
      if (v.index !== index) {
        for (const fd of r.fds) closeFd(fd);
        throw bad(Command.DEVICE_GET_REGION_INFO, 'wrong index');
      }
      if (v.argsz > argsz && v.argsz <= 65536 && !v.caps) {
        for (const fd of r.fds) closeFd(fd);
        argsz = v.argsz;
        continue;
      }
      const sparseCap = v.caps?.find((c) => c.id === RegionCapId.SPARSE_MMAP && 'areas' in c) as
        | { areas: { offset: bigint; size: bigint }[] }
        | undefined;
      const typeCap = v.caps?.find((c) => c.id === RegionCapId.TYPE && 'subtype' in c) as { type: number; subtype: number } | undefined;
      const fd = r.fds.shift() ?? -1;
      for (const x of r.fds) closeFd(x);
      if (fd >= 0) this.regionFds.push(fd);
      return {
        index,
        flags: v.flags,
        size: Number(v.size),
        offset: Number(v.offset),
        caps: v.caps ?? [],
        sparse: sparseCap ? sparseCap.areas.map((a) => ({ offset: Number(a.offset), size: Number(a.size) })) : null,
        type: typeCap ? { type: typeCap.type, subtype: typeCap.subtype } : null,
        fd,
      };
    }
    throw bad(Command.DEVICE_GET_REGION_INFO, 'argsz keeps growing');
  }

  /**
   * mmap()s the sparse areas of a mappable region; returns one view per area
   * (offset within the region and the bytes).  Every area must lie within
   * the region and, now, within the descriptor's file (EINVAL otherwise):
   * touching a page past the end of a file raises SIGBUS.  A server that
   * truncates its file later can still fault us (our server seals its
   * region memfds; see RELIABILITY.md).
   */
  mapRegion(info: RegionInfo): {
      /** Offset of the area in the region. */
      offset: number;
      /** The mapped bytes. */
      bytes: Buffer;
      /** Unmaps the area. */
      unmap(): void;
    }[] {
    const n = requireNative('mapping a region');
    if (info.fd < 0) throw new VfuError(Errno.EINVAL, `region ${info.index} is not mappable`);
    const areas = info.sparse ?? [{ offset: 0, size: info.size }];
    let fileSize = -1;
    try {
      const st = fstatSync(info.fd);
      if (st.isFile()) fileSize = st.size;
    } catch {
      // not a descriptor we can map
    }
    for (const a of areas) {
      const start = info.offset + a.offset;
      const ok =
        Number.isSafeInteger(start + a.size) &&
        a.offset >= 0 &&
        a.size > 0 &&
        a.offset + a.size <= info.size &&
        start + a.size <= fileSize &&
        a.size <= bufferConstants.MAX_LENGTH;
      if (!ok) {
        throw new VfuError(Errno.EINVAL, `region ${info.index}: area [0x${a.offset.toString(16)}, +0x${a.size.toString(16)}) is not backed by its file (${fileSize} bytes)`);
      }
    }
    const out: { offset: number; bytes: Buffer; unmap(): void }[] = [];
    try {
      for (const a of areas) {
        const ab = n.mmap(info.fd, info.offset + a.offset, a.size, 3);
        out.push({ offset: a.offset, bytes: Buffer.from(ab), unmap: () => void n.munmap(ab) });
      }
    } catch (e) {
      for (const o of out) o.unmap();
      throw e;
    }
    return out;
  }

  /** DEVICE_GET_IRQ_INFO for one interrupt index. */
  async irqInfo(index: number): Promise<IrqInfo> {
    const r = this.noFds(await this.call(Command.DEVICE_GET_IRQ_INFO, encodeRequest('DEVICE_GET_IRQ_INFO', { argsz: IrqInfoStruct.size, flags: 0, index, count: 0 })));
    if (r.payload.length < IrqInfoStruct.size) throw bad(Command.DEVICE_GET_IRQ_INFO, 'short');
    const v = decodeReply('DEVICE_GET_IRQ_INFO', r.payload);
    if (v.index !== index) throw bad(Command.DEVICE_GET_IRQ_INFO, 'wrong index');
    return { index, flags: v.flags, count: v.count };
  }

  /** DEVICE_GET_REGION_IO_FDS: the region's ioeventfd sub-regions and their descriptors (yours to close). @internal */
  async regionIoFds(index: number): Promise<{
      /** The sub-regions. */
      subRegions: SubRegion[];
      /** Their descriptors. */
      fds: number[];
    }> {
    let argsz = IoFdsStruct.size;
    for (let attempt = 0; attempt < 3; attempt++) {
      const r = await this.call(Command.DEVICE_GET_REGION_IO_FDS, IoFdsStruct.encode({ argsz, flags: 0, index, count: 0 }));
      let v;
      try {
        v = decodeReply('DEVICE_GET_REGION_IO_FDS', r.payload);
      } catch (e) {
        for (const fd of r.fds) closeFd(fd);
        throw bad(Command.DEVICE_GET_REGION_IO_FDS, (e as Error).message);
      }
      if (v.count > 0 && !v.subRegions && v.argsz > argsz && v.argsz < 1 << 20) {
        for (const fd of r.fds) closeFd(fd);
        argsz = v.argsz;
        continue;
      }
      const subs = v.subRegions ?? [];
      if (subs.some((s) => s.fdIndex >= r.fds.length)) {
        for (const fd of r.fds) closeFd(fd);
        throw bad(Command.DEVICE_GET_REGION_IO_FDS, 'fd index out of range');
      }
      return { subRegions: subs, fds: r.fds };
    }
    throw bad(Command.DEVICE_GET_REGION_IO_FDS, 'argsz keeps growing');
  }

  // -------------------------------------------------------------- regions

  /**
   * REGION_READ; reads larger than the server's limit are split.  The hot
   * path of a VMM's MMIO, so: not an async function (its wrapper promise
   * costs extra ticks per read), and the request written into a reused
   * buffer (the endpoint copies whatever it cannot send at once).
   */
  regionRead(index: number, offset: number, count: number): Promise<Buffer> {
    if (count > this.serverCaps.maxDataXferSize) return this.regionReadSplit(index, offset, count);
    const req = this.accessReq;
    try {
      if (!Number.isSafeInteger(offset) || offset < 0) throw new RangeError(`bad region offset ${offset}`);
      req.writeUInt32LE(offset >>> 0, RegionAccessStruct.off.offset);
      req.writeUInt32LE(Math.floor(offset / 2 ** 32), RegionAccessStruct.off.offset + 4);
      req.writeUInt32LE(index, RegionAccessStruct.off.region);
      req.writeUInt32LE(count, RegionAccessStruct.off.count);
    } catch (e) {
      return Promise.reject(e as Error);
    }
    return this.conn.request(Command.REGION_READ, req, NO_OPTIONS, (f: Frame) => {
      this.dropFds(f);
      const p = f.payload;
      if (p.length !== RegionAccessStruct.size + count || p.readUInt32LE(RegionAccessStruct.off.count) !== count || p.readUInt32LE(RegionAccessStruct.off.region) !== index) {
        throw bad(Command.REGION_READ, `expected ${count} bytes of region ${index}`);
      }
      return Buffer.from(p.subarray(RegionAccessStruct.size));
    });
  }

  private async regionReadSplit(index: number, offset: number, count: number): Promise<Buffer> {
    const limit = this.serverCaps.maxDataXferSize;
    const out = Buffer.allocUnsafe(count);
    for (let done = 0; done < count; ) {
      const n = Math.min(limit, count - done);
      (await this.regionRead(index, offset + done, n)).copy(out, done);
      done += n;
    }
    return out;
  }

  /**
   * REGION_WRITE.  With `posted`, No_reply is set and the promise resolves
   * once queued (what QEMU does for writes that need no completion).
   */
  async regionWrite(index: number, offset: number, data: Buffer, opts: { posted?: boolean } = {}): Promise<void> {
    const limit = this.serverCaps.maxDataXferSize;
    let done = 0;
    do {
      const n = Math.min(limit, data.length - done);
      const req = RegionAccessStruct.encode({ offset: BigInt(offset + done), region: index, count: n });
      const chunk = data.subarray(done, done + n);
      if (opts.posted) {
        await this.conn.request(Command.REGION_WRITE, req, { extra: chunk, noReply: true });
      } else {
        await this.conn.request(Command.REGION_WRITE, req, { extra: chunk }, (f: Frame) => {
          this.dropFds(f);
          if (f.payload.length < RegionAccessStruct.size || f.payload.readUInt32LE(RegionAccessStruct.off.count) !== n) throw bad(Command.REGION_WRITE, 'count mismatch');
        });
      }
      done += n;
    } while (done < data.length);
  }

  /** REGION_WRITE_MULTI when negotiated (each write ≤ 8 bytes), else one by one. */
  async regionWriteMulti(writes: { index: number; offset: number; data: Buffer }[]): Promise<void> {
    if (!this.serverCaps.writeMultiple || writes.some((w) => w.data.length > 8)) {
      for (const w of writes) await this.regionWrite(w.index, w.offset, w.data);
      return;
    }
    const b = Buffer.alloc(WriteMultiHeadStruct.size + writes.length * WriteMultiEntryStruct.size);
    WriteMultiHeadStruct.write(b, { wrCnt: BigInt(writes.length) });
    writes.forEach((w, i) => {
      const at = WriteMultiHeadStruct.size + i * WriteMultiEntryStruct.size;
      WriteMultiEntryStruct.write(b, { offset: BigInt(w.offset), region: w.index, count: w.data.length, data: 0n }, at);
      w.data.copy(b, at + WriteMultiEntryStruct.off.data);
    });
    const r = this.noFds(await this.call(Command.REGION_WRITE_MULTI, b));
    if (r.payload.length < WriteMultiHeadStruct.size || WriteMultiHeadStruct.read(r.payload).wrCnt !== BigInt(writes.length)) {
      throw bad(Command.REGION_WRITE_MULTI, 'count mismatch');
    }
  }

  private dropFds(f: Frame): void {
    if (f.fds.length) {
      this.violations++;
      for (const fd of f.fds) closeFd(fd);
    }
  }

  // ------------------------------------------------------------------ DMA

  /**
   * Maps guest memory [iova, iova+size) for the device.  Shared ranges go
   * with their memfd unless `withFd` is false; private ones are served by
   * message.
   */
  async dmaMap(req: DmaMapRequest): Promise<void> {
    const r = this.memory.within(req.iova, req.size);
    if (!r) throw new VfuError(Errno.EFAULT, 'DMA map outside guest memory');
    const prot = req.prot ?? DmaMapFlag.READ | DmaMapFlag.WRITE;
    const withFd = (req.withFd ?? true) && r.fd >= 0 && this.fdsOk;
    const body = DmaMapStruct.encode({
      argsz: DmaMapStruct.size,
      flags: prot,
      offset: BigInt(withFd ? req.iova - r.iova : 0),
      addr: BigInt(req.iova),
      size: BigInt(req.size),
    });
    this.noFds(await this.call(Command.DMA_MAP, body, withFd ? [r.fd] : null));
    this.mapped.set(req.iova, { iova: req.iova, size: req.size, prot, withFd });
  }

  /** DMA_UNMAP of a range mapped with dmaMap(). */
  async dmaUnmap(iova: number, size: number): Promise<void> {
    const body = DmaUnmapStruct.encode({ argsz: DmaUnmapStruct.size, flags: 0, addr: BigInt(iova), size: BigInt(size) });
    this.noFds(await this.call(Command.DMA_UNMAP, body));
    this.mapped.delete(iova);
  }

  /** DMA_UNMAP of everything (the UNMAP_ALL flag). */
  async dmaUnmapAll(): Promise<void> {
    const body = DmaUnmapStruct.encode({ argsz: DmaUnmapStruct.size, flags: DmaUnmapFlag.ALL, addr: 0n, size: 0n });
    this.noFds(await this.call(Command.DMA_UNMAP, body));
    this.mapped.clear();
  }

  /** The DMA mappings in place (re-made by reconnect()). */
  get dmaMappings(): readonly DmaMappingRecord[] {
    return [...this.mapped.values()];
  }

  /** Serves DMA_READ/DMA_WRITE from the server against mapped guest memory. */
  private onServerRequest(f: Frame, via: Endpoint): void {
    for (const fd of f.fds) closeFd(fd);
    if (f.rejected !== undefined) {
      this.violations++;
      this.conn.replyError(via, f, Errno.EINVAL);
      return;
    }
    if (f.cmd !== Command.DMA_READ && f.cmd !== Command.DMA_WRITE) {
      this.violations++;
      this.conn.replyError(via, f, Errno.EINVAL);
      return;
    }
    const p = f.payload;
    if (p.length < DmaAccessStruct.size) {
      this.violations++;
      this.conn.replyError(via, f, Errno.EINVAL);
      return;
    }
    const { addr, count } = DmaAccessStruct.read(p);
    const a = Number(addr);
    const n = Number(count);
    const write = f.cmd === Command.DMA_WRITE;
    const inMap = [...this.mapped.values()].some((m) => a >= m.iova && a + n <= m.iova + m.size && (m.prot & (write ? 2 : 1)) !== 0);
    const range = addr <= BigInt(Number.MAX_SAFE_INTEGER) && count <= BigInt(this.maxData) ? this.memory.within(a, n) : undefined;
    if (!inMap || range === undefined) {
      this.violations++;
      this.conn.replyError(via, f, Errno.EFAULT);
      return;
    }
    const view = range.bytes.subarray(a - range.iova, a - range.iova + n);
    if (write) {
      if (p.length !== DmaAccessStruct.size + n) {
        this.violations++;
        this.conn.replyError(via, f, Errno.EINVAL);
        return;
      }
      p.copy(view, 0, DmaAccessStruct.size);
      this.memory.markMessageDirty(a, n);
      this.conn.reply(via, f, p.subarray(0, DmaAccessStruct.size));
    } else {
      // guest memory can change or be unmapped while queued: copied
      this.conn.reply(via, f, p.subarray(0, DmaAccessStruct.size), view, null, false);
    }
  }

  // ----------------------------------------------------------------- IRQs

  /**
   * Gives the device eventfds for vectors [start, start+count) of an index
   * and emits 'interrupt' (index, vector, count) when they fire.  Batches
   * over several messages when count exceeds the server's max_msg_fds.
   */
  async enableInterrupts(index: number, count: number, start = 0): Promise<void> {
    const n = requireNative('eventfd interrupts (the spec has no message-based interrupt since VM_INTERRUPT was removed)');
    await this.disableInterrupts(index);
    const per = Math.max(1, this.serverCaps.maxMsgFds);
    for (let s = start; s < start + count; s += per) {
      const k = Math.min(per, start + count - s);
      const fds: number[] = [];
      for (let i = 0; i < k; i++) {
        const fd = n.eventfd(0, 1);
        fds.push(fd);
        const vector = s + i;
        const poll = n.pollStart(fd, POLL_READABLE, () => {
          const v = n.eventfdRead(fd);
          if (v > 0) this.emit('interrupt', index, vector, v);
        });
        n.pollRef(poll, false);
        this.irqPolls.push({ fd, poll, index, vector });
      }
      const body = IrqSetStruct.encode({ argsz: IrqSetStruct.size, flags: IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_TRIGGER, index, start: s, count: k });
      this.noFds(await this.call(Command.DEVICE_SET_IRQS, body, fds));
    }
    this.irqConfig.set(index, count);
  }

  /** Disables every vector of an index (count 0, DATA_NONE|TRIGGER). */
  async disableInterrupts(index: number): Promise<void> {
    const mine = this.irqPolls.filter((p) => p.index === index);
    if (mine.length > 0 || this.irqConfig.has(index)) {
      const body = IrqSetStruct.encode({ argsz: IrqSetStruct.size, flags: IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_TRIGGER, index, start: 0, count: 0 });
      if (!this.conn.closed) this.noFds(await this.call(Command.DEVICE_SET_IRQS, body));
    }
    this.releaseIrqs(index);
    this.irqConfig.delete(index);
  }

  private releaseIrqs(index: number | null): void {
    for (let i = this.irqPolls.length - 1; i >= 0; i--) {
      const p = this.irqPolls[i]!;
      if (index !== null && p.index !== index) continue;
      native?.pollClose(p.poll);
      native?.close(p.fd);
      this.irqPolls.splice(i, 1);
    }
  }

  /** Interrupt types wired with eventfds (index and vector count). */
  get interruptConfig(): {
      /** IrqIndex. */
      index: number;
      /** Vectors. */
      count: number;
    }[] {
    return [...this.irqConfig.entries()].map(([index, count]) => ({ index, count }));
  }

  /** MASK/UNMASK (DATA_NONE) for a vector range. */
  async maskInterrupts(index: number, start: number, count: number, masked: boolean): Promise<void> {
    const flags = IrqSetFlag.DATA_NONE | (masked ? IrqSetFlag.ACTION_MASK : IrqSetFlag.ACTION_UNMASK);
    this.noFds(await this.call(Command.DEVICE_SET_IRQS, IrqSetStruct.encode({ argsz: IrqSetStruct.size, flags, index, start, count })));
  }

  // ---------------------------------------------------------------- reset

  /** DEVICE_RESET: the device's onReset hook runs with reason 'client'. */
  async reset(): Promise<void> {
    this.noFds(await this.call(Command.DEVICE_RESET, null));
  }

  // ------------------------------------------------------------- features

  /**
   * DEVICE_FEATURE: resolves with the reply's data after the echoed header
   * (a copy), or with what `take` makes of it.  One promise, settled by the
   * reply itself: the migration window sends these, and every async layer
   * above the request would add its own turn there.
   */
  private feature(flags: number, data: Buffer | null, replyData: number, what?: string): Promise<Buffer>;
  private feature<T>(flags: number, data: Buffer | null, replyData: number, what: string | undefined, take: (d: Buffer) => T, req?: Buffer): Promise<T>;
  private feature<T>(flags: number, data: Buffer | null, replyData: number, what?: string, take?: (d: Buffer) => T, req?: Buffer): Promise<T | Buffer> {
    if (req === undefined) {
      try {
        req = featureRequest(flags, data, replyData);
      } catch (e) {
        return Promise.reject(e as Error);
      }
    }
    // a refusal says which feature (and which state) the peer refused
    const label = what ?? ((): string => `${flags & FeatureFlag.SET ? 'SET' : flags & FeatureFlag.GET ? 'GET' : 'PROBE'} ${featureName(flags & 0xffff)}`);
    return this.conn.request(Command.DEVICE_FEATURE, req, { what: label }, (f: Frame) => {
      this.dropFds(f);
      const p = f.payload;
      if (p.length < FeatureStruct.size || FeatureStruct.read(p).flags !== flags) throw bad(Command.DEVICE_FEATURE, 'flags mismatch');
      const d = p.subarray(FeatureStruct.size);
      return take ? take(d) : copyOf(d);
    });
  }

  /** PROBE: whether the server supports `ops` (GET/SET bits) for a feature. */
  async probeFeature(feature: number, ops: number = 0): Promise<boolean> {
    try {
      await this.feature(feature | FeatureFlag.PROBE | ops, null, 0);
      return true;
    } catch (e) {
      if ((e as VfuError).errno === Errno.EINVAL || (e as VfuError).errno === Errno.ENOTSUP) return false;
      throw e;
    }
  }

  /** VFIO_MIGRATION_* flags (0 when the device is not migratable). */
  async migrationFlags(): Promise<number> {
    try {
      const d = await this.feature(Feature.MIGRATION | FeatureFlag.GET, null, MigrationFeatureStruct.size);
      if (d.length < MigrationFeatureStruct.size) throw bad(Command.DEVICE_FEATURE, 'short MIGRATION');
      return Number(MigrationFeatureStruct.read(d).flags & 0xffffffffn);
    } catch (e) {
      if ((e as VfuError).errno === Errno.EINVAL) return 0;
      throw e;
    }
  }

  /**
   * Runs `fn` and sends the requests it makes together once it returns:
   * pipelined requests (a state change and the reads behind it) then reach
   * the server in one read, and it answers them in one write, where sent
   * one by one each would cost a wake-up of both processes.
   */
  batch<T>(fn: () => T): T {
    return this.conn.batch(fn);
  }

  /** The device's migration state (MigState), read with DEVICE_FEATURE GET. */
  async migrationState(): Promise<number> {
    const d = await this.feature(Feature.MIG_DEVICE_STATE | FeatureFlag.GET, null, MigStateStruct.size);
    if (d.length < MigStateStruct.size) throw bad(Command.DEVICE_FEATURE, 'short MIG_DEVICE_STATE');
    const s = MigStateStruct.read(d).deviceState;
    if (s > MigState.PRE_COPY_P2P) throw bad(Command.DEVICE_FEATURE, `unknown state ${s}`);
    return s;
  }

  /** Moves the device to a migration state (MigState); the server walks the whole path first. */
  setMigrationState(state: number): Promise<void> {
    const flags = Feature.MIG_DEVICE_STATE | FeatureFlag.SET;
    // the eight requests are made together, once (they go out by copy):
    // the window's STOP_COPY is not encoded in the window
    const make = (st: number): Buffer => featureRequest(flags, MigStateStruct.encode({ deviceState: st, dataFd: -1 }), 0);
    this.migStateRequests ??= Array.from({ length: MIG_STATES }, (_, st) => make(st));
    let req: Buffer;
    if (Number.isInteger(state) && state >= 0 && state < MIG_STATES) {
      req = this.migStateRequests[state]!;
    } else {
      try {
        req = make(state);
      } catch (e) {
        return Promise.reject(e as Error); // a state that does not fit the field
      }
    }
    return this.feature(flags, null, 0, `migration state -> ${migStateNames[state] ?? state}`, ignoreData, req);
  }

  /** Whether the server offered the pre-copy sizing extension. */
  get hasMigSizing(): boolean {
    return typeof this.serverCaps.migSizing === 'object';
  }

  /** Stop-copy size estimate (extension), or null if not offered. */
  async stopCopySize(): Promise<number | null> {
    const s = this.serverCaps.migSizing;
    if (typeof s !== 'object') return null;
    const d = await this.feature(s.dataSize | FeatureFlag.GET, null, MigDataSizeStruct.size);
    if (d.length < MigDataSizeStruct.size) throw bad(Command.DEVICE_FEATURE, 'short MIG_DATA_SIZE');
    return Number(MigDataSizeStruct.read(d).stopCopyLength);
  }

  /** Pre-copy info (extension, PRE_COPY only), or null if not offered. */
  async precopyInfo(): Promise<{
      /** Initial image bytes left. */
      initialBytes: number;
      /** Bytes dirtied since. */
      dirtyBytes: number;
    } | null> {
    const s = this.serverCaps.migSizing;
    if (typeof s !== 'object') return null;
    const d = await this.feature(s.precopyInfo | FeatureFlag.GET, null, PrecopyInfoStruct.size);
    if (d.length < PrecopyInfoStruct.size) throw bad(Command.DEVICE_FEATURE, 'short PRECOPY_INFO');
    const { initialBytes, dirtyBytes } = PrecopyInfoStruct.read(d);
    return { initialBytes: Number(initialBytes), dirtyBytes: Number(dirtyBytes) };
  }

  /** DMA_LOGGING_START over `ranges` (empty: every mapped region). Returns the page size chosen. */
  async startDirtyLogging(pageSize: number, ranges: { iova: number; length: number }[] = []): Promise<number> {
    const data = Buffer.alloc(LoggingControlStruct.size + ranges.length * LoggingRangeStruct.size);
    LoggingControlStruct.write(data, { pageSize: BigInt(pageSize), numRanges: ranges.length, reserved: 0 });
    ranges.forEach((r, i) =>
      LoggingRangeStruct.write(data, { iova: BigInt(r.iova), length: BigInt(r.length) }, LoggingControlStruct.size + i * LoggingRangeStruct.size),
    );
    const d = await this.feature(Feature.DMA_LOGGING_START | FeatureFlag.SET, data, 0);
    // The server may answer with the page size it chose (the control struct's first field).
    const at = LoggingControlStruct.off.pageSize;
    return d.length >= at + 8 ? Number(d.readBigUInt64LE(at)) : pageSize;
  }

  /** DMA_LOGGING_STOP: the device stops logging dirty pages. */
  async stopDirtyLogging(): Promise<void> {
    const data = LoggingControlStruct.encode({ pageSize: 4096n, numRanges: 0, reserved: 0 });
    await this.feature(Feature.DMA_LOGGING_STOP | FeatureFlag.SET, data, 0);
  }

  /** DMA_LOGGING_REPORT: the dirty bitmap (u64 LE words) of a range, cleared on read. */
  dirtyReport(iova: number, length: number, pageSize: number): Promise<Buffer> {
    const words = Math.ceil(Math.ceil(length / pageSize) / 64);
    const size = words * 8;
    const flags = Feature.DMA_LOGGING_REPORT | FeatureFlag.GET;
    const replyData = LoggingReportStruct.size + size;
    // the same ranges every round: each request is encoded once
    let req = this.reportRequests.find((r) => r.iova === iova && r.length === length && r.pageSize === pageSize)?.req;
    if (req === undefined) {
      try {
        req = featureRequest(flags, LoggingReportStruct.encode({ iova: BigInt(iova), length: BigInt(length), pageSize: BigInt(pageSize) }), replyData);
      } catch (e) {
        return Promise.reject(e as Error); // a promise's failure, as before, not a throw
      }
      if (this.reportRequests.length >= 64) this.reportRequests.shift();
      this.reportRequests.push({ iova, length, pageSize, req });
    }
    return this.feature(flags, null, replyData, undefined, (d) => {
      if (d.length !== replyData) throw bad(Command.DEVICE_FEATURE, `bitmap of ${d.length - 24} bytes, expected ${size}`);
      return copyOf(d.subarray(LoggingReportStruct.size));
    }, req);
  }

  // ------------------------------------------------------- migration data

  /**
   * MIG_DATA_READ of up to `size` bytes: a copy of the bytes, made in `into`
   * when given (at least `size` bytes; the result is then a view of it), so
   * a caller streaming chunks can reuse one buffer instead of allocating
   * (and page-faulting) a fresh one per chunk.
   */
  migDataRead(size: number, into?: Buffer): Promise<Buffer> {
    if (into !== undefined && into.length < size) return Promise.reject(new RangeError(`a ${into.length}-byte buffer for a ${size}-byte read`));
    let req: Buffer = this.migReadReq;
    if (Number.isInteger(size) && size >= 0 && size <= 0xffff_ffff - MigDataStruct.size) {
      // the request leaves (or is copied) before this returns: one buffer
      // serves every read, with no encoder in the window's path
      req.writeUInt32LE(MigDataStruct.size + size, MigDataStruct.off.argsz);
      req.writeUInt32LE(size, MigDataStruct.off.size);
    } else {
      req = MigDataStruct.encode({ argsz: MigDataStruct.size + size, size }); // refuses it, as it did
    }
    return this.conn.request(Command.MIG_DATA_READ, req, NO_OPTIONS, (f: Frame) => {
      this.dropFds(f);
      const p = f.payload;
      if (p.length < MigDataStruct.size) throw bad(Command.MIG_DATA_READ, 'short');
      const n = p.readUInt32LE(MigDataStruct.off.size);
      // libvfio-user pads replies to the requested size: read only `size` bytes.
      if (n > size || p.length < MigDataStruct.size + n) throw bad(Command.MIG_DATA_READ, `size ${n} for a ${size}-byte read`);
      const data = p.subarray(MigDataStruct.size, MigDataStruct.size + n);
      if (into === undefined) return copyOf(data);
      data.copy(into);
      return into.subarray(0, n);
    });
  }

  /** Same, handing the bytes to `sink` while they are still in the receive buffer. */
  migDataReadInto(size: number, sink: (data: Buffer) => void): Promise<number> {
    const req = MigDataStruct.encode({ argsz: MigDataStruct.size + size, size });
    return this.conn.request(Command.MIG_DATA_READ, req, {}, (f: Frame) => {
      this.dropFds(f);
      const p = f.payload;
      const n = p.length >= MigDataStruct.size ? p.readUInt32LE(MigDataStruct.off.size) : -1;
      if (n < 0 || n > size || p.length < MigDataStruct.size + n) throw bad(Command.MIG_DATA_READ, 'bad size');
      sink(p.subarray(MigDataStruct.size, MigDataStruct.size + n));
      return n;
    });
  }

  /**
   * MIG_DATA_WRITE.  `data` is sent by reference (no copy into the send
   * queue), so it must stay unchanged until the returned promise settles.
   */
  migDataWrite(data: Buffer): Promise<void> {
    const req = MigDataStruct.encode({ argsz: MigDataStruct.size + data.length, size: data.length });
    // The reply carries nothing we use: no copy of it (copyReply) per chunk.
    return this.conn.request(Command.MIG_DATA_WRITE, req, { extra: data, extraStable: true }, this.emptyReply);
  }

  /** Parses a reply whose payload is of no use: only descriptors, which it must not carry, are dropped. */
  private readonly emptyReply = (f: Frame): void => this.dropFds(f);

  // ------------------------------------------------------------ lifecycle

  /**
   * Reconnects to the same path (server restarted or client recovering) and
   * re-establishes DMA mappings and interrupt eventfds.
   */
  async reconnect(): Promise<void> {
    if (this.path === null) throw new VfuError(Errno.EINVAL, 'no socket path to reconnect to');
    this.conn.close();
    this.releaseIrqs(null);
    await this.attach(await this.open(this.path));
    const maps = [...this.mapped.values()];
    this.mapped.clear();
    for (const m of maps) await this.dmaMap(m);
    const irqs = [...this.irqConfig.entries()];
    for (const [index, count] of irqs) await this.enableInterrupts(index, count);
    this.emit('reconnected');
  }

  /** Closes the connection and releases descriptors, mappings and guest memory (emits 'close'). */
  close(): void {
    if (this._closed) return;
    this._closed = true;
    this.releaseIrqs(null);
    this.conn.close();
    for (const fd of this.regionFds) closeFd(fd);
    this.regionFds = [];
    this.memory.dispose();
    this.emit('close');
  }
}

