// VFIO_USER_VERSION: major, minor, then an optional NUL-terminated UTF-8 JSON
// capabilities object.  The text is kept verbatim (peers differ in spacing);
// its meaning is parsed by protocol/capabilities.ts.
import { defineStruct } from '../struct.js';
import { type Codec, malformed, need } from './codec.js';

// Fatal: text that is not UTF-8 could not be re-encoded to the same bytes.
// ignoreBOM keeps a leading U+FEFF in the text instead of dropping it.
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

export const VersionStruct = defineStruct('vfio_user_version', { major: 'u16', minor: 'u16' });

export interface VersionBody {
  major: number;
  minor: number;
  /** The JSON text without its terminator; undefined when absent. */
  json?: string;
  /** Whether the data ended with NUL (the spec requires it). */
  nul?: boolean;
}

export const version: Codec<VersionBody> = {
  decode(p) {
    need(p, VersionStruct.size, 'VERSION');
    const { major, minor } = VersionStruct.read(p);
    if (p.length === VersionStruct.size) return { major, minor };
    const data = p.subarray(VersionStruct.size);
    const nul = data[data.length - 1] === 0;
    let json: string;
    try {
      json = utf8.decode(data.subarray(0, nul ? data.length - 1 : data.length));
    } catch {
      throw malformed('VERSION: capabilities are not UTF-8');
    }
    return { major, minor, json, nul };
  },
  encode(v) {
    const head = VersionStruct.encode({ major: v.major, minor: v.minor });
    if (v.json === undefined) return head;
    const text = Buffer.from(v.json, 'utf8');
    return Buffer.concat([head, text, v.nul === false ? Buffer.alloc(0) : Buffer.from([0])]);
  },
};
