/**
 * One queue thread's data path (`--queue-threads N`): a QueueSet (../queue-set.ts) over the thread's own
 * transport side (its own guest-memory mappings, kick fds watched on its own event loop, interrupts injected
 * from here; built from a ThreadTransportSpec) and its own device instance (with its own backend handle). The
 * main thread keeps the control path and drives this with QueueThreadCommands (./protocol.ts). Plain code over
 * a SysBinding: ./worker.ts wires it to a worker.
 */
import { closeSync } from 'node:fs';

import type { SysBinding } from '../../../sys/binding.js';
import type { Virtqueue } from '../../../virtio/index.js';
import type { Logger } from '../../../common/logger.js';
import type { QueueTransport } from '../data-path.js';
import { EngineError } from '../errors.js';
import { QueueSet } from '../queue-set.js';
import {
  remoteError,
  type QueueThreadAnswers,
  type QueueThreadCommand,
  type QueueThreadDevice,
  type QueueThreadEvent,
  type QueueThreadOp,
  type QueueThreadTypes,
} from './protocol.js';

export interface QueueThreadServerOptions<T extends QueueThreadTypes> {
  binding: SysBinding;
  /** The transport's side of this thread (built from the ThreadTransportSpec). */
  transport: QueueTransport;
  numQueues: number;
  device: QueueThreadDevice<T>;
  /** Shared counters: kicks at kickSlot(i), interrupts at interruptSlot(i, numQueues). */
  counters: Float64Array;
  emit(event: QueueThreadEvent): void;
  logger: Logger;
  closeFd?: (fd: number) => void;
}

type Handlers<T extends QueueThreadTypes> = {
  [K in QueueThreadOp]: (
    cmd: Extract<QueueThreadCommand<T>, { op: K }>,
  ) => QueueThreadAnswers<T>[K] | Promise<QueueThreadAnswers<T>[K]>;
};

export class QueueThreadServer<T extends QueueThreadTypes = QueueThreadTypes> {
  readonly queueSet: QueueSet;
  /** The guest memory this thread maps itself. */
  readonly memory: QueueTransport['memory'];
  readonly #device: QueueThreadDevice<T>;
  #generation = 0;
  readonly #handlers: Handlers<T>;

  constructor(options: QueueThreadServerOptions<T>) {
    this.#device = options.device;
    this.memory = options.transport.memory;
    const device = options.device.device;
    this.queueSet = new QueueSet({
      binding: options.binding,
      device,
      transport: options.transport,
      numQueues: options.numQueues,
      logger: options.logger,
      counters: options.counters,
      // The thread's loop serves only this data path (and its backend): wait for kicks in native code.
      kickLoop: true,
      closeFd: options.closeFd ?? closeSync,
      onNeedsReset: (reason) =>
        options.emit({ event: 'needs-reset', error: remoteError(reason), generation: this.#generation }),
    });
    device.bind({
      // The config space is the main thread's; a device-side change there is told by the main thread.
      configChanged: () => undefined,
      needsReset: (reason) => this.queueSet.fail(reason),
    });
    const set = this.queueSet;
    this.#handlers = {
      start: (cmd) => {
        this.#generation = cmd.generation;
        if (!device.negotiate(cmd.start.features)) {
          throw new EngineError(
            'ERR_ENGINE_FEATURES',
            `the thread's device refused features 0x${cmd.start.features.toString(16)}`,
          );
        }
        return set.start(cmd.start);
      },
      stop: (cmd) => set.stop(cmd.reset),
      invalidate: (cmd) => {
        set.invalidate(cmd.start, cmd.last);
        return null;
      },
      state: (cmd) => set.state(cmd.index),
      halt: () => {
        set.halt();
        return null;
      },
      snapshot: () => this.#device.snapshot(),
      drain: async (cmd) => {
        await set.drain(cmd.ms);
        return null;
      },
      call: (cmd) => this.#device.call(cmd.name, cmd.arg),
      close: async () => {
        await this.close();
        return this.#device.snapshot();
      },
    };
  }

  /** The live queues (null for ones not served here or not ready). */
  get queues(): readonly (Virtqueue | null)[] {
    return this.queueSet.queues;
  }

  /** Carry out one command; the value (or promise of it) is the reply. Throws on failure. */
  handle<K extends QueueThreadOp>(
    cmd: Extract<QueueThreadCommand<T>, { op: K }>,
  ): QueueThreadAnswers<T>[K] | Promise<QueueThreadAnswers<T>[K]> {
    const handler = this.#handlers[cmd.op as K] as Handlers<T>[K];
    return handler(cmd);
  }

  /** Stop everything, wait for the device's requests and mappings, close the backend and the transport. */
  async close(): Promise<void> {
    await this.queueSet.close();
    await this.#device.close();
  }
}
