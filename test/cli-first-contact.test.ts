// The command line as a device author first uses it: vfu read / vfu write on
// registers (and what a refusal says), vfu migrate comparing the devices
// before anything moves (--force to override), its --plot SVG, and errors
// that say what to do.
import { strict as assert } from 'node:assert';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { createGpio } from '../src/devices/gpio.js';
import { createSample } from '../src/devices/sample.js';
import { PciRegion } from '../src/protocol/constants.js';
import type { MigrationReport } from '../src/client/migrate.js';
import type { VfioUserDevice } from '../src/server/device.js';
import { cli, start } from './helpers/procs.js';
import { serve, tempDir, type Served } from './helpers/server.js';

/** Runs `vfu ARGS` asynchronously (the servers live in this process). */
async function vfu(...args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  const p = start([cli, ...args]);
  const [code] = await p.exited;
  return { code, out: p.stdout(), err: p.stderr() };
}

async function ok(...args: string[]): Promise<string> {
  const r = await vfu(...args);
  assert.equal(r.code, 0, `vfu ${args.join(' ')}: ${r.err}`);
  return r.out;
}

async function fails(...args: string[]): Promise<string> {
  const r = await vfu(...args);
  assert.equal(r.code, 1, `vfu ${args.join(' ')} should fail: ${r.out}`);
  return r.err;
}

/**
 * A strict-enough XML well-formedness check: one root, every tag closed in
 * order, attributes quoted, only the five predefined entities.  Returns the
 * text content (of <text> and <title>) for the numbers to be found in.
 */
