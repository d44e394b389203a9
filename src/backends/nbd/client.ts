/**
 * One NBD connection: a socket (TCP or Unix, optionally upgraded to TLS with NBD_OPT_STARTTLS) driven by the
 * sans-I/O protocol in protocol.ts. Many requests may be in flight (pipelining); each `submit()` resolves when
 * the server replied, or rejects with NbdServerError (the server answered with an error) or
 * NbdConnectionError (the connection failed; the request may or may not have been executed).
 */
import * as net from 'node:net';
import * as tls from 'node:tls';

import { NBD_CONN_ERR, NbdConnectionError, NbdError, NbdProtocolError, NbdServerError } from './errors.js';
import { NbdClientProtocol, type NbdExportInfo, type NbdRequest } from './protocol.js';

export interface NbdTlsOptions {
  /** PEM CA certificate(s) used to verify the server (default: Node's bundled CAs). */
  ca?: string | Buffer;
  /** PEM client certificate and key, for servers that verify clients. */
  cert?: string | Buffer;
  key?: string | Buffer;
  /** Name checked against the server certificate (default: the host, or 'localhost' for Unix sockets). */
  servername?: string;
  /** Do not verify the server certificate. */
  insecure?: boolean;
}

export interface NbdTarget {
  /** TCP host (with `port`), or a Unix socket path in `socketPath`. */
  host?: string;
  port?: number;
  socketPath?: string;
  exportName: string;
  /** Present: TLS is required (NBD_OPT_STARTTLS). */
  tls?: NbdTlsOptions;
}

export interface NbdConnectOptions {
  /** Bound on connecting plus the handshake, in ms (default 30000). */
  timeoutMs?: number;
  /**
   * A request without a reply for this long makes the connection count as dead (it is destroyed and its
   * requests fail with NbdConnectionError). 0 disables (default).
   */
  requestTimeoutMs?: number;
}

/** A request on a connection; the connection reports its outcome through `settle()` (no promise). */
export interface NbdConnRequest extends NbdRequest {
  /** Called once: `undefined` on success, else an NbdServerError or NbdConnectionError. */
  settle(error: Error | undefined): void;
}

/** `submit()`'s request: settles a promise. */
class PromisedRequest implements NbdConnRequest {
  readonly type: number;
  readonly flags: number | undefined;
  readonly offset: number;
  readonly length: number;
  readonly data: readonly Uint8Array[] | undefined;
  readonly dest: readonly Uint8Array[] | undefined;
  constructor(
    req: NbdRequest,
    private readonly resolve: () => void,
    private readonly reject: (err: Error) => void,
  ) {
    this.type = req.type;
    this.flags = req.flags;
    this.offset = req.offset;
    this.length = req.length;
    this.data = req.data;
    this.dest = req.dest;
  }
  settle(error: Error | undefined): void {
    if (error === undefined) this.resolve();
    else this.reject(error);
  }
}

/** Size of the buffer replies are read into (plain sockets; TLS sockets read through their own buffers). */
const RX_BUFFER = 256 * 1024;
/** Size of the buffer request headers (and small write payloads) are gathered in before a write. */
const TX_BUFFER = 64 * 1024;
/** Write payloads up to this size are copied next to their header; larger ones are sent from where they are. */
const TX_COPY_LIMIT = 16 * 1024;

export function describeTarget(target: NbdTarget): string {
  const where =
    target.socketPath !== undefined ? `unix:${target.socketPath}` : `${target.host}:${target.port}`;
  return `${target.tls ? 'nbds' : 'nbd'}://${where}/${target.exportName}`;
}

export class NbdConnection {
  private readonly protocol: NbdClientProtocol<NbdConnRequest>;
  private stream: net.Socket;
  private readonly raw: net.Socket;
  private exportInfo: NbdExportInfo | undefined;
  private closedWith: Error | undefined;
  private isClosed = false;
  private closeWaiters: Array<() => void> = [];
  /** Reply timeout: a coarse clock (ticks of `tickMs`) stamped on each request, advanced by `timer`. */
  private timer: NodeJS.Timeout | undefined;
  private tick = 0;
  private tickMs = 0;
  private handshake:
    | { resolve: (info: NbdExportInfo) => void; reject: (err: Error) => void; timer: NodeJS.Timeout }
    | undefined;
  /** Requests the server answered successfully on this connection. */
  answered = 0;
  /** Called once when the connection ends for any reason other than close(). */
  onClose: ((cause: Error) => void) | undefined;
  private closing = false;

