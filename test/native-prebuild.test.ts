// The prebuilt addon shipped in prebuilds/: built from the sources beside
// it, reproducibly by `npm run native:prebuild`, and the one loaded when no
// source build exists (a fresh clone or install: the install script then
// builds nothing).  `vfu --version` names the transport and why.
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, utimesSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { type TransportStatus, transportStatus } from '../src/native/index.js';
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

test('a source build older than the C sources is not loaded: the prebuilt binary of those sources is, or node:net with the reason', async (t) => {
  if (!existsSync(prebuilt) || info.source !== (await helpers()).sourceHash(root)) return t.skip('prebuilt binary stale (see above)');
  // a package tree whose build/Release predates native/vfu_native.c (a pull
  // that brought new C code, no rebuild): the old binary may lack functions
  // the JavaScript calls, and was loaded anyway before
  const pkg = tempDir('vfu-stale-build-');
  try {
    for (const f of ['package.json', 'binding.gyp', 'native/vfu_native.c', join('prebuilds', platform, 'vfio-user.node'), join('prebuilds', platform, 'BUILD.json')]) {
      mkdirSync(dirname(join(pkg.dir, f)), { recursive: true });
      copyFileSync(join(root, f), join(pkg.dir, f));
    }
    cpSync(join(root, 'dist', 'src'), join(pkg.dir, 'dist', 'src'), { recursive: true });
    symlinkSync(join(root, 'node_modules'), join(pkg.dir, 'node_modules'));
    const built = join(pkg.dir, 'build', 'Release', 'vfu_native.node');
    mkdirSync(dirname(built), { recursive: true });
    copyFileSync(prebuilt, built);
    const old = new Date(Date.now() - 3_600_000);
    utimesSync(built, old, old);
    const status = (): TransportStatus =>
      JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', `import { transportStatus } from ${JSON.stringify(join(pkg.dir, 'dist', 'src', 'native', 'index.js'))}; console.log(JSON.stringify(transportStatus()))`], { encoding: 'utf8' })) as TransportStatus;
    const s1 = status();
    assert.equal(s1.origin, 'prebuilt', JSON.stringify(s1));
    assert.equal(s1.file, join(pkg.dir, 'prebuilds', platform, 'vfio-user.node'));
    // without a prebuilt binary of these sources: node:net, saying why
    rmSync(join(pkg.dir, 'prebuilds'), { recursive: true });
    const s2 = status();
    assert.equal(s2.transport, 'node:net');
    assert.match(s2.reason ?? '', /older than native\/vfu_native\.c: rebuild it with `npm rebuild`/);
    // a build newer than its sources is the one loaded
    const now = new Date();
    utimesSync(built, now, now);
    assert.equal(status().origin, 'source build');
  } finally {
    pkg.cleanup();
  }
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
