/**
 * Device side of a split virtqueue (virtio spec §2.7): avail ring consumption, descriptor chains (direct and
 * indirect), used ring production, notification suppression (flags and EVENT_IDX).
 *
 * Memory ordering (spec §2.7.7, §2.7.13; Linux virtio_ring.h; rust-vmm queue.rs): avail.idx is read with
 * Atomics.load (acquire) before any ring entry it covers; used elements are written with plain stores and then
 * published with Atomics.store of used.idx (release); between publishing used.idx (or re-enabling notifications)
 * and reading used_event / avail.flags / avail.idx there is a full fence: the seq_cst Atomics pair, plus
 * `options.fence` when given (native fence for weakly ordered CPUs).
 */
import { ACCESS_READ, ACCESS_WRITE, GuestMemoryError } from '../memory/guest-memory.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import {
  VRING_AVAIL_ALIGN_SIZE,
  VRING_AVAIL_F_NO_INTERRUPT,
  VRING_DESC_ALIGN_SIZE,
  VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE,
  VRING_USED_ALIGN_SIZE,
  VRING_USED_F_NO_NOTIFY,
  vringAvailEventOffset,
  vringDescTableSize,
  vringNeedEvent,
  vringUsedEventOffset,
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

export class SplitQueue extends QueueBase implements Virtqueue {
  readonly packed = false;
  protected readonly idName = 'head';

  private readonly mask: number;
  /** u16 index of used_event in the avail ring, and of avail_event in the used ring. */
  private readonly usedEventAt: number;
  private readonly availEventAt: number;

  private desc: Uint32Array = new Uint32Array(0);
  private avail: Uint16Array = new Uint16Array(0);
  private used16: Uint16Array = new Uint16Array(0);
  private used32: Uint32Array = new Uint32Array(0);

  private nextAvail = 0;
  /** avail.idx as last read: chains up to it can be popped without reading avail.idx again. */
  private availSeen = 0;
  /** used.idx as last published (also the `old` of the EVENT_IDX decision). */
  private usedPublished = 0;
  /** Used elements added since the last publish, kept here until publish() writes them. */
  private pending = 0;
  private readonly pendingId: Uint32Array;
  private readonly pendingLen: Uint32Array;
  private notify = true;
  /** Last avail_event written, or -1. */
  private availEventWritten = -1;

  constructor(config: VirtqueueConfig, memory: GuestMemory, options: QueueOptions) {
    super(config, memory, options);
    const size = this.size;
    this.mask = size - 1;
    this.usedEventAt = vringUsedEventOffset(size) >>> 1;
    this.availEventAt = vringAvailEventOffset(size) >>> 1;
    this.pendingId = new Uint32Array(size);
    this.pendingLen = new Uint32Array(size);
  }

  pop(): DescriptorChain | null {
    if (this.err !== null) return null;
    if (this.replay.length > 0) return this.replay.shift()!;
    if (this.mappedGeneration !== this.memory.generation && !this.map()) return null;
    const nextAvail = this.nextAvail;
    if (nextAvail === this.availSeen) {
      let idx = Atomics.load(this.avail, 1);
      if (idx === nextAvail && this.notify && this.eventIdx && this.availEventWritten !== nextAvail) {
        // Keep kicks coming for a device that just pops until empty: ask for the next index, then look again.
        this.writeAvailEvent(nextAvail);
        idx = Atomics.load(this.avail, 1);
      }
      if (idx === nextAvail) return null;
      if (((idx - nextAvail) & 0xffff) > this.size) {
        this.fail(
          new VirtqueueError(
            'avail-index',
            this.index,
            `avail.idx ${idx} is more than ${this.size} ahead of ${nextAvail}`,
          ),
        );
        return null;
      }
      this.availSeen = idx;
    }
    const head = this.avail[2 + (nextAvail & this.mask)] as number;
    this.nextAvail = (nextAvail + 1) & 0xffff;
    const chain = new QueueChain();
    try {
      this.walk(chain, head);
      this.admit(chain);
    } catch (e) {
      this.fail(e);
      return null;
    }
    // The head is checked (below the size, hence the log's capacity, and not in flight): the log may index by it.
    if (this.log !== undefined) this.log.popped(head, this.nextAvail);
    return chain;
  }

  addUsed(chain: DescriptorChain, len: number): void {
    const c = this.retire(chain);
    if (c === null) return;
    if (this.pending === this.size) this.publish();
    const n = this.pending++;
    this.pendingId[n] = c.id;
    this.pendingLen[n] = QueueBase.usedLength(c, len);
  }

