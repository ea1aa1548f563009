// Runs the compiled test suite with Node's built-in runner (which prints the
// pass/fail totals CI reads).  Usage: node scripts/run-tests.mjs [filter...]
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { sourceHash } from './native-source.mjs';

function walk(dir, out = []) {
  for (const e of readdirSync(dir)) {
    const p = join(dir, e);
    if (statSync(p).isDirectory()) walk(p, out);
    else if (e.endsWith('.test.js')) out.push(p);
  }
  return out;
}

// The suite runs against the addon built from this tree's source: a rebase
// (or another branch's merge) can bring a newer native/vfu_native.c.  With
// no source build the prebuilt binary is used only if it matches the source
// (see build-native.mjs), so a stale one means a source build now.
const newest = Math.max(...['native/vfu_native.c', 'binding.gyp'].filter(existsSync).map((f) => statSync(f).mtimeMs));
const addon = 'build/Release/vfu_native.node';
const prebuildInfo = `prebuilds/${process.platform}-${process.arch}/BUILD.json`;
const prebuildCurrent = () => existsSync(prebuildInfo) && JSON.parse(readFileSync(prebuildInfo, 'utf8')).source === sourceHash('.');
if (existsSync(addon) ? statSync(addon).mtimeMs < newest : !prebuildCurrent()) {
  console.log('the addon is older than its source: rebuilding it');
  spawnSync(process.execPath, ['scripts/build-native.mjs', '--from-source'], { stdio: 'inherit' });
}

const filters = process.argv.slice(2);
const files = walk('dist/test')
  .filter((f) => filters.length === 0 || filters.some((x) => f.includes(x)))
  .sort();
if (files.length === 0) {
  console.error('no test files found under dist/test');
  process.exit(1);
}
const args = ['--test', '--test-concurrency=2', '--test-timeout=180000', '--enable-source-maps', ...files];
console.log(`running ${files.length} test files: ${files.map((f) => relative('dist/test', f)).join(' ')}`);
const r = spawnSync(process.execPath, args, { stdio: 'inherit' });
process.exit(r.status ?? 1);
