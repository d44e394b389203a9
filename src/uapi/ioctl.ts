/**
 * ioctl request numbers as built by asm-generic/ioctl.h (x86_64 and most other architectures):
 * `dir << 30 | size << 16 | type << 8 | nr`. Results are UNSIGNED 32-bit numbers; several exceed 0x7fffffff, so
 * pass them to ioctl(2) as unsigned longs.
 */

export const IOC_NRBITS = 8;
export const IOC_TYPEBITS = 8;
export const IOC_SIZEBITS = 14;
export const IOC_DIRBITS = 2;
export const IOC_NRSHIFT = 0;
export const IOC_TYPESHIFT = IOC_NRSHIFT + IOC_NRBITS;
export const IOC_SIZESHIFT = IOC_TYPESHIFT + IOC_TYPEBITS;
export const IOC_DIRSHIFT = IOC_SIZESHIFT + IOC_SIZEBITS;

export const IOC_NONE = 0;
export const IOC_WRITE = 1;
export const IOC_READ = 2;

/** `_IOC(dir, type, nr, size)`; throws RangeError when a part does not fit its bit field. */
export function IOC(dir: number, type: number, nr: number, size: number): number {
  const check = (what: string, v: number, bits: number): void => {
    if (!Number.isInteger(v) || v < 0 || v >= 2 ** bits) {
      throw new RangeError(`ioctl ${what} must fit in ${bits} bits, got ${v}`);
    }
  };
  check('dir', dir, IOC_DIRBITS);
  check('type', type, IOC_TYPEBITS);
  check('nr', nr, IOC_NRBITS);
  check('size', size, IOC_SIZEBITS);
  return (
    ((dir << IOC_DIRSHIFT) | (size << IOC_SIZESHIFT) | (type << IOC_TYPESHIFT) | (nr << IOC_NRSHIFT)) >>> 0
  );
}

/** `_IO(type, nr)`: no argument. */
export function IO(type: number, nr: number): number {
  return IOC(IOC_NONE, type, nr, 0);
}

/** `_IOR(type, nr, T)` with `size = sizeof(T)`: the kernel writes the argument. */
export function IOR(type: number, nr: number, size: number): number {
  return IOC(IOC_READ, type, nr, size);
}

/** `_IOW(type, nr, T)` with `size = sizeof(T)`: the kernel reads the argument. */
export function IOW(type: number, nr: number, size: number): number {
  return IOC(IOC_WRITE, type, nr, size);
}

/** `_IOWR(type, nr, T)` with `size = sizeof(T)`. */
export function IOWR(type: number, nr: number, size: number): number {
  return IOC(IOC_READ | IOC_WRITE, type, nr, size);
}

/** The parts of an ioctl number (`_IOC_DIR`, `_IOC_TYPE`, `_IOC_NR`, `_IOC_SIZE`). */
export function iocDecode(request: number): { dir: number; type: number; nr: number; size: number } {
  return {
    dir: (request >>> IOC_DIRSHIFT) & ((1 << IOC_DIRBITS) - 1),
    type: (request >>> IOC_TYPESHIFT) & ((1 << IOC_TYPEBITS) - 1),
    nr: (request >>> IOC_NRSHIFT) & ((1 << IOC_NRBITS) - 1),
    size: (request >>> IOC_SIZESHIFT) & ((1 << IOC_SIZEBITS) - 1),
  };
}
