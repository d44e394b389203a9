/**
 * The data path as a transport's control loop sees it, whether the queues are served on its own thread
 * (QueueSet, ./queue-set.ts) or on worker threads (QueueThreads, ./threads/queue-threads.ts): start at
 * DRIVER_OK, stop at a reset, drop IOTLB mappings, report a queue's progress, halt after an error, drain for a
 * successor, close. Plain data in and out (it crosses threads), no I/O here.
 *
 * And what a transport gives the engine (QueueTransport): the few things that differ between transports. For
 * VDUSE (../vduse/queue-transport.ts) a kick source is an eventfd handed to the kernel with
 * VDUSE_VQ_SETUP_KICKFD, a signal is VDUSE_VQ_INJECT_IRQ, memory is the IOTLB; for vhost-user it would be the
 * kick and call eventfds the VMM passed and a region table.
 */
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { MemoryPins } from '../../memory/iotlb-memory.js';
import type { PackedQueueState, QueueOptions, SplitQueue, SplitQueueState } from '../../virtio/index.js';

export type QueueState = SplitQueueState | PackedQueueState;

/** What the engine needs to serve one ready queue (the transport read it from the driver's setup). */
export interface QueueSetup {
  index: number;
  size: number;
  descAddr: number;
  driverAddr: number;
  deviceAddr: number;
  /** Where to start (ignored when recovering from the in-flight log). */
  state: QueueState;
}

/** DRIVER_OK: the negotiated ring format and the ready queues. */
export interface DataPathStart {
  features: bigint;
  packed: boolean;
  eventIdx: boolean;
  indirect: boolean;
  /** The ready queues (of those this data path serves; the others stay null). */
  queues: QueueSetup[];
  /** Rebuild the in-flight requests from each queue's in-flight log (a restarted daemon taking over). */
  recover: boolean;
  /**
   * What the transport's side of the data path needs for this start, plain data (QueueTransport.begin):
   * vhost-user on queue threads passes its memory table, ring fds and inflight region this way.
   */
  transportState?: object;
}

/** The state of each queue that was live when the data path stopped. */
export type StoppedQueues = [index: number, state: QueueState][];

/** The data path of one device, as its transport's control loop drives it. */
export interface DataPath {
  /** Queues are being served (started and not stopped since). */
  readonly running: boolean;
  /** Kicks per queue at [i], interrupts per queue at [numQueues + i] (shared with the threads, if any). */
  readonly counters: Float64Array;
  /**
   * Serve the ready queues. Returns how many requests recovery handed out again. Throws when it cannot
   * (nothing is left running then).
   */
  start(start: DataPathStart): number;
  /**
   * Stop serving: kicks closed, the device reset (its requests finish in the background, see `settled`); with
   * `reset`, every guest-memory mapping dropped too (unmapped once no request can reference it).
   */
  stop(reset: boolean): StoppedQueues;
  /** UPDATE_IOTLB: drop the mappings overlapping [start, last]. False when part of the data path could not. */
  invalidate(start: number, last: number): boolean;
  /** GET_VQ_STATE: the progress of live queue `index`, or null when it is not live. */
  state(index: number): QueueState | null;
  /** Stop taking new requests until the next start (the device needs a reset). */
  halt(): void;
  /** For a successor: stop taking new requests and wait up to `ms` for those in flight to complete. */
  drain(ms: number): Promise<void>;
  /** Stop for good; resolves when the device's last request has settled and every mapping is unmapped. */
  close(): Promise<void>;
}

/** Slot of queue `index`'s kick counter in DataPath.counters (interrupts follow at numQueues + index). */
export const kickSlot = (index: number): number => index;
export const interruptSlot = (index: number, numQueues: number): number => numQueues + index;

/** What the queue engines tell an in-flight log (crash recovery), per queue. */
export type InflightLog = NonNullable<QueueOptions['inflight']>;

/**
 * The memory a transport serves its queues over: any GuestMemory; one whose mappings can be dropped also
 * drops them on the engine's word and takes pins (IotlbMemory does all of it).
 */
export type TransportMemory = GuestMemory &
  Partial<MemoryPins> & {
    invalidate?(start: number, last: number): void;
    invalidateAll?(): void;
    /** Resolves when every dropped mapping is unmapped. */
    drained?(): Promise<void>;
  };

/** The transport-specific parts of serving queues. Used on the thread that serves them. */
export interface QueueTransport {
  readonly memory: TransportMemory;
  /**
   * A fresh, non-blocking fd that turns readable when the driver kicks queue `index` (an eventfd: the engine
   * reads it, watches it and closes it when it stops). VDUSE: a new eventfd given to VDUSE_VQ_SETUP_KICKFD.
   */
  openKick(index: number): number;
  /** Interrupt the driver for queue `index` (VDUSE: VDUSE_VQ_INJECT_IRQ). Throws when it could not. */
  signal(index: number): void;
  /**
   * What `signal(index)` does, as plain numbers a KickLoop can do itself (src/sys/binding.ts): `request` 0
   * writes 1 to the eventfd `fd`, else ioctl(fd, request, &u32 index); fd -1 when there is nothing to signal.
   * Asked at every start. Without it the engine calls signal().
   */
  interruptTarget?(index: number): { fd: number; request: number };
  /** The in-flight log of queue `index` (crash recovery), or undefined. */
  inflightLog(index: number): (InflightLog & RecoverableLog) | undefined;
  /** Called first by every start, with DataPathStart.transportState. Throws when the queues cannot start. */
  begin?(state: object | undefined): void;
  /** Close a kick fd the engine stops watching (default: the engine's closeFd). */
  closeKick?(fd: number): void;
  /** Release what the transport holds (a state-log mapping of its own). */
  close?(): void;
}

/** What recovery reads back from an in-flight log (the ring engines' recoverInflight argument). */
export type RecoverableLog = Parameters<SplitQueue['recoverInflight']>[0];
