// The JSON capabilities carried by VFIO_USER_VERSION: parsing with the
// spec's defaults and strict type/range checks (EINVAL on anything wrong,
// unknown keys ignored), formatting, and the negotiation rules.
import {
  DEFAULT_MAX_DATA_XFER_SIZE,
  DEFAULT_MAX_DMA_MAPS,
  DEFAULT_MAX_MSG_FDS,
  DEFAULT_PGSIZES,
  Errno,
  LINUX_MAX_FDS,
} from './constants.js';
import { VfuError } from './errors.js';

/** The `migration` capability object. */
export interface MigrationCaps {
  /** Dirty bitmap page size (a power of two). */
  pgsize: number;
  /** Largest dirty bitmap the sender accepts in one reply, in bytes. */
  maxBitmapSize?: number;
}

/**
 * Our extension: the pre-copy sizing features (see README, "Pre-copy
 * sizing").  A client asks with `"vfu_mig_sizing": true`; a server that offers
 * them answers with the DEVICE_FEATURE indexes to use.
 */
export interface MigSizingCaps {
  /** DEVICE_FEATURE index of the data-size feature. */
  dataSize: number;
  /** DEVICE_FEATURE index of the pre-copy info feature. */
  precopyInfo: number;
}

/** The capabilities a VERSION message carries (JSON), decoded. */
export interface Capabilities {
  /** Most descriptors per message (`max_msg_fds`). */
  maxMsgFds: number;
  /** Largest data transfer per message (`max_data_xfer_size`). */
  maxDataXferSize: number;
  /** Most DMA mappings (`max_dma_maps`). */
  maxDmaMaps: number;
  /** Supported page sizes (`pgsizes`, a bit mask). */
  pgsizes: number;
  /** Migration parameters (`migration`). */
  migration?: MigrationCaps;
  /** Twin-socket mode (`twin_socket`). */
  twinSocket?: {
    /** Offered or accepted. */
    supported: boolean;
    /** Which descriptor of the reply is the twin socket. */
    fdIndex?: number;
  };
  /** REGION_WRITE_MULTI (`write_multiple`). */
  writeMultiple: boolean;
  /** Request side: true to ask; reply side: the feature indexes. */
  migSizing?: true | MigSizingCaps;
  /**
   * Our extension `"vfu_error_text": true`: when both sides say it, error
   * replies carry the reason as UTF-8 text after the header (the errno
   * stays in the header).  Peers that do not ask never see a payload.
   */
  errorText?: boolean;
}

export const defaultCapabilities: Readonly<Capabilities> = Object.freeze({
  maxMsgFds: DEFAULT_MAX_MSG_FDS,
  maxDataXferSize: DEFAULT_MAX_DATA_XFER_SIZE,
  maxDmaMaps: DEFAULT_MAX_DMA_MAPS,
  pgsizes: DEFAULT_PGSIZES,
  writeMultiple: false,
});

