/**
 * Guest memory of a vhost-user device: the regions of the VMM's SET_MEM_TABLE, each an fd mapped MAP_SHARED
 * from its mmap offset. Descriptor addresses are guest-physical and go through view()/gather(); ring addresses
 * are the VMM's own user addresses (SET_VRING_ADDR) and are turned into guest-physical ones with
 * userToGuest() through the same table.
 *
 * Every table is checked whole before anything is mapped: at most `maxRegions`, no zero or oversized region,
 * none overlapping another (in guest-physical or in user addresses), each inside its fd (offset + size <= the
 * fd's size). Every access is bounds-checked: a range outside all regions, or straddling two of them in view(),
 * is a GuestMemoryError for this device only.
 *
 * Replacing the table (a new SET_MEM_TABLE, a reset) must not unmap memory a request in flight still writes into
 * (a backend read in the thread pool holds a raw pointer): as IotlbMemory (./iotlb-memory.ts), work that holds
 * views pins the generation it took them in, and a dropped table's mappings are unmapped only when no pin of a
 * generation in which they were current is left.
 */
import { closeSync, fstatSync } from 'node:fs';

import { GuestMemoryError, type Access, type GuestMemory } from './guest-memory.js';
import type { MemoryPins } from './iotlb-memory.js';
import { MAP_SHARED, PROT_READ, PROT_WRITE, type SysBinding } from '../sys/binding.js';

const PAGE_SIZE = 4096;
/** The largest region accepted (1 TiB: far above any VM here, far below 2^53). */
export const REGION_MAX_SIZE = 2 ** 40;

/** One region as the VMM describes it (numbers: everything is checked below 2^53 first). */
export interface RegionSpec {
  guestPhysAddr: number;
  size: number;
  userAddr: number;
  mmapOffset: number;
  fd: number;
}

interface Region {
  readonly gpa: number;
  readonly last: number;
  readonly user: number;
  readonly mapping: ArrayBuffer;
  /** Byte offset in `mapping` of guest address `gpa`. */
  readonly base: number;
}

interface Table {
  readonly regions: Region[];
  readonly mappedAt: number;
}

/** A table refused as a whole (nothing mapped, the fds untouched). */
export class RegionTableError extends GuestMemoryError {}

export class RegionMemory implements GuestMemory, MemoryPins {
  #generation = 0;
  #table: Table = { regions: [], mappedAt: 0 };
  #pinsNow = 0;
  readonly #pinsOld = new Map<number, number>();
  #retired: { table: Table; retiredAt: number }[] = [];
  #drainWaiters: (() => void)[] = [];
  readonly #binding: SysBinding;
  readonly #fdSize: (fd: number) => number;

  constructor(
    binding: SysBinding,
    readonly maxRegions = 8,
    fdSize: (fd: number) => number = (fd) => fstatSync(fd).size,
  ) {
    this.#binding = binding;
    this.#fdSize = fdSize;
  }

  get generation(): number {
    return this.#generation;
  }

  get mappedRegions(): number {
    return this.#table.regions.length;
  }

