/**
 * The management socket on a thread of its own (`vduse serve`): the main thread runs the devices' data path
 * and can be busy for a long time under load, and an operator's `vduse ls` must not wait for it. The worker
 * (./rpc-worker.ts) owns the socket, its limits and the JSON-RPC framing; it answers device.list from the
 * snapshot the main thread publishes whenever a device changes (publish()), and passes every other call to
 * the main thread (methods run there, where the devices are). Same interface as RpcServer.
 */
import { Worker } from 'node:worker_threads';

import { UsageError, VduseTsError, messageOf } from '../../common/errors.js';
import { MgmtError } from './errors.js';
import { RpcError, type RpcMethods, type RpcServerOptions } from './rpc.js';

/** workerData of the RPC thread. */
export interface RpcThreadData {
  methods: string[];
  options: Omit<RpcServerOptions, 'onProblem' | 'setUmask'>;
}

interface ErrorText {
  message: string;
  code: string | undefined;
  usage: boolean;
}

export type ToRpcThread =
  | { type: 'listen'; path: string; label: string }
  | { type: 'publish'; method: string; value: unknown }
  | { type: 'answer'; id: number; result?: unknown; error?: ErrorText }
  | { type: 'close' };

export type FromRpcThread =
  | { type: 'ready' }
  | { type: 'listening' }
  | ({ type: 'listen-failed' } & ErrorText)
  | { type: 'call'; id: number; method: string; params: unknown }
  | { type: 'problem'; message: string }
  | { type: 'closed' };

export class RpcThreadServer {
  readonly #worker: Worker;
  readonly #methods: RpcMethods;
  readonly #problem: (message: string) => void;
  #path: string | null = null;
  #onListen: ((m: FromRpcThread) => void) | null = null;
  #closed: Promise<void> | null = null;
  #exited = false;

  constructor(methods: RpcMethods, options: RpcServerOptions = {}) {
    this.#methods = methods;
    this.#problem = options.onProblem ?? (() => undefined);
    const { onProblem: _p, setUmask: _u, ...rest } = options;
    const data: RpcThreadData = { methods: Object.keys(methods), options: rest };
    this.#worker = new Worker(new URL('./rpc-worker.js', import.meta.url), {
      workerData: data,
      name: 'vduse-rpc',
    });
    this.#worker.on('message', (m: FromRpcThread) => this.#onMessage(m));
    this.#worker.on('error', (err) => this.#problem(`management thread failed: ${err.message}`));
    this.#worker.on('exit', () => (this.#exited = true));
    this.#worker.unref();
  }

  get path(): string | null {
    return this.#path;
  }

  /** Publish the answer of a read-only method (device.list) for the thread to give without asking. */
  publish(method: string, value: unknown): void {
    if (!this.#exited) this.#post({ type: 'publish', method, value });
  }

  /** Listen on `path` (see RpcServer.listen); the socket is created with umask 0177, set here. */
  async listen(path: string, label = '--socket'): Promise<void> {
    this.#worker.ref();
    const old = process.umask(0o177);
    try {
      const m = await new Promise<FromRpcThread>((resolve) => {
        this.#onListen = resolve;
        this.#post({ type: 'listen', path, label });
      });
      if (m.type === 'listen-failed') {
        if (m.code !== undefined && m.usage) throw new UsageError(m.message, { code: m.code });
        throw new MgmtError('ERR_MGMT_PATH', m.message);
      }
    } catch (err) {
      this.#worker.unref();
      throw err;
    } finally {
      process.umask(old);
    }
    this.#path = path;
  }

  /** Stop listening, drop connections, remove the socket file, end the thread. */
  close(): Promise<void> {
    this.#closed ??= new Promise<void>((resolve) => {
      if (this.#exited) return resolve();
      this.#worker.ref();
      this.#worker.once('exit', () => resolve());
      this.#post({ type: 'close' });
      setTimeout(() => void this.#worker.terminate(), 5000).unref();
    });
    return this.#closed;
  }

  #post(m: ToRpcThread): void {
    this.#worker.postMessage(m);
  }

  #onMessage(m: FromRpcThread): void {
    switch (m.type) {
      case 'listening':
      case 'listen-failed':
        this.#onListen?.(m);
        this.#onListen = null;
        break;
      case 'problem':
        this.#problem(m.message);
        break;
      case 'call':
        void this.#call(m.id, m.method, m.params);
        break;
      case 'closed':
        void this.#worker.terminate();
        break;
      default:
        break;
    }
  }

  async #call(id: number, method: string, params: unknown): Promise<void> {
    const fn = Object.hasOwn(this.#methods, method) ? this.#methods[method] : undefined;
    try {
      if (fn === undefined) throw new RpcError('ERR_RPC_METHOD_NOT_FOUND', `method not found: ${method}`);
      const result = await fn(params);
      this.#post({ type: 'answer', id, result: result === undefined ? null : result });
    } catch (err) {
      const error: ErrorText = {
        message: messageOf(err),
        code: err instanceof VduseTsError ? err.code : undefined,
        usage: err instanceof UsageError,
      };
      try {
        this.#post({ type: 'answer', id, error });
      } catch {
        // the thread is gone (closing)
      }
    }
  }
}
