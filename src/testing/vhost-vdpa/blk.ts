/**
 * BlkClient: virtio-blk requests (§5.2.6) over the queues of a VhostVdpaDriver, as a guest's virtio_blk would
 * send them: a 16-byte header, the data, a status byte; completions from the used ring on the call eventfd.
 *
 * ```ts
 * const blk = new BlkClient(drv.queues, { indirect: true });
 * await blk.write(0, data);                      // one request, kicked, resolved on its completion
 * const back = await blk.read(0, data.length);
 * const all = await Promise.all(reqs.map((r) => blk.write(r.sector, r.data, { queue: r.q, kick: false })));
 * blk.close();
 * ```
 */
import { VduseTsError } from '../../common/errors.js';
import {
  VIRTIO_BLK_OUTHDR_SIZE,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
} from '../../uapi/virtio-blk.js';
import type { MockChain } from '../mock-driver.js';
import type { VhostQueue } from './driver.js';

/** A request did not complete in time, or completed with a status other than OK. */
export class BlkRequestError extends VduseTsError {
  constructor(
    code: string,
    message: string,
    readonly status?: number,
  ) {
    super(code, message);
  }
}

export interface BlkResult {
  status: number;
  /** Bytes the device wrote (data + status byte). */
  len: number;
  /** IN and GET_ID: the data read. */
  data: Uint8Array;
  /** Queue the request went on. */
  queue: number;
}

export interface SubmitOptions {
  /** Queue index (default: round robin). */
  queue?: number;
  /** Kick now (default true); with false, call kick() later (a batch). */
  kick?: boolean;
  /** Resolve with a non-OK status instead of rejecting. */
  allowError?: boolean;
}

interface Pending {
  chain: MockChain;
  resolve: (r: BlkResult) => void;
  reject: (e: Error) => void;
  allowError: boolean;
  what: string;
  dataLen: number;
}

export function blkHeader(type: number, sector: number): Uint8Array {
  const h = new Uint8Array(VIRTIO_BLK_OUTHDR_SIZE);
  const v = new DataView(h.buffer);
  v.setUint32(0, type, true);
  v.setBigUint64(8, BigInt(sector), true);
  return h;
}

export class BlkClient {
  readonly #queues: readonly VhostQueue[];
  readonly #pending: Map<number, Pending>[];
  readonly #indirect: boolean;
  #next = 0;
  /** Requests completed, per queue. */
  readonly completed: number[];
  /**
   * What went wrong outside any one request (a completion of an id not in flight: a repeated or invented
   * completion). Recorded, not thrown: reap() runs from the call watcher.
   */
  readonly errors: Error[] = [];

  constructor(queues: readonly VhostQueue[], options: { indirect?: boolean; watch?: boolean } = {}) {
    this.#queues = queues;
    this.#pending = queues.map(() => new Map());
    this.completed = queues.map(() => 0);
    this.#indirect = options.indirect ?? false;
    if (options.watch ?? true) queues.forEach((q, i) => q.watchCalls(() => this.reap(i)));
  }

  get inFlight(): number {
    return this.#pending.reduce((s, m) => s + m.size, 0);
  }

