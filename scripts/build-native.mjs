// The install script: makes the native addon available without downloading
// anything.  In order:
//   1. the prebuilt binary shipped in prebuilds/<platform>-<arch>/ (made by
//      `npm run native:prebuild`), when it was built from these very sources and
//      loads here: nothing to compile;
//   2. a source build with node-gyp against this Node's own headers (prefix
//      derived from process.execPath), never from the network;
//   3. otherwise the package runs over node:net (it says so at first use);
//      VFU_REQUIRE_NATIVE=1 makes that fatal instead.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { findNodeGyp, nodePrefix, sourceHash } from './native-source.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const platform = `${process.platform}-${process.arch}`;
const prebuilt = join(root, 'prebuilds', platform, 'vfio-user.node');
const force = process.argv.includes('--from-source');

/** Why the shipped binary cannot be used, or null when it can. */
function prebuiltProblem() {
  if (!existsSync(prebuilt)) return `no prebuilt binary for ${platform}`;
  try {
    const info = JSON.parse(readFileSync(join(dirname(prebuilt), 'BUILD.json'), 'utf8'));
    if (info.source !== sourceHash(root)) return 'the prebuilt binary was built from other sources';
    createRequire(import.meta.url)(prebuilt);
    return null;
  } catch (e) {
    return `the prebuilt binary does not load: ${e.message}`;
  }
}

const problem = force ? 'a source build was asked for' : prebuiltProblem();
if (problem === null) process.exit(0);

const headers = join(nodePrefix, 'include', 'node', 'node_api.h');
const gyp = findNodeGyp();
let reason = null;
if (!existsSync(headers)) reason = `Node headers not found at ${headers}`;
else if (!gyp) reason = 'node-gyp not found';
else {
  console.log(`vfio-user: ${problem}; building the native addon from source`);
  const r = spawnSync(process.execPath, [gyp, 'rebuild', `--nodedir=${nodePrefix}`, '--loglevel=warn'], {
    cwd: root,
    stdio: 'inherit',
    env: { ...process.env, npm_config_nodedir: nodePrefix },
  });
  if (r.status !== 0) reason = `node-gyp exited with ${r.status ?? r.signal}`;
}
if (reason) {
  const msg = `vfio-user: native addon not available (${problem}; source build: ${reason}); falling back to node:net (no fd passing, no mmap, no eventfd).`;
  if (process.env.VFU_REQUIRE_NATIVE === '1') {
    console.error(msg);
    process.exit(1);
  }
  console.warn(msg);
}