function bad(what: string): VfuError {
  return new VfuError(Errno.EINVAL, `VERSION capabilities: ${what}`);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function int(o: Record<string, unknown>, key: string, min: number, max: number): number | undefined {
  if (!(key in o)) return undefined;
  const v = o[key];
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw bad(`${key} must be an integer`);
  if (v < min || v > max) throw bad(`${key}=${v} out of range [${min}, ${max}]`);
  return v;
}

function bool(o: Record<string, unknown>, key: string): boolean | undefined {
  if (!(key in o)) return undefined;
  if (typeof o[key] !== 'boolean') throw bad(`${key} must be a boolean`);
  return o[key] as boolean;
}

function isPow2(n: number): boolean {
  return n > 0 && Number.isSafeInteger(n) && 2 ** Math.round(Math.log2(n)) === n;
}

const U32 = 0xffffffff;

/**
 * Parses the JSON of a VERSION message.  `json` undefined means no data at
 * all (every capability takes its default); present data must end in NUL.
 */
export function parseCapabilities(json: string | undefined, nul: boolean | undefined): Capabilities {
  const caps: Capabilities = { ...defaultCapabilities };
  if (json === undefined) return caps;
  if (nul !== true) throw bad('JSON data is not NUL-terminated');
  let top: unknown;
  try {
    top = JSON.parse(json);
  } catch {
    throw bad('malformed JSON');
  }
  if (!isObject(top)) throw bad('top level is not an object');
  if (!('capabilities' in top)) return caps;
  const c = top['capabilities'];
  if (!isObject(c)) throw bad('capabilities is not an object');

  caps.maxMsgFds = int(c, 'max_msg_fds', 0, LINUX_MAX_FDS) ?? caps.maxMsgFds;
  caps.maxDataXferSize = int(c, 'max_data_xfer_size', 1, U32) ?? caps.maxDataXferSize;
  caps.maxDmaMaps = int(c, 'max_dma_maps', 1, U32) ?? caps.maxDmaMaps;
  caps.pgsizes = int(c, 'pgsizes', 1, Number.MAX_SAFE_INTEGER) ?? caps.pgsizes;
  if ('migration' in c) {
    const m = c['migration'];
    if (!isObject(m)) throw bad('migration is not an object');
    const pgsize = int(m, 'pgsize', 1, 2 ** 40);
    if (pgsize !== undefined && !isPow2(pgsize)) throw bad(`migration.pgsize=${pgsize} is not a power of two`);
    const maxBitmapSize = int(m, 'max_bitmap_size', 1, Number.MAX_SAFE_INTEGER);
    caps.migration = { pgsize: pgsize ?? 4096, ...(maxBitmapSize !== undefined ? { maxBitmapSize } : {}) };
  }
  if ('twin_socket' in c) {
    const t = c['twin_socket'];
    if (!isObject(t)) throw bad('twin_socket is not an object');
    const supported = bool(t, 'supported') ?? false;
    const fdIndex = int(t, 'fd_index', 0, LINUX_MAX_FDS - 1);
    caps.twinSocket = { supported, ...(fdIndex !== undefined ? { fdIndex } : {}) };
  }
  caps.writeMultiple = bool(c, 'write_multiple') ?? false;
  if ('vfu_mig_sizing' in c) {
    const s = c['vfu_mig_sizing'];
    if (s === true) caps.migSizing = true;
    else if (isObject(s)) {
      const dataSize = int(s, 'data_size', 0, 0xffff);
      const precopyInfo = int(s, 'precopy_info', 0, 0xffff);
      if (dataSize === undefined || precopyInfo === undefined) throw bad('vfu_mig_sizing lacks feature indexes');
      caps.migSizing = { dataSize, precopyInfo };
    } else if (s !== false) throw bad('vfu_mig_sizing must be a boolean or an object');
  }
  if (bool(c, 'vfu_error_text') === true) caps.errorText = true;
  return caps;
}

/** Formats capabilities as the JSON text of a VERSION message (no NUL). */
export function formatCapabilities(c: Partial<Capabilities>): string {
  const o: Record<string, unknown> = {};
  if (c.maxMsgFds !== undefined) o['max_msg_fds'] = c.maxMsgFds;
  if (c.maxDataXferSize !== undefined) o['max_data_xfer_size'] = c.maxDataXferSize;
  if (c.maxDmaMaps !== undefined) o['max_dma_maps'] = c.maxDmaMaps;
  if (c.pgsizes !== undefined) o['pgsizes'] = c.pgsizes;
  if (c.migration) {
    o['migration'] = {
      pgsize: c.migration.pgsize,
      ...(c.migration.maxBitmapSize !== undefined ? { max_bitmap_size: c.migration.maxBitmapSize } : {}),
    };
  }
  if (c.twinSocket) {
    o['twin_socket'] = {
      supported: c.twinSocket.supported,
      ...(c.twinSocket.fdIndex !== undefined ? { fd_index: c.twinSocket.fdIndex } : {}),
    };
  }
  if (c.writeMultiple) o['write_multiple'] = true;
  if (c.migSizing === true) o['vfu_mig_sizing'] = true;
  else if (c.migSizing) o['vfu_mig_sizing'] = { data_size: c.migSizing.dataSize, precopy_info: c.migSizing.precopyInfo };
  if (c.errorText) o['vfu_error_text'] = true;
  return JSON.stringify({ capabilities: o });
}
