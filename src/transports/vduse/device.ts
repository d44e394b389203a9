/**
 * The VDUSE transport at run time: serves one /dev/vduse/NAME for one VirtioDevice.
 *
 * The dev fd is non-blocking and watched on the event loop; every readable event drains all queued requests and
 * answers each at once, so the thread never blocks and the kernel (which may be inside a netlink DEV_NEW, a probe
 * or a reset) never waits on us. At DRIVER_OK the rings are mapped through the IOTLB, one kick eventfd per ready
 * queue is installed and watched, and the device is activated; at status 0 all of that is torn down again.
 *
 * DEVICE_NEEDS_RESET: VDUSE gives a userspace device no way to set a status bit itself (the status byte is
 * owned by the driver and only mirrored to us). When a ring turns out malformed or the device calls
 * host.needsReset(), the transport stops serving the queues (kicks are ignored) and logs once; the driver sees
 * its I/O stall until it resets the device, which brings everything back.
 */
import { EventEmitter } from 'node:events';
import { closeSync, constants as fsConstants, openSync } from 'node:fs';

import type { DeviceHost, VirtioDevice } from '../../devices/device.js';
import {
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  UV_READABLE,
  type FdWatcher,
  type SysBinding,
} from '../../sys/binding.js';
import type { PackedQueueState, SplitQueueState, Virtqueue, VirtqueueError } from '../../virtio/virtqueue.js';
import {
  VDUSE_MSG_SIZE,
  VDUSE_REQ_RESULT_FAILED,
  decodeVduseRequest,
  encodeVduseResponse,
  type VduseDevRequest,
  type VduseDevResponse,
} from '../../uapi/vduse.js';
import {
  devGetFeatures,
  devInjectConfigIrq,
  devSetConfig,
  vqGetInfo,
  vqInjectIrq,
  vqSetup,
  vqSetupKickfd,
} from './ioctls.js';
import { VduseError, systemErrorMessage } from './errors.js';
import { IotlbMemory } from '../../memory/iotlb-memory.js';
import { deviceFdSource } from './iotlb-source.js';
import { nullLogger, type Logger } from '../../common/logger.js';
import { VduseProtocol, type ProtocolContext, type ProtocolEffect } from './protocol.js';
import type { QueueSetup } from '../engine/threads/protocol.js';
import { startQueue } from '../engine/queue-start.js';
import { QueueThreads, type QueueThreadSpec } from '../engine/threads/queue-threads.js';
import type { StateLog } from './recovery/state-log.js';
import {
  VIRTIO_CONFIG_S_DRIVER_OK,
  VIRTIO_CONFIG_S_FEATURES_OK,
  VIRTIO_F_RING_PACKED,
  hasFeature,
} from '../../uapi/virtio-config.js';
import { VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../../uapi/virtio-ring.js';

export interface VduseDeviceOptions {
  binding: SysBinding;
  /** The VDUSE device name (the char device is /dev/vduse/NAME). */
  name: string;
  device: VirtioDevice;
  logger?: Logger;
  /** Directory of the VDUSE char devices; tests point it elsewhere. Default /dev/vduse. */
  devDir?: string;
  /** An already open dev fd (O_RDWR|O_NONBLOCK) instead of opening devDir/NAME. */
  fd?: number;
  /** Closes fds (the dev fd, kick eventfds, IOTLB fds). Default fs.closeSync; tests with a fake binding pass its own. */
  closeFd?: (fd: number) => void;
  /**
   * Crash-recovery log (./state-log.ts): the status, features, ring positions and in-flight chains are kept
   * there as they change, so that a restarted daemon can take over (`reconnect`).
   */
  stateLog?: StateLog;
  /**
   * Take over a device a previous process served (it died or stopped with persist): no VDUSE_VQ_SETUP, the
   * status and features come from `stateLog`, and a running data path is rebuilt at the logged positions, the
   * in-flight requests resubmitted in order and an interrupt injected per queue. Needs `stateLog`.
   */
  reconnect?: boolean;
  /**
   * Serve the queues on `threads` worker threads (queue i on thread i % threads; ./queue-thread.ts), each
   * building its own device from `spec`. This thread then keeps only the control path; `device` is used for
   * the features, negotiation and config space and is never activated.
   */
  queueThreads?: { threads: number; spec: QueueThreadSpec; debug?: boolean; timeoutMs?: number };
}

/** How fast control messages were answered. */
export interface ControlStats {
  /** Messages answered. */
  messages: number;
  /** Longest time from the dev fd's readable event to a message's answer, in ms. */
  worstAnswerMs: number;
}

interface KickSource {
  fd: number;
  watcher: FdWatcher;
}

export interface VduseDeviceEvents {
  /** DRIVER_OK accepted and the data path started. */
  'driver-ok': [features: bigint];
  /** The driver reset the device (status 0). */
  reset: [];
  /** The data path stopped because of a ring error or host.needsReset(). */
  'needs-reset': [reason: Error];
  /** The dev fd failed for good (device broken after a message timeout, or closed under us). */
  broken: [reason: Error];
}

/** Transport counters (plain numbers, cheap to bump; metrics read them at scrape time). */
export interface VduseDeviceStats {
  /** Kicks (eventfd wake-ups) per queue index (shared with the queue threads when there are some). */
  kicks: number[] | Float64Array;
  /** Interrupts injected per queue index. */
  interrupts: number[] | Float64Array;
  configInterrupts: number;
  /** Control messages (VDUSE requests) answered, and the slowest answer (read to write) in milliseconds. */
  messages: number;
  messageMaxMs: number;
}

export class VduseDevice extends EventEmitter<VduseDeviceEvents> {
  readonly name: string;
  readonly fd: number;
  readonly device: VirtioDevice;
  readonly memory: IotlbMemory;
  readonly #binding: SysBinding;
  readonly #closeFd: (fd: number) => void;
  readonly #log: Logger;
  readonly #protocol: VduseProtocol;
  readonly #watcher: FdWatcher;
  readonly #request = new Uint8Array(VDUSE_MSG_SIZE);
  #features = 0n;
  #queues: (Virtqueue | null)[] = [];
  #kicks: (KickSource | null)[] = [];
  #saved: (SplitQueueState | PackedQueueState | null)[] = [];
  #halted = false;
  #closed = false;
  #resetting: Promise<void> = Promise.resolve();
  readonly #stateLog: StateLog | null;
  /** The queue threads, when the data path runs there (null: on this thread). */
  #threads: QueueThreads | null = null;
  /** The queue threads serve a started data path. */
  #threadsRunning = false;
  readonly controlStats: ControlStats = { messages: 0, worstAnswerMs: 0 };
  /** Requests resubmitted by the last reconnect. */
  resubmitted = 0;
  readonly stats: VduseDeviceStats;

  /** Open /dev/vduse/NAME, set up every queue and start answering requests. */
  static open(options: VduseDeviceOptions): VduseDevice {
    const path = `${options.devDir ?? '/dev/vduse'}/${options.name}`;
    let fd: number;
    try {
      fd = options.fd ?? openSync(path, fsConstants.O_RDWR | fsConstants.O_NONBLOCK);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const why =
        code === 'EBUSY'
          ? 'another process is serving it'
          : code === 'ENOENT' || code === 'ENODEV'
            ? 'no such VDUSE device'
            : code === 'EACCES' || code === 'EPERM'
              ? 'permission denied'
              : systemErrorMessage(err);
      throw new VduseError('ERR_VDUSE_OPEN', `cannot open ${path}: ${why}`, err);
    }
    try {
      return new VduseDevice(options, fd);
    } catch (err) {
      if (options.fd === undefined) (options.closeFd ?? closeSync)(fd);
      throw err;
    }
  }

  private constructor(options: VduseDeviceOptions, fd: number) {
    super();
    this.name = options.name;
    this.fd = fd;
    this.device = options.device;
    this.#binding = options.binding;
    this.#closeFd = options.closeFd ?? closeSync;
    this.#log = options.logger ?? nullLogger;
    this.#protocol = new VduseProtocol(this.device.numQueues);
    const n = this.device.numQueues;
    this.stats = {
      kicks: new Array<number>(n).fill(0),
      interrupts: new Array<number>(n).fill(0),
      configInterrupts: 0,
      messages: 0,
      messageMaxMs: 0,
    };
    this.memory = new IotlbMemory(this.#binding, deviceFdSource(this.#binding, fd), this.#closeFd);
    this.#stateLog = options.stateLog ?? null;
    const reconnect = options.reconnect ?? false;
    if (reconnect && this.#stateLog === null) {
      throw new VduseError('ERR_VDUSE_RECONNECT', 'reconnecting needs a state log');
    }
    for (let i = 0; i < this.device.numQueues; i++) {
      // A running device keeps each queue's max size (and on API 1 refuses VQ_SETUP after DRIVER_OK); one whose
      // daemon died right after creating it may not have it yet.
      if (!reconnect || (this.#stateLog!.status & VIRTIO_CONFIG_S_DRIVER_OK) === 0) {
        vqSetup(this.#binding, fd, i, this.device.maxQueueSize);
      }
      this.#saved.push(null);
    }
    const host: DeviceHost = {
      configChanged: () => this.#configChanged(),
      needsReset: (reason) => this.#needsReset(reason),
    };
    this.device.bind(host);
    if (options.queueThreads !== undefined) {
      const t = options.queueThreads;
      try {
        this.#threads = new QueueThreads({
          spec: t.spec,
          devFd: fd,
          numQueues: n,
          threads: t.threads,
          logger: this.#log,
          ...(t.debug !== undefined ? { debug: t.debug } : {}),
          ...(t.timeoutMs !== undefined ? { timeoutMs: t.timeoutMs } : {}),
          onNeedsReset: (reason, failed) => this.#threadNeedsReset(reason, failed),
        });
      } catch (err) {
        throw new VduseError('ERR_VDUSE_THREADS', (err as Error).message, err);
      }
      this.stats.kicks = this.#threads.kicks;
      this.stats.interrupts = this.#threads.interrupts;
    }
    // Recover before serving: messages the kernel re-queued (read but not answered by the dead process) are
    // then answered against the recovered state.
    if (reconnect) {
      try {
        this.#recover();
      } catch (err) {
        if (this.#queues.length > 0 || this.#threadsRunning) this.#stopDataPath(false);
        this.memory.invalidateAll();
        this.#threads?.terminate();
        throw err;
      }
    }
    this.#watcher = this.#binding.createFdWatcher(fd, (status, events) => this.#onReadable(status, events));
    this.#watcher.start(UV_READABLE);
  }

  /** The status byte as last accepted. */
  get status(): number {
    return this.#protocol.status;
  }

  /** Data path running (after DRIVER_OK, before reset). */
  get running(): boolean {
    return this.#protocol.running;
  }

  /** The negotiated features (0 before FEATURES_OK). */
  get features(): bigint {
    return this.#features;
  }

  /** The live queues (null for not-ready ones); empty while stopped. */
  get queues(): readonly (Virtqueue | null)[] {
    return this.#queues;
  }

  /** The queue threads serving the data path, or null when it runs on this thread. */
  get queueThreads(): QueueThreads | null {
    return this.#threads;
  }

  /** Resolves when the last device reset has finished (requests in the backend drained). */
  get settled(): Promise<void> {
    return this.#resetting;
  }

  /**
   * Stop serving: tear the data path down, close the dev fd. Call it after the device was detached (DEV_DEL), so
   * the kernel has already reset it. Resolves when the device's last requests are done.
   */
  async close(): Promise<void> {
    if (this.#closed) return this.#resetting;
    this.#closed = true;
    this.#watcher.close();
    if (this.#protocol.running || this.#queues.length > 0 || this.#threadsRunning) this.#stopDataPath(true);
    this.memory.invalidateAll();
    await this.#threads?.close();
    this.#closeFd(this.fd);
    await this.#resetting;
  }

  /**
   * Stop serving but leave the device running for a successor (an upgrade): no more kicks are taken, requests
   * in flight get up to `drainMs` to complete and be published, then the dev fd is closed. The state log is not
   * reset: whatever did not complete is resubmitted by the next process (VduseDevice.open with reconnect).
   */
  async closeForRestart(drainMs = 5000): Promise<void> {
    if (this.#closed) return this.#resetting;
    this.#halted = true;
    for (const kick of this.#kicks) kick?.watcher.stop();
    const deadline = Date.now() + drainMs;
    const busy = (): boolean => this.#queues.some((q) => q !== null && q.inFlight > 0);
    while (busy() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    if (this.#threads !== null) {
      await this.#threads.drain(drainMs).catch((err: unknown) => {
        this.#log.warn(`draining the queue threads: ${(err as Error).message}`);
      });
    }
    // completions are published on the next turn of the loop
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    if (this.#closed) return this.#resetting;
    this.#closed = true;
    this.#watcher.close();
    if (this.#protocol.running || this.#queues.length > 0 || this.#threadsRunning) this.#stopDataPath(true);
    this.memory.invalidateAll();
    await this.#threads?.close();
    this.#closeFd(this.fd);
    await this.#resetting;
  }

  /** Drain and answer every queued request. */
  #onReadable(status: number, events: number): void {
    if (this.#closed) return;
    const t0 = performance.now();
    if (status < 0) {
      this.#broken(new Error(`poll on /dev/vduse/${this.name} failed (errno ${-status})`));
      return;
    }
    void events;
    for (;;) {
      let n: number;
      try {
        n = this.#binding.read(this.fd, this.#request);
      } catch (err) {
        this.#broken(err as Error);
        return;
      }
      if (n < 0) return; // EAGAIN: drained
      if (n === 0) {
        this.#broken(new Error(`end of file on /dev/vduse/${this.name}`));
        return;
      }
      if (n !== VDUSE_MSG_SIZE) {
        this.#log.warn(`short read of ${n} bytes from /dev/vduse/${this.name}: ignored`);
        continue;
      }
      this.#serve(this.#request);
      const took = performance.now() - t0;
      this.controlStats.messages++;
      if (took > this.controlStats.worstAnswerMs) this.controlStats.worstAnswerMs = took;
      if (this.#closed) return;
    }
  }

  #serve(bytes: Uint8Array): void {
    const started = performance.now();
    const request = decodeVduseRequest(bytes);
    const ctx: ProtocolContext = {
      acceptFeatures: () => this.#acceptFeatures(),
      queueState: (index) => this.#queueState(index),
      log: (message) => this.#log.warn(message),
    };
    this.#log.debug(`request ${describeRequest(request)}`);
    const { response, effects } = this.#protocol.handle(request, ctx);
    let answer: VduseDevResponse = response;
    for (const effect of effects) {
      if (!this.#apply(effect)) answer = { request_id: response.request_id, result: VDUSE_REQ_RESULT_FAILED };
    }
    // Log first, answer second: a process that dies in between leaves a request the kernel re-sends.
    if (
      this.#stateLog !== null &&
      request.kind === 'set_status' &&
      answer.result !== VDUSE_REQ_RESULT_FAILED
    ) {
      this.#stateLog.setStatus(this.#protocol.status);
    }
    try {
      this.#binding.write(this.fd, encodeVduseResponse(answer));
    } catch (err) {
      // ENOENT: the kernel gave up on the request (timeout); anything else means the fd is unusable.
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT')
        this.#log.warn(`request ${request.request_id} was no longer awaited by the kernel`);
      else this.#broken(err as Error);
    }
    const took = performance.now() - started;
    this.stats.messages++;
    if (took > this.stats.messageMaxMs) this.stats.messageMaxMs = took;
  }

  /** Carry out one effect; false when the request must be answered FAILED. */
  #apply(effect: ProtocolEffect): boolean {
    switch (effect.kind) {
      case 'start':
        try {
          this.#startDataPath();
          return true;
        } catch (err) {
          this.#log.error(`cannot start the data path: ${(err as Error).message}`);
          this.#stopDataPath(false);
          this.#protocol.startFailed();
          return false;
        }
      case 'stop':
        this.#stopDataPath(false);
        return true;
      case 'reset':
        this.#log.debug('reset');
        this.#stopDataPath(true);
        this.#stateLog?.reset();
        this.#features = 0n;
        this.#saved = this.#saved.map(() => null);
        this.emit('reset');
        return true;
      case 'invalidate':
        this.memory.invalidate(effect.start, effect.last);
        return this.#threads === null || this.#threads.invalidate(effect.start, effect.last);
    }
  }

  #acceptFeatures(): boolean {
    const features = devGetFeatures(this.#binding, this.fd);
    const unknown = features & ~this.device.features;
    if (unknown !== 0n) {
      this.#log.warn(
        `driver features 0x${features.toString(16)} include bits not offered (0x${unknown.toString(16)})`,
      );
      return false;
    }
    if (!this.device.negotiate(features)) return false;
    this.#features = features;
    this.#stateLog?.setFeatures(features);
    this.#log.debug(`features negotiated: 0x${features.toString(16)}`);
    return true;
  }

  #queueState(index: number): SplitQueueState | PackedQueueState {
    const live = this.#queues[index];
    if (live) return live.getState();
    if (this.#threadsRunning) {
      const state = this.#threads!.queueState(index);
      if (state !== null) return state;
    }
    const saved = this.#saved[index];
    if (saved) return saved;
    return hasFeature(this.#features, VIRTIO_F_RING_PACKED)
      ? { lastAvailCounter: 1, lastAvailIdx: 0, lastUsedCounter: 1, lastUsedIdx: 0 }
      : { nextAvail: 0 };
  }

  /** Reconnect: take up the logged status and features, and rebuild a running data path. */
  #recover(): void {
    const log = this.#stateLog!;
    const status = log.status;
    if ((status & (VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK)) !== 0) {
      const features = devGetFeatures(this.#binding, this.fd);
      const logged = log.features;
      if (logged !== 0n && features !== logged) {
        throw new VduseError(
          'ERR_VDUSE_RECONNECT',
          `the driver's features 0x${features.toString(16)} are not the logged 0x${logged.toString(16)}`,
        );
      }
      const unknown = features & ~this.device.features;
      if (unknown !== 0n || !this.device.negotiate(features)) {
        throw new VduseError(
          'ERR_VDUSE_RECONNECT',
          `the driver's features 0x${features.toString(16)} are not acceptable to this device`,
        );
      }
      this.#features = features;
      log.setFeatures(features);
    }
    this.#protocol.restore(status);
    if (this.#protocol.running) this.#startDataPath(true);
    this.#log.info(
      `reconnected to ${this.name}: status 0x${status.toString(16)}${this.#protocol.running ? `, ${this.resubmitted} request(s) resubmitted` : ''}`,
    );
  }

  #startDataPath(recover = false): void {
    if (this.#features === 0n) this.#features = devGetFeatures(this.#binding, this.fd);
    const features = this.#features;
    const packed = hasFeature(features, VIRTIO_F_RING_PACKED);
    const eventIdx = hasFeature(features, VIRTIO_RING_F_EVENT_IDX);
    const indirect = hasFeature(features, VIRTIO_RING_F_INDIRECT_DESC);
    const log = this.#stateLog;
    // First every check, then the changes: a reconnect that does not fit is refused, never half-applied.
    const infos = [];
    for (let i = 0; i < this.device.numQueues; i++) {
      const info = vqGetInfo(this.#binding, this.fd, i);
      const ready = info.ready && info.num !== 0;
      if (recover && log !== null) {
        const q = log.queue(i);
        const ring = q.ring;
        if (q.valid !== ready) {
          throw new VduseError(
            'ERR_VDUSE_RECONNECT',
            `queue ${i} is ${ready ? '' : 'not '}ready but the state log says otherwise`,
          );
        }
        if (
          ready &&
          (ring.size !== info.num ||
            ring.packed !== packed ||
            ring.descAddr !== info.descAddr ||
            ring.driverAddr !== info.driverAddr ||
            ring.deviceAddr !== info.deviceAddr)
        ) {
          throw new VduseError(
            'ERR_VDUSE_RECONNECT',
            `queue ${i}: the rings are not where the state log has them`,
          );
        }
      }
      infos.push({ info, ready });
    }
    this.#halted = false;
    if (this.#threads !== null) {
      this.#startThreads(infos, { packed, eventIdx, indirect, recover });
      return;
    }
    const queues: (Virtqueue | null)[] = [];
    this.#queues = queues;
    this.#kicks = [];
    let resubmitted = 0;
    for (let i = 0; i < this.device.numQueues; i++) {
      const { info, ready } = infos[i]!;
      if (!ready) {
        queues.push(null);
        this.#kicks.push(null);
        continue;
      }
      const queueLog = log?.queue(i);
      const state = packed ? info.packed : info.split;
      const started = startQueue(
        {
          index: i,
          size: info.num,
          descAddr: info.descAddr,
          driverAddr: info.driverAddr,
          deviceAddr: info.deviceAddr,
          eventIdx,
          indirect,
        },
        packed,
        this.memory,
        {
          signal: () => this.#signal(i),
          onError: (error) => this.#queueError(error),
          binding: this.#binding,
          queueLog,
          recover,
          state,
        },
      );
      const queue = started.queue;
      resubmitted += started.resubmitted;
      if (!recover && queueLog !== undefined) logQueueStart(queueLog, info, packed, state);
      queues.push(queue);
      this.#kicks.push(this.#installKick(i));
    }
    this.resubmitted = resubmitted;
    this.#saved = this.#saved.map(() => null);
    if (log !== null && !recover) {
      log.activated();
      log.setStatus(this.#protocol.status);
    }
    const ready = queues.filter((q) => q !== null).length;
    this.#log.info(
      `driver ready: ${ready}/${this.device.numQueues} queue(s), ${packed ? 'packed' : 'split'} ring, features 0x${features.toString(16)}`,
    );
    this.device.activate({ features, memory: this.memory, queues });
    if (recover) {
      // The driver may have missed completions published just before the crash: tell it to look.
      for (let i = 0; i < queues.length; i++) if (queues[i] !== null) this.#signal(i);
    }
    this.emit('driver-ok', features);
  }

  /** The data path on the queue threads: each starts its ready queues and acknowledges before we answer. */
  #startThreads(
    infos: { info: VduseVqInfoLike; ready: boolean }[],
    ring: { packed: boolean; eventIdx: boolean; indirect: boolean; recover: boolean },
  ): void {
    const log = this.#stateLog;
    const features = this.#features;
    const setups: QueueSetup[] = [];
    infos.forEach(({ info, ready }, i) => {
      if (!ready) return;
      const state = ring.packed ? info.packed : info.split;
      if (log !== null && !ring.recover) logQueueStart(log.queue(i), info, ring.packed, state);
      setups.push({
        index: i,
        size: info.num,
        descAddr: info.descAddr,
        driverAddr: info.driverAddr,
        deviceAddr: info.deviceAddr,
        state,
      });
    });
    this.resubmitted = this.#threads!.start(
      {
        features,
        packed: ring.packed,
        eventIdx: ring.eventIdx,
        indirect: ring.indirect,
        recover: ring.recover,
        stateLog: log?.path ?? null,
      },
      setups,
    );
    this.#threadsRunning = true;
    this.#saved = this.#saved.map(() => null);
    if (log !== null && !ring.recover) {
      log.activated();
      log.setStatus(this.#protocol.status);
    }
    this.#log.info(
      `driver ready: ${setups.length}/${this.device.numQueues} queue(s) on ${this.#threads!.threadCount} threads, ${ring.packed ? 'packed' : 'split'} ring, features 0x${features.toString(16)}`,
    );
    this.emit('driver-ok', features);
  }

  #installKick(index: number): KickSource {
    const fd = this.#binding.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    try {
      vqSetupKickfd(this.#binding, this.fd, index, fd);
      const watcher = this.#binding.createFdWatcher(fd, (status) => this.#onKick(index, fd, status));
      watcher.start(UV_READABLE);
      return { fd, watcher };
    } catch (err) {
      this.#closeFd(fd);
      throw err;
    }
  }

  #onKick(index: number, fd: number, status: number): void {
    if (status < 0) {
      this.#log.warn(`kick eventfd of queue ${index} failed (errno ${-status})`);
      return;
    }
    try {
      this.#binding.eventfdRead(fd);
    } catch (err) {
      this.#log.warn(`reading the kick of queue ${index}: ${(err as Error).message}`);
    }
    this.stats.kicks[index]!++;
    if (this.#halted || this.#queues[index] == null) return;
    try {
      this.device.queueNotify(index);
    } catch (err) {
      this.#needsReset(err as Error);
    }
  }

  #signal(index: number): void {
    try {
      vqInjectIrq(this.#binding, this.fd, index);
      this.stats.interrupts[index]!++;
    } catch (err) {
      // EINVAL before DRIVER_OK or after a reset raced with a late completion: nothing to tell.
      this.#log.debug(`interrupt for queue ${index} not injected: ${(err as Error).message}`);
    }
  }

  #stopDataPath(reset: boolean): void {
    if (this.#threads !== null) {
      const wasRunning = this.#threadsRunning;
      this.#threadsRunning = false;
      if (wasRunning || reset) {
        const states = this.#threads.stop(reset);
        for (const [i, state] of states) this.#saved[i] = state;
      }
    }
    for (const kick of this.#kicks) {
      if (kick === null) continue;
      kick.watcher.close();
      try {
        this.#closeFd(kick.fd);
      } catch {
        // already gone
      }
    }
    this.#kicks = [];
    if (this.#queues.length > 0) {
      this.#saved = this.#queues.map((q, i) => (q ? q.getState() : (this.#saved[i] ?? null)));
    }
    const hadQueues = this.#queues.length > 0;
    this.#queues = [];
    this.#halted = false;
    if (hadQueues || reset) {
      const done = this.device.reset().catch((err: unknown) => {
        this.#log.warn(`device reset: ${(err as Error).message}`);
      });
      this.#resetting = Promise.all([this.#resetting, done]).then(() => undefined);
    }
    if (reset) this.memory.invalidateAll();
  }

  #queueError(error: VirtqueueError): void {
    this.#needsReset(error);
  }

  /** A queue thread asked for a reset, or failed (then it is logged even when the device was halted already). */
  #threadNeedsReset(reason: Error, failed: boolean): void {
    if (this.#closed) return;
    if (this.#halted) {
      if (failed) this.#log.error(reason.message);
      return;
    }
    this.#needsReset(reason);
  }

  #needsReset(reason: Error): void {
    if (this.#halted) return;
    this.#halted = true;
    for (const kick of this.#kicks) kick?.watcher.stop();
    this.#threads?.halt();
    this.#log.error(
      `device needs reset: ${reason.message}; the data path is stopped until the driver resets the device`,
    );
    this.emit('needs-reset', reason);
  }

  #configChanged(): void {
    if (this.#closed) return;
    try {
      devSetConfig(this.#binding, this.fd, 0, this.device.config());
      if ((this.#protocol.status & VIRTIO_CONFIG_S_DRIVER_OK) !== 0) {
        devInjectConfigIrq(this.#binding, this.fd);
        this.stats.configInterrupts++;
      }
      this.#log.debug('config space updated');
    } catch (err) {
      this.#log.warn(`config update failed: ${(err as Error).message}`);
    }
  }

  #broken(reason: Error): void {
    if (this.#closed) return;
    this.#log.error(`/dev/vduse/${this.name}: ${reason.message}`);
    this.#watcher.stop();
    this.emit('broken', reason);
  }
}

type VduseVqInfoLike = ReturnType<typeof vqGetInfo>;

/** Record in the state log where a queue starts (its rings and positions). */
function logQueueStart(
  queueLog: ReturnType<StateLog['queue']>,
  info: VduseVqInfoLike,
  packed: boolean,
  state: SplitQueueState | PackedQueueState,
): void {
  const pos = 'nextAvail' in state ? state.nextAvail : state.lastAvailIdx | (state.lastAvailCounter << 15);
  const used =
    'nextAvail' in state
      ? (state.nextUsed ?? state.nextAvail)
      : state.lastUsedIdx | (state.lastUsedCounter << 15);
  queueLog.start(
    {
      size: info.num,
      packed,
      descAddr: info.descAddr,
      driverAddr: info.driverAddr,
      deviceAddr: info.deviceAddr,
    },
    pos,
    used,
  );
}

function describeRequest(request: VduseDevRequest): string {
  const id = `#${request.request_id}`;
  switch (request.kind) {
    case 'get_vq_state':
      return `${id} GET_VQ_STATE vq ${request.index}`;
    case 'set_status':
      return `${id} SET_STATUS 0x${request.status.toString(16)}`;
    case 'update_iotlb':
      return `${id} UPDATE_IOTLB [0x${request.start.toString(16)}, 0x${request.last.toString(16)}]`;
    default:
      return `${id} type ${request.type}`;
  }
}
