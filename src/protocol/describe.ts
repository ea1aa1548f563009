// One compact, human line per vfio-user message (what `vfu trace` prints):
// command name, direction of the exchange (cmd/reply), message id, the
// header flags that matter (No_reply, Error with the errno's name) and the
// decoded body fields that matter for each command.  Bytes the codecs cannot
// decode are shown as (truncated) hex instead of failing.  Pure and
// deterministic: no clock, no descriptors, no locale.
import {
  Command,
  DeviceFlag,
  DirtyPagesFlag,
  DmaMapFlag,
  DmaUnmapFlag,
  FeatureFlag,
  HEADER_SIZE,
  HeaderFlag,
  IoEventFdFlag,
  IoFdType,
  IrqInfoFlag,
  IrqSetFlag,
  MigrationFlag,
  RegionCapId,
  RegionFlag,
  REGION_TYPE_MIGRATION,
  commandName,
  errnoName,
  featureName,
  irqIndexNames,
  migStateNames,
} from './constants.js';
import type { HeaderFields } from './header.js';
import { codecFor } from './messages/index.js';
import type { DeviceInfoBody, IrqInfoBody, IrqSetBody } from './messages/device.js';
import type { DmaAccessBody, DmaMapBody, DmaUnmapBody } from './messages/dma.js';
import type { DeviceFeatureBody, FeatureData } from './messages/feature.js';
import type { DirtyPagesBody, MigDataBody } from './messages/migration.js';
import type { IoFdsBody, RegionAccessBody, RegionCap, RegionInfoBody, WriteMultiBody } from './messages/region.js';
import type { VersionBody } from './messages/version.js';

/** Options of {@link describeMessage}. */
export interface DescribeOptions {
  /** Most data bytes shown in hex before "…" (default 16). */
  maxData?: number;
  /** Most characters of VERSION JSON shown (default 400). */
  maxJson?: number;
  /** The framer refused this message with this errno (its body was not kept). */
  rejected?: number;
  /** The payload given is a truncated copy of a longer one (recorded traces). */
  payloadTruncated?: boolean;
}

const PCI_REGION_NAMES = ['BAR0', 'BAR1', 'BAR2', 'BAR3', 'BAR4', 'BAR5', 'ROM', 'CONFIG', 'VGA', 'MIGR'];

function num(n: number | bigint): string {
  return typeof n === 'bigint' ? `0x${n.toString(16)}` : `0x${n.toString(16)}`;
}

/** Flag names joined with '|', unknown bits as hex, '0' when none. */
function flagNames(value: number | bigint, names: Readonly<Record<string, number>>): string {
  let v = BigInt(value);
  const out: string[] = [];
  for (const [k, bit] of Object.entries(names)) {
    const b = BigInt(bit);
    if (b !== 0n && (v & b) === b) {
      out.push(k);
      v &= ~b;
    }
  }
  if (v !== 0n) out.push(`0x${v.toString(16)}`);
  return out.length ? out.join('|') : '0';
}

export function regionName(index: number): string {
  return PCI_REGION_NAMES[index] ?? (index < 4096 ? String(index) : num(index));
}

function irqName(index: number): string {
  return irqIndexNames[index] ?? (index < 4096 ? String(index) : num(index));
}

function hexBytes(b: Buffer, max: number): string {
  return b.length <= max ? b.toString('hex') : `${b.subarray(0, max).toString('hex')}…`;
}

/** `data[N]=hex…`, `data[N]=41*N` for one repeated byte, a LE value for 1/2/4/8 bytes. */
function data(b: Buffer | undefined, o: Required<Pick<DescribeOptions, 'maxData'>>, label = 'data'): string {
  if (!b || b.length === 0) return '';
  if (b.length === 1 || b.length === 2 || b.length === 4 || b.length === 8) {
    let v = 0n;
    for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]!);
    return `${label}=0x${v.toString(16).padStart(b.length * 2, '0')}`;
  }
  const first = b[0]!;
  if (b.length > 8 && b.every((x) => x === first)) return `${label}[${b.length}]=${first.toString(16).padStart(2, '0')}*${b.length}`;
  return `${label}[${b.length}]=${hexBytes(b, o.maxData)}`;
}

