/**
 * Warm-up of the virtio-blk hot path before a daemon serves (issue #16, item 4).
 *
 * V8 compiles the request path (ring engine pop/addUsed/publish, chain walking, the blk device's parse and
 * completion, the counting backend) with its optimizing compiler only after many calls; a freshly started
 * daemon would run its first seconds in the interpreter and baseline code. So before a thread serves queues it
 * runs a few thousand requests through throwaway objects of the same classes: a VirtioBlkDevice over a
 * CountingBackend(ResizableNull(NullBackend)), on rings in heap memory (HeapMemory) with a state log in the
 * heap, driven by the small driver below (split, and packed when the device offers it; indirect and direct
 * chains; 4K reads and writes at queue depth 1 and 32, 128K reads). Every fourth round the backend answers
 * one event-loop turn later, through promises, as backends that complete from an fd watcher or the thread pool
 * do (rbd, nbd, file): the device's promise path (then, its settle callbacks, the batched publish) is compiled
 * too, not only the synchronous one of null and memory. Nothing of it touches the real device, its backend,
 * stats or files: every object is created here and dropped at the end.
 *
 * The warm-up is bounded in time (WARMUP_BUDGET_MS by default) and in requests; VDUSE_WARMUP=0 in the
 * environment turns it off (to measure a cold daemon).
 *
 * It has its own driver instead of src/testing's MockDriver because mgmt may not import testing (see
 * scripts/layers.mjs); this one only does what the warm-up needs.
 */
import type { BackendCapabilities, BackendResult, BlockBackend } from '../../backends/backend.js';
import { CountingBackend } from '../../backends/counting-backend.js';
import { NullBackend } from '../../backends/null-backend.js';
import { ResizableNull } from '../../backends/resizable-null.js';
import { nullLogger } from '../../common/logger.js';
import { VirtioBlkDevice } from '../../devices/blk/device.js';
import { HeapMemory } from '../../memory/heap-memory.js';
import { heapQueueLog } from '../../transports/vduse/recovery/state-log.js';
import {
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_F_FLUSH,
} from '../../uapi/virtio-blk.js';
import { VIRTIO_F_RING_PACKED, bit } from '../../uapi/virtio-config.js';
import {
  VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE,
  VRING_DESC_SIZE,
  VRING_PACKED_EVENT_FLAG_DESC,
  VRING_PACKED_EVENT_FLAG_DISABLE,
  VRING_PACKED_EVENT_F_WRAP_CTR,
  VRING_USED_F_NO_NOTIFY,
  vringNeedEvent,
} from '../../uapi/virtio-ring.js';
import { createVirtqueue } from '../../virtio/create-virtqueue.js';
import type { Virtqueue, VirtqueueConfig } from '../../virtio/virtqueue.js';

/** What the warm-up takes from a device's options (those of BlkThreadOptions). */
export interface WarmupDeviceOptions {
  name: string;
  queueSize: number;
  logicalBlockSize: number;
  packed: boolean;
  readOnly: boolean;
}

/** Default time bound of one warm-up (ms, wall clock, both ring formats together). */
export const WARMUP_BUDGET_MS = 1000;
/** Default request bound of one ring format's warm-up. */
export const WARMUP_REQUESTS = 8000;

const VIRTIO_RING_F_INDIRECT_DESC = 28;
const VIRTIO_RING_F_EVENT_IDX = 29;
const F_AVAIL = 1 << 7;
const F_USED = 1 << 15;
const PAGE = 4096;
/** Largest request: header, 32 pages (128K), status. */
const MAX_SEGS = 32;
/** Descriptors a slot owns in a split ring for direct chains (header, data, status). */
const DIRECT_DESCS = 4;
const BASE = 0x100000;

