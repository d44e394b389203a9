/**
 * The queue-serving engine: the queues of one device (or of one queue thread's share of them) between
 * DRIVER_OK and reset. It builds the ring engines, watches one kick fd per ready queue, hands kicks to the
 * device, injects interrupts, reports progress (GET_VQ_STATE), halts on an error, drains for a successor and
 * keeps counters where other threads can read them. The same code runs on the transport's thread (inline) and
 * inside each queue thread (./threads/server.ts); what differs between transports comes in through a
 * QueueTransport (./data-path.ts).
 *
 * Guest memory: every chain handed to the device pins the memory generation it was popped in
 * (./served-queue.ts) until it is given back or the device's reset has settled, so that a dropped mapping is
 * unmapped only when no request can write into it (../../memory/iotlb-memory.ts). A guest that keeps dropping
 * mappings while requests hang cannot make the retired list grow past RETIRED_MAX: the device is then halted
 * (needs reset), no new request starts and the list only shrinks.
 *
 * Kicks and interrupts: without `kickLoop` each kick fd has an FdWatcher and each interrupt is a
 * transport.signal(). With it (queue threads, and VDUSE's inline data path: the KickLoop gives control back to
 * libuv whenever libuv has work, so a control path sharing the loop is served as before) one native KickLoop
 * (src/sys/binding.ts) waits on every kick fd where libuv would block, drains them and makes one callback per
 * wake-up for all kicked queues; a signal only marks the queue, and the loop injects the marked interrupts
 * after the callback (or, for completions from other callbacks, before it next waits), with no crossing into
 * native code per kick or per interrupt. An interrupt the loop cannot inject is counted, and logged (debug,
 * as inline) on the next wake-up.
 *
 * Ring polling (device.ringPolling, through the KickLoop only): the loop watches each queue's ring word and the
 * engine marks, after every wake-up, where each ring is idle (KickLoop.marks; a pop makes the mark stale at
 * once, an IOTLB invalidation clears them all). A kick for work already served is then absorbed, and while
 * ./poll-control.ts finds that it pays the loop spins over the idle rings before it blocks (it measures
 * completed requests per 100 ms with the window closed and open). The ring's notification flags are left as
 * the device set them: the driver still kicks, so a stale watch costs a spurious wake-up, never a lost kick.
 *
 * Nothing in a data-path callback (a kick, the device's poll or publish through the queues) throws out of
 * here: a throw becomes needs-reset for this device only.
 */
import { closeSync } from 'node:fs';

import type { VirtioDevice } from '../../devices/device.js';
import {
  KICK_STAT_FAILED_IRQS,
  KICK_STAT_LAST_ERRNO,
  UV_READABLE,
  WATCH_PACKED,
  WATCH_SPLIT,
  type FdWatcher,
  type KickLoop,
  type SysBinding,
} from '../../sys/binding.js';
import type { Virtqueue, VirtqueueError } from '../../virtio/index.js';
import { messageOf } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import {
  interruptSlot,
  kickSlot,
  type DataPath,
  type DataPathStart,
  type QueueState,
  type QueueTransport,
  type StoppedQueues,
  type TransportMemory,
} from './data-path.js';
import { EngineError } from './errors.js';
import { POLL_EPOCH_MS, PollControl } from './poll-control.js';
import { startQueue } from './queue-start.js';
import { ServedQueue } from './served-queue.js';

/** Dropped regions allowed to wait for pinned requests before the device is halted (see the top). */
export const RETIRED_MAX = 256;

export interface QueueSetOptions {
  binding: SysBinding;
  device: VirtioDevice;
  transport: QueueTransport;
  /** The device's queue count (counters and indexes are per device queue). */
  numQueues: number;
  logger: Logger;
  /** Kicks at [i], interrupts at [numQueues + i]; default a fresh array (pass a shared one across threads). */
  counters?: Float64Array;
  /**
   * Serve kicks and interrupts through a native KickLoop (see the top). Default false (an FdWatcher per kick
   * fd, a transport.signal() per interrupt).
   */
  kickLoop?: boolean;
  /** Closes kick fds; default fs.closeSync. */
  closeFd?: (fd: number) => void;
  /**
   * The device needs a reset: a ring error, a throw in the data path, too many retired regions. Called once
   * until the next start (and not for a halt the owner asked for).
   */
  onNeedsReset(reason: Error): void;
}

