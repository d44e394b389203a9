/**
 * The `nbd` block backend: storage on an NBD server, over one or more connections.
 *
 * - Several connections when the server sets NBD_FLAG_CAN_MULTI_CONN; each request goes to the connection with
 *   the fewest requests in flight, up to `queueDepth` in flight per connection (pipelining).
 * - Reads and writes are split at the server's maximum block size (and at 32 MiB when it sends none), also when
 *   that maximum is below 512 bytes. A request not aligned to the server's minimum block size (above 512) fails
 *   with EINVAL without being sent; `capabilities.logicalBlockSize` says what the device should use.
 * - Nothing is lost when a connection drops: its unanswered requests are sent again once a connection is back
 *   (reconnecting with backoff, 100 ms doubling to 2 s). A request completes only after the server answered it.
 *   The backoff spans sessions: a connection that dies soon after its handshake (before it served well: up for
 *   `stableSessionMs` and answered a request, or was never asked anything) counts as a failed attempt, so a
 *   hostile or flapping server is not reconnected to every 100 ms; a session that served well resets it. While
 *   sessions keep failing, the lost/reconnected lines are logged for the first two, then summarised once per
 *   `logSummaryMs` ("N more ... in the last M s").
 *   If no connection comes back within the retry window (default 60 s), waiting requests fail with EIO and the
 *   cause is logged once. A server that comes back with another size, read-only when it was writable, or
 *   tighter block size limits is refused: pending and later requests fail.
 */
import { readFileSync } from 'node:fs';

import { UsageError, VduseTsError, errnoOf, messageOf } from '../../common/errors.js';
import { BackendError, type BackendCapabilities, type BlockBackend } from '../backend.js';
import {
  NbdConnection,
  type NbdConnRequest,
  describeTarget,
  type NbdTarget,
  type NbdTlsOptions,
} from './client.js';
import { NBD_ERR, NbdConnectionError, NbdProtocolError, NbdServerError } from './errors.js';
import {
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  type NbdExportInfo,
} from './protocol.js';
import {
  NBD_DEFAULT_QUEUE_DEPTH,
  NBD_DEFAULT_RETRY_MS,
  NBD_DEFAULT_TIMEOUT_MS,
  type NbdSpecOptions,
} from './uri.js';

/** Largest read/write sent when the server gives no maximum (the spec's interoperable limit, 2^25). */
export const NBD_DEFAULT_MAX_IO = 32 * 1024 * 1024;
/** Largest minimum block size served: the largest logical block size of a virtio-blk device on Linux. */
export const NBD_MAX_MIN_BLOCK = 4096;

/** The request limits the backend keeps to for an export. */
interface IoLimits {
  /** Offsets and lengths of requests are multiples of this (the server's minimum; 1 when it has none). */
  align: number;
  /** The unit exposed to the device: max(512, align). */
  minIo: number;
  /** Largest length of one request: the server's maximum (or 32 MiB), rounded down to the unit. */
  maxIo: number;
}

/** Throws (one line) when the backend cannot serve the export as a block device: its limits, or no data at all. */
function checkExport(info: NbdExportInfo): void {
  const { minIo } = nbdIoLimits(info);
  if (info.size < minIo) {
    const bytes = info.size === 0 ? '0 bytes' : `${info.size} bytes, less than one ${minIo}-byte block`;
    throw new NbdProtocolError(`the export is empty (${bytes})`, {
      fatal: true,
      code: 'ERR_NBD_EMPTY_EXPORT',
    });
  }
}

/** What the backend sends for `info`; throws NbdProtocolError when it cannot serve a block device within them. */
export function nbdIoLimits(info: NbdExportInfo): IoLimits {
  const align = Math.max(1, info.minBlockSize);
  if (align > NBD_MAX_MIN_BLOCK) {
    throw new NbdProtocolError(
      `the server's minimum block size ${align} is more than ${NBD_MAX_MIN_BLOCK} bytes, the largest logical ` +
        'block size a block device can have',
      { fatal: true, code: NBD_ERR.BLOCK_SIZE },
    );
  }
  const minIo = Math.max(512, align);
  const max = Math.min(info.maxBlockSize, NBD_DEFAULT_MAX_IO);
  // Below 512 (or below the minimum, which the protocol already refuses) the maximum is honoured as it is:
  // requests are split into pieces of `max` bytes, each a multiple of the server's minimum.
  const unit = max >= minIo ? minIo : align;
  const maxIo = max - (max % unit);
  if (maxIo < align) {
    throw new NbdProtocolError(`the server's maximum block size ${info.maxBlockSize} is below its minimum`, {
      fatal: true,
      code: NBD_ERR.BLOCK_SIZE,
    });
  }
  return { align, minIo, maxIo };
}
const ZERO_CHUNK = 1024 * 1024;