  // Outgoing requests of the current synchronous run, written in one go from a microtask: headers (and small
  // write payloads) are gathered in `tx` from `txStart` to `txEnd`; `txChunks` holds the finished pieces
  // when a large payload is sent from where it is.
  private tx: Buffer = Buffer.allocUnsafeSlow(TX_BUFFER);
  private txStart = 0;
  private txEnd = 0;
  private readonly txChunks: Uint8Array[] = [];
  private flushQueued = false;

  private constructor(
    readonly target: NbdTarget,
    private readonly options: NbdConnectOptions,
  ) {
    this.protocol = new NbdClientProtocol<NbdConnRequest>(
      {
        send: (chunks) => this.write(chunks),
        sendRequest: (header, data) => this.queueRequest(header, data),
        startTls: () => this.startTls(),
        ready: (info) => this.onReady(info),
        reply: (_cookie, error, req) => {
          if (error === undefined) this.answered++;
          req.settle(error ? new NbdServerError(error) : undefined);
        },
        failed: (error) =>
          this.destroy(
            new NbdConnectionError(error.message, { fatal: error.fatal, code: error.code, cause: error }),
          ),
      },
      { exportName: target.exportName, tls: target.tls !== undefined },
    );
    // Without TLS, replies are read into one reusable buffer and parsed in place (no Buffer and no stream
    // event per read); with TLS, the TLS socket's 'data' events feed the protocol.
    const onread =
      target.tls === undefined
        ? {
            buffer: Buffer.allocUnsafeSlow(RX_BUFFER),
            callback: (n: number, buf: Uint8Array): boolean => {
              this.protocol.receive(buf, n);
              return true;
            },
          }
        : undefined;
    this.raw =
      target.socketPath !== undefined
        ? net.connect({ path: target.socketPath, ...(onread ? { onread } : {}) })
        : net.connect({
            host: target.host ?? '127.0.0.1',
            port: target.port ?? 10809,
            ...(onread ? { onread } : {}),
          });
    this.stream = this.raw;
    this.raw.setNoDelay?.(true);
    if (!onread) this.raw.on('data', this.onData);
    this.raw.on('error', (err) =>
      this.destroy(new NbdConnectionError(`${describeTarget(target)}: ${err.message}`, { cause: err })),
    );
    this.raw.on('close', () => this.onSocketClose());
  }

  /** Connects and runs the handshake; resolves once the transmission phase is entered. */
  static connect(target: NbdTarget, options: NbdConnectOptions = {}): Promise<NbdConnection> {
    const conn = new NbdConnection(target, options);
    return new Promise<NbdConnection>((resolve, reject) => {
      const timer = setTimeout(
        () =>
          conn.destroy(
            new NbdConnectionError(`${describeTarget(target)}: handshake timed out`, {
              code: NBD_CONN_ERR.TIMEOUT,
              errno: 'ETIMEDOUT',
            }),
          ),
        options.timeoutMs ?? 30000,
      );
      conn.handshake = { resolve: () => resolve(conn), reject, timer };
    });
  }

  get info(): NbdExportInfo {
    if (!this.exportInfo) throw new NbdError('ERR_NBD_BAD_REQUEST', 'NBD connection not ready');
    return this.exportInfo;
  }

  get closed(): boolean {
    return this.isClosed || this.closedWith !== undefined;
  }

  /** True while requests can be started. */
  get usable(): boolean {
    return this.closedWith === undefined && !this.isClosed && !this.closing && this.protocol.isReady;
  }

  get inFlight(): number {
    return this.protocol.inFlightCount;
  }

  /**
   * Sends a request; `req.settle()` is called once with the outcome (never from inside this call).
   * Returns false, without sending, when the connection is not usable. Throws if the request is malformed.
   */
  start(req: NbdConnRequest): boolean {
    if (!this.usable) return false;
    this.protocol.request(req, this.tick);
    if (this.timer === undefined) this.armTimer();
    return true;
  }