export interface WarmupOptions {
  /** Time bound in ms (default WARMUP_BUDGET_MS). */
  budgetMs?: number;
  /** Requests per ring format at most (default WARMUP_REQUESTS). */
  requests?: number;
  /** Clock in ms (default performance.now). */
  now?: () => number;
  /**
   * Stop early when this says so (checked between batches; the callers stop at the real device's first
   * request). Most rounds complete synchronously and run as one stretch of microtasks; the event loop turns
   * only in the deferred rounds (one in four), so the caller's next I/O (opening the backend, creating the
   * device) goes on meanwhile but the warm-up is not paused for it. That is on purpose: a variant that yielded
   * to the event loop between all batches and paused while the real device was busy delayed the device's
   * readiness by 1.5-2 s under single-threaded TCG (every set-up step waited for a batch) and made the first
   * 10 s no faster (docs/performance.md).
   */
  stop?: () => boolean;
}

export interface WarmupResult {
  /** Requests completed, per ring format run. */
  requests: { split: number; packed: number };
  /** Of which completed through promises (the deferred rounds), both formats together. */
  deferred: number;
  /** Wall time spent (ms). */
  ms: number;
  /** Errors the throwaway device or rings reported (0 when the warm-up went as planned). */
  errors: number;
}

/** Is the warm-up turned off (VDUSE_WARMUP=0)? */
export function warmupDisabled(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.VDUSE_WARMUP === '0';
}

/**
 * Run the warm-up for a device of these options (ring size, logical block size, packed): a throwaway device
 * and backend, never the real ones. Resolves when done; never throws (a failure only means a colder start).
 */
export async function warmUpBlk(
  config: Omit<WarmupDeviceOptions, 'name'>,
  options: WarmupOptions = {},
): Promise<WarmupResult> {
  const now = options.now ?? (() => performance.now());
  const start = now();
  const budget = options.budgetMs ?? WARMUP_BUDGET_MS;
  const maxRequests = options.requests ?? WARMUP_REQUESTS;
  const result: WarmupResult = { requests: { split: 0, packed: 0 }, deferred: 0, ms: 0, errors: 0 };
  const size = Math.min(config.queueSize, 256);
  if (size < 8 || budget <= 0 || maxRequests <= 0) return result;
  const formats: ('split' | 'packed')[] = config.packed ? ['split', 'packed'] : ['split'];
  for (let i = 0; i < formats.length; i++) {
    const format = formats[i]!;
    if (options.stop?.() === true) break;
    // Each format gets an equal share of what is left of the budget.
    const deadline = now() + (budget - (now() - start)) / (formats.length - i);
    try {
      const run = await warmOneFormat(config, size, format === 'packed', maxRequests, deadline, now, options);
      result.requests[format] = run.requests;
      result.deferred += run.deferred;
      result.errors += run.errors;
    } catch {
      result.errors++;
    }
  }
  result.ms = now() - start;
  return result;
}

