/**
 * The device side of a virtqueue, shared by the split (./split-queue.ts) and packed (./packed-queue.ts) formats.
 * A queue is a state machine over GuestMemory: it owns no fds. The transport creates it at DRIVER_OK and gives
 * it a `signal` function that injects the used-buffer notification (interrupt).
 */
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
  | 'chain-loop' // a chain longer than the queue (loop)
  | 'nested-indirect' // an indirect table inside an indirect table
  | 'indirect-table' // zero-length, misaligned or oversized indirect table, or INDIRECT with NEXT
  | 'indirect-not-negotiated'
  | 'write-order' // a readable descriptor after a writable one
  | 'length-overflow' // total chain length above 2^32
  | 'memory' // an address outside mapped memory, or without the needed permission
  | 'used-id' // the device returned an id that is not in flight (a device bug)
  | 'ring-layout'; // a ring part not mapped contiguously

/** A malformed ring. The transport answers it by setting DEVICE_NEEDS_RESET. */
export class VirtqueueError extends Error {
  readonly code = 'ERR_VIRTQUEUE';
  constructor(
    readonly kind: VirtqueueErrorKind,
    readonly queue: number,
    message: string,
  ) {
    super(`queue ${queue}: ${message}`);
    this.name = 'VirtqueueError';
  }
}

export interface Virtqueue {
  readonly index: number;
  readonly size: number;
  readonly packed: boolean;
  /** The first error met, or null. Once set, pop() returns null for ever (until the queue is recreated). */
  readonly error: VirtqueueError | null;
  /** Chains popped and not yet returned with addUsed(). */
  readonly inFlight: number;
  /** The next available chain, or null when there is none or the ring is broken (see `error`). Never throws. */
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
  setState(state: SplitQueueState | PackedQueueState): void;
}

/** What a transport passes when it builds a queue. */
export interface VirtqueueOptions {
  /** Injects the used-buffer notification. */
  signal: () => void;
  /** Called once, on the first ring error (the transport sets DEVICE_NEEDS_RESET). */
  onError?: (error: VirtqueueError) => void;
}

export type { GuestMemory };