export interface NbdBackendOptions extends Partial<Omit<NbdSpecOptions, 'target'>> {
  target: NbdTarget;
  /** Where messages go (default: stderr with an `nbd:` prefix). */
  log?: (message: string) => void;
  /** Reconnect backoff: first delay and cap, in ms (default 100 and 2000). */
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  /** close(): how long to wait for replies to requests in flight before disconnecting (default 5000 ms). */
  closeTimeoutMs?: number;
  /**
   * A session served well (and resets the backoff) once it was up this long and answered a request, or was
   * never asked anything (default 1000 ms). A session lost earlier counts as a failed attempt.
   */
  stableSessionMs?: number;
  /** While sessions keep failing, repeated lost/reconnected lines are summarised once per this (default 10 s). */
  logSummaryMs?: number;
}

/**
 * One NBD request of the backend, from the caller's call until its promise settles. Ops are pooled: the promise
 * handed to the caller is the only allocation per request.
 */
class Op implements NbdConnRequest {
  type = 0;
  flags = 0;
  offset = 0;
  length = 0;
  data: readonly Uint8Array[] | undefined = undefined;
  dest: readonly Uint8Array[] | undefined = undefined;
  /** Order of submission (a request sent again keeps its place among waiting ones). */
  seq = 0;
  /** When the request was first lost with a connection (it is retried for `retryMs` from then). */
  firstLost: number | undefined = undefined;
  /** The connection it was last sent on. */
  conn: NbdConnection | undefined = undefined;
  resolve: (() => void) | undefined = undefined;
  reject: ((err: Error) => void) | undefined = undefined;
  /** `new Promise(op.executor)`: no closure per request. */
  readonly executor = (resolve: () => void, reject: (err: Error) => void): void => {
    this.resolve = resolve;
    this.reject = reject;
  };

  constructor(private readonly backend: NbdBackend) {}

  settle(error: Error | undefined): void {
    this.backend.settled(this, error);
  }
}

interface Slot {
  index: number;
  conn: NbdConnection | undefined;
  connecting: boolean;
  timer: NodeJS.Timeout | undefined;
  backoff: number;
  /** Requests sent on this slot's connections so far. */
  requests: number;
  /** When the slot's connection was lost (undefined while connected). */
  lostAt?: number | undefined;
  /** When the current connection was established, and `requests` then. */
  attachedAt: number;
  requestsAtAttach: number;
  /** Sessions in a row that ended before they served well. */
  failures: number;
  /** Lines held back while sessions keep failing: how many, the last cause, since when, the summary timer. */
  suppressed: number;
  suppressedCause: string;
  suppressedSince: number;
  summaryTimer: NodeJS.Timeout | undefined;
}

function sliceViews(views: readonly Uint8Array[], start: number, length: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let skip = start;
  let left = length;
  for (const v of views) {
    if (left === 0) break;
    if (skip >= v.length) {
      skip -= v.length;
      continue;
    }
    const n = Math.min(v.length - skip, left);
    out.push(v.subarray(skip, skip + n));
    left -= n;
    skip = 0;
  }
  return out;
}

function viewsLength(views: readonly Uint8Array[]): number {
  let n = 0;
  for (const v of views) n += v.length;
  return n;
}

const errorText = messageOf;

export class NbdBackend implements BlockBackend {
  readonly size: number;
  readonly readOnly: boolean;
  readonly capabilities: BackendCapabilities;
  /** The server's answer to the first handshake. */
  readonly info: NbdExportInfo;
  /** Largest read/write/trim/zero length sent in one request. */
  readonly maxIo: number;
  readonly minIo: number;
  /** Offsets and lengths sent are multiples of this (the server's minimum block size, 1 when it has none). */
  readonly align: number;

  private readonly slots: Slot[] = [];
  private readonly waiting: Op[] = [];
  private readonly pool: Op[] = [];
  private seq = 0;
  private rr = 0;
  private closed = false;
  private broken: BackendError | undefined;
  private downSince: number | undefined;
  private lastCause = '';
  private giveUpTimer: NodeJS.Timeout | undefined;
  private givenUp = false;
  private lastGiveUpLog = -Infinity;
  private readonly log: (message: string) => void;
  private readonly name: string;
  private readonly queueDepth: number;
  private readonly retryMs: number;
  private readonly timeoutMs: number;
  private readonly backoffInitialMs: number;
  private readonly backoffMaxMs: number;
  private readonly closeTimeoutMs: number;
  private readonly stableSessionMs: number;
  private readonly logSummaryMs: number;
  private zeroes: Uint8Array | undefined;

