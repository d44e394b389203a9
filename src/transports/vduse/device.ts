/**
 * The VDUSE transport at run time: the control loop of one /dev/vduse/NAME for one VirtioDevice.
 *
 * The dev fd is non-blocking and watched on the event loop; every readable event drains all queued requests and
 * answers each at once, so the thread never blocks and the kernel (which may be inside a netlink DEV_NEW, a probe
 * or a reset) never waits on us. The protocol (./protocol.ts) turns each request into an answer and effects;
 * the effects go to the data path (../engine/data-path.ts): at DRIVER_OK it starts serving the ready queues, at
 * status 0 it stops, UPDATE_IOTLB drops mappings, GET_VQ_STATE asks it where a queue stands. The data path runs
 * on this thread (a QueueSet over ./queue-transport.ts) or on queue threads (QueueThreads); this file does not
 * know which. Crash recovery (take-over of a device a dead process served) checks against the state log in
 * ./recovery/.
 *
 * DEVICE_NEEDS_RESET: VDUSE gives a userspace device no way to set a status bit itself (the status byte is
 * owned by the driver and only mirrored to us). When a ring turns out malformed or the device calls
 * host.needsReset(), the data path stops taking requests and logs once; the driver sees its I/O stall until it
 * resets the device, which brings everything back.
 */
import { EventEmitter } from 'node:events';
import { closeSync, constants as fsConstants, openSync } from 'node:fs';

