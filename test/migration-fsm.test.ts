// The derived migration state machine against two independent references:
// a brute-force search over all simple paths written here, and the tables
// published by libvfio-user (lib/migration.c) and Linux (vfio_main.c),
// transcribed below as data.
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { DeviceStateLostError, MigrationController } from '../src/migration/controller.js';
import { Errno, MigState, MigrationFlag, NUM_MIG_STATES, migStateNames } from '../src/protocol/constants.js';
import { VfuError } from '../src/protocol/errors.js';
import {
  FULL_ARCS,
  arcsFor,
  deriveNextState,
  featuresFromFlags,
  isAllowedPath,
  isSavingState,
  migrationFlags,
  planPath,
  supportedStates,
  type MigrationFeatures,
} from '../src/migration/fsm.js';

const { ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P } = MigState;
const N = NUM_MIG_STATES;
const name = (s: number) => migStateNames[s] ?? String(s);
const ALL_FEATURES: MigrationFeatures[] = [
  { preCopy: false, p2p: false },
  { preCopy: false, p2p: true },
  { preCopy: true, p2p: false },
  { preCopy: true, p2p: true },
];
const fname = (f: MigrationFeatures) => `STOP_COPY${f.p2p ? '|P2P' : ''}${f.preCopy ? '|PRE_COPY' : ''}`;

// ---------------------------------------------------------------------------
// Reference 1: every simple path, then the shortest allowed ones (no BFS).
// Allowed, per the uAPI rule as the kernel table applies it: no saving state
// strictly inside the path, unless the whole path is saving states (PRE_COPY
// -> PRE_COPY_P2P -> STOP_COPY keeps one data stream going).

const SAVING_REF: number[] = [STOP_COPY, PRE_COPY, PRE_COPY_P2P];
const allowedRef = (p: number[]) =>
  p.every((s) => SAVING_REF.includes(s)) || p.slice(1, -1).every((s) => !SAVING_REF.includes(s));

function bruteNext(arcs: readonly (readonly [number, number])[], supported: number[]): { table: number[][]; ties: string[] } {
  const adj = new Map<number, number[]>();
  for (const [a, b] of arcs) adj.set(a, [...(adj.get(a) ?? []), b]);
  const table = Array.from({ length: N }, () => Array<number>(N).fill(ERROR));
  const ties: string[] = [];
  for (const from of supported) {
    // Depth-first enumeration of all simple paths from `from`.
    const best = new Map<number, number[][]>();
    const walk = (path: number[]) => {
      const last = path[path.length - 1]!;
      if (path.length > 1 && allowedRef(path)) {
        const cur = best.get(last);
        if (!cur || cur[0]!.length > path.length) best.set(last, [path.slice()]);
        else if (cur[0]!.length === path.length) cur.push(path.slice());
      }
      for (const nx of adj.get(last) ?? []) if (!path.includes(nx)) walk([...path, nx]);
    };
    walk([from]);
    table[from]![from] = from;
    for (const [to, paths] of best) {
      if (to === from || !supported.includes(to)) continue;
      if (from === STOP_COPY && (to === PRE_COPY || to === PRE_COPY_P2P)) continue;
      const hops = new Set(paths.map((p) => p[1]!));
      if (paths.length > 1) ties.push(`${name(from)}->${name(to)}: ${paths.map((p) => p.map(name).join('>')).join(' | ')}`);
      table[from]![to] = Math.min(...hops);
    }
  }
  return { table, ties };
}

test('the strict reading (no saving interior state at all) contradicts the kernel table', () => {
  // PRE_COPY -> STOP_COPY: the kernel goes through PRE_COPY_P2P; a rule that
  // forbade every saving interior state would have to go through RUNNING.
  assert.equal(KERNEL_FSM[PRE_COPY]![STOP_COPY], PRE_COPY_P2P);
  assert.equal(deriveNextState({ preCopy: true, p2p: true })[PRE_COPY]![STOP_COPY], PRE_COPY_P2P);
  assert.ok(isAllowedPath([PRE_COPY, PRE_COPY_P2P, STOP_COPY]));
  assert.ok(!isAllowedPath([PRE_COPY_P2P, STOP_COPY, STOP]));
  assert.ok(!isAllowedPath([RUNNING, PRE_COPY, PRE_COPY_P2P, STOP_COPY]));
  assert.ok(isAllowedPath([PRE_COPY, RUNNING, RUNNING_P2P, STOP]));
  assert.ok(isAllowedPath([STOP_COPY]));
});

