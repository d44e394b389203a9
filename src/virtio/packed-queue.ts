/**
 * Device side of a packed virtqueue (virtio spec §2.8): one descriptor ring with AVAIL/USED flag bits and wrap
 * counters, chains and indirect tables, in-order or out-of-order completion by buffer id, and event suppression
 * in both directions (enable / disable / descriptor-specific with EVENT_IDX).
 *
 * Memory ordering: the flags word of the next descriptor is read with Atomics.load (acquire) before its other
 * fields. publish() writes the used descriptors of the batch with plain stores, the first one's flags last with
 * Atomics.store (release), so the whole batch becomes visible at once; then a full fence before reading the
 * driver's event suppression area.
 */
import { ACCESS_READ, ACCESS_RW, ACCESS_WRITE, GuestMemoryError } from '../memory/guest-memory.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import {
  PVIRTQ_EVENT_SUPPRESS_SIZE,
  VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE,
  VRING_PACKED_DESC_F_AVAIL,
  VRING_PACKED_DESC_F_USED,
  VRING_PACKED_DESC_SIZE,
  VRING_PACKED_EVENT_FLAG_DESC,
  VRING_PACKED_EVENT_FLAG_DISABLE,
  VRING_PACKED_EVENT_FLAG_ENABLE,
  VRING_PACKED_EVENT_F_WRAP_CTR,
  vringNeedEvent,
} from '../uapi/virtio-ring.js';
import { QueueChain, addDescriptor, indirectTable, ringError } from './chain.js';
import { QueueBase } from './queue-base.js';
import { VirtqueueError } from './virtqueue.js';
import type {
  DescriptorChain,
  InflightSource,
  PackedQueueState,
  QueueOptions,
  SplitQueueState,
  Virtqueue,
  VirtqueueConfig,
} from './virtqueue.js';

const F_AVAIL = 1 << VRING_PACKED_DESC_F_AVAIL;
const F_USED = 1 << VRING_PACKED_DESC_F_USED;
const WRAP_BIT = 1 << VRING_PACKED_EVENT_F_WRAP_CTR;

/** Whether a descriptor with `flags` is available to a device whose avail wrap counter is `wrap` (§2.8.1). */
function isAvailable(flags: number, wrap: number): boolean {
  const avail = (flags >>> VRING_PACKED_DESC_F_AVAIL) & 1;
  return avail === wrap && avail !== ((flags >>> VRING_PACKED_DESC_F_USED) & 1);
}

export class PackedQueue extends QueueBase implements Virtqueue {
  readonly packed = true;
  protected readonly idName = 'buffer';

  private ring32: Uint32Array = new Uint32Array(0);
  private ring16: Uint16Array = new Uint16Array(0);
  /** Driver event suppression area (controls our used notifications): [off_wrap, flags]. */
  private driverEvent: Uint16Array = new Uint16Array(0);
  /** Device event suppression area (controls the driver's kicks): [off_wrap, flags]. */
  private deviceEvent: Uint16Array = new Uint16Array(0);

  private availIdx = 0;
  private availWrap = 1;
  private usedIdx = 0;
  private usedWrap = 1;
  private pending = 0;
  private readonly pendingId: Uint16Array;
  private readonly pendingLen: Uint32Array;
  private readonly pendingSlots: Uint16Array;
  private notify = true;
  /** Last off_wrap written with the DESC flag, or -1 when the area holds something else. */
  private eventWritten = -1;

  constructor(config: VirtqueueConfig, memory: GuestMemory, options: QueueOptions) {
    super(config, memory, options);
    const size = this.size;
    this.pendingId = new Uint16Array(size);
    this.pendingLen = new Uint32Array(size);
    this.pendingSlots = new Uint16Array(size);
  }

