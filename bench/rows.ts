/**
 * One measured figure.  With a baseline measured in the same process, ratio
 * says how many times better the value is (higher is better: value/baseline
 * for rates, baseline/value for times).
 */
export interface BenchRow {
  name: string;
  value: number;
  unit: string;
  baseline?: { name: string; value: number };
  ratio?: number;
}

/** A plain-text table of rows, for standalone runs. */
export function formatRows(rows: readonly BenchRow[]): string {
  const cells = rows.map((r) => [
    r.name,
    `${fmt(r.value)} ${r.unit}`,
    r.baseline ? `${r.baseline.name}: ${fmt(r.baseline.value)} ${r.unit}` : '',
    r.ratio !== undefined ? `x${fmt(r.ratio)}` : '',
  ]);
  const head = ['benchmark', 'value', 'baseline', 'ratio'];
  const widths = head.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]) => c.map((x, i) => x.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(head), line(widths.map((w) => '-'.repeat(w))), ...cells.map(line)].join('\n');
}

function fmt(v: number): string {
  return v >= 100 ? v.toFixed(0) : v.toPrecision(3);
}