test('supportedStates, flags and saving states', () => {
  assert.deepEqual(supportedStates({ preCopy: false, p2p: false }), [STOP, RUNNING, STOP_COPY, RESUMING]);
  assert.deepEqual(supportedStates({ preCopy: false, p2p: true }), [STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P]);
  assert.deepEqual(supportedStates({ preCopy: true, p2p: false }), [STOP, RUNNING, STOP_COPY, RESUMING, PRE_COPY]);
  assert.deepEqual(supportedStates({ preCopy: true, p2p: true }), [1, 2, 3, 4, 5, 6, 7]);
  for (const f of ALL_FEATURES) {
    const flags = migrationFlags(f);
    assert.ok(flags & MigrationFlag.STOP_COPY);
    assert.equal(Boolean(flags & MigrationFlag.P2P), f.p2p);
    assert.equal(Boolean(flags & MigrationFlag.PRE_COPY), f.preCopy);
    assert.deepEqual(featuresFromFlags(flags), f);
  }
  assert.deepEqual(
    [...Array(N).keys()].filter(isSavingState),
    [STOP_COPY, PRE_COPY, PRE_COPY_P2P],
  );
});

test('arcsFor: full set is the uAPI list; reduced sets follow the skip/remove rules', () => {
  const sorted = (a: readonly (readonly [number, number])[]) => [...a].map((x) => [...x]).sort((x, y) => x[0]! - y[0]! || x[1]! - y[1]!);
  assert.equal(FULL_ARCS.length, 15);
  assert.deepEqual(arcsFor({ preCopy: true, p2p: true }).map((x) => [...x]), sorted(FULL_ARCS));
  assert.deepEqual(arcsFor({ preCopy: true, p2p: false }).map((x) => [...x]), sorted([
    [STOP_COPY, STOP], [PRE_COPY, RUNNING], [RUNNING, PRE_COPY], [STOP, STOP_COPY], [STOP, RESUMING], [RESUMING, STOP],
    [RUNNING, STOP], [STOP, RUNNING], [PRE_COPY, STOP_COPY],
  ]));
  assert.deepEqual(arcsFor({ preCopy: false, p2p: true }).map((x) => [...x]), sorted([
    [RUNNING_P2P, STOP], [STOP_COPY, STOP], [RUNNING, RUNNING_P2P], [STOP, RUNNING_P2P], [RUNNING_P2P, RUNNING],
    [STOP, STOP_COPY], [STOP, RESUMING], [RESUMING, STOP],
  ]));
  assert.deepEqual(arcsFor({ preCopy: false, p2p: false }).map((x) => [...x]), sorted([
    [STOP_COPY, STOP], [STOP, STOP_COPY], [STOP, RESUMING], [RESUMING, STOP], [RUNNING, STOP], [STOP, RUNNING],
  ]));
});

for (const f of ALL_FEATURES) {
  test(`deriveNextState ${fname(f)} equals a brute-force all-simple-paths search; shortest paths are unique`, () => {
    const table = deriveNextState(f);
    const { table: ref, ties } = bruteNext(arcsFor(f), supportedStates(f));
    assert.deepEqual(ties, [], 'no two shortest paths compete, so the tie-break never matters');
    for (let c = 0; c < N; c++)
      for (let t = 0; t < N; t++)
        assert.equal(name(table[c]![t]!), name(ref[c]![t]!), `${fname(f)} next[${name(c)}][${name(t)}]`);
    // Structural facts of the table itself.
    for (let s = 0; s < N; s++) {
      assert.equal(table[ERROR]![s], ERROR);
      assert.equal(table[s]![ERROR], ERROR);
      assert.equal(table[s]![s], supportedStates(f).includes(s) ? s : ERROR);
    }
  });
}