async function warmOneFormat(
  config: Omit<WarmupDeviceOptions, 'name' | 'packed'>,
  size: number,
  packed: boolean,
  maxRequests: number,
  deadline: number,
  now: () => number,
  options: WarmupOptions,
): Promise<{ requests: number; deferred: number; errors: number }> {
  const capacity = 64 * 1024 * 1024;
  const inner = new WarmBackend(new ResizableNull(new NullBackend({ size: capacity })));
  const backend = new CountingBackend(inner);
  const device = new VirtioBlkDevice({
    backend,
    name: 'warmup',
    numQueues: 1,
    queueSize: config.queueSize,
    logicalBlockSize: config.logicalBlockSize,
    packed,
    logger: nullLogger,
  });
  let errors = 0;
  device.bind({ configChanged: () => undefined, needsReset: () => void errors++ });
  let features = device.features;
  if (!packed) features &= ~bit(VIRTIO_F_RING_PACKED);
  if (!device.negotiate(features)) return { requests: 0, deferred: 0, errors: 1 };
  const driver = new WarmDriver(size, packed, features);
  const log = heapQueueLog('warmup', device.maxQueueSize, features);
  const queue: Virtqueue = createVirtqueue(driver.config, packed, driver.memory, {
    signal: () => void driver.signals++,
    onError: () => void errors++,
    inflight: log,
  });
  device.activate({ features, memory: driver.memory, queues: [queue] });
  const canFlush = (features & bit(VIRTIO_BLK_F_FLUSH)) !== 0n;
  const writes = !config.readOnly;
  const depth = Math.min(32, driver.slots);
  let done = 0;
  let deferred = 0;
  let round = 0;
  try {
    const stop = options.stop ?? (() => false);
    while (done < maxRequests && now() < deadline && errors === 0 && !stop()) {
      // A round: one batch at queue depth `depth`, then a few requests one at a time; every fourth round's
      // requests complete one event-loop turn later.
      inner.deferred = (round & 3) === 3;
      const before = done;
      for (let k = 0; k < depth; k++) {
        const write = writes && (k & 3) === 1;
        driver.add(
          write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN,
          (round * depth + k) & 0x3fff,
          1,
          (k & 7) !== 7,
        );
      }
      if (driver.kick()) device.queueNotify(0);
      done += await driver.reap(depth, deadline + 1000, now);
      const single: [number, number][] = [
        [VIRTIO_BLK_T_IN, 1],
        [writes ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN, 1],
        [VIRTIO_BLK_T_IN, MAX_SEGS],
      ];
      if (canFlush && writes && (round & 7) === 0) single.push([VIRTIO_BLK_T_FLUSH, 0]);
      for (const [type, pages] of single) {
        driver.add(type, round & 0x3fff, pages, true);
        if (driver.kick()) device.queueNotify(0);
        done += await driver.reap(1, deadline + 1000, now);
      }
      if (inner.deferred) deferred += done - before;
      round++;
    }
  } finally {
    await device.reset();
  }
  if (driver.lost > 0) errors++;
  return { requests: done, deferred, errors };
}

/**
 * The warm-up's backend: a null backend that answers at once or, while `deferred` is set, with a promise
 * settled one event-loop turn later (all of a turn's requests from one callback, as an fd watcher reaping
 * completions settles them).
 */
class WarmBackend implements BlockBackend {
  deferred = false;
  readonly #pending: (() => void)[] = [];
  #scheduled = false;
  readonly #settle = (): void => {
    this.#scheduled = false;
    const pending = this.#pending;
    for (let i = 0; i < pending.length; i++) pending[i]!();
    pending.length = 0;
  };

  constructor(readonly inner: ResizableNull) {}

  get size(): number {
    return this.inner.size;
  }

  get readOnly(): boolean {
    return this.inner.readOnly;
  }

  get capabilities(): BackendCapabilities {
    return this.inner.capabilities;
  }

  read(offset: number, buffers: readonly Uint8Array[]): BackendResult {
    return this.#answer(this.inner.read(offset, buffers));
  }

  write(offset: number, buffers: readonly Uint8Array[]): BackendResult {
    return this.#answer(this.inner.write(offset, buffers));
  }

  flush(): BackendResult {
    return this.#answer(this.inner.flush());
  }

  discard(offset: number, length: number): BackendResult {
    return this.#answer(this.inner.discard(offset, length));
  }

  writeZeroes(offset: number, length: number): BackendResult {
    return this.#answer(this.inner.writeZeroes(offset, length));
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  #answer(result: BackendResult): BackendResult {
    if (!this.deferred) return result;
    return new Promise<void>((resolve) => {
      this.#pending.push(resolve);
      if (!this.#scheduled) {
        this.#scheduled = true;
        setImmediate(this.#settle);
      }
    });
  }
}

/**
 * The driver side of one ring in heap memory: slots of fixed buffers (a header and an indirect table per slot;
 * one shared data area and status byte area), chains added in ring order, used entries read back.
 */
