/**
 * VirtioBlkDevice: a virtio-blk device (virtio spec §5.2) over a BlockBackend.
 *
 * Per queue, a kick drains the available ring with notifications off, then turns them on and checks again.
 * Each request goes to the backend at once, so many are in flight per queue and complete in any order. A backend
 * call that returns nothing completed synchronously: it is answered at once, without a promise.
 * Completions are gathered and published once per batch: at the end of the drain or at once when the backend
 * has nothing else in flight, else once per event-loop turn (setImmediate), not once per request.
 * reset() stops everything at once: results of backend calls still running are dropped (each request carries
 * the activation generation it started in).
 *
 * Polling: with options.pollUs unset the engine may poll the rings (ringPolling; adaptive, in native code,
 * src/transports/engine/poll-control.ts); 0 turns all polling off. With pollUs > 0 the device polls itself: after a drain runs a queue empty, its notifications stay off and the device
 * looks at the ring again until the queue's poll window has passed with nothing new (counted from its last
 * drain or published completion), then turns notifications back on (and checks once more) and sleeps on the
 * kick. While backend requests are in flight it looks once per event-loop turn (setImmediate: each turn also
 * runs I/O completions and other queues' kicks); with nothing in flight it spins synchronously in slices of at
 * most POLL_SPIN_SLICE_MS between turns. The window adapts per queue, like QEMU's AioContext polling: a kick
 * that comes within pollUs of the queue's last work doubles it (a longer poll would have caught it), a later
 * kick halves it (down to off, from where the first kind of kick starts it again). A broken ring, or reset(),
 * stops all polling.
 *
 * Nothing the driver does makes a callback of the data path (kick, poll turn, publish turn, backend completion)
 * throw out to the event loop: a bad ring is the queue's error (the transport sets DEVICE_NEEDS_RESET), and
 * should anything else fail inside those callbacks, the device stops serving and asks for a reset itself
 * (host.needsReset with a BlkError 'ERR_BLK_DATA_PATH').
 */
