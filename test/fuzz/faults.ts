// The fault counters shared by the fuzz harnesses and the supervisor that merges them.

/** What went wrong, counted the same way by every harness and the supervisor. */
export const FAULT_COUNTERS = [
  'crashes',
  'hangs',
  'fdsLeaked',
  'mapsLeaked',
  'stateViolations',
  'desyncs',
  'disconnects',
  /** Resynchronised by sending a skipped body / by reconnecting. */
  'resyncByBody',
  'resyncByReconnect',
] as const;
export type FaultCounts = Record<(typeof FAULT_COUNTERS)[number], number>;

export function emptyFaults(): FaultCounts {
  return Object.fromEntries(FAULT_COUNTERS.map((k) => [k, 0])) as FaultCounts;
}