function extra(b: Buffer | undefined, o: Required<Pick<DescribeOptions, 'maxData'>>): string {
  if (!b || b.length === 0) return '';
  if (b.every((x) => x === 0)) return `+zeros[${b.length}]`;
  return `+extra[${b.length}]=${hexBytes(b, o.maxData)}`;
}

function popcount(b: Buffer, bits: number): { set: number; first: number[] } {
  let set = 0;
  const first: number[] = [];
  const n = Math.min(bits, b.length * 8);
  for (let i = 0; i < n; i++) {
    if (b[i >> 3]! & (1 << (i & 7))) {
      set++;
      if (first.length < 8) first.push(i);
    }
  }
  return { set, first };
}

/** "dirty k/n pages [i, j, …]" for a bitmap covering `pages` pages. */
function bitmapSummary(b: Buffer, pages: number): string {
  const bits = Number.isSafeInteger(pages) && pages > 0 ? pages : b.length * 8;
  const { set, first } = popcount(b, bits);
  const list = set === 0 ? '' : ` [${first.join(',')}${set > first.length ? ',…' : ''}]`;
  return `bitmap[${b.length}] dirty ${set}/${bits}${list}`;
}

function caps(c: RegionCap[]): string {
  return c
    .map((cap) => {
      if (cap.id === RegionCapId.SPARSE_MMAP && 'areas' in cap) {
        return `sparse-mmap[${cap.areas.map((a) => `${num(a.offset)}+${num(a.size)}`).join(' ')}]`;
      }
      if (cap.id === RegionCapId.TYPE && 'subtype' in cap) {
        const known = cap.type === REGION_TYPE_MIGRATION && cap.subtype === 1 ? '(migration-v1)' : '';
        return `type=${cap.type}/${cap.subtype}${known}`;
      }
      return `cap${cap.id}v${cap.version}[${(cap as { body: Buffer }).body.length}]`;
    })
    .join(' ');
}

function join(parts: (string | false | undefined | null)[]): string {
  return parts.filter((p): p is string => typeof p === 'string' && p.length > 0).join(' ');
}

function featureData(f: FeatureData, o: Required<Pick<DescribeOptions, 'maxData'>>): string {
  switch (f.kind) {
    case 'none':
      return '';
    case 'migration':
      return `flags=${flagNames(f.flags, MigrationFlag)}`;
    case 'mig-state':
      return `state=${migStateNames[f.deviceState] ?? f.deviceState} data_fd=${f.dataFd}`;
    case 'logging-control':
      return join([
        `page_size=${f.pageSize}`,
        f.numRanges === 0 ? 'ranges=all' : `ranges[${f.numRanges}]=${f.ranges.slice(0, 8).map((r) => `${num(r.iova)}+${num(r.length)}`).join(',')}${f.ranges.length > 8 ? ',…' : ''}`,
        f.reserved !== 0 && `reserved=${num(f.reserved)}`,
      ]);
    case 'logging-report': {
      const pages = f.pageSize > 0n ? Number((f.length + f.pageSize - 1n) / f.pageSize) : 0;
      return join([`iova=${num(f.iova)} length=${num(f.length)} page_size=${f.pageSize}`, f.bitmap && bitmapSummary(f.bitmap, pages)]);
    }
    case 'mig-data-size':
      return `stop_copy_length=${f.stopCopyLength}`;
    case 'precopy-info':
      return `initial_bytes=${f.initialBytes} dirty_bytes=${f.dirtyBytes}`;
    case 'raw':
      return data(f.bytes, o, 'raw');
  }
}

