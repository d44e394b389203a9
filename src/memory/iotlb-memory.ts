/**
 * Guest memory of a VDUSE device: IOVAs translated through the device's IOTLB.
 *
 * Mappings are fetched lazily: a miss asks the kernel for the IOTLB entry covering the address
 * (VDUSE_IOTLB_GET_FD), mmaps the returned file and caches the region. Regions are dropped on UPDATE_IOTLB
 * (invalidate) and on reset (invalidateAll); dropping detaches every view of the region before the munmap, so a
 * stale view reads as empty instead of faulting. A region is also dropped when a look-up brings an entry that
 * overlaps it (the kernel's map changed without an UPDATE_IOTLB). Every drop bumps `generation`, so that holders
 * of views (ring areas, the queues' ViewCache) take them again and never use a view of a dropped region.
 *
 * A mapping outlives every request that may hold a view of it. A backend read running in the thread pool (or in
 * the kernel) writes through a raw pointer that detaching cannot take back: were the region unmapped under it,
 * the read would land in whatever is mapped at that address next (another region, another device, the heap).
 * So whoever hands views of guest memory to work that outlives the current turn pins the epoch it took
 * them in (pin() / unpin(epoch); the queue engine does it per popped chain). A dropped region leaves the
 * look-up table at once (no new views), but is munmap'd only when no pin of an epoch in which it was mapped is
 * left: a region mapped at epoch m and dropped at epoch r (before the bump) waits for the pins of m..r. Until
 * then it is listed in `retiredRegions`; `drained()` resolves when that list is empty.
 *
 * Pins count in epochs, not in generations: an epoch ends only with an invalidation (invalidate, invalidateAll),
 * which comes between requests. A region found stale by a look-up is dropped in the middle of reading a chain
 * (the chain may already hold a view of it) and bumps `generation` only: the chain's pin, taken in the same epoch,
 * still holds the dropped region. Had the epoch moved there too, the chain would pin the new epoch, which does not
 * cover the dropped region, and it could be unmapped under the chain's views once the older pins are given back.
 */
import { closeSync } from 'node:fs';

import {
  ACCESS_READ,
  ACCESS_WRITE,
  GuestMemoryError,
  type Access,
  type GuestMemory,
} from './guest-memory.js';
import { MAP_SHARED, PROT_READ, PROT_WRITE, type SysBinding } from '../sys/binding.js';

/** x86_64 / arm64 (4K) page size; mmap offsets must be multiples of it. */
const PAGE_SIZE = 4096;

interface Region {
  /** First IOVA of the region. */
  readonly start: number;
  /** Last IOVA of the region (inclusive). */
  readonly last: number;
  /** VDUSE_ACCESS_* bits: what the device may do (1 read, 2 write). */
  readonly perm: number;
  /** The whole mapping (page-aligned); munmap'd on invalidation. */
  readonly mapping: ArrayBuffer;
  /** Byte offset in `mapping` of IOVA `start`. */
  readonly base: number;
  /** The epoch it was mapped in: requests pinned at an older one cannot hold a view of it. */
  readonly mappedAt: number;
}

/** A dropped region whose munmap waits for the requests that may hold views of it. */
interface Retired {
  readonly mapping: ArrayBuffer;
  readonly mappedAt: number;
  /** The epoch it was dropped in (views can have been taken up to this one). */
  readonly retiredAt: number;
}

/** One IOTLB entry as the kernel reports it (VDUSE_IOTLB_GET_FD): IOVA range, file offset, permission. */
export interface IotlbEntry {
  start: number;
  last: number;
  offset: number;
  perm: number;
}

/** Where IotlbMemory gets its entries from (the VDUSE transport asks its device fd: deviceFdSource). */
export interface IotlbSource {
  /** The entry covering `iova` and a fresh fd to mmap it (closed by the caller), or null when unmapped. */
  lookup(iova: number): { entry: IotlbEntry; fd: number } | null;
}