  write(sector: number, data: Uint8Array, options: SubmitOptions = {}): Promise<BlkResult> {
    return this.#submit(
      `write ${data.length} B at sector ${sector}`,
      [blkHeader(VIRTIO_BLK_T_OUT, sector), data],
      [1],
      0,
      options,
    );
  }

  read(sector: number, len: number, options: SubmitOptions = {}): Promise<BlkResult> {
    return this.#submit(
      `read ${len} B at sector ${sector}`,
      [blkHeader(VIRTIO_BLK_T_IN, sector)],
      [len, 1],
      len,
      options,
    );
  }

  flush(options: SubmitOptions = {}): Promise<BlkResult> {
    return this.#submit('flush', [blkHeader(VIRTIO_BLK_T_FLUSH, 0)], [1], 0, options);
  }

  getId(options: SubmitOptions = {}): Promise<BlkResult> {
    return this.#submit('get id', [blkHeader(VIRTIO_BLK_T_GET_ID, 0)], [20, 1], 20, options);
  }

  /** Publish and kick every queue with staged requests; per queue, whether its suppression let it kick. */
  kick(): boolean[] {
    return this.#queues.map((q) => q.notify());
  }

  /** Collect completions of queue `i` (or all) until none is left; returns how many. */
  reap(i?: number): number {
    if (i === undefined) return this.#queues.reduce((s, _q, k) => s + this.reap(k), 0);
    const q = this.#queues[i] as VhostQueue;
    const pending = this.#pending[i] as Map<number, Pending>;
    let total = 0;
    // Loop: the used-event re-arm after a batch can race a completion published meanwhile.
    for (;;) {
      let used;
      try {
        used = q.driver.usedEntries();
      } catch (e) {
        this.errors.push(e as Error);
        break;
      }
      if (used.length === 0) break;
      for (const u of used) {
        const p = pending.get(u.id);
        if (p === undefined || p.chain !== u.chain) {
          this.errors.push(
            new BlkRequestError(
              'ERR_TESTING_BLK_UNKNOWN_ID',
              `queue ${i}: completion of id ${u.id}, not in flight`,
            ),
          );
          continue;
        }
        pending.delete(u.id);
        this.completed[i] = (this.completed[i] ?? 0) + 1;
        // The status byte is the last byte of the last writable buffer (read before anything reuses it).
        const sb = p.chain.writable[p.chain.writable.length - 1];
        const status = sb === undefined ? -1 : (q.driver.read(sb.addr, 1)[0] as number);
        const expected = p.dataLen + 1;
        if (u.len !== expected && status === VIRTIO_BLK_S_OK) {
          p.reject(
            new BlkRequestError('ERR_TESTING_BLK_LEN', `${p.what}: used len ${u.len}, expected ${expected}`),
          );
        } else if (status !== VIRTIO_BLK_S_OK && !p.allowError) {
          p.reject(new BlkRequestError('ERR_TESTING_BLK_STATUS', `${p.what}: status ${status}`, status));
        } else {
          p.resolve({ status, len: u.len, data: u.written.slice(0, p.dataLen), queue: i });
        }
      }
      total += used.length;
    }
    return total;
  }

  /** Reject every pending request (after a reset: the device will not complete them). */
  abandon(reason: string): number {
    let n = 0;
    for (const m of this.#pending) {
      for (const p of m.values()) {
        p.reject(new BlkRequestError('ERR_TESTING_BLK_ABANDONED', `${p.what}: ${reason}`));
        n++;
      }
      m.clear();
    }
    return n;
  }

  /** Stop watching the call eventfds. */
  close(): void {
    for (const q of this.#queues) q.unwatch();
  }

  #submit(
    what: string,
    readable: Uint8Array[],
    writable: number[],
    dataLen: number,
    options: SubmitOptions,
  ): Promise<BlkResult> {
    const i = options.queue ?? this.#next++ % this.#queues.length;
    const q = this.#queues[i];
    if (q === undefined) throw new RangeError(`no queue ${i}`);
    const chain = q.driver.addChain({ readable, writable, indirect: this.#indirect });
    const promise = new Promise<BlkResult>((resolve, reject) => {
      (this.#pending[i] as Map<number, Pending>).set(chain.id, {
        chain,
        resolve,
        reject,
        allowError: options.allowError ?? false,
        what: `queue ${i}: ${what}`,
        dataLen,
      });
    });
    if (options.kick ?? true) q.notify();
    return promise;
  }
}

/** `promise`, or a rejection with ERR_TESTING_TIMEOUT after `ms`. */
export async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new BlkRequestError('ERR_TESTING_TIMEOUT', `${what}: no completion after ${ms} ms`)),
          ms,
        );
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
