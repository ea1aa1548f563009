// A real VMM and a real guest for device tests: QEMU (≥ 10.1, whose
// `vfio-user-pci` is a vfio-user client) boots a small Linux guest under TCG
// with one of our devices behind a PCIe root port, and the test drives the
// guest's shell over a serial port and QEMU over QMP.  The guest is the
// initramfs described in README "Tests and tools" (busybox, test/guest/init,
// test/guest/vfutest.c); nothing here builds QEMU, a kernel or an initramfs:
// their locations come from the environment, and without them the tests skip.
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { cli } from './procs.js';
import { tempDir } from './server.js';

/** Where QEMU and the guest are, from VFU_QEMU, VFU_QEMU_FIRMWARE, VFU_GUEST_KERNEL, VFU_GUEST_INITRD. */
export interface QemuEnv {
  qemu: string;
  /** Folder with bios-256k.bin and linuxboot_dma.bin (`-L`), when QEMU does not know its own. */
  firmware: string | undefined;
  kernel: string;
  initrd: string;
}

function readEnv(): QemuEnv | string {
  const e = process.env;
  const missing = ['VFU_QEMU', 'VFU_GUEST_KERNEL', 'VFU_GUEST_INITRD'].filter((k) => !e[k]);
  if (missing.length > 0) return `${missing.join(', ')} not set: skipping the QEMU guest tests (see README "Tests and tools")`;
  for (const k of ['VFU_QEMU', 'VFU_GUEST_KERNEL', 'VFU_GUEST_INITRD', 'VFU_QEMU_FIRMWARE']) {
    if (e[k] && !existsSync(e[k]!)) return `${k}=${e[k]} does not exist: skipping the QEMU guest tests`;
  }
  return { qemu: e['VFU_QEMU']!, firmware: e['VFU_QEMU_FIRMWARE'] || undefined, kernel: e['VFU_GUEST_KERNEL']!, initrd: e['VFU_GUEST_INITRD']! };
}

const envOrReason = readEnv();
/** The QEMU setup, or undefined when the environment does not give one. */
export const qemuEnv: QemuEnv | undefined = typeof envOrReason === 'string' ? undefined : envOrReason;
/** `skip` option for node:test: false, or why the QEMU tests are skipped. */
export const qemuSkip: string | false = typeof envOrReason === 'string' ? envOrReason : false;

