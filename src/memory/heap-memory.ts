/**
 * HeapMemory: GuestMemory over ordinary JavaScript buffers. It backs the mock driver and unit tests, and any
 * device that wants to run a virtqueue without a kernel (for example in a benchmark).
 *
 * Each region maps a guest address range onto an ArrayBuffer or SharedArrayBuffer with an access permission.
 * Removing a region bumps `generation`, as an IOTLB invalidation would, but unlike IotlbMemory it detaches
 * nothing: views handed out earlier keep pointing at the old buffer. Tests that want a queue to notice an
 * invalidation therefore remove a region and add one with a different buffer (see `remapRegion`).
 */
import { ACCESS_RW, GuestMemoryError } from './guest-memory.js';
import type { Access, GuestMemory } from './guest-memory.js';

/** Largest address a JavaScript number can represent exactly (2^53). */
const ADDR_LIMIT = 2 ** 53;

export interface HeapRegionOptions {
  /** First guest address of the region. */
  addr: number;
  /** Bytes; defaults to the rest of `buffer` after `offset`. Required when `buffer` is not given. */
  size?: number;
  /** Backing store; a zeroed ArrayBuffer of `size` bytes is allocated when omitted. */
  buffer?: ArrayBuffer | SharedArrayBuffer;
  /** Offset of the region in `buffer` (default 0). */
  offset?: number;
  /** What the device may do there (default ACCESS_RW). */
  access?: Access;
}

/** A mapped region. `bytes` covers exactly [addr, addr + size). */
export interface HeapRegion {
  readonly addr: number;
  readonly size: number;
  readonly access: Access;
  readonly bytes: Uint8Array;
}

/** One successful translation, as recorded when access tracking is on. */
export interface AccessRecord {
  addr: number;
  len: number;
  access: Access;
}

interface Region extends HeapRegion {
  readonly end: number;
  readonly buffer: ArrayBufferLike;
  /** Offset in `buffer` of guest address 0 (may be negative): offset of addr = delta + addr. */
  readonly delta: number;
}

export class HeapMemory implements GuestMemory {
  private gen = 0;
  /** Sorted by address, non-overlapping. */
  private regions: Region[] = [];
  /** Translation cache: the region of the last successful lookup. */
  private last: Region | null = null;
  private log: AccessRecord[] | null = null;

  constructor(regions: readonly HeapRegionOptions[] = []) {
    for (const r of regions) this.addRegion(r);
  }

  get generation(): number {
    return this.gen;
  }

  /** The mapped regions, by address. */
  get regionList(): readonly HeapRegion[] {
    return this.regions;
  }

  /** Map a region. Throws RangeError when it overlaps an existing one or does not fit its buffer. */
  addRegion(options: HeapRegionOptions): HeapRegion {
    const { addr, offset = 0, access = ACCESS_RW } = options;
    if (!Number.isSafeInteger(addr) || addr < 0)
      throw new RangeError(`region address must be a safe integer >= 0`);
    if (!Number.isSafeInteger(offset) || offset < 0)
      throw new RangeError(`region offset must be an integer >= 0`);
    if (access !== 1 && access !== 2 && access !== 3) throw new RangeError(`region access must be 1, 2 or 3`);
    let { size, buffer } = options;
    if (buffer === undefined) {
      if (size === undefined) throw new RangeError('a region needs a size or a buffer');
      buffer = new ArrayBuffer(offset + size);
    }
    size ??= buffer.byteLength - offset;
    if (!Number.isSafeInteger(size) || size <= 0) throw new RangeError(`region size must be an integer > 0`);
    if (offset + size > buffer.byteLength) throw new RangeError(`region does not fit its buffer`);
    if (addr + size > ADDR_LIMIT) throw new RangeError(`region ends above 2^53`);
    const region: Region = {
      addr,
      size,
      end: addr + size,
      access,
      bytes: new Uint8Array(buffer, offset, size),
      buffer,
      delta: offset - addr,
    };
    for (const r of this.regions) {
      if (region.addr < r.end && r.addr < region.end) {
        throw new RangeError(
          `region [0x${addr.toString(16)}, 0x${region.end.toString(16)}) overlaps [0x${r.addr.toString(16)}, 0x${r.end.toString(16)})`,
        );
      }
    }
    this.regions.push(region);
    this.regions.sort((a, b) => a.addr - b.addr);
    return region;
  }

  /**
   * Unmap the region that starts at `addr` and bump `generation`. Returns the removed region, or null when none
   * starts there. Views obtained earlier stay usable (heap buffers cannot be detached).
   */
  removeRegion(addr: number): HeapRegion | null {
    const i = this.regions.findIndex((r) => r.addr === addr);
    if (i < 0) return null;
    const [removed] = this.regions.splice(i, 1);
    this.last = null;
    this.gen++;
    return removed ?? null;
  }

