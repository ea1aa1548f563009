// TLS for the migration stream: the defaults both ends use (TLS 1.3 only,
// a verified peer certificate when X.509 is used), naming a peer for the
// receiver's allow-list, the credentials the CLI reads from files (X.509
// PEM files or a PSK file), and errors that say what went wrong.
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import type { ConnectionOptions, PeerCertificate, TLSSocket, TlsOptions } from 'node:tls';
import { Errno } from '../protocol/constants.js';
import { VfuError } from '../protocol/errors.js';

/**
 * TLS 1.3 suites, AES-GCM first (AES-NI makes it the fastest here).
 * TLS_AES_128_GCM_SHA256 must stay: a PSK handed over by Node's pskCallback
 * is bound to SHA-256, so it is the suite TLS-PSK negotiates.
 */
const CIPHERS = 'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256';

/** The sender's tls.connect options: TLS 1.3 over the caller's (which win). */
export function secureClientDefaults(o: ConnectionOptions): ConnectionOptions {
  return { minVersion: 'TLSv1.3', ciphers: CIPHERS, ...o };
}

/**
 * The receiver's tls.createServer options: TLS 1.3; with X.509 the peer
 * must present a certificate (requestCert).  Node is told not to reject
 * an unverified peer itself (it would hang up without a word): the
 * receiver checks each peer with peerRefusal() before reading anything and
 * tells a refused one why.  `onPsk` learns the identity of each peer
 * accepted by the caller's pskCallback.
 */
export function secureServerDefaults(o: TlsOptions, onPsk: (sock: TLSSocket, identity: string) => void): TlsOptions {
  const x509 = o.ca !== undefined || o.cert !== undefined || o.pfx !== undefined;
  const psk = o.pskCallback;
  return {
    minVersion: 'TLSv1.3',
    ciphers: CIPHERS,
    honorCipherOrder: true,
    ...(x509 ? { requestCert: true } : {}),
    ...o,
    rejectUnauthorized: false,
    ...(psk
      ? {
          pskCallback: (sock: TLSSocket, identity: string) => {
            const key = psk(sock, identity);
            if (key) onPsk(sock, identity);
            return key;
          },
        }
      : {}),
  };
}

/**
 * Why a peer that completed the handshake is refused, or null: an X.509
 * peer must be verified against the CA (unless the caller's options set
 * rejectUnauthorized: false), and when `allow` names peers, one of its
 * names must be among them.
 */
export function peerRefusal(sock: TLSSocket, pskIdentity: string | undefined, o: TlsOptions, allow?: readonly string[]): string | null {
  const names = peerNames(sock, pskIdentity);
  const shown = names.length ? names.map((n) => `"${n}"`).join(', ') : '(no name)';
  if (pskIdentity === undefined && o.rejectUnauthorized !== false && !sock.authorized) {
    const cert = sock.getPeerCertificate();
    if (!cert || Object.keys(cert).length === 0) return 'no client certificate (the sender needs --tls-cert and --tls-key)';
    return `the certificate of peer ${shown} is not signed by a CA this receiver trusts (${String(sock.authorizationError)})`;
  }
  if (allow && allow.length > 0 && !names.some((n) => allow.includes(n))) return `peer ${shown} is not among the allowed names (--tls-allow)`;
  return null;
}

/** The names a peer goes by: its PSK identity, or its certificate's CN and subjectAltName values. */
export function peerNames(sock: TLSSocket, pskIdentity?: string): string[] {
  if (pskIdentity !== undefined) return [pskIdentity];
  const cert = sock.getPeerCertificate() as PeerCertificate | Record<string, never>;
  const names: string[] = [];
  const cn = (cert as PeerCertificate).subject?.CN as string | string[] | undefined;
  if (cn !== undefined) names.push(...(Array.isArray(cn) ? cn : [cn]));
  const san = (cert as PeerCertificate).subjectaltname;
  if (san) for (const entry of san.split(/,\s*/)) names.push(entry.slice(entry.indexOf(':') + 1));
  return names;
}

/** What a failed handshake's OpenSSL reason most likely means, for the people reading it. */
const HINTS: [RegExp, string][] = [
  [/wrong version number|http request|unexpected eof while reading|packet length too long|record layer failure/i, 'the peer does not speak TLS (plain tcp:// to a tcps:// listener, or the reverse?)'],
  [/certificate required|did not return a certificate/i, 'no client certificate: the receiver requires one (--tls-cert, --tls-key)'],
  [/unknown ca|certificate verify failed|unable to (get local issuer|verify)|self[- ]signed/i, 'the certificate is not signed by the CA the other end trusts (--tls-ca)'],
  [/binder does not verify|decrypt error|illegal parameter|bad record mac/i, 'the pre-shared keys differ (--tls-psk-file)'],
  [/altnames|hostname|IP: .* is not in the cert/i, "the receiver's certificate does not name the address dialled"],
];