import type { BackendResult, BlockBackend } from '../../backends/backend.js';
import { BackendError } from '../../backends/backend.js';
import { messageOf } from '../../common/errors.js';
import {
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_SECURE_ERASE,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from '../../uapi/virtio-blk.js';
import { VIRTIO_ID_BLOCK } from '../../uapi/virtio-config.js';
import { writeStatus } from '../../virtio/chain.js';
import type { DescriptorChain, Virtqueue } from '../../virtio/virtqueue.js';
import type { DeviceContext, DeviceHost, VirtioDevice } from '../device.js';
import { encodeBlkConfig } from './config.js';
import { BlkError, blkResizeError } from './errors.js';
import { blkFeatureProblem, negotiatedBlkFeatures, offeredBlkFeatures } from './features.js';
import { resolveBlkOptions, type ResolvedBlkOptions, type VirtioBlkOptions } from './options.js';
import { BLK_NO_STATUS, BLK_RUN, BlkRequest, parseBlkRequest, type BlkRequestLimits } from './request.js';

/** Counters since the device was created. */
export interface BlkStats {
  /** Requests given back to the driver. */
  completed: number;
  /** Of which answered IOERR / UNSUPP. */
  ioErrors: number;
  unsupported: number;
  /** Malformed requests and chains (a subset of the above, plus chains with no status byte). */
  driverErrors: number;
  /** Backend calls that failed. */
  backendErrors: number;
  bytesRead: number;
  bytesWritten: number;
}

/** Per queue counters (index = queue index); plain numbers, read by metrics at scrape time. */
export interface BlkQueueStats {
  /** Requests given back to the driver. */
  completed: number;
  bytesRead: number;
  bytesWritten: number;
  /** Answered IOERR or UNSUPP. */
  errors: number;
  /** In the backend now. */
  inFlight: number;
}

/**
 * Upper bounds (microseconds) of the request latency histogram buckets: powers of two from 16 µs to 8.4 s;
 * the last bucket of BlkLatency.buckets counts everything slower.
 */
export const BLK_LATENCY_BOUNDS_US: readonly number[] = Array.from({ length: 20 }, (_, i) => 16 * 2 ** i);

/** Latency (backend submit to completion) of the requests that went to the backend. */
export interface BlkLatency {
  /** Non-cumulative counts per bucket of BLK_LATENCY_BOUNDS_US, plus one overflow bucket. */
  buckets: number[];
  count: number;
  sumSeconds: number;
}

/** BlkRequest.startedAt of a request whose backend call has not returned a promise (see #start). */
const BLK_SETTLED_AT_ONCE = -1;
/** Lines logged per activation at most (a misbehaving driver must not flood the log). */
const LOG_LIMIT = 20;
/** Longest synchronous poll spin before the event loop gets a turn (milliseconds). */
const POLL_SPIN_SLICE_MS = 0.05;
/** Passes over the polled queues between two clock reads while spinning. */
const POLL_SPIN_CHECK_EVERY = 8;
/**
 * Most passes in one spin slice, whatever the clock says: far more than POLL_SPIN_SLICE_MS holds on a fast
 * host, it only bounds the slice when the clock stands still (a test clock, see VirtioBlkOptions.now).
 */
const POLL_SPIN_MAX_PASSES = 1 << 14;
/** The adaptive window is never below pollUs / this (below it, polling is off until it grows again). */
const POLL_MIN_FRACTION = 16;

export class VirtioBlkDevice implements VirtioDevice {
  readonly deviceId = VIRTIO_ID_BLOCK;
  readonly vendorId: number;
  readonly numQueues: number;
  readonly maxQueueSize: number;
  readonly features: bigint;
  /** The engine's adaptive ring polling, unless options.pollUs was given (0: none; N: the device's own). */
  readonly ringPolling: boolean;
  readonly backend: BlockBackend;
  readonly options: ResolvedBlkOptions;
  readonly stats: BlkStats = {
    completed: 0,
    ioErrors: 0,
    unsupported: 0,
    driverErrors: 0,
    backendErrors: 0,
    bytesRead: 0,
    bytesWritten: 0,
  };
  readonly queueStats: BlkQueueStats[];
  readonly latency: BlkLatency = {
    buckets: new Array<number>(BLK_LATENCY_BOUNDS_US.length + 1).fill(0),
    count: 0,
    sumSeconds: 0,
  };

  #host: DeviceHost | null = null;
  #config: Uint8Array;
  readonly #limits: BlkRequestLimits;
  /** Queues of the current activation (empty when not active). */
  #queues: readonly (Virtqueue | null)[] = [];
  #active = false;
  /** Bumped by reset(): a completion from an older generation is dropped. */
  #generation = 0;
  /** Requests handed to the backend and not yet settled, of any generation. */
  #inFlight = 0;
  #idleWaiters: (() => void)[] = [];
  readonly #pool: BlkRequest[] = [];
  readonly #complete = (request: BlkRequest, error: unknown): void => {
    try {
      this.#onSettled(request, error);
    } catch (e) {
      this.#fault('backend completion', e);
      this.#wakeIdle(); // the request is settled all the same: reset() must not wait for it
    }
  };
  /** Queues with used entries not yet published, and the pending publish. */
  readonly #dirty: Virtqueue[] = [];
  #publishPending: NodeJS.Immediate | null = null;
  /** Inside #drain: completions wait for the end of the drain (one publish per batch). */
  #draining = false;
  readonly #publish = (): void => {
    try {
      this.#publishDirty();
    } catch (e) {
      this.#fault('publish', e);
    }
  };
  #logged = 0;
  /** The device's clock (ms): options.now, for tests, else performance.now(). */
  readonly #clock: () => number;
  /** Polling: the longest window (µs, 0 = off); per queue index the current window (µs), the deadline
   * (#clock() ms; 0 = not polling) and when the queue last had work (ms; 0 = never). */
  readonly #pollMaxUs: number;
  #pollWindowUs: number[] = [];
  #pollUntil: number[] = [];
  #lastWork: number[] = [];
  /** Queues polling now, and the pending poll turn. */
  readonly #polling: Virtqueue[] = [];
  #pollTimer: NodeJS.Immediate | null = null;
  readonly #pollTurn = (): void => {
    try {
      this.#poll();
    } catch (e) {
      this.#fault('poll', e);
    }
  };
  /**
   * The latency clock, read once per batch: the requests a drain starts share one reading, and so do the
   * completions settled before the next publish (the histogram's buckets are powers of two; a clock read per
   * request is measurable under emulation). #clockFresh is cleared at the end of each drain and publish.
   */
  #clockValue = 0;
  #clockFresh = false;

  constructor(options: VirtioBlkOptions) {
    this.options = resolveBlkOptions(options);
    const o = this.options;
    this.backend = o.backend;
    this.vendorId = o.vendorId;
    this.numQueues = o.numQueues;
    this.maxQueueSize = o.queueSize;
    this.features = offeredBlkFeatures(o);
    this.queueStats = Array.from({ length: o.numQueues }, () => ({
      completed: 0,
      bytesRead: 0,
      bytesWritten: 0,
      errors: 0,
      inFlight: 0,
    }));
    const capacityBytes = this.backend.size;
    this.#limits = {
      capacityBytes: capacityBytes - (capacityBytes % o.logicalBlockSize),
      logicalBlockSize: o.logicalBlockSize,
      readOnly: o.readOnly,
      negotiated: negotiatedBlkFeatures(0n),
      segMax: o.segMax,
      maxDiscardSectors: o.maxDiscardSectors,
      maxDiscardSeg: o.maxDiscardSeg,
      maxWriteZeroesSectors: o.maxWriteZeroesSectors,
      maxWriteZeroesSeg: o.maxWriteZeroesSeg,
      maxSecureEraseSectors: o.maxSecureEraseSectors,
      maxSecureEraseSeg: o.maxSecureEraseSeg,
      writeZeroesMayUnmap: o.writeZeroesMayUnmap,
      serial: o.serial,
    };
    this.#config = encodeBlkConfig(o, this.#limits.capacityBytes);
    this.#pollMaxUs = o.pollUs;
    this.ringPolling = options.pollUs === undefined;
    this.#clock = options.now ?? performanceNow;
  }

  /** Bytes the driver sees (capacity × 512), a multiple of the logical block size. */
  get capacityBytes(): number {
    return this.#limits.capacityBytes;
  }

  get readOnly(): boolean {
    return this.#limits.readOnly;
  }

  /** Requests in the backend now (including ones of a reset activation still finishing). */
  get inFlight(): number {
    return this.#inFlight;
  }

  config(): Uint8Array {
    return this.#config;
  }

  bind(host: DeviceHost): void {
    this.#host = host;
  }

  negotiate(features: bigint): boolean {
    const problem = blkFeatureProblem(this.features, features);
    if (problem !== null) {
      this.#log(`features refused: ${problem}`);
      return false;
    }
    this.#limits.negotiated = negotiatedBlkFeatures(features);
    return true;
  }

  activate(context: DeviceContext): void {
    this.#limits.negotiated = negotiatedBlkFeatures(context.features);
    this.#queues = context.queues;
    this.#active = true;
    this.#logged = 0;
    const n = this.#queues.length;
    this.#pollWindowUs = new Array<number>(n).fill(this.#pollMaxUs);
    this.#pollUntil = new Array<number>(n).fill(0);
    this.#lastWork = new Array<number>(n).fill(0);
    // Buffers made available before DRIVER_OK (or before a daemon restart) get no kick of their own.
    try {
      for (const queue of this.#queues) if (queue !== null && this.#active) this.#drain(queue, null);
    } catch (e) {
      this.#fault('activation', e);
    }
  }

  queueNotify(index: number): void {
    if (!this.#active) return;
    const queue = this.#queues[index];
    if (queue == null) return;
    try {
      if (this.#pollMaxUs > 0 && this.#pollUntil[index] === 0) this.#adaptPollWindow(index);
      this.#drain(queue, null);
    } catch (e) {
      this.#fault(`kick of queue ${index}`, e);
    }
  }

  /** Is queue `index` being polled now (its notifications off)? */
  isPolling(index: number): boolean {
    return (this.#pollUntil[index] ?? 0) !== 0;
  }

  /** The current adaptive poll window of queue `index`, in microseconds (0 when polling is off). */
  pollWindowUs(index: number): number {
    return this.#pollWindowUs[index] ?? 0;
  }

  reset(): Promise<void> {
    this.#active = false;
    this.#generation++;
    this.#queues = [];
    this.#dirty.length = 0;
    if (this.#publishPending !== null) {
      clearImmediate(this.#publishPending);
      this.#publishPending = null;
    }
    this.#stopPolling();
    if (this.#inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  /**
   * Online resize to `bytes` (a multiple of the logical block size): the backend is resized when it can be
   * (else it must already hold `bytes`), then the driver is told the new capacity (config change).
   */
  async resize(bytes: number): Promise<void> {
    const lbs = this.options.logicalBlockSize;
    if (!Number.isSafeInteger(bytes) || bytes < 0 || bytes % lbs !== 0) {
      throw blkResizeError(`new size ${bytes} is not a non-negative multiple of ${lbs} bytes`);
    }
    const backend = this.backend;
    if (backend.resize !== undefined) await backend.resize(bytes);
    if (bytes > backend.size) {
      throw blkResizeError(`the backend holds ${backend.size} bytes and cannot grow to ${bytes}`);
    }
    this.#limits.capacityBytes = bytes;
    this.#config = encodeBlkConfig(this.options, bytes);
    this.#host?.configChanged();
  }

  /** Serve every available chain of `queue` (`first`: one already popped), then poll or re-arm the kick. */
  #drain(queue: Virtqueue, first: DescriptorChain | null): void {
    const poll = this.#pollMaxUs > 0 && this.#pollWindowUs[queue.index]! > 0;
    this.#draining = true;
    this.#clockFresh = false;
    try {
      if (first !== null) this.#start(queue, first);
      for (;;) {
        queue.disableNotification();
        let chain: DescriptorChain | null;
        while ((chain = queue.pop()) !== null) this.#start(queue, chain);
        // Polling: notifications stay off; #poll looks again and re-arms the kick when the window has passed.
        if (poll && queue.error === null) break;
        if (!queue.enableNotification()) break;
      }
    } finally {
      this.#draining = false;
      this.#clockFresh = false;
    }
    // Requests answered during the drain (synchronously, or without the backend): one publish for them all,
    // now when nothing is in flight, else with the completions of this event-loop turn.
    if (this.#dirty.length > 0) {
      if (this.#inFlight === 0) this.#publishDirty();
      else this.#publishPending ??= setImmediate(this.#publish);
    }
    if (this.#pollMaxUs > 0) {
      if (poll && queue.error === null && this.#active) this.#startPolling(queue);
      else this.#lastWork[queue.index] = this.#clock();
    }
  }

  /** The queue just had work: poll it for its window from now. */
  #startPolling(queue: Virtqueue): void {
    const index = queue.index;
    const now = this.#clock();
    this.#lastWork[index] = now;
    if (this.#pollUntil[index] === 0) this.#polling.push(queue);
    this.#pollUntil[index] = now + this.#pollWindowUs[index]! / 1000;
    this.#pollTimer ??= setImmediate(this.#pollTurn);
  }

  /** Forget every poll (notifications are left as they are: off until the driver resets the device). */
  #stopPolling(): void {
    this.#polling.length = 0;
    this.#pollUntil.fill(0);
    if (this.#pollTimer !== null) {
      clearImmediate(this.#pollTimer);
      this.#pollTimer = null;
    }
  }

  /** A kick on a queue that was not polling: adapt its window to how long after its last work it came. */
  #adaptPollWindow(index: number): void {
    const last = this.#lastWork[index]!;
    if (last === 0) return;
    const max = this.#pollMaxUs;
    const idleUs = (this.#clock() - last) * 1000;
    const window = this.#pollWindowUs[index]!;
    if (idleUs <= max) {
      // A longer poll would have caught this request without the kick.
      this.#pollWindowUs[index] = window === 0 ? max / POLL_MIN_FRACTION : Math.min(max, window * 2);
    } else if (window > 0) {
      const half = window / 2;
      this.#pollWindowUs[index] = half < max / POLL_MIN_FRACTION ? 0 : half;
    }
  }

  /**
   * One poll turn: look at every polled queue; serve what arrived (which restarts its window); re-arm the kick
   * of a queue whose window has passed. With nothing in the backend, spin for a slice before yielding.
   */
  #poll(): void {
    this.#pollTimer = null;
    const polling = this.#polling;
    if (!this.#active || polling.length === 0) return;
    // A broken ring makes the transport stop the data path (needs reset) and stop watching kicks: stop polling
    // every queue too, not just the broken one, until the driver resets the device.
    const queues = this.#queues;
    for (let i = 0; i < queues.length; i++) {
      if (queues[i]?.error != null) {
        this.#stopPolling();
        return;
      }
    }
    const clock = this.#clock;
    let now = clock();
    const sliceEnd = now + POLL_SPIN_SLICE_MS;
    for (let pass = 1; ; pass++) {
      for (let i = 0; i < polling.length;) {
        const queue = polling[i]!;
        const index = queue.index;
        if (queue.error !== null || now >= this.#pollUntil[index]!) {
          // Done polling this queue: kicks again (and one more look, as after any drain).
          polling.splice(i, 1);
          this.#pollUntil[index] = 0;
          if (queue.enableNotification()) this.#drain(queue, null);
          continue;
        }
        const chain = queue.pop();
        if (chain !== null) this.#drain(queue, chain);
        if (!this.#active) return;
        i++;
      }
      if (polling.length === 0) return;
      // Requests in the backend: let the event loop deliver their completions between looks.
      if (this.#inFlight !== 0) break;
      if (pass % POLL_SPIN_CHECK_EVERY === 0) {
        now = clock();
        if (now >= sliceEnd || pass >= POLL_SPIN_MAX_PASSES) break;
      }
    }
    this.#pollTimer ??= setImmediate(this.#pollTurn);
  }

  #start(queue: Virtqueue, chain: DescriptorChain): void {
    const request = this.#pool.pop() ?? new BlkRequest(this.#complete);
    request.queue = queue;
    request.generation = this.#generation;
    const verdict = parseBlkRequest(request, chain, this.#limits);
    if (verdict !== BLK_RUN) {
      if (request.problem !== null) {
        this.stats.driverErrors++;
        this.#log(`queue ${queue.index}: ${request.problem}`);
      }
      if (verdict === BLK_NO_STATUS) {
        // Nowhere to write a status: give the buffer back untouched.
        queue.addUsed(chain, 0);
        this.#markDirty(queue);
        this.#release(request);
      } else {
        this.#finish(queue, request, verdict);
      }
      return;
    }
    this.#inFlight++;
    this.queueStats[queue.index]!.inFlight++;
    // A backend call that answers (or throws) before returning settles within this drain, whose requests all
    // start at one clock reading: its latency is 0 without reading the clock (BLK_SETTLED_AT_ONCE).
    request.startedAt = BLK_SETTLED_AT_ONCE;
    let result: BackendResult;
    try {
      result = this.#submit(request);
    } catch (error) {
      this.#onSettled(
        request,
        error ?? new BlkError('ERR_BLK_BACKEND', 'the backend failed without saying why'),
      );
      return;
    }
    if (result === undefined) this.#onSettled(request, null);
    else {
      request.startedAt = this.#now();
      result.then(request.onFulfilled, request.onRejected);
    }
  }

  #submit(request: BlkRequest): BackendResult {
    const backend = this.backend;
    switch (request.type) {
      case VIRTIO_BLK_T_IN:
        return backend.read(request.offset, request.data);
      case VIRTIO_BLK_T_OUT:
        return backend.write(request.offset, request.data);
      case VIRTIO_BLK_T_FLUSH:
        return backend.flush();
      default:
        return this.#runRanges(request);
    }
  }

  /** Discard / write-zeroes / secure-erase ranges, one after the other. */
  async #runRanges(request: BlkRequest): Promise<void> {
    const backend = this.backend;
    const type = request.type;
    for (const range of request.ranges) {
      if (range.length === 0) continue;
      if (type === VIRTIO_BLK_T_DISCARD) await backend.discard(range.offset, range.length);
      else if (type === VIRTIO_BLK_T_WRITE_ZEROES) {
        await backend.writeZeroes(range.offset, range.length, { unmap: range.unmap });
      } else if (type === VIRTIO_BLK_T_SECURE_ERASE && backend.secureErase !== undefined) {
        await backend.secureErase(range.offset, range.length);
      }
      // A reset meanwhile: do not start the next range.
      if (request.generation !== this.#generation) return;
    }
  }

  #onSettled(request: BlkRequest, error: unknown): void {
    this.#inFlight--;
    const qs = this.queueStats[request.queue!.index]!;
    qs.inFlight--;
    const startedAt = request.startedAt;
    this.#recordLatency(startedAt === BLK_SETTLED_AT_ONCE ? 0 : this.#now() - startedAt);
    if (request.generation === this.#generation) {
      let status = VIRTIO_BLK_S_OK;
      if (error !== null) {
        this.stats.backendErrors++;
        status =
          error instanceof BackendError && error.code === 'ERR_BACKEND_UNSUPPORTED'
            ? VIRTIO_BLK_S_UNSUPP
            : VIRTIO_BLK_S_IOERR;
        this.#log(`queue ${request.queue!.index}: request type ${request.type} failed: ${messageOf(error)}`);
      } else if (request.type === VIRTIO_BLK_T_IN) {
        this.stats.bytesRead += request.length;
        qs.bytesRead += request.length;
      } else if (request.type === VIRTIO_BLK_T_OUT) {
        this.stats.bytesWritten += request.length;
        qs.bytesWritten += request.length;
      }
      this.#finish(request.queue!, request, status);
    } else {
      this.#release(request);
      this.#clockFresh = false;
    }
    this.#wakeIdle();
  }

  /** Resolve reset()'s promises once nothing is left in the backend. */
  #wakeIdle(): void {
    if (this.#inFlight === 0 && this.#idleWaiters.length > 0) {
      const waiters = this.#idleWaiters;
      this.#idleWaiters = [];
      for (const resolve of waiters) resolve();
    }
  }

  /** Write the status, give the chain back and schedule a publish. */
  #finish(queue: Virtqueue, request: BlkRequest, status: number): void {
    const chain = request.chain!;
    writeStatus(chain, status);
    queue.addUsed(chain, status === VIRTIO_BLK_S_OK ? request.usedOnSuccess : 1);
    this.stats.completed++;
    const qs = this.queueStats[queue.index];
    if (qs !== undefined) {
      qs.completed++;
      if (status !== VIRTIO_BLK_S_OK) qs.errors++;
    }
    if (status === VIRTIO_BLK_S_IOERR) this.stats.ioErrors++;
    else if (status === VIRTIO_BLK_S_UNSUPP) this.stats.unsupported++;
    this.#markDirty(queue);
    this.#release(request);
  }

  #now(): number {
    if (!this.#clockFresh) {
      this.#clockValue = this.#clock();
      this.#clockFresh = true;
    }
    return this.#clockValue;
  }

  #recordLatency(ms: number): void {
    const lat = this.latency;
    const us = ms * 1000;
    // bucket i holds (16·2^(i-1), 16·2^i] µs
    const i = us <= 16 ? 0 : 32 - Math.clz32(Math.ceil(us / 16) - 1);
    lat.buckets[i < lat.buckets.length ? i : lat.buckets.length - 1]!++;
    lat.count++;
    lat.sumSeconds += ms / 1000;
  }

  #release(request: BlkRequest): void {
    request.clear();
    this.#pool.push(request);
  }

  #markDirty(queue: Virtqueue): void {
    const dirty = this.#dirty;
    // Most completions are for the queue marked last: skip the search then.
    if (dirty.length === 0 || (dirty[dirty.length - 1] !== queue && !dirty.includes(queue)))
      dirty.push(queue);
    // Inside a drain: the end of the drain publishes (or schedules the publish).
    if (this.#draining) return;
    // Nothing left in the backend and not inside a drain: no completion can join this batch any more, so
    // publish now instead of one event-loop turn later (saves a loop iteration, i.e. an epoll_wait, per batch).
    if (this.#inFlight === 0) this.#publishDirty();
    else this.#publishPending ??= setImmediate(this.#publish);
  }

  #publishDirty(): void {
    if (this.#publishPending !== null) {
      clearImmediate(this.#publishPending);
      this.#publishPending = null;
    }
    const dirty = this.#dirty;
    for (let i = 0; i < dirty.length; i++) dirty[i]!.publish();
    if (this.#pollMaxUs > 0) {
      // The driver sees completions now and may answer them with new requests: count the window from here.
      const now = this.#now();
      for (let i = 0; i < dirty.length; i++) {
        const index = dirty[i]!.index;
        this.#lastWork[index] = now;
        if (this.#pollUntil[index] !== 0) this.#pollUntil[index] = now + this.#pollWindowUs[index]! / 1000;
      }
    }
    // pop() rather than `length = 0`, a runtime call (once per publish, i.e. per request at queue depth 1).
    while (dirty.length !== 0) dirty.pop();
    this.#clockFresh = false;
  }

  /**
   * A callback of the data path threw: not the driver's doing (a bad ring is the queue's error, a bad request a
   * status), so a bug or a misbehaving backend or queue. Stop serving this activation (its state is not to be
   * trusted), and ask the transport for DEVICE_NEEDS_RESET; the driver's reset starts afresh. Never throws.
   */
  #fault(where: string, error: unknown): void {
    const first = this.#active;
    this.#active = false;
    this.#draining = false;
    this.#stopPolling();
    if (!first) return;
    const reason = new BlkError('ERR_BLK_DATA_PATH', `virtio-blk: ${where} failed: ${messageOf(error)}`, {
      cause: error,
    });
    this.#log(reason.message);
    try {
      this.#host?.needsReset(reason);
    } catch {
      // The transport could not take it: nothing more to do from inside an event-loop callback.
    }
  }

  #log(message: string): void {
    const logger = this.options.logger;
    if (logger === null || this.#logged >= LOG_LIMIT) return;
    this.#logged++;
    try {
      logger.warn(
        `virtio-blk: ${message}${this.#logged === LOG_LIMIT ? ' (further messages suppressed)' : ''}`,
      );
    } catch {
      // A logger that fails must not fail the request being logged.
    }
  }
}

function performanceNow(): number {
  return performance.now();
}
