// A full memory barrier for memory shared with another process (a
// guest's, through a mapping): x86 lets a load pass an earlier store to
// another address, which breaks "store mine, then read theirs" handshakes
// such as NVMe's shadow doorbells and EventIdx.  A locked instruction
// orders both; Atomics on any word gives one.

const word = new Int32Array(new SharedArrayBuffer(4));

/** Orders every load and store before it against every one after it. */
export function memoryBarrier(): void {
  Atomics.add(word, 0, 1);
}
