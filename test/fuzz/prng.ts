// A small seeded PRNG (xoshiro128**) and the helpers the fuzz generators use.
// Every case is generated from (seed, case index) alone, so any case can be
// replayed on its own: `npm run fuzz -- --seed S --only N`.

export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number, stream = 0) {
    // splitmix32 to spread (seed, stream) over the state
    let x = (seed ^ Math.imul(stream + 1, 0x9e3779b9)) >>> 0;
    const next = (): number => {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.a = next();
    this.b = next();
    this.c = next();
    this.d = next() || 1;
  }

  /** 32 random bits. */
  u32(): number {
    const r = Math.imul(rotl(Math.imul(this.b, 5) >>> 0, 7), 9) >>> 0;
    const t = (this.b << 9) >>> 0;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return r;
  }

  /** Integer in [0, n). */
  int(n: number): number {
    if (n <= 0) return 0;
    if (n <= 0x100000000) return Math.floor((this.u32() / 0x100000000) * n);
    return Math.floor((this.u32() * 0x100000000 + this.u32()) / 2 ** 64 * n);
  }

  /** Integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  bool(p = 0.5): boolean {
    return this.u32() / 0x100000000 < p;
  }

  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }

  /** Picks by weight: [[weight, value], ...]. */
  weighted<T>(xs: readonly (readonly [number, T])[]): T {
    const total = xs.reduce((n, [w]) => n + w, 0);
    let r = this.int(total);
    for (const [w, v] of xs) {
      if (r < w) return v;
      r -= w;
    }
    return xs[xs.length - 1]![1];
  }

  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i += 4) {
      const v = this.u32();
      for (let k = 0; k < 4 && i + k < n; k++) b[i + k] = (v >>> (8 * k)) & 0xff;
    }
    return b;
  }

  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** Values that break arithmetic: around 0, 2^31, 2^32, 2^53, 2^63, 2^64. */
export const INTERESTING_U32 = [
  0, 1, 2, 7, 8, 15, 16, 17, 31, 32, 255, 4095, 4096, 4097, 0xffff, 0x10000, 0x100000, 0x100001, 0x7fffffff, 0x80000000, 0x80000001,
  0xfffffff0, 0xfffffffe, 0xffffffff,
] as const;

export const INTERESTING_U64: readonly bigint[] = [
  0n, 1n, 0xfffn, 0x1000n, 0x1001n, 0xffffffffn, 0x100000000n, 0x100000001n, 0x100000000n - 0x1000n, 2n ** 52n, 2n ** 53n - 1n, 2n ** 53n,
  2n ** 53n + 1n, 2n ** 63n - 1n, 2n ** 63n, 2n ** 64n - 0x1000n, 2n ** 64n - 2n, 2n ** 64n - 1n,
];
