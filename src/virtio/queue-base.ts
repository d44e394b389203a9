/**
 * What the split and packed queue engines share, whatever the ring format: configuration, the hooks the
 * transport gave them, the error latch (first ring error wins, reported once), and the in-flight bookkeeping
 * (which ids are in flight, the chains recovery hands out again, the epoch that setState() starts), with the
 * checks on the ids a driver offers.
 *
 * Imports go one way: split-queue.ts and packed-queue.ts import this file and ./virtqueue.ts; this file imports
 * ./virtqueue.ts and ./chain.ts, neither of which imports a queue engine.
 */
import { VduseTsError } from '../common/errors.js';
import { GuestMemoryError } from '../memory/guest-memory.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { VIRTQUEUE_MAX_SIZE } from '../uapi/virtio-ring.js';
import { QueueChain, RING_MAP_ATTEMPTS, TableCache, ViewCache, ringError } from './chain.js';
import { VirtqueueError } from './virtqueue.js';
import type { DescriptorChain, InflightRecorder, QueueOptions, VirtqueueConfig } from './virtqueue.js';

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export abstract class QueueBase {
  readonly index: number;
  readonly size: number;

  protected readonly memory: GuestMemory;
  protected readonly config: VirtqueueConfig;
  protected readonly signal: () => void;
  protected readonly onError: ((error: VirtqueueError) => void) | undefined;
  protected readonly fence: (() => void) | undefined;
  protected readonly eventIdx: boolean;
  protected readonly indirect: boolean;
  protected readonly log: InflightRecorder | undefined;

  protected err: VirtqueueError | null = null;
  /** Memory generation the ring views belong to; -1 before the first translation. */
  protected mappedGeneration = -1;
  protected inFlightCount = 0;
  /** Bumped by setState(): chains popped before it are no longer this queue's to complete. */
  protected epoch = 0;
  /** Chains rebuilt by recoverInflight(), handed out by pop() before anything new. */
  protected replay: QueueChain[] = [];
  /**
   * One byte per id (split: head index; packed: buffer id), 1 from pop() until its used entry is published: a
   * driver that offers an id again before it got it back breaks the ring ('inflight-id'), so at most `size`
   * chains are in flight whatever the driver does.
   */
  protected readonly busy: Uint8Array;
  /** Views of small buffers (headers, status bytes) by address, for the current memory generation. */
  protected readonly viewCache = new ViewCache();
  /** Indirect tables viewed in place, by address and length, for the current memory generation. */
  protected readonly tableCache = new TableCache();
  /** A ring the queue cannot serve (larger than the recorder), reported at the first use. */
  private readonly sizeProblem: VirtqueueError | null = null;

  constructor(config: VirtqueueConfig, memory: GuestMemory, options: QueueOptions) {
    // The ring views are host-endian typed arrays; virtio 1.x rings are little-endian.
    if (!LITTLE_ENDIAN) {
      throw new VduseTsError('ERR_VIRTQUEUE_BIG_ENDIAN', 'vduse-ts virtqueues need a little-endian CPU');
    }
    const size = config.size;
    if (!Number.isInteger(size) || size < 1 || size > VIRTQUEUE_MAX_SIZE) {
      throw new RangeError(`queue ${config.index}: size must be 1..${VIRTQUEUE_MAX_SIZE}, got ${size}`);
    }
    this.index = config.index;
    this.size = size;
    this.config = { ...config };
    this.memory = memory;
    this.signal = options.signal;
    this.onError = options.onError;
    this.fence = options.fence;
    this.eventIdx = config.eventIdx;
    this.indirect = config.indirect;
    this.log = options.inflight;
    this.busy = new Uint8Array(size);
    const capacity = this.log?.capacity;
    if (capacity !== undefined && !(size <= capacity)) {
      // The driver chose the ring size (the kernel does not always hold it to the device's maximum): the state
      // log has room for `capacity` ids only, so such a ring is refused rather than indexed past the log.
      this.sizeProblem = new VirtqueueError(
        'ring-size',
        config.index,
        `ring of ${size} entries is larger than the device's maximum queue size ${capacity}`,
      );
    }
  }

  get error(): VirtqueueError | null {
    return this.err;
  }

  get inFlight(): number {
    return this.inFlightCount;
  }

  /** Called by map() of both formats before anything is translated: throws what the constructor found. */
  protected checkSize(): void {
    if (this.sizeProblem !== null) throw this.sizeProblem;
  }

  /**
   * A chain was read from the ring: check its id (below the size, not in flight already), mark it in flight
   * and hand it to the caller. Throws VirtqueueError (pop() turns it into the latched error).
   */
  protected admit(chain: QueueChain): void {
    const id = chain.id;
    const busy = this.busy;
    if (id >= this.size) this.idError('buffer-id', `buffer id ${id} is outside 0..${this.size - 1}`);
    if (busy[id] !== 0) this.idError('inflight-id', `${this.idName} ${id} was offered again while in flight`);
    busy[id] = 1;
    chain.owner = this;
    chain.epoch = this.epoch;
    chain.live = true;
    this.inFlightCount++;
  }

  /**
   * addUsed(): the chain if it is in flight on this queue (now no longer), else null after latching a
   * 'used-id' error. Its id stays busy until the used entry is published (see released()).
   */
  protected retire(chain: DescriptorChain): QueueChain | null {
    const c = chain as QueueChain;
    if (!(c instanceof QueueChain) || c.owner !== this || c.epoch !== this.epoch || !c.live) {
      this.fail(
        new VirtqueueError(
          'used-id',
          this.index,
          `${this.idName} ${chain.id} is not in flight on this queue`,
        ),
      );
      return null;
    }
    c.live = false;
    this.inFlightCount--;
    return c;
  }

  /** The used length to report for `chain`: `len` clamped to 0..writableBytes. */
  protected static usedLength(chain: QueueChain, len: number): number {
    return len > chain.writableBytes ? chain.writableBytes : len >= 0 ? len : 0;
  }

  /** setState(): every chain in flight is forgotten, every id free. */
  protected forgetInflight(): void {
    this.inFlightCount = 0;
    this.busy.fill(0);
    this.replay = [];
    this.epoch++;
  }

  /** recoverInflight(), after setState(): `chains` are in flight again and pop() hands them out first. */
  protected adopt(chains: QueueChain[]): number {
    for (const chain of chains) {
      this.busy[chain.id] = 1;
      chain.owner = this;
      chain.epoch = this.epoch;
      chain.live = true;
    }
    this.inFlightCount = chains.length;
    this.replay = chains;
    return chains.length;
  }

  /** Latch the first ring error and report it once; pop() returns null from then on. */
  /**
   * The ring's three areas, as `take` looks them up, all in one memory generation: a look-up may find a region
   * stale and drop it (a new generation), and a view taken before that may be of the dropped region, so they are
   * taken again (up to RING_MAP_ATTEMPTS times; then a 'ring-layout' error is thrown). Returns the generation.
   */
  protected viewsInOneGeneration(take: () => void): number {
    for (let attempt = 1; ; attempt++) {
      const generation = this.memory.generation;
      take();
      if (this.memory.generation === generation) return generation;
      if (attempt === RING_MAP_ATTEMPTS)
        ringError(
          'ring-layout',
          this.index,
          `guest memory changed under every one of ${attempt} translations`,
        );
    }
  }

  protected fail(e: unknown): void {
    if (this.err !== null) return;
    let error: VirtqueueError;
    if (e instanceof VirtqueueError) error = e;
    else if (e instanceof GuestMemoryError)
      error = new VirtqueueError('memory', this.index, e.message, { cause: e });
    else
      error = new VirtqueueError('internal', this.index, e instanceof Error ? e.message : String(e), {
        cause: e,
      });
    this.err = error;
    if (this.onError !== undefined) this.onError(error);
  }

  /** What the driver calls an id in this format ('head' for split, 'buffer' for packed). */
  protected abstract readonly idName: string;

  private idError(kind: 'buffer-id' | 'inflight-id', message: string): never {
    throw new VirtqueueError(kind, this.index, message);
  }
}
