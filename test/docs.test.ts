// The API reference: `npm run docs` (TypeDoc over src/index.ts) must build
// with no warning, and typedoc.json makes an undocumented export
// (notDocumented), an unexported type in the API (notExported) or a broken
// {@link} an error.  So every exported symbol keeps its doc comment.
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { root } from './helpers/procs.js';

test('TypeDoc builds the API reference with every export documented', () => {
  const typedoc = join(root, 'node_modules', 'typedoc', 'bin', 'typedoc');
  // no source links: they need a git remote, which a clone without one
  // (a tarball, a fresh `git init`) lacks, and they are not what is checked
  const r = spawnSync(process.execPath, [typedoc, '--emit', 'none', '--logLevel', 'Warn', '--disableSources'], { cwd: root, encoding: 'utf8' });
  const out = `${r.stdout}${r.stderr}`.replace(/\x1b\[[0-9;]*m/g, '');
  assert.equal(r.status, 0, `npm run docs fails:\n${out}`);
  assert.doesNotMatch(out, /\[warning\]|\[error\]/, out);
});
