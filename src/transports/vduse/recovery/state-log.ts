/**
 * The crash-recovery state log of one VDUSE device: a memory-mapped file (MAP_SHARED) the daemon writes with
 * typed-array stores on the hot path, and that a restarted daemon reads to carry on where the dead one stopped.
 * The kernel keeps the device (and re-queues unanswered messages) but not the daemon's place in each ring.
 *
 * File format, version 1. All fields little-endian u32 unless noted; a u64 is two u32 (low word first).
 *
 * Header (HEADER_SIZE = 4096 bytes):
 *   @0   magic 0x4c535456 ("VTSL")        @4   version (1)
 *   @8   header size (4096)               @12  queue region stride (bytes)
 *   @16  queue count                      @20  max queue size N (entries of the per-queue arrays)
 *   @24  descriptors logged per packed buffer (D)
 *   @28  virtio device id                 @32  offered features (u64)
 *   @40  config length                    @44  config FNV-1a hash
 *   @48  device status as last accepted   @52  negotiated features (u64)
 *   @60  activation count (bumped at every DRIVER_OK)   @64 pid of the last writer
 *   @128 device name, 256 bytes, NUL padded
 *   @1024 config bytes (the first 3072)
 * Queue region i at HEADER_SIZE + i * stride:
 *   @0  valid (1: the queue is live in this activation)  @4 size  @8 packed (0/1)
 *   @16 desc addr (u64)  @24 driver addr (u64)  @32 device addr (u64)
 *   @40 avail position (informational)  @44 used position: split used idx; packed ring idx | wrap << 15
 *   @48 last sequence number issued
 *   @52 packed batch: count of ids being published (0: none)  @56 used position before it  @60 after it
 *   @64 inflight[N]: 0 = not in flight, else the sequence number of its pop (resubmission order)
 *   then slots[N] (packed: ring slots the chain took), batch[N] (packed: ids of the batch being published),
 *   then descs[N][D][4] (packed: copies of the chain's descriptors, 16 bytes each).
 *
 * Store order (what makes a crash at any instruction recoverable):
 *   pop:      the chain is read, then inflight[id] = seq (the commit), then the avail position.
 *   split publish: used elements, used->idx (the ring is the commit), then inflight[id] = 0 for the batch, then
 *             the log's used position. A reader that finds used->idx != the log's used position knows the batch
 *             between them was published and clears those ids (the used ring entries name them).
 *   packed publish: used descriptors but the first, then the batch (ids, positions, count last) in the log,
 *             then the first descriptor's flags (the commit), then inflight[id] = 0, used position, count = 0.
 *             A reader that finds a batch checks the USED bit of the batch's first slot against the used wrap
 *             counter: equal means published (the driver can only rewrite that slot with the opposite wrap).
 * Recovery: in-flight ids ordered by sequence are resubmitted; the avail position is the used position plus
 * what is in flight (split: one per chain; packed: the slots of each chain).
 */
import {
  closeSync,
  existsSync,
  fstatSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  constants as fsConstants,
  renameSync,
  unlinkSync,
} from 'node:fs';
import { dirname } from 'node:path';

import { errnoOf } from '../../../common/errors.js';
import { MAP_SHARED, PROT_READ, PROT_WRITE, type SysBinding } from '../../../sys/binding.js';
import { VirtqueueError, type InflightRecorder } from '../../../virtio/index.js';
import { VduseError } from '../errors.js';

export const STATE_LOG_MAGIC = 0x4c535456;
export const STATE_LOG_VERSION = 1;
export const STATE_LOG_HEADER_SIZE = 4096;
/** Descriptors logged per packed chain: Linux uses one (indirect) for multi-buffer requests when it can. */
export const STATE_LOG_PACKED_DESCS = 8;
const QUEUE_FIXED = 64;
const NAME_AT = 128;
const NAME_MAX = 256;
const CONFIG_AT = 1024;
const CONFIG_MAX = STATE_LOG_HEADER_SIZE - CONFIG_AT;

