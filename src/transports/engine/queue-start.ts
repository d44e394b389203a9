/**
 * Starting one queue of the data path at DRIVER_OK (./queue-set.ts, on whichever thread serves it): build the
 * ring engine with the transport's hooks and the queue's in-flight log, then either rebuild its in-flight
 * requests from the log (a restarted daemon taking over) or start it where the transport says.
 */
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { SysBinding } from '../../sys/binding.js';
import { createVirtqueue } from '../../virtio/index.js';
import type {
  PackedQueueState,
  SplitQueueState,
  Virtqueue,
  VirtqueueConfig,
  VirtqueueError,
} from '../../virtio/index.js';
import type { InflightLog, RecoverableLog } from './data-path.js';
import { EngineError } from './errors.js';

export interface QueueStart {
  /** Interrupt the driver for this queue. */
  signal(): void;
  /** The ring broke (the transport stops the data path until a reset). */
  onError(error: VirtqueueError): void;
  /** Supplies the memory fence on architectures that are not TSO. */
  binding: SysBinding;
  /** The queue's in-flight log (crash recovery), if the device keeps one. */
  queueLog: (InflightLog & RecoverableLog) | undefined;
  /** Rebuild the in-flight requests from `queueLog` instead of starting at `state`. */
  recover: boolean;
  /** Where the transport says the ring stands (used when not recovering). */
  state: SplitQueueState | PackedQueueState;
}

/**
 * Build and position queue `config.index`. Returns the queue and how many requests recovery handed out again.
 * Throws EngineError ERR_ENGINE_RECOVER when the log cannot be replayed onto the ring.
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
      return { queue, resubmitted: queue.recoverInflight(queueLog) };
    } catch (err) {
      throw new EngineError(
        'ERR_ENGINE_RECOVER',
        `cannot recover queue ${config.index}: ${(err as Error).message}`,
        { cause: err },
      );
    }
  }
  queue.setState(start.state);
  return { queue, resubmitted: 0 };
}
