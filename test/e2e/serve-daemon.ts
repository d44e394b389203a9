// Helpers for the scenarios of `vduse serve` (test/e2e/vduse-ops.test.ts, vduse-serve-*.test.ts): the daemon as
// a child process, its client commands, and a JSON-RPC client that stays connected (to time round trips without
// a client's start-up in the figure).
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createConnection, type Socket } from 'node:net';

import { exec, waitFor, type Cleanup } from './lib/index.js';
import { CLI } from './vduse-daemon.js';

export class ServeDaemon {
  stderr = '';
  stdout = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  constructor(
    readonly child: ChildProcess,
    readonly socket: string,
  ) {
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (this.stdout += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.stderr += d));
    this.exited = new Promise((resolve) =>
      child.on('exit', (code, signal) => setImmediate(() => resolve({ code, signal }))),
    );
  }

  static spawn(
    args: string[],
    socket: string,
    cleanup: Cleanup,
    env: NodeJS.ProcessEnv = process.env,
  ): ServeDaemon {
    const d = new ServeDaemon(
      spawn(process.execPath, [CLI, 'serve', '--socket', socket, ...args], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env,
      }),
      socket,
    );
    cleanup.add('stop vduse serve', async () => {
      if (d.child.exitCode === null && d.child.signalCode === null) await d.stop();
    });
    return d;
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  async stop(
    sig: NodeJS.Signals = 'SIGTERM',
    timeoutMs = 60_000,
  ): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    this.child.kill(sig);
    const timer = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Log lines (JSON) as objects. */
  logs(): Record<string, unknown>[] {
    return this.stderr
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  }

  /** Wait until stderr matches `re`; rejects at once (with the daemon's stderr) if the daemon exits first. */
  async waitLog(re: RegExp, timeoutMs = 60_000): Promise<void> {
    let exited = false;
    const gone = this.exited.then(() => (exited = true));
    await Promise.race([
      waitFor(`daemon log matching ${re}`, () => re.test(this.stderr) || exited, { timeoutMs }),
      gone,
    ]);
    if (!re.test(this.stderr)) this.fail();
  }

  fail(): never {
    throw new Error(`vduse serve exited: ${this.stderr}`);
  }

  async cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const r = await exec(process.execPath, [CLI, ...args, '--socket', this.socket], { timeoutMs: 120_000 });
    return r;
  }

  async cliOk(args: string[]): Promise<string> {
    const r = await this.cli(args);
    assert.equal(r.code, 0, `vduse ${args.join(' ')} failed: ${r.stderr}`);
    return r.stdout;
  }
}

/** A JSON-RPC error answer. */
export class RpcAnswerError extends Error {
  constructor(
    readonly rpcCode: number,
    message: string,
  ) {
    super(message);
    this.name = 'RpcAnswerError';
  }
}

/** One connection to the management socket, kept open; calls are answered in order. */
export class RpcConnection {
  readonly #socket: Socket;
  #buf = '';
  #nextId = 1;
  readonly #waiting: { resolve: (v: unknown) => void; reject: (e: Error) => void }[] = [];
  #closed: Error | null = null;

  private constructor(socket: Socket) {
    this.#socket = socket;
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => {
      this.#buf += d;
      for (let nl = this.#buf.indexOf('\n'); nl >= 0; nl = this.#buf.indexOf('\n')) {
        const line = this.#buf.slice(0, nl);
        this.#buf = this.#buf.slice(nl + 1);
        const w = this.#waiting.shift();
        if (w === undefined) continue;
        const a = JSON.parse(line) as { result?: unknown; error?: { code: number; message: string } };
        if (a.error) w.reject(new RpcAnswerError(a.error.code, a.error.message));
        else w.resolve(a.result);
      }
    });
    const fail = (err: Error): void => {
      this.#closed ??= err;
      for (const w of this.#waiting.splice(0)) w.reject(this.#closed);
    };
    socket.on('error', fail);
    socket.on('close', () => fail(new Error('the daemon closed the connection')));
  }

  static connect(path: string): Promise<RpcConnection> {
    return new Promise((resolve, reject) => {
      const s = createConnection(path);
      s.once('connect', () => resolve(new RpcConnection(s)));
      s.once('error', reject);
    });
  }

  call(method: string, params: unknown = {}): Promise<unknown> {
    if (this.#closed) return Promise.reject(this.#closed);
    return new Promise((resolve, reject) => {
      this.#waiting.push({ resolve, reject });
      this.#socket.write(`${JSON.stringify({ jsonrpc: '2.0', id: this.#nextId++, method, params })}\n`);
    });
  }

  /** The call's result and how long the round trip took (ms). */
  async timed(method: string, params: unknown = {}): Promise<{ result: unknown; ms: number }> {
    const t0 = performance.now();
    const result = await this.call(method, params);
    return { result, ms: performance.now() - t0 };
  }

  close(): void {
    this.#socket.destroy();
  }
}
