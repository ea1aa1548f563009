// The namespace's backing store: a raw image file, accessed with
// positioned reads and writes on libuv's threadpool so that a disk access
// never blocks the event loop.  Vectored calls take guest memory views
// directly (no copy where the guest memory is mapped).
import { closeSync, fdatasync, fstatSync, ftruncateSync, openSync, read, readv, write, writev, constants as fsc } from 'node:fs';
import { Errno } from '../../protocol/constants.js';
import { VfuError } from '../../protocol/errors.js';

/** Parses a size: bytes, or a number with K, M, G or T (powers of 1024, optional "iB"/"B"). */
export function parseSize(s: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(s);
  if (!m) throw new VfuError(Errno.EINVAL, `bad size '${s}' (examples: 1073741824, 512M, 1G)`);
  const mult = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  const n = Math.round(Number(m[1]) * mult);
  if (!Number.isSafeInteger(n) || n <= 0) throw new VfuError(Errno.EINVAL, `bad size '${s}'`);
  return n;
}

/** Zeros written per call when zeroing a range. */
const ZERO_CHUNK = 1 << 20;
let zeros: Buffer | null = null;

export class ImageFile {
  readonly fd: number;
  readonly size: number;
  /** Whether the file was created by open(). */
  readonly created: boolean;

  private constructor(fd: number, size: number, created: boolean) {
    this.fd = fd;
    this.size = size;
    this.created = created;
  }

  /**
   * Opens `path` read-write; creates it at `size` bytes when absent.  An
   * existing file whose size disagrees with `size` is refused (EINVAL), so a
   * typo never truncates or grows someone's disk.
   */
  static open(path: string, size?: number): ImageFile {
    let fd: number;
    let created = false;
    try {
      fd = openSync(path, fsc.O_RDWR);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      if (size === undefined) throw new VfuError(Errno.ENOENT, `image ${path} does not exist: give --size to create it`);
      fd = openSync(path, fsc.O_RDWR | fsc.O_CREAT | fsc.O_EXCL, 0o600);
      created = true;
      try {
        ftruncateSync(fd, size);
      } catch (e2) {
        closeSync(fd);
        throw e2;
      }
    }
    const st = fstatSync(fd);
    if (!st.isFile()) {
      closeSync(fd);
      throw new VfuError(Errno.EINVAL, `image ${path} is not a regular file`);
    }
    if (size !== undefined && st.size !== size) {
      closeSync(fd);
      throw new VfuError(Errno.EINVAL, `image ${path} exists with ${st.size} bytes, not the ${size} given with --size (refusing to resize it)`);
    }
    return new ImageFile(fd, st.size, created);
  }

  /** Fills `bufs` (in order) from `pos`; resolves with the bytes read. */
  readv(bufs: Buffer[], pos: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const done = (err: Error | null, n: number): void => (err ? reject(err) : resolve(n));
      if (bufs.length === 1) read(this.fd, bufs[0]!, 0, bufs[0]!.length, pos, done);
      else readv(this.fd, bufs, pos, done);
    });
  }

  /** Writes `bufs` (in order) at `pos`; resolves with the bytes written. */
  writev(bufs: Buffer[], pos: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const done = (err: Error | null, n: number): void => (err ? reject(err) : resolve(n));
      if (bufs.length === 1) write(this.fd, bufs[0]!, 0, bufs[0]!.length, pos, done);
      else writev(this.fd, bufs, pos, done);
    });
  }

  /** Reads exactly the bytes of `bufs`, looping over short reads (EIO at end of file). */
  async readFully(bufs: Buffer[], pos: number): Promise<void> {
    let want = bufs.reduce((a, b) => a + b.length, 0);
    let n = await this.readv(bufs, pos);
    while (n < want) {
      if (n === 0) throw new VfuError(Errno.EIO, 'image: short read');
      const rest = trim(bufs, n);
      want -= n;
      pos += n;
      bufs = rest;
      n = await this.readv(bufs, pos);
    }
  }

  /** Writes all of `bufs`, looping over short writes. */
  async writeFully(bufs: Buffer[], pos: number): Promise<void> {
    let want = bufs.reduce((a, b) => a + b.length, 0);
    let n = await this.writev(bufs, pos);
    while (n < want) {
      if (n === 0) throw new VfuError(Errno.EIO, 'image: short write');
      bufs = trim(bufs, n);
      want -= n;
      pos += n;
      n = await this.writev(bufs, pos);
    }
  }

  /**
   * Makes [pos, pos+length) read as zeros.  Node has no fallocate, so this
   * writes zeros (it does not punch holes): deallocated blocks stay
   * allocated in the image file.
   */
  async zero(pos: number, length: number): Promise<void> {
    zeros ??= Buffer.alloc(ZERO_CHUNK);
    for (let done = 0; done < length; ) {
      const n = Math.min(ZERO_CHUNK, length - done);
      await this.writeFully([zeros.subarray(0, n)], pos + done);
      done += n;
    }
  }

  /** fdatasync: what Flush and a shutdown wait for. */
  sync(): Promise<void> {
    return new Promise((resolve, reject) => fdatasync(this.fd, (err) => (err ? reject(err) : resolve())));
  }

  close(): void {
    closeSync(this.fd);
  }
}

/** `bufs` without their first `n` bytes. */
function trim(bufs: Buffer[], n: number): Buffer[] {
  const out: Buffer[] = [];
  for (const b of bufs) {
    if (n >= b.length) {
      n -= b.length;
      continue;
    }
    out.push(n > 0 ? b.subarray(n) : b);
    n = 0;
  }
  return out;
}
