// The controller's migration state: registers, queues (configuration, head,
// tail, phase, completions waiting for room), held Async Event Requests and
// pending events, features, counters and the error log.  Encoded as JSON
// (small, and readable in a trace); every field is checked on the way in,
// since the stream comes from the client.
import { Errno } from '../../protocol/constants.js';
import { VfuError } from '../../protocol/errors.js';
import type { CompletionQueue, Features, NvmeController, Persistent, SubmissionQueue } from './controller.js';

/** What must match between source and destination (the pre-copy header). */
export interface NvmeGeometry {
  queues: number;
  maxQueueEntries: number;
  lbaShift: number;
  blocks: number;
  mdts: number;
  shadowDoorbells: boolean;
}

export interface NvmeState {
  regs: { cc: number; csts: number; aqa: number; asq: number; acq: number; intms: number };
  sqs: { id: number; base: number; size: number; cqid: number; head: number; tail: number; prio: number }[];
  cqs: { id: number; base: number; size: number; head: number; tail: number; phase: number; ien: boolean; iv: number; waiting: [number, number, number][] }[];
  features: Features;
  persistent: Persistent;
  aers: number[];
  events: number[];
  eventMask: number;
  dbbuf: { shadow: number; eventIdx: number } | null;
  msix: string | null;
}

export function geometryOf(c: NvmeController): NvmeGeometry {
  return {
    queues: c.cfg.queues,
    maxQueueEntries: c.cfg.maxQueueEntries,
    lbaShift: c.cfg.lbaShift,
    blocks: c.blocks,
    mdts: c.cfg.mdts,
    shadowDoorbells: c.cfg.shadowDoorbells,
  };
}

export function saveState(c: NvmeController, msix: Buffer | null): NvmeState {
  return {
    regs: { cc: c.cc, csts: c.csts, aqa: c.aqa, asq: c.asq, acq: c.acq, intms: c.intms },
    sqs: c.sqs.filter((q): q is SubmissionQueue => q !== undefined).map((q) => ({ id: q.id, base: q.base, size: q.size, cqid: q.cqid, head: q.head, tail: q.tail, prio: q.prio })),
    cqs: c.cqs
      .filter((q): q is CompletionQueue => q !== undefined)
      .map((q) => ({ id: q.id, base: q.base, size: q.size, head: q.head, tail: q.tail, phase: q.phase, ien: q.ien, iv: q.iv, waiting: q.waiting.map((w) => [...w] as [number, number, number]) })),
    features: structuredClone(c.features),
    persistent: structuredClone(c.persistent),
    aers: [...c.aers],
    events: [...c.events],
    eventMask: c.eventMask,
    dbbuf: c.dbbuf ? { ...c.dbbuf } : null,
    msix: msix ? msix.toString('base64') : null,
  };
}

function bad(why: string): never {
  throw new VfuError(Errno.EINVAL, `nvme: migration state refused: ${why}`);
}

function int(v: unknown, what: string, lo: number, hi: number): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < lo || v > hi) bad(`${what} is ${JSON.stringify(v)}, not an integer in [${lo}, ${hi}]`);
  return v;
}

const U32 = 0xffffffff;
const ADDR = Number.MAX_SAFE_INTEGER;

/** Checks a geometry header against ours. */
export function checkGeometry(mine: NvmeGeometry, theirs: unknown): void {
  if (typeof theirs !== 'object' || theirs === null) bad('no geometry');
  for (const k of Object.keys(mine) as (keyof NvmeGeometry)[]) {
    if ((theirs as Record<string, unknown>)[k] !== mine[k]) {
      bad(`source has ${k} = ${JSON.stringify((theirs as Record<string, unknown>)[k])}, this device ${JSON.stringify(mine[k])}`);
    }
  }
}

/**
 * Validates `s` completely, then applies it to `c` (nothing is applied when
 * anything is wrong).  Returns the MSI-X snapshot to restore, if any.
 */
