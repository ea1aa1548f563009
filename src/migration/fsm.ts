// The vfio migration v2 device state machine (enum vfio_device_mig_state).
//
// Nothing here is a hand-written transition matrix.  The single source of
// truth is the list of arcs the Linux uAPI says a driver implements when it
// supports every optional feature (FULL_ARCS).  For a device with fewer
// features we derive its arcs (arcsFor), and from those the next-hop table
// the server walks when a client asks for a state that is not adjacent
// (deriveNextState), by breadth-first search.

import { MigState, MigrationFlag, NUM_MIG_STATES } from '../protocol/constants.js';

/** Optional migration features; STOP_COPY is mandatory and always present. */
export type MigrationFeatures = {
  /** PRE_COPY (live migration with pre-copy rounds). */
  preCopy: boolean;
  /** The P2P states (RUNNING_P2P, PRE_COPY_P2P). */
  p2p: boolean;
};

/** A directed arc [from, to] between two states (kernel numbering). */
export type Arc = readonly [from: number, to: number];

const S = MigState;

/** The arcs of the full-featured machine (STOP_COPY | P2P | PRE_COPY). */
export const FULL_ARCS: readonly Arc[] = Object.freeze([
  [S.RUNNING_P2P, S.STOP],
  [S.STOP_COPY, S.STOP],
  [S.RUNNING, S.RUNNING_P2P],
  [S.PRE_COPY, S.RUNNING],
  [S.PRE_COPY_P2P, S.RUNNING_P2P],
  [S.STOP, S.RUNNING_P2P],
  [S.RUNNING_P2P, S.RUNNING],
  [S.RUNNING, S.PRE_COPY],
  [S.RUNNING_P2P, S.PRE_COPY_P2P],
  [S.STOP, S.STOP_COPY],
  [S.PRE_COPY, S.PRE_COPY_P2P],
  [S.PRE_COPY_P2P, S.STOP_COPY],
  [S.STOP, S.RESUMING],
  [S.RESUMING, S.STOP],
  [S.PRE_COPY_P2P, S.PRE_COPY],
] as const satisfies readonly Arc[]);

/**
 * Which optional features each state needs.  ERROR is not a state a device
 * is ever asked to enter, so it is never "supported" (like the kernel's ~0).
 */
const STATE_NEEDS: readonly { preCopy: boolean; p2p: boolean }[] = [
  /* ERROR        */ { preCopy: true, p2p: true },
  /* STOP         */ { preCopy: false, p2p: false },
  /* RUNNING      */ { preCopy: false, p2p: false },
  /* STOP_COPY    */ { preCopy: false, p2p: false },
  /* RESUMING     */ { preCopy: false, p2p: false },
  /* RUNNING_P2P  */ { preCopy: false, p2p: true },
  /* PRE_COPY     */ { preCopy: true, p2p: false },
  /* PRE_COPY_P2P */ { preCopy: true, p2p: true },
];

/** States in which the device produces migration data. */
const SAVING = new Set<number>([S.PRE_COPY, S.PRE_COPY_P2P, S.STOP_COPY]);

/** Whether the device produces migration data in state `s` (PRE_COPY, PRE_COPY_P2P, STOP_COPY). */
export function isSavingState(s: number): boolean {
  return SAVING.has(s);
}

function isPreCopyState(s: number): boolean {
  return s === S.PRE_COPY || s === S.PRE_COPY_P2P;
}

function isSupported(s: number, f: MigrationFeatures): boolean {
  if (s === S.ERROR || !Number.isInteger(s) || s < 0 || s >= NUM_MIG_STATES) return false;
  const need = STATE_NEEDS[s]!;
  return (!need.preCopy || f.preCopy) && (!need.p2p || f.p2p);
}

/** The states a device with these features can be put in (ERROR excluded), ascending. */
export function supportedStates(f: MigrationFeatures): number[] {
  const out: number[] = [];
  for (let s = 0; s < NUM_MIG_STATES; s++) if (isSupported(s, f)) out.push(s);
  return out;
}

/** VFIO_MIGRATION_* bits for DEVICE_FEATURE MIGRATION. */
export function migrationFlags(f: MigrationFeatures): number {
  return MigrationFlag.STOP_COPY | (f.p2p ? MigrationFlag.P2P : 0) | (f.preCopy ? MigrationFlag.PRE_COPY : 0);
}

/** The inverse of migrationFlags (unknown bits ignored). */
export function featuresFromFlags(flags: number): MigrationFeatures {
  return { preCopy: (flags & MigrationFlag.PRE_COPY) !== 0, p2p: (flags & MigrationFlag.P2P) !== 0 };
}

/**
 * The arcs a device with features `f` implements, sorted by (from, to).
 *
 * Two rules, as the uAPI states them:
 * - without PRE_COPY the pre-copy states do not exist and every arc touching
 *   them simply disappears (nothing else routes through them);
 * - without P2P the P2P states are *skipped over*: an arc a->x->b through one
 *   missing P2P state x becomes a->b.  Only one missing state is passed per
 *   collapsed arc: the two P2P states are the quiescent twins of RUNNING and
 *   PRE_COPY, and the arcs between them (RUNNING_P2P<->PRE_COPY_P2P) mirror
 *   RUNNING<->PRE_COPY, which survives on its own; chaining both would invent
 *   arcs such as RUNNING->STOP_COPY that the kernel never takes.
 */