function body(cmd: number, reply: boolean, v: unknown, o: Required<Pick<DescribeOptions, 'maxData' | 'maxJson'>>): string {
  switch (cmd) {
    case Command.VERSION: {
      const b = v as VersionBody;
      let json = '';
      if (b.json !== undefined) {
        try {
          json = JSON.stringify(JSON.parse(b.json));
        } catch {
          json = JSON.stringify(b.json);
        }
        if (json.length > o.maxJson) json = `${json.slice(0, o.maxJson)}…`;
      }
      return join([`v${b.major}.${b.minor}`, b.json === undefined ? '(no capabilities)' : json, b.json !== undefined && b.nul === false && '(no NUL)']);
    }
    case Command.DMA_MAP: {
      if (reply) return extra((v as { extra?: Buffer }).extra, o);
      const b = v as DmaMapBody;
      return join([`iova=${num(b.addr)} size=${num(b.size)} offset=${num(b.offset)} flags=${flagNames(b.flags, DmaMapFlag)}`, b.argsz !== 32 && `argsz=${b.argsz}`, extra(b.extra, o)]);
    }
    case Command.DMA_UNMAP: {
      const b = v as DmaUnmapBody;
      const pages = b.bitmap && b.bitmap.pgsize > 0n ? Number((b.size + b.bitmap.pgsize - 1n) / b.bitmap.pgsize) : 0;
      return join([
        `iova=${num(b.addr)} size=${num(b.size)} flags=${flagNames(b.flags, DmaUnmapFlag)}`,
        b.argsz !== 24 && `argsz=${b.argsz}`,
        b.bitmap && `bitmap pgsize=${b.bitmap.pgsize} size=${b.bitmap.size}`,
        b.data && bitmapSummary(b.data, pages),
        extra(b.extra, o),
      ]);
    }
    case Command.DEVICE_GET_INFO: {
      const b = v as DeviceInfoBody;
      if (!reply) return join([`argsz=${b.argsz}`, extra(b.extra, o)]);
      return join([`argsz=${b.argsz} flags=${flagNames(b.flags, DeviceFlag)} regions=${b.numRegions} irqs=${b.numIrqs}`, extra(b.extra, o)]);
    }
    case Command.DEVICE_GET_REGION_INFO: {
      const b = v as RegionInfoBody;
      if (!reply) return join([`region=${regionName(b.index)} argsz=${b.argsz}`, b.extra && !b.extra.every((x) => x === 0) && extra(b.extra, o)]);
      return join([
        `region=${regionName(b.index)} argsz=${b.argsz} flags=${flagNames(b.flags, RegionFlag)} size=${num(b.size)} offset=${num(b.offset)}`,
        b.capOffset !== 0 && `cap_offset=${b.capOffset}`,
        b.caps && caps(b.caps),
        extra(b.extra, o),
      ]);
    }
    case Command.DEVICE_GET_REGION_IO_FDS: {
      const b = v as IoFdsBody;
      const types: Record<number, string> = { [IoFdType.IOEVENTFD]: 'ioeventfd', [IoFdType.IOREGIONFD]: 'ioregionfd', [IoFdType.IOEVENTFD_SHADOW]: 'ioeventfd-shadow' };
      const subs = (b.subRegions ?? []).slice(0, 8).map((s) =>
        join([
          `${num(s.offset)}+${num(s.size)} fd#${s.fdIndex} ${types[s.type] ?? `type${s.type}`}`,
          s.flags !== 0 && `flags=${flagNames(s.flags, IoEventFdFlag)}`,
          (s.flags & IoEventFdFlag.DATAMATCH) !== 0 && `data=${num(s.data)}`,
        ]),
      );
      return join([
        `region=${regionName(b.index)} argsz=${b.argsz} count=${b.count}`,
        b.flags !== 0 && `flags=${num(b.flags)}`,
        subs.length > 0 && `[${subs.join(', ')}${(b.subRegions?.length ?? 0) > 8 ? ', …' : ''}]`,
        extra(b.extra, o),
      ]);
    }
    case Command.DEVICE_GET_IRQ_INFO: {
      const b = v as IrqInfoBody;
      if (!reply) return join([`index=${irqName(b.index)} argsz=${b.argsz}`, extra(b.extra, o)]);
      return join([`index=${irqName(b.index)} count=${b.count} flags=${flagNames(b.flags, IrqInfoFlag)}`, b.argsz !== 16 && `argsz=${b.argsz}`, extra(b.extra, o)]);
    }
    case Command.DEVICE_SET_IRQS: {
      if (reply) return extra((v as { extra?: Buffer }).extra, o);
      const b = v as IrqSetBody;
      const { DATA_TYPE_MASK: _d, ACTION_TYPE_MASK: _a, ...bits } = IrqSetFlag;
      const isBool = (b.flags & IrqSetFlag.DATA_BOOL) !== 0;
      return join([
        `index=${irqName(b.index)} start=${b.start} count=${b.count} flags=${flagNames(b.flags, bits)}`,
        b.argsz !== 20 + (b.data?.length ?? 0) && `argsz=${b.argsz}`,
        b.data && (isBool && b.data.length <= 32 ? `bools=[${[...b.data].join(',')}]` : data(b.data, o)),
      ]);
    }
    case Command.REGION_READ:
    case Command.REGION_WRITE: {
      const b = v as RegionAccessBody;
      return join([`region=${regionName(b.region)} offset=${num(b.offset)} count=${b.count}`, data(b.data, o)]);
    }
    case Command.DMA_READ:
    case Command.DMA_WRITE: {
      const b = v as DmaAccessBody;
      return join([`addr=${num(b.addr)} count=${b.count}`, b.countBytes === 4 && '(32-bit count)', data(b.data, o)]);
    }
    case Command.DEVICE_RESET:
      return extra((v as { extra?: Buffer }).extra, o);
    case Command.DIRTY_PAGES: {
      const b = v as DirtyPagesBody;
      const r = b.range;
      const pages = r && r.pgsize > 0n ? Number((r.size + r.pgsize - 1n) / r.pgsize) : 0;
      return join([
        `flags=${flagNames(b.flags, DirtyPagesFlag)}`,
        r && `iova=${num(r.iova)} size=${num(r.size)} pgsize=${r.pgsize} bitmap_size=${r.bitmapSize}`,
        b.bitmap && bitmapSummary(b.bitmap, pages),
        extra(b.extra, o),
      ]);
    }
    case Command.REGION_WRITE_MULTI: {
      const b = v as WriteMultiBody;
      if (reply) return join([`wr_cnt=${b.wrCnt}`, extra(b.extra, o)]);
      const shown = b.writes.slice(0, 4).map((w) => {
        const bytes = Buffer.alloc(8);
        bytes.writeBigUInt64LE(w.data);
        const n = Math.min(Math.max(w.count, 0), 8);
        return `${regionName(w.region)}+${num(w.offset)}:${w.count}=${data(bytes.subarray(0, n), o, '').replace(/^=/, '') || '-'}`;
      });
      return join([`wr_cnt=${b.wrCnt}`, shown.length > 0 && `[${shown.join(', ')}${b.writes.length > 4 ? ', …' : ''}]`, extra(b.extra, o)]);
    }
    case Command.DEVICE_FEATURE: {
      const b = v as DeviceFeatureBody;
      const index = b.flags & FeatureFlag.MASK;
      const ops = flagNames(b.flags & ~FeatureFlag.MASK, { GET: FeatureFlag.GET, SET: FeatureFlag.SET, PROBE: FeatureFlag.PROBE });
      return join([`${featureName(index)} ${ops}`, `argsz=${b.argsz}`, featureData(b.data, o)]);
    }
    case Command.MIG_DATA_READ:
    case Command.MIG_DATA_WRITE: {
      if (reply && cmd === Command.MIG_DATA_WRITE) return extra((v as { extra?: Buffer }).extra, o);
      const b = v as MigDataBody;
      const d = b.data;
      // libvfio-user pads MIG_DATA_READ replies to the size asked for
      const used = d && d.length > b.size ? d.subarray(0, b.size) : d;
      const pad = d && d.length > b.size ? d.subarray(b.size) : undefined;
      return join([
        `argsz=${b.argsz} size=${b.size}`,
        data(used, o),
        pad && (pad.every((x) => x === 0) ? `+pad[${pad.length}]` : `+extra[${pad.length}]=${hexBytes(pad, o.maxData)}`),
      ]);
    }
    default:
      return '';
  }
}

