// Property tests for the wire codecs: every command's request and reply body
// survives decode(encode(x)) exactly, and arbitrary bytes either decode into
// a value that re-encodes to the very same bytes or are refused with EINVAL.
// Plus the VERSION capabilities JSON (capabilities.ts).
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import fc from 'fast-check';
import { Command, type CommandName, Errno, LINUX_MAX_FDS } from '../src/protocol/constants.js';
import {
  type Capabilities,
  defaultCapabilities,
  formatCapabilities,
  parseCapabilities,
} from '../src/protocol/capabilities.js';
import { VfuError } from '../src/protocol/errors.js';
import { type Codec, codecs } from '../src/protocol/messages/index.js';
import { bodies, u32 } from './helpers/arbitraries.js';

const NAMES = Object.keys(Command) as CommandName[];
const RUNS = Number(process.env.VFU_PROP_RUNS ?? 400);

/** decode() either refuses with EINVAL or returns an exact description of the input. */
function checkBytes(codec: Codec<unknown>, input: Buffer): void {
  let v: unknown;
  try {
    v = codec.decode(input);
  } catch (e) {
    assert.ok(e instanceof VfuError, `decode threw a non-VfuError: ${(e as Error)?.stack ?? String(e)}`);
    assert.equal(e.errno, Errno.EINVAL, `decode threw errno ${e.errno}`);
    return;
  }
  const again = codec.encode(v);
  assert.ok(again.equals(input), `re-encoding differs\n in: ${input.toString('hex')}\nout: ${again.toString('hex')}`);
}

type Mutation =
  | { op: 'set'; at: number; value: number }
  | { op: 'u32'; at: number; value: number }
  | { op: 'cut'; at: number }
  | { op: 'add'; bytes: Uint8Array };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant('set' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
  // Small u32s at aligned offsets reach counts, offsets and links.
  fc.record({ op: fc.constant('u32' as const), at: fc.nat(), value: fc.oneof(fc.integer({ min: 0, max: 160 }), u32) }),
  fc.record({ op: fc.constant('cut' as const), at: fc.nat() }),
  fc.record({ op: fc.constant('add' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 48 }) }),
);

function mutate(src: Buffer, ms: Mutation[]): Buffer {
  let b = Buffer.from(src);
  for (const m of ms) {
    if (m.op === 'add') b = Buffer.concat([b, m.bytes]);
    else if (b.length === 0) continue;
    else if (m.op === 'set') b[m.at % b.length] = m.value;
    else if (m.op === 'cut') b = b.subarray(0, m.at % (b.length + 1));
    else if (b.length >= 4) b.writeUInt32LE(m.value, (m.at % Math.floor(b.length / 4)) * 4);
  }
  return Buffer.from(b);
}

for (const name of NAMES) {
  for (const side of ['request', 'reply'] as const) {
    const codec = codecs[name][side] as Codec<unknown>;
    const body = bodies[name][side];

    test(`${name} ${side}: decode(encode(x)) deep-equals x`, () => {
      fc.assert(
        fc.property(body, (x) => {
          const wire = codec.encode(x);
          const back = codec.decode(wire);
          assert.deepStrictEqual(back, x);
          assert.ok(codec.encode(back).equals(wire));
        }),
        { numRuns: RUNS },
      );
    });

    test(`${name} ${side}: arbitrary bytes decode exactly or fail with EINVAL`, () => {
      const random = fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a));
      const mutated = fc
        .tuple(body, fc.array(mutation, { minLength: 1, maxLength: 4 }))
        .map(([x, ms]) => mutate(codec.encode(x), ms));
      fc.assert(
        fc.property(fc.oneof(random, mutated), (input) => checkBytes(codec, input)),
        { numRuns: RUNS * 2 },
      );
    });
  }
}

// ---------------------------------------------------------------- capabilities

function expectEinval(json: string | undefined, nul: boolean | undefined, what: string): void {
  assert.throws(
    () => parseCapabilities(json, nul),
    (e: unknown) => e instanceof VfuError && e.errno === Errno.EINVAL,
    what,
  );
}

test('capabilities: defaults when no JSON, no capabilities key, or an empty object', () => {
  const d = { ...defaultCapabilities };
  assert.deepStrictEqual(parseCapabilities(undefined, undefined), d);
  assert.deepStrictEqual(parseCapabilities('{}', true), d);
  assert.deepStrictEqual(parseCapabilities('{"capabilities":{}}', true), d);
  assert.deepStrictEqual(d, { maxMsgFds: 1, maxDataXferSize: 1048576, maxDmaMaps: 65535, pgsizes: 4096, writeMultiple: false });
  // Sub-objects take their own defaults.
  assert.deepStrictEqual(parseCapabilities('{"capabilities":{"migration":{}}}', true).migration, { pgsize: 4096 });
  assert.deepStrictEqual(parseCapabilities('{"capabilities":{"twin_socket":{}}}', true).twinSocket, { supported: false });
  assert.equal(parseCapabilities('{"capabilities":{"vfu_mig_sizing":false}}', true).migSizing, undefined);
});

test('capabilities: data without its NUL terminator is EINVAL', () => {
  expectEinval('{}', false, 'nul false');
  expectEinval('{}', undefined, 'nul undefined');
  expectEinval('', false, 'empty, no nul');
});

test('capabilities: malformed JSON and wrong top-level shapes are EINVAL', () => {
  for (const j of ['', '{', 'null', '[]', '1', '"x"', 'true', '{"capabilities":null}', '{"capabilities":[]}', '{"capabilities":3}']) {
    expectEinval(j, true, j);
  }
});