  /** Sends a request; resolves on a successful reply. */
  submit(req: NbdRequest): Promise<void> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    if (!this.usable) {
      return Promise.reject(
        new NbdConnectionError('NBD connection is closing', { code: NBD_CONN_ERR.CLOSED }),
      );
    }
    return new Promise<void>((resolve, reject) => {
      this.start(new PromisedRequest(req, resolve, reject));
    });
  }

  /** Sends NBD_CMD_DISC (after in-flight requests are answered, bounded by `waitMs`) and closes. */
  async close(waitMs = 5000): Promise<void> {
    if (this.closed) return;
    this.closing = true;
    if (this.inFlight > 0) {
      const deadline = Date.now() + waitMs;
      while (this.inFlight > 0 && !this.closed && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 10));
      }
    }
    if (this.closed) return;
    this.protocol.disconnect();
    const done = new Promise<void>((resolve) => this.closeWaiters.push(resolve));
    this.stream.end();
    const t = setTimeout(
      () => this.destroy(new NbdConnectionError('closed', { code: NBD_CONN_ERR.CLOSED })),
      waitMs,
    );
    await done;
    clearTimeout(t);
  }

  /** Drops the connection at once; pending requests fail with `cause`. */
  destroy(cause: Error): void {
    if (this.closedWith) return;
    this.closedWith =
      cause instanceof NbdConnectionError
        ? cause
        : new NbdConnectionError(cause.message, {
            ...(cause instanceof NbdError ? { code: cause.code, fatal: cause.fatal } : {}),
            cause,
          });
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.stream.destroy();
    if (this.stream !== this.raw) this.raw.destroy();
    this.failAll();
  }

  private failAll(): void {
    const err = this.closedWith ?? new NbdConnectionError('connection closed', { code: NBD_CONN_ERR.CLOSED });
    if (this.handshake) {
      clearTimeout(this.handshake.timer);
      const { reject } = this.handshake;
      this.handshake = undefined;
      reject(err);
    }
    this.txChunks.length = 0;
    this.txStart = this.txEnd = 0;
    for (const req of this.protocol.takeInFlight()) req.settle(err);
  }

  private readonly onData = (data: Buffer): void => {
    this.protocol.receive(data);
  };

  private onSocketClose(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    const wasClean = this.closedWith === undefined && this.closing;
    if (!this.closedWith) {
      this.protocol.connectionClosed();
      if (!this.closedWith) {
        this.closedWith = new NbdConnectionError(
          this.closing
            ? 'connection closed'
            : `${describeTarget(this.target)}: connection closed by the server`,
          { code: NBD_CONN_ERR.CLOSED },
        );
      }
    }
    this.failAll();
    for (const w of this.closeWaiters) w();
    this.closeWaiters = [];
    if (!wasClean && !this.closing) this.onClose?.(this.closedWith);
  }

  /** Handshake messages and NBD_CMD_DISC: written at once (after any requests still gathered). */
  private write(chunks: readonly Uint8Array[]): void {
    if (this.closedWith) return;
    this.flush();
    this.stream.cork();
    for (const c of chunks) this.stream.write(c);
    this.stream.uncork();
  }

  /**
   * Requests sent in the same synchronous run (a device drains its ring in one go) leave in one write, from
   * the microtask after them (which runs before the event loop goes on).
   */
  private queueRequest(header: Uint8Array, data: readonly Uint8Array[] | undefined): void {
    if (this.closedWith) return;
    let copy = 0;
    let large = false;
    if (data !== undefined) {
      for (let i = 0; i < data.length; i++) copy += data[i]!.length;
      if (copy > TX_COPY_LIMIT) {
        large = true;
        copy = 0;
      }
    }
    if (this.txEnd + 28 + copy > this.tx.length) this.newTxBuffer(28 + copy);
    const tx = this.tx;
    tx.set(header, this.txEnd);
    this.txEnd += 28;
    if (data !== undefined) {
      if (large) {
        this.sealTx();
        for (let i = 0; i < data.length; i++) this.txChunks.push(data[i]!);
      } else {
        for (let i = 0; i < data.length; i++) {
          tx.set(data[i]!, this.txEnd);
          this.txEnd += data[i]!.length;
        }
      }
    }
    if (!this.flushQueued) {
      this.flushQueued = true;
      queueMicrotask(this.flush);
    }
  }

  /** The gathered bytes become a chunk of their own (what follows goes after them in `tx`). */
  private sealTx(): void {
    if (this.txEnd > this.txStart) this.txChunks.push(this.tx.subarray(this.txStart, this.txEnd));
    this.txStart = this.txEnd;
  }

  /** Continues in a fresh buffer (the old one may still be referenced by writes not yet done). */
  private newTxBuffer(need: number): void {
    this.sealTx();
    this.tx = Buffer.allocUnsafeSlow(Math.max(TX_BUFFER, need));
    this.txStart = this.txEnd = 0;
  }

  private readonly flush = (): void => {
    this.flushQueued = false;
    if (this.closedWith) return;
    this.sealTx();
    const chunks = this.txChunks;
    if (chunks.length === 0) return;
    const stream = this.stream;
    if (chunks.length === 1) {
      stream.write(chunks[0]!);
    } else {
      stream.cork();
      for (let i = 0; i < chunks.length; i++) stream.write(chunks[i]!);
      stream.uncork();
    }
    chunks.length = 0;
    // Everything went to the kernel: `tx` is free again from the start (else the writes still reference it
    // and later requests go after them, or into a new buffer).
    if (stream.writableLength === 0) this.txStart = this.txEnd = 0;
  };

  private startTls(): void {
    const t = this.target.tls ?? {};
    const servername =
      t.servername ?? (this.target.socketPath !== undefined ? 'localhost' : this.target.host);
    this.raw.off('data', this.onData);
    const secure = tls.connect({
      socket: this.raw,
      ca: t.ca,
      cert: t.cert,
      key: t.key,
      servername: servername !== undefined && net.isIP(servername) === 0 ? servername : undefined,
      rejectUnauthorized: !t.insecure,
      checkServerIdentity: (_host, cert) => tls.checkServerIdentity(servername ?? 'localhost', cert),
      minVersion: 'TLSv1.2',
    });
    this.stream = secure;
    secure.on('data', this.onData);
    secure.on('error', (err) =>
      this.destroy(
        new NbdConnectionError(`${describeTarget(this.target)}: TLS: ${err.message}`, {
          fatal: !this.protocol.isReady,
          code: 'ERR_NBD_TLS',
          cause: err,
        }),
      ),
    );
    secure.on('close', () => this.onSocketClose());
    secure.once('secureConnect', () => {
      if (this.closedWith) return;
      try {
        this.protocol.tlsStarted();
      } catch (err) {
        this.destroy(err instanceof Error ? err : new NbdConnectionError(String(err)));
      }
    });
  }

  private onReady(info: NbdExportInfo): void {
    this.exportInfo = info;
    if (this.handshake) {
      clearTimeout(this.handshake.timer);
      const { resolve } = this.handshake;
      this.handshake = undefined;
      resolve(info);
    }
  }

  /**
   * Requests are stamped with `tick`, which this timer advances every `tickMs` (a quarter of the limit) while
   * requests are in flight: a request is overdue once more than `limit` has surely passed since it was sent.
   */
  private armTimer(): void {
    const limit = this.options.requestTimeoutMs ?? 0;
    if (limit <= 0 || this.timer) return;
    this.tickMs = Math.max(10, Math.min(1000, Math.floor(limit / 4)));
    const ticks = Math.ceil(limit / this.tickMs);
    this.timer = setInterval(() => {
      this.tick++;
      const oldest = this.protocol.oldestStamp();
      if (oldest === undefined) {
        clearInterval(this.timer);
        this.timer = undefined;
        return;
      }
      if (this.tick - oldest > ticks) {
        this.destroy(
          new NbdConnectionError(`${describeTarget(this.target)}: no reply for ${limit} ms`, {
            code: NBD_CONN_ERR.TIMEOUT,
            errno: 'ETIMEDOUT',
          }),
        );
      }
    }, this.tickMs);
    this.timer.unref();
  }
}

export { NbdConnectionError, NbdProtocolError, NbdServerError };