function kind(flags: number): string {
  const t = flags & HeaderFlag.TYPE_MASK;
  return t === HeaderFlag.TYPE_COMMAND ? 'cmd' : t === HeaderFlag.TYPE_REPLY ? 'reply' : `type${t}`;
}

/**
 * One line for a message: `NAME cmd|reply #id [no_reply] [ERROR ENAME(n)]
 * fields…`.  `payload` is the body after the 16-byte header.
 */
export function describeMessage(header: HeaderFields, payload: Buffer, opts: DescribeOptions = {}): string {
  const o = { maxData: opts.maxData ?? 16, maxJson: opts.maxJson ?? 400 };
  const t = header.flags & HeaderFlag.TYPE_MASK;
  const reply = t === HeaderFlag.TYPE_REPLY;
  const known = HeaderFlag.TYPE_MASK | HeaderFlag.NO_REPLY | HeaderFlag.ERROR;
  const isError = (header.flags & HeaderFlag.ERROR) !== 0;
  const head = join([
    commandName(header.cmd),
    kind(header.flags),
    `#${header.msgId}`,
    (header.flags & HeaderFlag.NO_REPLY) !== 0 && 'no_reply',
    isError && `ERROR ${errnoName(header.errorNo)}(${header.errorNo})`,
    !isError && header.errorNo !== 0 && `error_no=${header.errorNo}`,
    (header.flags & ~known) !== 0 && `flags=${num(header.flags >>> 0)}`,
  ]);
  if (opts.rejected !== undefined) return `${head} REJECTED ${errnoName(opts.rejected)}(${opts.rejected}) msg_size=${header.msgSize}`;
  const sizeNote = !opts.payloadTruncated && header.msgSize !== HEADER_SIZE + payload.length ? `msg_size=${header.msgSize}` : '';
  const truncNote = opts.payloadTruncated ? `(payload truncated to ${payload.length} of ${header.msgSize - HEADER_SIZE} bytes)` : '';
  if (isError || (t !== HeaderFlag.TYPE_COMMAND && t !== HeaderFlag.TYPE_REPLY)) {
    return join([head, sizeNote, payload.length > 0 && `payload[${payload.length}]=${hexBytes(payload, o.maxData)}`, truncNote]);
  }
  const codec = codecFor(header.cmd, reply);
  if (codec === undefined) return join([head, sizeNote, payload.length > 0 && `payload[${payload.length}]=${hexBytes(payload, o.maxData)}`, truncNote]);
  let text: string;
  try {
    text = body(header.cmd, reply, codec.decode(payload), o);
  } catch (e) {
    text = `undecodable (${(e as Error).message}): payload[${payload.length}]=${hexBytes(payload, o.maxData)}`;
  }
  return join([head, sizeNote, text, truncNote]);
}

/** A recorded descriptor description made compact ("anon_inode:[eventfd]" -> "eventfd"). */
function compactFd(d: string): string {
  const anon = /^anon_inode:\[?([^\]]*)\]?$/.exec(d);
  if (anon) return anon[1]!;
  const reg = /^(.*) \[regular, size=(\d+)\]$/.exec(d);
  if (reg) return `${reg[1]} size=${reg[2]}`;
  return d;
}

/** The descriptors that came with a message, for the end of its line ('' when none). */
export function describeFds(list: readonly string[]): string {
  if (list.length === 0) return '';
  return `fds=[${list.map(compactFd).join(', ')}]`;
}