  publish(): boolean {
    const count = this.pending;
    if (count === 0) return false;
    if (this.mappedGeneration !== this.memory.generation && !this.map()) return false;
    this.pending = 0;
    const used32 = this.used32;
    const busy = this.busy;
    const old = this.usedPublished;
    const mask = this.mask;
    for (let k = 0; k < count; k++) {
      const at = 1 + (((old + k) & mask) << 1);
      const id = this.pendingId[k] as number;
      used32[at] = id;
      used32[at + 1] = this.pendingLen[k] as number;
      // The driver may offer the head again once it has it back: from the used.idx store below.
      busy[id] = 0;
    }
    const idx = (old + count) & 0xffff;
    Atomics.store(this.used16, 1, idx);
    this.usedPublished = idx;
    if (this.log !== undefined) this.log.completed(this.pendingId, count, idx);
    if (this.fence !== undefined) this.fence();
    let need: boolean;
    if (this.eventIdx) need = vringNeedEvent(Atomics.load(this.avail, this.usedEventAt), idx, old);
    else need = (Atomics.load(this.avail, 0) & VRING_AVAIL_F_NO_INTERRUPT) === 0;
    if (need) this.signal();
    return need;
  }

  enableNotification(): boolean {
    this.notify = true;
    if (this.err !== null) return false;
    if (this.mappedGeneration !== this.memory.generation && !this.map()) return false;
    if (this.eventIdx) {
      this.writeAvailEvent(this.nextAvail);
    } else {
      Atomics.store(this.used16, 0, 0);
      if (this.fence !== undefined) this.fence();
    }
    return Atomics.load(this.avail, 1) !== this.nextAvail;
  }

  disableNotification(): void {
    this.notify = false;
    if (this.err !== null || this.eventIdx) return;
    if (this.mappedGeneration !== this.memory.generation && !this.map()) return;
    Atomics.store(this.used16, 0, VRING_USED_F_NO_NOTIFY);
  }

  /** The avail ring as u16 words (flags, idx, ring...), for an engine's wait loop to watch; null when broken. */
  watchView(): Uint16Array | null {
    if (this.err !== null) return null;
    if (this.mappedGeneration !== this.memory.generation && !this.map()) return null;
    return this.avail;
  }

  /** nextAvail when the ring holds nothing the device has not popped (avail.idx there), else -1. */
  idleMark(): number {
    if (this.err !== null || this.replay.length > 0) return -1;
    if (this.mappedGeneration !== this.memory.generation && !this.map()) return -1;
    return Atomics.load(this.avail, 1) === this.nextAvail ? this.nextAvail : -1;
  }

  getState(): SplitQueueState {
    return { nextAvail: this.nextAvail, nextUsed: this.usedPublished };
  }

  /** Restart from a saved position. Chains in flight are forgotten (addUsed on them is a 'used-id' error). */
  setState(state: SplitQueueState | PackedQueueState): void {
    if (!('nextAvail' in state))
      throw new TypeError(`queue ${this.index}: split queue state needs nextAvail`);
    const nextAvail = state.nextAvail;
    const nextUsed = state.nextUsed ?? nextAvail;
    for (const v of [nextAvail, nextUsed]) {
      if (!Number.isInteger(v) || v < 0 || v > 0xffff)
        throw new RangeError(`queue ${this.index}: index ${v} is not a u16`);
    }
    this.nextAvail = nextAvail;
    this.availSeen = nextAvail;
    this.usedPublished = nextUsed;
    this.pending = 0;
    this.availEventWritten = -1;
    this.forgetInflight();
  }

  /**
   * After a crash: settle the log against the ring (a batch whose used->idx store landed is complete), restart
   * from the logged position, and rebuild the chains still in flight from the descriptor table (the driver has
   * not reclaimed them). pop() hands them out first, oldest first. Returns how many. Throws VirtqueueError when
   * the ring or the log make no sense (nothing is applied then).
   */
  recoverInflight(log: InflightSource): number {
    if (this.mappedGeneration !== this.memory.generation && !this.map()) throw this.err!;
    const q = this.index;
    const ringUsed = Atomics.load(this.used16, 1);
    const loggedUsed = log.usedPosition & 0xffff;
    const behind = (ringUsed - loggedUsed) & 0xffff;
    if (behind > this.size) {
      throw new VirtqueueError(
        'avail-index',
        q,
        `used idx ${ringUsed} is ${behind} past the logged ${loggedUsed}`,
      );
    }
    const completed: number[] = [];
    for (let k = 0; k < behind; k++) completed.push(this.used32[1 + (((loggedUsed + k) & this.mask) << 1)]!);
    const done = new Set(completed);
    const heads = log.inflightIds().filter((h) => !done.has(h));
    if (heads.length > this.size)
      throw new VirtqueueError('avail-index', q, `${heads.length} chains logged in flight`);
    const chains: QueueChain[] = [];
    for (const head of heads) {
      const chain = new QueueChain();
      try {
        this.walk(chain, head);
      } catch (e) {
        throw e instanceof VirtqueueError
          ? e
          : new VirtqueueError('memory', q, (e as Error).message, { cause: e });
      }
      chains.push(chain);
    }
    // Everything checked: apply.
    for (const id of completed) log.clear(id);
    log.settle(ringUsed);
    this.setState({ nextAvail: (ringUsed + heads.length) & 0xffff, nextUsed: ringUsed });
    return this.adopt(chains);
  }

