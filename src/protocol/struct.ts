// Declarative little-endian packed structs: each wire struct is declared once
// (field names, kinds, hence offsets and size) and read/written from that
// declaration by server and client alike.  u64 fields are bigints so that
// every value on the wire survives a decode/encode round trip exactly.
//
// vfio-user is defined in host byte order; like every known peer we run on
// little-endian hosts only.

export type FieldKind = 'u8' | 'u16' | 'u32' | 'i32' | 'u64';
type JsOf<K extends FieldKind> = K extends 'u64' ? bigint : number;
export type Fields = Readonly<Record<string, FieldKind>>;
export type ValueOf<F extends Fields> = { [K in keyof F]: JsOf<F[K]> };

const SIZES: Record<FieldKind, number> = { u8: 1, u16: 2, u32: 4, i32: 4, u64: 8 };

export interface Struct<F extends Fields> {
  readonly name: string;
  /** Size in bytes (packed). */
  readonly size: number;
  /** Byte offset of every field. */
  readonly off: { readonly [K in keyof F]: number };
  readonly fields: F;
  /** Reads the struct at `at`; throws RangeError when the buffer is short. */
  read(buf: Buffer, at?: number): ValueOf<F>;
  /** Writes the struct at `at`. */
  write(buf: Buffer, value: ValueOf<F>, at?: number): void;
  /** A new buffer holding just this struct. */
  encode(value: ValueOf<F>): Buffer;
}

function readField(buf: Buffer, kind: FieldKind, at: number): number | bigint {
  switch (kind) {
    case 'u8':
      return buf.readUInt8(at);
    case 'u16':
      return buf.readUInt16LE(at);
    case 'u32':
      return buf.readUInt32LE(at);
    case 'i32':
      return buf.readInt32LE(at);
    case 'u64':
      return buf.readBigUInt64LE(at);
  }
}

function writeField(buf: Buffer, kind: FieldKind, at: number, v: number | bigint): void {
  switch (kind) {
    case 'u8':
      buf.writeUInt8(Number(v) & 0xff, at);
      return;
    case 'u16':
      buf.writeUInt16LE(Number(v) & 0xffff, at);
      return;
    case 'u32':
      buf.writeUInt32LE(Number(v) >>> 0, at);
      return;
    case 'i32':
      buf.writeInt32LE(Number(v) | 0, at);
      return;
    case 'u64':
      buf.writeBigUInt64LE(BigInt.asUintN(64, BigInt(v)), at);
      return;
  }
}

export function defineStruct<const F extends Fields>(name: string, fields: F): Struct<F> {
  const names = Object.keys(fields) as (keyof F & string)[];
  const off = {} as Record<keyof F, number>;
  let size = 0;
  for (const n of names) {
    off[n] = size;
    size += SIZES[fields[n]!];
  }
  const layout = names.map((n) => [n, fields[n]!, off[n]] as const);
  const s: Struct<F> = {
    name,
    size,
    off,
    fields,
    read(buf: Buffer, at = 0): ValueOf<F> {
      if (at + size > buf.length) {
        throw new RangeError(`${name}: need ${size} bytes at ${at}, have ${buf.length - at}`);
      }
      const v = {} as Record<string, number | bigint>;
      for (const [n, k, o] of layout) v[n] = readField(buf, k, at + o);
      return v as ValueOf<F>;
    },
    write(buf: Buffer, value: ValueOf<F>, at = 0): void {
      for (const [n, k, o] of layout) writeField(buf, k, at + o, value[n] as number | bigint);
    },
    encode(value: ValueOf<F>): Buffer {
      const b = Buffer.alloc(size);
      s.write(b, value, 0);
      return b;
    },
  };
  return s;
}

/** The JavaScript value of a declared struct (its fields, nothing else). */
export type StructValue<S> = S extends Struct<infer F> ? ValueOf<F> : never;

/** A u64 as a number, or NaN when it does not fit exactly. */
export function u64ToNumber(v: bigint): number {
  return v <= 9007199254740991n ? Number(v) : Number.NaN;
}
