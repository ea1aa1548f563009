// TEMPORARY placeholder until feat/migration lands (same API).
import { MigState, MigrationFlag } from '../protocol/constants.js';
export interface MigrationFeatures { preCopy: boolean; p2p: boolean }
export function migrationFlags(f: MigrationFeatures): number {
  return MigrationFlag.STOP_COPY | (f.preCopy ? MigrationFlag.PRE_COPY : 0) | (f.p2p ? MigrationFlag.P2P : 0);
}
const ARCS: [number, number][] = [
  [MigState.RUNNING, MigState.STOP], [MigState.STOP, MigState.RUNNING], [MigState.STOP, MigState.STOP_COPY],
  [MigState.STOP_COPY, MigState.STOP], [MigState.STOP, MigState.RESUMING], [MigState.RESUMING, MigState.STOP],
  [MigState.RUNNING, MigState.PRE_COPY], [MigState.PRE_COPY, MigState.RUNNING], [MigState.PRE_COPY, MigState.STOP_COPY],
];
export function deriveNextState(f: MigrationFeatures): number[][] {
  const ok = (s: number) => s !== 0 && s !== 5 && s !== 7 && (f.preCopy || s !== 6);
  const t: number[][] = [];
  for (let a = 0; a < 8; a++) {
    t.push([]);
    for (let b = 0; b < 8; b++) {
      if (!ok(a) || !ok(b)) { t[a]!.push(0); continue; }
      if (a === b) { t[a]!.push(a); continue; }
      if (a === 3 && b === 6) { t[a]!.push(0); continue; }
      const prev = new Map<number, number>([[a, -1]]); const q = [a];
      while (q.length) { const x = q.shift()!; if (x === b) break; if (x !== a && (x === 3 || x === 6)) continue;
        for (const [u, v] of ARCS) if (u === x && ok(v) && !prev.has(v)) { prev.set(v, x); q.push(v); } }
      if (!prev.has(b)) { t[a]!.push(0); continue; }
      let n = b; while (prev.get(n) !== a) n = prev.get(n)!; t[a]!.push(n);
    }
  }
  return t;
}
export function planPath(table: number[][], from: number, to: number): number[] | null {
  if (from === to) return table[from]![to] === from && from !== 0 ? [] : null;
  const out: number[] = []; let c = from;
  while (c !== to) { const n = table[c]![to]!; if (n === 0) return null; out.push(n); c = n; if (out.length > 8) return null; }
  return out;
}
