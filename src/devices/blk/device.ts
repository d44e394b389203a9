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
 */
import type { BackendResult, BlockBackend } from '../../backends/backend.js';
import { BackendError } from '../../backends/backend.js';
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

/** Lines logged per activation at most (a misbehaving driver must not flood the log). */
const LOG_LIMIT = 20;

export class VirtioBlkDevice implements VirtioDevice {
  readonly deviceId = VIRTIO_ID_BLOCK;
  readonly vendorId: number;
  readonly numQueues: number;
  readonly maxQueueSize: number;
  readonly features: bigint;
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
  readonly #complete = (request: BlkRequest, error: unknown): void => this.#onSettled(request, error);
  /** Queues with used entries not yet published, and the pending publish. */
  readonly #dirty: Virtqueue[] = [];
  #publishPending: NodeJS.Immediate | null = null;
  /** Inside #drain: completions wait for the end of the drain (one publish per batch). */
  #draining = false;
  readonly #publish = (): void => this.#publishDirty();
  #logged = 0;
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
    // Buffers made available before DRIVER_OK (or before a daemon restart) get no kick of their own.
    for (const queue of this.#queues) if (queue !== null) this.#drain(queue);
  }

  queueNotify(index: number): void {
    if (!this.#active) return;
    const queue = this.#queues[index];
    if (queue != null) this.#drain(queue);
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
      throw new RangeError(`virtio-blk: new size ${bytes} is not a non-negative multiple of ${lbs} bytes`);
    }
    const backend = this.backend;
    if (backend.resize !== undefined) await backend.resize(bytes);
    if (bytes > backend.size) {
      throw new RangeError(`virtio-blk: the backend holds ${backend.size} bytes and cannot grow to ${bytes}`);
    }
    this.#limits.capacityBytes = bytes;
    this.#config = encodeBlkConfig(this.options, bytes);
    this.#host?.configChanged();
  }

  #drain(queue: Virtqueue): void {
    this.#draining = true;
    this.#clockFresh = false;
    try {
      for (;;) {
        queue.disableNotification();
        let chain: DescriptorChain | null;
        while ((chain = queue.pop()) !== null) this.#start(queue, chain);
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
    request.startedAt = this.#now();
    let result: BackendResult;
    try {
      result = this.#submit(request);
    } catch (error) {
      this.#onSettled(request, error ?? new Error('backend failed'));
      return;
    }
    if (result === undefined) this.#onSettled(request, null);
    else result.then(request.onFulfilled, request.onRejected);
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
    this.#recordLatency(this.#now() - request.startedAt);
    if (request.generation === this.#generation) {
      let status = VIRTIO_BLK_S_OK;
      if (error !== null) {
        this.stats.backendErrors++;
        status =
          error instanceof BackendError && error.code === 'ENOTSUP'
            ? VIRTIO_BLK_S_UNSUPP
            : VIRTIO_BLK_S_IOERR;
        this.#log(`queue ${request.queue!.index}: request type ${request.type} failed: ${describe(error)}`);
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
      this.#clockValue = performance.now();
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
    if (!this.#dirty.includes(queue)) this.#dirty.push(queue);
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
    dirty.length = 0;
    this.#clockFresh = false;
  }

  #log(message: string): void {
    const logger = this.options.logger;
    if (logger === null || this.#logged >= LOG_LIMIT) return;
    this.#logged++;
    logger.warn(
      `virtio-blk: ${message}${this.#logged === LOG_LIMIT ? ' (further messages suppressed)' : ''}`,
    );
  }
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