import type { DeviceHost, VirtioDevice } from '../../devices/device.js';
import { UV_READABLE, type FdWatcher, type SysBinding } from '../../sys/binding.js';
import {
  VDUSE_MSG_SIZE,
  VDUSE_REQ_RESULT_FAILED,
  decodeVduseRequest,
  encodeVduseResponse,
  type VduseDevRequest,
  type VduseDevResponse,
} from '../../uapi/vduse.js';
import { devGetFeatures, devInjectConfigIrq, devSetConfig, vqGetInfo, vqSetup } from './ioctls.js';
import { VduseError, systemErrorMessage } from './errors.js';
import { IotlbMemory } from '../../memory/iotlb-memory.js';
import { deviceFdSource } from './iotlb-source.js';
import { messageOf } from '../../common/errors.js';
import { nullLogger, type Logger } from '../../common/logger.js';
import { VduseProtocol, type ProtocolContext, type ProtocolEffect } from './protocol.js';
import type { DataPath, QueueSetup, QueueState } from '../engine/data-path.js';
import { QueueSet } from '../engine/queue-set.js';
import { QueueThreadError } from '../engine/errors.js';
import { QueueThreads } from '../engine/threads/queue-threads.js';
import type { QueueThreadSpec, QueueThreadTypes } from '../engine/threads/protocol.js';
import type { Virtqueue } from '../../virtio/index.js';
import { vduseQueueTransport, vduseThreadTransport } from './queue-transport.js';
import { checkLoggedFeatures, checkLoggedQueues, isReady, recordQueueStart } from './recovery/checks.js';
import type { StateLog } from './recovery/state-log.js';
import {
  VIRTIO_CONFIG_S_DRIVER_OK,
  VIRTIO_CONFIG_S_FEATURES_OK,
  VIRTIO_F_RING_PACKED,
  hasFeature,
} from '../../uapi/virtio-config.js';
import { VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../../uapi/virtio-ring.js';

export interface VduseDeviceOptions<T extends QueueThreadTypes = QueueThreadTypes> {
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
   * Crash-recovery log (./recovery/state-log.ts): the status, features, ring positions and in-flight chains are
   * kept there as they change, so that a restarted daemon can take over (`reconnect`).
   */
  stateLog?: StateLog;
  /**
   * Take over a device a previous process served (it died or stopped with persist): no VDUSE_VQ_SETUP, the
   * status and features come from `stateLog`, and a running data path is rebuilt at the logged positions, the
   * in-flight requests resubmitted in order and an interrupt injected per queue. Needs `stateLog`.
   */
  reconnect?: boolean;
  /**
   * Serve the queues on `threads` worker threads (queue i on thread i % threads; ../engine/threads/), each
   * building its own device from `spec`. This thread then keeps only the control path; `device` is used for
   * the features, negotiation and config space and is never activated.
   */
  queueThreads?: { threads: number; spec: QueueThreadSpec<T>; debug?: boolean; timeoutMs?: number };
}

/** How fast control messages were answered (a view of VduseDeviceStats.messages and .messageMaxMs). */
export interface ControlStats {
  /** Messages answered. */
  messages: number;
  /** Longest time from the dev fd's readable event to a message's answer, in ms. */
  worstAnswerMs: number;
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
  kicks: Float64Array;
  /** Interrupts injected per queue index. */
  interrupts: Float64Array;
  configInterrupts: number;
  /**
   * Control messages (VDUSE requests) answered, and the slowest answer in milliseconds, counted from the dev
   * fd's readable event (so a message that waited behind others in the same batch counts its wait).
   */
  messages: number;
  messageMaxMs: number;
}

export class VduseDevice<
  T extends QueueThreadTypes = QueueThreadTypes,
> extends EventEmitter<VduseDeviceEvents> {
  readonly name: string;
  readonly fd: number;
  readonly device: VirtioDevice;
  /** Guest memory as this thread maps it (the inline data path's; unused with queue threads). */
  readonly memory: IotlbMemory;
  readonly #binding: SysBinding;
  readonly #closeFd: (fd: number) => void;
  readonly #log: Logger;
  readonly #protocol: VduseProtocol;
  readonly #watcher: FdWatcher;
  readonly #request = new Uint8Array(VDUSE_MSG_SIZE);
  readonly #stateLog: StateLog | null;
  /** Where the queues are served: #inline (this thread) or #threads. */
  readonly #dataPath: DataPath;
  readonly #inline: QueueSet | null = null;
  readonly #threads: QueueThreads<T> | null = null;
  #features = 0n;
  /** Queue states saved at the last stop (GET_VQ_STATE after a stop). */
  #saved: (QueueState | null)[] = [];
  /** needs-reset was reported (or a drain for a successor began): no further report until the next start. */
  #halted = false;
  #closed = false;
  /** Requests resubmitted by the last reconnect. */
  resubmitted = 0;
  readonly stats: VduseDeviceStats;

  /** Open /dev/vduse/NAME, set up every queue and start answering requests. */
  static open<T extends QueueThreadTypes = QueueThreadTypes>(options: VduseDeviceOptions<T>): VduseDevice<T> {
    const path = `${options.devDir ?? '/dev/vduse'}/${options.name}`;
    let fd: number;
    try {
      fd = options.fd ?? openSync(path, fsConstants.O_RDWR | fsConstants.O_NONBLOCK);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EBUSY') {
        throw new VduseError('ERR_VDUSE_BUSY', `cannot open ${path}: another process is serving it`, err);
      }
      const why =
        code === 'ENOENT' || code === 'ENODEV'
          ? 'no such VDUSE device'
          : code === 'EACCES' || code === 'EPERM'
            ? 'permission denied'
            : systemErrorMessage(err);
      throw new VduseError('ERR_VDUSE_OPEN', `cannot open ${path}: ${why}`, err);
    }
    try {
      return new VduseDevice<T>(options, fd);
    } catch (err) {
      if (options.fd === undefined) (options.closeFd ?? closeSync)(fd);
      throw err;
    }
  }

  private constructor(options: VduseDeviceOptions<T>, fd: number) {
    super();
    this.name = options.name;
    this.fd = fd;
    this.device = options.device;
    this.#binding = options.binding;
    this.#closeFd = options.closeFd ?? closeSync;
    this.#log = options.logger ?? nullLogger;
    const n = this.device.numQueues;
    this.#protocol = new VduseProtocol(n);
    this.memory = new IotlbMemory(this.#binding, deviceFdSource(this.#binding, fd), this.#closeFd);
    this.#stateLog = options.stateLog ?? null;
    const reconnect = options.reconnect ?? false;
    if (reconnect && this.#stateLog === null) {
      throw new VduseError('ERR_VDUSE_RECONNECT', 'reconnecting needs a state log');
    }
    for (let i = 0; i < n; i++) {
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
        this.#threads = new QueueThreads<T>({
          spec: t.spec,
          transport: vduseThreadTransport({ devFd: fd, stateLog: this.#stateLog?.path ?? null }),
          numQueues: n,
          threads: t.threads,
          logger: this.#log,
          ...(t.debug !== undefined ? { debug: t.debug } : {}),
          ...(t.timeoutMs !== undefined ? { timeoutMs: t.timeoutMs } : {}),
          onNeedsReset: (reason, failed) => this.#threadNeedsReset(reason, failed),
        });
      } catch (err) {
        throw new VduseError('ERR_VDUSE_THREADS', messageOf(err), err);
      }
      this.#dataPath = this.#threads;
    } else {
      this.#inline = new QueueSet({
        binding: this.#binding,
        device: this.device,
        transport: vduseQueueTransport(this.#binding, fd, this.memory, this.#stateLog, this.#closeFd),
        numQueues: n,
        logger: this.#log,
        closeFd: this.#closeFd,
        // The main thread waits for kicks in the native KickLoop too (measured: QD1 1.15-1.25x, QD32 ~1.05x
        // under single-threaded TCG against FdWatchers); it hands control back to libuv whenever the control
        // device, a timer or the backend has something, so the control path is served as before.
        kickLoop: true,
        onNeedsReset: (reason) => this.#needsReset(reason),
      });
      this.#dataPath = this.#inline;
    }
    const counters = this.#dataPath.counters;
    this.stats = {
      kicks: counters.subarray(0, n),
      interrupts: counters.subarray(n, 2 * n),
      configInterrupts: 0,
      messages: 0,
      messageMaxMs: 0,
    };
    // Recover before serving: messages the kernel re-queued (read but not answered by the dead process) are
    // then answered against the recovered state.
    if (reconnect) {
      try {
        this.#recover();
      } catch (err) {
        if (this.#dataPath.running) this.#stopDataPath(false);
        this.memory.invalidateAll();
        this.#threads?.terminate();
        throw err;
      }
    }
    this.#watcher = this.#binding.createFdWatcher(fd, (status) => this.#onReadable(status));
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

  /** The live queues served on this thread (null for not-ready ones); empty while stopped or with threads. */
  get queues(): readonly (Virtqueue | null)[] {
    return this.#inline?.queues ?? [];
  }

  /** The queue threads serving the data path, or null when it runs on this thread. */
  get queueThreads(): QueueThreads<T> | null {
    return this.#threads;
  }

  /** The data path, whichever thread serves it. */
  get dataPath(): DataPath {
    return this.#dataPath;
  }

  /** How fast control messages were answered (the same counters as stats.messages / stats.messageMaxMs). */
  get controlStats(): ControlStats {
    return { messages: this.stats.messages, worstAnswerMs: this.stats.messageMaxMs };
  }

  /** Resolves when the last device reset has finished (requests in the backend drained). */
  get settled(): Promise<void> {
    return this.#inline?.settled ?? Promise.resolve();
  }

  /**
   * Stop serving: tear the data path down, close the dev fd. Call it after the device was detached (DEV_DEL), so
   * the kernel has already reset it. Resolves when the device's last requests are done and no guest memory is
   * mapped any more.
   */
  async close(): Promise<void> {
    if (this.#closed) return this.settled;
    this.#closed = true;
    this.#watcher.close();
    if (this.#dataPath.running) this.#stopDataPath(true);
    await this.#shutDown();
  }

  /**
   * Stop serving but leave the device running for a successor (an upgrade): no more requests are taken,
   * requests in flight get up to `drainMs` to complete and be published, then the dev fd is closed. The state
   * log is not reset: whatever did not complete is resubmitted by the next process (VduseDevice.open with
   * reconnect).
   */
  async closeForRestart(drainMs = 5000): Promise<void> {
    if (this.#closed) return this.settled;
    this.#halted = true;
    await this.#dataPath.drain(drainMs).catch((err: unknown) => {
      this.#log.warn(`draining the data path: ${messageOf(err)}`);
    });
    if (this.#closed) return this.settled;
    this.#closed = true;
    this.#watcher.close();
    if (this.#dataPath.running) this.#stopDataPath(true);
    await this.#shutDown();
  }

  /** After the watcher is closed: the data path's last requests, the mappings, the dev fd. */
  async #shutDown(): Promise<void> {
    const closing = this.#dataPath.close();
    this.memory.invalidateAll();
    await closing;
    await this.memory.drained();
    this.#closeFd(this.fd);
  }

  /** Drain and answer every queued request. */
  #onReadable(status: number): void {
    if (this.#closed) return;
    const t0 = performance.now();
    if (status < 0) {
      this.#broken(
        new VduseError('ERR_VDUSE_CLOSED', `poll on /dev/vduse/${this.name} failed (errno ${-status})`),
      );
      return;
    }
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
        this.#broken(new VduseError('ERR_VDUSE_CLOSED', `end of file on /dev/vduse/${this.name}`));
        return;
      }
      if (n !== VDUSE_MSG_SIZE) {
        this.#log.warn(`short read of ${n} bytes from /dev/vduse/${this.name}: ignored`);
        continue;
      }
      this.#serve(this.#request);
      const took = performance.now() - t0;
      this.stats.messages++;
      if (took > this.stats.messageMaxMs) this.stats.messageMaxMs = took;
      if (this.#closed) return;
    }
  }

  #serve(bytes: Uint8Array): void {
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
      let ok: boolean;
      try {
        ok = this.#apply(effect);
      } catch (err) {
        // Nothing the kernel asks may end the process (nor leave the request unanswered).
        this.#log.error(`request ${describeRequest(request)}: ${messageOf(err)}`);
        ok = false;
      }
      if (!ok) answer = { request_id: response.request_id, result: VDUSE_REQ_RESULT_FAILED };
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
  }

  /** Carry out one effect; false when the request must be answered FAILED. */
  #apply(effect: ProtocolEffect): boolean {
    switch (effect.kind) {
      case 'start':
        try {
          this.#startDataPath(false);
          return true;
        } catch (err) {
          this.#log.error(`cannot start the data path: ${messageOf(err)}`);
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
        return this.#dataPath.invalidate(effect.start, effect.last);
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

  #queueState(index: number): QueueState {
    const live = this.#dataPath.running ? this.#dataPath.state(index) : null;
    if (live !== null) return live;
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
      this.#features = checkLoggedFeatures(log, devGetFeatures(this.#binding, this.fd), this.device);
      log.setFeatures(this.#features);
    }
    this.#protocol.restore(status);
    if (this.#protocol.running) this.#startDataPath(true);
    this.#log.info(
      `reconnected to ${this.name}: status 0x${status.toString(16)}${this.#protocol.running ? `, ${this.resubmitted} request(s) resubmitted` : ''}`,
    );
  }

  #startDataPath(recover: boolean): void {
    if (this.#features === 0n) this.#features = devGetFeatures(this.#binding, this.fd);
    const features = this.#features;
    const packed = hasFeature(features, VIRTIO_F_RING_PACKED);
    const log = this.#stateLog;
    const infos = [];
    for (let i = 0; i < this.device.numQueues; i++) infos.push(vqGetInfo(this.#binding, this.fd, i));
    // First every check, then the changes: a reconnect that does not fit is refused, never half-applied.
    if (recover && log !== null) checkLoggedQueues(log, infos, packed);
    const queues: QueueSetup[] = infos.filter(isReady).map((info) => ({
      index: info.index,
      size: info.num,
      descAddr: info.descAddr,
      driverAddr: info.driverAddr,
      deviceAddr: info.deviceAddr,
      state: packed ? info.packed : info.split,
    }));
    if (log !== null && !recover) {
      for (const q of queues) recordQueueStart(log.queue(q.index), infos[q.index]!, packed, q.state);
    }
    this.#halted = false;
    try {
      this.resubmitted = this.#dataPath.start({
        features,
        packed,
        eventIdx: hasFeature(features, VIRTIO_RING_F_EVENT_IDX),
        indirect: hasFeature(features, VIRTIO_RING_F_INDIRECT_DESC),
        recover,
        queues,
      });
    } catch (err) {
      const code = err instanceof QueueThreadError ? err.remoteCode : (err as { code?: unknown }).code;
      if (code === 'ERR_ENGINE_RECOVER') throw new VduseError('ERR_VDUSE_RECONNECT', messageOf(err), err);
      throw err;
    }
    this.#saved = this.#saved.map(() => null);
    if (log !== null && !recover) {
      log.activated();
      log.setStatus(this.#protocol.status);
    }
    const where = this.#threads !== null ? ` on ${this.#threads.threadCount} threads` : '';
    this.#log.info(
      `driver ready: ${queues.length}/${this.device.numQueues} queue(s)${where}, ${packed ? 'packed' : 'split'} ring, features 0x${features.toString(16)}`,
    );
    this.emit('driver-ok', features);
  }

  #stopDataPath(reset: boolean): void {
    for (const [i, state] of this.#dataPath.stop(reset)) this.#saved[i] = state;
    this.#halted = false;
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
    this.#dataPath.halt();
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
      this.#log.warn(`config update failed: ${messageOf(err)}`);
    }
  }

  #broken(reason: Error): void {
    if (this.#closed) return;
    this.#log.error(`/dev/vduse/${this.name}: ${reason.message}`);
    this.#watcher.stop();
    this.emit('broken', reason);
  }
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
