/**
 * MockDriver: the driver side of one virtqueue (split or packed) over HeapMemory, for testing devices without a
 * kernel. It lays the rings out in memory, allocates buffers, adds chains, publishes them, counts the kicks a
 * real driver would send, reads used entries back, and can write anything into the rings on purpose.
 *
 * ```ts
 * const drv = new MockDriver({ size: 256, packed: false, eventIdx: true, indirect: true });
 * const q = drv.createDeviceQueue();            // the device side, a Virtqueue
 * drv.addChain({ readable: [header], writable: [4096, 1] });
 * drv.kick();                                   // publish; true if a real driver would notify the device
 * const chain = q.pop();                        // ... the device does its work ...
 * q.addUsed(chain!, 4097);
 * q.publish();                                  // drv.signals counts used-buffer notifications
 * const [entry] = drv.usedEntries();            // { id, len, chain, written }
 * ```
 *
 * Several queues can share one memory: `MockDriver.createQueues(4, { size: 128 })`.
 */
import type { HeapMemory as HeapMemoryType } from '../memory/heap-memory.js';
import { HeapMemory } from '../memory/heap-memory.js';
import {
  PVIRTQ_EVENT_SUPPRESS_SIZE,
  VRING_AVAIL_F_NO_INTERRUPT,
  VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE,
  VRING_DESC_SIZE,
  VRING_PACKED_DESC_F_AVAIL,
  VRING_PACKED_DESC_F_USED,
  VRING_PACKED_EVENT_FLAG_DESC,
  VRING_PACKED_EVENT_FLAG_DISABLE,
  VRING_PACKED_EVENT_FLAG_ENABLE,
  VRING_PACKED_EVENT_F_WRAP_CTR,
  VRING_USED_F_NO_NOTIFY,
  vringAvailEventOffset,
  vringDescTableSize,
  vringNeedEvent,
  vringUsedEventOffset,
} from '../uapi/virtio-ring.js';
import { createVirtqueue } from '../virtio/create-virtqueue.js';
import type { QueueOptions, Virtqueue, VirtqueueConfig, VirtqueueError } from '../virtio/virtqueue.js';

const F_AVAIL = 1 << VRING_PACKED_DESC_F_AVAIL;
const F_USED = 1 << VRING_PACKED_DESC_F_USED;

/** A guest buffer: address and length. */
export interface BufferRef {
  addr: number;
  len: number;
}

/** What addChain() puts in a chain. */
export interface ChainSpec {
  /** Device-readable buffers: the bytes to put there, or a length (zero-filled). */
  readable?: readonly (Uint8Array | number)[];
  /** Device-writable buffers: a length (filled with 0xee so unwritten bytes are visible), or initial bytes. */
  writable?: readonly (Uint8Array | number)[];
  /** Put the buffers in an indirect table (needs `indirect` negotiated). */
  indirect?: boolean;
}

/** A chain the driver added with addChain(). */
export interface MockChain {
  /** What the device reports in the used ring: the head descriptor (split) or the buffer id (packed). */
  readonly id: number;
  readonly readable: readonly BufferRef[];
  readonly writable: readonly BufferRef[];
  /** The indirect table, when there is one. */
  readonly table: BufferRef | null;
}

/** One used entry as the driver reads it. */
export interface UsedEntry {
  id: number;
  len: number;
  /** The chain, or null for one pushed raw (pushAvail / pushRaw). */
  chain: MockChain | null;
  /** Copy of the first `len` bytes of the chain's writable buffers (empty for raw chains). */
  written: Uint8Array;
}

/** A raw split descriptor (writeDescriptor on a split queue). */
export interface SplitDescriptor {
  addr: number;
  len: number;
  flags: number;
  next: number;
}

/** A raw packed descriptor; `flags` holds everything, including the AVAIL/USED bits. */
export interface PackedDescriptor {
  addr: number;
  len: number;
  id: number;
  flags: number;
}