interface Kick {
  index: number;
  fd: number;
  /** Null when the KickLoop watches it. */
  watcher: FdWatcher | null;
}

/**
 * The set that holds the KickLoop of a binding, i.e. of a thread (each thread loads its own binding). A KickLoop
 * waits on its own kick fds and libuv's fd only: two on one libuv loop would each block while the other's queues
 * are kicked. So one set per thread serves through a KickLoop, and any other set on that thread (`vduse serve`
 * with several inline devices) through FdWatchers, which the KickLoop's wait sees through libuv's fd.
 */
const kickLoopHolders = new WeakMap<SysBinding, QueueSet>();

export class QueueSet implements DataPath {
  readonly counters: Float64Array;
  readonly device: VirtioDevice;
  readonly #o: QueueSetOptions;
  readonly #binding: SysBinding;
  readonly #memory: TransportMemory;
  readonly #closeFd: (fd: number) => void;
  #queues: (ServedQueue | null)[] = [];
  #kicks: Kick[] = [];
  #loop: KickLoop | null = null;
  /** Per queue: the KickLoop injects its interrupts (signals[i] marks them), else transport.signal(). */
  #folded: boolean[] = [];
  /** KickLoop.stats[KICK_STAT_FAILED_IRQS] when last logged. */
  #failedIrqs = 0;
  /** Ring polling (see the top): the views the loop watches, per queue, and the epoch timer. */
  #polling = false;
  #watchViews: (Uint16Array | null)[] = [];
  readonly #pollControl = new PollControl();
  #pollTimer: NodeJS.Timeout | null = null;
  #pollCompleted = 0;
  #pollAt = 0;
  #running = false;
  #halted = false;
  #closed = false;
  #resetting: Promise<void> = Promise.resolve();

  constructor(options: QueueSetOptions) {
    this.#o = options;
    this.device = options.device;
    this.#binding = options.binding;
    this.#memory = options.transport.memory;
    this.#closeFd = options.transport.closeKick ?? options.closeFd ?? closeSync;
    this.counters = options.counters ?? new Float64Array(2 * options.numQueues);
  }

  get running(): boolean {
    return this.#running;
  }

  /** The live queues as the device sees them (null for ones not ready or not served here); empty while stopped. */
  get queues(): readonly (Virtqueue | null)[] {
    return this.#queues;
  }

