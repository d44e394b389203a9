/**
 * One queue thread's data path (`--queue-threads N`): the queues it owns, its own guest memory mappings
 * (IotlbMemory over VDUSE_IOTLB_GET_FD on the shared dev fd: fds are process-wide), its own kick eventfds
 * watched on its own event loop, interrupts injected from here, and its own device instance (with its own
 * backend handle). The main thread keeps the control path and drives this with QueueThreadCommands
 * (./queue-thread-protocol.ts). Plain code over a SysBinding: ./queue-thread-worker.ts wires it to a worker.
 */
import { closeSync } from 'node:fs';

import type { VirtioDevice } from '../../../devices/device.js';
import {
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  UV_READABLE,
  type FdWatcher,
  type SysBinding,
} from '../../../sys/binding.js';
import type { Virtqueue } from '../../../virtio/virtqueue.js';
import { vqInjectIrq, vqSetupKickfd } from '../../vduse/ioctls.js';
import { IotlbMemory } from '../../../memory/iotlb-memory.js';
import { deviceFdSource } from '../../vduse/iotlb-source.js';
import type { Logger } from '../../../common/logger.js';
import {
  interruptSlot,
  kickSlot,
  type QueueThreadCommand,
  type QueueThreadEvent,
  type StartCommand,
  type StoppedQueues,
} from './protocol.js';
import { startQueue } from '../queue-start.js';
import { StateLog } from '../../vduse/recovery/state-log.js';

/** A device as a queue thread runs it: built in the thread from serializable options (see QueueThreadSpec). */
export interface QueueThreadDevice {
  readonly device: VirtioDevice;
  /** Structured-cloneable counters; the main thread merges the threads' snapshots. */
  snapshot(): unknown;
  /** Device-specific calls from the main thread (e.g. 'resize'). */
  call?(name: string, arg: unknown): Promise<unknown>;
  /** Requests still in the backend (a drain waits for 0). */
  readonly inFlight: number;
  /** Close the backend handle (after the device's last request). */
  close(): Promise<void>;
}

/** What a QueueThreadSpec's module exports: build the thread's device. */
export type CreateQueueThreadDevice = (
  options: unknown,
  env: { binding: SysBinding; logger: Logger },
) => Promise<QueueThreadDevice>;

export interface QueueThreadServerOptions {
  binding: SysBinding;
  /** The VDUSE dev fd (opened by the main thread). */
  devFd: number;
  numQueues: number;
  device: QueueThreadDevice;
  /** Shared counters: kicks at kickSlot(i), interrupts at interruptSlot(i, numQueues). */
  counters: Float64Array;
  emit(event: QueueThreadEvent): void;
  logger: Logger;
  closeFd?: (fd: number) => void;
}

interface Kick {
  fd: number;
  watcher: FdWatcher;
}

export class QueueThreadServer {
  readonly memory: IotlbMemory;
  readonly #o: QueueThreadServerOptions;
  readonly #binding: SysBinding;
  readonly #closeFd: (fd: number) => void;
  readonly #device: VirtioDevice;
  #queues: (Virtqueue | null)[] = [];
  #kicks: Kick[] = [];
  #halted = false;
  #generation = 0;
  #stateLog: StateLog | null = null;
  #resetting: Promise<void> = Promise.resolve();