  pop(): DescriptorChain | null {
    if (this.err !== null) return null;
    if (this.replay.length > 0) return this.replay.shift()!;
    if (this.mappedGeneration !== this.memory.generation && !this.map()) return null;
    const at = (this.availIdx << 2) + 3;
    let word = Atomics.load(this.ring32, at);
    if (!isAvailable(word >>> 16, this.availWrap)) {
      if (!this.notify || !this.eventIdx) return null;
      const offWrap = this.availIdx | (this.availWrap << VRING_PACKED_EVENT_F_WRAP_CTR);
      if (this.eventWritten === offWrap) return null;
      // Keep kicks coming for a device that just pops until empty: ask for this slot, then look again.
      this.writeDeviceEvent(offWrap);
      word = Atomics.load(this.ring32, at);
      if (!isAvailable(word >>> 16, this.availWrap)) return null;
    }
    const chain = new QueueChain();
    const first = this.availIdx;
    try {
      this.walk(chain, word);
      this.admit(chain);
    } catch (e) {
      this.fail(e);
      return null;
    }
    // The id is checked (below the size, hence the log's capacity, and not in flight): the log may index by it.
    if (this.log !== undefined) {
      this.log.poppedPacked(
        chain.id,
        this.ring32,
        first,
        chain.slots,
        this.availIdx | (this.availWrap << VRING_PACKED_EVENT_F_WRAP_CTR),
      );
    }
    return chain;
  }

  addUsed(chain: DescriptorChain, len: number): void {
    const c = this.retire(chain);
    if (c === null) return;
    if (this.pending === this.size) this.publish();
    const n = this.pending++;
    this.pendingId[n] = c.id;
    this.pendingLen[n] = QueueBase.usedLength(c, len);
    this.pendingSlots[n] = c.slots;
  }

  publish(): boolean {
    const count = this.pending;
    if (count === 0) return false;
    if (this.mappedGeneration !== this.memory.generation && !this.map()) return false;
    this.pending = 0;
    const size = this.size;
    const r32 = this.ring32;
    const r16 = this.ring16;
    let s = this.usedIdx;
    let wrap = this.usedWrap;
    let slots = 0;
    let headAt = 0;
    let headFlags = 0;
    const busy = this.busy;
    for (let k = 0; k < count; k++) {
      const len = this.pendingLen[k] as number;
      const id = this.pendingId[k] as number;
      r32[(s << 2) + 2] = len;
      r16[(s << 3) + 6] = id;
      // The driver may offer the id again once it has it back: from the flags store below.
      busy[id] = 0;
      const flags = (wrap === 1 ? F_AVAIL | F_USED : 0) | (len > 0 ? VRING_DESC_F_WRITE : 0);
      if (k === 0) {
        headAt = (s << 3) + 7;
        headFlags = flags;
      } else {
        r16[(s << 3) + 7] = flags;
      }
      const n = this.pendingSlots[k] as number;
      slots += n;
      s += n;
      if (s >= size) {
        s -= size;
        wrap ^= 1;
      }
    }
    const log = this.log;
    const to = s | (wrap << VRING_PACKED_EVENT_F_WRAP_CTR);
    if (log !== undefined) {
      log.publishingPacked(
        this.pendingId,
        count,
        this.usedIdx | (this.usedWrap << VRING_PACKED_EVENT_F_WRAP_CTR),
        to,
      );
    }
    Atomics.store(r16, headAt, headFlags);
    this.usedIdx = s;
    this.usedWrap = wrap;
    if (log !== undefined) log.completedPacked(this.pendingId, count, to);
    if (this.fence !== undefined) this.fence();
    const flags = Atomics.load(this.driverEvent, 1) & 3;
    let need: boolean;
    if (flags === VRING_PACKED_EVENT_FLAG_DISABLE) {
      need = false;
    } else if (flags === VRING_PACKED_EVENT_FLAG_DESC && this.eventIdx) {
      const offWrap = Atomics.load(this.driverEvent, 0);
      let event = offWrap & ~WRAP_BIT;
      if (offWrap >>> VRING_PACKED_EVENT_F_WRAP_CTR !== wrap) event -= size;
      need = vringNeedEvent(event, s, s - slots);
    } else {
      need = true; // ENABLE, or a value we do not know: notifying is always safe
    }
    if (need) this.signal();
    return need;
  }

