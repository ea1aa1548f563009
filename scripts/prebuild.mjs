// `npm run native:prebuild`: builds the native addon that ships in the package,
// prebuilds/linux-x64/vfio-user.node, with prebuildify (N-API, stripped), so
// an install needs no compiler.  Reproducible: the same source, compiler
// and Node headers give the same bytes (test/native-prebuild.test.ts checks
// it), and prebuilds/<platform>/BUILD.json records what it was built from.
// Like the install script it never downloads: node-gyp gets this Node's own
// headers (npm_config_nodedir), and the build runs in a scratch copy so a
// loaded build/Release/vfu_native.node is never rewritten under a process.
//
//   node scripts/prebuild.mjs [--out DIR]     (default: the package root)
import { spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { findNodeGyp, nodePrefix, sourceHash, compilerVersion } from './native-source.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const outAt = process.argv.indexOf('--out');
const out = outAt > 0 ? resolve(process.argv[outAt + 1]) : root;
const platform = `${process.platform}-${process.arch}`;

const gyp = findNodeGyp();
if (!gyp) throw new Error('node-gyp not found (it comes with npm)');
const scratch = mkdtempSync(join(tmpdir(), 'vfu-prebuild-'));
try {
  cpSync(join(root, 'native'), join(scratch, 'native'), { recursive: true });
  copyFileSync(join(root, 'binding.gyp'), join(scratch, 'binding.gyp'));
  writeFileSync(join(scratch, 'package.json'), JSON.stringify({ name: 'vfio-user' }));
  const prebuildify = join(root, 'node_modules', 'prebuildify', 'bin.js');
  const r = spawnSync(process.execPath, [prebuildify, '--napi', '--strip', '--quiet'], {
    cwd: scratch,
    stdio: 'inherit',
    env: { ...process.env, npm_config_nodedir: nodePrefix, PREBUILD_NODE_GYP: gyp },
  });
  if (r.status !== 0) throw new Error(`prebuildify exited with ${r.status ?? r.signal}`);
  const dest = join(out, 'prebuilds', platform);
  mkdirSync(dest, { recursive: true });
  copyFileSync(join(scratch, 'prebuilds', platform, 'vfio-user.node'), join(dest, 'vfio-user.node'));
  const info = { source: sourceHash(root), compiler: compilerVersion(), node: process.versions.node, napi: 8 };
  writeFileSync(join(dest, 'BUILD.json'), JSON.stringify(info, null, 2) + '\n');
  console.log(`prebuilt ${join(dest, 'vfio-user.node')} (${JSON.stringify(info)})`);
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
