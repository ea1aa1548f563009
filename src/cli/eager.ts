// V8's compile policy for processes that take part in a migration's
// downtime window.  By default V8 compiles a function when it is first
// called, and runs it in its interpreter until it is found hot.  The
// window runs code that ran only a few times before (the transitions, the
// last round, the resume), so in a fresh process it is spent parsing,
// compiling and interpreting: on one CPU, 2.1 ms where the same migration
// with eager compilation takes 1.2 (BENCHMARKS.md, "Downtime, taken
// apart").  `vfu serve`, `migrate`, `receive` and `demo` set these before
// loading anything else; startup costs about 80 ms and 10 MB more.  The
// library itself sets nothing: a VMM built on it decides for its process.
import { setFlagsFromString } from 'node:v8';

/**
 * V8 flags that move compilation out of the window: every function
 * compiled when its script loads (not at its first call), straight to
 * baseline code (not the interpreter first).
 */
export const EAGER_V8_FLAGS: readonly string[] = ['--no-lazy', '--always-sparkplug'];

/**
 * Sets {@link EAGER_V8_FLAGS} for the rest of this process.  Only code
 * compiled afterwards is affected, so call it before importing (dynamically)
 * the modules that should be compiled eagerly.
 */
export function compileEagerly(): void {
  for (const f of EAGER_V8_FLAGS) setFlagsFromString(f);
}
