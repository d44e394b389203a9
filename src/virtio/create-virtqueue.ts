/**
 * The one entry point transports use to build a queue engine for a negotiated ring format.
 */
import type { GuestMemory } from '../memory/guest-memory.js';
import { PackedQueue } from './packed-queue.js';
import { SplitQueue } from './split-queue.js';
import type { QueueOptions, Virtqueue, VirtqueueConfig } from './virtqueue.js';

/**
 * Build the device side of a queue: a PackedQueue when VIRTIO_F_RING_PACKED was negotiated, else a SplitQueue.
 * Throws RangeError only for a size outside 1..32768; every problem with the guest's ring layout (unmapped or
 * misaligned areas, a split size that is not a power of 2, a ring larger than `options.inflight` holds) is
 * reported through `error` / `options.onError` at the first use, never thrown.
 */
export function createVirtqueue(
  config: VirtqueueConfig,
  packed: boolean,
  memory: GuestMemory,
  options: QueueOptions,
): Virtqueue {
  return packed ? new PackedQueue(config, memory, options) : new SplitQueue(config, memory, options);
}
