// `vfu migrate --plot FILE.svg`: a picture of one migration from its report,
// readable in a browser.  Three panels: the bytes sent in each pre-copy round
// (guest pages and device data, stacked) with the remaining estimate after
// it; the pages found dirty in each round; and the phases on a time line with
// the downtime window.  Every mark carries its exact numbers in a <title>
// (hover in a browser); the axes and labels give them rounded.
import type { MigrationReport } from '../client/migrate.js';

const W = 760;
const LEFT = 80;
const RIGHT = 30;
const PLOT_W = W - LEFT - RIGHT;
const COLORS = { guest: '#4e79a7', device: '#f28e2b', estimate: '#e15759', dirty: '#59a14f', downtime: '#e15759' };
const PHASE_COLORS = ['#bab0ac', '#76b7b2', '#edc948', '#b07aa1', '#9c755f'];

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function kib(bytes: number): string {
  return bytes >= 10 * 1048576 ? `${(bytes / 1048576).toFixed(1)} MiB` : `${(bytes / 1024).toFixed(1)} KiB`;
}

function ms(v: number): string {
  return v >= 100 ? v.toFixed(0) : v.toFixed(1);
}

/** A "nice" axis maximum at or above `v` (1, 2, 5 times a power of ten). */
function niceMax(v: number): number {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

class Svg {
  private readonly parts: string[] = [];
  text(x: number, y: number, s: string, attrs = ''): void {
    this.parts.push(`<text x="${x.toFixed(1)}" y="${y.toFixed(1)}" ${attrs}>${esc(s)}</text>`);
  }
  rect(x: number, y: number, w: number, h: number, fill: string, title: string, attrs = ''): void {
    this.parts.push(
      `<rect x="${x.toFixed(1)}" y="${y.toFixed(1)}" width="${Math.max(0, w).toFixed(1)}" height="${Math.max(0, h).toFixed(1)}" fill="${fill}" ${attrs}><title>${esc(title)}</title></rect>`,
    );
  }
  line(x1: number, y1: number, x2: number, y2: number, stroke = '#999'): void {
    this.parts.push(`<line x1="${x1.toFixed(1)}" y1="${y1.toFixed(1)}" x2="${x2.toFixed(1)}" y2="${y2.toFixed(1)}" stroke="${stroke}"/>`);
  }
  raw(s: string): void {
    this.parts.push(s);
  }
  toString(height: number): string {
    return [
      `<?xml version="1.0" encoding="UTF-8"?>`,
      `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${height}" viewBox="0 0 ${W} ${height}" font-family="sans-serif" font-size="12">`,
      `<rect x="0" y="0" width="${W}" height="${height}" fill="white"/>`,
      ...this.parts,
      '</svg>',
      '',
    ].join('\n');
  }
}

/** A vertical axis with three gridlines, labelled by `fmt`. */
function axis(svg: Svg, top: number, height: number, max: number, fmt: (v: number) => string, title: string): void {
  svg.text(LEFT - 70, top - 8, title, 'font-weight="bold"');
  for (let i = 0; i <= 2; i++) {
    const v = (max * i) / 2;
    const y = top + height - (height * i) / 2;
    svg.line(LEFT, y, LEFT + PLOT_W, y, i === 0 ? '#333' : '#ddd');
    svg.text(LEFT - 6, y + 4, fmt(v), 'text-anchor="end" fill="#555"');
  }
}

/** The migration as an SVG document (see the top of this file). */
export function migrationSvg(report: MigrationReport): string {
  const svg = new Svg();
  const rounds = report.rounds;
  const n = Math.max(1, rounds.length);
  const slot = PLOT_W / n;
  const barW = Math.min(60, slot * 0.6);
  const cx = (i: number): number => LEFT + slot * (i + 0.5);

  svg.text(
    LEFT - 70,
    24,
    `vfu migrate: ${rounds.length} pre-copy round${rounds.length === 1 ? '' : 's'}${report.converged ? ' (converged)' : ''}, ` +
      `downtime ${ms(report.downtimeMs)} ms, total ${ms(report.totalMs)} ms, ` +
      `device ${kib(report.deviceBytes)}, guest ${kib(report.guestBytes)}`,
    'font-size="14" font-weight="bold"',
  );

  // Panel 1: bytes sent per round, and the estimate of what was left.
  const top1 = 70;
  const h1 = 170;
  const max1 = niceMax(Math.max(1, ...rounds.map((r) => Math.max(r.guestBytes + r.deviceBytes, r.remainingEstimate))));
  axis(svg, top1, h1, max1, kib, 'bytes per pre-copy round');
  const y1 = (v: number): number => top1 + h1 - (h1 * v) / max1;
  const est: string[] = [];
  rounds.forEach((r, i) => {
    const x = cx(i) - barW / 2;
    const gTop = y1(r.guestBytes);
    svg.rect(x, gTop, barW, top1 + h1 - gTop, COLORS.guest, `round ${r.round}: ${r.guestBytes} guest bytes sent`);
    const dTop = y1(r.guestBytes + r.deviceBytes);
    svg.rect(x, dTop, barW, gTop - dTop, COLORS.device, `round ${r.round}: ${r.deviceBytes} device bytes sent`);
    svg.text(cx(i), dTop - 4, kib(r.guestBytes + r.deviceBytes), 'text-anchor="middle" font-size="10"');
    svg.text(cx(i), top1 + h1 + 14, `round ${r.round}`, 'text-anchor="middle" fill="#555"');
    est.push(`${cx(i).toFixed(1)},${y1(r.remainingEstimate).toFixed(1)}`);
  });
  if (est.length > 0) {
    svg.raw(`<polyline points="${est.join(' ')}" fill="none" stroke="${COLORS.estimate}" stroke-width="2"/>`);
    rounds.forEach((r, i) => {
      svg.raw(
        `<circle cx="${cx(i).toFixed(1)}" cy="${y1(r.remainingEstimate).toFixed(1)}" r="4" fill="${COLORS.estimate}"><title>round ${r.round}: ${r.remainingEstimate} bytes estimated left</title></circle>`,
      );
    });
  } else {
    svg.text(LEFT + PLOT_W / 2, top1 + h1 / 2, 'no pre-copy rounds (stop-copy only)', 'text-anchor="middle" fill="#555"');
  }
  const legend = (x: number, color: string, label: string): void => {
    svg.rect(x, top1 - 30, 10, 10, color, label);
    svg.text(x + 14, top1 - 21, label);
  };
  legend(LEFT + 140, COLORS.guest, 'guest pages sent');
  legend(LEFT + 270, COLORS.device, 'device data sent');
  legend(LEFT + 400, COLORS.estimate, 'estimated left after the round');

  // Panel 2: dirty pages per round.
  const top2 = top1 + h1 + 60;
  const h2 = 100;
  const max2 = niceMax(Math.max(1, ...rounds.map((r) => r.dirtyPages)));
  axis(svg, top2, h2, max2, (v) => String(Math.round(v)), 'dirty pages found per round');
  const y2 = (v: number): number => top2 + h2 - (h2 * v) / max2;
  rounds.forEach((r, i) => {
    const t = y2(r.dirtyPages);
    svg.rect(cx(i) - barW / 2, t, barW, top2 + h2 - t, COLORS.dirty, `round ${r.round}: ${r.dirtyPages} dirty pages, ${ms(r.ms)} ms`);
    svg.text(cx(i), t - 4, String(r.dirtyPages), 'text-anchor="middle" font-size="10"');
  });

  // Panel 3: the phases on a time line, and the downtime window.
  const top3 = top2 + h2 + 60;
  const h3 = 28;
  const total = Math.max(report.totalMs, report.phases.reduce((a, p) => a + p.ms, 0), 1e-3);
  const xt = (t: number): number => LEFT + (PLOT_W * t) / total;
  svg.text(LEFT - 70, top3 - 10, 'phases (time)', 'font-weight="bold"');
  let t = 0;
  let stopCopyAt: number | null = null;
  report.phases.forEach((p, i) => {
    if (p.phase === 'stop-copy') stopCopyAt = t;
    svg.rect(
      xt(t),
      top3,
      xt(t + p.ms) - xt(t),
      h3,
      PHASE_COLORS[i % PHASE_COLORS.length]!,
      `${p.phase}: ${ms(p.ms)} ms, ${p.deviceBytes} device bytes, ${p.guestBytes} guest bytes, ${p.messages} messages`,
    );
    svg.text(xt(t) + 2, top3 + h3 + 14 + (i % 2) * 12, `${p.phase} ${ms(p.ms)} ms`, 'font-size="10"');
    t += p.ms;
  });
  const downFrom = stopCopyAt ?? 0;
  svg.rect(
    xt(downFrom),
    top3 - 6,
    xt(downFrom + report.downtimeMs) - xt(downFrom),
    h3 + 12,
    COLORS.downtime,
    `downtime: ${ms(report.downtimeMs)} ms, from pausing the guest to resuming it: ${downtimeParts(report)}`,
    'fill-opacity="0.35" stroke="#e15759"',
  );
  svg.text(xt(downFrom), top3 - 10, `downtime ${ms(report.downtimeMs)} ms`, `fill="${COLORS.downtime}" font-weight="bold"`);
  svg.text(LEFT + PLOT_W, top3 + h3 + 40, `0 … ${ms(total)} ms`, 'text-anchor="end" fill="#555"');
  return svg.toString(top3 + h3 + 60);
}

/** The downtime's parts as `name ms` pairs ("source stop copy 1.234 ms, ..."). */
function downtimeParts(report: MigrationReport): string {
  return Object.entries(report.downtimeParts)
    .map(([k, v]) => `${k.replace(/Ms$/, '').replace(/[A-Z]/g, (c) => ' ' + c.toLowerCase())} ${ms(v)} ms`)
    .join(', ');
}
