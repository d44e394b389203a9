/**
 * The device side of a virtqueue, shared by the split (./split-queue.ts) and packed (./packed-queue.ts) formats.
 * A queue is a state machine over GuestMemory: it owns no fds. The transport creates it at DRIVER_OK and gives
 * it a `signal` function that injects the used-buffer notification (interrupt).
 */
import { VduseTsError } from '../common/errors.js';
import type { GuestMemory } from '../memory/guest-memory.js';

/** One available buffer: the descriptor chain made into zero-copy views of guest memory. */
export interface DescriptorChain {
  /** What the driver gets back in the used ring: the head index (split) or the buffer id (packed). */
  readonly id: number;
  /** Device-readable buffers, in chain order. */
  readonly readable: readonly Uint8Array[];
  /** Device-writable buffers, in chain order. */
  readonly writable: readonly Uint8Array[];
  /** Total bytes of `readable`. */
  readonly readableBytes: number;
  /** Total bytes of `writable`. */
  readonly writableBytes: number;
}

/** Where the driver put the ring parts, as VDUSE_VQ_GET_INFO (or a mock driver) reports them. */
export interface VirtqueueConfig {
  index: number;
  /** Queue size (number of descriptors). Split: a power of two up to 32768. Packed: 1..32768. */
  size: number;
  /** Descriptor table (split) / descriptor ring (packed). */
  descAddr: number;
  /** Available ring (split) / driver event suppression area (packed). */
  driverAddr: number;
  /** Used ring (split) / device event suppression area (packed). */
  deviceAddr: number;
  /** VIRTIO_F_RING_EVENT_IDX negotiated. */
  eventIdx: boolean;
  /** VIRTIO_F_RING_INDIRECT_DESC negotiated. */
  indirect: boolean;
}

/** Device progress through a split ring: the next available index to process (VDUSE `vduse_vq_state_split`). */
export interface SplitQueueState {
  nextAvail: number;
  /** The used index the device has published; restored on reconnect. Defaults to nextAvail when unknown. */
  nextUsed?: number;
}

/** Device progress through a packed ring (VDUSE `vduse_vq_state_packed`): wrap counters are 0/1, indexes 15-bit. */
export interface PackedQueueState {
  lastAvailCounter: number;
  lastAvailIdx: number;
  lastUsedCounter: number;
  lastUsedIdx: number;
}

export type VirtqueueErrorKind =
  | 'avail-index' // the driver moved avail.idx by more than the queue size
  | 'descriptor-index' // a next/head index outside the table
  | 'buffer-id' // a packed buffer id outside 0..size-1
  | 'inflight-id' // a head (split) or buffer id (packed) offered again while still in flight
  | 'chain-loop' // a chain longer than the queue (loop)
  | 'nested-indirect' // an indirect table inside an indirect table
  | 'indirect-table' // zero-length, misaligned or oversized indirect table, or INDIRECT with NEXT
  | 'indirect-not-negotiated'
  | 'write-order' // a readable descriptor after a writable one
  | 'length-overflow' // total chain length above 2^32
  | 'memory' // an address outside mapped memory, or without the needed permission
  | 'used-id' // the device returned an id that is not in flight (a device bug)
  | 'ring-layout' // a ring part not mapped contiguously, misaligned, or a split size that is not a power of 2
  | 'ring-size' // a ring larger than the in-flight recorder holds (the device's maximum queue size)
  | 'internal'; // something else failed inside the queue (a bug; the cause says what)

/** A malformed ring. The transport answers it by setting DEVICE_NEEDS_RESET. */
export class VirtqueueError extends VduseTsError {
  declare readonly code: 'ERR_VIRTQUEUE';
  constructor(
    readonly kind: VirtqueueErrorKind,
    readonly queue: number,
    message: string,
    options: { cause?: unknown } = {},
  ) {
    super('ERR_VIRTQUEUE', `queue ${queue}: ${message}`, options);
  }
}

/**
 * What a queue-serving engine's wait loop reads to see a ring's new work without a kick (the ring engines have
 * it; src/sys/binding.ts KickLoop.watch says how the words are read).
 */
export interface RingWatchable {
  /** The ring words to watch (split: the avail ring; packed: the descriptor ring), as u16; null when broken. */
  watchView(): Uint16Array | null;
  /**
   * Where the ring is idle now, everything up to there popped (split: nextAvail; packed: (next avail position
   * << 1) | wrap counter), or -1 when there is more to pop (or the ring is broken).
   */
  idleMark(): number;
}

