/**
 * The `nbd` block backend: storage on an NBD server, over one or more connections.
 *
 * - Several connections when the server sets NBD_FLAG_CAN_MULTI_CONN; each request goes to the connection with
 *   the fewest requests in flight, up to `queueDepth` in flight per connection (pipelining).
 * - Reads and writes are split at the server's maximum block size (and at 32 MiB when it sends none).
 * - Nothing is lost when a connection drops: its unanswered requests are sent again once a connection is back
 *   (reconnecting with backoff, 100 ms doubling to 2 s). A request completes only after the server answered it.
 *   If no connection comes back within the retry window (default 60 s), waiting requests fail with EIO and the
 *   cause is logged once. A server that comes back with another size, read-only when it was writable, or
 *   tighter block size limits is refused: pending and later requests fail.
 */
import { readFileSync } from 'node:fs';

import { BackendError, type BackendCapabilities, type BlockBackend } from '../backend.js';
import {
  NbdConnection,
  NbdConnectionError,
  type NbdConnRequest,
  NbdServerError,
  describeTarget,
  type NbdTarget,
  type NbdTlsOptions,
} from './client.js';
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

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export class NbdBackend implements BlockBackend {
  readonly size: number;
  readonly readOnly: boolean;
  readonly capabilities: BackendCapabilities;
  /** The server's answer to the first handshake. */
  readonly info: NbdExportInfo;
  /** Largest read/write/trim/zero length sent in one request. */
  readonly maxIo: number;
  readonly minIo: number;

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
    const info = first.info;
    this.info = info;
    const flags = info.flags;
    this.minIo = Math.max(512, info.minBlockSize);
    const max = Math.min(info.maxBlockSize, NBD_DEFAULT_MAX_IO);
    this.maxIo = Math.max(this.minIo, max - (max % this.minIo));
    this.size = info.size - (info.size % this.minIo);
    this.readOnly = (options.readOnly ?? false) || (flags & NBD_FLAG_READ_ONLY) !== 0;
    const can = (bit: number): boolean => (flags & bit) !== 0;
    this.capabilities = {
      flush: can(NBD_FLAG_SEND_FLUSH),
      discard: can(NBD_FLAG_SEND_TRIM),
      writeZeroes: can(NBD_FLAG_SEND_WRITE_ZEROES),
      writeZeroesUnmap: can(NBD_FLAG_SEND_WRITE_ZEROES),
      secureErase: false,
      minIoSize: this.minIo,
      optIoSize: info.preferredBlockSize > this.minIo ? info.preferredBlockSize : 0,
      discardAlignment: 0,
    };
    for (let i = 0; i < connectionCount; i++) {
      this.slots.push({
        index: i,
        conn: undefined,
        connecting: false,
        timer: undefined,
        backoff: this.backoffInitialMs,
        requests: 0,
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
      throw new BackendError(`nbd: cannot connect to ${describeTarget(target)}: ${errorText(err)}`, 'EIO');
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
            conn.destroy(new Error(problem));
            throw new Error(problem);
          }
          backend.attach(slot, conn);
        }),
      );
      const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) {
        await backend.close();
        throw new BackendError(
          `nbd: cannot open ${count} connections to ${describeTarget(target)}: ${errorText(failed.reason)}`,
          'EIO',
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
        throw new BackendError(`nbd: cannot read TLS ${what} file ${path}: ${errorText(err)}`, 'EINVAL');
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
    await settleAll(
      this.ranges(offset, length).map(([o, n]) => this.run(NBD_CMD_TRIM, 0, o, n, undefined, undefined)),
    );
  }

  async writeZeroes(offset: number, length: number, options?: { unmap?: boolean }): Promise<void> {
    this.checkWritable();
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
    }
    this.failWaiting(new BackendError('nbd: backend closed', 'EIO'));
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
    if (this.closed) throw new BackendError('nbd: backend closed', 'EIO');
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
    if (this.closed) return Promise.reject(new BackendError('nbd: backend closed', 'EIO'));
    if (this.givenUp) {
      return Promise.reject(new BackendError(`nbd: ${this.name} unreachable (${this.lastCause})`, 'EIO'));
    }
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
      this.failOp(op, new BackendError(`nbd: ${errorText(err)}`, 'EIO'));
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
      if (err.code === 'ESHUTDOWN') {
        // The server is going away: drop this connection and send the request again on a new one.
        this.retryOrFail(op, `${this.name}: server is shutting down`);
        conn?.destroy(new NbdConnectionError(`${this.name}: server is shutting down`));
        return;
      }
      this.failOp(
        op,
        new BackendError(`nbd: ${opName(op.type)} at ${op.offset}+${op.length}: ${err.message}`, err.code),
      );
      return;
    }
    if (err instanceof NbdConnectionError) {
      if (this.closed) {
        this.failOp(op, new BackendError(`nbd: backend closed (${err.message})`, 'EIO'));
        return;
      }
      this.lastCause = this.causeText(err);
      this.retryOrFail(op, this.lastCause);
      return;
    }
    this.failOp(op, new BackendError(`nbd: ${errorText(err)}`, 'EIO'));
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
    this.failOp(op, new BackendError(`nbd: ${this.name}: request failed after retries (${cause})`, 'EIO'));
  }

  private requeue(op: Op): void {
    if (this.givenUp) {
      this.failOp(op, new BackendError(`nbd: ${this.name} unreachable (${this.lastCause})`, 'EIO'));
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
    slot.backoff = this.backoffInitialMs;
    conn.onClose = (cause) => this.onConnectionLost(slot, conn, cause);
  }

  private onConnectionLost(slot: Slot, conn: NbdConnection, cause: Error): void {
    if (slot.conn !== conn) return;
    slot.conn = undefined;
    if (this.closed || this.broken) return;
    this.lastCause = this.causeText(cause);
    slot.lostAt = Date.now();
    const which = this.slots.length > 1 ? ` ${slot.index + 1}/${this.slots.length}` : '';
    this.log(`${this.name}: connection${which} lost (${this.lastCause}); reconnecting`);
    if (this.liveConnections === 0 && this.downSince === undefined) {
      this.downSince = Date.now();
      this.giveUpTimer = setTimeout(() => this.giveUp(), this.retryMs);
    }
    this.scheduleReconnect(slot);
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
      conn.destroy(new Error('backend closed'));
      return;
    }
    const problem = this.mismatch(conn.info);
    if (problem) {
      conn.destroy(new Error(problem));
      this.fail(new BackendError(`nbd: ${this.name}: ${problem}; refusing it`, 'EIO'));
      return;
    }
    this.attach(slot, conn);
    const which = this.slots.length > 1 ? ` ${slot.index + 1}/${this.slots.length}` : '';
    const ms = slot.lostAt === undefined ? 0 : Date.now() - slot.lostAt;
    slot.lostAt = undefined;
    this.log(
      `${this.name}: connection${which} reconnected after ${ms} ms; ${this.waiting.length} request(s) to resend`,
    );
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
    if (
      Math.max(512, info.minBlockSize) > this.minIo ||
      Math.min(info.maxBlockSize, NBD_DEFAULT_MAX_IO) < this.maxIo
    ) {
      return 'block size limits changed';
    }
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
    this.failWaiting(new BackendError(`nbd: ${this.name} unreachable (${this.lastCause})`, 'EIO'));
  }

  /** The backend cannot go on: fail everything now and later. */
  private fail(error: BackendError): void {
    if (this.broken) return;
    this.broken = error;
    this.log(error.message.replace(/^nbd: /, ''));
    if (this.giveUpTimer) clearTimeout(this.giveUpTimer);
    this.giveUpTimer = undefined;
    for (const slot of this.slots) {
      if (slot.timer) clearTimeout(slot.timer);
      slot.timer = undefined;
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
