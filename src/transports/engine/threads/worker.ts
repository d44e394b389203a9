/**
 * Entry of a queue thread (a worker_threads Worker started by ./queue-threads.ts): loads the native binding on
 * this thread, builds the transport's side (the transport module exports createThreadTransport) and the device
 * (the device module exports createQueueThreadDevice), and carries out the main thread's commands with a
 * QueueThreadServer. Transport-neutral: both modules come from workerData. Synchronous commands are answered on
 * the sync port and acknowledged by bumping the shared ack word (the main thread waits on it with Atomics.wait).
 */
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';

import { loadNativeBinding } from '../../../sys/native.js';
import type { Logger } from '../../../common/logger.js';
import type { QueueTransport } from '../data-path.js';
import {
  remoteError,
  type CreateQueueThreadDevice,
  type CreateThreadTransport,
  type QueueThreadData,
  type QueueThreadEvent,
  type QueueThreadReply,
  type QueueThreadRequest,
} from './protocol.js';
import { QueueThreadServer } from './server.js';

const data = workerData as QueueThreadData;
const port = parentPort!;
const syncPort: MessagePort = data.syncPort;
const ack = new Int32Array(data.ack);

function answerSync(reply: QueueThreadReply): void {
  syncPort.postMessage(reply);
  Atomics.add(ack, 0, 1);
  Atomics.notify(ack, 0);
}

const emit = (event: QueueThreadEvent): void => port.postMessage(event);
const logger: Logger = {
  error: (message) => emit({ event: 'log', level: 'error', message }),
  warn: (message) => emit({ event: 'log', level: 'warn', message }),
  info: (message) => emit({ event: 'log', level: 'info', message }),
  debug: data.debug ? (message) => emit({ event: 'log', level: 'debug', message }) : () => undefined,
};

async function load<F>(url: string, name: string): Promise<F> {
  const mod = (await import(url)) as Record<string, unknown>;
  const f = mod[name];
  if (typeof f !== 'function') throw new Error(`${url} does not export ${name}`);
  return f as F;
}

async function init(): Promise<QueueThreadServer | null> {
  let transport: QueueTransport | null = null;
  try {
    const binding = loadNativeBinding();
    const env = { binding, logger };
    const createTransport = await load<CreateThreadTransport>(data.transport.module, 'createThreadTransport');
    const createDevice = await load<CreateQueueThreadDevice>(data.spec.module, 'createQueueThreadDevice');
    transport = createTransport(data.transport.options, env);
    const device = await createDevice(data.spec.options, env);
    const server = new QueueThreadServer({
      binding,
      transport,
      numQueues: data.numQueues,
      device,
      counters: new Float64Array(data.counters),
      emit,
      logger,
    });
    answerSync({ id: 0, ok: true, value: null });
    return server;
  } catch (err) {
    // The main thread reports it (the thread cannot serve); nothing is left running here.
    transport?.close?.();
    answerSync({ id: 0, ok: false, error: remoteError(err) });
    port.close();
    syncPort.close();
    return null;
  }
}

const server = await init();
if (server !== null) {
  port.on('message', (req: QueueThreadRequest) => {
    const answer = req.sync ? answerSync : (reply: QueueThreadReply) => port.postMessage(reply);
    let value: ReturnType<QueueThreadServer['handle']>;
    try {
      value = server.handle(req);
    } catch (err) {
      answer({ id: req.id, ok: false, error: remoteError(err) });
      return;
    }
    if (!(value instanceof Promise)) {
      answer({ id: req.id, ok: true, value });
      return;
    }
    value.then(
      (v) => {
        answer({ id: req.id, ok: true, value: v });
        if (req.op === 'close') {
          port.close();
          syncPort.close();
        }
      },
      (err: unknown) => answer({ id: req.id, ok: false, error: remoteError(err) }),
    );
  });
}