export function arcsFor(f: MigrationFeatures): Arc[] {
  const dropped = (s: number) => STATE_NEEDS[s]!.preCopy && !f.preCopy && s !== S.ERROR;
  const base = FULL_ARCS.filter(([a, b]) => !dropped(a) && !dropped(b));
  const keep = (s: number) => isSupported(s, f);
  const out = new Map<string, Arc>();
  const add = (a: number, b: number) => {
    if (a !== b) out.set(`${a},${b}`, [a, b]);
  };
  for (const [a, b] of base) {
    if (keep(a) && keep(b)) add(a, b);
    else if (keep(a) && !keep(b)) {
      // a -> b -> c with b skipped: a -> c for every supported successor c.
      for (const [b2, c] of base) if (b2 === b && keep(c)) add(a, c);
    }
  }
  return [...out.values()].sort((x, y) => x[0] - y[0] || x[1] - y[1]);
}

/**
 * True when `path` (start and end included) obeys the uAPI rule "the path
 * cannot have saving group states as interior arcs, only starting/end
 * states", read the way the kernel's table reads it: interior states must not
 * be saving states, unless every state of the path is one.  The exception is
 * a move that stays inside the saving group, which keeps the one migration
 * data stream going: PRE_COPY -> PRE_COPY_P2P -> STOP_COPY is how the kernel
 * goes from PRE_COPY to STOP_COPY, while PRE_COPY_P2P -> STOP_COPY -> STOP
 * (leaving through a state that starts the final copy) is not allowed.  The
 * stricter reading (no saving interior at all) would send PRE_COPY to
 * STOP_COPY through RUNNING, ending the pre-copy stream; both libvfio-user
 * (no P2P) and Linux agree with this one.
 */
export function isAllowedPath(path: readonly number[]): boolean {
  if (path.every(isSavingState)) return true;
  for (let i = 1; i < path.length - 1; i++) if (isSavingState(path[i]!)) return false;
  return true;
}

/**
 * next[cur][target]: the state to enter first on the way from cur to target.
 *
 * It is the first hop of a shortest path over arcsFor(f) that isAllowedPath
 * accepts.  ERROR (0) marks a refused request: either end ERROR or
 * unsupported, no such path, or STOP_COPY -> PRE_COPY/PRE_COPY_P2P (the spec
 * forbids returning to pre-copy once the final copy has begun, even though a
 * path via STOP exists).
 *
 * The search is a BFS over (state, "path so far is all saving") pairs, which
 * is exactly what isAllowedPath needs to know when extending a path.  Ties
 * between equally short paths would go to the path BFS finds first
 * (neighbours are visited in ascending state order, so in practice the
 * lowest-numbered first hop).  For the four feature sets every shortest
 * allowed path is unique, which the tests check against a brute-force
 * search, so no tie-break ever decides an entry.
 */
export function deriveNextState(f: MigrationFeatures): number[][] {
  const arcs = arcsFor(f);
  const succ: number[][] = Array.from({ length: NUM_MIG_STATES }, () => []);
  for (const [a, b] of arcs) succ[a]!.push(b); // arcs are sorted, so each list is ascending
  const next: number[][] = Array.from({ length: NUM_MIG_STATES }, () => new Array<number>(NUM_MIG_STATES).fill(S.ERROR));
  for (let cur = 0; cur < NUM_MIG_STATES; cur++) {
    if (!isSupported(cur, f)) continue;
    const firstHop = new Array<number>(NUM_MIG_STATES).fill(-1);
    firstHop[cur] = cur;
    // Queue entries: [state, first hop, every state so far is saving].
    const seen = new Set<number>();
    const queue: [number, number, boolean][] = [[cur, cur, isSavingState(cur)]];
    seen.add(cur * 2 + (isSavingState(cur) ? 1 : 0));
    for (let qi = 0; qi < queue.length; qi++) {
      const [v, hop, pure] = queue[qi]!;
      // Leaving v makes it interior: a saving v may only be passed through
      // while the whole path stays inside the saving group.
      if (v !== cur && isSavingState(v) && !pure) continue;
      for (const w of succ[v]!) {
        const wPure = pure && isSavingState(w);
        if (v !== cur && isSavingState(v) && !wPure) continue;
        const key = w * 2 + (wPure ? 1 : 0);
        if (seen.has(key)) continue;
        seen.add(key);
        const h = v === cur ? w : hop;
        if (firstHop[w] === -1) firstHop[w] = h;
        queue.push([w, h, wPure]);
      }
    }
    const row = next[cur]!;
    for (let t = 0; t < NUM_MIG_STATES; t++) {
      if (!isSupported(t, f) || firstHop[t] === -1) continue;
      if (cur === S.STOP_COPY && isPreCopyState(t)) continue;
      row[t] = firstHop[t]!;
    }
  }
  return next;
}

/**
 * The states entered, in order, going from `from` to `to` by following
 * `table`: [] when from === to, null when the table refuses (an ERROR entry
 * anywhere along the walk, or from/to ERROR or unsupported).  The walk stops
 * at the ERROR sentinel instead of looking it up again, and is bounded by the
 * number of states, so a malformed table throws instead of spinning.
 */
export function planPath(table: readonly (readonly number[])[], from: number, to: number): number[] | null {
  const n = table.length;
  if (!Number.isInteger(from) || !Number.isInteger(to) || from < 0 || to < 0 || from >= n || to >= n) return null;
  // A state that is not supported has ERROR even on its diagonal.
  if (table[from]![from] !== from || table[to]![to] !== to || from === S.ERROR || to === S.ERROR) return null;
  const path: number[] = [];
  let cur = from;
  while (cur !== to) {
    const nxt = table[cur]![to]!;
    if (nxt === S.ERROR) return null;
    if (nxt === cur || path.length >= n) throw new Error(`migration table does not converge from ${from} to ${to}`);
    path.push(nxt);
    cur = nxt;
  }
  return path;
}
