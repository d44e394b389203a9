/**
 * What the split and packed queue engines share: configuration, the hooks the transport gave them, the error
 * latch (first ring error wins, reported once), and the counters that both formats keep the same way.
 */
import type { GuestMemory } from '../memory/guest-memory.js';
import { VIRTQUEUE_MAX_SIZE } from '../uapi/virtio-ring.js';
import type { QueueChain } from './chain.js';
import type { InflightRecorder, QueueOptions } from './split-queue.js';
import { VirtqueueError } from './virtqueue.js';
import type { VirtqueueConfig } from './virtqueue.js';

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

  constructor(config: VirtqueueConfig, memory: GuestMemory, options: QueueOptions) {
    // The ring views are host-endian typed arrays; virtio 1.x rings are little-endian.
    if (!LITTLE_ENDIAN) throw new Error('vduse-ts virtqueues need a little-endian CPU');
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
  }

  get error(): VirtqueueError | null {
    return this.err;
  }

  get inFlight(): number {
    return this.inFlightCount;
  }

  /** Latch the first ring error and report it once; pop() returns null from then on. */
  protected fail(e: unknown): void {
    if (this.err !== null) return;
    const error =
      e instanceof VirtqueueError
        ? e
        : new VirtqueueError('memory', this.index, e instanceof Error ? e.message : String(e));
    this.err = error;
    if (this.onError !== undefined) this.onError(error);
  }
}
