/**
 * Queue threads (`--queue-threads N`): the data path of a multi-queue device spread over N worker threads,
 * queue i on thread i % N, so that the queues use several cores. Each thread runs the same engine as the inline
 * data path (../queue-set.ts, wrapped by ./server.ts): it maps guest memory itself, watches its own kick fds,
 * injects its own interrupts and has its own device instance and backend handle. The transport's control loop
 * keeps the control path and sees this as a DataPath (../data-path.ts): it tells the threads about DRIVER_OK,
 * resets, IOTLB invalidations and queue-state requests and waits for each to be carried out before it answers
 * the kernel (./protocol.ts).
 *
 * A thread that fails (an uncaught error, an exit, no answer in time) is reported once through onNeedsReset:
 * the device stops serving until the driver resets it, and the next DRIVER_OK starts a fresh thread.
 */
import { MessageChannel, Worker, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';

import type { Logger } from '../../../common/logger.js';
import type { DataPath, DataPathStart, QueueState, StoppedQueues } from '../data-path.js';
import { QueueThreadError } from '../errors.js';
import {
  queuesOf,
  queueOwner,
  type CallArg,
  type CallName,
  type CallResult,
  type QueueThreadAnswers,
  type QueueThreadCommand,
  type QueueThreadData,
  type QueueThreadEvent,
  type QueueThreadOp,
  type QueueThreadReply,
  type QueueThreadSpec,
  type QueueThreadTypes,
  type RemoteError,
  type ThreadTransportSpec,
} from './protocol.js';

export { QueueThreadError };
export type { QueueThreadSpec, QueueThreadData };

export interface QueueThreadsOptions<T extends QueueThreadTypes = QueueThreadTypes> {
  spec: QueueThreadSpec<T>;
  /** The transport's side in each thread (VDUSE: ../../vduse/queue-transport.ts). */
  transport: ThreadTransportSpec;
  numQueues: number;
  threads: number;
  logger: Logger;
  /** Forward the threads' debug lines. */
  debug?: boolean;
  /** How long the main thread waits for a thread to carry out a command, or to start again at DRIVER_OK (default 10 s). */
  timeoutMs?: number;
  /**
   * How long the first start of the threads may take (default 60 s, at least timeoutMs): loading the device and
   * backend modules in a fresh worker is slow on a loaded host, and nothing waits on it but our own start-up.
   */
  startTimeoutMs?: number;
  /** A thread asked for a device reset (`failed` false), or failed (true). Called on the main thread. */
  onNeedsReset(reason: Error, failed: boolean): void;
  /** The worker entry; default ./worker.js. */
  entry?: URL;
}

interface Pending {
  resolve: (v: QueueThreadAnswers[QueueThreadOp]) => void;
  reject: (e: Error) => void;
}

interface Thread<T extends QueueThreadTypes> {
  readonly index: number;
  readonly worker: Worker;
  readonly ack: Int32Array;
  readonly port: MessagePort;
  readonly queues: number[];
  dead: boolean;
  /** Still starting: a failure is thrown to the caller, not reported. */
  starting: boolean;
  readonly pending: Map<number, Pending>;
  /** The device's counters when the thread was closed (they outlive it). */
  last: T['snapshot'] | null;
}

/** The error a thread sent back, as thrown on this side. */
function fromRemote(error: RemoteError, prefix = ''): QueueThreadError {
  return new QueueThreadError(
    `${prefix}${error.message}`,
    error.code !== undefined ? { remoteCode: error.code } : {},
  );
}

export class QueueThreads<T extends QueueThreadTypes = QueueThreadTypes> implements DataPath {
  /** Kicks per queue, then interrupts per queue (shared with the threads). */
  readonly counters: Float64Array;
  /** Kicks per queue index (a view of `counters`). */
  readonly kicks: Float64Array;
  /** Interrupts per queue index (a view of `counters`). */
  readonly interrupts: Float64Array;
  readonly #o: QueueThreadsOptions<T>;
  readonly #counters: SharedArrayBuffer;
  readonly #threads: Thread<T>[] = [];
  readonly #timeoutMs: number;
  readonly #startTimeoutMs: number;
  #nextId = 1;
  #generation = 0;
  #closing = false;
  #running = false;

  /** Start the threads and wait until each has built its device (or throw, with none left running). */
  constructor(options: QueueThreadsOptions<T>) {
    const { threads, numQueues } = options;
    if (!Number.isInteger(threads) || threads < 2 || threads > numQueues) {
      throw new RangeError(`queue threads: ${threads} thread(s) for ${numQueues} queue(s)`);
    }
    this.#o = options;
    this.#timeoutMs = options.timeoutMs ?? 10_000;
    this.#startTimeoutMs = Math.max(this.#timeoutMs, options.startTimeoutMs ?? 60_000);
    this.#counters = new SharedArrayBuffer(Float64Array.BYTES_PER_ELEMENT * numQueues * 2);
    this.counters = new Float64Array(this.#counters);
    this.kicks = new Float64Array(this.#counters, 0, numQueues);
    this.interrupts = new Float64Array(this.#counters, Float64Array.BYTES_PER_ELEMENT * numQueues, numQueues);
    try {
      for (let k = 0; k < threads; k++) this.#threads.push(this.#spawn(k, this.#startTimeoutMs));
    } catch (err) {
      this.terminate();
      throw err;
    }
  }

  get threadCount(): number {
    return this.#threads.length;
  }

  get running(): boolean {
    return this.#running;
  }

  /** The thread serving queue `index`. */
  ownerOf(index: number): number {
    return queueOwner(index, this.#threads.length);
  }

  /**
   * DRIVER_OK: each thread starts serving its ready queues. Throws when one cannot (the others are stopped
   * again). Returns the number of requests resubmitted (recover).
   */
  start(start: DataPathStart): number {
    if (this.#running) this.stop(false);
    const generation = ++this.#generation;
    // inside DRIVER_OK: the kernel waits for the answer, so only the command timeout
    for (const t of this.#threads) if (t.dead) this.#threads[t.index] = this.#spawn(t.index, this.#timeoutMs);
    let resubmitted = 0;
    const started: Thread<T>[] = [];
    try {
      for (const t of this.#threads) {
        const mine = start.queues.filter((q) => this.ownerOf(q.index) === t.index);
        resubmitted += this.#callSync(t, { op: 'start', start: { ...start, queues: mine }, generation });
        started.push(t);
      }
    } catch (err) {
      for (const t of started) this.#tryStop(t);
      throw err;
    }
    this.#running = true;
    return resubmitted;
  }

  /** Stop every thread's queues (and with reset drop every mapping); the states of the queues that were live. */
  stop(reset: boolean): StoppedQueues {
    const wasRunning = this.#running;
    this.#running = false;
    const states: StoppedQueues = [];
    if (!wasRunning && !reset) return states;
    for (const t of this.#threads) {
      if (t.dead) continue;
      try {
        states.push(...this.#callSync(t, { op: 'stop', reset }));
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
  state(index: number): QueueState | null {
    if (!this.#running) return null;
    const t = this.#threads[this.ownerOf(index)];
    if (t === undefined || t.dead) return null;
    try {
      return this.#callSync(t, { op: 'state', index });
    } catch {
      return null;
    }
  }

  /** Stop taking requests on every thread (one of them needs a reset). Not waited for. */
  halt(): void {
    for (const t of this.#threads) if (!t.dead) t.worker.postMessage({ op: 'halt', id: 0, sync: false });
  }

  /**
   * Each thread's device counters (QueueThreadDevice.snapshot()); after close() the ones the threads had at
   * the end; null for a thread that failed.
   */
  snapshot(): (T['snapshot'] | null)[] {
    return this.#threads.map((t) => {
      if (t.dead || this.#closing) return t.last;
      try {
        return this.#callSync(t, { op: 'snapshot' });
      } catch {
        return null;
      }
    });
  }

  /** A device call on every thread (e.g. resize), in parallel; the results in thread order. */
  async call<K extends CallName<T>>(name: K, arg: CallArg<T, K>): Promise<CallResult<T, K>[]> {
    const cmd = { op: 'call', name, arg } as Extract<QueueThreadCommand<T>, { op: 'call' }>;
    const results = await Promise.all(this.#threads.map((t) => this.#callAsync(t, cmd)));
    return results as CallResult<T, K>[];
  }

  /** closeForRestart: stop taking requests and let requests in flight finish (up to `ms`). */
  async drain(ms: number): Promise<void> {
    await Promise.all(
      this.#threads.filter((t) => !t.dead).map((t) => this.#callAsync(t, { op: 'drain', ms })),
    );
  }

  /** Stop every thread: each waits for its device's requests and mappings, closes its backend and exits. */
  async close(): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    this.#running = false;
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
    this.#running = false;
    for (const t of this.#threads) {
      void t.worker.terminate();
      t.port.close();
    }
  }

  #spawn(index: number, timeoutMs: number): Thread<T> {
    const { port1, port2 } = new MessageChannel();
    const ack = new Int32Array(new SharedArrayBuffer(4));
    const data: QueueThreadData<T> = {
      numQueues: this.#o.numQueues,
      spec: this.#o.spec,
      transport: this.#o.transport,
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
    const t: Thread<T> = {
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
    worker.on('message', (m: QueueThreadEvent | QueueThreadReply<T>) => this.#onMessage(t, m));
    worker.on('error', (err) => this.#failed(t, err.message));
    worker.on('exit', (code) => {
      if (!this.#closing) this.#failed(t, `exited (code ${code})`);
      for (const p of t.pending.values()) p.reject(new QueueThreadError(`queue thread ${index} exited`));
      t.pending.clear();
    });
    try {
      const reply = this.#wait(t, 0, 'start', timeoutMs);
      if (!reply.ok) throw fromRemote(reply.error);
      t.starting = false;
    } catch (err) {
      t.dead = true;
      void worker.terminate();
      port1.close();
      const remoteCode = err instanceof QueueThreadError ? err.remoteCode : undefined;
      throw new QueueThreadError(`queue thread ${index} could not start: ${(err as Error).message}`, {
        cause: err,
        ...(remoteCode !== undefined ? { remoteCode } : {}),
      });
    }
    return t;
  }

  #callSync<K extends QueueThreadOp>(
    t: Thread<T>,
    cmd: Extract<QueueThreadCommand<T>, { op: K }>,
  ): QueueThreadAnswers<T>[K] {
    if (t.dead) throw new QueueThreadError(`queue thread ${t.index} is gone`);
    const id = this.#nextId++;
    t.worker.postMessage({ ...cmd, id, sync: true });
    const reply = this.#wait(t, id, cmd.op);
    if (!reply.ok) throw fromRemote(reply.error);
    // The thread answers command K with QueueThreadAnswers<T>[K] (./server.ts is typed per command).
    return reply.value as QueueThreadAnswers<T>[K];
  }

  /** Block until reply `id` is on the sync port (the thread bumps the ack word after posting it). */
  #wait(t: Thread<T>, id: number, what: string, timeoutMs = this.#timeoutMs): QueueThreadReply<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const seen = Atomics.load(t.ack, 0);
      let m: { message: unknown } | undefined;
      while ((m = receiveMessageOnPort(t.port)) !== undefined) {
        const reply = m.message as QueueThreadReply<T>;
        if (reply.id === id) return reply;
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        const why = `no answer to ${what} within ${timeoutMs} ms`;
        this.#failed(t, why);
        throw new QueueThreadError(`queue thread ${t.index}: ${why}`);
      }
      Atomics.wait(t.ack, 0, seen, left);
    }
  }

  #callAsync<K extends QueueThreadOp>(
    t: Thread<T>,
    cmd: Extract<QueueThreadCommand<T>, { op: K }>,
  ): Promise<QueueThreadAnswers<T>[K]> {
    if (t.dead) return Promise.reject(new QueueThreadError(`queue thread ${t.index} is gone`));
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      t.pending.set(id, { resolve: resolve as Pending['resolve'], reject });
      t.worker.postMessage({ ...cmd, id, sync: false });
    });
  }

  #tryStop(t: Thread<T>): void {
    try {
      this.#callSync(t, { op: 'stop', reset: false });
    } catch {
      // reported by #failed
    }
  }

  #onMessage(t: Thread<T>, m: QueueThreadEvent | QueueThreadReply<T>): void {
    if ('event' in m) {
      if (m.event === 'log') {
        this.#o.logger[m.level](m.message);
      } else if (m.generation === this.#generation && !t.dead) {
        this.#o.onNeedsReset(fromRemote(m.error), false);
      }
      return;
    }
    const p = t.pending.get(m.id);
    if (p === undefined) return;
    t.pending.delete(m.id);
    if (m.ok) p.resolve(m.value);
    else p.reject(fromRemote(m.error));
  }

  #failed(t: Thread<T>, why: string): void {
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
