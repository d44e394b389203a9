/**
 * Descriptor chains: the object pop() returns, the buffer checks both ring formats share, and helpers that copy
 * across the buffers of a chain (headers and payloads may be split over descriptors at any byte, §2.7.4.1).
 *
 * A chain holds zero-copy views of guest memory. They stay valid until the chain is given back with addUsed()
 * and while the memory generation is unchanged; do not keep them longer.
 */
import { ACCESS_READ, ACCESS_WRITE, GuestMemoryError } from '../memory/guest-memory.js';
import type { Access, GuestMemory } from '../memory/guest-memory.js';
import { VirtqueueError } from './virtqueue.js';
import type { DescriptorChain, VirtqueueErrorKind } from './virtqueue.js';
import { VRING_DESC_SIZE } from '../uapi/virtio-ring.js';

/** 2^32: a chain may hold at most this many bytes in total (§2.7.5). */
export const CHAIN_MAX_BYTES = 2 ** 32;
/** High address word at or above which an address is >= 2^53 and cannot be a JavaScript number. */
const ADDR_HI_LIMIT = 2 ** 21;
/** Largest indirect table accepted: 65536 descriptors (what a 16-bit `next` can address), 1 MiB. */
export const INDIRECT_MAX_DESCRIPTORS = 65536;

/**
 * The list of a chain with no buffer on that side: one shared, frozen array (a chain is made per request, and
 * most have one side filled only later, by the first append(), which never writes into it but makes a new array).
 */
const NO_BUFFERS = Object.freeze([]) as unknown as Uint8Array[];

/** The chain object the queues hand out. Only the DescriptorChain fields are public API. */
export class QueueChain implements DescriptorChain {
  id = 0;
  readable: Uint8Array[] = NO_BUFFERS;
  writable: Uint8Array[] = NO_BUFFERS;
  readableBytes = 0;
  writableBytes = 0;
  /** @internal Ring slots the chain took (packed: advance of the used index; split: 1). */
  slots = 1;
  /** @internal The queue that popped it, and its epoch then (setState starts a new epoch). */
  owner: object | null = null;
  epoch = 0;
  /** @internal True between pop() and addUsed(). */
  live = false;
  /** @internal A readable descriptor after a writable one is an error; set once a writable one was seen. */
  sawWrite = false;
}

/** Fail with a typed ring error (thrown inside the queue, caught by pop()). */
export function ringError(kind: VirtqueueErrorKind, queue: number, message: string): never {
  throw new VirtqueueError(kind, queue, message);
}

/**
 * Append one descriptor's buffer to `chain`: checks write order, the 2^53 address limit and the 2^32 total,
 * then translates the range (zero-length descriptors add no view). Throws VirtqueueError or GuestMemoryError.
 */
export function addDescriptor(
  chain: QueueChain,
  memory: GuestMemory,
  cache: ViewCache,
  queue: number,
  addrLo: number,
  addrHi: number,
  len: number,
  write: boolean,
): void {
  if (write) chain.sawWrite = true;
  else if (chain.sawWrite)
    ringError('write-order', queue, 'a device-readable descriptor follows a writable one');
  if (addrHi >= ADDR_HI_LIMIT)
    ringError('memory', queue, `descriptor address 0x${addrHi.toString(16)}xxxxxxxx is above 2^53`);
  if (chain.readableBytes + chain.writableBytes + len > CHAIN_MAX_BYTES) {
    ringError('length-overflow', queue, 'descriptor lengths add up to more than 2^32 bytes');
  }
  if (len === 0) return;
  const access = write ? ACCESS_WRITE : ACCESS_READ;
  const small = len <= VIEW_CACHE_MAX_LEN;
  let view = small ? cache.lookup(memory, addrLo, addrHi, len, access) : null;
  if (view === null) {
    const parts = scratch;
    if (parts.length !== 0) parts.length = 0;
    memory.gather(addrHi * 0x1_0000_0000 + addrLo, len, access, parts);
    if (parts.length === 1) {
      view = parts.pop() as Uint8Array;
      if (small) cache.store(addrLo, addrHi, len, access, view);
    } else {
      // Split over regions (rare): every part, in order.
      for (let i = 0; i < parts.length; i++) append(chain, write, parts[i] as Uint8Array);
      parts.length = 0;
    }
  }
  if (view !== null) append(chain, write, view);
  if (write) chain.writableBytes += len;
  else chain.readableBytes += len;
}

/** What memory.gather() appends to, emptied after every use (one thread, no reentry). */
const scratch: Uint8Array[] = [];

/**
 * Add a view to the chain's readable or writable list. The first two go into new arrays of exactly one and two
 * elements: a push would grow the array's store to 17 entries, an allocation dearer than a small array.
 */
function append(chain: QueueChain, write: boolean, view: Uint8Array): void {
  if (write) chain.writable = appended(chain.writable, view);
  else chain.readable = appended(chain.readable, view);
}