class WarmDriver {
  readonly memory: HeapMemory;
  readonly config: VirtqueueConfig;
  readonly slots: number;
  signals = 0;
  /** Used entries with an id the driver did not have in flight (never expected). */
  lost = 0;
  readonly #packed: boolean;
  readonly #size: number;
  readonly #eventIdx: boolean;
  readonly #indirect: boolean;
  readonly #dv: DataView;
  readonly #free: number[] = [];
  /** Per slot: ring entries its chain took (packed), or 0 when not in flight. */
  readonly #taken: Uint8Array;
  readonly #headers: number;
  readonly #tables: number;
  readonly #data: number;
  readonly #status: number;
  #availIdx = 0;
  #availWrap = 1;
  #usedIdx = 0;
  #usedWrap = 1;
  #added = 0;

  constructor(size: number, packed: boolean, features: bigint) {
    this.#packed = packed;
    this.#size = size;
    this.#eventIdx = (features & bit(VIRTIO_RING_F_EVENT_IDX)) !== 0n;
    this.#indirect = (features & bit(VIRTIO_RING_F_INDIRECT_DESC)) !== 0n;
    this.slots = Math.floor(size / DIRECT_DESCS);
    const ringBytes = align(size * VRING_DESC_SIZE, PAGE);
    const desc = BASE;
    const driverArea = desc + ringBytes;
    const deviceArea = driverArea + PAGE + align(size * 2, PAGE);
    this.#headers = deviceArea + PAGE + align(size * 8, PAGE);
    this.#tables = this.#headers + align(this.slots * 16, PAGE);
    const tableBytes = (MAX_SEGS + 2) * VRING_DESC_SIZE;
    this.#data = this.#tables + align(this.slots * tableBytes, PAGE);
    this.#status = this.#data + MAX_SEGS * PAGE;
    const total = this.#status + align(this.slots, PAGE) - BASE;
    this.memory = new HeapMemory([{ addr: BASE, size: total }]);
    const all = this.memory.hostView(BASE, total);
    this.#dv = new DataView(all.buffer, all.byteOffset, all.byteLength);
    this.config = {
      index: 0,
      size,
      descAddr: desc,
      driverAddr: driverArea,
      deviceAddr: deviceArea,
      eventIdx: this.#eventIdx,
      indirect: this.#indirect,
    };
    this.#taken = new Uint8Array(this.slots);
    for (let s = this.slots - 1; s >= 0; s--) this.#free.push(s);
  }

