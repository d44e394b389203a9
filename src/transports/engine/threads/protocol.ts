/**
 * The messages between the main thread of a VDUSE device (the control path: ./device.ts) and its queue
 * threads (./queue-thread-server.ts), when queues are served by worker threads (`--queue-threads N`). Plain
 * data, structured-cloneable; no I/O here.
 *
 * Synchronous commands (`sync: true`) are what the control path must have done before it answers the kernel
 * (start, stop/reset, IOTLB invalidation, queue state, stats): the main thread posts one, then blocks in
 * Atomics.wait on the thread's ack word until the thread has carried it out, and takes the reply from a
 * MessagePort with receiveMessageOnPort. Asynchronous ones (drain, close, device calls such as resize) are
 * answered on the worker's parentPort.
 */
import type { PackedQueueState, SplitQueueState } from '../../../virtio/virtqueue.js';

export type QueueState = SplitQueueState | PackedQueueState;

/** What a queue thread needs to serve one ready queue (the main thread read it with VDUSE_VQ_GET_INFO). */
export interface QueueSetup {
  index: number;
  size: number;
  descAddr: number;
  driverAddr: number;
  deviceAddr: number;
  /** Where to start (ignored when recovering from the state log). */
  state: QueueState;
}

export interface StartCommand {
  op: 'start';
  features: bigint;
  packed: boolean;
  eventIdx: boolean;
  indirect: boolean;
  /** This thread's ready queues (its others stay null). */
  queues: QueueSetup[];
  /** Resubmit the in-flight chains logged in the state log (reconnect). */
  recover: boolean;
  /** The crash-recovery state log file (the thread maps it and records its queues' in-flight chains), or null. */
  stateLog: string | null;
  /** Activation number: events of an older activation are ignored. */
  generation: number;
}

export type QueueThreadCommand =
  | StartCommand
  /** Stop serving (DRIVER_OK cleared, or reset): kicks closed, device reset; with reset, every mapping dropped. */
  | { op: 'stop'; reset: boolean }
  /** UPDATE_IOTLB: drop the mappings overlapping [start, last]. */
  | { op: 'invalidate'; start: number; last: number }
  /** GET_VQ_STATE of a live queue. */
  | { op: 'state'; index: number }
  /** Another thread needs a reset: stop taking kicks until the driver resets the device. */
  | { op: 'halt' }
  /** The device's counters (QueueThreadDevice.snapshot()). */
  | { op: 'snapshot' }
  /** Leave the device running for a successor: stop taking kicks, wait up to `ms` for requests in flight. */
  | { op: 'drain'; ms: number }
  /** A device-specific call (QueueThreadDevice.call), e.g. a resize. */
  | { op: 'call'; name: string; arg: unknown }
  /** Stop, wait for the device's requests, close the backend; the thread then exits. */
  | { op: 'close' };

export type QueueThreadRequest = QueueThreadCommand & { id: number; sync: boolean };

export type QueueThreadReply =
  { id: number; ok: true; value: unknown } | { id: number; ok: false; error: string };

/** Messages a queue thread sends on its own (on parentPort). */
export type QueueThreadEvent =
  | { event: 'needs-reset'; message: string; generation: number }
  | { event: 'log'; level: 'error' | 'warn' | 'info' | 'debug'; message: string };

/** The reply to 'stop': the state of each of the thread's queues that was live. */
export type StoppedQueues = [index: number, state: QueueState][];

/** Which thread serves queue `index` of `threads`: queue i on thread i % N. */
export function queueOwner(index: number, threads: number): number {
  return index % threads;
}

/** The queues thread `thread` of `threads` serves, out of `numQueues`. */
export function queuesOf(thread: number, threads: number, numQueues: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < numQueues; i++) if (queueOwner(i, threads) === thread) out.push(i);
  return out;
}

/** Slot of queue `index`'s kick counter in the shared counters (interrupts follow at numQueues + index). */
export const kickSlot = (index: number): number => index;
export const interruptSlot = (index: number, numQueues: number): number => numQueues + index;