/** A TLS failure as a VfuError (EACCES): `context`, OpenSSL's reason, and a hint when one fits. */
export function tlsFailure(e: Error, context: string): VfuError {
  if (e instanceof VfuError) return e;
  const reason = (e as { reason?: string }).reason ?? e.message;
  const hint = HINTS.find(([re]) => re.test(reason) || re.test(e.message))?.[1];
  return new VfuError(Errno.EACCES, `${context}: ${reason}${hint ? ` (${hint})` : ''}`);
}

/** Credentials as the CLI takes them (paths). */
export interface TlsFiles {
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  tlsPskFile?: string;
}

/**
 * Reads a PSK file: one `IDENTITY:HEXKEY` per line (the format of GnuTLS's
 * psktool and QEMU's tls-creds-psk), blank lines and `#` comments ignored.
 */
export function readPskFile(path: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  for (const [i, raw] of readFileSync(path, 'utf8').split('\n').entries()) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([^:]+):([0-9a-fA-F]+)$/.exec(line);
    if (!m || m[2]!.length % 2 !== 0) throw new VfuError(Errno.EINVAL, `${path}:${i + 1}: expected IDENTITY:HEXKEY`);
    const key = Buffer.from(m[2]!, 'hex');
    if (key.length < 16) throw new VfuError(Errno.EINVAL, `${path}:${i + 1}: a key of ${key.length} bytes is too short (at least 16)`);
    keys.set(m[1]!, key);
  }
  if (keys.size === 0) throw new VfuError(Errno.EINVAL, `${path}: no key`);
  return keys;
}

/**
 * Node tls options from the CLI's files, or undefined when none is given.
 * X.509 needs all of cert, key and CA; a PSK file is the alternative.  The
 * sender offers the first identity of its PSK file; the receiver accepts
 * every identity of its own.
 */
export function tlsOptionsFromFiles(f: TlsFiles, side: 'client'): ConnectionOptions | undefined;
export function tlsOptionsFromFiles(f: TlsFiles, side: 'server'): TlsOptions | undefined;
export function tlsOptionsFromFiles(f: TlsFiles, side: 'client' | 'server'): ConnectionOptions | TlsOptions | undefined {
  const x509 = [f.tlsCert, f.tlsKey, f.tlsCa];
  const some = x509.some((x) => x !== undefined);
  if (some && f.tlsPskFile !== undefined) throw new VfuError(Errno.EINVAL, 'give either --tls-cert/--tls-key/--tls-ca or --tls-psk-file, not both');
  if (some) {
    if (x509.some((x) => x === undefined)) throw new VfuError(Errno.EINVAL, '--tls-cert, --tls-key and --tls-ca go together');
    return { cert: readFileSync(f.tlsCert!), key: readFileSync(f.tlsKey!), ca: readFileSync(f.tlsCa!) };
  }
  if (f.tlsPskFile === undefined) return undefined;
  const keys = readPskFile(f.tlsPskFile);
  if (side === 'server') return { pskCallback: (_s: TLSSocket, identity: string) => keys.get(identity) ?? null } satisfies TlsOptions;
  const [identity, psk] = [...keys][0]!;
  return { pskCallback: () => ({ identity, psk }) } satisfies ConnectionOptions;
}

/** True for addresses only this host can reach (127/8, ::1, localhost). */
export function isLoopbackHost(host: string): boolean {
  if (host === 'localhost') return true;
  const v = isIP(host);
  if (v === 4) return host.startsWith('127.');
  if (v === 6) return host === '::1' || /^::ffff:127\./i.test(host);
  return false;
}

/**
 * Makes a TLS socket decrypt into buffers of the caller's choosing, as
 * net.Socket's `onread` option does (Node honours it only for sockets it
 * connects itself, never for a server's): `next()` gives the buffer the
 * next read goes to (whole or in part); `got(n, b)` is told that `n` bytes
 * are at the start of `b`, and returns false to stop reading (resume()
 * starts it again).  No Buffer is allocated per read, and the bytes need
 * not be copied again.  Bytes the socket had already read are handed to
 * `take` first.  This uses net.Socket's private fields behind `onread`
 * (kBuffer, kBufferCb, kBufferGen) and the handle's useUserBuffer(): when
 * this Node lacks them, nothing changes and it returns false (the caller
 * reads 'data' events).
 */
export function readIntoBuffers(sock: TLSSocket, take: (b: Buffer) => void, next: () => Buffer, got: (n: number, b: Buffer) => boolean): boolean {
  const field = (name: string): symbol | undefined => Object.getOwnPropertySymbols(sock).find((s) => s.description === name);
  const [kBuffer, kBufferCb, kBufferGen] = [field('kBuffer'), field('kBufferCb'), field('kBufferGen')];
  const s = sock as unknown as Record<symbol, unknown> & { _handle?: { useUserBuffer?: (b: Buffer) => void } };
  const handle = s._handle;
  if (!kBuffer || !kBufferCb || !kBufferGen || s[kBuffer] !== null || typeof handle?.useUserBuffer !== 'function') return false;
  for (let b = sock.read() as Buffer | null; b !== null; b = sock.read() as Buffer | null) take(b);
  const first = next();
  s[kBuffer] = first;
  s[kBufferCb] = got;
  s[kBufferGen] = next;
  handle.useUserBuffer(first);
  return true;
}
