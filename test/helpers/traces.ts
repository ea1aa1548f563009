// Loads the recorded vfio-user sessions in test/vectors (JSON lines).
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TraceMessageRecord } from '../../src/cli/trace.js';

/** A recorded message: the format `vfu trace --json` writes (src/cli/trace.ts). */
export type TraceMessage = Omit<TraceMessageRecord, 'type' | 'payload_truncated'> & {
  type: 'command' | 'reply';
  payload_truncated?: boolean;
};
export interface TraceEvent {
  seq: number;
  t: number;
  event: string;
  [k: string]: unknown;
}
export type TraceLine = TraceMessage | TraceEvent;

/** test/vectors, found from dist/test/helpers or test/helpers. */
export function vectorsDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const cand = join(dir, 'test', 'vectors');
    try {
      readdirSync(cand);
      return cand;
    } catch {
      dir = dirname(dir);
    }
  }
  throw new Error('test/vectors not found');
}

export function traceFiles(): string[] {
  return readdirSync(vectorsDir())
    .filter((f) => f.endsWith('.jsonl'))
    .sort()
    .map((f) => join(vectorsDir(), f));
}

export function loadTrace(file: string): TraceLine[] {
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as TraceLine);
}

export function isMessage(l: TraceLine): l is TraceMessage {
  return 'cmd' in l && typeof (l as TraceMessage).cmd === 'number';
}

export function messages(file: string): TraceMessage[] {
  return loadTrace(file).filter(isMessage);
}