// ---------------------------------------------------------------------------
// Reference 2: libvfio-user's next_state table (STOP_COPY|PRE_COPY, no P2P).

const E = ERROR;
const LIBVFIO_USER_NEXT: Record<number, Record<number, number>> = {
  [ERROR]: { [ERROR]: E, [STOP]: E, [RUNNING]: E, [STOP_COPY]: E, [RESUMING]: E, [RUNNING_P2P]: E, [PRE_COPY]: E, [PRE_COPY_P2P]: E },
  [STOP]: { [ERROR]: E, [STOP]: STOP, [RUNNING]: RUNNING, [STOP_COPY]: STOP_COPY, [RESUMING]: RESUMING, [RUNNING_P2P]: E, [PRE_COPY]: RUNNING, [PRE_COPY_P2P]: E },
  [RUNNING]: { [ERROR]: E, [STOP]: STOP, [RUNNING]: RUNNING, [STOP_COPY]: STOP, [RESUMING]: STOP, [RUNNING_P2P]: E, [PRE_COPY]: PRE_COPY, [PRE_COPY_P2P]: E },
  [STOP_COPY]: { [ERROR]: E, [STOP]: STOP, [RUNNING]: STOP, [STOP_COPY]: STOP_COPY, [RESUMING]: STOP, [RUNNING_P2P]: E, [PRE_COPY]: E, [PRE_COPY_P2P]: E },
  [RESUMING]: { [ERROR]: E, [STOP]: STOP, [RUNNING]: STOP, [STOP_COPY]: STOP, [RESUMING]: RESUMING, [RUNNING_P2P]: E, [PRE_COPY]: STOP, [PRE_COPY_P2P]: E },
  [RUNNING_P2P]: { [ERROR]: E, [STOP]: E, [RUNNING]: E, [STOP_COPY]: E, [RESUMING]: E, [RUNNING_P2P]: E, [PRE_COPY]: E, [PRE_COPY_P2P]: E },
  [PRE_COPY]: { [ERROR]: E, [STOP]: RUNNING, [RUNNING]: RUNNING, [STOP_COPY]: STOP_COPY, [RESUMING]: RUNNING, [RUNNING_P2P]: E, [PRE_COPY]: PRE_COPY, [PRE_COPY_P2P]: E },
  [PRE_COPY_P2P]: { [ERROR]: E, [STOP]: E, [RUNNING]: E, [STOP_COPY]: E, [RESUMING]: E, [RUNNING_P2P]: E, [PRE_COPY]: E, [PRE_COPY_P2P]: E },
};

test('STOP_COPY|PRE_COPY table equals libvfio-user next_state entry by entry', () => {
  const table = deriveNextState({ preCopy: true, p2p: false });
  let n = 0;
  for (let c = 0; c < N; c++)
    for (let t = 0; t < N; t++, n++)
      assert.equal(name(table[c]![t]!), name(LIBVFIO_USER_NEXT[c]![t]!), `next[${name(c)}][${name(t)}]`);
  assert.equal(n, 64);
});

// ---------------------------------------------------------------------------
// Reference 3: the kernel's vfio_from_fsm_table and its walk over unsupported
// states (vfio_mig_get_next_state).

