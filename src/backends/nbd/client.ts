/**
 * One NBD connection: a socket (TCP or Unix, optionally upgraded to TLS with NBD_OPT_STARTTLS) driven by the
 * sans-I/O protocol in protocol.ts. Many requests may be in flight (pipelining); each `submit()` resolves when
 * the server replied, or rejects with NbdServerError (the server answered with an error) or
 * NbdConnectionError (the connection failed; the request may or may not have been executed).
 */
import * as net from 'node:net';
import * as tls from 'node:tls';

import {
  NbdClientProtocol,
  NbdProtocolError,
  type NbdExportInfo,
  type NbdReplyError,
  type NbdRequest,
} from './protocol.js';

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

/** The server answered a request with an error. */
export class NbdServerError extends Error {
  /** NBD error name ('EIO', 'ENOSPC', ...). */
  readonly code: string;
  readonly value: number;
  readonly offset: number | undefined;
  constructor(error: NbdReplyError) {
    super(error.message ? `${error.name}: ${error.message}` : error.name);
    this.name = 'NbdServerError';
    this.code = error.name;
    this.value = error.value;
    this.offset = error.offset;
  }
}

/** The connection failed or was closed; `fatal` when reconnecting cannot help (configuration, policy). */
export class NbdConnectionError extends Error {
  constructor(
    message: string,
    readonly fatal = false,
  ) {
    super(message);
    this.name = 'NbdConnectionError';
  }
}

interface Pending {
  resolve: () => void;
  reject: (err: Error) => void;
  sentAt: number;
}

export function describeTarget(target: NbdTarget): string {
  const where =
    target.socketPath !== undefined ? `unix:${target.socketPath}` : `${target.host}:${target.port}`;
  return `${target.tls ? 'nbds' : 'nbd'}://${where}/${target.exportName}`;
}

export class NbdConnection {
  private readonly protocol: NbdClientProtocol;
  private stream: net.Socket;
  private readonly raw: net.Socket;
  private readonly pending = new Map<number, Pending>();
  private exportInfo: NbdExportInfo | undefined;
  private closedWith: Error | undefined;
  private isClosed = false;
  private closeWaiters: Array<() => void> = [];
  private timer: NodeJS.Timeout | undefined;
  private handshake:
    | { resolve: (info: NbdExportInfo) => void; reject: (err: Error) => void; timer: NodeJS.Timeout }
    | undefined;
  /** Called once when the connection ends for any reason other than close(). */
  onClose: ((cause: Error) => void) | undefined;
  private closing = false;

  private constructor(
    readonly target: NbdTarget,
    private readonly options: NbdConnectOptions,
  ) {
    this.protocol = new NbdClientProtocol(
      {
        send: (chunks) => this.write(chunks),
        startTls: () => this.startTls(),
        ready: (info) => this.onReady(info),
        reply: (cookie, error) => this.onReply(cookie, error),
        failed: (error) => this.destroy(new NbdConnectionError(error.message, error.fatal)),
      },
      { exportName: target.exportName, tls: target.tls !== undefined },
    );
    this.raw =
      target.socketPath !== undefined
        ? net.connect({ path: target.socketPath })
        : net.connect({ host: target.host ?? '127.0.0.1', port: target.port ?? 10809 });
    this.stream = this.raw;
    this.raw.setNoDelay?.(true);
    this.raw.on('data', this.onData);
    this.raw.on('error', (err) =>
      this.destroy(new NbdConnectionError(`${describeTarget(target)}: ${err.message}`)),
    );
    this.raw.on('close', () => this.onSocketClose());
  }

  /** Connects and runs the handshake; resolves once the transmission phase is entered. */
  static connect(target: NbdTarget, options: NbdConnectOptions = {}): Promise<NbdConnection> {
    const conn = new NbdConnection(target, options);
    return new Promise<NbdConnection>((resolve, reject) => {
      const timer = setTimeout(
        () => conn.destroy(new NbdConnectionError(`${describeTarget(target)}: handshake timed out`)),
        options.timeoutMs ?? 30000,
      );
      conn.handshake = { resolve: () => resolve(conn), reject, timer };
    });
  }

  get info(): NbdExportInfo {
    if (!this.exportInfo) throw new Error('NBD connection not ready');
    return this.exportInfo;
  }

