/**
 * JSON-RPC 2.0 over a stream socket, one request (or batch) per line, one response per line.
 *
 * handleRequestLine() is plain code (text in, text out) so every malformed input is unit-tested without a
 * socket; RpcServer adds the Unix socket (mode 0600) and the limits that keep one client from hurting the
 * daemon: a line size limit (a longer line gets an error and the connection is closed), a batch size limit, a
 * connection limit, an idle timeout, and back-pressure (a client that does not read its answers is not read
 * from either, so its answers cannot pile up in memory). Requests on one connection are answered in order. A
 * client that goes away mid-request harms nothing: the call finishes and its answer is dropped.
 *
 * This is the RPC edge of the error model: methods throw VduseTsErrors with string codes, and errorResponse()
 * turns them into JSON-RPC error numbers (RPC_ERROR_NUMBERS; the string code goes along as error.data.code);
 * rpcCall() maps an error answer back (RpcCallError, or a UsageError for invalid params).
 */
import { chmodSync, existsSync, lstatSync, unlinkSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';

import { UsageError, VduseTsError, messageOf, type VduseTsErrorOptions } from '../../common/errors.js';
import { MgmtError } from './errors.js';
import { checkDaemonPath, makeDaemonDir } from './paths.js';

export const PARSE_ERROR = -32700;
export const INVALID_REQUEST = -32600;
export const METHOD_NOT_FOUND = -32601;
export const INVALID_PARAMS = -32602;
export const INTERNAL_ERROR = -32603;
/** Server errors (implementation-defined range -32000..-32099). */
export const OPERATION_FAILED = -32000;
export const NO_SUCH_DEVICE = -32001;
export const DEVICE_EXISTS = -32002;
export const NOT_PERMITTED = -32003;
export const DEVICE_BUSY = -32004;
export const TOO_MANY_CONNECTIONS = -32005;

export type RpcErrorCode =
  | 'ERR_RPC_PARSE'
  | 'ERR_RPC_INVALID_REQUEST'
  | 'ERR_RPC_METHOD_NOT_FOUND'
  | 'ERR_RPC_INVALID_PARAMS'
  | 'ERR_RPC_TOO_MANY_CONNECTIONS'
  /** Client side: nobody listens on the socket, or it cannot be opened. */
  | 'ERR_RPC_UNREACHABLE'
  /** Client side: no answer in time. */
  | 'ERR_RPC_TIMEOUT'
  /** Client side: the daemon sent something that is not a JSON-RPC answer, or closed the connection. */
  | 'ERR_RPC_PROTOCOL';

/** The JSON-RPC error number of each stable error code (what is not here: -32602 for a UsageError, else -32000). */
export const RPC_ERROR_NUMBERS: Readonly<Record<string, number>> = {
  ERR_RPC_PARSE: PARSE_ERROR,
  ERR_RPC_INVALID_REQUEST: INVALID_REQUEST,
  ERR_RPC_METHOD_NOT_FOUND: METHOD_NOT_FOUND,
  ERR_RPC_INVALID_PARAMS: INVALID_PARAMS,
  ERR_RPC_TOO_MANY_CONNECTIONS: TOO_MANY_CONNECTIONS,
  ERR_MGMT_NO_SUCH_DEVICE: NO_SUCH_DEVICE,
  ERR_MGMT_DEVICE_EXISTS: DEVICE_EXISTS,
  ERR_MGMT_NOT_PERMITTED: NOT_PERMITTED,
  ERR_MGMT_DEVICE_BUSY: DEVICE_BUSY,
};

/** The code a JSON-RPC error number stands for when an answer carries no code of its own. */
const CODE_OF_NUMBER: ReadonlyMap<number, string> = new Map(
  Object.entries(RPC_ERROR_NUMBERS).map(([code, n]) => [n, code]),
);

/** The JSON-RPC error number for anything a method threw. */
export function rpcErrorNumber(err: unknown): number {
  if (err instanceof VduseTsError) {
    const n = RPC_ERROR_NUMBERS[err.code];
    if (n !== undefined) return n;
    if (err instanceof UsageError) return INVALID_PARAMS;
  }
  return OPERATION_FAILED;
}

/** A protocol-level failure of the JSON-RPC edge (either side). */
export class RpcError extends VduseTsError {
  declare readonly code: RpcErrorCode;
  constructor(code: RpcErrorCode, message: string, options: VduseTsErrorOptions = {}) {
    super(code, message, options);
  }
}

/** An error answered by the daemon: its code mapped back (error.data.code, or from the number), number and message. */
export class RpcCallError extends VduseTsError {
  constructor(
    code: string,
    /** The JSON-RPC error number as sent. */
    readonly rpcCode: number,
    message: string,
  ) {
    super(code, message);
  }
}

/** The error an answer's `error` member stands for: invalid params are the asker's mistake (a UsageError). */
export function errorFromAnswer(error: { code: number; message: string; data?: unknown }): VduseTsError {
  const sent = (error.data as { code?: unknown } | undefined)?.code;
  const code =
    typeof sent === 'string' && /^ERR_[A-Z0-9_]+$/.test(sent)
      ? sent
      : (CODE_OF_NUMBER.get(error.code) ?? 'ERR_RPC_CALL');
  if (error.code === INVALID_PARAMS) return new UsageError(error.message, { code });
  return new RpcCallError(code, error.code, error.message);
}

export const DEFAULT_MAX_LINE_BYTES = 1 << 20;
/** Requests in one batch. */
export const DEFAULT_MAX_BATCH = 128;
/** Connections open at once; one more is answered with an error and closed. */
export const DEFAULT_MAX_CONNECTIONS = 64;
/** A connection with nothing to answer that sends nothing for this long is closed. */
export const DEFAULT_IDLE_TIMEOUT_MS = 5 * 60_000;
/** Requests read from one connection and not yet answered; reading pauses beyond that. */
export const DEFAULT_MAX_PENDING = 32;

export type RpcId = string | number | null;
export type RpcMethod = (params: unknown) => unknown;
export type RpcMethods = Readonly<Record<string, RpcMethod>>;

interface Response {
  jsonrpc: '2.0';
  id: RpcId;
  result?: unknown;
  error?: { code: number; message: string; data?: unknown };
}

function errorResponse(id: RpcId, err: unknown): Response {
  const error: NonNullable<Response['error']> = { code: rpcErrorNumber(err), message: messageOf(err) };
  if (err instanceof VduseTsError) error.data = { code: err.code };
  return { jsonrpc: '2.0', id, error };
}

function validId(id: unknown): id is RpcId {
  return id === null || typeof id === 'string' || (typeof id === 'number' && Number.isFinite(id));
}

const invalid = (message: string): RpcError => new RpcError('ERR_RPC_INVALID_REQUEST', message);

/** One request object; null for a notification (no id: no answer). */
async function handleOne(request: unknown, methods: RpcMethods): Promise<Response | null> {
  if (typeof request !== 'object' || request === null || Array.isArray(request)) {
    return errorResponse(null, invalid('invalid request: expected a JSON object'));
  }
  const r = request as Record<string, unknown>;
  const hasId = 'id' in r;
  const id: RpcId = hasId && validId(r.id) ? r.id : null;
  if (r.jsonrpc !== '2.0') {
    return errorResponse(id, invalid('invalid request: "jsonrpc" must be "2.0"'));
  }
  if (hasId && !validId(r.id)) {
    return errorResponse(null, invalid('invalid request: "id" must be a string, number or null'));
  }
  if (typeof r.method !== 'string') {
    return errorResponse(id, invalid('invalid request: "method" must be a string'));
  }
  if (r.params !== undefined && (typeof r.params !== 'object' || r.params === null)) {
    return errorResponse(id, invalid('invalid request: "params" must be an object or array'));
  }
  const method = Object.hasOwn(methods, r.method) ? methods[r.method] : undefined;
  if (method === undefined) {
    return hasId
      ? errorResponse(id, new RpcError('ERR_RPC_METHOD_NOT_FOUND', `method not found: ${r.method}`))
      : null;
  }
  try {
    const result = await method(r.params ?? {});
    return hasId ? { jsonrpc: '2.0', id, result: result === undefined ? null : result } : null;
  } catch (err) {
    return hasId ? errorResponse(id, err) : null;
  }
}

/** Answer one line; null when nothing is to be sent (notifications only). */
export async function handleRequestLine(
  line: string,
  methods: RpcMethods,
  maxBatch = DEFAULT_MAX_BATCH,
): Promise<string | null> {
  let doc: unknown;
  try {
    doc = JSON.parse(line);
  } catch (err) {
    return JSON.stringify(
      errorResponse(null, new RpcError('ERR_RPC_PARSE', `parse error: ${messageOf(err)}`)),
    );
  }
  if (Array.isArray(doc)) {
    if (doc.length === 0) return JSON.stringify(errorResponse(null, invalid('invalid request: empty batch')));
    if (doc.length > maxBatch) {
      return JSON.stringify(
        errorResponse(
          null,
          invalid(`invalid request: a batch of ${doc.length} requests; at most ${maxBatch}`),
        ),
      );
    }
    const answers = (await Promise.all(doc.map((r) => handleOne(r, methods)))).filter((a) => a !== null);
    return answers.length > 0 ? JSON.stringify(answers) : null;
  }
  const answer = await handleOne(doc, methods);
  return answer === null ? null : JSON.stringify(answer);
}

export interface RpcServerOptions {
  /** Longest request line in bytes (default 1 MiB). */
  maxLineBytes?: number;
  /** Most requests in one batch (default 128). */
  maxBatch?: number;
  /** Most connections open at once (default 64). */
  maxConnections?: number;
  /** Close a connection that sent nothing for this long while nothing was pending for it (default 5 min). */
  idleTimeoutMs?: number;
  /** Requests read and not yet answered per connection before reading pauses (default 32). */
  maxPending?: number;
  /** Called on connection-level problems (over-long line, too many connections); not for method errors. */
  onProblem?: (message: string) => void;
  /**
   * Set the umask to 0177 while the socket is created (default true). A worker thread cannot (process.umask
   * is the main thread's): the RPC thread's owner sets it there (./rpc-thread.ts).
   */
  setUmask?: boolean;
}

export class RpcServer {
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  readonly #maxLine: number;
  readonly #maxBatch: number;
  readonly #maxConnections: number;
  readonly #idleMs: number;
  readonly #maxPending: number;
  readonly #problem: (message: string) => void;
  readonly #setUmask: boolean;
  #path: string | null = null;

  constructor(
    readonly methods: RpcMethods,
    options: RpcServerOptions = {},
  ) {
    this.#maxLine = options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
    this.#maxBatch = options.maxBatch ?? DEFAULT_MAX_BATCH;
    this.#maxConnections = options.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
    this.#idleMs = options.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
    this.#maxPending = Math.max(1, options.maxPending ?? DEFAULT_MAX_PENDING);
    this.#problem = options.onProblem ?? (() => undefined);
    this.#setUmask = options.setUmask ?? true;
    this.#server = createServer({ allowHalfOpen: true }, (socket) => this.#accept(socket));
  }

  /** Connections open now. */
  get connections(): number {
    return this.#sockets.size;
  }

  /**
   * Listen on a Unix socket with mode 0600 (missing parent directories created 0700; a path on procfs or
   * sysfs is refused). A stale socket file (nobody listening) is replaced; a live one is an error.
   */
  async listen(path: string, label = '--socket'): Promise<void> {
    checkDaemonPath(path, label);
    makeDaemonDir(dirname(path), label);
    if (existsSync(path)) {
      if (!lstatSync(path).isSocket())
        throw new MgmtError('ERR_MGMT_PATH', `${label} ${path}: exists and is not a socket`);
      if (await socketAlive(path))
        throw new MgmtError('ERR_MGMT_PATH', `${label} ${path}: another daemon is listening there`);
      unlinkSync(path);
    }
    const old = this.#setUmask ? process.umask(0o177) : null;
    try {
      await new Promise<void>((resolve, reject) => {
        this.#server.once('error', reject);
        this.#server.listen(path, () => {
          this.#server.off('error', reject);
          resolve();
        });
      });
    } catch (err) {
      throw new MgmtError('ERR_MGMT_PATH', `${label} ${path}: cannot listen: ${messageOf(err)}`, {
        cause: err,
      });
    } finally {
      if (old !== null) process.umask(old);
    }
    chmodSync(path, 0o600);
    this.#path = path;
  }

  get path(): string | null {
    return this.#path;
  }

  /** Stop listening, drop connections, remove the socket file. */
  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
    if (this.#path !== null) {
      try {
        unlinkSync(this.#path);
      } catch {
        // gone already
      }
    }
  }

  #accept(socket: Socket): void {
    socket.on('error', () => undefined);
    if (this.#sockets.size >= this.#maxConnections) {
      this.#problem(`management connection refused: ${this.#maxConnections} connections are open already`);
      const answer = errorResponse(
        null,
        new RpcError(
          'ERR_RPC_TOO_MANY_CONNECTIONS',
          `too many connections: at most ${this.#maxConnections} at once; try again later`,
        ),
      );
      socket.end(`${JSON.stringify(answer)}\n`);
      socket.destroySoon();
      return;
    }
    this.#sockets.add(socket);
    socket.on('close', () => this.#sockets.delete(socket));
    this.#serve(socket);
  }

  #serve(socket: Socket): void {
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    let chain = Promise.resolve();
    /** Requests read and not answered yet. */
    let inFlight = 0;
    let dead = false;
    let ended = false;
    /** Set while the client does not take its answers: no request is started and nothing read until 'drain'. */
    let drained: Promise<void> | null = null;
    let wake = (): void => undefined;
    const flow = (): void => {
      if (dead || ended) return;
      if (drained !== null || inFlight >= this.#maxPending) socket.pause();
      else socket.resume();
    };
    const unblock = (): void => {
      drained = null;
      wake();
      flow();
    };
    socket.on('drain', unblock);
    socket.on('close', () => {
      dead = true;
      unblock();
    });
    const send = (text: string | null): void => {
      if (text === null || dead || socket.destroyed || !socket.writable) return;
      if (!socket.write(`${text}\n`) && drained === null) {
        drained = new Promise<void>((resolve) => (wake = resolve));
      }
    };
    const run = async (line: string): Promise<void> => {
      if (drained !== null) await drained;
      try {
        send(await handleRequestLine(line, this.methods, this.#maxBatch));
      } catch {
        // handleRequestLine answers every error itself
      }
      inFlight--;
      flow();
      if (ended && inFlight === 0 && !dead) socket.end();
    };
    if (this.#idleMs > 0) {
      socket.setTimeout(this.#idleMs);
      socket.on('timeout', () => {
        // idle means: nothing to answer and nothing coming; a long call (device.add) keeps its connection
        if (inFlight > 0) return void socket.setTimeout(this.#idleMs);
        this.#problem(`management connection idle for ${Math.round(this.#idleMs / 1000)} s: closed`);
        dead = true;
        socket.destroy();
      });
    }
    // The client is done sending (echo ... | socat): answer what it asked, then close.
    socket.on('end', () => {
      ended = true;
      if (inFlight === 0 && !dead) socket.end();
    });
    const kill = (): void => void (dead = true);
    socket.on('data', (chunk: Buffer) => {
      if (dead) return;
      let start = 0;
      for (;;) {
        const nl = chunk.indexOf(0x0a, start);
        if (nl < 0) break;
        const part = chunk.subarray(start, nl);
        if (pendingBytes + part.length > this.#maxLine) return this.#tooLong(socket, kill);
        const line = Buffer.concat([...pending, part]).toString('utf8');
        pending = [];
        pendingBytes = 0;
        start = nl + 1;
        if (line.trim() === '') continue;
        inFlight++;
        chain = chain.then(() => run(line));
      }
      const rest = chunk.subarray(start);
      if (pendingBytes + rest.length > this.#maxLine) return this.#tooLong(socket, kill);
      if (rest.length > 0) {
        pending.push(Buffer.from(rest));
        pendingBytes += rest.length;
      }
      flow();
    });
  }

  #tooLong(socket: Socket, kill: () => void): void {
    kill();
    this.#problem(`management request longer than ${this.#maxLine} bytes: connection closed`);
    const answer = errorResponse(
      null,
      invalid(`invalid request: line longer than ${this.#maxLine} bytes; connection closed`),
    );
    socket.end(`${JSON.stringify(answer)}\n`);
    socket.destroySoon();
  }
}

/** True when something accepts connections on `path`. */
export function socketAlive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/**
 * One call over a fresh connection. Rejects with what errorFromAnswer() makes of an error answer (RpcCallError;
 * UsageError for invalid params), or an RpcError for transport trouble.
 */
export function rpcCall(
  path: string,
  method: string,
  params: unknown = {},
  timeoutMs = 120_000,
): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const socket = createConnection(path);
    let buf = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new RpcError('ERR_RPC_TIMEOUT', `no answer from ${path} within ${timeoutMs / 1000} s`));
    }, timeoutMs);
    const done = (fn: () => void): void => {
      clearTimeout(timer);
      socket.destroy();
      fn();
    };
    socket.on('connect', () =>
      socket.write(`${JSON.stringify({ jsonrpc: '2.0', id: 1, method, params })}\n`),
    );
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      let answer: Response;
      try {
        answer = JSON.parse(buf.slice(0, nl)) as Response;
      } catch {
        return done(() =>
          reject(new RpcError('ERR_RPC_PROTOCOL', `${path}: the daemon sent something that is not JSON`)),
        );
      }
      const e = answer.error;
      if (e !== undefined && e !== null) return done(() => reject(errorFromAnswer(e)));
      done(() => resolve(answer.result));
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      const why =
        err.code === 'ENOENT' || err.code === 'ECONNREFUSED'
          ? 'no daemon is listening (is vduse serve running? --socket PATH)'
          : err.code === 'EACCES'
            ? 'permission denied (the socket is 0600: run as the daemon user or root)'
            : err.message;
      done(() => reject(new RpcError('ERR_RPC_UNREACHABLE', `cannot reach ${path}: ${why}`, { cause: err })));
    });
    socket.on('end', () =>
      done(() => reject(new RpcError('ERR_RPC_PROTOCOL', `${path}: the daemon closed the connection`))),
    );
  });
}
