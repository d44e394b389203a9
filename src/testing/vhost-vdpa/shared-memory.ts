/**
 * SharedGuestMemory: the "guest RAM" of a userspace vhost-vdpa driver. vhost-vdpa hands a VDUSE daemon the
 * driver's memory by file (UPDATE_IOTLB, then VDUSE_IOTLB_GET_FD returns the file behind the mapping), so the
 * memory must be a MAP_SHARED mapping of a file: here a memfd, grown with fallocate and mapped read-write.
 * Anonymous memory would be skipped by the kernel without an error.
 *
 * The driver's side of it is a HeapMemory whose one region sits at the IOVA the device is told (`iova`), over the
 * mapping's ArrayBuffer, so that the MockDriver's ring code runs over it unchanged. `uaddr` is the mapping's
 * virtual address in this process, which the IOTLB messages carry; the addon's mmap does not return it, so it is
 * read from /proc/self/maps (the memfd's name is unique per instance).
 */
import { closeSync, readFileSync } from 'node:fs';

import { HeapMemory } from '../../memory/heap-memory.js';
import { MAP_SHARED, MFD_CLOEXEC, PROT_READ, PROT_WRITE, type SysBinding } from '../../sys/binding.js';
import { GuestAllocator } from '../mock-driver.js';

let serial = 0;

export interface SharedGuestMemoryOptions {
  /** Bytes (rounded up to 4 KiB). */
  size: number;
  /** The IOVA the device sees the first byte at (4 KiB aligned). */
  iova: number;
  /** Name tag of the memfd (shows in /proc/PID/maps as /memfd:TAG-PID-N). */
  tag?: string;
  /** Host hooks, for unit tests over a fake binding. */
  host?: MemoryHost;
}

/** Where a mapping is and how fds are closed: /proc/self/maps and fs.closeSync, unless a test says otherwise. */
export interface MemoryHost {
  /** The virtual address of the mapping of memfd `name` that is `size` bytes long, or null. */
  locate(name: string, size: number): number | null;
  closeFd(fd: number): void;
}

const REAL_HOST: MemoryHost = {
  locate: (name, size) => findMapping(`/memfd:${name}`, size),
  closeFd: (fd) => closeSync(fd),
};

/** One memfd-backed MAP_SHARED mapping. */
export interface SharedMapping {
  readonly fd: number;
  readonly buffer: ArrayBuffer;
  /** Virtual address of the mapping in this process. */
  readonly uaddr: number;
  readonly size: number;
  readonly name: string;
}

/** Map a fresh memfd of `size` bytes MAP_SHARED read-write and find its address. */
export function mapSharedMemfd(
  binding: SysBinding,
  size: number,
  tag = 'vhost-vdpa',
  host: MemoryHost = REAL_HOST,
): SharedMapping {
  const bytes = Math.ceil(size / 4096) * 4096;
  const name = `${tag}-${process.pid}-${++serial}`;
  const fd = binding.memfdCreate(name, MFD_CLOEXEC);
  try {
    binding.fallocate(fd, 0, 0, bytes);
    const buffer = binding.mmap(fd, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, 0);
    const uaddr = host.locate(name, bytes);
    if (uaddr === null) {
      binding.munmap(buffer);
      throw new Error(`mapping of memfd ${name} not found in /proc/self/maps`);
    }
    return { fd, buffer, uaddr, size: bytes, name };
  } catch (e) {
    host.closeFd(fd);
    throw e;
  }
}

/** Unmap and close a mapping from mapSharedMemfd(). */
export function unmapShared(binding: SysBinding, m: SharedMapping, host: MemoryHost = REAL_HOST): void {
  binding.munmap(m.buffer);
  host.closeFd(m.fd);
}

/** The start address of the mapping of `path` that is exactly `size` bytes long, or null. */
export function findMapping(path: string, size: number, maps?: string): number | null {
  const text = maps ?? readFileSync('/proc/self/maps', 'utf8');
  for (const line of text.split('\n')) {
    // 7f3a00000000-7f3a01000000 rw-s 00000000 00:01 42   /memfd:name (deleted)
    const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s+(.*)$/.exec(line);
    if (m === null) continue;
    const file = (m[3] ?? '').replace(/ \(deleted\)$/, '');
    if (file !== path) continue;
    const start = parseInt(m[1] as string, 16);
    const end = parseInt(m[2] as string, 16);
    if (end - start === size) return start;
  }
  return null;
}

export class SharedGuestMemory {
  /** The driver's view: one region at `iova` over the current mapping. */
  readonly memory: HeapMemory;
  /** Allocates rings and buffers inside the region (what the MockDrivers share). */
  readonly allocator: GuestAllocator;
  readonly iova: number;
  readonly size: number;
  #mapping: SharedMapping;
  readonly #binding: SysBinding;
  readonly #tag: string;
  readonly #host: MemoryHost;
  /** Mappings replaced by moveTo(), kept mapped until close() (a daemon that still used them would be seen). */
  readonly #retired: SharedMapping[] = [];

  constructor(binding: SysBinding, options: SharedGuestMemoryOptions) {
    if (!Number.isSafeInteger(options.iova) || options.iova < 0 || options.iova % 4096 !== 0) {
      throw new RangeError(`iova must be a 4 KiB aligned address, got ${options.iova}`);
    }
    this.#binding = binding;
    this.#tag = options.tag ?? 'vhost-vdpa';
    this.#host = options.host ?? REAL_HOST;
    this.#mapping = mapSharedMemfd(binding, options.size, this.#tag, this.#host);
    this.size = this.#mapping.size;
    this.iova = options.iova;
    this.memory = new HeapMemory([{ addr: this.iova, buffer: this.#mapping.buffer }]);
    this.allocator = new GuestAllocator(this.memory, this.iova, this.size);
  }

  /** The mapping that backs the IOVA range now. */
  get mapping(): SharedMapping {
    return this.#mapping;
  }

  /** The user address of IOVA `iova` (for an IOTLB update). */
  uaddrOf(iova: number): number {
    return this.#mapping.uaddr + (iova - this.iova);
  }

  /**
   * Move the memory to a new memfd: copy every byte and point the driver's view at the copy. The old mapping
   * stays mapped, unchanged, until close(): the device may go on using it until it is told (IOTLB invalidate +
   * update to the new uaddr), as a VMM's old memory stays valid until then. Once it is told, poison(old) fills
   * the old mapping, so that a device still using it reads poison and writes where nobody looks. Returns the
   * old mapping.
   */
  moveTo(): SharedMapping {
    const next = mapSharedMemfd(this.#binding, this.size, this.#tag, this.#host);
    new Uint8Array(next.buffer).set(new Uint8Array(this.#mapping.buffer));
    const old = this.#mapping;
    this.#mapping = next;
    this.memory.removeRegion(this.iova);
    this.memory.addRegion({ addr: this.iova, buffer: next.buffer });
    this.#retired.push(old);
    return old;
  }

  /** Fill `old`, a mapping moveTo() replaced, with `value`. */
  poison(old: SharedMapping, value = 0xa5): void {
    if (!this.#retired.includes(old)) throw new RangeError('poison: not a mapping replaced by moveTo()');
    new Uint8Array(old.buffer).fill(value);
  }

  close(): void {
    for (const m of [...this.#retired, this.#mapping]) unmapShared(this.#binding, m, this.#host);
    this.#retired.length = 0;
  }
}