function appended(list: Uint8Array[], view: Uint8Array): Uint8Array[] {
  const n = list.length;
  // Never a push into an empty list: it may be NO_BUFFERS.
  if (n === 0) return [view];
  if (n === 1) return [list[0] as Uint8Array, view];
  list.push(view);
  return list;
}

/**
 * Translations of a ring's areas in a row before the queue gives up when each one found a mapping stale (a new
 * memory generation while the areas were looked up; the next one normally finds the new mappings in place).
 */
export const RING_MAP_ATTEMPTS = 3;

/**
 * Buffers up to this many bytes go through a queue's ViewCache: headers, status bytes, and data pages (a driver
 * doing direct I/O offers the same user pages again and again, e.g. fio's buffers, one 4 KiB segment each).
 */
export const VIEW_CACHE_MAX_LEN = 4096;
/** Entries of a queue's ViewCache of buffers, and of its TableCache of indirect tables (powers of 2). */
const VIEW_CACHE_SLOTS = 512;
const TABLE_CACHE_SLOTS = 256;
const NO_VIEW = new Uint8Array(0);
const NO_TABLE = new Uint32Array(0);

/**
 * The views a queue translated, by guest address, length and access, for one memory generation: drivers keep
 * request headers and status bytes at a few fixed addresses (Linux virtio-blk: one per tag, in the request's
 * pdu), and take indirect tables from a slab that hands the same few addresses out again, so their views can be
 * handed out again instead of made anew per request (a typed array costs about as much as the rest of a
 * descriptor). A view is the same window onto guest memory whichever chain holds it. An entry is only stored
 * after memory.view() or memory.gather() translated exactly that range with that access into one view, and the
 * whole cache is dropped when `memory.generation` changes (a mapping went away: views may be detached and
 * permissions may differ), so a hit is what a translation would answer. Direct-mapped: a miss costs one hash
 * and a comparison, and replaces the slot's entry. Never store a copy: a hit must see what the guest writes
 * there later.
 */
class AddressCache<T> {
  /** Per slot: address low and high words, length, access (0: empty). */
  private readonly keys: Uint32Array;
  private readonly views: T[];
  private readonly shift: number;
  private generation = -1;

  constructor(
    slots: number,
    private readonly empty: T,
  ) {
    this.keys = new Uint32Array(slots * 4);
    this.views = new Array<T>(slots).fill(empty);
    this.shift = 32 - Math.log2(slots);
  }

  private slotOf(addrLo: number, addrHi: number): number {
    return Math.imul(addrLo ^ Math.imul(addrHi, 0x85ebca6b), 0x9e3779b1) >>> this.shift;
  }

  /**
   * The view stored for exactly [addr, addr + len) with `access` in this memory generation, or null. Drops every
   * entry first when `memory.generation` changed.
   */
  lookup(memory: GuestMemory, addrLo: number, addrHi: number, len: number, access: Access): T | null {
    const generation = memory.generation;
    if (generation !== this.generation) this.reset(generation);
    const k = this.slotOf(addrLo, addrHi) << 2;
    const keys = this.keys;
    if (keys[k] === addrLo && keys[k + 1] === addrHi && keys[k + 2] === len && keys[k + 3] === access)
      return this.views[k >>> 2] as T;
    return null;
  }

  /**
   * Remember `view`: what a translation gave, as one view, for [addr, addr + len) with `access`, after the
   * lookup() just before, in its generation. (Should the translation have moved memory to a new generation, the
   * next lookup() drops the entry with all others.) Replaces whatever the slot held.
   */
  store(addrLo: number, addrHi: number, len: number, access: Access, view: T): void {
    const slot = this.slotOf(addrLo, addrHi);
    const k = slot << 2;
    const keys = this.keys;
    keys[k] = addrLo;
    keys[k + 1] = addrHi;
    keys[k + 2] = len;
    keys[k + 3] = access;
    this.views[slot] = view;
  }

  /** Forget every entry (a new memory generation). */
  reset(generation: number): void {
    this.keys.fill(0);
    this.views.fill(this.empty);
    this.generation = generation;
  }
}

/** Views of small buffers (up to VIEW_CACHE_MAX_LEN bytes), see AddressCache. */
export class ViewCache extends AddressCache<Uint8Array> {
  constructor() {
    super(VIEW_CACHE_SLOTS, NO_VIEW);
  }
}

/** Indirect tables as 32-bit words, by address and byte length (access: always ACCESS_READ), see AddressCache. */
export class TableCache extends AddressCache<Uint32Array> {
  constructor() {
    super(TABLE_CACHE_SLOTS, NO_TABLE);
  }
}

/**
 * Translate an indirect table (`len` bytes at addrHi:addrLo) into 32-bit words: descriptor i is words 4i..4i+3.
 * Validates the table size (`indirect-table`) and address; a table split over regions, or not 4-byte aligned in
 * its buffer, is copied. A table viewed in place is kept in `cache` for the next chain at the same address.
 */
