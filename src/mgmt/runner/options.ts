/**
 * The checks every device type's options share (name, integers in a range, booleans, one of some words), for
 * command-line text ('flag' style: "--mtu must be between 68 and 65535, got 9") and for config/JSON values
 * ('key' style: "config devices[1].mtu: expected an integer 68..65535, got 9"). The caller says how a field is
 * named in messages and which error to throw. Pure: no I/O.
 */

export interface OptionReporter<K extends string = string> {
  /**
   * 'flag': values are command-line text, messages read "--queues must be between 1 and 64, got 0";
   * 'key': values are config/JSON values, messages read "config devices[1].queues: expected an integer 1..64, got 0".
   */
  style: 'flag' | 'key';
  /** How a field is named in messages. */
  label(key: K): string;
  /** The error to throw for a bad field (`message` already starts with the label). */
  error(message: string, key: K): Error;
}

export interface IntegerLimits {
  min: number;
  max: number;
  pow2: boolean;
}

/** A value as a message shows it ("x" for a string, nothing for a missing key). */
export function describeValue(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (typeof value === 'string') return JSON.stringify(value);
  if (Array.isArray(value)) return 'a list';
  if (value === null) return 'null';
  if (typeof value === 'object') return 'an object';
  return String(value);
}

/** The error for field `key`: `flagText` after the label in flag style, `keyText` after "label: " in key style. */
export function optionError<K extends string>(
  r: OptionReporter<K>,
  key: K,
  flagText: string,
  keyText: string,
): Error {
  const label = r.label(key);
  return r.error(r.style === 'flag' ? `${label} ${flagText}` : `${label}: ${keyText}`, key);
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** Letters, digits, '.', '_', '-'; up to 255 bytes; not "control" (the VDUSE control node). */
export function checkDeviceName<K extends string>(value: unknown, key: K, r: OptionReporter<K>): string {
  if (typeof value !== 'string') {
    throw optionError(r, key, 'is required', `expected a device name, got ${describeValue(value)}`);
  }
  if (!NAME_RE.test(value) || Buffer.byteLength(value) > 255 || value === 'control') {
    const text = `"${value}" is not a valid device name (letters, digits, '.', '_', '-'; up to 255 bytes; not "control")`;
    throw optionError(r, key, text, text);
  }
  return value;
}

/** An integer in [min, max] (a power of two when `pow2`): digits on the command line, a number in a config. */
export function checkInteger<K extends string>(
  value: unknown,
  key: K,
  limits: IntegerLimits,
  r: OptionReporter<K>,
): number {
  const { min, max, pow2 } = limits;
  const isPow2 = (n: number): boolean => (n & (n - 1)) === 0;
  if (r.style === 'flag') {
    const text = String(value);
    if (!/^\d+$/.test(text)) throw optionError(r, key, `must be a whole number, got "${text}"`, '');
    const n = Number(text);
    if (n < min || n > max) throw optionError(r, key, `must be between ${min} and ${max}, got ${n}`, '');
    if (pow2 && !isPow2(n)) throw optionError(r, key, `must be a power of two, got ${n}`, '');
    return n;
  }
  const ok = typeof value === 'number' && Number.isInteger(value) && value >= min && value <= max;
  if (!ok || (pow2 && !isPow2(value))) {
    throw optionError(
      r,
      key,
      '',
      `expected ${pow2 ? 'a power of two' : 'an integer'} ${min}..${max}, got ${describeValue(value)}`,
    );
  }
  return value;
}

/** true or false (a flag's presence on the command line, a boolean in a config); `fallback` when absent. */
export function checkBoolean<K extends string>(
  value: unknown,
  key: K,
  fallback: boolean,
  r: OptionReporter<K>,
): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') {
    throw optionError(r, key, 'must be true or false', `expected true or false, got ${describeValue(value)}`);
  }
  return value;
}

/** One of `words` ("virtio-vdpa", "vhost-vdpa"). */
export function checkWord<K extends string, W extends string>(
  value: unknown,
  key: K,
  words: readonly W[],
  r: OptionReporter<K>,
): W {
  if (typeof value === 'string' && (words as readonly string[]).includes(value)) return value as W;
  const list = words.length === 2 ? `${words[0]} or ${words[1]}` : words.join(', ');
  throw optionError(
    r,
    key,
    `must be ${list}, got "${String(value)}"`,
    `expected ${words.map((w) => `"${w}"`).join(' or ')}, got ${describeValue(value)}`,
  );
}