  enableNotification(): boolean {
    this.notify = true;
    if (this.err !== null) return false;
    if (this.mappedGeneration !== this.memory.generation && !this.map()) return false;
    if (this.eventIdx) {
      this.writeDeviceEvent(this.availIdx | (this.availWrap << VRING_PACKED_EVENT_F_WRAP_CTR));
    } else {
      Atomics.store(this.deviceEvent, 1, VRING_PACKED_EVENT_FLAG_ENABLE);
      if (this.fence !== undefined) this.fence();
    }
    return isAvailable(Atomics.load(this.ring32, (this.availIdx << 2) + 3) >>> 16, this.availWrap);
  }

  disableNotification(): void {
    this.notify = false;
    this.eventWritten = -1;
    if (this.err !== null) return;
    if (this.mappedGeneration !== this.memory.generation && !this.map()) return;
    Atomics.store(this.deviceEvent, 1, VRING_PACKED_EVENT_FLAG_DISABLE);
  }

  /** The descriptor ring as u16 words, for an engine's wait loop to watch; null when broken. */
  watchView(): Uint16Array | null {
    if (this.err !== null) return null;
    if (this.mappedGeneration !== this.memory.generation && !this.map()) return null;
    return this.ring16;
  }

  /**
   * (next avail position << 1) | avail wrap counter when the descriptor there is not available (nothing the
   * device has not popped), else -1.
   */
  idleMark(): number {
    if (this.err !== null || this.replay.length > 0) return -1;
    if (this.mappedGeneration !== this.memory.generation && !this.map()) return -1;
    const word = Atomics.load(this.ring32, (this.availIdx << 2) + 3);
    return isAvailable(word >>> 16, this.availWrap) ? -1 : (this.availIdx << 1) | this.availWrap;
  }

  getState(): PackedQueueState {
    return {
      lastAvailCounter: this.availWrap,
      lastAvailIdx: this.availIdx,
      lastUsedCounter: this.usedWrap,
      lastUsedIdx: this.usedIdx,
    };
  }

  /** Restart from a saved position. Chains in flight are forgotten (addUsed on them is a 'used-id' error). */
  setState(state: SplitQueueState | PackedQueueState): void {
    if (!('lastAvailIdx' in state))
      throw new TypeError(`queue ${this.index}: packed queue state needs lastAvailIdx`);
    const { lastAvailCounter, lastAvailIdx, lastUsedCounter, lastUsedIdx } = state;
    for (const c of [lastAvailCounter, lastUsedCounter]) {
      if (c !== 0 && c !== 1) throw new RangeError(`queue ${this.index}: wrap counter ${c} is not 0 or 1`);
    }
    for (const i of [lastAvailIdx, lastUsedIdx]) {
      if (!Number.isInteger(i) || i < 0 || i >= this.size) {
        throw new RangeError(`queue ${this.index}: ring index ${i} is outside 0..${this.size - 1}`);
      }
    }
    this.availWrap = lastAvailCounter;
    this.availIdx = lastAvailIdx;
    this.usedWrap = lastUsedCounter;
    this.usedIdx = lastUsedIdx;
    this.pending = 0;
    this.eventWritten = -1;
    this.forgetInflight();
  }

