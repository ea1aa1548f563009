// What the native addon is built from, shared by the install script
// (build-native.mjs), `npm run native:prebuild` (prebuild.mjs) and the tests: the
// source hash a prebuilt binary must match to be used, the compiler, and
// where node-gyp and this Node's headers are (nothing is downloaded).
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';

/** The installed Node's prefix (its headers are under include/node). */
export const nodePrefix = resolve(dirname(process.execPath), '..');

/** SHA-256 over the files the addon is compiled from. */
export function sourceHash(root) {
  const h = createHash('sha256');
  for (const f of ['binding.gyp', 'native/vfu_native.c']) {
    h.update(f + '\0');
    h.update(readFileSync(join(root, f)));
  }
  return h.digest('hex');
}

/** The C compiler's version line (what a reproducible build must match), or null. */
export function compilerVersion() {
  const r = spawnSync(process.env.CC || 'cc', ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.split('\n')[0].trim() : null;
}

/** npm's bundled node-gyp (exported to lifecycle scripts), a local one, or the one beside this Node. */
export function findNodeGyp() {
  const fromNpm = process.env.npm_config_node_gyp;
  if (fromNpm && existsSync(fromNpm)) return fromNpm;
  try {
    return createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js');
  } catch {
    // fall through
  }
  const bundled = join(nodePrefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  return existsSync(bundled) ? bundled : null;
}