export function indirectTable(
  memory: GuestMemory,
  cache: TableCache,
  queue: number,
  addrLo: number,
  addrHi: number,
  len: number,
): Uint32Array {
  if (len === 0 || len % VRING_DESC_SIZE !== 0 || len > INDIRECT_MAX_DESCRIPTORS * VRING_DESC_SIZE) {
    ringError(
      'indirect-table',
      queue,
      `indirect table of ${len} bytes (must be a non-zero multiple of 16, at most 1 MiB)`,
    );
  }
  if (addrHi >= ADDR_HI_LIMIT)
    ringError('memory', queue, `indirect table address 0x${addrHi.toString(16)}xxxxxxxx is above 2^53`);
  const cached = cache.lookup(memory, addrLo, addrHi, len, ACCESS_READ);
  if (cached !== null) return cached;
  const addr = addrHi * 0x1_0000_0000 + addrLo;
  let bytes: Uint8Array;
  try {
    bytes = memory.view(addr, len, ACCESS_READ);
  } catch (e) {
    if (!(e instanceof GuestMemoryError)) throw e;
    // Possibly mapped in pieces: gather (throws if not mapped at all) and copy.
    const parts: Uint8Array[] = [];
    memory.gather(addr, len, ACCESS_READ, parts);
    bytes = concat(parts, len);
    return new Uint32Array(bytes.buffer, 0, len >>> 2);
  }
  // Not 4-byte aligned in host memory: a copy (not cached).
  if (bytes.byteOffset % 4 !== 0) return new Uint32Array(bytes.slice().buffer, 0, len >>> 2);
  const table = new Uint32Array(bytes.buffer, bytes.byteOffset, len >>> 2);
  cache.store(addrLo, addrHi, len, ACCESS_READ, table);
  return table;
}

function concat(parts: readonly Uint8Array[], len: number): Uint8Array {
  const out = new Uint8Array(len);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/**
 * Copy bytes starting `offset` bytes into `parts` (a chain's readable or writable list) into `out`, across buffer
 * boundaries. Returns the number of bytes copied: less than out.length when the parts end first.
 */
export function copyFromParts(parts: readonly Uint8Array[], offset: number, out: Uint8Array): number {
  let copied = 0;
  let skip = offset;
  for (let i = 0; i < parts.length && copied < out.length; i++) {
    const p = parts[i] as Uint8Array;
    if (skip >= p.length) {
      skip -= p.length;
      continue;
    }
    const n = Math.min(p.length - skip, out.length - copied);
    out.set(skip === 0 && n === p.length ? p : p.subarray(skip, skip + n), copied);
    copied += n;
    skip = 0;
  }
  return copied;
}

/** Copy `data` into `parts` starting `offset` bytes in, across buffer boundaries. Returns the bytes written. */
export function copyToParts(parts: readonly Uint8Array[], offset: number, data: Uint8Array): number {
  let written = 0;
  let skip = offset;
  for (let i = 0; i < parts.length && written < data.length; i++) {
    const p = parts[i] as Uint8Array;
    if (skip >= p.length) {
      skip -= p.length;
      continue;
    }
    const n = Math.min(p.length - skip, data.length - written);
    p.set(written === 0 && n === data.length ? data : data.subarray(written, written + n), skip);
    written += n;
    skip = 0;
  }
  return written;
}

/**
 * Views of bytes [offset, offset + len) of `parts`, appended to `out` (no copy). `len` is clipped to what the
 * parts hold. Useful to hand the data area of a request (between header and status byte) to I/O.
 */
export function sliceParts(
  parts: readonly Uint8Array[],
  offset: number,
  len: number,
  out: Uint8Array[] = [],
): Uint8Array[] {
  let skip = offset;
  let left = len;
  for (let i = 0; i < parts.length && left > 0; i++) {
    const p = parts[i] as Uint8Array;
    if (skip >= p.length) {
      skip -= p.length;
      continue;
    }
    const n = Math.min(p.length - skip, left);
    out.push(skip === 0 && n === p.length ? p : p.subarray(skip, skip + n));
    left -= n;
    skip = 0;
  }
  return out;
}

/**
 * Copy a header (or any bytes) out of the device-readable part of `chain`, starting `offset` bytes in.
 * Returns the bytes copied (less than out.length if the readable part is shorter).
 */
export function readFromChain(chain: DescriptorChain, offset: number, out: Uint8Array): number {
  return copyFromParts(chain.readable, offset, out);
}

/** Write `data` into the device-writable part of `chain`, starting `offset` bytes in. Returns the bytes written. */
export function writeToChain(chain: DescriptorChain, offset: number, data: Uint8Array): number {
  return copyToParts(chain.writable, offset, data);
}

/**
 * Write `status` into the very last byte of the device-writable part (virtio-blk, scsi, ... status byte).
 * Returns false when the chain has no writable byte.
 */
export function writeStatus(chain: DescriptorChain, status: number): boolean {
  const w = chain.writable;
  const last = w[w.length - 1];
  if (last === undefined) return false;
  last[last.length - 1] = status;
  return true;
}