export interface MockDriverOptions {
  /** Queue size: a power of two up to 32768 for split, 1..32768 for packed. */
  size: number;
  /** Packed ring format (default split). */
  packed?: boolean;
  /** VIRTIO_F_RING_EVENT_IDX negotiated (default false). */
  eventIdx?: boolean;
  /** VIRTIO_F_RING_INDIRECT_DESC negotiated (default false). */
  indirect?: boolean;
  /** Queue index (default 0). */
  index?: number;
  /** Bytes of guest memory to create (default: the rings plus 4 MiB). Ignored with `shareWith`. */
  memorySize?: number;
  /** Guest address of that memory (default 0x100000). */
  baseAddr?: number;
  /** Use the memory and allocator of another MockDriver (multi-queue devices). */
  shareWith?: MockDriver;
  /**
   * Lay the rings out and allocate buffers with this allocator, over its memory (e.g. a HeapMemory over shared
   * memory that a real device also sees, as the vhost-vdpa driver in ./vhost-vdpa does). Ignored with `shareWith`.
   */
  allocator?: GuestAllocator;
  /**
   * Like Linux, re-arm used-buffer notifications after reading used entries (EVENT_IDX: used_event / packed
   * DESC event at the next used index). Default true; set false to drive the event fields by hand.
   */
  autoEvent?: boolean;
}

/** A first-fit-by-size allocator of guest buffers inside one HeapMemory region. */
export class GuestAllocator {
  private top: number;
  private readonly end: number;
  private readonly free = new Map<number, number[]>();

  constructor(
    readonly memory: HeapMemoryType,
    base: number,
    size: number,
  ) {
    this.top = base;
    this.end = base + size;
  }

  /** Allocate `len` bytes (rounded up to 16) aligned to `align` (a power of two). Returns the guest address. */
  alloc(len: number, align = 16): number {
    const size = Math.max(16, (len + 15) & ~15);
    if (align <= 16) {
      const list = this.free.get(size);
      const reused = list?.pop();
      if (reused !== undefined) return reused;
    }
    const addr = Math.ceil(this.top / align) * align;
    if (addr + size > this.end) {
      throw new RangeError(`mock guest memory exhausted (${len} bytes wanted); pass a larger memorySize`);
    }
    this.top = addr + size;
    return addr;
  }

  /** Give back a buffer from alloc() (same `len`). */
  release(addr: number, len: number): void {
    const size = Math.max(16, (len + 15) & ~15);
    let list = this.free.get(size);
    if (list === undefined) this.free.set(size, (list = []));
    list.push(addr);
  }
}

export class MockDriver {
  readonly memory: HeapMemory;
  readonly allocator: GuestAllocator;
  /** Where the rings are; what createDeviceQueue() passes to createVirtqueue(). */
  readonly config: Readonly<VirtqueueConfig>;
  readonly size: number;
  readonly packed: boolean;
  /** Kicks (available-buffer notifications) the driver would have sent, per the device's suppression. */
  kicks = 0;
  /** Used-buffer notifications the device queue sent (counted by createDeviceQueue's signal). */
  signals = 0;
  /** Errors the device queue reported through onError. */
  readonly errors: VirtqueueError[] = [];
  /** Re-arm used notifications after reading used entries (see MockDriverOptions.autoEvent). */
  autoEvent: boolean;

  private readonly mask: number;
  private generation = -1;
  private ring32 = new Uint32Array(0) as Uint32Array;
  private ring16 = new Uint16Array(0) as Uint16Array;
  private avail16 = new Uint16Array(0) as Uint16Array;
  private used16 = new Uint16Array(0) as Uint16Array;
  private used32 = new Uint32Array(0) as Uint32Array;
  private driverEvent = new Uint16Array(0) as Uint16Array;
  private deviceEvent = new Uint16Array(0) as Uint16Array;

  // Driver progress. Split: free-running u16 indexes. Packed: ring index + wrap counter.
  private availIdx = 0;
  private availWrap = 1;
  private usedIdx = 0;
  private usedWrap = 1;
  /** Chains staged (written, not yet visible) and ring entries added since the last kick decision. */
  private staged = 0;
  private addedSinceKick = 0;
  /** Packed: ring index + flags of each staged chain's first descriptor, made available at publish. */
  private readonly stagedHeadAt: Uint32Array;
  private readonly stagedHeadFlags: Uint16Array;

  // Free descriptors (split) / buffer ids (packed), and free ring slots (packed).
  private readonly freeStack: Uint16Array;
  private freeCount: number;
  private freeSlots: number;
  /** Split: the `next` the driver wrote for each descriptor. */
  private readonly nextShadow: Uint16Array;

  // Per in-flight id.
  private readonly recLive: Uint8Array;
  private readonly recDescs: Uint16Array;
  private readonly recTableAddr: Float64Array;
  private readonly recTableLen: Uint32Array;
  private readonly recChain: (MockChain | null)[];
  /** Raw chains (pushAvail/pushRaw): id -> ring slots (packed) or 1 (split). */
  private readonly raw = new Map<number, number>();
  private inFlightCount = 0;

