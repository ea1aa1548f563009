// One measured figure, optionally against a baseline measured in the same
// run.  ratio = value / baseline; `better` says which direction wins.
export interface BenchRow {
  name: string;
  value: number;
  unit: string;
  baseline?: { name: string; value: number };
  /** value / baseline.value */
  ratio?: number;
  /** Whether a higher or a lower value is better (rates vs times). */
  better?: 'higher' | 'lower';
  /** A target this figure is held to, when there is one. */
  target?: string;
  /** Whether the target is met (shown after it). */
  met?: boolean;
}

export function withBaseline(row: BenchRow, baseline: BenchRow): BenchRow {
  return { ...row, baseline: { name: baseline.name, value: baseline.value }, ratio: row.value / baseline.value };
}

/** Rows as an aligned text table. */
export function formatRows(rows: readonly BenchRow[]): string {
  const cells = rows.map((r) => [
    r.name,
    fmt(r.value),
    r.unit,
    r.baseline ? `${r.baseline.name}: ${fmt(r.baseline.value)}` : '',
    r.ratio !== undefined ? `x${r.ratio.toFixed(2)}${r.better ? (r.better === 'higher' ? ' (higher is better)' : ' (lower is better)') : ''}` : '',
    r.target === undefined ? '' : r.met === undefined ? r.target : `${r.target} ${r.met ? 'met' : 'MISSED'}`,
  ]);
  const head = ['benchmark', 'value', 'unit', 'baseline', 'ratio', 'target'];
  const w = head.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]): string => c.map((x, i) => (i === 1 ? x.padStart(w[i]!) : x.padEnd(w[i]!))).join('  ').trimEnd();
  return [line(head), line(w.map((n) => '-'.repeat(n))), ...cells.map(line)].join('\n');
}

function fmt(v: number): string {
  if (v >= 100) return v.toFixed(0);
  if (v >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

/** Rows as a Markdown table (ratio as value/baseline, target with met/MISSED). */
export function formatMarkdown(rows: readonly BenchRow[]): string {
  const esc = (t: string): string => t.replace(/\|/g, '\\|');
  const lines = ['| benchmark | value | baseline | ratio | target |', '| --- | ---: | --- | ---: | --- |'];
  for (const r of rows) {
    const base = r.baseline ? `${esc(r.baseline.name)}: ${fmt(r.baseline.value)} ${r.unit}` : '';
    const ratio = r.ratio !== undefined ? `x${r.ratio.toFixed(2)}` : '';
    const target = r.target === undefined ? '' : r.met === undefined ? esc(r.target) : `${esc(r.target)} ${r.met ? '**met**' : '**MISSED**'}`;
    lines.push(`| ${esc(r.name)} | ${fmt(r.value)} ${r.unit} | ${base} | ${ratio} | ${target} |`);
  }
  return lines.join('\n');
}