  private writeAvailEvent(value: number): void {
    Atomics.store(this.used16, this.availEventAt, value);
    this.availEventWritten = value;
    if (this.fence !== undefined) this.fence();
  }

  /** Follow the chain starting at `head`, filling `chain`. Throws VirtqueueError / GuestMemoryError. */
  private walk(chain: QueueChain, head: number): void {
    const size = this.size;
    const q = this.index;
    if (head >= size) ringError('descriptor-index', q, `head ${head} is outside the table of ${size}`);
    chain.id = head;
    const d = this.desc;
    let i = head;
    for (let count = 1; ; count++) {
      if (count > size)
        ringError('chain-loop', q, `chain from head ${head} is longer than the queue (loop?)`);
      const b = i << 2;
      const word = d[b + 3] as number;
      const flags = word & 0xffff;
      if ((flags & VRING_DESC_F_INDIRECT) !== 0) {
        if (!this.indirect)
          ringError('indirect-not-negotiated', q, `descriptor ${i} is indirect, not negotiated`);
        if ((flags & VRING_DESC_F_NEXT) !== 0)
          ringError('indirect-table', q, `descriptor ${i} has INDIRECT and NEXT`);
        this.walkIndirect(chain, d[b] as number, d[b + 1] as number, d[b + 2] as number);
        return;
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
      if ((flags & VRING_DESC_F_NEXT) === 0) return;
      i = word >>> 16;
      if (i >= size)
        ringError('descriptor-index', q, `descriptor ${b >>> 2} links to ${i}, outside the table of ${size}`);
    }
  }

  private walkIndirect(chain: QueueChain, addrLo: number, addrHi: number, len: number): void {
    const q = this.index;
    const t = indirectTable(this.memory, this.tableCache, q, addrLo, addrHi, len);
    const entries = len >>> 4;
    let j = 0;
    for (let count = 1; ; count++) {
      if (count > entries)
        ringError('chain-loop', q, `indirect chain is longer than its table of ${entries} (loop?)`);
      const b = j << 2;
      const word = t[b + 3] as number;
      const flags = word & 0xffff;
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
      if ((flags & VRING_DESC_F_NEXT) === 0) return;
      j = word >>> 16;
      if (j >= entries)
        ringError(
          'descriptor-index',
          q,
          `indirect descriptor links to ${j}, outside the table of ${entries}`,
        );
    }
  }

  /** Translate the three ring areas for the current memory generation. False (error recorded) on failure. */
  private map(): boolean {
    const { size, index: q } = this;
    const { descAddr, driverAddr, deviceAddr } = this.config;
    const tail = this.eventIdx ? 2 : 0;
    try {
      this.checkSize();
      if ((size & (size - 1)) !== 0)
        ringError('ring-layout', q, `split queue size ${size} is not a power of 2`);
      if (
        descAddr % VRING_DESC_ALIGN_SIZE !== 0 ||
        driverAddr % VRING_AVAIL_ALIGN_SIZE !== 0 ||
        deviceAddr % VRING_USED_ALIGN_SIZE !== 0
      ) {
        ringError('ring-layout', q, 'ring areas are not aligned as §2.7 requires (16, 2, 4)');
      }
      let desc!: Uint8Array;
      let avail!: Uint8Array;
      let used!: Uint8Array;
      const generation = this.viewsInOneGeneration(() => {
        desc = this.memory.view(descAddr, vringDescTableSize(size), ACCESS_READ);
        avail = this.memory.view(driverAddr, vringUsedEventOffset(size) + tail, ACCESS_READ);
        used = this.memory.view(deviceAddr, vringAvailEventOffset(size) + tail, ACCESS_WRITE);
      });
      if (desc.byteOffset % 4 !== 0 || avail.byteOffset % 2 !== 0 || used.byteOffset % 4 !== 0) {
        ringError('ring-layout', q, 'ring areas are not aligned in host memory');
      }
      this.desc = new Uint32Array(desc.buffer, desc.byteOffset, desc.length >>> 2);
      // The u16 views include the 16-bit event field when EVENT_IDX is on; Uint16Array needs an even length.
      this.avail = new Uint16Array(avail.buffer, avail.byteOffset, avail.length >>> 1);
      this.used16 = new Uint16Array(used.buffer, used.byteOffset, used.length >>> 1);
      this.used32 = new Uint32Array(used.buffer, used.byteOffset, used.length >>> 2);
      this.mappedGeneration = generation;
      this.availEventWritten = -1;
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