  /** Several queues (indexes 0..count-1) over one memory and allocator. */
  static createQueues(count: number, options: Omit<MockDriverOptions, 'index' | 'shareWith'>): MockDriver[] {
    const perQueue = ringBytes(options.size, options.packed ?? false);
    const first = new MockDriver({
      ...options,
      index: 0,
      memorySize: options.memorySize ?? count * perQueue + 4 * 1024 * 1024,
    });
    const all = [first];
    for (let i = 1; i < count; i++) all.push(new MockDriver({ ...options, index: i, shareWith: first }));
    return all;
  }

  constructor(options: MockDriverOptions) {
    const size = options.size;
    const packed = options.packed ?? false;
    if (!Number.isInteger(size) || size < 1 || size > 32768 || (!packed && (size & (size - 1)) !== 0)) {
      throw new RangeError(`queue size ${size} is not valid for a ${packed ? 'packed' : 'split'} ring`);
    }
    this.size = size;
    this.packed = packed;
    this.mask = size - 1;
    this.autoEvent = options.autoEvent ?? true;
    if (options.shareWith !== undefined) {
      this.memory = options.shareWith.memory;
      this.allocator = options.shareWith.allocator;
    } else if (options.allocator !== undefined) {
      this.memory = options.allocator.memory;
      this.allocator = options.allocator;
    } else {
      const base = options.baseAddr ?? 0x100000;
      const bytes = options.memorySize ?? ringBytes(size, packed) + 4 * 1024 * 1024;
      this.memory = new HeapMemory([{ addr: base, size: bytes }]);
      this.allocator = new GuestAllocator(this.memory, base, bytes);
    }
    const eventIdx = options.eventIdx ?? false;
    let descAddr: number, driverAddr: number, deviceAddr: number;
    if (packed) {
      descAddr = this.allocator.alloc(VRING_DESC_SIZE * size, 16);
      driverAddr = this.allocator.alloc(PVIRTQ_EVENT_SUPPRESS_SIZE, 16);
      deviceAddr = this.allocator.alloc(PVIRTQ_EVENT_SUPPRESS_SIZE, 16);
    } else {
      descAddr = this.allocator.alloc(vringDescTableSize(size), 16);
      driverAddr = this.allocator.alloc(vringUsedEventOffset(size) + 2, 16);
      deviceAddr = this.allocator.alloc(vringAvailEventOffset(size) + 2, 16);
    }
    this.config = {
      index: options.index ?? 0,
      size,
      descAddr,
      driverAddr,
      deviceAddr,
      eventIdx,
      indirect: options.indirect ?? false,
    };
    this.stagedHeadAt = new Uint32Array(size);
    this.stagedHeadFlags = new Uint16Array(size);
    this.freeStack = new Uint16Array(size);
    for (let i = 0; i < size; i++) this.freeStack[i] = size - 1 - i;
    this.freeCount = size;
    this.freeSlots = size;
    this.nextShadow = new Uint16Array(size);
    this.recLive = new Uint8Array(size);
    this.recDescs = new Uint16Array(size);
    this.recTableAddr = new Float64Array(size);
    this.recTableLen = new Uint32Array(size);
    this.recChain = new Array<MockChain | null>(size).fill(null);
    this.views();
    if (packed && eventIdx && this.autoEvent) {
      // Linux's steady state with EVENT_IDX: a notification when the device passes the driver's used index.
      this.setUsedEvent(0, 1);
    }
  }

  /**
   * Build the device side over this driver's rings (createVirtqueue). `signal` and `onError` are wrapped so that
   * `signals` and `errors` count them; the user's callbacks still run. `fence` and `inflight` (an in-flight
   * recorder such as a state log's QueueLog) are passed on.
   */
  createDeviceQueue(options: Partial<QueueOptions> = {}): Virtqueue {
    const { signal, onError, fence, inflight } = options;
    return createVirtqueue(this.config, this.packed, this.memory, {
      signal: () => {
        this.signals++;
        if (signal !== undefined) signal();
      },
      onError: (e) => {
        this.errors.push(e);
        if (onError !== undefined) onError(e);
      },
      ...(fence !== undefined ? { fence } : {}),
      ...(inflight !== undefined ? { inflight } : {}),
    });
  }

  /** Chains added and not yet returned in the used ring. */
  get inFlight(): number {
    return this.inFlightCount;
  }