// Header word indexes.
const H_MAGIC = 0;
const H_VERSION = 1;
const H_HEADER = 2;
const H_STRIDE = 3;
const H_QUEUES = 4;
const H_QSIZE = 5;
const H_DESCS = 6;
const H_DEVICE_ID = 7;
const H_OFFERED = 8;
const H_CONFIG_LEN = 10;
const H_CONFIG_HASH = 11;
const H_STATUS = 12;
const H_FEATURES = 13;
const H_ACTIVATIONS = 15;
const H_PID = 16;

// Queue word indexes.
const Q_VALID = 0;
const Q_SIZE = 1;
const Q_PACKED = 2;
const Q_DESC = 4;
const Q_DRIVER = 6;
const Q_DEVICE = 8;
const Q_AVAIL = 10;
const Q_USED = 11;
const Q_SEQ = 12;
const Q_BATCH_COUNT = 13;
const Q_BATCH_FROM = 14;
const Q_BATCH_TO = 15;

/** What identifies a device: a log written for another one is refused. */
export interface StateLogIdentity {
  name: string;
  deviceId: number;
  /** Every feature bit the device offers. */
  features: bigint;
  numQueues: number;
  maxQueueSize: number;
  config: Uint8Array;
}

/** Where a live queue's rings are, as logged at DRIVER_OK. */
export interface LoggedQueue {
  size: number;
  packed: boolean;
  descAddr: number;
  driverAddr: number;
  deviceAddr: number;
}

/** Bytes of one queue region. */
export function queueStride(maxQueueSize: number, descs = STATE_LOG_PACKED_DESCS): number {
  const n = maxQueueSize;
  return align(QUEUE_FIXED + 4 * n * 3 + 16 * n * descs, 64);
}

/** Bytes of the whole log. */
export function stateLogSize(numQueues: number, maxQueueSize: number): number {
  return align(STATE_LOG_HEADER_SIZE + numQueues * queueStride(maxQueueSize), 4096);
}

/** The state directory: $XDG_RUNTIME_DIR/vduse-ts when not root (and set), else /run/vduse-ts. */
export function defaultStateDir(): string {
  const uid = typeof process.getuid === 'function' ? process.getuid() : 0;
  const xdg = process.env.XDG_RUNTIME_DIR;
  return uid !== 0 && xdg ? `${xdg}/vduse-ts` : '/run/vduse-ts';
}

/** The log file of device `name` in `dir`. */
export function stateLogPath(dir: string, name: string): string {
  return `${dir}/${name}.state`;
}

/**
 * The log of one queue of at most `maxQueueSize` entries, in the heap rather than a file (what the transport gives
 * each queue, for code that runs a queue apart from a device: the start-up warm-up, tests).
 */
export function heapQueueLog(
  name: string,
  maxQueueSize: number,
  features: bigint = 0x3_0000_0000n,
): QueueLog {
  const buffer = new ArrayBuffer(stateLogSize(1, maxQueueSize));
  StateLog.format(buffer, {
    name,
    deviceId: 2,
    features,
    numQueues: 1,
    maxQueueSize,
    config: new Uint8Array(0),
  });
  return new StateLog(buffer).queue(0);
}

export class StateLog {
  readonly numQueues: number;
  readonly maxQueueSize: number;
  readonly #u32: Uint32Array;
  readonly #bytes: Uint8Array;
  readonly #queues: QueueLog[] = [];
  readonly #unmap: (() => void) | null;
  #closed = false;