  private constructor(
    private readonly target: NbdTarget,
    first: NbdConnection,
    connectionCount: number,
    options: NbdBackendOptions,
  ) {
    this.log = options.log ?? ((m) => process.stderr.write(`nbd: ${m}\n`));
    this.name = describeTarget(target);
    this.queueDepth = options.queueDepth ?? NBD_DEFAULT_QUEUE_DEPTH;
    this.retryMs = options.retryMs ?? NBD_DEFAULT_RETRY_MS;
    this.timeoutMs = options.timeoutMs ?? NBD_DEFAULT_TIMEOUT_MS;
    this.backoffInitialMs = options.backoffInitialMs ?? 100;
    this.backoffMaxMs = options.backoffMaxMs ?? 2000;
    this.closeTimeoutMs = options.closeTimeoutMs ?? 5000;
    this.stableSessionMs = options.stableSessionMs ?? 1000;
    this.logSummaryMs = options.logSummaryMs ?? 10_000;
    const info = first.info;
    this.info = info;
    const flags = info.flags;
    const limits = nbdIoLimits(info);
    this.align = limits.align;
    this.minIo = limits.minIo;
    this.maxIo = limits.maxIo;
    this.size = info.size - (info.size % this.minIo);
    // The preferred block size is a hint: a multiple of the unit, no larger than one request.
    const preferred = Math.min(info.preferredBlockSize, this.maxIo);
    this.readOnly = (options.readOnly ?? false) || (flags & NBD_FLAG_READ_ONLY) !== 0;
    const can = (bit: number): boolean => (flags & bit) !== 0;
    this.capabilities = {
      flush: can(NBD_FLAG_SEND_FLUSH),
      discard: can(NBD_FLAG_SEND_TRIM),
      writeZeroes: can(NBD_FLAG_SEND_WRITE_ZEROES),
      writeZeroesUnmap: can(NBD_FLAG_SEND_WRITE_ZEROES),
      secureErase: false,
      minIoSize: this.minIo,
      optIoSize: preferred > this.minIo && preferred % this.minIo === 0 ? preferred : 0,
      discardAlignment: this.align > 512 ? this.align : 0,
      logicalBlockSize: this.minIo,
    };
    for (let i = 0; i < connectionCount; i++) {
      this.slots.push({
        index: i,
        conn: undefined,
        connecting: false,
        timer: undefined,
        backoff: this.backoffInitialMs,
        requests: 0,
        attachedAt: 0,
        requestsAtAttach: 0,
        failures: 0,
        suppressed: 0,
        suppressedCause: '',
        suppressedSince: 0,
        summaryTimer: undefined,
      });
    }
    this.attach(this.slots[0]!, first);
  }

