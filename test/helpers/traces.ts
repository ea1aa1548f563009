// Loads the recorded vfio-user sessions in test/vectors (JSON lines).
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface TraceMessage {
  seq: number;
  t: number;
  label?: string;
  conn: number;
  dir: 'c2s' | 's2c';
  msg_id: number;
  cmd: number;
  cmd_name: string;
  msg_size: number;
  flags: number;
  type: 'command' | 'reply';
  no_reply: boolean;
  error: boolean;
  error_no: number;
  nfds: number;
  fds: string[];
  payload_len: number;
  payload: string;
  payload_truncated?: boolean;
  /** `vfu trace`: the message went over the twin socket. */
  twin?: boolean;
}
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