  /**
   * A log over `buffer` (a mapping of the file, or any ArrayBuffer in tests). Checks magic, version and layout;
   * throws a VduseError naming what is wrong.
   */
  constructor(
    buffer: ArrayBuffer,
    unmap: (() => void) | null = null,
    readonly path: string | null = null,
  ) {
    const where = path ?? 'state log';
    if (buffer.byteLength < STATE_LOG_HEADER_SIZE) {
      throw new VduseError('ERR_VDUSE_STATE', `${where}: ${buffer.byteLength} bytes, too short for a header`);
    }
    this.#u32 = new Uint32Array(buffer);
    this.#bytes = new Uint8Array(buffer);
    const h = this.#u32;
    if (h[H_MAGIC] !== STATE_LOG_MAGIC) throw new VduseError('ERR_VDUSE_STATE', `${where}: not a state log`);
    if (h[H_VERSION] !== STATE_LOG_VERSION) {
      throw new VduseError(
        'ERR_VDUSE_STATE',
        `${where}: version ${h[H_VERSION]}, expected ${STATE_LOG_VERSION}`,
      );
    }
    this.numQueues = h[H_QUEUES]!;
    this.maxQueueSize = h[H_QSIZE]!;
    if (
      h[H_HEADER] !== STATE_LOG_HEADER_SIZE ||
      h[H_DESCS] !== STATE_LOG_PACKED_DESCS ||
      h[H_STRIDE] !== queueStride(this.maxQueueSize) ||
      this.numQueues < 1 ||
      this.maxQueueSize < 1 ||
      this.maxQueueSize > 32768 ||
      buffer.byteLength < stateLogSize(this.numQueues, this.maxQueueSize)
    ) {
      throw new VduseError(
        'ERR_VDUSE_STATE',
        `${where}: layout does not match (damaged or another program's)`,
      );
    }
    const stride = h[H_STRIDE]!;
    for (let i = 0; i < this.numQueues; i++) {
      this.#queues.push(new QueueLog(buffer, STATE_LOG_HEADER_SIZE + i * stride, this.maxQueueSize, i));
    }
    this.#unmap = unmap;
  }

  /** Format `buffer` as a fresh log for `identity` (status 0, no live queue). */
  static format(buffer: ArrayBuffer, identity: StateLogIdentity): void {
    const size = stateLogSize(identity.numQueues, identity.maxQueueSize);
    if (buffer.byteLength < size) throw new RangeError(`a state log needs ${size} bytes`);
    new Uint8Array(buffer, 0, size).fill(0);
    const h = new Uint32Array(buffer);
    h[H_VERSION] = STATE_LOG_VERSION;
    h[H_HEADER] = STATE_LOG_HEADER_SIZE;
    h[H_STRIDE] = queueStride(identity.maxQueueSize);
    h[H_QUEUES] = identity.numQueues;
    h[H_QSIZE] = identity.maxQueueSize;
    h[H_DESCS] = STATE_LOG_PACKED_DESCS;
    h[H_DEVICE_ID] = identity.deviceId;
    writeU64(h, H_OFFERED, identity.features);
    h[H_CONFIG_LEN] = identity.config.length;
    h[H_CONFIG_HASH] = fnv1a(identity.config);
    const bytes = new Uint8Array(buffer);
    const name = Buffer.from(identity.name);
    bytes.set(name.subarray(0, NAME_MAX - 1), NAME_AT);
    bytes.set(identity.config.subarray(0, CONFIG_MAX), CONFIG_AT);
    // Magic last: a file cut short while being formatted is not a state log.
    Atomics.store(h, H_MAGIC, STATE_LOG_MAGIC);
  }

  /**
   * Create (or replace) the log file at `path` for a device being created: a new file is formatted under a
   * temporary name, then renamed over the old one. The temporary file is created O_EXCL|O_NOFOLLOW: whatever
   * another user planted at that name (a symlink to a file of root's) is removed, never written through.
   */
  static create(binding: SysBinding, path: string, identity: StateLogIdentity): StateLog {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    const size = stateLogSize(identity.numQueues, identity.maxQueueSize);
    const tmp = `${path}.new`;
    const flags = fsConstants.O_RDWR | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW;
    let fd: number;
    try {
      fd = openSync(tmp, flags, 0o600);
    } catch (err) {
      if (errnoOf(err) !== 'EEXIST') throw err;
      unlinkSync(tmp); // a stale temporary file, or something planted there: the name itself goes
      fd = openSync(tmp, flags, 0o600);
    }
    let buffer: ArrayBuffer;
    try {
      ftruncateSync(fd, size);
      buffer = binding.mmap(fd, size, PROT_READ | PROT_WRITE, MAP_SHARED, 0);
    } finally {
      closeSync(fd);
    }
    StateLog.format(buffer, identity);
    renameSync(tmp, path);
    return new StateLog(buffer, () => binding.munmap(buffer), path);
  }