const KERNEL_FSM: Record<number, Record<number, number>> = {
  [STOP]: { [STOP]: STOP, [RUNNING]: RUNNING_P2P, [PRE_COPY]: RUNNING_P2P, [PRE_COPY_P2P]: RUNNING_P2P, [STOP_COPY]: STOP_COPY, [RESUMING]: RESUMING, [RUNNING_P2P]: RUNNING_P2P, [ERROR]: ERROR },
  [RUNNING]: { [STOP]: RUNNING_P2P, [RUNNING]: RUNNING, [PRE_COPY]: PRE_COPY, [PRE_COPY_P2P]: RUNNING_P2P, [STOP_COPY]: RUNNING_P2P, [RESUMING]: RUNNING_P2P, [RUNNING_P2P]: RUNNING_P2P, [ERROR]: ERROR },
  [PRE_COPY]: { [STOP]: RUNNING, [RUNNING]: RUNNING, [PRE_COPY]: PRE_COPY, [PRE_COPY_P2P]: PRE_COPY_P2P, [STOP_COPY]: PRE_COPY_P2P, [RESUMING]: RUNNING, [RUNNING_P2P]: RUNNING, [ERROR]: ERROR },
  [PRE_COPY_P2P]: { [STOP]: RUNNING_P2P, [RUNNING]: RUNNING_P2P, [PRE_COPY]: PRE_COPY, [PRE_COPY_P2P]: PRE_COPY_P2P, [STOP_COPY]: STOP_COPY, [RESUMING]: RUNNING_P2P, [RUNNING_P2P]: RUNNING_P2P, [ERROR]: ERROR },
  [STOP_COPY]: { [STOP]: STOP, [RUNNING]: STOP, [PRE_COPY]: ERROR, [PRE_COPY_P2P]: ERROR, [STOP_COPY]: STOP_COPY, [RESUMING]: STOP, [RUNNING_P2P]: STOP, [ERROR]: ERROR },
  [RESUMING]: { [STOP]: STOP, [RUNNING]: STOP, [PRE_COPY]: STOP, [PRE_COPY_P2P]: STOP, [STOP_COPY]: STOP, [RESUMING]: RESUMING, [RUNNING_P2P]: STOP, [ERROR]: ERROR },
  [RUNNING_P2P]: { [STOP]: STOP, [RUNNING]: RUNNING, [PRE_COPY]: RUNNING, [PRE_COPY_P2P]: PRE_COPY_P2P, [STOP_COPY]: STOP, [RESUMING]: STOP, [RUNNING_P2P]: RUNNING_P2P, [ERROR]: ERROR },
  [ERROR]: { [STOP]: ERROR, [RUNNING]: ERROR, [PRE_COPY]: ERROR, [PRE_COPY_P2P]: ERROR, [STOP_COPY]: ERROR, [RESUMING]: ERROR, [RUNNING_P2P]: ERROR, [ERROR]: ERROR },
};
const SC = MigrationFlag.STOP_COPY;
const KERNEL_STATE_FLAGS: Record<number, number> = {
  [STOP]: SC,
  [RUNNING]: SC,
  [STOP_COPY]: SC,
  [RESUMING]: SC,
  [RUNNING_P2P]: SC | MigrationFlag.P2P,
  [PRE_COPY]: SC | MigrationFlag.PRE_COPY,
  [PRE_COPY_P2P]: SC | MigrationFlag.P2P | MigrationFlag.PRE_COPY,
  [ERROR]: 0xffffffff,
};
const kSupported = (s: number, flags: number) => ((KERNEL_STATE_FLAGS[s]! & flags) >>> 0) === KERNEL_STATE_FLAGS[s];

const LOOPED = Symbol('looped');
/**
 * One kernel step: the next state to enter, ERROR for -EINVAL, or LOOPED when
 * the unsupported-state walk did not finish within the bound.  `fixed` stops
 * the walk on ERROR; without it ERROR (flags ~0, never "supported") is looked
 * up again in its own all-ERROR row forever.
 */
function kernelStep(cur: number, target: number, flags: number, fixed: boolean, bound = 1000): number | typeof LOOPED {
  if (!kSupported(cur, flags) || !kSupported(target, flags)) return ERROR;
  let next = KERNEL_FSM[cur]![target]!;
  let i = 0;
  while (!kSupported(next, flags)) {
    if (fixed && next === ERROR) break;
    if (++i > bound) return LOOPED;
    next = KERNEL_FSM[next]![target]!;
  }
  return next;
}