function parseXml(doc: string): { root: string; texts: string[] } {
  const body = doc.replace(/^<\?xml[^?]*\?>\s*/, '');
  const stack: string[] = [];
  const texts: string[] = [];
  let root = '';
  const tag = /<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>|([^<]+)/gy;
  let at = 0;
  for (let m; (m = tag.exec(body)) !== null; at = tag.lastIndex) {
    const [, close, name, , selfClose, text] = m;
    if (text !== undefined) {
      assert.ok(stack.length > 0 || text.trim() === '', 'text outside the root element');
      assert.doesNotMatch(text, /&(?!(amp|lt|gt|quot|apos);)/, `bad entity in ${JSON.stringify(text)}`);
      if (stack.at(-1) === 'text' || stack.at(-1) === 'title') texts.push(text.replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&'));
      continue;
    }
    if (close) {
      assert.equal(stack.pop(), name, `</${name}> closes the wrong element`);
    } else {
      if (stack.length === 0) {
        assert.equal(root, '', 'a second root element');
        root = name!;
      }
      if (!selfClose) stack.push(name!);
    }
  }
  assert.equal(at, body.length, `not XML at: ${body.slice(at, at + 60)}`);
  assert.deepEqual(stack, [], 'unclosed elements');
  return { root, texts };
}

describe('vfu read / vfu write / vfu migrate, first contact', () => {
  const t = tempDir('vfu-cli-fc-');
  const servers: Served[] = [];
  const served = async (dev: VfioUserDevice): Promise<Served> => {
    const s = await serve(dev);
    servers.push(s);
    return s;
  };
  after(async () => {
    for (const s of servers) await s.close();
    t.cleanup();
  });

  test('vfu write then vfu read: gpio pins, config space ids, hex and the LE value', async () => {
    const g = await served(createGpio({ bar2: 'mem' }).device);
    await ok('write', g.path, 'bar2', '0', '01');
    assert.match(await ok('read', g.path, 'bar2', '0x1', '1'), /^00000001: fe {3}\(8-bit LE 0xfe\)$/m);
    const cfg = await ok('read', g.path, 'config', '0', '4');
    assert.match(cfg, /^00000000: 4f 49 c8 0d {3}\(32-bit LE 0x0dc8494f\)$/m);
    assert.match(await ok('read', g.path, '7', '0', '2'), /0x494f/);
  });

  test('errors say what the device allows: width, range, region, bytes', async () => {
    const s = await served(createSample().device);
    const width = await fails('read', s.path, 'bar0', '0', '4');
    assert.match(width, /refused a 4-byte read of BAR0 at 0x0 \(EINVAL\): reads are accepted with 8 bytes at 0x0/);
    assert.match(await fails('write', s.path, 'bar0', '0', '0102'), /refused a 2-byte write to BAR0 at 0x0 \(EINVAL\)/);
    assert.match(await fails('read', s.path, 'bar1', '0x3000'), /BAR1 is 12288 bytes \(0x0-0x2fff\): \[0x3000, \+4\) is outside it/);
    assert.match(await fails('read', s.path, 'bar7', '0'), /REGION: 'bar7' is not one of bar0/);
    assert.match(await fails('read', s.path, 'bar2', '0'), /BAR2: the device does not have this region/);
    assert.match(await fails('write', s.path, 'bar1', '0', 'xyz'), /HEXBYTES: 'xyz' is not whole bytes in hex/);
    assert.match(await fails('read', s.path, 'bar1', 'ten'), /OFFSET: expected an integer/);
  });

  test('vfu migrate refuses unlike devices before anything moves, naming the differences', async () => {
    const s = await served(createSample().device);
    const gDev = createGpio().device;
    const g = await served(gDev);
    const moves: string[] = [];
    gDev.on('migration', (from, to) => moves.push(`${from}->${to}`));
    const err = await fails('migrate', '--from', s.path, '--to', g.path, '--quiet');
    assert.match(err, /the devices differ, nothing was migrated \(--force to migrate anyway\)/);
    assert.match(err, /vendor id: source 0xdead, destination 0x494f/);
    assert.match(err, /device id: source 0xbeef, destination 0x0dc8/);
    assert.match(err, /BAR2 size: source 0, destination 256/);
    assert.match(err, /migration: source STOP_COPY\|PRE_COPY, destination STOP_COPY/);
    assert.deepEqual(moves, [], 'the destination never left RUNNING');
  });

  test('--force migrates anyway; a destination refusing says which step, which command and its own reason, the errno once', async () => {
    const v1 = await served(createSample({ v1: true }).device);
    const plain = await served(createSample().device);
    assert.match(await fails('migrate', '--from', v1.path, '--to', plain.path, '-q'), /number of regions: source 10, destination 9/);
    assert.match(await ok('migrate', '--from', v1.path, '--to', plain.path, '-q', '--force'), /downtime/);

    const g = await served(createGpio().device);
    const s = await served(createSample().device);
    const err = await fails('migrate', '--from', g.path, '--to', s.path, '-q', '--force');
    assert.match(err, /warning: the devices differ \(--force\)/);
    assert.match(err, /migration failed at resuming the destination: the peer refused DEVICE_FEATURE \(migration state -> STOP\): incomplete device state/);
    assert.equal(err.match(/\(EINVAL\)/g)?.length, 1, err);
  });

  test('--plot writes an SVG that parses as XML and carries the report numbers', async () => {
    const a = await served(createSample().device);
    const b = await served(createSample().device);
    const svg = join(t.dir, 'm.svg');
    const report = JSON.parse(await ok('migrate', '--from', a.path, '--to', b.path, '--json', '--plot', svg)) as MigrationReport;
    const { root, texts } = parseXml(readFileSync(svg, 'utf8'));
    assert.equal(root, 'svg');
    const all = texts.join('\n');
    assert.ok(report.rounds.length > 0);
    for (const r of report.rounds) {
      assert.ok(all.includes(`round ${r.round}: ${r.dirtyPages} dirty pages`), `round ${r.round} dirty pages`);
      assert.ok(all.includes(`round ${r.round}: ${r.deviceBytes} device bytes sent`), `round ${r.round} device bytes`);
      assert.ok(all.includes(`round ${r.round}: ${r.remainingEstimate} bytes estimated left`), `round ${r.round} estimate`);
    }
    const ms = (v: number): string => (v >= 100 ? v.toFixed(0) : v.toFixed(1));
    assert.ok(all.includes(`downtime ${ms(report.downtimeMs)} ms`), 'the downtime');
    for (const p of report.phases) assert.ok(all.includes(`${p.phase}: ${ms(p.ms)} ms`), p.phase);
    assert.ok(all.includes(`source stop copy ${ms(report.downtimeParts.sourceStopCopyMs)} ms`), 'the downtime parts');
    assert.ok(all.includes(`destination running ${ms(report.downtimeParts.destinationRunningMs)} ms`), 'the downtime parts');
  });

  test('--discard-precopy-data: the stop-copy image alone restores the sample; --help gives the caveat', async () => {
    const a = await served(createSample().device);
    const bDev = createSample();
    const b = await served(bDev.device);
    const c = await a.connect();
    await c.regionWrite(PciRegion.BAR1, 0x10, Buffer.from('precopy'));
    c.close();
    const report = JSON.parse(await ok('migrate', '--from', a.path, '--to', b.path, '--json', '--discard-precopy-data')) as MigrationReport;
    assert.ok(report.preCopy);
    assert.equal(bDev.bar1.subarray(0x10, 0x17).toString(), 'precopy');
    assert.match(await ok('migrate', '--help'), /--discard-precopy-data[\s\S]*stop-copy image[\s\S]*loses that part/);
  });

  test('usage errors name the option and what to do', async () => {
    const s = await served(createSample().device);
    assert.match(await fails('migrate', '--from', s.path, '--to', s.path), /--from and --to are the same socket/);
    const respelt = s.path.replace(/\/([^/]+)$/, '/./$1');
    assert.match(await fails('migrate', '--from', s.path, '--to', respelt), /--from and --to are the same socket/);
    assert.match(await fails('migrate', '--from', s.path, '--to', join(t.dir, 'x.sock'), '--rounds', 'abc'), /--rounds: expected an integer ≥ 0, got 'abc'/);
    assert.match(await fails('serve', 'gpio', '--fd', 'abc'), /--fd: expected an integer ≥ 0, got 'abc'/);
    assert.match(await fails('serve', 'nosuch', '--socket-path', join(t.dir, 'n.sock')), /unknown device 'nosuch' \(built-in: .*; or a module path/);
  });
});