  /** Connects (all connections, when the server allows several) and returns the backend. */
  static async open(options: NbdBackendOptions): Promise<NbdBackend> {
    const target = NbdBackend.resolveTls(options);
    const connectOptions = {
      timeoutMs: options.timeoutMs || NBD_DEFAULT_TIMEOUT_MS,
      requestTimeoutMs: options.timeoutMs ?? NBD_DEFAULT_TIMEOUT_MS,
    };
    let first: NbdConnection;
    try {
      first = await NbdConnection.connect(target, connectOptions);
    } catch (err) {
      throw new BackendError(`nbd: cannot connect to ${describeTarget(target)}: ${errorText(err)}`, {
        code: err instanceof VduseTsError ? err.code : 'ERR_NBD_CONNECTION',
        errno: errnoOf(err) ?? 'EIO',
        cause: err,
      });
    }
    try {
      checkExport(first.info);
    } catch (err) {
      first.destroy(new NbdConnectionError('export refused'));
      throw new BackendError(`nbd: ${describeTarget(target)}: ${errorText(err)}`, {
        code: err instanceof VduseTsError ? err.code : 'ERR_NBD_PROTOCOL',
        cause: err,
      });
    }
    const log = options.log ?? ((m: string) => process.stderr.write(`nbd: ${m}\n`));
    let count = options.connections ?? 1;
    if (count > 1 && (first.info.flags & NBD_FLAG_CAN_MULTI_CONN) === 0) {
      log(
        `${describeTarget(target)}: server does not allow multi-conn; using 1 connection instead of ${count}`,
      );
      count = 1;
    }
    const backend = new NbdBackend(target, first, count, options);
    if (count > 1) {
      const results = await Promise.allSettled(
        backend.slots.slice(1).map(async (slot) => {
          const conn = await NbdConnection.connect(target, connectOptions);
          const problem = backend.mismatch(conn.info);
          if (problem) {
            const error = new NbdProtocolError(problem, { fatal: true, code: NBD_ERR.EXPORT_CHANGED });
            conn.destroy(error);
            throw error;
          }
          backend.attach(slot, conn);
        }),
      );
      const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) {
        await backend.close();
        const reason: unknown = failed.reason;
        throw new BackendError(
          `nbd: cannot open ${count} connections to ${describeTarget(target)}: ${errorText(reason)}`,
          {
            code: reason instanceof VduseTsError ? reason.code : 'ERR_NBD_CONNECTION',
            errno: errnoOf(reason) ?? 'EIO',
            cause: reason,
          },
        );
      }
    }
    return backend;
  }

  private static resolveTls(options: NbdBackendOptions): NbdTarget {
    const target = options.target;
    const files = options.tlsFiles ?? {};
    if (!target.tls && Object.keys(files).length === 0) return target;
    const tls: NbdTlsOptions = { ...(target.tls ?? {}) };
    const read = (what: string, path: string): Buffer => {
      try {
        return readFileSync(path);
      } catch (err) {
        throw new UsageError(`nbd: cannot read TLS ${what} file ${path}: ${errorText(err)}`, {
          code: 'ERR_NBD_TLS_FILE',
          cause: err,
        });
      }
    };
    if (files.ca !== undefined) tls.ca = read('CA', files.ca);
    if (files.cert !== undefined) tls.cert = read('certificate', files.cert);
    if (files.key !== undefined) tls.key = read('key', files.key);
    return { ...target, tls };
  }

  /** Number of connections currently up. */
  get liveConnections(): number {
    return this.slots.filter((s) => s.conn !== undefined && !s.conn.closed).length;
  }

  /** Requests sent so far on each connection slot (for tests and statistics). */
  get requestsPerConnection(): number[] {
    return this.slots.map((s) => s.requests);
  }

  /** Number of connections this backend keeps (1 unless the server allows multi-conn). */
  get connectionCount(): number {
    return this.slots.length;
  }

  // ---------------------------------------------------------------------------------------------------
  // BlockBackend

  read(offset: number, buffers: readonly Uint8Array[]): Promise<void> {
    const length = buffers.length === 1 ? buffers[0]!.length : viewsLength(buffers);
    if (this.align > 512 && (offset % this.align !== 0 || length % this.align !== 0)) {
      return Promise.reject(this.unaligned('read', offset, length));
    }
    if (length <= this.maxIo) return this.run(NBD_CMD_READ, 0, offset, length, undefined, buffers);
    const parts: Promise<void>[] = [];
    for (let pos = 0; pos < length; pos += this.maxIo) {
      const n = Math.min(this.maxIo, length - pos);
      parts.push(this.run(NBD_CMD_READ, 0, offset + pos, n, undefined, sliceViews(buffers, pos, n)));
    }
    return settleAll(parts);
  }

  write(offset: number, buffers: readonly Uint8Array[], options?: { fua?: boolean }): Promise<void> {
    const fua = options?.fua === true;
    const nativeFua = fua && (this.info.flags & NBD_FLAG_SEND_FUA) !== 0;
    const flags = nativeFua ? NBD_CMD_FLAG_FUA : 0;
    const length = buffers.length === 1 ? buffers[0]!.length : viewsLength(buffers);
    if (this.readOnly) return Promise.reject(this.notWritable());
    if (this.align > 512 && (offset % this.align !== 0 || length % this.align !== 0)) {
      return Promise.reject(this.unaligned('write', offset, length));
    }
    let done: Promise<void>;
    if (length <= this.maxIo) {
      done = this.run(NBD_CMD_WRITE, flags, offset, length, buffers, undefined);
    } else {
      const parts: Promise<void>[] = [];
      for (let pos = 0; pos < length; pos += this.maxIo) {
        const n = Math.min(this.maxIo, length - pos);
        parts.push(this.run(NBD_CMD_WRITE, flags, offset + pos, n, sliceViews(buffers, pos, n), undefined));
      }
      done = settleAll(parts);
    }
    return fua && !nativeFua ? done.then(() => this.flush()) : done;
  }

  async flush(): Promise<void> {
    if (!this.capabilities.flush) {
      this.checkUsable();
      return;
    }
    await this.run(NBD_CMD_FLUSH, 0, 0, 0, undefined, undefined);
  }

  async discard(offset: number, length: number): Promise<void> {
    this.checkWritable();
    if (!this.capabilities.discard) throw new BackendError('nbd: server does not support trim', 'ENOTSUP');
    if (this.align > 512 && (offset % this.align !== 0 || length % this.align !== 0)) {
      throw this.unaligned('trim', offset, length);
    }
    await settleAll(
      this.ranges(offset, length).map(([o, n]) => this.run(NBD_CMD_TRIM, 0, o, n, undefined, undefined)),
    );
  }

  async writeZeroes(offset: number, length: number, options?: { unmap?: boolean }): Promise<void> {
    this.checkWritable();
    if (this.align > 512 && (offset % this.align !== 0 || length % this.align !== 0)) {
      throw this.unaligned('write zeroes', offset, length);
    }
    if (this.capabilities.writeZeroes) {
      const flags = options?.unmap === true ? 0 : NBD_CMD_FLAG_NO_HOLE;
      await settleAll(
        this.ranges(offset, length).map(([o, n]) =>
          this.run(NBD_CMD_WRITE_ZEROES, flags, o, n, undefined, undefined),
        ),
      );
      return;
    }
    // No WRITE_ZEROES on the server: write zeroes from a shared zero buffer.
    const zero = (this.zeroes ??= new Uint8Array(Math.min(ZERO_CHUNK, this.maxIo)));
    await settleAll(
      this.ranges(offset, length).map(([o, n]) => {
        const views: Uint8Array[] = [];
        for (let left = n; left > 0; left -= zero.length)
          views.push(zero.subarray(0, Math.min(zero.length, left)));
        return this.run(NBD_CMD_WRITE, 0, o, n, views, undefined);
      }),
    );
  }

  /** Sends NBD_CMD_DISC on every connection (after in-flight requests are answered) and closes them. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.giveUpTimer) clearTimeout(this.giveUpTimer);
    this.giveUpTimer = undefined;
    for (const slot of this.slots) {
      if (slot.timer) clearTimeout(slot.timer);
      slot.timer = undefined;
      this.flushSummary(slot);
    }
    this.failWaiting(this.closedError());
    await Promise.all(
      this.slots.map(async (slot) => {
        const conn = slot.conn;
        if (!conn) return;
        conn.onClose = undefined;
        await conn.close(this.closeTimeoutMs);
      }),
    );
  }

  // ---------------------------------------------------------------------------------------------------
  // Dispatch

  private ranges(offset: number, length: number): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    for (let pos = 0; pos < length; pos += this.maxIo)
      out.push([offset + pos, Math.min(this.maxIo, length - pos)]);
    return out;
  }

  private checkUsable(): void {
    if (this.broken) throw this.broken;
    if (this.closed) throw this.closedError();
  }

  private closedError(detail?: string): BackendError {
    const text = detail === undefined ? '' : ` (${detail})`;
    return new BackendError(`nbd: backend closed${text}`, { code: 'ERR_BACKEND_CLOSED', errno: 'EIO' });
  }

  private unreachableError(): BackendError {
    return new BackendError(`nbd: ${this.name} unreachable (${this.lastCause})`, {
      code: 'ERR_NBD_UNREACHABLE',
      errno: 'EIO',
    });
  }

  /** A request the server's minimum block size does not allow: failed here, never sent. */
  private unaligned(what: string, offset: number, length: number): BackendError {
    return new BackendError(
      `nbd: ${what} at ${offset}+${length} is not aligned to the server's minimum block size ${this.align} ` +
        `(use a logical block size of ${this.minIo})`,
      { code: 'ERR_NBD_UNALIGNED', errno: 'EINVAL' },
    );
  }

  private checkWritable(): void {
    this.checkUsable();
    if (this.readOnly) throw this.notWritable();
  }

  private notWritable(): BackendError {
    return this.broken ?? new BackendError(`nbd: ${this.name} is read-only`, 'EROFS');
  }

  /** Starts one request (at most maxIo bytes); the promise is the only allocation. */
  private run(
    type: number,
    flags: number,
    offset: number,
    length: number,
    data: readonly Uint8Array[] | undefined,
    dest: readonly Uint8Array[] | undefined,
  ): Promise<void> {
    if (this.broken) return Promise.reject(this.broken);
    if (this.closed) return Promise.reject(this.closedError());
    if (this.givenUp) return Promise.reject(this.unreachableError());
    const op = this.pool.pop() ?? new Op(this);
    op.type = type;
    op.flags = flags;
    op.offset = offset;
    op.length = length;
    op.data = data;
    op.dest = dest;
    op.seq = this.seq++;
    op.firstLost = undefined;
    const promise = new Promise<void>(op.executor);
    if (this.waiting.length === 0) {
      const slot = this.pickSlot();
      if (slot !== undefined) {
        this.startOn(slot, op);
        return promise;
      }
    }
    this.waiting.push(op);
    return promise;
  }

  private pickSlot(): Slot | undefined {
    let best: Slot | undefined;
    let bestLoad = this.queueDepth;
    const slots = this.slots;
    const n = slots.length;
    for (let k = 0, i = this.rr; k < n; k++, i = i + 1 === n ? 0 : i + 1) {
      const slot = slots[i]!;
      const conn = slot.conn;
      if (conn === undefined || !conn.usable) continue;
      const load = conn.inFlight;
      if (load < bestLoad) {
        best = slot;
        bestLoad = load;
      }
    }
    if (best !== undefined) this.rr = best.index + 1 === n ? 0 : best.index + 1;
    return best;
  }

  private dispatch(): void {
    while (this.waiting.length > 0) {
      const slot = this.pickSlot();
      if (!slot) return;
      this.startOn(slot, this.waiting.shift()!);
    }
  }

  private startOn(slot: Slot, op: Op): void {
    const conn = slot.conn!;
    slot.requests++;
    op.conn = conn;
    try {
      conn.start(op);
    } catch (err) {
      // A malformed request (a bug, not the server's doing).
      this.failOp(
        op,
        new BackendError(`nbd: ${errorText(err)}`, { code: 'ERR_NBD_BAD_REQUEST', cause: err }),
      );
    }
  }

  /** An op's connection answered it or failed it (called from the connection, synchronously). */
  settled(op: Op, error: Error | undefined): void {
    if (error === undefined) {
      const resolve = op.resolve!;
      this.release(op);
      resolve();
    } else {
      const conn = op.conn;
      op.conn = undefined;
      this.onOpError(conn, op, error);
    }
    if (this.waiting.length > 0) this.dispatch();
  }

  private release(op: Op): void {
    op.data = undefined;
    op.dest = undefined;
    op.conn = undefined;
    op.resolve = undefined;
    op.reject = undefined;
    this.pool.push(op);
  }

  private failOp(op: Op, error: Error): void {
    const reject = op.reject!;
    this.release(op);
    reject(error);
  }

  private onOpError(conn: NbdConnection | undefined, op: Op, err: unknown): void {
    if (this.broken) {
      this.failOp(op, this.broken);
      return;
    }
    if (err instanceof NbdServerError) {
      if (err.errno === 'ESHUTDOWN') {
        // The server is going away: drop this connection and send the request again on a new one.
        this.retryOrFail(op, `${this.name}: server is shutting down`);
        conn?.destroy(
          new NbdConnectionError(`${this.name}: server is shutting down`, { code: NBD_ERR.SHUTDOWN }),
        );
        return;
      }
      // The code follows the server's errno (ENOTSUP: the guest is told "unsupported"; ENOSPC, EIO, ...).
      this.failOp(
        op,
        new BackendError(`nbd: ${opName(op.type)} at ${op.offset}+${op.length}: ${err.message}`, {
          errno: err.errno ?? 'EIO',
          cause: err,
        }),
      );
      return;
    }
    if (err instanceof NbdConnectionError) {
      if (this.closed) {
        this.failOp(op, this.closedError(err.message));
        return;
      }
      this.lastCause = this.causeText(err);
      this.retryOrFail(op, this.lastCause);
      return;
    }
    this.failOp(op, new BackendError(`nbd: ${errorText(err)}`, { errno: 'EIO', cause: err }));
  }

  /** Queues a request whose connection failed again, unless it has been failing for the whole retry window. */
  private retryOrFail(op: Op, cause: string): void {
    const now = Date.now();
    op.firstLost ??= now;
    if (now - op.firstLost < this.retryMs) {
      this.requeue(op);
      return;
    }
    // The request keeps losing its connection (e.g. the server never answers it): stop retrying it.
    // Logged once per retry window, not once per request.
    if (now - this.lastGiveUpLog >= this.retryMs) {
      this.lastGiveUpLog = now;
      this.log(
        `${this.name}: ${opName(op.type)} at ${op.offset}+${op.length} failed on every ` +
          `connection for ${Math.round(this.retryMs / 1000)} s (last error: ${cause}); failing it with EIO`,
      );
    }
    this.failOp(
      op,
      new BackendError(`nbd: ${this.name}: request failed after retries (${cause})`, {
        code: 'ERR_NBD_RETRIES_EXHAUSTED',
        errno: 'EIO',
      }),
    );
  }

  private requeue(op: Op): void {
    if (this.givenUp) {
      this.failOp(op, this.unreachableError());
      return;
    }
    // Keep the original order among waiting requests.
    let i = this.waiting.length;
    while (i > 0 && this.waiting[i - 1]!.seq > op.seq) i--;
    this.waiting.splice(i, 0, op);
  }

  private failWaiting(error: BackendError): void {
    const ops = this.waiting.splice(0);
    for (const op of ops) this.failOp(op, error);
  }

  // ---------------------------------------------------------------------------------------------------
  // Connections, reconnects

  private attach(slot: Slot, conn: NbdConnection): void {
    slot.conn = conn;
    slot.attachedAt = Date.now();
    slot.requestsAtAttach = slot.requests;
    conn.onClose = (cause) => this.onConnectionLost(slot, conn, cause);
  }

  /**
   * Whether the slot's session, now lost, served well: it was up for `stableSessionMs` and answered a request,
   * or was never asked anything. One that did not counts as a failed attempt for the backoff.
   */
  private servedWell(slot: Slot, conn: NbdConnection, now: number): boolean {
    if (now - slot.attachedAt < this.stableSessionMs) return false;
    return conn.answered > 0 || slot.requests === slot.requestsAtAttach;
  }

  private which(slot: Slot): string {
    return this.slots.length > 1 ? ` ${slot.index + 1}/${this.slots.length}` : '';
  }

  private onConnectionLost(slot: Slot, conn: NbdConnection, cause: Error): void {
    if (slot.conn !== conn) return;
    slot.conn = undefined;
    if (this.closed || this.broken) return;
    const now = Date.now();
    this.lastCause = this.causeText(cause);
    slot.lostAt = now;
    if (this.servedWell(slot, conn, now)) {
      this.flushSummary(slot);
      slot.failures = 0;
      slot.backoff = this.backoffInitialMs;
    } else {
      slot.failures++;
    }
    const which = this.which(slot);
    if (slot.failures <= 1) {
      this.log(`${this.name}: connection${which} lost (${this.lastCause}); reconnecting`);
    } else if (slot.failures === 2) {
      this.log(
        `${this.name}: connection${which} lost again ${now - slot.attachedAt} ms after it was established ` +
          `(${this.lastCause}); reconnecting with backoff up to ${this.backoffMaxMs} ms, repeats summarised ` +
          `every ${formatSeconds(this.logSummaryMs)}`,
      );
      this.startSummary(slot, now);
    } else {
      this.suppress(slot, this.lastCause, now);
    }
    if (this.liveConnections === 0 && this.downSince === undefined) {
      this.downSince = now;
      this.giveUpTimer = setTimeout(() => this.giveUp(), this.retryMs);
    }
    this.scheduleReconnect(slot);
  }

  // Lines held back while a slot's sessions keep failing: one summary per logSummaryMs.

  private startSummary(slot: Slot, now: number): void {
    slot.suppressed = 0;
    slot.suppressedSince = now;
    if (slot.summaryTimer) clearTimeout(slot.summaryTimer);
    slot.summaryTimer = setTimeout(() => this.onSummaryTimer(slot), this.logSummaryMs);
    slot.summaryTimer.unref?.();
  }

  private suppress(slot: Slot, cause: string, now: number): void {
    if (slot.summaryTimer === undefined) this.startSummary(slot, now);
    slot.suppressed++;
    slot.suppressedCause = cause;
  }

  private onSummaryTimer(slot: Slot): void {
    slot.summaryTimer = undefined;
    if (slot.suppressed === 0) return;
    this.flushSummary(slot);
    // Sessions are still failing: keep summarising.
    if (slot.failures > 1 && !this.closed && !this.broken) this.startSummary(slot, Date.now());
  }

  /** Logs the held-back lines' summary (if any) and ends the summary window. */
  private flushSummary(slot: Slot): void {
    if (slot.summaryTimer) clearTimeout(slot.summaryTimer);
    slot.summaryTimer = undefined;
    const n = slot.suppressed;
    slot.suppressed = 0;
    if (n === 0) return;
    const seconds = formatSeconds(Date.now() - slot.suppressedSince);
    this.log(
      `${this.name}: connection${this.which(slot)} lost ${n} more time(s) soon after reconnecting in the last ` +
        `${seconds} (last error: ${slot.suppressedCause}); backoff now ${slot.backoff} ms`,
    );
  }

  private scheduleReconnect(slot: Slot): void {
    if (this.closed || this.broken || slot.timer || slot.connecting) return;
    const delay = slot.backoff;
    slot.backoff = Math.min(slot.backoff * 2, this.backoffMaxMs);
    slot.timer = setTimeout(() => {
      slot.timer = undefined;
      void this.reconnect(slot);
    }, delay);
  }

  private async reconnect(slot: Slot): Promise<void> {
    if (this.closed || this.broken) return;
    slot.connecting = true;
    let conn: NbdConnection;
    try {
      conn = await NbdConnection.connect(this.target, {
        timeoutMs: Math.min(this.timeoutMs || NBD_DEFAULT_TIMEOUT_MS, Math.max(this.retryMs, 1000)),
        requestTimeoutMs: this.timeoutMs,
      });
    } catch (err) {
      slot.connecting = false;
      this.lastCause = this.causeText(err);
      this.scheduleReconnect(slot);
      return;
    }
    slot.connecting = false;
    if (this.closed || this.broken) {
      conn.destroy(this.closedError());
      return;
    }
    const problem = this.mismatch(conn.info);
    if (problem) {
      const error = new NbdProtocolError(`nbd: ${this.name}: ${problem}; refusing it`, {
        fatal: true,
        code: NBD_ERR.EXPORT_CHANGED,
      });
      conn.destroy(error);
      this.fail(error, `${this.name}: ${problem}; refusing it`);
      return;
    }
    this.attach(slot, conn);
    const ms = slot.lostAt === undefined ? 0 : Date.now() - slot.lostAt;
    slot.lostAt = undefined;
    if (slot.failures <= 1) {
      this.log(
        `${this.name}: connection${this.which(slot)} reconnected after ${ms} ms; ` +
          `${this.waiting.length} request(s) to resend`,
      );
    }
    if (this.downSince !== undefined) {
      this.downSince = undefined;
      this.givenUp = false;
      if (this.giveUpTimer) clearTimeout(this.giveUpTimer);
      this.giveUpTimer = undefined;
    }
    this.dispatch();
  }

  /** An error's message without the `TARGET: ` prefix the connection puts first (our lines name the target). */
  private causeText(err: unknown): string {
    const text = errorText(err);
    return text.startsWith(`${this.name}: `) ? text.slice(this.name.length + 2) : text;
  }

  /** Why a reconnected server cannot be accepted, or undefined. */
  private mismatch(info: NbdExportInfo): string | undefined {
    if (info.size !== this.info.size) {
      return `export size changed from ${this.info.size} to ${info.size} bytes`;
    }
    if (!this.readOnly && (info.flags & NBD_FLAG_READ_ONLY) !== 0) return 'export became read-only';
    let limits: IoLimits;
    try {
      limits = nbdIoLimits(info);
    } catch (err) {
      return errorText(err);
    }
    if (limits.align > this.align || limits.maxIo < this.maxIo) return 'block size limits changed';
    if (this.slots.length > 1 && (info.flags & NBD_FLAG_CAN_MULTI_CONN) === 0)
      return 'server no longer allows multi-conn';
    return undefined;
  }

  private giveUp(): void {
    this.giveUpTimer = undefined;
    if (this.closed || this.broken || this.liveConnections > 0) return;
    this.givenUp = true;
    const n = this.waiting.length;
    this.log(
      `${this.name}: no connection for ${Math.round(this.retryMs / 1000)} s (last error: ${this.lastCause}); ` +
        `failing ${n} pending request(s) with EIO, still trying to reconnect`,
    );
    this.failWaiting(this.unreachableError());
  }

  /** The backend cannot go on: fail everything now and later; `line` is logged. */
  private fail(error: BackendError, line: string): void {
    if (this.broken) return;
    this.broken = error;
    this.log(line);
    if (this.giveUpTimer) clearTimeout(this.giveUpTimer);
    this.giveUpTimer = undefined;
    for (const slot of this.slots) {
      if (slot.timer) clearTimeout(slot.timer);
      slot.timer = undefined;
      this.flushSummary(slot);
      const conn = slot.conn;
      slot.conn = undefined;
      if (conn) {
        conn.onClose = undefined;
        conn.destroy(error);
      }
    }
    this.failWaiting(error);
  }
}

/** 10000 -> '10 s', 1500 -> '1.5 s'. */
function formatSeconds(ms: number): string {
  return `${Math.round(ms / 100) / 10} s`;
}

function opName(type: number): string {
  switch (type) {
    case NBD_CMD_READ:
      return 'read';
    case NBD_CMD_WRITE:
      return 'write';
    case NBD_CMD_FLUSH:
      return 'flush';
    case NBD_CMD_TRIM:
      return 'trim';
    case NBD_CMD_WRITE_ZEROES:
      return 'write zeroes';
    default:
      return `command ${type}`;
  }
}

/** Waits for every part (so no request still writes into the caller's buffers), then throws the first error. */
async function settleAll(parts: Promise<void>[]): Promise<void> {
  if (parts.length === 1) return parts[0];
  const results = await Promise.allSettled(parts);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}
