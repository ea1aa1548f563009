// The examples as a newcomer meets them: the README quotes examples/*.ts
// verbatim (checked here), and the examples are compiled with `tsc --strict`
// against the packed tarball installed into an empty project (offline, from
// npm's cache, which `npm ci` filled), then run against each other: a server,
// a client that inspects it and exits, a VMM that migrates it between two
// servers, and the same device module under `vfu serve`.
import { strict as assert } from 'node:assert';
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { root, start, type Proc } from './helpers/procs.js';
import { until } from './helpers/wait.js';
import { tempDir } from './helpers/server.js';

const examples = join(root, 'examples');
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

interface LockEntry {
  name?: string;
  version?: string;
  resolved?: string;
  integrity?: string;
  dev?: boolean;
  dependencies?: Record<string, string>;
  devDependencies?: Record<string, string>;
  [k: string]: unknown;
}

/** README blocks introduced by `<!-- example: PATH -->`, in order. */
function quotedExamples(): { path: string; text: string }[] {
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  const re = /<!-- example: (\S+) -->\n```ts\n([\s\S]*?)```\n/g;
  return [...readme.matchAll(re)].map((m) => ({ path: m[1]!, text: m[2]! }));
}

test('the README quotes the examples verbatim', () => {
  const quoted = quotedExamples();
  assert.ok(quoted.length >= 2, 'the README quotes at least the device and its server');
  for (const q of quoted) {
    assert.equal(q.text, readFileSync(join(root, q.path), 'utf8'), `${q.path}: the README's copy differs from the file`);
  }
});

