// Builds the native addon with node-gyp against this Node's own headers.
// No download: the headers come from the installed Node (prefix derived from
// process.execPath), never from the network.  A failed build leaves the
// package usable over the pure-TypeScript transport; set VFU_REQUIRE_NATIVE=1
// to make it fatal instead.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const prefix = resolve(dirname(process.execPath), '..');
const headers = join(prefix, 'include', 'node', 'node_api.h');

function findNodeGyp() {
  // npm exports the path of its bundled node-gyp to lifecycle scripts.
  const fromNpm = process.env.npm_config_node_gyp;
  if (fromNpm && existsSync(fromNpm)) return fromNpm;
  try {
    return createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js');
  } catch {
    // fall through
  }
  const bundled = join(prefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  return existsSync(bundled) ? bundled : null;
}

const gyp = findNodeGyp();
let reason = null;
if (!existsSync(headers)) reason = `Node headers not found at ${headers}`;
else if (!gyp) reason = 'node-gyp not found';
else {
  const r = spawnSync(process.execPath, [gyp, 'rebuild', `--nodedir=${prefix}`, '--loglevel=warn'], {
    cwd: root,
    stdio: 'inherit',
    env: { ...process.env, npm_config_nodedir: prefix },
  });
  if (r.status !== 0) reason = `node-gyp exited with ${r.status ?? r.signal}`;
}
if (reason) {
  const msg = `vfio-user: native addon not built (${reason}); falling back to the pure-TypeScript transport (no fd passing, no mmap, no eventfd).`;
  if (process.env.VFU_REQUIRE_NATIVE === '1') {
    console.error(msg);
    process.exit(1);
  }
  console.warn(msg);
}
