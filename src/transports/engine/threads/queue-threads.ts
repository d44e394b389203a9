/**
 * Queue threads (`--queue-threads N`): the data path of a multi-queue device spread over N worker threads,
 * queue i on thread i % N, so that the queues use several cores. Each thread maps guest memory itself, watches
 * its own kick eventfds, injects its own interrupts and has its own device instance and backend handle
 * (./queue-thread-server.ts). The main thread keeps the control path (./device.ts): it tells the threads about
 * DRIVER_OK, resets, IOTLB invalidations and queue-state requests and waits for each to be carried out before
 * it answers the kernel (./queue-thread-protocol.ts).
 *
 * A thread that fails (an uncaught error, an exit, no answer in time) is reported once through onNeedsReset:
 * the device stops serving until the driver resets it, and the next DRIVER_OK starts a fresh thread.
 */
import { MessageChannel, Worker, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';

import type { Logger } from '../../../common/logger.js';
import {
  queuesOf,
  queueOwner,
  type QueueSetup,
  type QueueState,
  type QueueThreadCommand,
  type QueueThreadEvent,
  type QueueThreadReply,
  type StartCommand,
  type StoppedQueues,
} from './protocol.js';

/** How a thread builds its device: a module exporting createQueueThreadDevice, and its (cloneable) options. */
export interface QueueThreadSpec {
  /** URL (file:) of the module. */
  module: string;
  options: unknown;
}

/** workerData of a queue thread. */
export interface QueueThreadData {
  devFd: number;
  numQueues: number;
  spec: QueueThreadSpec;
  /** Int32 ack word, bumped after every synchronous reply. */
  ack: SharedArrayBuffer;
  /** Float64 counters: kicks per queue, then interrupts per queue. */
  counters: SharedArrayBuffer;
  syncPort: MessagePort;
  debug: boolean;
}

export interface QueueThreadsOptions {
  spec: QueueThreadSpec;
  devFd: number;
  numQueues: number;
  threads: number;
  logger: Logger;
  /** Forward the threads' debug lines. */
  debug?: boolean;
  /** How long the main thread waits for a thread to start or carry out a command (default 10 s). */
  timeoutMs?: number;
  /** A thread asked for a device reset (`failed` false), or failed (true). Called on the main thread. */
  onNeedsReset(reason: Error, failed: boolean): void;
  /** The worker entry; default ./queue-thread-worker.js. */
  entry?: URL;
}

interface Thread {
  readonly index: number;
  readonly worker: Worker;
  readonly ack: Int32Array;
  readonly port: MessagePort;
  readonly queues: number[];
  dead: boolean;
  /** Still starting: a failure is thrown to the caller, not reported. */
  starting: boolean;
  readonly pending: Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>;
  /** The device's counters when the thread was closed (they outlive it). */
  last: unknown;
}

export class QueueThreadError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'QueueThreadError';
  }
}

export class QueueThreads {
  /** Kicks per queue index (shared with the threads). */
  readonly kicks: Float64Array;
  /** Interrupts per queue index (shared with the threads). */
  readonly interrupts: Float64Array;
  readonly #o: QueueThreadsOptions;
  readonly #counters: SharedArrayBuffer;
  readonly #threads: Thread[] = [];
  readonly #timeoutMs: number;
  #nextId = 1;
  #generation = 0;
  #closing = false;