  constructor(options: QueueThreadServerOptions) {
    this.#o = options;
    this.#binding = options.binding;
    this.#closeFd = options.closeFd ?? closeSync;
    this.memory = new IotlbMemory(this.#binding, deviceFdSource(this.#binding, options.devFd), this.#closeFd);
    this.#device = options.device.device;
    this.#device.bind({
      // The config space is the main thread's; a device-side change there is told by the main thread.
      configChanged: () => undefined,
      needsReset: (reason) => this.#needsReset(reason),
    });
  }

  /** The live queues (null for ones not served here or not ready). */
  get queues(): readonly (Virtqueue | null)[] {
    return this.#queues;
  }

  /** Carry out one command; the value (or promise of it) is the reply. Throws on failure. */
  handle(cmd: QueueThreadCommand): unknown {
    switch (cmd.op) {
      case 'start':
        return this.#start(cmd);
      case 'stop':
        return this.#stop(cmd.reset);
      case 'invalidate':
        this.memory.invalidate(cmd.start, cmd.last);
        return null;
      case 'state': {
        const q = this.#queues[cmd.index];
        return q ? q.getState() : null;
      }
      case 'halt':
        this.#halt();
        return null;
      case 'snapshot':
        return this.#o.device.snapshot();
      case 'drain':
        return this.#drain(cmd.ms);
      case 'call': {
        const call = this.#o.device.call;
        if (call === undefined) throw new Error(`the device has no call "${cmd.name}"`);
        return call.call(this.#o.device, cmd.name, cmd.arg);
      }
      case 'close':
        // the counters as they end, for the main thread to keep
        return this.close().then(() => this.#o.device.snapshot());
    }
  }

  /** Stop everything, wait for the device's requests, close the backend and the state log. */
  async close(): Promise<void> {
    if (this.#queues.length > 0) this.#stop(true);
    this.memory.invalidateAll();
    await this.#resetting;
    this.#stateLog?.close();
    this.#stateLog = null;
    await this.#o.device.close();
  }

  #start(cmd: StartCommand): number {
    if (this.#queues.length > 0) this.#stop(false);
    this.#generation = cmd.generation;
    this.#halted = false;
    const n = this.#o.numQueues;
    if (cmd.stateLog !== null && this.#stateLog?.path !== cmd.stateLog) {
      this.#stateLog?.close();
      this.#stateLog = StateLog.open(this.#binding, cmd.stateLog);
    }
    const log = cmd.stateLog !== null ? this.#stateLog : null;
    if (!this.#device.negotiate(cmd.features)) {
      throw new Error(`the thread's device refused features 0x${cmd.features.toString(16)}`);
    }
    const queues: (Virtqueue | null)[] = new Array<Virtqueue | null>(n).fill(null);
    let resubmitted = 0;
    try {
      for (const setup of cmd.queues) {
        const i = setup.index;
        const started = startQueue(
          {
            index: i,
            size: setup.size,
            descAddr: setup.descAddr,
            driverAddr: setup.driverAddr,
            deviceAddr: setup.deviceAddr,
            eventIdx: cmd.eventIdx,
            indirect: cmd.indirect,
          },
          cmd.packed,
          this.memory,
          {
            signal: () => this.#signal(i),
            onError: (error) => this.#needsReset(error),
            binding: this.#binding,
            queueLog: log?.queue(i),
            recover: cmd.recover,
            state: setup.state,
          },
        );
        const queue = started.queue;
        resubmitted += started.resubmitted;
        queues[i] = queue;
        this.#kicks.push(this.#installKick(i));
      }
    } catch (err) {
      this.#closeKicks();
      throw err;
    }
    this.#queues = queues;
    this.#device.activate({ features: cmd.features, memory: this.memory, queues });
    if (cmd.recover) for (const setup of cmd.queues) this.#signal(setup.index);
    return resubmitted;
  }

  #stop(reset: boolean): StoppedQueues {
    this.#closeKicks();
    const states: StoppedQueues = [];
    this.#queues.forEach((q, i) => {
      if (q !== null) states.push([i, q.getState()]);
    });
    const hadQueues = this.#queues.length > 0;
    this.#queues = [];
    this.#halted = false;
    if (hadQueues || reset) {
      const done = this.#device.reset().catch((err: unknown) => {
        this.#o.logger.warn(`device reset: ${(err as Error).message}`);
      });
      this.#resetting = Promise.all([this.#resetting, done]).then(() => undefined);
    }
    if (reset) this.memory.invalidateAll();
    return states;
  }

  async #drain(ms: number): Promise<void> {
    this.#halted = true;
    for (const kick of this.#kicks) kick.watcher.stop();
    const deadline = Date.now() + ms;
    const busy = (): boolean => this.#o.device.inFlight > 0;
    while (busy() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    // completions are published on the next turn of the loop
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
  }

  #installKick(index: number): Kick {
    const fd = this.#binding.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    try {
      vqSetupKickfd(this.#binding, this.#o.devFd, index, fd);
      const watcher = this.#binding.createFdWatcher(fd, (status) => this.#onKick(index, fd, status));
      watcher.start(UV_READABLE);
      return { fd, watcher };
    } catch (err) {
      this.#closeFd(fd);
      throw err;
    }
  }

  #closeKicks(): void {
    for (const kick of this.#kicks) {
      kick.watcher.close();
      try {
        this.#closeFd(kick.fd);
      } catch {
        // already gone
      }
    }
    this.#kicks = [];
  }

  #onKick(index: number, fd: number, status: number): void {
    if (status < 0) {
      this.#o.logger.warn(`kick eventfd of queue ${index} failed (errno ${-status})`);
      return;
    }
    try {
      this.#binding.eventfdRead(fd);
    } catch (err) {
      this.#o.logger.warn(`reading the kick of queue ${index}: ${(err as Error).message}`);
    }
    this.#o.counters[kickSlot(index)]!++;
    if (this.#halted || this.#queues[index] == null) return;
    try {
      this.#device.queueNotify(index);
    } catch (err) {
      this.#needsReset(err as Error);
    }
  }

  #signal(index: number): void {
    try {
      vqInjectIrq(this.#binding, this.#o.devFd, index);
      this.#o.counters[interruptSlot(index, this.#o.numQueues)]!++;
    } catch (err) {
      this.#o.logger.debug(`interrupt for queue ${index} not injected: ${(err as Error).message}`);
    }
  }

  #halt(): void {
    this.#halted = true;
    for (const kick of this.#kicks) kick.watcher.stop();
  }

  #needsReset(reason: Error): void {
    if (this.#halted) return;
    this.#halt();
    this.#o.emit({ event: 'needs-reset', message: reason.message, generation: this.#generation });
  }
}
