// Server processes for fault-injection tests: `vfu serve sample` children,
// and what the kernel says they hold (/proc/<pid>/fd, /proc/<pid>/maps).
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after } from 'node:test';
import { fileURLToPath } from 'node:url';
import { until } from './wait.js';

export const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const cli = join(root, 'dist', 'src', 'cli', 'main.js');

export interface Proc {
  child: ChildProcess;
  pid: number;
  /** Resolves with [code, signal] when the process exits. */
  exited: Promise<[number | null, NodeJS.Signals | null]>;
  stdout: () => string;
  stderr: () => string;
}

/** Started and not yet exited. */
const running = new Set<ChildProcess>();

// A test that fails before stopping its processes would leave them running:
// their pipes keep the test file from ending (it then times out) and they
// outlive the run.  Whatever is still running when the file's tests are done
// is killed.
after(() => {
  for (const c of running) c.kill('SIGKILL');
});

export function start(args: string[], opts: { cwd?: string } = {}): Proc {
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  running.add(child);
  child.once('exit', () => running.delete(child));
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<[number | null, NodeJS.Signals | null]>((res) => child.once('exit', (code, sig) => res([code, sig])));
  return { child, pid: child.pid!, exited, stdout: () => out, stderr: () => err };
}

/**
 * A `vfu serve sample` on `path`, once it is listening.  The socket file
 * appears at bind(), before the server is set up (listen(), its spare
 * descriptor): what it holds is only its resting state after the
 * "listening on" line.
 */
export async function startServer(path: string): Promise<Proc> {
  const p = start([cli, 'serve', 'sample', '--socket-path', path, '--verbose']);
  await until(() => p.stderr().includes(`listening on ${path}`) || p.child.exitCode !== null, 30_000, `server listening on ${path}`);
  if (!existsSync(path)) throw new Error(`vfu serve on ${path} did not start: ${p.stderr().slice(-300)}`);
  return p;
}


/** What each descriptor of a process is (for messages). */
function fdTargets(pid: number): string[] {
  return readdirSync(`/proc/${pid}/fd`).map((f) => {
    try {
      return `${f}->${readlinkSync(`/proc/${pid}/fd/${f}`)}`;
    } catch {
      return `${f}->?`;
    }
  });
}

/** Descriptor count of a process. */
export function fdsOf(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** The file-backed mappings of a process (memfds included), addresses stripped. */
export function fileMapsOf(pid: number): string[] {
  return readFileSync(`/proc/${pid}/maps`, 'utf8')
    .split('\n')
    .map((l) => l.split(/\s+/).slice(5).join(' '))
    .filter((p) => p !== '' && p !== '[heap]' && !p.startsWith('[anon'))
    .sort();
}

export function memfdMapsOf(pid: number): number {
  return fileMapsOf(pid).filter((p) => p.startsWith('/memfd:')).length;
}

/** What a server holds at rest, to compare with later. */
export interface Holdings {
  fds: number;
  maps: string[];
}

export function holdings(pid: number): Holdings {
  return { fds: fdsOf(pid), maps: fileMapsOf(pid) };
}

/**
 * Waits until a server holds what it held at rest (its client's resources
 * released).  The limit is generous: on a loaded machine the server may
 * take seconds to notice its client is gone.
 */
export async function backTo(pid: number, h: Holdings, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    const now = holdings(pid);
    if (now.fds === h.fds && JSON.stringify(now.maps) === JSON.stringify(h.maps)) return;
    if (Date.now() > end) {
      throw new Error(
        `process ${pid} holds ${now.fds} fds (was ${h.fds}) and ${now.maps.length} file mappings (was ${h.maps.length}): ${now.maps.filter((m) => !h.maps.includes(m)).join(', ')}; fds now: ${fdTargets(pid).join(' ')}`,
      );
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Waits for a line on a process's stdout. */
export async function line(p: Proc, re: RegExp, ms = 20_000): Promise<void> {
  await until(() => re.test(p.stdout()), ms, `${re} from ${p.pid} (stderr: ${p.stderr().slice(-300)})`);
}
