// Helpers for the scenarios of our own daemon (test/e2e/vduse-*.test.ts): start `vduse blk` as a child process,
// wait for its ready line, signal it, stop it and check what it printed.
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

import { STEP_TIMEOUT_MS, type Cleanup } from './lib/index.js';

/** The compiled CLI next to this compiled file (dist/test/e2e -> dist/src/cli/main.js). */
export const CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

export const PREREQS = {
  root: true,
  commands: ['dd'],
  paths: ['/dev/vduse/control', '/sys/bus/vdpa'],
  modules: ['vduse', 'vdpa', 'virtio_vdpa', 'virtio_blk'],
};

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export class VduseDaemon {
  stdout = '';
  stderr = '';
  readonly exited: Promise<Exit>;

  private constructor(
    readonly child: ChildProcess,
    readonly args: readonly string[],
  ) {
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (this.stdout += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.stderr += d));
    this.exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        // let the pipes drain
        setImmediate(() => resolve({ code, signal, stdout: this.stdout, stderr: this.stderr }));
      });
    });
  }

  /** Spawn `vduse ARGS` without waiting for anything. */
  static spawn(args: readonly string[]): VduseDaemon {
    return new VduseDaemon(
      spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] }),
      args,
    );
  }

  /**
   * Start `vduse blk ARGS`, wait for its ready line (the device path) and register its stop with `cleanup`.
   * Rejects with the daemon's stderr when it exits first.
   */
  static async start(
    args: readonly string[],
    cleanup?: Cleanup,
    timeoutMs = STEP_TIMEOUT_MS,
  ): Promise<VduseDaemon> {
    const d = VduseDaemon.spawn(['blk', ...args]);
    cleanup?.add(`stop vduse ${args.join(' ')}`, async () => {
      if (d.child.exitCode === null && d.child.signalCode === null) await d.stop();
    });
    await d.ready(timeoutMs);
    return d;
  }

  /** The first stdout line (what the daemon prints when ready). */
  get path(): string {
    return this.stdout.split('\n')[0] ?? '';
  }

  async ready(timeoutMs = STEP_TIMEOUT_MS): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (!this.stdout.includes('\n')) {
      if (this.child.exitCode !== null || this.child.signalCode !== null) {
        const e = await this.exited;
        throw new Error(
          `vduse ${this.args.join(' ')} exited (${e.code ?? e.signal}) before it was ready: ${e.stderr.trim()}`,
        );
      }
      if (Date.now() > deadline)
        throw new Error(
          `vduse ${this.args.join(' ')} not ready after ${timeoutMs} ms: ${this.stderr.trim()}`,
        );
      await new Promise((r) => setTimeout(r, 25));
    }
    return this.path;
  }

  signal(sig: NodeJS.Signals): void {
    this.child.kill(sig);
  }

  /** Wait until stderr matches `re` (e.g. after a signal). */
  async waitStderr(re: RegExp, timeoutMs = STEP_TIMEOUT_MS): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = this.stderr.match(re);
      if (m) return m;
      if (Date.now() > deadline) throw new Error(`stderr never matched ${re}: ${this.stderr.trim()}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  /** SIGINT (or `sig`) and wait for the exit. */
  async stop(sig: NodeJS.Signals = 'SIGINT', timeoutMs = STEP_TIMEOUT_MS): Promise<Exit> {
    this.child.kill(sig);
    const timer = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }
}

/** The last "stats: k=v ..." line of a daemon's stderr as numbers. */
export function lastStats(stderr: string): Record<string, number> {
  const lines = stderr.split('\n').filter((l) => l.includes('stats: '));
  const last = lines[lines.length - 1];
  if (!last) throw new Error(`no stats line in: ${stderr}`);
  const out: Record<string, number> = {};
  for (const kv of last
    .slice(last.indexOf('stats: ') + 7)
    .trim()
    .split(/\s+/)) {
    const [k, v] = kv.split('=');
    if (k && v) out[k] = Number(v);
  }
  return out;
}
