/**
 * JSON-RPC 2.0 over a stream socket, one request (or batch) per line, one response per line.
 *
 * handleRequestLine() is plain code (text in, text out) so every malformed input is unit-tested without a
 * socket; RpcServer adds the Unix socket (mode 0600), the line limit (a longer line gets an error and the
 * connection is closed) and per-connection ordering. A client that goes away mid-request harms nothing: the
 * call finishes and its answer is dropped.
 */
import { chmodSync, mkdirSync, unlinkSync, existsSync, lstatSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';

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

export const DEFAULT_MAX_LINE_BYTES = 1 << 20;

export class RpcError extends Error {
  constructor(
    readonly code: number,
    message: string,
    readonly data?: unknown,
  ) {
    super(message);
    this.name = 'RpcError';
  }
}

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
  if (err instanceof RpcError) {
    const error: Response['error'] = { code: err.code, message: err.message };
    if (err.data !== undefined) error.data = err.data;
    return { jsonrpc: '2.0', id, error };
  }
  const message = err instanceof Error ? err.message : String(err);
  return { jsonrpc: '2.0', id, error: { code: OPERATION_FAILED, message } };
}

function validId(id: unknown): id is RpcId {
  return id === null || typeof id === 'string' || (typeof id === 'number' && Number.isFinite(id));
}

/** One request object; null for a notification (no id: no answer). */
async function handleOne(request: unknown, methods: RpcMethods): Promise<Response | null> {
  if (typeof request !== 'object' || request === null || Array.isArray(request)) {
    return errorResponse(null, new RpcError(INVALID_REQUEST, 'invalid request: expected a JSON object'));
  }
  const r = request as Record<string, unknown>;
  const hasId = 'id' in r;
  const id: RpcId = hasId && validId(r.id) ? r.id : null;
  if (r.jsonrpc !== '2.0') {
    return errorResponse(id, new RpcError(INVALID_REQUEST, 'invalid request: "jsonrpc" must be "2.0"'));
  }
  if (hasId && !validId(r.id)) {
    return errorResponse(
      null,
      new RpcError(INVALID_REQUEST, 'invalid request: "id" must be a string, number or null'),
    );
  }
  if (typeof r.method !== 'string') {
    return errorResponse(id, new RpcError(INVALID_REQUEST, 'invalid request: "method" must be a string'));
  }
  if (r.params !== undefined && (typeof r.params !== 'object' || r.params === null)) {
    return errorResponse(
      id,
      new RpcError(INVALID_REQUEST, 'invalid request: "params" must be an object or array'),
    );
  }
  const method = Object.hasOwn(methods, r.method) ? methods[r.method] : undefined;
  if (method === undefined) {
    return hasId ? errorResponse(id, new RpcError(METHOD_NOT_FOUND, `method not found: ${r.method}`)) : null;
  }
  try {
    const result = await method(r.params ?? {});
    return hasId ? { jsonrpc: '2.0', id, result: result === undefined ? null : result } : null;
  } catch (err) {
    return hasId ? errorResponse(id, err) : null;
  }
}

/** Answer one line; null when nothing is to be sent (notifications only). */
export async function handleRequestLine(line: string, methods: RpcMethods): Promise<string | null> {
  let doc: unknown;
  try {
    doc = JSON.parse(line);
  } catch (err) {
    return JSON.stringify(
      errorResponse(null, new RpcError(PARSE_ERROR, `parse error: ${(err as Error).message}`)),
    );
  }
  if (Array.isArray(doc)) {
    if (doc.length === 0) {
      return JSON.stringify(
        errorResponse(null, new RpcError(INVALID_REQUEST, 'invalid request: empty batch')),
      );
    }
    const answers = (await Promise.all(doc.map((r) => handleOne(r, methods)))).filter((a) => a !== null);
    return answers.length > 0 ? JSON.stringify(answers) : null;
  }
  const answer = await handleOne(doc, methods);
  return answer === null ? null : JSON.stringify(answer);
}

