/**
 * A small, data-driven description of C struct layouts (x86_64, little-endian) and the generic codec that every
 * uAPI struct in this directory uses. A layout is plain data: the header test (test/unit/uapi/headers.test.ts)
 * compares each table against gcc's `offsetof`/`sizeof` on the real kernel headers.
 *
 * Field types and their JavaScript representation:
 * - `u8`, `u16`, `u32`, `i32`: number.
 * - `u64`: bigint (feature words and other values that may exceed 2^53).
 * - `addr`: a u64 holding an address, IOVA, length or offset, as a number. Decoding throws a RangeError when the
 *   value is 2^53 or more (it cannot be represented exactly); encoding rejects non-safe integers.
 * - `bytes`: a fixed-size byte array, as a Uint8Array (decode copies; encode copies and zero-fills the rest).
 * - `cstr`: a fixed-size NUL-terminated char array, as a string (encode requires room for the NUL).
 * - `zero`: reserved or padding bytes. Not part of the decoded object; always written as zero.
 */

export type FieldType = 'u8' | 'u16' | 'u32' | 'i32' | 'u64' | 'addr' | 'bytes' | 'cstr' | 'zero';

export interface FieldSpec {
  readonly offset: number;
  readonly size: number;
  readonly type: FieldType;
  /**
   * The C member designator when it differs from the key (e.g. `geometry.cylinders`); `null` for padding that
   * has no C member (alignment holes, tail padding).
   */
  readonly c?: string | null;
}

export interface StructLayout {
  /** The C struct name, without `struct`. */
  readonly name: string;
  readonly size: number;
  readonly fields: { readonly [key: string]: FieldSpec };
}

type JsType<T extends FieldType> = T extends 'u64'
  ? bigint
  : T extends 'bytes'
    ? Uint8Array
    : T extends 'cstr'
      ? string
      : number;

type ValueKeys<L extends StructLayout> = {
  [K in keyof L['fields']]: L['fields'][K]['type'] extends 'zero' ? never : K;
}[keyof L['fields']];

/** The decoded form of a struct: one property per non-reserved field. */
export type StructValue<L extends StructLayout> = {
  -readonly [K in ValueKeys<L>]: JsType<L['fields'][K]['type']>;
};

/** Helper that keeps the literal field types of a layout while checking its shape. */
export function defineStruct<const L extends StructLayout>(layout: L): L {
  return layout;
}

const TWO_POW_53 = 2n ** 53n;
const U64_MAX = (1n << 64n) - 1n;

export function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Reads a little-endian u64 as a number; RangeError if it is 2^53 or more. */
export function readAddr(view: DataView, offset: number, what = 'u64 value'): number {
  const v = view.getBigUint64(offset, true);
  if (v >= TWO_POW_53) {
    throw new RangeError(`${what} 0x${v.toString(16)} does not fit in a JavaScript number (>= 2^53)`);
  }
  return Number(v);
}

/** Writes a non-negative safe integer as a little-endian u64. */
export function writeAddr(view: DataView, offset: number, value: number, what = 'u64 value'): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`${what} must be a non-negative safe integer, got ${value}`);
  }
  view.setBigUint64(offset, BigInt(value), true);
}

function checkInt(key: string, value: number, min: number, max: number): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`field ${key} must be an integer in [${min}, ${max}], got ${value}`);
  }
}

function readField(view: DataView, base: number, key: string, f: FieldSpec): unknown {
  const o = base + f.offset;
  switch (f.type) {
    case 'u8':
      return view.getUint8(o);
    case 'u16':
      return view.getUint16(o, true);
    case 'u32':
      return view.getUint32(o, true);
    case 'i32':
      return view.getInt32(o, true);
    case 'u64':
      return view.getBigUint64(o, true);
    case 'addr':
      return readAddr(view, o, key);
    case 'bytes':
      return new Uint8Array(view.buffer.slice(view.byteOffset + o, view.byteOffset + o + f.size));
    case 'cstr': {
      const raw = new Uint8Array(view.buffer, view.byteOffset + o, f.size);
      const end = raw.indexOf(0);
      return new TextDecoder().decode(raw.subarray(0, end < 0 ? f.size : end));
    }
    case 'zero':
      return undefined;
  }
}