describe('examples, compiled and run from the packed tarball', () => {
  const t = tempDir('vfu-examples-');
  const proj = join(t.dir, 'proj');
  const procs: Proc[] = [];
  let prebuiltCurrent = false;
  const run = (file: string, ...args: string[]): Proc => {
    const p = start([join(proj, 'dist', file), ...args]);
    procs.push(p);
    return p;
  };
  const finished = async (p: Proc): Promise<string> => {
    const [code, sig] = await p.exited;
    assert.equal(code, 0, `exit ${code ?? sig}: ${p.stderr()}`);
    return p.stdout();
  };
  const listening = async (p: Proc, path: string): Promise<void> => {
    await until(() => existsSync(path) || p.child.exitCode !== null, 30_000, `server on ${path}`);
    assert.ok(existsSync(path), `server exited: ${p.stderr()}`);
  };

  before(async () => {
    const packed = JSON.parse(
      execFileSync(npm, ['pack', '--ignore-scripts', '--json', '--pack-destination', t.dir], { cwd: root, encoding: 'utf8' }),
    )[0] as { filename: string; integrity: string };
    mkdirSync(proj);
    // Offline: the tarball, and its dependencies from npm's cache (which
    // `npm ci` filled) through a lockfile pinned like the project's.  The
    // install script is skipped (it would rebuild the addon, ~10 s); the
    // addon built for this checkout stands in for it.
    const lock = JSON.parse(readFileSync(join(root, 'package-lock.json'), 'utf8')) as { packages: Record<string, LockEntry> };
    const tgz = `file:../${packed.filename}`;
    const deps = { 'vfio-user': tgz, '@types/node': lock.packages['node_modules/@types/node']!.version! };
    const packages: Record<string, LockEntry> = {
      '': { name: 'first-contact', dependencies: deps },
      'node_modules/vfio-user': { ...(lock.packages['']! as LockEntry), version: '0.1.0', resolved: tgz, integrity: packed.integrity },
    };
    delete packages['node_modules/vfio-user']!.devDependencies;
    delete packages['node_modules/vfio-user']!.name;
    const todo = [...Object.keys(packages['node_modules/vfio-user']!.dependencies ?? {}), '@types/node'];
    for (let name; (name = todo.shift()) !== undefined; ) {
      const key = `node_modules/${name}`;
      if (packages[key]) continue;
      const { dev: _dev, ...entry } = lock.packages[key]!;
      // this npm leaves `resolved` out of the lockfile; without it an
      // offline install would need the registry's package list
      entry.resolved ??= `https://registry.npmjs.org/${name}/-/${name.split('/').pop()}-${entry.version}.tgz`;
      packages[key] = entry;
      todo.push(...Object.keys(entry.dependencies ?? {}));
    }
    writeFileSync(join(proj, 'package.json'), JSON.stringify({ name: 'first-contact', private: true, type: 'module', dependencies: deps }));
    writeFileSync(join(proj, 'package-lock.json'), JSON.stringify({ name: 'first-contact', lockfileVersion: 3, requires: true, packages }));
    execFileSync(npm, ['ci', '--offline', '--ignore-scripts', '--no-audit', '--no-fund', '--loglevel=error'], {
      cwd: proj,
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    // The tarball's prebuilt addon is what an install uses; only when it is
    // stale (the C source changed since `npm run native:prebuild`) does this
    // checkout's source build stand in for the install script's.
    const platform = `${process.platform}-${process.arch}`;
    const built = JSON.parse(readFileSync(join(root, 'prebuilds', platform, 'BUILD.json'), 'utf8')) as { source: string };
    const current = ((await import(join(root, 'scripts', 'native-source.mjs'))) as { sourceHash(r: string): string }).sourceHash(root);
    const addon = join(root, 'build', 'Release', 'vfu_native.node');
    prebuiltCurrent = built.source === current;
    if (!prebuiltCurrent && existsSync(addon)) {
      const installed = join(proj, 'node_modules', 'vfio-user');
      mkdirSync(join(installed, 'build', 'Release'), { recursive: true });
      copyFileSync(addon, join(installed, 'build', 'Release', 'vfu_native.node'));
    }
    for (const f of readdirSync(examples)) copyFileSync(join(examples, f), join(proj, f));
  });

  after(() => {
    for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    t.cleanup();
  });

  test('every example compiles with tsc --strict against the installed package', () => {
    const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
    try {
      execFileSync(process.execPath, [tsc, '-p', proj, '--strict'], { cwd: proj, encoding: 'utf8' });
    } catch (e) {
      assert.fail(`tsc: ${(e as { stdout?: string }).stdout ?? e}`);
    }
    for (const f of ['my-device.js', 'serve.js', 'inspect.js', 'vmm-migrate.js', 'nvme.js']) assert.ok(existsSync(join(proj, 'dist', f)), f);
  });

  test('serve + inspect: one DMA transfer on a doorbell write, its interrupt, exit', async () => {
    const sock = join(t.dir, 'dma.sock');
    const server = run('serve.js', sock);
    await listening(server, sock);
    const out = await finished(run('inspect.js', sock));
    assert.match(out, /ID 0x1d0f0001/);
    assert.match(out, /BAR2: 65536 bytes, mappable: true/);
    assert.match(out, /interrupt on vector 0/);
    assert.match(out, /guest RAM: hello from BAR2/);
    server.child.kill('SIGTERM');
    await finished(server);
    assert.match(server.stdout(), /reset \(lost-connection\)/);
    assert.ok(!existsSync(sock), 'the socket is removed on SIGTERM');
  });

  test('vfu serve ./my-device.js serves the module (as installed: node_modules/.bin/vfu)', async () => {
    const sock = join(t.dir, 'module.sock');
    const vfu = join(proj, 'node_modules', 'vfio-user', 'dist', 'src', 'cli', 'main.js');
    const server = start([vfu, 'serve', './dist/my-device.js', '--socket-path', sock, '-v'], { cwd: proj });
    procs.push(server);
    await listening(server, sock);
    const out = await finished(run('inspect.js', sock));
    assert.match(out, /guest RAM: hello from BAR2/);
    server.child.kill('SIGTERM');
    await finished(server);
    assert.match(server.stderr(), /dma-engine: reset \(lost-connection\)/);
    assert.ok(!existsSync(sock));
  });

  test('vfu --version names the transport; without the addon one warning line at first use, none with VFU_NO_NATIVE=1', async () => {
    const installed = join(proj, 'node_modules', 'vfio-user');
    const vfu = join(installed, 'dist', 'src', 'cli', 'main.js');
    const origin = prebuiltCurrent ? 'prebuilt' : 'source build';
    assert.match(execFileSync(process.execPath, [vfu, '--version'], { encoding: 'utf8' }), new RegExp(`transport: native addon \\(${origin}: `));
    // the same package with no addon at all
    const bare = join(t.dir, 'bare');
    mkdirSync(bare);
    cpSync(installed, join(bare, 'vfio-user'), { recursive: true, filter: (f) => !/[/\\](prebuilds|build)$/.test(f) });
    symlinkSync(join(proj, 'node_modules'), join(bare, 'node_modules'));
    const bareVfu = join(bare, 'vfio-user', 'dist', 'src', 'cli', 'main.js');
    assert.match(
      execFileSync(process.execPath, [bareVfu, '--version'], { encoding: 'utf8' }),
      /transport: node:net, no descriptor passing \(native addon not loaded: no source build \(build\/Release\) and no prebuilt binary for /,
    );
    const sock = join(t.dir, 'bare.sock');
    const server = run('serve.js', sock);
    await listening(server, sock);
    const lspci = start([bareVfu, 'lspci', sock]);
    await finished(lspci);
    const warnings = lspci.stderr().split('\n').filter((l) => l.startsWith('vfio-user: native addon not loaded'));
    assert.equal(warnings.length, 1, lspci.stderr());
    const quiet = spawnSync(process.execPath, [bareVfu, 'lspci', sock], { encoding: 'utf8', env: { ...process.env, VFU_NO_NATIVE: '1' } });
    assert.equal(quiet.status, 0, quiet.stderr);
    assert.equal(quiet.stderr, '');
    server.child.kill('SIGTERM');
    await finished(server);
  });

  test('nvme: a block written through the controller reads back and lands in the image', async () => {
    const image = join(t.dir, 'disk.img');
    const out = await finished(run('nvme.js', image));
    assert.match(out, /vfio-user TypeScript NVMe: 32768 blocks of 512 bytes/);
    assert.match(out, /read back: hello, block 0/);
    assert.equal(readFileSync(image).subarray(0, 14).toString(), 'hello, block 0');
  });

  test('vmm-migrate: the device and the guest RAM move to the other server', async () => {
    const a = join(t.dir, 'a.sock');
    const b = join(t.dir, 'b.sock');
    const sa = run('serve.js', a);
    const sb = run('serve.js', b);
    await listening(sa, a);
    await listening(sb, b);
    const out = await finished(run('vmm-migrate.js', a, b));
    assert.match(out, /downtime/i);
    assert.match(out, /destination DMA_LEN 0x1234, RAM: guest data/);
    sa.child.kill('SIGTERM');
    sb.child.kill('SIGTERM');
    await finished(sa);
    await finished(sb);
  });
});