/** The full kernel path, repeating the step until the target; null on -EINVAL. */
function kernelPath(from: number, to: number, flags: number): number[] | null {
  const path: number[] = [];
  let cur = from;
  if (kernelStep(cur, to, flags, true) === ERROR) return null;
  while (cur !== to) {
    const nx = kernelStep(cur, to, flags, true);
    assert.notEqual(nx, LOOPED);
    if (nx === ERROR) return null;
    path.push(nx as number);
    assert.ok(path.length <= N, 'kernel path converges');
    cur = nx as number;
  }
  return path;
}

test('all-features table equals the kernel vfio_from_fsm_table entry by entry', () => {
  const table = deriveNextState({ preCopy: true, p2p: true });
  for (let c = 0; c < N; c++)
    for (let t = 0; t < N; t++) assert.equal(name(table[c]![t]!), name(KERNEL_FSM[c]![t]!), `next[${name(c)}][${name(t)}]`);
});

for (const f of ALL_FEATURES) {
  test(`planPath over the derived ${fname(f)} table equals the kernel walk path by path`, () => {
    const table = deriveNextState(f);
    const flags = migrationFlags(f);
    let compared = 0;
    let refused = 0;
    for (let c = 0; c < N; c++)
      for (let t = 0; t < N; t++) {
        const mine = planPath(table, c, t);
        const kern = kernelPath(c, t, flags);
        const show = (p: number[] | null) => (p === null ? 'refused' : p.map(name).join('>') || '(stay)');
        assert.equal(show(mine), show(kern), `${fname(f)} ${name(c)} -> ${name(t)}`);
        compared++;
        if (mine === null) refused++;
        // Every hop is an arc of the device, and the path obeys the saving rule.
        if (mine) {
          let prev = c;
          for (const h of mine) {
            assert.ok(arcsFor(f).some(([a, b]) => a === prev && b === h), `${name(prev)}->${name(h)} is an arc`);
            prev = h;
          }
          assert.ok(allowedRef([c, ...mine]), `${[c, ...mine].map(name).join('>')} allowed`);
        }
      }
    assert.equal(compared, 64);
    const k = supportedStates(f).length;
    // Refused: everything touching ERROR/unsupported, plus STOP_COPY -> pre-copy states.
    assert.equal(refused, 64 - k * k + (f.preCopy ? (f.p2p ? 2 : 1) : 0));
  });

  test(`arcsFor ${fname(f)} is exactly the set of single steps the kernel walk takes`, () => {
    const flags = migrationFlags(f);
    const hops = new Set<string>();
    for (let c = 0; c < N; c++)
      for (let t = 0; t < N; t++) {
        const nx = kernelStep(c, t, flags, true);
        if (nx !== ERROR && nx !== c) hops.add(`${name(c)}>${name(nx as number)}`);
      }
    assert.deepEqual([...hops].sort(), arcsFor(f).map(([a, b]) => `${name(a)}>${name(b)}`).sort());
  });
}

test('the unfixed kernel walk loops once it reaches ERROR; the fixed walk and planPath terminate', () => {
  const looping: string[] = [];
  for (const f of ALL_FEATURES) {
    const flags = migrationFlags(f);
    const table = deriveNextState(f);
    for (let c = 0; c < N; c++)
      for (let t = 0; t < N; t++) {
        if (kernelStep(c, t, flags, false) === LOOPED) looping.push(`${fname(f)} ${name(c)}->${name(t)}`);
        assert.notEqual(kernelStep(c, t, flags, true), LOOPED);
        assert.doesNotThrow(() => planPath(table, c, t));
      }
  }
  // Exactly the explicitly refused STOP_COPY -> pre-copy requests.
  assert.deepEqual(looping.sort(), [
    'STOP_COPY|P2P|PRE_COPY STOP_COPY->PRE_COPY',
    'STOP_COPY|P2P|PRE_COPY STOP_COPY->PRE_COPY_P2P',
    'STOP_COPY|PRE_COPY STOP_COPY->PRE_COPY',
  ]);
  assert.equal(planPath(deriveNextState({ preCopy: true, p2p: false }), STOP_COPY, PRE_COPY), null);
});

