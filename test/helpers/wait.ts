// Waiting for a condition in tests: poll the state itself, never sleep for
// a guessed time.
/** Waits until `pred()` holds (polling every `every` ms), rejecting after `ms` with `what`. */
export async function until(pred: () => boolean, ms = 10_000, what = 'condition', every = 5): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

/**
 * A few turns of the event loop: every poll event that is ready now (a
 * readable or writable socket) has been dispatched when this resolves.
 */
export async function turns(n = 3): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
}
