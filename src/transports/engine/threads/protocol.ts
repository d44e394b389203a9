/**
 * The messages between a transport's control loop (the main thread) and its queue threads
 * (`--queue-threads N`), and the types a queue-thread device module and a transport module agree on. Plain
 * data, structured-cloneable; no I/O here.
 *
 * Synchronous commands (`sync: true`) are what the control path must have done before it answers the kernel
 * (start, stop/reset, IOTLB invalidation, queue state, counters): the main thread posts one, then blocks in
 * Atomics.wait on the thread's ack word until the thread has carried it out, and takes the reply from a
 * MessagePort with receiveMessageOnPort. Asynchronous ones (drain, close, device calls such as resize) are
 * answered on the worker's parentPort.
 *
 * Everything device-specific is a type parameter T (QueueThreadTypes): the options the thread builds its device
 * from, the snapshot of its counters, and its calls ({ resize: [bytes, capacity] }), checked at compile time
 * on both sides.
 */
import type { MessagePort } from 'node:worker_threads';

import type { VirtioDevice } from '../../../devices/device.js';
import type { SysBinding } from '../../../sys/binding.js';
import type { Logger } from '../../../common/logger.js';
import type { DataPathStart, QueueState, QueueTransport, StoppedQueues } from '../data-path.js';

/** What structured clone carries (functions and symbols excluded). */
export type Cloneable = object | string | number | boolean | bigint | null | undefined;

/** A device's calls: name -> [argument, result]. */
export type QueueThreadCalls = { [name: string]: [arg: Cloneable, result: Cloneable] };

/** Everything a kind of queue-thread device exchanges with the main thread. */
export interface QueueThreadTypes {
  /** What the thread builds its device from. */
  options: object;
  /** Its counters, as the main thread reads them. */
  snapshot: object;
  calls: QueueThreadCalls;
}

/** How a thread builds its device: a module exporting createQueueThreadDevice, and its options. */
export interface QueueThreadSpec<T extends QueueThreadTypes = QueueThreadTypes> {
  /** URL (file:) of the module; it exports `createQueueThreadDevice: CreateQueueThreadDevice<T>`. */
  module: string;
  options: T['options'];
  /** Carries T for inference; never set. */
  readonly types?: T;
}

/** The name of a call of T and its argument and result types. */
export type CallName<T extends QueueThreadTypes> = keyof T['calls'] & string;
export type CallArg<T extends QueueThreadTypes, K extends CallName<T>> = T['calls'][K][0];
export type CallResult<T extends QueueThreadTypes, K extends CallName<T>> = T['calls'][K][1];

/** A device as a queue thread runs it, built in the thread from its spec's options. */
export interface QueueThreadDevice<T extends QueueThreadTypes = QueueThreadTypes> {
  readonly device: VirtioDevice;
  /** Cloneable counters; the main thread merges the threads' snapshots. */
  snapshot(): T['snapshot'];
  /** Device-specific calls from the main thread (e.g. resize). */
  call<K extends CallName<T>>(name: K, arg: CallArg<T, K>): Promise<CallResult<T, K>>;
  /** Close the backend handle (after the device's last request). */
  close(): Promise<void>;
}

/** What a QueueThreadSpec's module exports: build the thread's device. */
export type CreateQueueThreadDevice<T extends QueueThreadTypes = QueueThreadTypes> = (
  options: T['options'],
  env: { binding: SysBinding; logger: Logger },
) => Promise<QueueThreadDevice<T>>;

/**
 * How a thread builds the transport's side of serving queues (kick fds, interrupts, memory, in-flight logs): a
 * module exporting createThreadTransport, and its options (VDUSE: ../../vduse/queue-transport.ts).
 */
export interface ThreadTransportSpec<O extends object = object> {
  module: string;
  options: O;
}

export type CreateThreadTransport<O extends object = object> = (
  options: O,
  env: { binding: SysBinding; logger: Logger },
) => QueueTransport;

/** The commands, by name. */
export type QueueThreadCommand<T extends QueueThreadTypes = QueueThreadTypes> =
  /** DRIVER_OK: serve this thread's ready queues. `generation` numbers the activation (older events are ignored). */
  | { op: 'start'; start: DataPathStart; generation: number }
  /** Stop serving (DRIVER_OK cleared, or reset): kicks closed, device reset; with reset, every mapping dropped. */
  | { op: 'stop'; reset: boolean }
  /** UPDATE_IOTLB: drop the mappings overlapping [start, last]. */
  | { op: 'invalidate'; start: number; last: number }
  /** GET_VQ_STATE of a live queue. */
  | { op: 'state'; index: number }
  /** Another thread needs a reset: stop taking requests until the driver resets the device. */
  | { op: 'halt' }
  /** The device's counters (QueueThreadDevice.snapshot()). */
  | { op: 'snapshot' }
  /** Leave the device running for a successor: stop taking requests, wait up to `ms` for those in flight. */
  | { op: 'drain'; ms: number }
  /** A device-specific call (QueueThreadDevice.call), e.g. a resize. */
  | { op: 'call'; name: CallName<T>; arg: CallArg<T, CallName<T>> }
  /** Stop, wait for the device's requests and mappings, close the backend; the thread then exits. */
  | { op: 'close' };

export type QueueThreadOp = QueueThreadCommand['op'];

/** What each command answers. */
export interface QueueThreadAnswers<T extends QueueThreadTypes = QueueThreadTypes> {
  /** Requests resubmitted (recovery). */
  start: number;
  stop: StoppedQueues;
  invalidate: null;
  state: QueueState | null;
  halt: null;
  snapshot: T['snapshot'];
  drain: null;
  call: CallResult<T, CallName<T>>;
  /** The counters as they end, for the main thread to keep. */
  close: T['snapshot'];
}

export type QueueThreadRequest<T extends QueueThreadTypes = QueueThreadTypes> = QueueThreadCommand<T> & {
  id: number;
  sync: boolean;
};

/** A failure as it crosses the thread boundary: the message, and the code of a VduseTsError. */
export interface RemoteError {
  message: string;
  code?: string;
}

export type QueueThreadReply<T extends QueueThreadTypes = QueueThreadTypes> =
  | { id: number; ok: true; value: QueueThreadAnswers<T>[QueueThreadOp] }
  | { id: number; ok: false; error: RemoteError };

/** Messages a queue thread sends on its own (on parentPort). */
export type QueueThreadEvent =
  | { event: 'needs-reset'; error: RemoteError; generation: number }
  | { event: 'log'; level: 'error' | 'warn' | 'info' | 'debug'; message: string };

/** workerData of a queue thread. */
export interface QueueThreadData<T extends QueueThreadTypes = QueueThreadTypes> {
  numQueues: number;
  spec: QueueThreadSpec<T>;
  transport: ThreadTransportSpec;
  /** Int32 ack word, bumped after every synchronous reply. */
  ack: SharedArrayBuffer;
  /** Float64 counters: kicks per queue, then interrupts per queue. */
  counters: SharedArrayBuffer;
  syncPort: MessagePort;
  debug: boolean;
}

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

export { kickSlot, interruptSlot } from '../data-path.js';
export type { QueueSetup, QueueState, StoppedQueues } from '../data-path.js';

/** The error as it crosses the thread boundary. */
export function remoteError(err: unknown): RemoteError {
  const message = err instanceof Error ? err.message : String(err);
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && code.startsWith('ERR_') ? { message, code } : { message };
}
