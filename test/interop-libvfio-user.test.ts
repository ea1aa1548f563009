// Interoperability with the real C peer, nutanix/libvfio-user: its
// samples/client runs its whole scenario against `vfu serve sample`, including
// the live migration to a second server (our wrapper below) and the CRC check
// of BAR1, and must exit 0.  Set LIBVFIO_USER_BUILD to a built tree (the
// meson build directory) to run it; otherwise it is skipped.
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { tempDir, until } from './helpers/server.js';

const build = process.env.LIBVFIO_USER_BUILD;
const sampleClient = build ? [join(build, 'samples', 'client'), join(build, 'build', 'samples', 'client')].find(existsSync) : undefined;
const skip = !build
  ? 'LIBVFIO_USER_BUILD is not set: skipping interop with libvfio-user samples/client'
  : !sampleClient
    ? `no samples/client under ${build}`
    : false;

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const cli = join(root, 'dist', 'src', 'cli', 'main.js');

function run(cmd: string, args: string[], timeoutMs: number): Promise<{ code: number | null; out: string }> {
  return new Promise((res) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    const t = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('exit', (code) => {
      clearTimeout(t);
      res({ code, out });
    });
  });
}

test('libvfio-user samples/client against vfu serve sample, with its migration', { skip, timeout: 120_000 }, async () => {
  const t = tempDir('vfu-interop-');
  const client = join(t.dir, 'client');
  copyFileSync(sampleClient!, client);
  // samples/client execs "<its dir>/server -v PATH": our stand-in
  writeFileSync(join(t.dir, 'server'), `#!/bin/sh\nexec "${process.execPath}" "${join(root, 'dist', 'test', 'fixtures', 'lvu-dst-server.js')}" "$@"\n`, { mode: 0o755 });
  const sock = join(t.dir, 'vfio-user.sock');
  const src = spawn(process.execPath, [cli, 'serve', 'sample', '-v', '--socket-path', sock], { stdio: ['ignore', 'ignore', 'pipe'] });
  let srcLog = '';
  src.stderr.on('data', (d) => (srcLog += d));
  try {
    await until(() => existsSync(sock), 10_000);
    const r = await run(client, [sock], 90_000);
    assert.equal(r.code, 0, `samples/client failed:\n${r.out}\n--- source server:\n${srcLog}`);
    assert.match(srcLog, /PRE_COPY -> STOP_COPY/);
    assert.match(srcLog, /STOP_COPY -> STOP/);
    assert.equal((r.out.match(/INTx triggered!/g) ?? []).length, 2, 'an interrupt before and after migration');
  } finally {
    src.kill('SIGTERM');
    t.cleanup();
  }
});