/** QEMU failures that are QEMU's, recognised in its stderr, so a test failure says so. */
const KNOWN_QEMU_BUGS = [
  {
    signature: /memory_region_del_subregion: Assertion `subregion->container == mr' failed/,
    explanation:
      "QEMU 10.1/10.2's vfio-user-pci aborts when a device with MSI-X is unplugged (device_del): vfio_user_msix_teardown() removes the PBA region from a BAR region that already dropped it. Fixed upstream by \"vfio-user: Do not delete the subregion\" (Akihiko Odaki, 2025); use a QEMU with that fix for the unplug test.",
  },
];

/** The ready line test/guest/init prints on the shell port at every boot. */
const READY = /VFU-GUEST-READY (\S+) boot=(\S+)/g;

/** A `vfu serve ...` child process. */
export interface VfuServer {
  child: ChildProcess;
  socket: string;
  stderr(): string;
  stop(): Promise<void>;
}

/** Starts `vfu serve <args> --socket-path <socket>` and waits until it listens. */
export async function startVfu(args: string[], socket: string, ms = 20_000): Promise<VfuServer> {
  const child = spawn(process.execPath, [cli, 'serve', ...args, '--socket-path', socket], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<void>((res) => child.once('exit', () => res()));
  const end = Date.now() + ms;
  while (!existsSync(socket)) {
    if (child.exitCode !== null || Date.now() > end) {
      child.kill('SIGKILL');
      throw new Error(`vfu serve ${args.join(' ')} did not start: ${err}`);
    }
    await sleepTick();
  }
  return {
    child,
    socket,
    stderr: () => err,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(t);
      }
    },
  };
}

function sleepTick(ms = 20): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** One QMP reply or event. */
export type QmpMessage = Record<string, unknown>;

/** How to start a guest. */
export interface GuestOptions {
  /** The vfio-user server's socket: the guest gets it as `dev0` behind root port `rp1`. */
  socket: string;
  /** Guest RAM in MiB (default 256). */
  memMiB?: number;
  /** Virtual CPUs (default 1); Linux's nvme driver makes one I/O queue per CPU. */
  cpus?: number;
  /** Extra kernel command line, e.g. `pci=nomsi`. */
  append?: string;
  /** Trace QEMU's vfio-user client into qemu.log (`-trace vfio_user*`); also on with VFU_QEMU_TRACE=1. */
  trace?: boolean;
}

/**
 * A running QEMU with the test guest.  Its files (console.log: the kernel's
 * console on ttyS0; shell.log: the command port ttyS1; qemu.log: QEMU's
 * own messages and trace) are in `dir`, removed by close() unless the test
 * failed and VFU_QEMU_KEEP=1.
 */
export class QemuGuest {
  readonly dir: string;
  private shellOut = '';
  private shellSeen = 0;
  private seq = 0;
  private qmpBuf = '';
  private qmpId = 0;
  private readonly pending = new Map<number, { resolve: (m: QmpMessage) => void; reject: (e: Error) => void }>();
  /** QMP events received, oldest first. */
  readonly events: QmpMessage[] = [];
  private exitInfo: string | undefined;

  private constructor(
    private readonly proc: ChildProcess,
    dir: string,
    private readonly cleanupDir: () => void,
    private shell: Socket | undefined = undefined,
    private qmpSock: Socket | undefined = undefined,
  ) {
    this.dir = dir;
    proc.once('exit', (code, sig) => {
      this.exitInfo = `QEMU exited (code ${code}, signal ${sig})`;
      for (const p of this.pending.values()) p.reject(new Error(this.exitInfo));
      this.pending.clear();
    });
  }

  /** Boots QEMU with the guest and the device, and waits for the guest's first ready line. */
  static async start(opts: GuestOptions): Promise<QemuGuest> {
    const env = qemuEnv;
    if (!env) throw new Error(String(qemuSkip));
    const t = tempDir('vfu-qemu-');
    const mem = opts.memMiB ?? 256;
    const shellSock = join(t.dir, 'shell.sock');
    const qmpSock = join(t.dir, 'qmp.sock');
    const trace = opts.trace || process.env['VFU_QEMU_TRACE'] === '1';
    const args = [
      ...(env.firmware ? ['-L', env.firmware] : []),
      '-nodefaults', '-no-user-config', '-display', 'none',
      '-machine', 'q35,accel=tcg,memory-backend=mem',
      '-object', `memory-backend-memfd,id=mem,size=${mem}M,share=on`,
      '-m', `${mem}M`, '-smp', String(opts.cpus ?? 1),
      '-kernel', env.kernel, '-initrd', env.initrd,
      '-append', `console=ttyS0 printk.time=1 ${opts.append ?? ''}`.trim(),
      // ttyS0: the kernel's console, to a file; ttyS1: the shell test/guest/init runs
      '-serial', `file:${join(t.dir, 'console.log')}`,
      '-chardev', `socket,id=shell,path=${shellSock},server=on,wait=on`,
      '-serial', 'chardev:shell',
      '-qmp', `unix:${qmpSock},server=on,wait=off`,
      '-D', join(t.dir, 'qemu.log'),
      ...(trace ? ['-trace', 'vfio_user*'] : []),
      '-device', 'pcie-root-port,id=rp1,chassis=1,slot=1',
      '-device', JSON.stringify(QemuGuest.deviceArgs(opts.socket)),
    ];
    const proc = spawn(env.qemu, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let qemuErr = '';
    proc.stderr!.on('data', (d: Buffer) => (qemuErr += d.toString()));
    const g = new QemuGuest(proc, t.dir, t.cleanup);
    g.stderrText = () => qemuErr;
    try {
      // QEMU waits for the shell port's client before it starts the guest
      g.shell = await g.connectRetry(shellSock);
      g.shell.on('data', (d: Buffer) => (g.shellOut += d.toString('latin1').replace(/\r/g, '')));
      g.qmpSock = await g.connectRetry(qmpSock);
      g.qmpSock.on('data', (d: Buffer) => g.onQmp(d));
      await g.qmp('qmp_capabilities');
      await g.ready();
    } catch (e) {
      await g.close(true);
      throw new Error(`${(e as Error).message}\n${g.diagnostics()}`);
    }
    return g;
  }

  /** The `device_add` arguments of our vfio-user-pci device. */
  static deviceArgs(socket: string, id = 'dev0'): QmpMessage {
    return { driver: 'vfio-user-pci', id, bus: 'rp1', socket: { type: 'unix', path: socket } };
  }

  private stderrText: () => string = () => '';

  private async connectRetry(path: string, ms = 30_000): Promise<Socket> {
    const end = Date.now() + ms;
    for (;;) {
      if (this.exitInfo) throw new Error(`${this.exitInfo}: ${this.stderrText()}`);
      try {
        return await new Promise<Socket>((res, rej) => {
          const s = connect(path);
          s.once('connect', () => {
            s.removeAllListeners('error');
            s.on('error', () => {});
            res(s);
          });
          s.once('error', rej);
        });
      } catch (e) {
        if (Date.now() > end) throw new Error(`cannot connect to ${path}: ${(e as Error).message}`);
        await sleepTick(50);
      }
    }
  }

  private onQmp(d: Buffer): void {
    this.qmpBuf += d.toString();
    let nl: number;
    while ((nl = this.qmpBuf.indexOf('\n')) >= 0) {
      const line = this.qmpBuf.slice(0, nl).trim();
      this.qmpBuf = this.qmpBuf.slice(nl + 1);
      if (!line) continue;
      const m = JSON.parse(line) as QmpMessage;
      if ('event' in m) this.events.push(m);
      else if ('id' in m) {
        const p = this.pending.get(m['id'] as number);
        this.pending.delete(m['id'] as number);
        if (!p) continue;
        if ('error' in m) p.reject(new Error(`QMP error: ${JSON.stringify(m['error'])}`));
        else p.resolve(m['return'] as QmpMessage);
      }
    }
  }

  /** Runs a QMP command and resolves with its return value (rejects on a QMP error). */
  qmp(execute: string, args?: QmpMessage): Promise<QmpMessage> {
    if (this.exitInfo) return Promise.reject(new Error(this.exitInfo));
    const id = ++this.qmpId;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.qmpSock!.write(JSON.stringify({ execute, ...(args ? { arguments: args } : {}), id }) + '\n');
    });
  }

  /** Waits for a QMP event named `name` that arrives after the `since`-th event (and matches `pred`). */
  async event(name: string, since: number, ms = 60_000, pred: (m: QmpMessage) => boolean = () => true): Promise<QmpMessage> {
    await this.until(() => this.events.slice(since).some((m) => m['event'] === name && pred(m)), ms, `QMP event ${name}`);
    return this.events.slice(since).find((m) => m['event'] === name && pred(m))!;
  }

  /** Polls `pred` until it holds; fails early if QEMU exits. */
  async until(pred: () => boolean, ms: number, what: string): Promise<void> {
    const end = Date.now() + ms;
    while (!pred()) {
      if (this.exitInfo) throw new Error(`${this.exitInfo} while waiting for ${what}`);
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await sleepTick();
    }
  }

  /** Number of ready lines the guest has printed (one per boot). */
  boots(): number {
    return [...this.shellOut.matchAll(READY)].length;
  }

  /** Waits until the guest has booted `n` times (default: once more than it had when last waited for) and returns its boot id. */
  async ready(n = this.shellSeenBoots + 1, ms = 120_000): Promise<string> {
    await this.until(() => this.boots() >= n, ms, `guest boot #${n} (ready line on the shell port)`);
    this.shellSeenBoots = n;
    const m = [...this.shellOut.matchAll(READY)][n - 1]!;
    this.shellSeen = m.index! + m[0].length;
    return m[2]!;
  }
  private shellSeenBoots = 0;

  /**
   * Runs one line of shell in the guest (in a subshell, by test/guest/init)
   * and resolves with its exit status and output (stdout and stderr).
   */
  async run(cmd: string, ms = 60_000): Promise<{ rc: number; out: string }> {
    if (cmd.includes('\n')) throw new Error('one line of shell at a time');
    const n = ++this.seq;
    const from = this.shellSeen;
    this.shell!.write(`${n} ${cmd}\n`);
    const re = new RegExp(`@@VFU-END ${n} (\\d+)\\n`);
    await this.until(() => re.test(this.shellOut.slice(from)), ms, `guest command #${n}: ${cmd}`);
    const tail = this.shellOut.slice(from);
    const m = re.exec(tail)!;
    this.shellSeen = from + m.index + m[0].length;
    return { rc: Number(m[1]), out: tail.slice(0, m.index) };
  }

  /** Runs one line of shell and returns its output; throws with the output when it fails. */
  async sh(cmd: string, ms = 60_000): Promise<string> {
    const r = await this.run(cmd, ms);
    if (r.rc !== 0) throw new Error(`guest: \`${cmd}\` exited ${r.rc}:\n${r.out}`);
    return r.out;
  }

  /** Runs the shell condition `cond` in the guest until it succeeds (a pause between tries), failing after `ms`. */
  async waitFor(cond: string, ms = 60_000): Promise<void> {
    const end = Date.now() + ms;
    for (;;) {
      const r = await this.run(cond, ms);
      if (r.rc === 0) return;
      if (Date.now() > end) throw new Error(`guest: \`${cond}\` still fails after ${ms} ms:\n${r.out}`);
      await sleepTick(250);
    }
  }

  /** Sends one line of shell to the guest without waiting for it (for `reboot -f`, after which no end marker comes). */
  send(cmd: string): void {
    this.shell!.write(`0 ${cmd}\n`);
  }

  /** The kernel's console so far. */
  console(): string {
    return readText(join(this.dir, 'console.log'));
  }

  /** QEMU's log (and trace) so far. */
  qemuLog(): string {
    return readText(join(this.dir, 'qemu.log'));
  }

  /** The tails of the console, the shell, QEMU's log and stderr: for a failure message. */
  diagnostics(chars = 4000): string {
    const tail = (s: string) => (s.length > chars ? '...' + s.slice(-chars) : s);
    const hints = KNOWN_QEMU_BUGS.filter((b) => b.signature.test(this.stderrText())).map((b) => `--- known QEMU bug: ${b.explanation}`);
    return [
      ...hints,
      `--- guest console (ttyS0):\n${tail(this.console())}`,
      `--- guest shell (ttyS1):\n${tail(this.shellOut)}`,
      `--- qemu.log:\n${tail(this.qemuLog())}`,
      `--- qemu stderr:\n${tail(this.stderrText())}`,
      ...(process.env['VFU_QEMU_KEEP'] === '1' ? [`--- files kept in ${this.dir}`] : []),
    ].join('\n');
  }

  /** Quits QEMU (QMP quit, then SIGKILL if it lingers) and removes its files unless `failed` and VFU_QEMU_KEEP=1. */
  async close(failed = false): Promise<void> {
    if (!this.exitInfo) {
      const exited = new Promise<void>((res) => this.proc.once('exit', () => res()));
      if (this.qmpSock) this.qmp('quit').catch(() => {});
      else this.proc.kill('SIGTERM');
      const t = setTimeout(() => this.proc.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(t);
    }
    this.shell?.destroy();
    this.qmpSock?.destroy();
    if (!(failed && process.env['VFU_QEMU_KEEP'] === '1')) this.cleanupDir();
  }
}

function readText(path: string): string {
  if (!existsSync(path)) return '';
  const fd = openSync(path, 'r');
  try {
    const chunks: Buffer[] = [];
    const b = Buffer.alloc(1 << 16);
    let n: number;
    while ((n = readSync(fd, b)) > 0) chunks.push(Buffer.from(b.subarray(0, n)));
    return Buffer.concat(chunks).toString('latin1').replace(/\r/g, '');
  } finally {
    closeSync(fd);
  }
}

/** The pattern vfutest writes: the 32-bit little-endian word at byte offset 4*i (see test/guest/vfutest.c). */
export function patternWord(byteOffset: number, seed: number): number {
  const i = Math.floor(byteOffset / 4) >>> 0;
  return (Math.imul(i, 0x9e3779b1) ^ Math.imul((seed + 1) >>> 0, 0x85ebca77)) >>> 0;
}

/**
 * Reads `len` bytes at `offset` of a file in 1 MiB pieces and returns the
 * first offset `bad` finds wrong in a piece (or where the file ends), else -1.
 */
function scanFile(file: string, offset: number, len: number, bad: (buf: Buffer, got: number, at: number) => number): number {
  const fd = openSync(file, 'r');
  try {
    const buf = Buffer.alloc(1 << 20);
    for (let done = 0; done < len; ) {
      const n = Math.min(buf.length, len - done);
      const got = readSync(fd, buf, 0, n, offset + done);
      const k = bad(buf, got, offset + done);
      if (k >= 0) return offset + done + k;
      if (got !== n) return offset + done + got;
      done += n;
    }
    return -1;
  } finally {
    closeSync(fd);
  }
}

/** Checks that `len` bytes at `offset` of a file hold vfutest's pattern for `seed`; returns the first bad byte offset or -1. */
export function checkPattern(file: string, offset: number, len: number, seed: number): number {
  return scanFile(file, offset, len, (buf, got, at) => {
    for (let k = 0; k + 4 <= got; k += 4) if (buf.readUInt32LE(k) !== patternWord(at + k, seed)) return k;
    return -1;
  });
}

/** The offset of the first nonzero byte in `len` bytes at `offset` of a file, or -1. */
export function firstNonZero(file: string, offset: number, len: number): number {
  return scanFile(file, offset, len, (buf, got) => {
    for (let k = 0; k < got; k++) if (buf[k] !== 0) return k;
    return -1;
  });
}
