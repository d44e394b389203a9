/** Size helpers shared by the backends and the spec parser. */

/** The unit every block size is a multiple of (virtio-blk sectors). */
export const SECTOR_SIZE = 512;

/** Throws a RangeError unless `size` is a non-negative multiple of 512 that a JavaScript number holds exactly. */
export function checkBackendSize(size: number, what: string): void {
  if (!Number.isSafeInteger(size) || size < 0 || size % SECTOR_SIZE !== 0) {
    throw new RangeError(`${what}: size ${size} is not a non-negative multiple of ${SECTOR_SIZE} bytes`);
  }
}

const UNITS: Record<string, number> = {
  '': 1,
  k: 2 ** 10,
  m: 2 ** 20,
  g: 2 ** 30,
  t: 2 ** 40,
  p: 2 ** 50,
};

/**
 * Parse a size with an optional binary suffix: 512, 4K, 4k, 4KiB, 1M, 1MiB, 1G, 1T, 1P. A plain number is bytes.
 * Returns null when `text` is not such a size or the value does not fit in a JavaScript number exactly.
 */
export function parseSize(text: string): number | null {
  const match = /^(\d+)\s*(?:([kmgtp])(?:ib)?)?$/i.exec(text.trim());
  if (match === null) return null;
  const value = Number(match[1]) * (UNITS[(match[2] ?? '').toLowerCase()] ?? Number.NaN);
  return Number.isSafeInteger(value) ? value : null;
}

/** 1073741824 -> '1 GiB', 1536 -> '1536 B': the largest binary unit that divides the size. */
export function formatSize(bytes: number): string {
  for (const [unit, name] of [
    [2 ** 40, 'TiB'],
    [2 ** 30, 'GiB'],
    [2 ** 20, 'MiB'],
    [2 ** 10, 'KiB'],
  ] as const) {
    if (bytes >= unit && bytes % unit === 0) return `${bytes / unit} ${name}`;
  }
  return `${bytes} B`;
}
