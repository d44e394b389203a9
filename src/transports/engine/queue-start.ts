/**
 * Starting one queue of the data path at DRIVER_OK, the same on the main thread (./device.ts) and on a queue
 * thread (./queue-thread-server.ts): build the ring engine with the transport's hooks and the queue's state-log
 * recorder, then either rebuild its in-flight requests from the log (a restarted daemon taking over) or start
 * it where the kernel says.
 */
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { SysBinding } from '../../sys/binding.js';
import { createVirtqueue } from '../../virtio/index.js';
import type { PackedQueue } from '../../virtio/packed-queue.js';
import type { SplitQueue } from '../../virtio/split-queue.js';
import type {
  PackedQueueState,
  SplitQueueState,
  Virtqueue,
  VirtqueueConfig,
  VirtqueueError,
} from '../../virtio/virtqueue.js';
import { VduseError } from '../vduse/errors.js';
import type { QueueLog } from '../vduse/recovery/state-log.js';

export interface QueueStart {
  /** Interrupt the driver for this queue. */
  signal(): void;
  /** The ring broke (the transport stops the data path until a reset). */
  onError(error: VirtqueueError): void;
  /** Supplies the memory fence on architectures that are not TSO. */
  binding: SysBinding;
  /** The queue's part of the state log, if the device keeps one. */
  queueLog: QueueLog | undefined;
  /** Rebuild the in-flight requests from `queueLog` instead of starting at `state`. */
  recover: boolean;
  /** Where the kernel says the ring stands (used when not recovering). */
  state: SplitQueueState | PackedQueueState;
}

/**
 * Build and position queue `config.index`. Returns the queue and how many requests recovery handed out again.
 * Throws VduseError ERR_VDUSE_RECONNECT when the log cannot be replayed onto the ring.
 */
export function startQueue(
  config: VirtqueueConfig,
  packed: boolean,
  memory: GuestMemory,
  start: QueueStart,
): { queue: Virtqueue; resubmitted: number } {
  const { queueLog, binding } = start;
  const queue = createVirtqueue(config, packed, memory, {
    signal: start.signal,
    onError: start.onError,
    // x86 is TSO and the queue's seq_cst Atomics act as the barrier there; elsewhere add a real fence.
    ...(process.arch === 'x64' ? {} : { fence: () => binding.fence() }),
    ...(queueLog !== undefined ? { inflight: queueLog } : {}),
  });
  if (start.recover && queueLog !== undefined) {
    try {
      return { queue, resubmitted: (queue as SplitQueue | PackedQueue).recoverInflight(queueLog) };
    } catch (err) {
      throw new VduseError(
        'ERR_VDUSE_RECONNECT',
        `cannot recover queue ${config.index}: ${(err as Error).message}`,
        err,
      );
    }
  }
  queue.setState(start.state);
  return { queue, resubmitted: 0 };
}