function writeField(view: DataView, base: number, key: string, f: FieldSpec, value: unknown): void {
  const o = base + f.offset;
  switch (f.type) {
    case 'u8':
      checkInt(key, value as number, 0, 0xff);
      view.setUint8(o, value as number);
      return;
    case 'u16':
      checkInt(key, value as number, 0, 0xffff);
      view.setUint16(o, value as number, true);
      return;
    case 'u32':
      checkInt(key, value as number, 0, 0xffffffff);
      view.setUint32(o, value as number, true);
      return;
    case 'i32':
      checkInt(key, value as number, -0x80000000, 0x7fffffff);
      view.setInt32(o, value as number, true);
      return;
    case 'u64': {
      const v = value as bigint;
      if (typeof v !== 'bigint' || v < 0n || v > U64_MAX)
        throw new RangeError(`field ${key} must be a u64 bigint`);
      view.setBigUint64(o, v, true);
      return;
    }
    case 'addr':
      writeAddr(view, o, value as number, key);
      return;
    case 'bytes': {
      const b = value as Uint8Array;
      if (b.length > f.size)
        throw new RangeError(`field ${key} holds at most ${f.size} bytes, got ${b.length}`);
      new Uint8Array(view.buffer, view.byteOffset + o, f.size).fill(0).set(b);
      return;
    }
    case 'cstr': {
      const b = new TextEncoder().encode(value as string);
      if (b.length >= f.size || b.includes(0)) {
        throw new RangeError(`field ${key} must be at most ${f.size - 1} bytes with no NUL, got ${b.length}`);
      }
      new Uint8Array(view.buffer, view.byteOffset + o, f.size).fill(0).set(b);
      return;
    }
    case 'zero':
      new Uint8Array(view.buffer, view.byteOffset + o, f.size).fill(0);
      return;
  }
}

/**
 * Decodes `layout` from `bytes` at `offset`. Throws RangeError if the buffer is too short, or if an `addr` field
 * is 2^53 or more.
 */
export function decodeStruct<L extends StructLayout>(
  layout: L,
  bytes: Uint8Array,
  offset = 0,
): StructValue<L> {
  if (bytes.byteLength - offset < layout.size || offset < 0) {
    throw new RangeError(`struct ${layout.name} needs ${layout.size} bytes at offset ${offset}`);
  }
  const view = viewOf(bytes);
  const out: Record<string, unknown> = {};
  for (const [key, f] of Object.entries(layout.fields)) {
    if (f.type !== 'zero') out[key] = readField(view, offset, key, f);
  }
  return out as StructValue<L>;
}

/**
 * Encodes `value` into `target` at `offset` (or into a new zero-filled buffer of `layout.size`). All bytes of the
 * struct not covered by a value field (reserved, padding) are set to zero. Missing fields are written as zero.
 */
export function encodeStruct<L extends StructLayout>(
  layout: L,
  value: Partial<StructValue<L>>,
  target?: Uint8Array,
  offset = 0,
): Uint8Array {
  const out = target ?? new Uint8Array(layout.size + offset);
  if (out.byteLength - offset < layout.size || offset < 0) {
    throw new RangeError(`struct ${layout.name} needs ${layout.size} bytes at offset ${offset}`);
  }
  out.fill(0, offset, offset + layout.size);
  const view = viewOf(out);
  const v = value as Record<string, unknown>;
  for (const [key, f] of Object.entries(layout.fields)) {
    if (f.type === 'zero') continue;
    const x = v[key];
    if (x === undefined) continue;
    writeField(view, offset, key, f, x);
  }
  return out;
}