  get retiredRegions(): number {
    let n = 0;
    for (const r of this.#retired) n += r.table.regions.length;
    return n;
  }

  /**
   * Check `specs` and map them as the new table (the old one retires; see the top). Throws RegionTableError
   * (nothing changed) when the table is not acceptable or a mapping fails. The fds are not closed here.
   */
  setTable(specs: readonly RegionSpec[]): void {
    if (specs.length > this.maxRegions)
      throw new RegionTableError(`${specs.length} memory regions (at most ${this.maxRegions})`, 0, 0);
    for (const s of specs) checkSpec(s, this.#fdSize);
    checkDisjoint(specs, (s) => s.guestPhysAddr, 'guest-physical');
    checkDisjoint(specs, (s) => s.userAddr, 'user');
    const regions: Region[] = [];
    try {
      for (const s of specs) {
        const aligned = s.mmapOffset - (s.mmapOffset % PAGE_SIZE);
        const base = s.mmapOffset - aligned;
        let mapping: ArrayBuffer;
        try {
          mapping = this.#binding.mmap(s.fd, base + s.size, PROT_READ | PROT_WRITE, MAP_SHARED, aligned);
        } catch (err) {
          throw new RegionTableError(
            `mmap of the region at guest 0x${s.guestPhysAddr.toString(16)} failed: ${(err as Error).message}`,
            s.guestPhysAddr,
            s.size,
          );
        }
        regions.push({
          gpa: s.guestPhysAddr,
          last: s.guestPhysAddr + s.size - 1,
          user: s.userAddr,
          mapping,
          base,
        });
      }
    } catch (err) {
      for (const r of regions) this.#binding.munmap(r.mapping);
      throw err;
    }
    regions.sort((a, b) => a.gpa - b.gpa);
    this.#replace(regions);
  }

  /** Drop every region (disconnect, reset). */
  clear(): void {
    this.#replace([]);
  }

  /** invalidateAll for the engine: the same as clear(). */
  invalidateAll(): void {
    this.clear();
  }

  /** A VMM user address (a ring address) as a guest-physical one, checked to hold `len` bytes in one region. */
  userToGuest(user: number, len: number): number {
    checkRange(user, len);
    for (const r of this.#table.regions) {
      const size = r.last - r.gpa + 1;
      if (user >= r.user && user - r.user < size) {
        if (user - r.user + len > size)
          throw new GuestMemoryError(
            `user range 0x${user.toString(16)}+${len} crosses a region end`,
            user,
            len,
          );
        return r.gpa + (user - r.user);
      }
    }
    throw new GuestMemoryError(`user address 0x${user.toString(16)} is in no memory region`, user, len);
  }

  pin(): number {
    this.#pinsNow++;
    return this.#generation;
  }

  unpin(generation: number): void {
    if (generation === this.#generation) {
      if (this.#pinsNow > 0) this.#pinsNow--;
      return;
    }
    const n = this.#pinsOld.get(generation);
    if (n === undefined) return;
    if (n > 1) this.#pinsOld.set(generation, n - 1);
    else {
      this.#pinsOld.delete(generation);
      this.#sweep();
    }
  }

  drained(): Promise<void> {
    if (this.#retired.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.#drainWaiters.push(resolve));
  }

  view(addr: number, len: number, _access: Access): Uint8Array {
    checkRange(addr, len);
    const r = this.#find(addr);
    if (len === 0) return new Uint8Array(0);
    if (addr + len - 1 > r.last)
      throw new GuestMemoryError(
        `range 0x${addr.toString(16)}+${len} crosses the end of a memory region (0x${r.last.toString(16)})`,
        addr,
        len,
      );
    return new Uint8Array(r.mapping, r.base + (addr - r.gpa), len);
  }

  gather(addr: number, len: number, _access: Access, out: Uint8Array[]): void {
    checkRange(addr, len);
    if (len === 0) return;
    const first = this.#find(addr);
    if (addr + len - 1 <= first.last) {
      // One region holds it all (the usual case): no list of parts to build first.
      out.push(new Uint8Array(first.mapping, first.base + (addr - first.gpa), len));
      return;
    }
    const parts: Uint8Array[] = [];
    let cur = addr;
    let left = len;
    while (left > 0) {
      const r = this.#find(cur);
      const n = Math.min(left, r.last - cur + 1);
      parts.push(new Uint8Array(r.mapping, r.base + (cur - r.gpa), n));
      cur += n;
      left -= n;
    }
    for (const p of parts) out.push(p);
  }

  #find(addr: number): Region {
    const regions = this.#table.regions;
    let lo = 0;
    let hi = regions.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const r = regions[mid]!;
      if (addr < r.gpa) hi = mid - 1;
      else if (addr > r.last) lo = mid + 1;
      else return r;
    }
    throw new GuestMemoryError(`guest address 0x${addr.toString(16)} is in no memory region`, addr, 1);
  }

  #replace(regions: Region[]): void {
    const old = this.#table;
    const retiredAt = this.#generation;
    if (this.#pinsNow > 0) this.#pinsOld.set(this.#generation, this.#pinsNow);
    this.#pinsNow = 0;
    this.#generation++;
    this.#table = { regions, mappedAt: this.#generation };
    if (old.regions.length > 0) {
      this.#retired.push({ table: old, retiredAt });
      this.#sweep();
    }
  }

  #sweep(): void {
    const keep: { table: Table; retiredAt: number }[] = [];
    for (const r of this.#retired) {
      let pinned = false;
      for (const g of this.#pinsOld.keys()) if (g >= r.table.mappedAt && g <= r.retiredAt) pinned = true;
      if (pinned) keep.push(r);
      else for (const region of r.table.regions) this.#binding.munmap(region.mapping);
    }
    this.#retired = keep;
    if (keep.length === 0 && this.#drainWaiters.length > 0) {
      const waiters = this.#drainWaiters;
      this.#drainWaiters = [];
      for (const w of waiters) w();
    }
  }
}

function checkSpec(s: RegionSpec, fdSize: (fd: number) => number): void {
  const at = `region at guest 0x${s.guestPhysAddr.toString(16)}`;
  for (const v of [s.guestPhysAddr, s.size, s.userAddr, s.mmapOffset]) {
    if (!Number.isSafeInteger(v) || v < 0)
      throw new RegionTableError(`${at}: a value is not below 2^53`, 0, 0);
  }
  if (s.size === 0) throw new RegionTableError(`${at}: size 0`, s.guestPhysAddr, 0);
  if (s.size > REGION_MAX_SIZE)
    throw new RegionTableError(`${at}: size ${s.size} is over ${REGION_MAX_SIZE}`, s.guestPhysAddr, s.size);
  if (s.guestPhysAddr + s.size > Number.MAX_SAFE_INTEGER || s.userAddr + s.size > Number.MAX_SAFE_INTEGER)
    throw new RegionTableError(`${at}: the range overflows`, s.guestPhysAddr, s.size);
  let size: number;
  try {
    size = fdSize(s.fd);
  } catch (err) {
    throw new RegionTableError(
      `${at}: its fd cannot be examined (${(err as Error).message})`,
      s.guestPhysAddr,
      0,
    );
  }
  if (s.mmapOffset + s.size > size)
    throw new RegionTableError(
      `${at}: offset ${s.mmapOffset} + size ${s.size} is past the end of its fd (${size} bytes)`,
      s.guestPhysAddr,
      s.size,
    );
}

function checkDisjoint(specs: readonly RegionSpec[], start: (s: RegionSpec) => number, what: string): void {
  const sorted = [...specs].sort((a, b) => start(a) - start(b));
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    if (start(prev) + prev.size > start(sorted[i]!))
      throw new RegionTableError(
        `memory regions overlap in ${what} addresses (0x${start(prev).toString(16)}+${prev.size} and 0x${start(sorted[i]!).toString(16)})`,
        start(prev),
        prev.size,
      );
  }
}

function checkRange(addr: number, len: number): void {
  if (!Number.isSafeInteger(addr) || addr < 0 || !Number.isSafeInteger(len) || len < 0)
    throw new GuestMemoryError(`invalid guest range ${addr}+${len}`, addr, len);
  if (addr + len > Number.MAX_SAFE_INTEGER)
    throw new GuestMemoryError(`guest range 0x${addr.toString(16)}+${len} overflows`, addr, len);
}

/** Close each region fd (the caller's once setTable returned or threw). */
export function closeRegionFds(
  specs: readonly RegionSpec[],
  closeFd: (fd: number) => void = closeSync,
): void {
  for (const s of specs) {
    try {
      closeFd(s.fd);
    } catch {
      // already closed
    }
  }
}