test('planPath examples and malformed tables', () => {
  const all = deriveNextState({ preCopy: true, p2p: true });
  assert.deepEqual(planPath(all, RUNNING, STOP_COPY), [RUNNING_P2P, STOP, STOP_COPY]);
  assert.deepEqual(planPath(all, PRE_COPY, STOP_COPY), [PRE_COPY_P2P, STOP_COPY]);
  assert.deepEqual(planPath(all, RESUMING, RUNNING), [STOP, RUNNING_P2P, RUNNING]);
  assert.deepEqual(planPath(all, STOP, STOP), []);
  assert.equal(planPath(all, ERROR, ERROR), null);
  assert.equal(planPath(all, STOP, ERROR), null);
  assert.equal(planPath(all, STOP, 8), null);
  assert.equal(planPath(all, -1, STOP), null);
  const none = deriveNextState({ preCopy: false, p2p: false });
  assert.deepEqual(planPath(none, RUNNING, STOP_COPY), [STOP, STOP_COPY]);
  assert.equal(planPath(none, RUNNING, RUNNING_P2P), null);
  assert.equal(planPath(none, RUNNING_P2P, RUNNING_P2P), null);
  // A table that bounces between two states is rejected, not walked forever.
  const bad = all.map((r) => r.slice());
  bad[STOP]![RUNNING] = RESUMING;
  bad[RESUMING]![RUNNING] = STOP;
  assert.throws(() => planPath(bad, STOP, RUNNING), /does not converge/);
});

test('setState: synchronous callbacks finish before it returns; a promise on any hop is waited for, failures land where they should', async () => {
  const hops: string[] = [];
  let asyncArc = '';
  let failArc = '';
  let failWith: Error | null = null;
  const ctl = new MigrationController({
    features: { preCopy: true },
    transition(from, to) {
      const arc = `${migStateNames[from]}->${migStateNames[to]}`;
      hops.push(arc);
      const fail = (): void => {
        if (arc === failArc) throw failWith!;
      };
      if (arc === asyncArc) return new Promise<void>((r) => setImmediate(r)).then(fail);
      fail();
    },
    readData: () => Buffer.alloc(0),
    writeData: () => {},
  });
  // all synchronous: no promise at all (the server answers in the same turn)
  assert.equal(ctl.setState(MigState.STOP), undefined);
  assert.equal(ctl.state, MigState.STOP);
  // RUNNING -> STOP -> STOP_COPY with the first hop asynchronous: both hops, in order
  ctl.setState(MigState.RUNNING);
  hops.length = 0;
  asyncArc = 'RUNNING->STOP';
  const p = ctl.setState(MigState.STOP_COPY);
  assert.ok(p instanceof Promise);
  assert.equal(ctl.state, MigState.RUNNING, 'not there before the hop completes');
  await p;
  assert.deepEqual(hops, ['RUNNING->STOP', 'STOP->STOP_COPY']);
  assert.equal(ctl.state, MigState.STOP_COPY);
  // a synchronous failure after an asynchronous hop: rejects, state is the last one reached
  ctl.setState(MigState.RUNNING);
  failArc = 'STOP->STOP_COPY';
  failWith = new VfuError(Errno.EBUSY, 'not now');
  await assert.rejects(Promise.resolve(ctl.setState(MigState.STOP_COPY)), (e: VfuError) => e.errno === Errno.EBUSY);
  assert.equal(ctl.state, MigState.STOP);
  // a synchronous failure throws synchronously
  ctl.setState(MigState.RUNNING);
  asyncArc = '';
  failArc = 'RUNNING->STOP';
  assert.throws(() => ctl.setState(MigState.STOP), (e: VfuError) => e.errno === Errno.EBUSY);
  assert.equal(ctl.state, MigState.RUNNING);
  // the device's state lost on an asynchronous hop: ERROR
  asyncArc = 'RUNNING->STOP';
  failWith = new DeviceStateLostError(Errno.EIO, 'gone');
  await assert.rejects(Promise.resolve(ctl.setState(MigState.STOP)), (e: VfuError) => e.errno === Errno.EIO);
  assert.equal(ctl.state, MigState.ERROR);
});
