/**
 * A queue as the engine hands it to the device: the ring engine (split or packed) behind the Virtqueue
 * interface, plus what serving it safely needs and the ring engines do not know about:
 * - every popped chain pins guest memory from before it is read until it is given back (addUsed) or the device's
 *   reset has settled (release()): guest memory is never unmapped under a request (../../memory/iotlb-memory.ts);
 * - nothing the guest wrote can throw out of here into the device's callbacks (kick, poll, timer): a throw of
 *   the ring engine or of its in-flight log stops the queue and is reported once (onError), like a ring error;
 * - a halted queue (the device needs a reset, or is being drained for a successor) hands out no new chain;
 *   completions of those in flight still go through;
 * - for the engine's wait loop (KickLoop.watch): the ring word to watch and where the ring is idle, and a
 *   mark that a pop makes stale at once (the loop must not take a ring the device moved on in for idle).
 */
import type {
  DescriptorChain,
  PackedQueue,
  PackedQueueState,
  RingWatchable,
  SplitQueue,
  SplitQueueState,
  Virtqueue,
} from '../../virtio/index.js';
import { VirtqueueError } from '../../virtio/index.js';
import type { RecoverableLog, TransportMemory } from './data-path.js';

export class ServedQueue implements Virtqueue {
  readonly index: number;
  readonly size: number;
  readonly packed: boolean;
  readonly inner: Virtqueue;
  readonly #memory: TransportMemory;
  readonly #pinning: boolean;
  /** Per buffer id: the chain in flight (null: none) and what its pin() returned. */
  readonly #held: (DescriptorChain | null)[];
  readonly #heldAt: Float64Array;
  #heldCount = 0;
  readonly #onError: (error: VirtqueueError) => void;
  #error: VirtqueueError | null = null;
  #halted = false;
  /** Stopped: chains still in flight are released by release(), not by addUsed. */
  #retired = false;
  /** The wait loop's idle marks (KickLoop.marks), or null: a pop sets this queue's to -1. */
  #marks: Int32Array | null = null;
  /** Chains given back (addUsed) since the queue started. */
  completed = 0;

  constructor(inner: Virtqueue, memory: TransportMemory, onError: (error: VirtqueueError) => void) {
    this.inner = inner;
    this.index = inner.index;
    this.size = inner.size;
    this.packed = inner.packed;
    this.#memory = memory;
    this.#pinning = typeof memory.pin === 'function' && typeof memory.unpin === 'function';
    this.#held = this.#pinning ? new Array<DescriptorChain | null>(inner.size).fill(null) : [];
    this.#heldAt = new Float64Array(this.#pinning ? inner.size : 0);
    this.#onError = onError;
  }

  get error(): VirtqueueError | null {
    return this.inner.error ?? this.#error;
  }

  get inFlight(): number {
    return this.inner.inFlight;
  }

  /** Chains handed out and holding a pin. */
  get pinned(): number {
    return this.#heldCount;
  }

  pop(): DescriptorChain | null {
    if (this.#halted || this.#error !== null) return null;
    // Pinned before the chain is read: a look-up made while reading it may find a region stale and drop it
    // (IotlbMemory), and the views the chain took of that region before must stay mapped as long as it is held.
    const pinned = this.#pinning ? this.#memory.pin!() : 0;
    let chain: DescriptorChain | null;
    try {
      chain = this.inner.pop();
    } catch (err) {
      this.#unpin(pinned);
      this.#fail(err);
      return null;
    }
    if (chain === null) {
      this.#unpin(pinned);
      return null;
    }
    if (this.#marks !== null) this.#marks[this.index] = -1;
    if (!this.#pinning) return chain;
    const id = chain.id;
    if (!(id >= 0 && id < this.size) || this.#held[id] !== null) {
      this.#unpin(pinned);
      this.#fail(
        new VirtqueueError(
          'descriptor-index',
          this.index,
          id < this.size
            ? `buffer ${id} was made available again while still in flight`
            : `buffer id ${id} is not below the queue size ${this.size}`,
        ),
      );
      return null;
    }
    this.#held[id] = chain;
    this.#heldAt[id] = pinned;
    this.#heldCount++;
    return chain;
  }

  /** Give back a pin pop() took (none when the memory does not pin). */
  #unpin(pinned: number): void {
    if (this.#pinning) this.#memory.unpin!(pinned);
  }

  addUsed(chain: DescriptorChain, len: number): void {
    this.completed++;
    if (this.#pinning && !this.#retired) {
      const id = chain.id;
      if (id >= 0 && id < this.size && this.#held[id] === chain) {
        this.#held[id] = null;
        this.#heldCount--;
        this.#memory.unpin!(this.#heldAt[id]!);
      }
    }
    try {
      this.inner.addUsed(chain, len);
    } catch (err) {
      this.#fail(err);
    }
  }

  publish(): boolean {
    try {
      return this.inner.publish();
    } catch (err) {
      this.#fail(err);
      return false;
    }
  }

  enableNotification(): boolean {
    if (this.#halted || this.#error !== null) return false;
    try {
      return this.inner.enableNotification();
    } catch (err) {
      this.#fail(err);
      return false;
    }
  }

  disableNotification(): void {
    try {
      this.inner.disableNotification();
    } catch (err) {
      this.#fail(err);
    }
  }

  /** Let a pop mark this queue as not idle in `marks` (a KickLoop's), at once. */
  trackIdle(marks: Int32Array | null): void {
    this.#marks = marks;
  }

  /** See RingWatchable: the ring words the wait loop watches (null when broken or halted). */
  watchView(): Uint16Array | null {
    if (this.#halted || this.error !== null) return null;
    try {
      return (this.inner as Partial<RingWatchable>).watchView?.() ?? null;
    } catch (err) {
      this.#fail(err);
      return null;
    }
  }

  /** See RingWatchable: where the ring is idle, or -1 (also when halted: nothing is popped then). */
  idleMark(): number {
    if (this.#halted || this.error !== null) return -1;
    try {
      return (this.inner as Partial<RingWatchable>).idleMark?.() ?? -1;
    } catch (err) {
      this.#fail(err);
      return -1;
    }
  }

  getState(): SplitQueueState | PackedQueueState {
    return this.inner.getState();
  }

  setState(state: SplitQueueState | PackedQueueState): void {
    this.inner.setState(state);
  }

  /** Hand out no new chain (completions still go through). */
  halt(): void {
    this.#halted = true;
  }

  /**
   * The data path stopped: from now on the device's late completions do not unpin (the device was reset and
   * drops them); release() gives back every pin still held once its reset has settled.
   */
  retire(): void {
    this.#halted = true;
    this.#retired = true;
  }

  /** Give back the pins of every chain still held (the device holds no view any more). */
  release(): void {
    if (!this.#pinning) return;
    const held = this.#held;
    for (let id = 0; id < held.length; id++) {
      if (held[id] === null) continue;
      held[id] = null;
      this.#memory.unpin!(this.#heldAt[id]!);
    }
    this.#heldCount = 0;
  }

  /** Crash recovery: rebuild the chains in flight from `log` (see the ring engines' recoverInflight). */
  recoverInflight(log: RecoverableLog): number {
    return (this.inner as SplitQueue | PackedQueue).recoverInflight(log);
  }

  #fail(err: unknown): void {
    if (this.#error !== null || this.inner.error !== null) return;
    const error =
      err instanceof VirtqueueError
        ? err
        : new VirtqueueError('memory', this.index, err instanceof Error ? err.message : String(err));
    this.#error = error;
    this.#onError(error);
  }
}