  /** Open an existing log file (a restart). Throws VduseError ERR_VDUSE_STATE when it is not a valid log. */
  static open(binding: SysBinding, path: string): StateLog {
    let fd: number;
    try {
      fd = openSync(path, 'r+');
    } catch (err) {
      throw new VduseError(
        'ERR_VDUSE_STATE',
        `cannot open the state log ${path}: ${(err as Error).message}`,
        err,
      );
    }
    let buffer: ArrayBuffer;
    try {
      const { size } = fstatSync(fd);
      if (size < STATE_LOG_HEADER_SIZE) {
        throw new VduseError('ERR_VDUSE_STATE', `${path}: ${size} bytes, too short for a state log`);
      }
      buffer = binding.mmap(fd, size, PROT_READ | PROT_WRITE, MAP_SHARED, 0);
    } finally {
      closeSync(fd);
    }
    try {
      return new StateLog(buffer, () => binding.munmap(buffer), path);
    } catch (err) {
      binding.munmap(buffer);
      throw err;
    }
  }

  /** Whether a log file exists for a device. */
  static exists(path: string): boolean {
    return existsSync(path);
  }

  /** Why this log cannot be used for `identity`, or null when it can. */
  mismatch(identity: StateLogIdentity): string | null {
    const h = this.#u32;
    const name = Buffer.from(this.#bytes.subarray(NAME_AT, NAME_AT + NAME_MAX));
    const end = name.indexOf(0);
    const logged = name.subarray(0, end < 0 ? NAME_MAX : end).toString();
    if (logged !== identity.name) return `it is the log of device "${logged}"`;
    if (h[H_DEVICE_ID] !== identity.deviceId)
      return `device id ${h[H_DEVICE_ID]} logged, ${identity.deviceId} now`;
    if (this.numQueues !== identity.numQueues)
      return `${this.numQueues} queue(s) logged, ${identity.numQueues} asked for`;
    if (this.maxQueueSize !== identity.maxQueueSize)
      return `queue size ${this.maxQueueSize} logged, ${identity.maxQueueSize} asked for`;
    const offered = readU64(h, H_OFFERED);
    if (offered !== identity.features)
      return `features 0x${offered.toString(16)} logged, 0x${identity.features.toString(16)} offered now`;
    const config = identity.config;
    const head = config.subarray(0, CONFIG_MAX);
    const same =
      h[H_CONFIG_LEN] === config.length &&
      h[H_CONFIG_HASH] === fnv1a(config) &&
      Buffer.compare(
        Buffer.from(this.#bytes.subarray(CONFIG_AT, CONFIG_AT + head.length)),
        Buffer.from(head),
      ) === 0;
    if (!same) return 'the device configuration differs (size, block size, read-only, serial, ...)';
    return null;
  }

  /** The device status as last accepted (what the kernel holds, or a request it re-sends will bring). */
  get status(): number {
    return this.#u32[H_STATUS]!;
  }

  /** The negotiated features (0 before FEATURES_OK). */
  get features(): bigint {
    return readU64(this.#u32, H_FEATURES);
  }

  /** How many times the data path was started. */
  get activations(): number {
    return this.#u32[H_ACTIVATIONS]!;
  }

  setFeatures(features: bigint): void {
    writeU64(this.#u32, H_FEATURES, features);
  }

  setStatus(status: number): void {
    this.#u32[H_PID] = process.pid;
    Atomics.store(this.#u32, H_STATUS, status & 0xff);
  }

  /** Queue `index`'s region. */
  queue(index: number): QueueLog {
    const q = this.#queues[index];
    if (q === undefined) throw new RangeError(`state log: no queue ${index}`);
    return q;
  }

  /** DRIVER_OK: count the activation (queues are started one by one with QueueLog.start). */
  activated(): void {
    Atomics.add(this.#u32, H_ACTIVATIONS, 1);
  }

  /** Device reset: status 0, no feature, no live queue. */
  reset(): void {
    for (const q of this.#queues) q.invalidate();
    this.setFeatures(0n);
    this.setStatus(0);
  }

  /** Unmap (the file stays). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#unmap?.();
  }

  /** Unmap and delete the file (the device was destroyed). */
  remove(): void {
    this.close();
    if (this.path !== null) {
      try {
        unlinkSync(this.path);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
  }
}

/** One queue's region: its ring addresses, positions and in-flight chains. The queue engines record into it. */
export class QueueLog implements InflightRecorder {
  readonly #w: Uint32Array;
  /** inflight[id]: sequence number of the pop, 0 when not in flight. */
  readonly #inflight: Uint32Array;
  readonly #slots: Uint32Array;
  readonly #batch: Uint32Array;
  readonly #descs: Uint32Array;
  readonly #n: number;
  #seq: number;

  constructor(
    buffer: ArrayBuffer,
    offset: number,
    maxQueueSize: number,
    readonly index: number,
  ) {
    const n = maxQueueSize;
    this.#n = n;
    this.#w = new Uint32Array(buffer, offset, QUEUE_FIXED / 4);
    let at = offset + QUEUE_FIXED;
    this.#inflight = new Uint32Array(buffer, at, n);
    at += 4 * n;
    this.#slots = new Uint32Array(buffer, at, n);
    at += 4 * n;
    this.#batch = new Uint32Array(buffer, at, n);
    at += 4 * n;
    this.#descs = new Uint32Array(buffer, at, n * STATE_LOG_PACKED_DESCS * 4);
    this.#seq = this.#w[Q_SEQ]!;
  }

  /** Ids the log holds (the device's maximum queue size): InflightRecorder.capacity. */
  get capacity(): number {
    return this.#n;
  }

  /** Whether the queue was live when the log was last written. */
  get valid(): boolean {
    return this.#w[Q_VALID] === 1;
  }

  /** The logged ring layout. */
  get ring(): LoggedQueue {
    const w = this.#w;
    return {
      size: w[Q_SIZE]!,
      packed: w[Q_PACKED] === 1,
      descAddr: readU64(w, Q_DESC, true),
      driverAddr: readU64(w, Q_DRIVER, true),
      deviceAddr: readU64(w, Q_DEVICE, true),
    };
  }

  /** The used position as logged (split: used idx; packed: idx | wrap << 15). */
  get usedPosition(): number {
    return this.#w[Q_USED]!;
  }

  /** The avail position as last logged (informational: recovery derives it). */
  get availPosition(): number {
    return this.#w[Q_AVAIL]!;
  }

  /** A packed batch that was being published: [count, from, to] (count 0: none). */
  get pendingBatch(): { count: number; from: number; to: number; ids: number[] } {
    const w = this.#w;
    const count = w[Q_BATCH_COUNT]!;
    return { count, from: w[Q_BATCH_FROM]!, to: w[Q_BATCH_TO]!, ids: [...this.#batch.subarray(0, count)] };
  }

  /** Ids in flight, oldest pop first. */
  inflightIds(): number[] {
    const ids: number[] = [];
    const f = this.#inflight;
    for (let i = 0; i < this.#n; i++) if (f[i] !== 0) ids.push(i);
    return ids.sort((a, b) => f[a]! - f[b]!);
  }

  /** Ring slots chain `id` took (packed). */
  slotsOf(id: number): number {
    return this.#slots[id] ?? 0;
  }

  /** The logged descriptors of packed chain `id` (16 bytes each, ring format), or null if it was too long. */
  descriptorsOf(id: number): Uint32Array | null {
    const slots = this.#slots[id] ?? 0;
    if (slots > STATE_LOG_PACKED_DESCS || slots === 0) return null;
    const at = id * STATE_LOG_PACKED_DESCS * 4;
    return this.#descs.slice(at, at + slots * 4);
  }

  /** DRIVER_OK: the queue is live from `used` (= avail) with nothing in flight. */
  start(ring: LoggedQueue, avail: number, used: number): void {
    const w = this.#w;
    Atomics.store(w, Q_VALID, 0);
    this.#inflight.fill(0);
    w[Q_BATCH_COUNT] = 0;
    w[Q_SIZE] = ring.size;
    w[Q_PACKED] = ring.packed ? 1 : 0;
    writeU64(w, Q_DESC, BigInt(ring.descAddr));
    writeU64(w, Q_DRIVER, BigInt(ring.driverAddr));
    writeU64(w, Q_DEVICE, BigInt(ring.deviceAddr));
    w[Q_AVAIL] = avail;
    w[Q_USED] = used;
    this.#seq = 0;
    w[Q_SEQ] = 0;
    Atomics.store(w, Q_VALID, 1);
  }

  invalidate(): void {
    Atomics.store(this.#w, Q_VALID, 0);
  }

  // ---- InflightRecorder (the hot path) ----

  popped(id: number, availPosition: number): void {
    // A buffer id comes from the guest: one the log has no slot for is the ring's error, not an exception of ours.
    if (!(id >= 0 && id < this.#n)) throw this.#badId(id);
    const seq = (this.#seq = (this.#seq + 1) >>> 0 || 1);
    this.#w[Q_SEQ] = seq;
    Atomics.store(this.#inflight, id, seq);
    this.#w[Q_AVAIL] = availPosition;
  }

  poppedPacked(id: number, ring: Uint32Array, first: number, slots: number, availPosition: number): void {
    if (!(id >= 0 && id < this.#n)) throw this.#badId(id);
    this.#slots[id] = slots;
    if (slots <= STATE_LOG_PACKED_DESCS) {
      const size = ring.length >>> 2;
      const d = this.#descs;
      let at = id * STATE_LOG_PACKED_DESCS * 4;
      let s = first;
      for (let k = 0; k < slots; k++) {
        const b = s << 2;
        d[at] = ring[b]!;
        d[at + 1] = ring[b + 1]!;
        d[at + 2] = ring[b + 2]!;
        d[at + 3] = ring[b + 3]!;
        at += 4;
        if (++s === size) s = 0;
      }
    }
    this.popped(id, availPosition);
  }

  completed(ids: ArrayLike<number>, count: number, usedPosition: number): void {
    const f = this.#inflight;
    // (an id without a slot was refused at its pop; a typed-array store out of range is ignored)
    for (let k = 0; k < count; k++) f[ids[k]!] = 0;
    Atomics.store(this.#w, Q_USED, usedPosition);
  }

  publishingPacked(ids: ArrayLike<number>, count: number, from: number, to: number): void {
    const b = this.#batch;
    for (let k = 0; k < count; k++) b[k] = ids[k]!;
    this.#w[Q_BATCH_FROM] = from;
    this.#w[Q_BATCH_TO] = to;
    Atomics.store(this.#w, Q_BATCH_COUNT, count);
  }

  completedPacked(ids: ArrayLike<number>, count: number, usedPosition: number): void {
    this.completed(ids, count, usedPosition);
    Atomics.store(this.#w, Q_BATCH_COUNT, 0);
  }

  /** The error for a guest-chosen buffer id the log has no slot for (the queue stops: needs reset). */
  #badId(id: number): VirtqueueError {
    return new VirtqueueError(
      'descriptor-index',
      this.index,
      `buffer id ${id} is not below the device's maximum queue size ${this.#n}`,
    );
  }

  /** Recovery: forget chain `id` (it was completed). */
  clear(id: number): void {
    this.#inflight[id] = 0;
  }

  /** Recovery: the used position is `used`; drop a pending batch record. */
  settle(used: number): void {
    Atomics.store(this.#w, Q_USED, used);
    Atomics.store(this.#w, Q_BATCH_COUNT, 0);
  }
}

function align(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

function writeU64(w: Uint32Array, at: number, value: bigint | number): void {
  const v = BigInt(value);
  w[at] = Number(v & 0xffffffffn);
  w[at + 1] = Number((v >> 32n) & 0xffffffffn);
}

function readU64(w: Uint32Array, at: number): bigint;
function readU64(w: Uint32Array, at: number, asNumber: true): number;
function readU64(w: Uint32Array, at: number, asNumber = false): bigint | number {
  const lo = w[at]!;
  const hi = w[at + 1]!;
  return asNumber ? hi * 0x1_0000_0000 + lo : (BigInt(hi) << 32n) | BigInt(lo);
}

/** 32-bit FNV-1a. */
export function fnv1a(bytes: Uint8Array): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) {
    h ^= bytes[i]!;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}
