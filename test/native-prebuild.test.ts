// The prebuilt addon shipped in prebuilds/: built from the sources beside
// it, reproducibly by `npm run native:prebuild`, and the one loaded when no
// source build exists (a fresh clone or install: the install script then
// builds nothing).  `vfu --version` names the transport and why.
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { transportStatus } from '../src/native/index.js';
import { cli, root } from './helpers/procs.js';
import { tempDir } from './helpers/server.js';

const platform = `${process.platform}-${process.arch}`;
const prebuilt = join(root, 'prebuilds', platform, 'vfio-user.node');
const info = JSON.parse(readFileSync(join(root, 'prebuilds', platform, 'BUILD.json'), 'utf8')) as {
  source: string;
  compiler: string | null;
};

async function helpers(): Promise<{ sourceHash(root: string): string; compilerVersion(): string | null }> {
  return (await import(join(root, 'scripts', 'native-source.mjs'))) as never;
}

test('the prebuilt binary matches the sources, or the test says how to refresh it', async (t) => {
  const current = (await helpers()).sourceHash(root);
  if (info.source !== current) {
    // Not a failure: a stale binary is never loaded (the loader and the
    // install script check the hash), a source build is used instead.
    t.diagnostic(`prebuilds/${platform} was built from other sources: run \`npm run native:prebuild\` and commit prebuilds/`);
    t.skip('prebuilt binary stale');
  }
});

test('the addon in use: the prebuilt one unless a source build exists', () => {
  const s = transportStatus();
  if (process.env.VFU_REQUIRE_NATIVE === '1') assert.equal(s.transport, 'native', s.reason ?? '');
  if (s.transport !== 'native') return;
  if (existsSync(join(root, 'build', 'Release', 'vfu_native.node'))) assert.equal(s.origin, 'source build');
  else {
    assert.equal(s.origin, 'prebuilt');
    assert.equal(s.file, prebuilt);
  }
  const v = execFileSync(process.execPath, [cli, '--version'], { encoding: 'utf8' });
  assert.match(v, /^vfio-user \d+\.\d+\.\d+ /);
  assert.match(v, new RegExp(`transport: native addon \\(${s.origin}: `));
  const net = execFileSync(process.execPath, [cli, '--version'], { encoding: 'utf8', env: { ...process.env, VFU_NO_NATIVE: '1' } });
  assert.match(net, /transport: node:net, no descriptor passing \(native addon not loaded: disabled by VFU_NO_NATIVE=1\)/);
});

test('npm run native:prebuild reproduces the committed binary byte for byte', async (t) => {
  const h = await helpers();
  if (info.source !== h.sourceHash(root)) return t.skip('prebuilt binary stale (see above)');
  if (info.compiler !== h.compilerVersion()) return t.skip(`built with ${info.compiler}, this machine has ${h.compilerVersion()}`);
  const out = tempDir('vfu-prebuild-');
  try {
    execFileSync(process.execPath, [join(root, 'scripts', 'prebuild.mjs'), '--out', out.dir], { cwd: root, stdio: 'ignore' });
    const again = readFileSync(join(out.dir, 'prebuilds', platform, 'vfio-user.node'));
    assert.ok(again.equals(readFileSync(prebuilt)), 'a rebuild differs from the committed prebuilt binary');
  } finally {
    out.cleanup();
  }
});