/**
 * Pinning of guest memory by work in progress (IotlbMemory implements it; memory that never unmaps need not).
 * pin() returns the number to give back to unpin() once the work holds no view any more (IotlbMemory: its pin
 * epoch; RegionMemory: its generation).
 */
export interface MemoryPins {
  pin(): number;
  unpin(pinned: number): void;
  /** Dropped regions still mapped because pinned work may hold views of them. */
  readonly retiredRegions: number;
}

export class IotlbMemory implements GuestMemory, MemoryPins {
  /** Bumped by every drop of a region (see `generation`). */
  #generation = 0;
  /** Bumped by invalidations only: what pins count in (see the top of the file). */
  #epoch = 0;
  /** Sorted by start, non-overlapping. */
  #regions: Region[] = [];
  #lastHit: Region | null = null;
  /** Pins taken in the current epoch. */
  #pinsNow = 0;
  /** Pins still held of older epochs (epoch -> count, no zero counts). */
  readonly #pinsOld = new Map<number, number>();
  #retired: Retired[] = [];
  #drainWaiters: (() => void)[] = [];
  readonly #binding: SysBinding;
  readonly #source: IotlbSource;
  readonly #closeFd: (fd: number) => void;

  /**
   * `source` answers IOTLB look-ups (for a VDUSE device: deviceFdSource over its fd). `closeFd` closes the fds
   * the source returns once they are mapped (default fs.closeSync; fakes pass their own).
   */
  constructor(binding: SysBinding, source: IotlbSource, closeFd: (fd: number) => void = closeSync) {
    this.#binding = binding;
    this.#source = source;
    this.#closeFd = closeFd;
  }

  /**
   * Bumped every time a region is dropped: an invalidation, a reset, or a look-up that found a region stale. Views
   * of an older generation may be of a dropped region (detached, or kept mapped for pinned work only).
   */
  get generation(): number {
    return this.#generation;
  }

  /** The current pin epoch (what pin() returns now): bumped by invalidations, not by stale look-ups. */
  get epoch(): number {
    return this.#epoch;
  }

  /** How many regions are mapped now (and can be looked up). */
  get mappedRegions(): number {
    return this.#regions.length;
  }

  /** Dropped regions whose munmap waits for pinned work (see the top of the file). */
  get retiredRegions(): number {
    return this.#retired.length;
  }