  /** Free descriptors (split) or ring slots (packed). */
  get freeDescriptors(): number {
    return this.packed ? this.freeSlots : this.freeCount;
  }

  // ---- buffers ----

  /** Allocate a guest buffer (16-byte aligned). */
  alloc(len: number): number {
    return this.allocator.alloc(len);
  }

  free(addr: number, len: number): void {
    this.allocator.release(addr, len);
  }

  write(addr: number, data: Uint8Array): void {
    this.memory.hostView(addr, data.length).set(data);
  }

  read(addr: number, len: number): Uint8Array {
    return this.memory.hostView(addr, len).slice();
  }

  // ---- adding chains ----

  /**
   * Allocate buffers, fill them, and add them as one chain (staged: visible to the device at publish()/kick()).
   * Throws RangeError when the ring has no room (complete some chains first).
   */
  addChain(spec: ChainSpec): MockChain {
    const readable = (spec.readable ?? []).map((b) => this.buffer(b, 0));
    const writable = (spec.writable ?? []).map((b) => this.buffer(b, 0xee));
    const indirect = spec.indirect ?? false;
    const result = { id: 0, readable, writable, table: null as BufferRef | null };
    const id = this.submit(readable, writable, indirect, result);
    result.id = id;
    return result;
  }

  /**
   * Lean path: add a chain over existing buffers (e.g. reused for every request of a benchmark). Nothing is
   * allocated or freed for the buffers; returns the id the device will report.
   */
  addBuffers(readable: readonly BufferRef[], writable: readonly BufferRef[], indirect = false): number {
    return this.submit(readable, writable, indirect, null);
  }

  /**
   * Build an indirect table in guest memory from raw descriptors (split: addr/len/flags/next; packed: the same,
   * `next` ignored). Returns its address and length, for a descriptor with VRING_DESC_F_INDIRECT.
   */
  buildIndirectTable(descs: readonly SplitDescriptor[]): BufferRef {
    const len = descs.length * VRING_DESC_SIZE;
    const addr = this.allocator.alloc(Math.max(len, 16));
    const v = this.memory.hostView(addr, len);
    const dv = new DataView(v.buffer, v.byteOffset, v.length);
    descs.forEach((d, i) => {
      const b = i * VRING_DESC_SIZE;
      dv.setUint32(b, d.addr % 0x1_0000_0000, true);
      dv.setUint32(b + 4, Math.floor(d.addr / 0x1_0000_0000), true);
      dv.setUint32(b + 8, d.len, true);
      // Split: flags @12, next @14. Packed: id @12 (ignored by devices), flags @14.
      dv.setUint16(b + 12, this.packed ? 0 : d.flags, true);
      dv.setUint16(b + 14, this.packed ? d.flags : d.next, true);
    });
    return { addr, len };
  }

  /** Make staged chains visible to the device, without deciding about a kick. */
  publish(): void {
    this.views();
    const n = this.staged;
    if (n === 0) return;
    if (this.packed) {
      // Each chain's first descriptor last (§2.8.6); chains in ring order.
      for (let k = 0; k < n; k++)
        Atomics.store(this.ring16, this.stagedHeadAt[k] as number, this.stagedHeadFlags[k] as number);
    } else {
      Atomics.store(this.avail16, 1, this.availIdx);
    }
    this.staged = 0;
  }

  /**
   * publish(), then decide like a real driver whether to notify the device (split: used.flags NO_NOTIFY or
   * vring_need_event(avail_event, new, old); packed: the device event suppression area). Counts `kicks`.
   */
  kick(): boolean {
    this.publish();
    const added = this.addedSinceKick;
    this.addedSinceKick = 0;
    let need: boolean;
    if (this.packed) {
      const flags = Atomics.load(this.deviceEvent, 1) & 3;
      if (flags === VRING_PACKED_EVENT_FLAG_DISABLE) need = false;
      else if (flags === VRING_PACKED_EVENT_FLAG_DESC && this.config.eventIdx) {
        const offWrap = Atomics.load(this.deviceEvent, 0);
        let event = offWrap & 0x7fff;
        if (offWrap >>> VRING_PACKED_EVENT_F_WRAP_CTR !== this.availWrap) event -= this.size;
        need = vringNeedEvent(event, this.availIdx, this.availIdx - added);
      } else need = true;
    } else if (this.config.eventIdx) {
      const availEvent = Atomics.load(this.used16, vringAvailEventOffset(this.size) >>> 1);
      need = vringNeedEvent(availEvent, this.availIdx, (this.availIdx - added) & 0xffff);
    } else {
      need = (Atomics.load(this.used16, 0) & VRING_USED_F_NO_NOTIFY) === 0;
    }
    if (need) this.kicks++;
    return need;
  }