  /**
   * After a crash: settle a batch that was being published (its first slot's USED bit tells whether the store
   * landed), restart from the logged used position, and rebuild the chains still in flight from the descriptor
   * copies in the log (their ring slots may have been reused). pop() hands them out first, oldest first. Returns
   * how many. Throws VirtqueueError when the log makes no sense (nothing is applied then).
   */
  recoverInflight(log: InflightSource): number {
    if (this.mappedGeneration !== this.memory.generation && !this.map()) throw this.err!;
    const q = this.index;
    const size = this.size;
    let used = log.usedPosition;
    const batch = log.pendingBatch;
    let completed: number[] = [];
    if (batch.count > 0) {
      const idx = batch.from & 0x7fff;
      const wrap = batch.from >>> VRING_PACKED_EVENT_F_WRAP_CTR;
      if (idx >= size)
        throw new VirtqueueError('ring-layout', q, `logged used position ${idx} is outside the ring`);
      const flags = Atomics.load(this.ring16, (idx << 3) + 7);
      if (((flags >>> VRING_PACKED_DESC_F_USED) & 1) === wrap) {
        completed = batch.ids;
        used = batch.to;
      }
    }
    const done = new Set(completed);
    const ids = log.inflightIds().filter((id) => !done.has(id));
    const usedIdx = used & 0x7fff;
    const usedWrap = (used >>> VRING_PACKED_EVENT_F_WRAP_CTR) & 1;
    if (usedIdx >= size)
      throw new VirtqueueError('ring-layout', q, `logged used position ${usedIdx} is outside the ring`);
    let availIdx = usedIdx;
    let availWrap = usedWrap;
    let total = 0;
    const chains: QueueChain[] = [];
    for (const id of ids) {
      if (id >= size)
        throw new VirtqueueError('buffer-id', q, `logged buffer id ${id} is outside 0..${size - 1}`);
      const slots = log.slotsOf(id);
      const descs = log.descriptorsOf(id);
      if (descs === null) {
        throw new VirtqueueError(
          'chain-loop',
          q,
          `in-flight buffer ${id} took ${slots} ring slots, more than the state log keeps: it cannot be resubmitted`,
        );
      }
      total += slots;
      if (total > size)
        throw new VirtqueueError('chain-loop', q, 'logged chains in flight take more than the ring');
      const chain = new QueueChain();
      try {
        this.walkCopy(chain, descs, slots);
      } catch (e) {
        throw e instanceof VirtqueueError
          ? e
          : new VirtqueueError('memory', q, (e as Error).message, { cause: e });
      }
      chain.id = id;
      chains.push(chain);
      availIdx += slots;
      if (availIdx >= size) {
        availIdx -= size;
        availWrap ^= 1;
      }
    }
    // Everything checked: apply.
    for (const id of completed) log.clear(id);
    log.settle(used);
    this.setState({
      lastAvailCounter: availWrap,
      lastAvailIdx: availIdx,
      lastUsedCounter: usedWrap,
      lastUsedIdx: usedIdx,
    });
    return this.adopt(chains);
  }

  /** Rebuild a chain from `slots` logged descriptors (ring format). */
  private walkCopy(chain: QueueChain, d: Uint32Array, slots: number): void {
    const q = this.index;
    for (let k = 0; k < slots; k++) {
      const b = k << 2;
      const flags = (d[b + 3] as number) >>> 16;
      if ((flags & VRING_DESC_F_INDIRECT) !== 0) {
        if (!this.indirect) ringError('indirect-not-negotiated', q, 'logged descriptor is indirect');
        this.walkIndirect(chain, d[b] as number, d[b + 1] as number, d[b + 2] as number);
        break;
      }
      addDescriptor(
        chain,
        this.memory,
        this.viewCache,
        q,
        d[b] as number,
        d[b + 1] as number,
        d[b + 2] as number,
        (flags & VRING_DESC_F_WRITE) !== 0,
      );
      if ((flags & VRING_DESC_F_NEXT) === 0) break;
    }
    chain.slots = slots;
  }

  private writeDeviceEvent(offWrap: number): void {
    this.deviceEvent[0] = offWrap;
    Atomics.store(this.deviceEvent, 1, VRING_PACKED_EVENT_FLAG_DESC);
    this.eventWritten = offWrap;
    if (this.fence !== undefined) this.fence();
  }

