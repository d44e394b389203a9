/**
 * The inflight region of INFLIGHT_SHMFD (split rings): shared memory the VMM keeps across our death, so that a
 * restarted daemon knows which requests it had taken and not completed. GET_INFLIGHT_FD creates it (a memfd,
 * laid out per ../../uapi/vhost-user.ts); SET_INFLIGHT_FD hands one back (after a reconnect: the dead daemon's).
 *
 * Each queue's part is the engine's in-flight log (InflightRecorder + the InflightSource recovery reads):
 *   pop:     the chain is read, then desc[head].counter = next sequence number, then desc[head].inflight = 1.
 *   publish: used elements and used->idx are stored in the ring (the commit), then inflight = 0 for the batch,
 *            then used_idx here. A reader that finds the ring's used->idx past used_idx knows the batch between
 *            them was published (the used ring names its heads) and clears them: the engine's recoverInflight
 *            does exactly that, then resubmits what is left in flight in counter order.
 */
import { closeSync, fstatSync, ftruncateSync } from 'node:fs';

import { MAP_SHARED, MFD_CLOEXEC, PROT_READ, PROT_WRITE, type SysBinding } from '../../sys/binding.js';
import {
  INFLIGHT_DESC_SIZE,
  INFLIGHT_D_COUNTER,
  INFLIGHT_D_INFLIGHT,
  INFLIGHT_QUEUE_HEADER,
  INFLIGHT_Q_DESC_NUM,
  INFLIGHT_Q_USED_IDX,
  INFLIGHT_Q_VERSION,
  INFLIGHT_VERSION,
  inflightQueueStride,
  type InflightPayload,
} from '../../uapi/vhost-user.js';
import type { InflightLog, RecoverableLog } from '../engine/data-path.js';
import { VhostUserError } from './errors.js';

const MAX_QUEUE_SIZE = 32768;

/** The mapped region: one InflightQueue per queue. */
export class InflightRegion {
  readonly #binding: SysBinding;
  readonly #mapping: ArrayBuffer;
  readonly queues: InflightQueue[];
  #closed = false;

  private constructor(
    binding: SysBinding,
    mapping: ArrayBuffer,
    base: number,
    numQueues: number,
    queueSize: number,
  ) {
    this.#binding = binding;
    this.#mapping = mapping;
    const stride = inflightQueueStride(queueSize);
    this.queues = [];
    for (let q = 0; q < numQueues; q++)
      this.queues.push(new InflightQueue(mapping, base + q * stride, queueSize, q));
  }

  /** Bytes a region for `numQueues` queues of `queueSize` takes. */
  static size(numQueues: number, queueSize: number): number {
    return numQueues * inflightQueueStride(queueSize);
  }

