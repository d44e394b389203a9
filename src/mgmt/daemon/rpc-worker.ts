/**
 * The RPC thread (see ./rpc-thread.ts): the management socket served on a worker thread of its own. Read-only
 * answers the main thread published (device.list) are given from here at once; every other call is passed to
 * the main thread, which runs the method and sends the answer back.
 */
import { parentPort, workerData } from 'node:worker_threads';

import { UsageError, VduseTsError } from '../../common/errors.js';
import { RpcServer, type RpcMethods, type RpcServerOptions } from './rpc.js';
import type { FromRpcThread, ToRpcThread, RpcThreadData } from './rpc-thread.js';

const port = parentPort!;
const data = workerData as RpcThreadData;
const post = (m: FromRpcThread): void => port.postMessage(m);

/** What the main thread published, by method: answered here to a call without params. */
const published = new Map<string, unknown>();
const waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: unknown) => void }>();
let nextId = 1;

const noParams = (p: unknown): boolean =>
  p === undefined ||
  (typeof p === 'object' && p !== null && !Array.isArray(p) && Object.keys(p).length === 0);

const methods: Record<string, (params: unknown) => unknown> = {};
for (const name of data.methods) {
  methods[name] = (params) => {
    if (published.has(name) && noParams(params)) return published.get(name);
    const id = nextId++;
    return new Promise((resolve, reject) => {
      waiting.set(id, { resolve, reject });
      post({ type: 'call', id, method: name, params });
    });
  };
}

const server = new RpcServer(methods as RpcMethods, {
  ...(data.options as RpcServerOptions),
  setUmask: false,
  onProblem: (message) => post({ type: 'problem', message }),
});

port.on('message', (m: ToRpcThread) => {
  switch (m.type) {
    case 'listen':
      server.listen(m.path, m.label).then(
        () => post({ type: 'listening' }),
        (err: unknown) =>
          post({
            type: 'listen-failed',
            message: err instanceof Error ? err.message : String(err),
            code: err instanceof VduseTsError ? err.code : undefined,
            usage: err instanceof UsageError,
          }),
      );
      break;
    case 'publish':
      published.set(m.method, m.value);
      break;
    case 'answer': {
      const w = waiting.get(m.id);
      if (w === undefined) break;
      waiting.delete(m.id);
      if (m.error === undefined) w.resolve(m.result);
      else if (m.error.code === undefined) w.reject(new Error(m.error.message));
      else if (m.error.usage) w.reject(new UsageError(m.error.message, { code: m.error.code }));
      else w.reject(new VduseTsError(m.error.code, m.error.message));
      break;
    }
    case 'close':
      void server.close().then(() => {
        post({ type: 'closed' });
        port.close();
      });
      break;
  }
});
post({ type: 'ready' });