  /** Add a request (type, sector, pages of data: 0 for none) as one chain; indirect when negotiated and asked. */
  add(type: number, sector: number, pages: number, indirect: boolean): void {
    const slot = this.#free.pop();
    if (slot === undefined) throw new RangeError('warm-up ring full');
    const header = this.#headers + slot * 16;
    this.#u32(header, type);
    this.#u32(header + 4, 0);
    this.#u32(header + 8, sector);
    this.#u32(header + 12, 0);
    const dataFlags = type === VIRTIO_BLK_T_IN ? VRING_DESC_F_WRITE : 0;
    // The chain as [addr, len, flags] triples: header, data pages, status.
    const chain: number[] = [header, 16, 0];
    for (let p = 0; p < pages; p++) chain.push(this.#data + p * PAGE, PAGE, dataFlags);
    chain.push(this.#status + slot, 1, VRING_DESC_F_WRITE);
    const n = chain.length / 3;
    const useIndirect = this.#indirect && (indirect || n > DIRECT_DESCS);
    if (!useIndirect && n > DIRECT_DESCS) throw new RangeError('warm-up chain too long without indirect');
    if (useIndirect) {
      const table = this.#tables + slot * (MAX_SEGS + 2) * VRING_DESC_SIZE;
      for (let i = 0; i < n; i++) {
        const at = table + i * VRING_DESC_SIZE;
        const last = i === n - 1;
        this.#desc(at, chain[3 * i]!, chain[3 * i + 1]!);
        if (this.#packed) {
          this.#dv.setUint16(at - BASE + 12, 0, true);
          this.#dv.setUint16(at - BASE + 14, chain[3 * i + 2]!, true);
        } else {
          this.#dv.setUint16(at - BASE + 12, chain[3 * i + 2]! | (last ? 0 : VRING_DESC_F_NEXT), true);
          this.#dv.setUint16(at - BASE + 14, last ? 0 : i + 1, true);
        }
      }
      this.#post(slot, [table, n * VRING_DESC_SIZE, VRING_DESC_F_INDIRECT]);
    } else {
      this.#post(slot, chain);
    }
  }

  /** Publish what was added; true when a driver would notify the device (its event suppression says so). */
  kick(): boolean {
    const added = this.#added;
    this.#added = 0;
    if (this.#packed) {
      const ev = this.config.deviceAddr - BASE;
      const flags = this.#dv.getUint16(ev + 2, true) & 3;
      if (flags === VRING_PACKED_EVENT_FLAG_DISABLE) return false;
      if (flags === VRING_PACKED_EVENT_FLAG_DESC && this.#eventIdx) {
        const offWrap = this.#dv.getUint16(ev, true);
        let event = offWrap & 0x7fff;
        if (offWrap >>> VRING_PACKED_EVENT_F_WRAP_CTR !== this.#availWrap) event -= this.#size;
        return vringNeedEvent(event, this.#availIdx, this.#availIdx - added);
      }
      return true;
    }
    const used = this.config.deviceAddr - BASE;
    this.#dv.setUint16(this.config.driverAddr - BASE + 2, this.#availIdx & 0xffff, true);
    if (this.#eventIdx) {
      const availEvent = this.#dv.getUint16(used + 4 + 8 * this.#size, true);
      return vringNeedEvent(availEvent, this.#availIdx & 0xffff, (this.#availIdx - added) & 0xffff);
    }
    return (this.#dv.getUint16(used, true) & VRING_USED_F_NO_NOTIFY) === 0;
  }

  /** Wait (on the event loop, where the device publishes) until `count` chains came back; returns how many did. */
  async reap(count: number, deadline: number, now: () => number): Promise<number> {
    let got = 0;
    for (;;) {
      got += this.#readUsed();
      if (got >= count || now() > deadline) return got;
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
  }

  #readUsed(): number {
    let n = 0;
    if (this.#packed) {
      for (;;) {
        const at = this.config.descAddr - BASE + (this.#usedIdx % this.#size) * VRING_DESC_SIZE;
        const flags = this.#dv.getUint16(at + 14, true);
        const wrap = this.#usedWrap === 1;
        if (((flags & F_AVAIL) !== 0) !== wrap || ((flags & F_USED) !== 0) !== wrap) break;
        const slot = this.#dv.getUint16(at + 12, true);
        const taken = slot < this.slots ? this.#taken[slot]! : 0;
        if (taken === 0) {
          this.lost++;
          break;
        }
        this.#taken[slot] = 0;
        this.#free.push(slot);
        this.#usedIdx += taken;
        if (this.#usedIdx >= this.#size) {
          this.#usedIdx -= this.#size;
          this.#usedWrap ^= 1;
        }
        n++;
      }
      return n;
    }
    const used = this.config.deviceAddr - BASE;
    const idx = this.#dv.getUint16(used + 2, true);
    while ((this.#usedIdx & 0xffff) !== idx) {
      const e = used + 4 + 8 * (this.#usedIdx & (this.#size - 1));
      const id = this.#dv.getUint32(e, true);
      const slot = id / DIRECT_DESCS;
      if (id % DIRECT_DESCS !== 0 || slot >= this.slots || this.#taken[slot] === 0) {
        this.lost++;
        break;
      }
      this.#taken[slot] = 0;
      this.#free.push(slot);
      this.#usedIdx++;
      n++;
    }
    // Re-arm used notifications like Linux (used_event = the next used index).
    if (this.#eventIdx)
      this.#dv.setUint16(this.config.driverAddr - BASE + 4 + 2 * this.#size, this.#usedIdx & 0xffff, true);
    return n;
  }

  /** Put a chain ([addr, len, flags] triples) in the ring for `slot`. */
  #post(slot: number, chain: number[]): void {
    const n = chain.length / 3;
    if (this.#packed) {
      const ring = this.config.descAddr - BASE;
      let headFlags = 0;
      let headAt = 0;
      for (let i = 0; i < n; i++) {
        const at = ring + (this.#availIdx % this.#size) * VRING_DESC_SIZE;
        const flags =
          chain[3 * i + 2]! |
          (i < n - 1 ? VRING_DESC_F_NEXT : 0) |
          (this.#availWrap === 1 ? F_AVAIL : F_USED);
        this.#desc(at + BASE, chain[3 * i]!, chain[3 * i + 1]!);
        this.#dv.setUint16(at + 12, slot, true);
        if (i === 0) {
          headFlags = flags;
          headAt = at;
        } else this.#dv.setUint16(at + 14, flags, true);
        if (++this.#availIdx >= this.#size) {
          this.#availIdx = 0;
          this.#availWrap ^= 1;
        }
      }
      this.#dv.setUint16(headAt + 14, headFlags, true); // the head last: the chain becomes visible at once
      this.#taken[slot] = n;
      this.#added += n;
      return;
    }
    const head = slot * DIRECT_DESCS;
    for (let i = 0; i < n; i++) {
      const at = this.config.descAddr + (head + i) * VRING_DESC_SIZE;
      const last = i === n - 1;
      this.#desc(at, chain[3 * i]!, chain[3 * i + 1]!);
      this.#dv.setUint16(at - BASE + 12, chain[3 * i + 2]! | (last ? 0 : VRING_DESC_F_NEXT), true);
      this.#dv.setUint16(at - BASE + 14, last ? 0 : head + i + 1, true);
    }
    const avail = this.config.driverAddr - BASE;
    this.#dv.setUint16(avail + 4 + 2 * (this.#availIdx & (this.#size - 1)), head, true);
    this.#availIdx = (this.#availIdx + 1) & 0xffff;
    this.#taken[slot] = 1;
    this.#added++;
  }

  #desc(at: number, addr: number, len: number): void {
    this.#dv.setUint32(at - BASE, addr, true);
    this.#dv.setUint32(at - BASE + 4, 0, true);
    this.#dv.setUint32(at - BASE + 8, len, true);
  }

  #u32(at: number, value: number): void {
    this.#dv.setUint32(at - BASE, value, true);
  }
}

function align(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

/**
 * Start the warm-up for a thread about to serve a device of these options (unless VDUSE_WARMUP=0; once per
 * thread, unless a later device also offers packed rings). It runs before anything the caller awaits next (see
 * WarmupOptions.stop), at most WARMUP_BUDGET_MS. The promise never rejects; its result (null when off) is
 * logged at debug level.
 */
export function startBlkWarmup(
  config: WarmupDeviceOptions,
  logger: { debug(message: string): void },
  options: WarmupOptions = {},
): Promise<WarmupResult | null> {
  if (warmupDisabled()) return Promise.resolve(null);
  // One warm-up per thread: V8's optimized code serves every device of the thread (vduse serve holds many).
  if (threadWarmup !== null && (threadWarmup.packed || !config.packed)) return threadWarmup.promise;
  const promise = warmUpBlk(config, options).then(
    (r) => {
      logger.debug(
        `${config.name}: warm-up: ${r.requests.split} split${config.packed ? ` and ${r.requests.packed} packed` : ''} requests (${r.deferred} through promises) in ${r.ms.toFixed(0)} ms${r.errors > 0 ? `, ${r.errors} error(s)` : ''}`,
      );
      return r;
    },
    () => null,
  );
  threadWarmup = { packed: config.packed, promise };
  return promise;
}

/** The warm-up this thread started (a later device with the same or fewer ring formats shares it). */
let threadWarmup: { packed: boolean; promise: Promise<WarmupResult | null> } | null = null;

/** A stop condition for the warm-up: the device (once there is one) has a request in flight or completed one. */
export function stopAtFirstRequest(
  device: () => { inFlight: number; stats: { completed: number } } | null,
): () => boolean {
  return () => {
    const d = device();
    return d !== null && (d.inFlight > 0 || d.stats.completed > 0);
  };
}
