/**
 * Running commands from scenarios: always with a timeout, always with captured output.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { STEP_TIMEOUT_MS } from './env.js';

export interface ExecOptions {
  /** Kill the command (SIGKILL) after this long; default {@link STEP_TIMEOUT_MS}. */
  timeoutMs?: number;
  /** Written to the command's stdin (stdin is empty otherwise). */
  input?: string | Buffer;
  cwd?: string;
  /** Environment; default: this process's. */
  env?: NodeJS.ProcessEnv;
}

export interface ExecResult {
  /** The command line, for messages. */
  command: string;
  /** Exit status, or null when killed by a signal or never started. */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** The timeout fired. */
  timedOut: boolean;
  durationMs: number;
  /** Set when the command could not be started (e.g. ENOENT). */
  error?: Error;
}

/** Error of {@link execOk}: carries the whole {@link ExecResult}. */
export class CommandError extends Error {
  constructor(readonly result: ExecResult) {
    super(CommandError.describe(result));
    this.name = 'CommandError';
  }

  static describe(r: ExecResult): string {
    const how = r.error
      ? `could not start: ${r.error.message}`
      : r.timedOut
        ? `timed out after ${r.durationMs} ms`
        : r.signal
          ? `killed by ${r.signal}`
          : `exited with ${r.code}`;
    const tail = (s: string) => s.trim().split('\n').slice(-10).join('\n    ');
    let msg = `\`${r.command}\` ${how}`;
    if (r.stderr.trim()) msg += `\n  stderr:\n    ${tail(r.stderr)}`;
    if (r.stdout.trim()) msg += `\n  stdout:\n    ${tail(r.stdout)}`;
    return msg;
  }
}

const MAX_CAPTURE = 8 << 20;
/** How long to wait for a killed command to go away (a process in D state may never exit). */
const KILL_GRACE_MS = 5_000;

const quote = (s: string) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

/**
 * Runs `cmd args...` and resolves with its result; never rejects. A command that outlives `timeoutMs` is
 * killed, and the promise resolves even if the kill does not take (uninterruptible I/O).
 */
export function exec(cmd: string, args: readonly string[] = [], opts: ExecOptions = {}): Promise<ExecResult> {
  const command = [cmd, ...args].map(quote).join(' ');
  const timeoutMs = opts.timeoutMs ?? STEP_TIMEOUT_MS;
  const start = Date.now();
  return new Promise((resolve) => {
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    let settled = false;
    let graceTimer: NodeJS.Timeout | undefined;
    const finish = (code: number | null, signal: NodeJS.Signals | null, error?: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (graceTimer) clearTimeout(graceTimer);
      const r: ExecResult = {
        command,
        code,
        signal,
        stdout,
        stderr,
        timedOut,
        durationMs: Date.now() - start,
      };
      if (error) r.error = error;
      resolve(r);
    };
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      if (stdout.length < MAX_CAPTURE) stdout += d;
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      if (stderr.length < MAX_CAPTURE) stderr += d;
    });
    child.stdin.on('error', () => {});
    child.stdin.end(opts.input ?? '');
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
      graceTimer = setTimeout(() => finish(null, 'SIGKILL'), KILL_GRACE_MS);
    }, timeoutMs);
    child.on('error', (e) => finish(null, null, e));
    child.on('close', (code, signal) => finish(code, signal));
  });
}

/** Like {@link exec}, but rejects with a {@link CommandError} unless the command exited 0. */
export async function execOk(
  cmd: string,
  args: readonly string[] = [],
  opts: ExecOptions = {},
): Promise<ExecResult> {
  const r = await exec(cmd, args, opts);
  if (r.code !== 0 || r.timedOut) throw new CommandError(r);
  return r;
}

/** The full path of `name` found in PATH (plus the sbin directories), or null. */
export function findCommand(name: string): string | null {
  const dirs = (process.env.PATH ?? '').split(':').concat(['/usr/local/sbin', '/usr/sbin', '/sbin']);
  for (const dir of dirs) {
    if (!dir) continue;
    const p = path.join(dir, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return null;
}
