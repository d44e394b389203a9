/**
 * Entry of a queue thread (a worker_threads Worker started by ./queue-thread.ts): loads the native binding on
 * this thread, builds the device from its spec (the module exports createQueueThreadDevice), and carries out
 * the main thread's commands with a QueueThreadServer. Synchronous commands are answered on the sync port and
 * acknowledged by bumping the shared ack word (the main thread waits on it with Atomics.wait).
 */
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';

import { loadNativeBinding } from '../../../sys/native.js';
import type { Logger } from '../../../common/logger.js';
import type { QueueThreadEvent, QueueThreadReply, QueueThreadRequest } from './protocol.js';
import { QueueThreadServer, type CreateQueueThreadDevice } from './server.js';
import type { QueueThreadData } from './queue-threads.js';

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

const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));

async function init(): Promise<QueueThreadServer | null> {
  try {
    const binding = loadNativeBinding();
    const mod = (await import(data.spec.module)) as { createQueueThreadDevice?: CreateQueueThreadDevice };
    if (typeof mod.createQueueThreadDevice !== 'function') {
      throw new Error(`${data.spec.module} does not export createQueueThreadDevice`);
    }
    const device = await mod.createQueueThreadDevice(data.spec.options, { binding, logger });
    const server = new QueueThreadServer({
      binding,
      devFd: data.devFd,
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
    answerSync({ id: 0, ok: false, error: message(err) });
    port.close();
    syncPort.close();
    return null;
  }
}

const server = await init();
if (server !== null) {
  port.on('message', (req: QueueThreadRequest) => {
    const answer = req.sync ? answerSync : (reply: QueueThreadReply) => port.postMessage(reply);
    let value: unknown;
    try {
      value = server.handle(req);
    } catch (err) {
      answer({ id: req.id, ok: false, error: message(err) });
      return;
    }
    if (!(value instanceof Promise)) {
      answer({ id: req.id, ok: true, value: value ?? null });
      return;
    }
    value.then(
      (v: unknown) => {
        answer({ id: req.id, ok: true, value: v ?? null });
        if (req.op === 'close') {
          port.close();
          syncPort.close();
        }
      },
      (err: unknown) => answer({ id: req.id, ok: false, error: message(err) }),
    );
  });
}