  /** Start the threads and wait until each has built its device (or throw, with none left running). */
  constructor(options: QueueThreadsOptions) {
    const { threads, numQueues } = options;
    if (!Number.isInteger(threads) || threads < 2 || threads > numQueues) {
      throw new RangeError(`queue threads: ${threads} thread(s) for ${numQueues} queue(s)`);
    }
    this.#o = options;
    this.#timeoutMs = options.timeoutMs ?? 10_000;
    this.#counters = new SharedArrayBuffer(Float64Array.BYTES_PER_ELEMENT * numQueues * 2);
    this.kicks = new Float64Array(this.#counters, 0, numQueues);
    this.interrupts = new Float64Array(this.#counters, Float64Array.BYTES_PER_ELEMENT * numQueues, numQueues);
    try {
      for (let k = 0; k < threads; k++) this.#threads.push(this.#spawn(k));
    } catch (err) {
      this.terminate();
      throw err;
    }
  }

  get threadCount(): number {
    return this.#threads.length;
  }

  /** The thread serving queue `index`. */
  ownerOf(index: number): number {
    return queueOwner(index, this.#threads.length);
  }

  /**
   * DRIVER_OK: each thread starts serving its ready queues. Throws when one cannot (the others are stopped
   * again). Returns the number of requests resubmitted (recover).
   */
  start(common: Omit<StartCommand, 'op' | 'queues' | 'generation'>, queues: readonly QueueSetup[]): number {
    const generation = ++this.#generation;
    for (const t of this.#threads) if (t.dead) this.#threads[t.index] = this.#spawn(t.index);
    let resubmitted = 0;
    const started: Thread[] = [];
    try {
      for (const t of this.#threads) {
        const mine = queues.filter((q) => this.ownerOf(q.index) === t.index);
        const n = this.#callSync(t, { op: 'start', ...common, queues: mine, generation });
        started.push(t);
        resubmitted += typeof n === 'number' ? n : 0;
      }
    } catch (err) {
      for (const t of started) this.#tryStop(t);
      throw err;
    }
    return resubmitted;
  }

  /** Stop every thread's queues (and with reset drop every mapping); the states of the queues that were live. */
  stop(reset: boolean): StoppedQueues {
    const states: StoppedQueues = [];
    for (const t of this.#threads) {
      if (t.dead) continue;
      try {
        states.push(...(this.#callSync(t, { op: 'stop', reset }) as StoppedQueues));
      } catch (err) {
        this.#o.logger.debug(`queue thread ${t.index}: ${(err as Error).message}`);
      }
    }
    return states;
  }

  /** UPDATE_IOTLB: every thread drops its mappings overlapping [start, last]. False when one could not. */
  invalidate(start: number, last: number): boolean {
    let ok = true;
    for (const t of this.#threads) {
      if (t.dead) continue;
      try {
        this.#callSync(t, { op: 'invalidate', start, last });
      } catch (err) {
        this.#o.logger.warn(`queue thread ${t.index}: ${(err as Error).message}`);
        ok = false;
      }
    }
    return ok;
  }

  /** GET_VQ_STATE: the live state of queue `index`, or null when it is not live (or its thread is gone). */
  queueState(index: number): QueueState | null {
    const t = this.#threads[this.ownerOf(index)];
    if (t === undefined || t.dead) return null;
    try {
      return this.#callSync(t, { op: 'state', index }) as QueueState | null;
    } catch {
      return null;
    }
  }

  /** Stop taking kicks on every thread (one of them needs a reset). Not waited for. */
  halt(): void {
    for (const t of this.#threads) if (!t.dead) t.worker.postMessage({ op: 'halt', id: 0, sync: false });
  }

  /**
   * Each thread's device counters (QueueThreadDevice.snapshot()); after close() the ones the threads had at
   * the end; null for a thread that failed.
   */
  snapshot(): unknown[] {
    return this.#threads.map((t) => {
      if (t.dead || this.#closing) return t.last;
      try {
        return this.#callSync(t, { op: 'snapshot' });
      } catch {
        return null;
      }
    });
  }

  /** A device call on every thread (e.g. resize), in parallel. */
  async call(name: string, arg: unknown): Promise<unknown[]> {
    return Promise.all(this.#threads.map((t) => this.#callAsync(t, { op: 'call', name, arg })));
  }

  /** closeForRestart: stop taking kicks and let requests in flight finish (up to `ms`). */
  async drain(ms: number): Promise<void> {
    await Promise.all(
      this.#threads.filter((t) => !t.dead).map((t) => this.#callAsync(t, { op: 'drain', ms })),
    );
  }

  /** Stop every thread: each waits for its device's requests, closes its backend and exits. */
  async close(): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    await Promise.all(
      this.#threads.map(async (t) => {
        if (!t.dead) {
          try {
            t.last = await this.#callAsync(t, { op: 'close' });
          } catch (err) {
            this.#o.logger.warn(`queue thread ${t.index}: ${(err as Error).message}`);
          }
        }
        await t.worker.terminate();
        t.port.close();
      }),
    );
  }

  /** Stop the threads at once (start-up failed). */
  terminate(): void {
    this.#closing = true;
    for (const t of this.#threads) {
      void t.worker.terminate();
      t.port.close();
    }
  }

  #spawn(index: number): Thread {
    const { port1, port2 } = new MessageChannel();
    const ack = new Int32Array(new SharedArrayBuffer(4));
    const data: QueueThreadData = {
      devFd: this.#o.devFd,
      numQueues: this.#o.numQueues,
      spec: this.#o.spec,
      ack: ack.buffer as SharedArrayBuffer,
      counters: this.#counters,
      syncPort: port2,
      debug: this.#o.debug ?? false,
    };
    const profile = threadExecArgv(process.execArgv, index);
    const worker = new Worker(this.#o.entry ?? new URL('./worker.js', import.meta.url), {
      workerData: data,
      transferList: [port2],
      name: `vduse-queue-${index}`,
      // The thread closes fds it did not open with fs (IOTLB fds, kick eventfds): no unmanaged-fd warnings.
      trackUnmanagedFds: false,
      ...(profile !== undefined ? { execArgv: profile } : {}),
    });
    const t: Thread = {
      index,
      worker,
      ack,
      port: port1,
      queues: queuesOf(index, this.#o.threads, this.#o.numQueues),
      dead: false,
      starting: true,
      pending: new Map(),
      last: null,
    };
    worker.on('message', (m: QueueThreadEvent | QueueThreadReply) => this.#onMessage(t, m));
    worker.on('error', (err) => this.#failed(t, err.message));
    worker.on('exit', (code) => {
      if (!this.#closing) this.#failed(t, `exited (code ${code})`);
      for (const p of t.pending.values()) p.reject(new QueueThreadError(`queue thread ${index} exited`));
      t.pending.clear();
    });
    try {
      const reply = this.#wait(t, 0, 'start');
      if (!reply.ok) throw new QueueThreadError(reply.error);
      t.starting = false;
    } catch (err) {
      t.dead = true;
      void worker.terminate();
      port1.close();
      throw new QueueThreadError(`queue thread ${index} could not start: ${(err as Error).message}`);
    }
    return t;
  }

  #callSync(t: Thread, cmd: QueueThreadCommand): unknown {
    if (t.dead) throw new QueueThreadError(`queue thread ${t.index} is gone`);
    const id = this.#nextId++;
    t.worker.postMessage({ ...cmd, id, sync: true });
    const reply = this.#wait(t, id, cmd.op);
    if (!reply.ok) throw new QueueThreadError(reply.error);
    return reply.value;
  }

  /** Block until reply `id` is on the sync port (the thread bumps the ack word after posting it). */
  #wait(t: Thread, id: number, what: string): QueueThreadReply {
    const deadline = Date.now() + this.#timeoutMs;
    for (;;) {
      const seen = Atomics.load(t.ack, 0);
      let m: { message: unknown } | undefined;
      while ((m = receiveMessageOnPort(t.port)) !== undefined) {
        const reply = m.message as QueueThreadReply;
        if (reply.id === id) return reply;
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        const why = `no answer to ${what} within ${this.#timeoutMs} ms`;
        this.#failed(t, why);
        throw new QueueThreadError(`queue thread ${t.index}: ${why}`);
      }
      Atomics.wait(t.ack, 0, seen, left);
    }
  }

  #callAsync(t: Thread, cmd: QueueThreadCommand): Promise<unknown> {
    if (t.dead) return Promise.reject(new QueueThreadError(`queue thread ${t.index} is gone`));
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      t.pending.set(id, { resolve, reject });
      t.worker.postMessage({ ...cmd, id, sync: false });
    });
  }

  #tryStop(t: Thread): void {
    try {
      this.#callSync(t, { op: 'stop', reset: false });
    } catch {
      // reported by #failed
    }
  }