  // ---- used ring ----

  /**
   * New used entries since the last call, in ring order. Frees the descriptors and the buffers of chains from
   * addChain() (copy what you need from `written`). Throws if the device returned an id that is not in flight.
   */
  usedEntries(): UsedEntry[] {
    const out: UsedEntry[] = [];
    this.consume(out);
    return out;
  }

  /** Like usedEntries(), but only counts the entries (no objects, no copies): the lean path. */
  reclaim(): number {
    return this.consume(null);
  }

  // ---- notification suppression, driver side ----

  /** Ask the device not to send used-buffer notifications (split: VRING_AVAIL_F_NO_INTERRUPT; packed: DISABLE). */
  setNoInterrupt(on: boolean): void {
    this.views();
    if (this.packed)
      this.driverEvent[1] = on ? VRING_PACKED_EVENT_FLAG_DISABLE : VRING_PACKED_EVENT_FLAG_ENABLE;
    else this.avail16[0] = on ? VRING_AVAIL_F_NO_INTERRUPT : 0;
  }

  /**
   * EVENT_IDX: ask for a notification when the device's used index passes `idx`. Split: used_event = idx
   * (free-running u16). Packed: the driver event suppression area gets off_wrap = idx | wrap << 15 and flags DESC.
   */
  setUsedEvent(idx: number, wrap = this.usedWrap): void {
    this.views();
    if (this.packed) {
      this.driverEvent[0] = (idx & 0x7fff) | (wrap << VRING_PACKED_EVENT_F_WRAP_CTR);
      this.driverEvent[1] = VRING_PACKED_EVENT_FLAG_DESC;
    } else {
      this.avail16[vringUsedEventOffset(this.size) >>> 1] = idx & 0xffff;
    }
  }

  /**
   * The device's kick suppression. Split: used.flags and avail_event. Packed: the device event suppression area
   * (flags, and off_wrap split into index and wrap counter).
   */
  deviceSuppression(): { flags: number; event: number; wrap: number } {
    this.views();
    if (this.packed) {
      const offWrap = this.deviceEvent[0] as number;
      return { flags: this.deviceEvent[1] as number, event: offWrap & 0x7fff, wrap: offWrap >>> 15 };
    }
    return {
      flags: this.used16[0] as number,
      event: this.used16[vringAvailEventOffset(this.size) >>> 1] as number,
      wrap: 0,
    };
  }

  /** The driver's position: split: avail.idx as published (+ staged); packed: next slot and wrap counter. */
  availPosition(): { idx: number; wrap: number } {
    return { idx: this.availIdx, wrap: this.packed ? this.availWrap : 0 };
  }

  /** Where the driver reads the next used entry: split: free-running index; packed: slot and wrap counter. */
  usedPosition(): { idx: number; wrap: number } {
    return { idx: this.usedIdx, wrap: this.packed ? this.usedWrap : 0 };
  }

  // ---- raw access, to build malformed rings on purpose ----

  /** Write descriptor `i` of the split table / packed ring as given, with no checks. */
  writeDescriptor(i: number, d: SplitDescriptor | PackedDescriptor): void {
    this.views();
    const b = i * 4;
    this.ring32[b] = d.addr % 0x1_0000_0000;
    this.ring32[b + 1] = Math.floor(d.addr / 0x1_0000_0000);
    this.ring32[b + 2] = d.len;
    if ('next' in d) this.ring32[b + 3] = (d.flags & 0xffff) | ((d.next & 0xffff) << 16);
    else this.ring32[b + 3] = (d.id & 0xffff) | ((d.flags & 0xffff) << 16);
  }

  /** Read descriptor `i` as raw fields (split: next; packed: id). */
  readDescriptor(i: number): SplitDescriptor & PackedDescriptor {
    this.views();
    const b = i * 4;
    const w = this.ring32[b + 3] as number;
    const addr = (this.ring32[b] as number) + (this.ring32[b + 1] as number) * 0x1_0000_0000;
    const len = this.ring32[b + 2] as number;
    return this.packed
      ? { addr, len, id: w & 0xffff, flags: w >>> 16, next: 0 }
      : { addr, len, flags: w & 0xffff, next: w >>> 16, id: 0 };
  }