  /** Chains handed to the device and not given back yet, over every live queue. */
  get inFlight(): number {
    let n = 0;
    for (const q of this.#queues) if (q !== null) n += q.inFlight;
    return n;
  }

  /**
   * Chains in flight that are work in progress: inFlight less those the device holds idle (receive buffers
   * waiting for a packet, VirtioDevice.idleChains). What a drain waits for.
   */
  get busy(): number {
    let n = 0;
    this.#queues.forEach((q, i) => {
      if (q === null) return;
      const idle = this.device.idleChains?.(i) ?? 0;
      n += Math.max(0, q.inFlight - (Number.isInteger(idle) && idle > 0 ? idle : 0));
    });
    return n;
  }

  /**
   * The polling controller is counting epochs (its 100 ms timer runs): from the start while busy; not while
   * idle (stopped after an idle epoch, started again by the next kick), nor without ring polling.
   */
  get measuringPoll(): boolean {
    return this.#pollTimer !== null;
  }

  /** Resolves when the last stop's device reset has settled (its requests done, their pins given back). */
  get settled(): Promise<void> {
    return this.#resetting;
  }

  start(start: DataPathStart): number {
    if (this.#running) this.stop(false);
    this.#halted = false;
    const { transport, numQueues } = this.#o;
    const queues = new Array<ServedQueue | null>(numQueues).fill(null);
    const onError = (error: VirtqueueError): void => this.fail(error);
    let resubmitted = 0;
    transport.begin?.(start.transportState);
    try {
      for (const setup of start.queues) {
        const i = setup.index;
        const started = startQueue(
          {
            index: i,
            size: setup.size,
            descAddr: setup.descAddr,
            driverAddr: setup.driverAddr,
            deviceAddr: setup.deviceAddr,
            eventIdx: start.eventIdx,
            indirect: start.indirect,
          },
          start.packed,
          this.#memory,
          {
            signal: () => this.#signal(i),
            onError,
            binding: this.#binding,
            queueLog: transport.inflightLog(i),
            recover: start.recover,
            state: setup.state,
          },
        );
        resubmitted += started.resubmitted;
        queues[i] = new ServedQueue(started.queue, this.#memory, onError);
        this.#kicks.push(this.#openKick(i));
      }
      if (this.#loop !== null) {
        for (const setup of start.queues) this.#foldInterrupt(this.#loop, setup.index);
        this.#loop.start();
        this.#polling = this.device.ringPolling === true;
        if (this.#polling) for (const q of queues) q?.trackIdle(this.#loop.marks);
      }
    } catch (err) {
      this.#closeKicks();
      throw err;
    }
    this.#queues = queues;
    this.#running = true;
    try {
      this.device.activate({ features: start.features, memory: this.#memory, queues });
    } catch (err) {
      this.stop(false);
      throw err;
    }
    if (this.#polling) this.#startPolling();
    // The driver may have missed completions published just before a crash: tell it to look.
    if (start.recover) {
      for (const setup of start.queues) this.#signal(setup.index);
      // Injected now, not at the loop's next turn: the driver looks at once.
      this.#loop?.flush();
    }
    return resubmitted;
  }

  stop(reset: boolean): StoppedQueues {
    this.#closeKicks();
    const states: StoppedQueues = [];
    const served: ServedQueue[] = [];
    this.#queues.forEach((q, i) => {
      if (q === null) return;
      states.push([i, q.getState()]);
      q.retire();
      served.push(q);
    });
    const wasRunning = this.#running;
    this.#queues = [];
    this.#running = false;
    this.#halted = false;
    if (wasRunning || reset) {
      const done = this.device
        .reset()
        .catch((err: unknown) => this.#o.logger.warn(`device reset: ${messageOf(err)}`))
        // The device holds no view of guest memory any more: the chains it dropped give back their pins.
        .then(() => {
          for (const q of served) q.release();
        });
      this.#resetting = Promise.all([this.#resetting, done]).then(() => undefined);
    }
    if (reset) this.#memory.invalidateAll?.();
    return states;
  }

  invalidate(start: number, last: number): boolean {
    // A ring may move: nothing counts as idle (no kick absorbed) until the next wake-up has looked again.
    if (this.#polling) this.#loop?.marks.fill(-1);
    this.#memory.invalidate?.(start, last);
    const retired = this.#memory.retiredRegions ?? 0;
    if (retired > RETIRED_MAX && this.#running) {
      this.fail(
        new EngineError(
          'ERR_ENGINE_RETIRED',
          `${retired} dropped guest-memory regions wait for requests still in the backend`,
        ),
      );
    }
    return true;
  }

  state(index: number): QueueState | null {
    const q = this.#queues[index];
    return q ? q.getState() : null;
  }

  halt(): void {
    this.#halted = true;
    if (this.#polling) {
      this.#loop?.setPoll(0);
      this.#loop?.marks.fill(-1);
    }
    for (const kick of this.#kicks) {
      if (kick.watcher !== null) kick.watcher.stop();
      else this.#loop?.removeKick(kick.index);
    }
    for (const q of this.#queues) q?.halt();
  }

  /** The device needs a reset: stop taking requests and report it (once until the next start). */
  fail(reason: Error): void {
    if (this.#halted || this.#closed) return;
    this.halt();
    this.#o.onNeedsReset(reason);
  }

  async drain(ms: number): Promise<void> {
    this.halt();
    const deadline = Date.now() + ms;
    while (this.busy > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    // completions are published on the next turn of the loop
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
  }

  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      if (this.#running) this.stop(true);
      else this.#memory.invalidateAll?.();
      this.#loop?.close();
      this.#loop = null;
      if (kickLoopHolders.get(this.#binding) === this) kickLoopHolders.delete(this.#binding);
    }
    await this.#resetting;
    await this.#memory.drained?.();
    this.#o.transport.close?.();
  }

  #openKick(index: number): Kick {
    const fd = this.#o.transport.openKick(index);
    try {
      if (this.#o.kickLoop === true && this.#holdsKickLoop()) {
        this.#kickLoop().addKick(index, fd);
        return { index, fd, watcher: null };
      }
      const watcher = this.#binding.createFdWatcher(fd, (status) => this.#onKick(index, fd, status));
      watcher.start(UV_READABLE);
      return { index, fd, watcher };
    } catch (err) {
      this.#closeFd(fd);
      throw err;
    }
  }

  /** This set serves through a KickLoop: it holds its thread's one (see kickLoopHolders), or takes it now. */
  #holdsKickLoop(): boolean {
    const holder = kickLoopHolders.get(this.#binding);
    if (holder !== undefined) return holder === this;
    if (this.#closed) return false;
    kickLoopHolders.set(this.#binding, this);
    return true;
  }

  /** The KickLoop, made at the first start (its arrays once for the life of this set). */
  #kickLoop(): KickLoop {
    const n = this.#o.numQueues;
    this.#loop ??= this.#binding.createKickLoop(
      n,
      this.counters.subarray(interruptSlot(0, n), interruptSlot(n, n)),
      () => this.#onKicks(),
      this.counters.subarray(kickSlot(0), kickSlot(n)),
    );
    return this.#loop;
  }

  /** Let the KickLoop inject queue `index`'s interrupts, when the transport says how. */
  #foldInterrupt(loop: KickLoop, index: number): void {
    const target = this.#o.transport.interruptTarget?.(index);
    if (target === undefined) return;
    loop.setInterrupt(index, target.fd, target.request);
    this.#folded[index] = true;
  }

  #closeKicks(): void {
    const loop = this.#loop;
    this.#stopPolling();
    if (loop !== null) {
      // Completions published before the stop still reach the driver (as an inline signal() would have).
      loop.flush();
      this.#reportFailedIrqs(loop);
      loop.stop();
      this.#folded.forEach((folded, i) => {
        if (folded) loop.setInterrupt(i, -1, 0);
      });
      this.#folded = [];
    }
    for (const kick of this.#kicks) {
      if (kick.watcher !== null) kick.watcher.close();
      else loop?.removeKick(kick.index);
      try {
        this.#closeFd(kick.fd);
      } catch {
        // already gone
      }
    }
    this.#kicks = [];
  }

  /** A KickLoop wake-up: serve every kicked queue (KickLoop.kicked), one callback for all of them. */
  #onKicks(): void {
    const loop = this.#loop;
    if (loop === null) return;
    const { kicked } = loop;
    if (this.#polling && this.#pollTimer === null && this.#running) this.#startEpochs();
    for (let i = 0; i < kicked.length; i++) {
      if (kicked[i] === 0) continue; // 1: kicked (counted by the loop), 2: found by a spin
      kicked[i] = 0;
      if (this.#halted || this.#queues[i] == null) continue;
      try {
        this.device.queueNotify(i);
      } catch (err) {
        this.fail(err instanceof Error ? err : new Error(String(err)));
      }
    }
    if (this.#polling) this.#markIdle(loop);
    this.#reportFailedIrqs(loop);
  }

  /** After a wake-up: where each ring is idle now, and the ring words to watch (see the top). */
  #markIdle(loop: KickLoop): void {
    const { marks } = loop;
    const queues = this.#queues;
    for (let i = 0; i < queues.length; i++) {
      const q = queues[i];
      if (q == null) continue;
      const view = this.#halted ? null : q.watchView();
      if (view !== (this.#watchViews[i] ?? null)) {
        marks[i] = -1;
        loop.watch(i, view, q.packed ? WATCH_PACKED : WATCH_SPLIT);
        this.#watchViews[i] = view;
      }
      marks[i] = view === null ? -1 : q.idleMark();
    }
  }

  #startPolling(): void {
    const loop = this.#loop!;
    this.#markIdle(loop);
    loop.setPoll(this.#pollControl.window * 1000);
    this.#startEpochs();
  }

  /** Measure epochs from now (at start, and at the first wake-up after an idle stretch). */
  #startEpochs(): void {
    this.#pollCompleted = this.#completed();
    this.#pollAt = performance.now();
    this.#pollTimer = setInterval(() => this.#pollEpoch(), POLL_EPOCH_MS);
    this.#pollTimer.unref();
  }

  #pollEpoch(): void {
    const loop = this.#loop;
    if (loop === null || !this.#running) return;
    const now = performance.now();
    const completed = this.#completed();
    const windowUs = this.#pollControl.epoch(completed - this.#pollCompleted, now - this.#pollAt);
    this.#pollCompleted = completed;
    this.#pollAt = now;
    loop.setPoll(this.#halted ? 0 : windowUs * 1000);
    if (this.#pollControl.idle) {
      // Nothing to measure until the next kick (#onKicks starts the epochs again): an idle daemon sleeps.
      clearInterval(this.#pollTimer!);
      this.#pollTimer = null;
    }
  }

  #completed(): number {
    let n = 0;
    for (const q of this.#queues) if (q != null) n += q.completed;
    return n;
  }

  #stopPolling(): void {
    if (this.#pollTimer !== null) clearInterval(this.#pollTimer);
    this.#pollTimer = null;
    const loop = this.#loop;
    if (loop !== null && this.#polling) {
      loop.setPoll(0);
      loop.marks.fill(-1);
      for (let i = 0; i < this.#watchViews.length; i++)
        if (this.#watchViews[i] != null) loop.watch(i, null, 0);
    }
    this.#watchViews = [];
    this.#polling = false;
  }

  /** Log interrupts the KickLoop could not inject since the last time (as inline signal() failures are). */
  #reportFailedIrqs(loop: KickLoop): void {
    const failed = loop.stats[KICK_STAT_FAILED_IRQS]!;
    if (failed === this.#failedIrqs) return;
    const errno = loop.stats[KICK_STAT_LAST_ERRNO]!;
    this.#o.logger.debug(`${failed - this.#failedIrqs} interrupt(s) not injected (last errno ${-errno})`);
    this.#failedIrqs = failed;
  }

  #onKick(index: number, fd: number, status: number): void {
    if (status < 0) {
      this.#o.logger.warn(`kick eventfd of queue ${index} failed (errno ${-status})`);
      return;
    }
    try {
      this.#binding.eventfdRead(fd);
    } catch (err) {
      this.#o.logger.warn(`reading the kick of queue ${index}: ${messageOf(err)}`);
    }
    this.counters[kickSlot(index)]!++;
    if (this.#halted || this.#queues[index] == null) return;
    try {
      this.device.queueNotify(index);
    } catch (err) {
      this.fail(err instanceof Error ? err : new Error(String(err)));
    }
  }

  #signal(index: number): void {
    if (this.#folded[index] === true) {
      // Injected (and counted) by the KickLoop after this callback, or before it next waits.
      this.#loop!.signals[index] = 1;
      return;
    }
    try {
      this.#o.transport.signal(index);
      this.counters[interruptSlot(index, this.#o.numQueues)]!++;
    } catch (err) {
      // EINVAL before DRIVER_OK or after a reset raced with a late completion: nothing to tell.
      this.#o.logger.debug(`interrupt for queue ${index} not injected: ${messageOf(err)}`);
    }
  }
}