export interface RpcServerOptions {
  maxLineBytes?: number;
  /** Called on connection-level problems (over-long line); not for method errors. */
  onProblem?: (message: string) => void;
}

export class RpcServer {
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  readonly #maxLine: number;
  #path: string | null = null;

  constructor(
    readonly methods: RpcMethods,
    options: RpcServerOptions = {},
  ) {
    this.#maxLine = options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
    const problem = options.onProblem ?? (() => undefined);
    this.#server = createServer((socket) => this.#serve(socket, problem));
  }

  /**
   * Listen on a Unix socket with mode 0600 (parent directory created 0700 when missing). A stale socket file
   * (nobody listening) is replaced; a live one is an error.
   */
  async listen(path: string): Promise<void> {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    if (existsSync(path)) {
      if (!lstatSync(path).isSocket()) throw new Error(`${path} exists and is not a socket`);
      if (await socketAlive(path)) throw new Error(`${path}: another daemon is listening there`);
      unlinkSync(path);
    }
    const old = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        this.#server.once('error', reject);
        this.#server.listen(path, () => {
          this.#server.off('error', reject);
          resolve();
        });
      });
    } finally {
      process.umask(old);
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

  #serve(socket: Socket, problem: (message: string) => void): void {
    this.#sockets.add(socket);
    socket.on('close', () => this.#sockets.delete(socket));
    socket.on('error', () => undefined);
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    let chain = Promise.resolve();
    let dead = false;
    const send = (text: string | null): void => {
      if (text !== null && !dead && !socket.destroyed && socket.writable) socket.write(`${text}\n`);
    };
    socket.on('data', (chunk: Buffer) => {
      if (dead) return;
      let start = 0;
      for (;;) {
        const nl = chunk.indexOf(0x0a, start);
        if (nl < 0) break;
        const part = chunk.subarray(start, nl);
        if (pendingBytes + part.length > this.#maxLine)
          return this.#tooLong(socket, problem, () => (dead = true));
        const line = Buffer.concat([...pending, part]).toString('utf8');
        pending = [];
        pendingBytes = 0;
        start = nl + 1;
        if (line.trim() === '') continue;
        chain = chain.then(() => handleRequestLine(line, this.methods).then(send, () => undefined));
      }
      const rest = chunk.subarray(start);
      if (pendingBytes + rest.length > this.#maxLine)
        return this.#tooLong(socket, problem, () => (dead = true));
      if (rest.length > 0) {
        pending.push(Buffer.from(rest));
        pendingBytes += rest.length;
      }
    });
  }

  #tooLong(socket: Socket, problem: (message: string) => void, kill: () => void): void {
    kill();
    problem(`management request longer than ${this.#maxLine} bytes: connection closed`);
    const answer = errorResponse(
      null,
      new RpcError(
        INVALID_REQUEST,
        `invalid request: line longer than ${this.#maxLine} bytes; connection closed`,
      ),
    );
    socket.end(`${JSON.stringify(answer)}\n`);
    socket.destroySoon?.();
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

/** A JSON-RPC error answered by the daemon (code and message as sent). */
export class RpcCallError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
    this.name = 'RpcCallError';
  }
}

/** One call over a fresh connection. Rejects with RpcCallError for an error answer, Error for transport trouble. */
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
      reject(new Error(`no answer from ${path} within ${timeoutMs / 1000} s`));
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
        return done(() => reject(new Error(`${path}: the daemon sent something that is not JSON`)));
      }
      if (answer.error) {
        const e = answer.error;
        return done(() => reject(new RpcCallError(e.code, e.message)));
      }
      done(() => resolve(answer.result));
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      const why =
        err.code === 'ENOENT' || err.code === 'ECONNREFUSED'
          ? 'no daemon is listening (is vduse serve running? --socket PATH)'
          : err.code === 'EACCES'
            ? 'permission denied (the socket is 0600: run as the daemon user or root)'
            : err.message;
      done(() => reject(new Error(`cannot reach ${path}: ${why}`)));
    });
    socket.on('end', () => done(() => reject(new Error(`${path}: the daemon closed the connection`))));
  });
}