  /** Pins held now, of every epoch. */
  get pins(): number {
    let n = this.#pinsNow;
    for (const c of this.#pinsOld.values()) n += c;
    return n;
  }

  /**
   * Work that will hold views of guest memory beyond this turn starts (the queue engine pins before it reads a
   * chain, so that a region the reading finds stale stays mapped under the views taken before): returns the
   * epoch to unpin.
   */
  pin(): number {
    this.#pinsNow++;
    return this.#epoch;
  }

  /** That work holds no view any more. Unmaps the dropped regions nothing can reference now. */
  unpin(epoch: number): void {
    if (epoch === this.#epoch) {
      // A region found stale by a look-up (#insert) is dropped in the current epoch: swept once its pins are gone.
      if (this.#pinsNow > 0 && --this.#pinsNow === 0 && this.#retired.length > 0) this.#sweep();
      return;
    }
    const n = this.#pinsOld.get(epoch);
    if (n === undefined) return;
    if (n > 1) {
      this.#pinsOld.set(epoch, n - 1);
      return;
    }
    this.#pinsOld.delete(epoch);
    this.#sweep();
  }

  /** Resolves when every dropped region is unmapped (no pinned work is left that could reference one). */
  drained(): Promise<void> {
    if (this.#retired.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.#drainWaiters.push(resolve));
  }

  view(addr: number, len: number, access: Access): Uint8Array {
    checkRange(addr, len);
    const region = this.#region(addr, len, access);
    if (len === 0) return new Uint8Array(0);
    if (addr + len - 1 > region.last) {
      throw new GuestMemoryError(
        `range 0x${addr.toString(16)}+${len} crosses the end of an IOTLB region (0x${region.last.toString(16)})`,
        addr,
        len,
      );
    }
    return new Uint8Array(region.mapping, region.base + (addr - region.start), len);
  }

  gather(addr: number, len: number, access: Access, out: Uint8Array[]): void {
    checkRange(addr, len);
    if (len === 0) return;
    const first = this.#region(addr, 1, access);
    if (addr + len - 1 <= first.last) {
      // One region holds it all (the usual case): no list of parts to build first.
      out.push(new Uint8Array(first.mapping, first.base + (addr - first.start), len));
      return;
    }
    const parts: Uint8Array[] = [];
    let cur = addr;
    let left = len;
    while (left > 0) {
      const region = this.#region(cur, 1, access);
      const n = Math.min(left, region.last - cur + 1);
      parts.push(new Uint8Array(region.mapping, region.base + (cur - region.start), n));
      cur += n;
      left -= n;
    }
    for (const p of parts) out.push(p);
  }

  /** Drop every region overlapping [start, last] (inclusive), as UPDATE_IOTLB asks. */
  invalidate(start: number, last: number): void {
    const keep: Region[] = [];
    for (const r of this.#regions) {
      if (r.last < start || r.start > last) keep.push(r);
      else this.#retire(r);
    }
    this.#regions = keep;
    this.#lastHit = null;
    this.#bump();
  }

  /** Drop every region (device reset, close). */
  invalidateAll(): void {
    for (const r of this.#regions) this.#retire(r);
    this.#regions = [];
    this.#lastHit = null;
    this.#bump();
  }

  /** An invalidation: a new generation and a new epoch (the pins of the old epoch keep their number). */
  #bump(): void {
    if (this.#pinsNow > 0) this.#pinsOld.set(this.#epoch, this.#pinsNow);
    this.#pinsNow = 0;
    this.#epoch++;
    this.#generation++;
  }

  /** Take `region` out of use: munmap it now unless pinned work may hold a view of it. */
  #retire(region: Region): void {
    const retired: Retired = {
      mapping: region.mapping,
      mappedAt: region.mappedAt,
      retiredAt: this.#epoch,
    };
    if (this.#pinnedWithin(retired)) this.#retired.push(retired);
    else this.#binding.munmap(region.mapping);
  }

  /** Is there a pin of an epoch in which `r` was mapped? */
  #pinnedWithin(r: Retired): boolean {
    const now = this.#epoch;
    if (this.#pinsNow > 0 && now >= r.mappedAt && now <= r.retiredAt) return true;
    for (const g of this.#pinsOld.keys()) if (g >= r.mappedAt && g <= r.retiredAt) return true;
    return false;
  }

  /** Unmap the dropped regions no pin covers any more. */
  #sweep(): void {
    if (this.#retired.length === 0) return;
    const keep: Retired[] = [];
    for (const r of this.#retired) {
      if (this.#pinnedWithin(r)) keep.push(r);
      else this.#binding.munmap(r.mapping);
    }
    this.#retired = keep;
    if (keep.length === 0 && this.#drainWaiters.length > 0) {
      const waiters = this.#drainWaiters;
      this.#drainWaiters = [];
      for (const resolve of waiters) resolve();
    }
  }

  /** The region holding `addr`, mapping it on a miss; checks `access` against its permission. */
  #region(addr: number, len: number, access: Access): Region {
    let region = this.#lastHit;
    if (region === null || addr < region.start || addr > region.last) {
      region = this.#find(addr) ?? this.#map(addr, len);
      this.#lastHit = region;
    }
    if ((access & ~region.perm) !== 0) {
      throw new GuestMemoryError(
        `IOVA 0x${addr.toString(16)} does not allow ${accessName(access)} (entry permission ${permName(region.perm)})`,
        addr,
        len,
      );
    }
    return region;
  }

  #find(addr: number): Region | undefined {
    const regions = this.#regions;
    let lo = 0;
    let hi = regions.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const r = regions[mid]!;
      if (addr < r.start) hi = mid - 1;
      else if (addr > r.last) lo = mid + 1;
      else return r;
    }
    return undefined;
  }

  #map(addr: number, len: number): Region {
    let found: { entry: IotlbEntry; fd: number } | null;
    try {
      found = this.#source.lookup(addr);
    } catch (err) {
      throw new GuestMemoryError(
        `IOTLB lookup of IOVA 0x${addr.toString(16)} failed: ${(err as Error).message}`,
        addr,
        len,
      );
    }
    if (found === null) {
      throw new GuestMemoryError(`IOVA 0x${addr.toString(16)} is not mapped`, addr, len);
    }
    const { entry, fd } = found;
    try {
      if (addr < entry.start || addr > entry.last) {
        throw new GuestMemoryError(
          `IOTLB entry [0x${entry.start.toString(16)}, 0x${entry.last.toString(16)}] does not cover IOVA 0x${addr.toString(16)}`,
          addr,
          len,
        );
      }
      if ((entry.perm & ACCESS_READ) === 0) {
        // A write-only entry comes with an O_WRONLY fd, which mmap refuses.
        throw new GuestMemoryError(`IOVA 0x${addr.toString(16)} is write-only (cannot be mapped)`, addr, len);
      }
      const size = entry.last - entry.start + 1;
      const alignedOffset = entry.offset - (entry.offset % PAGE_SIZE);
      const base = entry.offset - alignedOffset;
      const prot = (entry.perm & ACCESS_WRITE) !== 0 ? PROT_READ | PROT_WRITE : PROT_READ;
      let mapping: ArrayBuffer;
      try {
        mapping = this.#binding.mmap(fd, base + size, prot, MAP_SHARED, alignedOffset);
      } catch (err) {
        throw new GuestMemoryError(
          `mmap of IOTLB entry [0x${entry.start.toString(16)}, 0x${entry.last.toString(16)}] failed: ${(err as Error).message}`,
          addr,
          len,
        );
      }
      const region: Region = {
        start: entry.start,
        last: entry.last,
        perm: entry.perm,
        mapping,
        base,
        mappedAt: this.#epoch,
      };
      this.#insert(region);
      return region;
    } finally {
      try {
        this.#closeFd(fd);
      } catch {
        // the fd is ours; a failed close leaves nothing to do
      }
    }
  }

  #insert(region: Region): void {
    // Overlapping regions (the kernel's map changed without an UPDATE_IOTLB, e.g. after reset) are stale.
    const keep: Region[] = [];
    let dropped = false;
    for (const r of this.#regions) {
      if (r.last < region.start || r.start > region.last) keep.push(r);
      else {
        this.#retire(r);
        dropped = true;
      }
    }
    let i = keep.length;
    while (i > 0 && keep[i - 1]!.start > region.start) i--;
    keep.splice(i, 0, region);
    this.#regions = keep;
    // A new generation (views of the dropped regions are not handed out again), in the same epoch (the pins of
    // the work reading now cover the dropped regions).
    if (dropped) {
      this.#lastHit = null;
      this.#generation++;
    }
  }
}

function checkRange(addr: number, len: number): void {
  if (!Number.isSafeInteger(addr) || addr < 0 || !Number.isSafeInteger(len) || len < 0) {
    throw new GuestMemoryError(`invalid guest range ${addr}+${len}`, addr, len);
  }
  if (addr + len > Number.MAX_SAFE_INTEGER) {
    throw new GuestMemoryError(`guest range 0x${addr.toString(16)}+${len} overflows`, addr, len);
  }
}

function accessName(access: number): string {
  return access === 3 ? 'read-write access' : access === 2 ? 'device writes' : 'device reads';
}

function permName(perm: number): string {
  return perm === 3 ? 'RW' : perm === 2 ? 'WO' : perm === 1 ? 'RO' : 'none';
}