export function loadState(c: NvmeController, raw: unknown): Buffer | null {
  if (typeof raw !== 'object' || raw === null) bad('not an object');
  const s = raw as NvmeState;
  const r = s.regs ?? bad('no registers');
  const regs = {
    cc: int(r.cc, 'CC', 0, U32),
    csts: int(r.csts, 'CSTS', 0, U32),
    aqa: int(r.aqa, 'AQA', 0, U32),
    asq: int(r.asq, 'ASQ', 0, ADDR),
    acq: int(r.acq, 'ACQ', 0, ADDR),
    intms: int(r.intms, 'INTMS', 0, U32),
  };
  const nq = c.cfg.queues;
  const mqe = c.cfg.maxQueueEntries;
  if (!Array.isArray(s.sqs) || !Array.isArray(s.cqs)) bad('queues missing');
  const cqs: (CompletionQueue | undefined)[] = new Array(nq + 1).fill(undefined);
  for (const q of s.cqs) {
    const id = int(q.id, 'CQ id', 0, nq);
    if (cqs[id]) bad(`CQ ${id} twice`);
    const size = int(q.size, `CQ ${id} size`, 2, id === 0 ? 4096 : mqe);
    if (!Array.isArray(q.waiting) || q.waiting.length > size * 4) bad(`CQ ${id} waiting list`);
    const waiting = q.waiting.map((w, i) => {
      if (!Array.isArray(w) || w.length !== 3) bad(`CQ ${id} waiting entry ${i}`);
      return [int(w[0], 'CQE dw0', 0, U32), int(w[1], 'CQE dw2', 0, U32), int(w[2], 'CQE dw3', 0, U32)] as [number, number, number];
    });
    cqs[id] = {
      id,
      base: int(q.base, `CQ ${id} base`, 0, ADDR),
      size,
      head: int(q.head, `CQ ${id} head`, 0, size - 1),
      tail: int(q.tail, `CQ ${id} tail`, 0, size - 1),
      phase: int(q.phase, `CQ ${id} phase`, 0, 1),
      ien: q.ien === true,
      iv: int(q.iv, `CQ ${id} vector`, 0, nq),
      sqs: new Set(),
      waiting,
    };
  }
  const sqs: (SubmissionQueue | undefined)[] = new Array(nq + 1).fill(undefined);
  for (const q of s.sqs) {
    const id = int(q.id, 'SQ id', 0, nq);
    if (sqs[id]) bad(`SQ ${id} twice`);
    const size = int(q.size, `SQ ${id} size`, 2, id === 0 ? 4096 : mqe);
    const cqid = int(q.cqid, `SQ ${id} CQ`, 0, nq);
    const cq = cqs[cqid];
    if (cq === undefined || (id === 0) !== (cqid === 0)) bad(`SQ ${id} on missing CQ ${cqid}`);
    cq.sqs.add(id);
    sqs[id] = {
      id,
      base: int(q.base, `SQ ${id} base`, 0, ADDR),
      size,
      cqid,
      head: int(q.head, `SQ ${id} head`, 0, size - 1),
      tail: int(q.tail, `SQ ${id} tail`, 0, size - 1),
      prio: int(q.prio, `SQ ${id} priority`, 0, 3),
      inflight: 0,
      deleting: false,
      fetching: false,
    };
  }
  const f = s.features;
  if (typeof f !== 'object' || f === null) bad('features missing');
  const features: Features = {
    arbitration: int(f.arbitration, 'arbitration', 0, U32),
    powerMgmt: int(f.powerMgmt, 'power management', 0, 0xff),
    tempOver: int(f.tempOver, 'temperature threshold', 0, 0xffff),
    tempUnder: int(f.tempUnder, 'temperature threshold', 0, 0xffff),
    errorRecovery: int(f.errorRecovery, 'error recovery', 0, 0xffff),
    vwc: int(f.vwc, 'volatile write cache', 0, 1),
    coalesce: int(f.coalesce, 'interrupt coalescing', 0, 0xffff),
    coalesceDisabled: Array.isArray(f.coalesceDisabled) ? f.coalesceDisabled.map((v) => int(v, 'vector', 0, nq)) : bad('vector config'),
    writeAtomic: int(f.writeAtomic, 'write atomicity', 0, 1),
    asyncEventConfig: int(f.asyncEventConfig, 'async event config', 0, U32),
    timestamp:
      f.timestamp === null
        ? null
        : { value: int(f.timestamp?.value, 'timestamp', 0, 2 ** 48 - 1), setAt: int(f.timestamp?.setAt, 'timestamp', 0, ADDR) },
    queuesSet: f.queuesSet === true,
  };
  const p = s.persistent;
  if (typeof p !== 'object' || p === null || typeof p.smart !== 'object' || p.smart === null || !Array.isArray(p.errors)) bad('counters missing');
  const smart = Object.fromEntries(
    (['unitsRead', 'unitsWritten', 'readCommands', 'writeCommands', 'powerCycles', 'unsafeShutdowns', 'mediaErrors', 'errorEntries'] as const).map((k) => [k, int(p.smart[k], k, 0, ADDR)]),
  ) as unknown as Persistent['smart'];
  if (p.errors.length > 64) bad('error log too long');
  const errors = p.errors.map((e) => ({
    count: int(e.count, 'error count', 0, ADDR),
    sqid: int(e.sqid, 'error sqid', 0, 0xffff),
    cid: int(e.cid, 'error cid', 0, 0xffff),
    status: int(e.status, 'error status', 0, 0xffff),
    lba: int(e.lba, 'error lba', 0, ADDR),
    nsid: int(e.nsid, 'error nsid', 0, U32),
  }));
  if (!Array.isArray(s.aers) || s.aers.length > 4) bad('held AERs');
  const aers = s.aers.map((v) => int(v, 'AER command id', 0, 0xffff));
  if (!Array.isArray(s.events) || s.events.length > 64) bad('events');
  const events = s.events.map((v) => int(v, 'event', 0, 0xffffff));
  const eventMask = int(s.eventMask, 'event mask', 0, 0xff);
  let dbbuf: { shadow: number; eventIdx: number } | null = null;
  if (s.dbbuf !== null && s.dbbuf !== undefined) {
    dbbuf = { shadow: int(s.dbbuf.shadow, 'shadow doorbells', 0, ADDR), eventIdx: int(s.dbbuf.eventIdx, 'EventIdx buffer', 0, ADDR) };
  }
  const msix = typeof s.msix === 'string' ? Buffer.from(s.msix, 'base64') : null;

  Object.assign(c, regs);
  c.sqs = sqs;
  c.cqs = cqs;
  c.features = features;
  c.persistent = { smart, errors, errorCount: int(p.errorCount, 'error count', 0, ADDR) };
  c.aers = aers;
  c.events = events;
  c.eventMask = eventMask;
  c.dbbuf = dbbuf;
  return msix;
}