  /** Split: stage `head` in the next avail ring entry, unchecked (published by publish()/kick()). */
  pushAvail(head: number): void {
    if (this.packed) throw new TypeError('pushAvail is for split rings; use pushRaw');
    this.views();
    this.avail16[2 + (this.availIdx & this.mask)] = head;
    this.availIdx = (this.availIdx + 1) & 0xffff;
    this.staged++;
    this.addedSinceKick++;
    this.inFlightCount++;
    this.raw.set(head & 0xffff, (this.raw.get(head & 0xffff) ?? 0) + 1);
  }

  /** Split: store avail.idx directly (e.g. a bogus value). */
  setAvailIdx(idx: number): void {
    this.views();
    Atomics.store(this.avail16, 1, idx & 0xffff);
  }

  /**
   * Packed: write `descs` at the driver's next slots, unchecked, with the AVAIL/USED bits of the current wrap
   * counter OR-ed into each `flags`, and stage the first (published by publish()/kick()). `id` of the last one
   * is what the device will report; usedEntries() then advances by descs.length slots.
   */
  pushRaw(descs: readonly PackedDescriptor[]): void {
    if (!this.packed) throw new TypeError('pushRaw is for packed rings; use writeDescriptor + pushAvail');
    if (descs.length === 0) return;
    this.views();
    let headFlags = 0;
    const head = this.availIdx;
    for (let k = 0; k < descs.length; k++) {
      const d = descs[k] as PackedDescriptor;
      const flags = (d.flags & ~(F_AVAIL | F_USED)) | (this.availWrap === 1 ? F_AVAIL : F_USED);
      // The first descriptor keeps its old flags (not available, not newly used) until publish().
      this.writeDescriptor(this.availIdx, { ...d, flags: k === 0 ? this.slotFlags(this.availIdx) : flags });
      if (k === 0) headFlags = flags;
      this.advanceAvail();
    }
    this.stagedHeadAt[this.staged] = head * 8 + 7;
    this.stagedHeadFlags[this.staged] = headFlags;
    this.staged++;
    this.addedSinceKick += descs.length;
    this.inFlightCount++;
    this.raw.set((descs[descs.length - 1] as PackedDescriptor).id & 0xffff, descs.length);
  }

  // ---- internals ----

  private buffer(b: Uint8Array | number, fill: number): BufferRef {
    const len = typeof b === 'number' ? b : b.length;
    const addr = this.allocator.alloc(Math.max(len, 1));
    const view = this.memory.hostView(addr, len);
    if (typeof b === 'number') view.fill(fill);
    else view.set(b);
    return { addr, len };
  }

  private views(): void {
    const memory = this.memory;
    if (this.generation === memory.generation) return;
    const { size } = this;
    const { descAddr, driverAddr, deviceAddr } = this.config;
    const ring = memory.hostView(descAddr, VRING_DESC_SIZE * size);
    this.ring32 = new Uint32Array(ring.buffer, ring.byteOffset, ring.length >>> 2);
    this.ring16 = new Uint16Array(ring.buffer, ring.byteOffset, ring.length >>> 1);
    if (this.packed) {
      const drv = memory.hostView(driverAddr, 4);
      const dev = memory.hostView(deviceAddr, 4);
      this.driverEvent = new Uint16Array(drv.buffer, drv.byteOffset, 2);
      this.deviceEvent = new Uint16Array(dev.buffer, dev.byteOffset, 2);
    } else {
      const avail = memory.hostView(driverAddr, vringUsedEventOffset(size) + 2);
      const used = memory.hostView(deviceAddr, vringAvailEventOffset(size) + 2);
      this.avail16 = new Uint16Array(avail.buffer, avail.byteOffset, avail.length >>> 1);
      this.used16 = new Uint16Array(used.buffer, used.byteOffset, used.length >>> 1);
      this.used32 = new Uint32Array(used.buffer, used.byteOffset, used.length >>> 2);
    }
    this.generation = memory.generation;
  }

  /** Packed: the flags currently in ring slot `i`. */
  private slotFlags(i: number): number {
    return (this.ring32[i * 4 + 3] as number) >>> 16;
  }

  private advanceAvail(): void {
    if (++this.availIdx === this.size) {
      this.availIdx = 0;
      this.availWrap ^= 1;
    }
  }