  #onMessage(t: Thread, m: QueueThreadEvent | QueueThreadReply): void {
    if ('event' in m) {
      if (m.event === 'log') {
        this.#o.logger[m.level](m.message);
      } else if (m.generation === this.#generation && !t.dead) {
        this.#o.onNeedsReset(new Error(m.message), false);
      }
      return;
    }
    const p = t.pending.get(m.id);
    if (p === undefined) return;
    t.pending.delete(m.id);
    if (m.ok) p.resolve(m.value);
    else p.reject(new QueueThreadError(m.error));
  }

  #failed(t: Thread, why: string): void {
    if (t.dead || this.#closing) return;
    t.dead = true;
    void t.worker.terminate();
    if (t.starting) return;
    const queues = t.queues.length === 1 ? `queue ${t.queues[0]}` : `queues ${t.queues.join(', ')}`;
    this.#o.onNeedsReset(new QueueThreadError(`queue thread ${t.index} (${queues}) failed: ${why}`), true);
  }
}

/**
 * A thread's node options when the process writes a CPU profile (--cpu-prof-name=NAME): the --cpu-prof options
 * with a name of its own per thread (NAME-queue-K.cpuprofile), so the threads' profiles do not overwrite each
 * other. Otherwise undefined: the thread inherits the process's options (an explicit list may not hold V8 or
 * process-wide options, so only the profile options are passed).
 */
export function threadExecArgv(execArgv: readonly string[], index: number): string[] | undefined {
  if (!execArgv.some((arg) => arg.startsWith('--cpu-prof-name='))) return undefined;
  return execArgv
    .filter((arg) => arg.startsWith('--cpu-prof'))
    .map((arg) => {
      const m = /^--cpu-prof-name=(.*?)(\.cpuprofile)?$/.exec(arg);
      return m ? `--cpu-prof-name=${m[1]}-queue-${index}${m[2] ?? ''}` : arg;
    });
}