test('capabilities: every type and range error is EINVAL', () => {
  const ints: [string, number, number][] = [
    ['max_msg_fds', 0, LINUX_MAX_FDS],
    ['max_data_xfer_size', 1, 0xffffffff],
    ['max_dma_maps', 1, 0xffffffff],
    ['pgsizes', 1, Number.MAX_SAFE_INTEGER],
  ];
  const wrongTypes = ['"1"', 'true', 'null', '[]', '{}', '1.5', '1e300'];
  for (const [key, min, max] of ints) {
    for (const w of wrongTypes) expectEinval(`{"capabilities":{"${key}":${w}}}`, true, `${key}=${w}`);
    expectEinval(`{"capabilities":{"${key}":${min - 1}}}`, true, `${key} below range`);
    if (max < Number.MAX_SAFE_INTEGER) expectEinval(`{"capabilities":{"${key}":${max + 1}}}`, true, `${key} above range`);
    else expectEinval(`{"capabilities":{"${key}":${2 ** 53}}}`, true, `${key} unsafe`);
    // The bounds themselves are accepted.
    parseCapabilities(`{"capabilities":{"${key}":${min}}}`, true);
    parseCapabilities(`{"capabilities":{"${key}":${max}}}`, true);
  }
  const bad = [
    '{"migration":1}',
    '{"migration":[]}',
    '{"migration":{"pgsize":"4096"}}',
    '{"migration":{"pgsize":0}}',
    '{"migration":{"pgsize":3000}}',
    `{"migration":{"pgsize":${2 ** 41}}}`,
    '{"migration":{"max_bitmap_size":0}}',
    '{"migration":{"max_bitmap_size":true}}',
    '{"twin_socket":true}',
    '{"twin_socket":{"supported":1}}',
    '{"twin_socket":{"supported":"yes"}}',
    '{"twin_socket":{"fd_index":-1}}',
    `{"twin_socket":{"fd_index":${LINUX_MAX_FDS}}}`,
    '{"write_multiple":1}',
    '{"write_multiple":"true"}',
    '{"vfu_mig_sizing":1}',
    '{"vfu_mig_sizing":"yes"}',
    '{"vfu_mig_sizing":null}',
    '{"vfu_mig_sizing":{}}',
    '{"vfu_mig_sizing":{"data_size":9}}',
    '{"vfu_mig_sizing":{"precopy_info":9}}',
    '{"vfu_mig_sizing":{"data_size":65536,"precopy_info":1}}',
    '{"vfu_mig_sizing":{"data_size":1,"precopy_info":-1}}',
  ];
  for (const c of bad) expectEinval(`{"capabilities":${c}}`, true, c);
});

test('capabilities: unknown keys are ignored at every level', () => {
  const c = parseCapabilities(
    JSON.stringify({
      other: { anything: [1, 2] },
      capabilities: {
        max_msg_fds: 16,
        future_thing: { x: 'y' },
        migration: { pgsize: 8192, flavour: 'v3' },
        twin_socket: { supported: true, colour: 'blue' },
      },
    }),
    true,
  );
  assert.deepStrictEqual(c, {
    ...defaultCapabilities,
    maxMsgFds: 16,
    migration: { pgsize: 8192 },
    twinSocket: { supported: true },
  });
});

const capsArb: fc.Arbitrary<Capabilities> = fc
  .record({
    maxMsgFds: fc.integer({ min: 0, max: LINUX_MAX_FDS }),
    maxDataXferSize: fc.integer({ min: 1, max: 0xffffffff }),
    maxDmaMaps: fc.integer({ min: 1, max: 0xffffffff }),
    pgsizes: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
    writeMultiple: fc.boolean(),
    migration: fc.option(
      fc.record(
        { pgsize: fc.integer({ min: 0, max: 40 }).map((s) => 2 ** s), maxBitmapSize: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }) },
        { requiredKeys: ['pgsize'], noNullPrototype: true },
      ),
      { nil: undefined },
    ),
    twinSocket: fc.option(
      fc.record({ supported: fc.boolean(), fdIndex: fc.integer({ min: 0, max: LINUX_MAX_FDS - 1 }) }, { requiredKeys: ['supported'], noNullPrototype: true }),
      { nil: undefined },
    ),
    migSizing: fc.option(
      fc.oneof(
        fc.constant(true as const),
        fc.record({ dataSize: fc.integer({ min: 0, max: 0xffff }), precopyInfo: fc.integer({ min: 0, max: 0xffff }) }, { noNullPrototype: true }),
      ),
      { nil: undefined },
    ),
  })
  .map((c) => {
    const r: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(c)) if (v !== undefined) r[k] = v;
    return r as unknown as Capabilities;
  });

test('capabilities: parse(format(c)) round-trips', () => {
  fc.assert(
    fc.property(capsArb, (c) => {
      assert.deepStrictEqual(parseCapabilities(formatCapabilities(c), true), c);
    }),
    { numRuns: RUNS },
  );
});

test('capabilities: arbitrary JSON values parse or fail with EINVAL only', () => {
  const value = fc.jsonValue();
  const capsLike = fc.dictionary(
    fc.constantFrom('max_msg_fds', 'max_data_xfer_size', 'max_dma_maps', 'pgsizes', 'migration', 'twin_socket', 'write_multiple', 'vfu_mig_sizing', 'x'),
    value,
  );
  fc.assert(
    fc.property(fc.oneof(value, capsLike.map((c) => ({ capabilities: c }))), (j) => {
      try {
        parseCapabilities(JSON.stringify(j), true);
      } catch (e) {
        assert.ok(e instanceof VfuError && e.errno === Errno.EINVAL, String(e));
      }
    }),
    { numRuns: RUNS },
  );
});