  private submit(
    readable: readonly BufferRef[],
    writable: readonly BufferRef[],
    indirect: boolean,
    chain: { table: BufferRef | null } | null,
  ): number {
    const n = readable.length + writable.length;
    if (n === 0) throw new RangeError('a chain needs at least one buffer');
    if (indirect && !this.config.indirect) throw new RangeError('indirect descriptors are not negotiated');
    this.views();
    const ringDescs = indirect ? 1 : n;
    let tableAddr = 0;
    if (indirect) {
      tableAddr = this.allocator.alloc(n * VRING_DESC_SIZE);
      const t = this.memory.hostView(tableAddr, n * VRING_DESC_SIZE);
      const t32 = new Uint32Array(t.buffer, t.byteOffset, n * 4);
      for (let k = 0; k < n; k++) {
        const buf = (k < readable.length ? readable[k] : writable[k - readable.length]) as BufferRef;
        let flags = k < readable.length ? 0 : VRING_DESC_F_WRITE;
        if (!this.packed && k < n - 1) flags |= VRING_DESC_F_NEXT;
        putDescriptor(t32, k, buf.addr, buf.len, this.packed ? flags << 16 : flags | ((k + 1) << 16));
      }
      if (chain !== null) chain.table = { addr: tableAddr, len: n * VRING_DESC_SIZE };
    }
    let id: number;
    if (this.packed) {
      if (this.freeCount === 0 || this.freeSlots < ringDescs) throw new RangeError('the ring is full');
      id = this.freeStack[--this.freeCount] as number;
      this.freeSlots -= ringDescs;
      const headAt = this.availIdx;
      let headFlags = 0;
      for (let k = 0; k < ringDescs; k++) {
        let addr: number, len: number, flags: number;
        if (indirect) {
          addr = tableAddr;
          len = n * VRING_DESC_SIZE;
          flags = VRING_DESC_F_INDIRECT;
        } else {
          const buf = (k < readable.length ? readable[k] : writable[k - readable.length]) as BufferRef;
          addr = buf.addr;
          len = buf.len;
          flags = (k < readable.length ? 0 : VRING_DESC_F_WRITE) | (k < n - 1 ? VRING_DESC_F_NEXT : 0);
        }
        flags |= this.availWrap === 1 ? F_AVAIL : F_USED;
        if (k === 0) headFlags = flags;
        // The first descriptor keeps its old flags (not available, not newly used) until publish().
        const word3 = id | ((k === 0 ? this.slotFlags(this.availIdx) : flags) << 16);
        putDescriptor(this.ring32, this.availIdx, addr, len, word3);
        this.advanceAvail();
      }
      this.stagedHeadAt[this.staged] = headAt * 8 + 7;
      this.stagedHeadFlags[this.staged] = headFlags;
      this.addedSinceKick += ringDescs;
    } else {
      if (this.freeCount < ringDescs) throw new RangeError('the descriptor table is full');
      let prev = -1;
      id = 0;
      for (let k = 0; k < ringDescs; k++) {
        const i = this.freeStack[--this.freeCount] as number;
        if (prev < 0) id = i;
        else {
          this.nextShadow[prev] = i;
          this.ring32[prev * 4 + 3] = ((this.ring32[prev * 4 + 3] as number) & 0xffff) | (i << 16);
        }
        if (indirect) {
          putDescriptor(this.ring32, i, tableAddr, n * VRING_DESC_SIZE, VRING_DESC_F_INDIRECT);
        } else {
          const buf = (k < readable.length ? readable[k] : writable[k - readable.length]) as BufferRef;
          const flags = (k < readable.length ? 0 : VRING_DESC_F_WRITE) | (k < n - 1 ? VRING_DESC_F_NEXT : 0);
          putDescriptor(this.ring32, i, buf.addr, buf.len, flags);
        }
        prev = i;
      }
      this.avail16[2 + ((this.availIdx + 0) & this.mask)] = id;
      this.availIdx = (this.availIdx + 1) & 0xffff;
      this.addedSinceKick++;
    }
    this.staged++;
    this.recLive[id] = 1;
    this.recDescs[id] = ringDescs;
    this.recTableAddr[id] = tableAddr;
    this.recTableLen[id] = indirect ? n * VRING_DESC_SIZE : 0;
    this.recChain[id] = chain as MockChain | null;
    this.inFlightCount++;
    return id;
  }