  /**
   * Simulate an invalidation followed by a new mapping: the region at `addr` is replaced by one over a copy of
   * its bytes (same address, size and access), and `generation` is bumped. Code that keeps using views from
   * before the change writes into the old copy, which the driver no longer sees.
   */
  remapRegion(addr: number): HeapRegion {
    const old = this.removeRegion(addr);
    if (old === null) throw new RangeError(`no region starts at 0x${addr.toString(16)}`);
    const buffer = new ArrayBuffer(old.size);
    new Uint8Array(buffer).set(old.bytes);
    return this.addRegion({ addr: old.addr, buffer, access: old.access });
  }

  /**
   * Record every successful view()/gather() (on), or stop recording (off). Returns the log, which tests can
   * check against the regions (`isMapped`).
   */
  trackAccesses(on: boolean): AccessRecord[] {
    const log = this.log ?? [];
    this.log = on ? log : null;
    return log;
  }

  /** Whether [addr, addr + len) is mapped entirely (across any number of adjacent regions) with `access`. */
  isMapped(addr: number, len: number, access: Access): boolean {
    let a = addr;
    const end = addr + len;
    while (a < end) {
      const r = this.find(a);
      if (r === null || (r.access & access) !== access) return false;
      a = r.end;
    }
    return true;
  }

  /**
   * The host's (driver's) view of [addr, addr + len): no permission check, not recorded by trackAccesses. The
   * range must lie in one region. For mock drivers and tests, not for devices.
   */
  hostView(addr: number, len: number): Uint8Array {
    const r = Number.isInteger(addr) && Number.isInteger(len) && len >= 0 ? this.find(addr) : null;
    if (r === null || addr + len > r.end) throw this.error('is not inside one region', addr, len);
    return new Uint8Array(r.buffer, r.delta + addr, len);
  }

  view(addr: number, len: number, access: Access): Uint8Array {
    if (!Number.isInteger(addr) || !Number.isInteger(len) || addr < 0 || len < 0) {
      throw this.error('is not a valid range', addr, len);
    }
    let r = this.last;
    if (r === null || addr < r.addr || addr >= r.end) {
      r = this.find(addr);
      if (r === null) throw this.error('is not mapped', addr, len);
      this.last = r;
    }
    if (addr + len > r.end) {
      throw this.error(this.find(r.end) === null ? 'is not mapped' : 'crosses a region boundary', addr, len);
    }
    if ((r.access & access) !== access) throw this.error('is not permitted', addr, len, access);
    if (this.log !== null) this.log.push({ addr, len, access });
    return new Uint8Array(r.buffer, r.delta + addr, len);
  }

  gather(addr: number, len: number, access: Access, out: Uint8Array[]): void {
    if (!Number.isInteger(addr) || !Number.isInteger(len) || addr < 0 || len < 0) {
      throw this.error('is not a valid range', addr, len);
    }
    if (len === 0) return;
    let r = this.last;
    if (r !== null && addr >= r.addr && addr + len <= r.end) {
      // Hot path: the whole range sits in the region used last.
      if ((r.access & access) !== access) throw this.error('is not permitted', addr, len, access);
      if (this.log !== null) this.log.push({ addr, len, access });
      out.push(new Uint8Array(r.buffer, r.delta + addr, len));
      return;
    }
    // Check the whole range before appending anything.
    const end = addr + len;
    let a = addr;
    while (a < end) {
      r = this.find(a);
      if (r === null) throw this.error('is not mapped', addr, len);
      if ((r.access & access) !== access) throw this.error('is not permitted', addr, len, access);
      a = r.end;
    }
    a = addr;
    while (a < end) {
      r = this.find(a) as Region;
      const chunk = Math.min(end, r.end) - a;
      if (this.log !== null) this.log.push({ addr: a, len: chunk, access });
      out.push(new Uint8Array(r.buffer, r.delta + a, chunk));
      a += chunk;
    }
    this.last = r;
  }

  /** The region containing `addr`, or null (binary search). */
  private find(addr: number): Region | null {
    const rs = this.regions;
    let lo = 0;
    let hi = rs.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const r = rs[mid] as Region;
      if (addr < r.addr) hi = mid - 1;
      else if (addr >= r.end) lo = mid + 1;
      else return r;
    }
    return null;
  }

  private error(what: string, addr: number, len: number, access?: Access): GuestMemoryError {
    const a = Number.isFinite(addr) && addr >= 0 ? `0x${addr.toString(16)}` : String(addr);
    const mode =
      access === undefined ? '' : access === 1 ? ' (read)' : access === 2 ? ' (write)' : ' (read/write)';
    return new GuestMemoryError(`guest memory [${a}, +${len}) ${what}${mode}`, addr, len);
  }
}