  /** GET_INFLIGHT_FD: a fresh zeroed region; returns it, the memfd to send and the reply payload. */
  static create(
    binding: SysBinding,
    numQueues: number,
    queueSize: number,
  ): { region: InflightRegion; fd: number; payload: InflightPayload } {
    checkShape(numQueues, queueSize);
    const size = InflightRegion.size(numQueues, queueSize);
    const fd = binding.memfdCreate('vduse-ts-inflight', MFD_CLOEXEC);
    try {
      ftruncateSync(fd, size);
      const mapping = binding.mmap(fd, size, PROT_READ | PROT_WRITE, MAP_SHARED, 0);
      const region = new InflightRegion(binding, mapping, 0, numQueues, queueSize);
      for (const q of region.queues) q.init();
      return { region, fd, payload: { mmapSize: BigInt(size), mmapOffset: 0n, numQueues, queueSize } };
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  /** SET_INFLIGHT_FD: map the VMM's region (the fd stays the caller's). Throws VhostUserError when it makes no sense. */
  static open(binding: SysBinding, fd: number, p: InflightPayload, maxQueues: number): InflightRegion {
    checkShape(p.numQueues, p.queueSize);
    if (p.numQueues > maxQueues)
      throw new VhostUserError(
        'ERR_VHOST_USER_INFLIGHT',
        `inflight region for ${p.numQueues} queues (the device has ${maxQueues})`,
      );
    const need = InflightRegion.size(p.numQueues, p.queueSize);
    const size = Number(p.mmapSize);
    const offset = Number(p.mmapOffset);
    if (!Number.isSafeInteger(size) || !Number.isSafeInteger(offset) || size < need || offset % 4096 !== 0)
      throw new VhostUserError(
        'ERR_VHOST_USER_INFLIGHT',
        `inflight region of ${p.mmapSize} bytes at offset ${p.mmapOffset} (needs ${need}, page-aligned)`,
      );
    let fileSize: number;
    try {
      fileSize = fstatSync(fd).size;
    } catch (err) {
      throw new VhostUserError('ERR_VHOST_USER_INFLIGHT', `inflight fd: ${(err as Error).message}`, err);
    }
    if (offset + need > fileSize)
      throw new VhostUserError(
        'ERR_VHOST_USER_INFLIGHT',
        `inflight region past the end of its fd (${fileSize} bytes)`,
      );
    const mapping = binding.mmap(fd, need, PROT_READ | PROT_WRITE, MAP_SHARED, offset);
    const region = new InflightRegion(binding, mapping, 0, p.numQueues, p.queueSize);
    for (const q of region.queues) {
      const problem = q.check();
      if (problem !== null) {
        binding.munmap(mapping);
        throw new VhostUserError('ERR_VHOST_USER_INFLIGHT', `inflight queue ${q.index}: ${problem}`);
      }
    }
    return region;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#binding.munmap(this.#mapping);
  }
}

function checkShape(numQueues: number, queueSize: number): void {
  if (!(numQueues >= 1 && numQueues <= 0xffff) || !(queueSize >= 1 && queueSize <= MAX_QUEUE_SIZE))
    throw new VhostUserError(
      'ERR_VHOST_USER_INFLIGHT',
      `inflight region for ${numQueues} queues of ${queueSize}`,
    );
}

/** One queue's part of the region: the engine's in-flight log for it. */
export class InflightQueue implements InflightLog, RecoverableLog {
  readonly #head: DataView;
  readonly #flag: Uint8Array;
  /** counter of desc[i] (u64) as two u32 words at [4i + 2], [4i + 3]. */
  readonly #words: Uint32Array;
  readonly #n: number;
  #seq = 0;

  constructor(
    mapping: ArrayBuffer,
    offset: number,
    queueSize: number,
    readonly index: number,
  ) {
    this.#n = queueSize;
    this.#head = new DataView(mapping, offset, INFLIGHT_QUEUE_HEADER);
    const descs = offset + INFLIGHT_QUEUE_HEADER;
    this.#flag = new Uint8Array(mapping, descs, queueSize * INFLIGHT_DESC_SIZE);
    this.#words = new Uint32Array(mapping, descs, (queueSize * INFLIGHT_DESC_SIZE) / 4);
    for (let i = 0; i < queueSize; i++) this.#seq = Math.max(this.#seq, this.#counter(i));
  }

  get capacity(): number {
    return this.#n;
  }

  /** A fresh queue part: version and size. */
  init(): void {
    this.#head.setUint16(INFLIGHT_Q_VERSION, INFLIGHT_VERSION, true);
    this.#head.setUint16(INFLIGHT_Q_DESC_NUM, this.#n, true);
  }

  /** Why a handed-back part cannot be used, or null. A part never written (all zero) is fine. */
  check(): string | null {
    const version = this.#head.getUint16(INFLIGHT_Q_VERSION, true);
    const num = this.#head.getUint16(INFLIGHT_Q_DESC_NUM, true);
    if (version === 0 && num === 0) {
      this.init();
      return null;
    }
    if (version !== INFLIGHT_VERSION) return `version ${version} (expected ${INFLIGHT_VERSION})`;
    if (num !== (this.#n & 0xffff)) return `desc_num ${num} (expected ${this.#n})`;
    return null;
  }

  popped(id: number, _availPosition: number): void {
    const w = 4 * id + INFLIGHT_D_COUNTER / 4;
    const seq = ++this.#seq;
    this.#words[w] = seq >>> 0;
    this.#words[w + 1] = Math.floor(seq / 2 ** 32);
    Atomics.store(this.#flag, id * INFLIGHT_DESC_SIZE + INFLIGHT_D_INFLIGHT, 1);
  }

  completed(ids: ArrayLike<number>, count: number, usedPosition: number): void {
    for (let k = 0; k < count; k++) this.#flag[ids[k]! * INFLIGHT_DESC_SIZE + INFLIGHT_D_INFLIGHT] = 0;
    this.#head.setUint16(INFLIGHT_Q_USED_IDX, usedPosition & 0xffff, true);
  }

  poppedPacked(): void {
    throw new VhostUserError('ERR_VHOST_USER_INFLIGHT', 'packed rings are not served over vhost-user');
  }

  publishingPacked(): void {
    this.poppedPacked();
  }

  completedPacked(): void {
    this.poppedPacked();
  }

  get usedPosition(): number {
    return this.#head.getUint16(INFLIGHT_Q_USED_IDX, true);
  }

  get pendingBatch(): { count: number; from: number; to: number; ids: number[] } {
    return { count: 0, from: 0, to: 0, ids: [] };
  }

  inflightIds(): number[] {
    const ids: number[] = [];
    for (let i = 0; i < this.#n; i++)
      if (this.#flag[i * INFLIGHT_DESC_SIZE + INFLIGHT_D_INFLIGHT] !== 0) ids.push(i);
    return ids.sort((a, b) => this.#counter(a) - this.#counter(b));
  }

  slotsOf(_id: number): number {
    return 1;
  }

  descriptorsOf(_id: number): Uint32Array | null {
    return null;
  }

  clear(id: number): void {
    if (id >= 0 && id < this.#n) this.#flag[id * INFLIGHT_DESC_SIZE + INFLIGHT_D_INFLIGHT] = 0;
  }

  settle(usedPosition: number): void {
    this.#head.setUint16(INFLIGHT_Q_USED_IDX, usedPosition & 0xffff, true);
  }

  #counter(i: number): number {
    const w = 4 * i + INFLIGHT_D_COUNTER / 4;
    return this.#words[w]! + this.#words[w + 1]! * 2 ** 32;
  }
}