  /** Read used entries; with `out`, build UsedEntry objects. Returns the count. */
  private consume(out: UsedEntry[] | null): number {
    this.views();
    let count = 0;
    if (this.packed) {
      for (;;) {
        const at = this.usedIdx * 8 + 7;
        const flags = Atomics.load(this.ring16, at);
        const a = (flags >>> VRING_PACKED_DESC_F_AVAIL) & 1;
        const u = (flags >>> VRING_PACKED_DESC_F_USED) & 1;
        if (a !== this.usedWrap || u !== this.usedWrap) break;
        const id = this.ring16[this.usedIdx * 8 + 6] as number;
        const len = this.ring32[this.usedIdx * 4 + 2] as number;
        const slots = this.finish(id, len, out);
        for (let k = 0; k < slots; k++) {
          if (++this.usedIdx === this.size) {
            this.usedIdx = 0;
            this.usedWrap ^= 1;
          }
        }
        count++;
      }
      if (
        count > 0 &&
        this.autoEvent &&
        this.config.eventIdx &&
        this.driverEvent[1] === VRING_PACKED_EVENT_FLAG_DESC
      ) {
        this.setUsedEvent(this.usedIdx, this.usedWrap);
      }
    } else {
      const idx = Atomics.load(this.used16, 1);
      while (this.usedIdx !== idx) {
        const at = 1 + ((this.usedIdx & this.mask) << 1);
        this.finish(this.used32[at] as number, this.used32[at + 1] as number, out);
        this.usedIdx = (this.usedIdx + 1) & 0xffff;
        count++;
      }
      if (count > 0 && this.autoEvent && this.config.eventIdx && (this.avail16[0] as number) === 0) {
        // Linux virtqueue_get_buf: used_event = last_used_idx, then a full barrier.
        Atomics.store(this.avail16, vringUsedEventOffset(this.size) >>> 1, this.usedIdx);
      }
    }
    return count;
  }

  /** Retire one used entry. Returns the ring slots it frees (packed). */
  private finish(id: number, len: number, out: UsedEntry[] | null): number {
    if (id < this.size && this.recLive[id] === 1) {
      const chain = this.recChain[id] ?? null;
      if (out !== null) {
        let written = new Uint8Array(0);
        if (chain !== null) {
          const total = chain.writable.reduce((s, b) => s + b.len, 0);
          if (len > total)
            throw new Error(`device reported ${len} bytes written for chain ${id}, which has ${total}`);
          written = new Uint8Array(len);
          let off = 0;
          for (const b of chain.writable) {
            if (off >= len) break;
            const n = Math.min(b.len, len - off);
            written.set(this.memory.hostView(b.addr, n), off);
            off += n;
          }
        }
        out.push({ id, len, chain, written });
      }
      if (chain !== null) {
        for (const b of chain.readable) this.allocator.release(b.addr, Math.max(b.len, 1));
        for (const b of chain.writable) this.allocator.release(b.addr, Math.max(b.len, 1));
      }
      const descs = this.recDescs[id] as number;
      if (this.recTableLen[id] !== 0)
        this.allocator.release(this.recTableAddr[id] as number, this.recTableLen[id] as number);
      this.recLive[id] = 0;
      this.recChain[id] = null;
      this.inFlightCount--;
      this.freeStack[this.freeCount++] = id;
      if (this.packed) {
        this.freeSlots += descs;
        return descs;
      }
      // Split: free the descriptors of the chain (the driver's own `next` record, not the shared table).
      let i = id;
      for (let k = 1; k < descs; k++) {
        i = this.nextShadow[i] as number;
        this.freeStack[this.freeCount++] = i;
      }
      return 1;
    }
    const raw = this.raw.get(id);
    if (raw === undefined) throw new Error(`device returned id ${id}, which is not in flight`);
    // Split: `raw` counts pushes of this head; packed: it is the chain's slot count.
    if (this.packed || raw === 1) this.raw.delete(id);
    else this.raw.set(id, raw - 1);
    this.inFlightCount--;
    if (out !== null) out.push({ id, len, chain: null, written: new Uint8Array(0) });
    return this.packed ? raw : 1;
  }
}

function putDescriptor(t32: Uint32Array, i: number, addr: number, len: number, word3: number): void {
  const b = i * 4;
  const lo = addr >>> 0; // addr < 2^53: ToUint32 is the low word
  t32[b] = lo;
  t32[b + 1] = (addr - lo) / 0x1_0000_0000;
  t32[b + 2] = len;
  t32[b + 3] = word3;
}

/** Bytes the rings of one queue take (with alignment slack). */
function ringBytes(size: number, packed: boolean): number {
  return packed ? 16 * size + 64 : 16 * size + 2 * size + 8 * size + 64;
}
