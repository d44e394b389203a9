/** What the devices' option checks share. A bad value is the caller's `fail(message)` (a UsageError with the device's code). */

/** `value` (default `fallback`) when it is an integer in [min, max]; else throws fail(...). */
export function integerIn(
  name: string,
  value: number | undefined,
  fallback: number,
  min: number,
  max: number,
  fail: (message: string) => Error,
): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < min || value > max) {
    throw fail(`${name} must be an integer from ${min} to ${max}, got ${value}`);
  }
  return value;
}