  get closed(): boolean {
    return this.isClosed || this.closedWith !== undefined;
  }

  get inFlight(): number {
    return this.pending.size;
  }

  /** Sends a request; resolves on a successful reply. */
  submit(req: NbdRequest): Promise<void> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    if (this.closing || !this.protocol.isReady) {
      return Promise.reject(new NbdConnectionError('NBD connection is closing'));
    }
    return new Promise<void>((resolve, reject) => {
      const cookie = this.protocol.request(req);
      this.pending.set(cookie, { resolve, reject, sentAt: Date.now() });
      this.armTimer();
    });
  }

  /** Sends NBD_CMD_DISC (after in-flight requests are answered, bounded by `waitMs`) and closes. */
  async close(waitMs = 5000): Promise<void> {
    if (this.closed) return;
    this.closing = true;
    if (this.pending.size > 0) {
      const deadline = Date.now() + waitMs;
      while (this.pending.size > 0 && !this.closed && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 10));
      }
    }
    if (this.closed) return;
    this.protocol.disconnect();
    const done = new Promise<void>((resolve) => this.closeWaiters.push(resolve));
    this.stream.end();
    const t = setTimeout(() => this.destroy(new NbdConnectionError('closed')), waitMs);
    await done;
    clearTimeout(t);
  }

  /** Drops the connection at once; pending requests fail with `cause`. */
  destroy(cause: Error): void {
    if (this.closedWith) return;
    this.closedWith = cause instanceof NbdConnectionError ? cause : new NbdConnectionError(cause.message);
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.stream.destroy();
    if (this.stream !== this.raw) this.raw.destroy();
    this.failAll();
  }

  private failAll(): void {
    const err = this.closedWith ?? new NbdConnectionError('connection closed');
    if (this.handshake) {
      clearTimeout(this.handshake.timer);
      const { reject } = this.handshake;
      this.handshake = undefined;
      reject(err);
    }
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) p.reject(err);
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
        );
      }
    }
    this.failAll();
    for (const w of this.closeWaiters) w();
    this.closeWaiters = [];
    if (!wasClean && !this.closing) this.onClose?.(this.closedWith);
  }

  private write(chunks: readonly Uint8Array[]): void {
    if (this.closedWith) return;
    if (this.exportInfo === undefined) {
      // handshake (and STARTTLS): one message at a time, nothing held back
      this.stream.cork();
      for (const c of chunks) this.stream.write(c);
      this.stream.uncork();
      return;
    }
    // Requests sent in the same synchronous run (a device drains its ring in one go) leave in one writev:
    // the stream stays corked until the microtask after them, which runs before the event loop goes on.
    if (this.corkedStream === null) {
      this.corkedStream = this.stream;
      this.stream.cork();
      queueMicrotask(this.uncork);
    }
    for (const c of chunks) this.stream.write(c);
  }

  private corkedStream: net.Socket | null = null;
  private readonly uncork = (): void => {
    const stream = this.corkedStream;
    this.corkedStream = null;
    stream?.uncork();
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
        new NbdConnectionError(`${describeTarget(this.target)}: TLS: ${err.message}`, !this.protocol.isReady),
      ),
    );
    secure.on('close', () => this.onSocketClose());
    secure.once('secureConnect', () => {
      if (this.closedWith) return;
      try {
        this.protocol.tlsStarted();
      } catch (err) {
        this.destroy(err instanceof Error ? err : new Error(String(err)));
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

  private onReply(cookie: number, error: NbdReplyError | undefined): void {
    const p = this.pending.get(cookie);
    if (!p) return;
    this.pending.delete(cookie);
    if (error) p.reject(new NbdServerError(error));
    else p.resolve();
  }

  private armTimer(): void {
    const limit = this.options.requestTimeoutMs ?? 0;
    if (limit <= 0 || this.timer) return;
    const period = Math.max(10, Math.min(1000, Math.floor(limit / 4)));
    this.timer = setInterval(() => {
      const first = this.pending.values().next();
      if (first.done) {
        clearInterval(this.timer);
        this.timer = undefined;
        return;
      }
      if (Date.now() - first.value.sentAt >= limit) {
        this.destroy(new NbdConnectionError(`${describeTarget(this.target)}: no reply for ${limit} ms`));
      }
    }, period);
    this.timer.unref();
  }
}

export { NbdProtocolError };