export interface Virtqueue {
  readonly index: number;
  readonly size: number;
  readonly packed: boolean;
  /** The first error met, or null. Once set, pop() returns null for ever (until the queue is recreated). */
  readonly error: VirtqueueError | null;
  /**
   * Chains popped and not yet returned with addUsed(). Never more than `size`: an id (split: head; packed: buffer
   * id) counts as in flight from pop() until its used entry is published, and a driver that offers it again
   * before that breaks the ring ('inflight-id'), so the work a queue holds is bounded whatever the driver does.
   */
  readonly inFlight: number;
  /**
   * The next available chain, or null when there is none or the ring is broken (see `error`). A bad ring never
   * throws; only an exception of `options.inflight` itself would come through.
   */
  pop(): DescriptorChain | null;
  /** Give a chain back with the number of bytes written into its writable part. Visible to the driver at publish(). */
  addUsed(chain: DescriptorChain, len: number): void;
  /**
   * Make used entries visible to the driver, then signal it if the notification rules (flags or event index)
   * say so. One call per batch. Returns true if it signalled.
   */
  publish(): boolean;
  /** Ask the driver for kicks again. Returns true if buffers arrived meanwhile: the caller pops again. */
  enableNotification(): boolean;
  /** Tell the driver kicks are not needed (the device is polling the ring). */
  disableNotification(): void;
  /** Progress, for VDUSE_GET_VQ_STATE and reconnect. */
  getState(): SplitQueueState | PackedQueueState;
  /** Restart from a saved position. Chains in flight are forgotten (addUsed on them is a 'used-id' error). */
  setState(state: SplitQueueState | PackedQueueState): void;
  /**
   * After a crash: settle `log` against the ring, restart from the logged position and rebuild the chains still
   * in flight; pop() hands them out first, oldest first. Returns how many. Throws VirtqueueError when the ring or
   * the log make no sense (nothing is applied then).
   */
  recoverInflight(log: InflightSource): number;
}

/** What a transport passes when it builds a queue. */
export interface VirtqueueOptions {
  /** Injects the used-buffer notification. */
  signal: () => void;
  /** Called once, on the first ring error (the transport sets DEVICE_NEEDS_RESET). */
  onError?: (error: VirtqueueError) => void;
}

/** VirtqueueOptions plus what the queue engines accept on top. */
export interface QueueOptions extends VirtqueueOptions {
  /**
   * A full memory fence (e.g. the native addon's `fence()`), called once per publish() and per notification
   * re-enable, after the seq_cst Atomics store. Not needed on x86; recommended on arm64.
   */
  fence?: () => void;
  /**
   * Crash-recovery log (src/transports/vduse/recovery/state-log.ts): told of every pop and every published
   * batch, in an order that lets a restarted process tell what completed (see recoverInflight()). None by default.
   */
  inflight?: InflightRecorder;
}

/**
 * What the queue engines tell a crash-recovery log. Positions: split: the free-running u16 index; packed: ring
 * index | wrap counter << 15. Every id passed is below both the queue size and `capacity`, and is in flight at
 * most once: the queue checks the guest's ids before they get here.
 */
export interface InflightRecorder {
  /**
   * Ids the recorder can hold (0..capacity-1): the device's maximum queue size. A ring larger than this is
   * refused (a 'ring-size' error at first use).
   */
  readonly capacity: number;
  /** Split: chain `id` (head) was popped; `availPosition` is the next avail index. */
  popped(id: number, availPosition: number): void;
  /** Packed: chain `id` was popped from ring slots first..first+slots-1 (copy them now: the ring gets reused). */
  poppedPacked(id: number, ring: Uint32Array, first: number, slots: number, availPosition: number): void;
  /** Split: the batch `ids[0..count)` was published (used->idx stored); `usedPosition` is the new used idx. */
  completed(ids: ArrayLike<number>, count: number, usedPosition: number): void;
  /** Packed: the batch is about to be made visible (before the first used descriptor's flags are stored). */
  publishingPacked(ids: ArrayLike<number>, count: number, from: number, to: number): void;
  /** Packed: the batch is visible. */
  completedPacked(ids: ArrayLike<number>, count: number, usedPosition: number): void;
}

/** What a queue needs from a log to recover after a crash (QueueLog in src/transports/vduse/recovery). */
export interface InflightSource {
  readonly usedPosition: number;
  readonly pendingBatch: { count: number; from: number; to: number; ids: number[] };
  /** Ids in flight, oldest first. */
  inflightIds(): number[];
  /** Packed: ring slots chain `id` took, and its logged descriptors (null when it was too long to log). */
  slotsOf(id: number): number;
  descriptorsOf(id: number): Uint32Array | null;
  clear(id: number): void;
  settle(usedPosition: number): void;
}

export type { GuestMemory };