  /** Read the chain whose first descriptor's id/flags word is `word`, at availIdx; advance availIdx past it. */
  private walk(chain: QueueChain, word: number): void {
    const size = this.size;
    const q = this.index;
    const r = this.ring32;
    let s = this.availIdx;
    let wrap = this.availWrap;
    let w = word;
    let count = 1;
    for (; ; count++) {
      if (count > size) ringError('chain-loop', q, `chain at ${this.availIdx} is longer than the queue`);
      const b = s << 2;
      const flags = w >>> 16;
      const lo = r[b] as number;
      const hi = r[b + 1] as number;
      const len = r[b + 2] as number;
      if (++s === size) {
        s = 0;
        wrap ^= 1;
      }
      if ((flags & VRING_DESC_F_INDIRECT) !== 0) {
        if (!this.indirect)
          ringError('indirect-not-negotiated', q, `descriptor ${b >>> 2} is indirect, not negotiated`);
        if ((flags & VRING_DESC_F_NEXT) !== 0)
          ringError('indirect-table', q, `descriptor ${b >>> 2} has INDIRECT and NEXT`);
        this.walkIndirect(chain, lo, hi, len);
        break;
      }
      addDescriptor(chain, this.memory, this.viewCache, q, lo, hi, len, (flags & VRING_DESC_F_WRITE) !== 0);
      if ((flags & VRING_DESC_F_NEXT) === 0) break;
      w = r[(s << 2) + 3] as number;
    }
    // The buffer id sits in the last descriptor of the chain (§2.8.6).
    chain.id = w & 0xffff;
    chain.slots = count;
    this.availIdx = s;
    this.availWrap = wrap;
  }

  private walkIndirect(chain: QueueChain, addrLo: number, addrHi: number, len: number): void {
    const q = this.index;
    const t = indirectTable(this.memory, this.tableCache, q, addrLo, addrHi, len);
    const entries = len >>> 4;
    // Packed indirect tables are used in order, all entries; only WRITE is meaningful inside (§2.8.7).
    for (let j = 0; j < entries; j++) {
      const b = j << 2;
      const flags = (t[b + 3] as number) >>> 16;
      if ((flags & VRING_DESC_F_INDIRECT) !== 0)
        ringError('nested-indirect', q, `indirect descriptor ${j} is itself indirect`);
      addDescriptor(
        chain,
        this.memory,
        this.viewCache,
        q,
        t[b] as number,
        t[b + 1] as number,
        t[b + 2] as number,
        (flags & VRING_DESC_F_WRITE) !== 0,
      );
    }
  }

  private map(): boolean {
    const q = this.index;
    const { descAddr, driverAddr, deviceAddr } = this.config;
    try {
      this.checkSize();
      if (descAddr % 16 !== 0 || driverAddr % 4 !== 0 || deviceAddr % 4 !== 0) {
        ringError('ring-layout', q, 'ring areas are not aligned as §2.8.10 requires (16, 4, 4)');
      }
      let ring!: Uint8Array;
      let drv!: Uint8Array;
      let dev!: Uint8Array;
      const generation = this.viewsInOneGeneration(() => {
        ring = this.memory.view(descAddr, VRING_PACKED_DESC_SIZE * this.size, ACCESS_RW);
        drv = this.memory.view(driverAddr, PVIRTQ_EVENT_SUPPRESS_SIZE, ACCESS_READ);
        dev = this.memory.view(deviceAddr, PVIRTQ_EVENT_SUPPRESS_SIZE, ACCESS_WRITE);
      });
      if (ring.byteOffset % 4 !== 0 || drv.byteOffset % 2 !== 0 || dev.byteOffset % 2 !== 0) {
        ringError('ring-layout', q, 'ring areas are not aligned in host memory');
      }
      this.ring32 = new Uint32Array(ring.buffer, ring.byteOffset, ring.length >>> 2);
      this.ring16 = new Uint16Array(ring.buffer, ring.byteOffset, ring.length >>> 1);
      this.driverEvent = new Uint16Array(drv.buffer, drv.byteOffset, 2);
      this.deviceEvent = new Uint16Array(dev.buffer, dev.byteOffset, 2);
      this.mappedGeneration = generation;
      this.eventWritten = -1;
      return true;
    } catch (e) {
      this.fail(
        e instanceof GuestMemoryError
          ? new VirtqueueError('ring-layout', q, `ring area: ${e.message}`, { cause: e })
          : e,
      );
      return false;
    }
  }
}
