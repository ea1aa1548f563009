// Command-line option values, validated with the option's name in the error.

/**
 * An integer option: decimal (or 0x hex), at least `min`.  `--rounds abc`
 * says "--rounds: expected an integer ≥ 0, got 'abc'" instead of going on
 * with NaN.
 */
export function intOption(name: string, value: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const v = value.trim();
  const n = /^0x[0-9a-f]+$/i.test(v) ? Number.parseInt(v, 16) : /^\d+$/.test(v) ? Number(v) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `≥ ${min}` : `in [${min}, ${max}]`;
    throw new Error(`${name}: expected an integer ${range}, got '${value}'`);
  }
  return n;
}
