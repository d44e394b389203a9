/**
 * V8 tiering for the daemon (issue #16, "fast from the first second"; issue #19's QD1 rows).
 *
 * V8 compiles a function with its optimizing compiler (TurboFan) only after it has used up its interrupt
 * budget a few times, i.e. after it ran some hundred kilobytes of bytecode. A daemon's data path runs a few
 * thousand bytecodes per request, so at a few hundred requests per second (queue depth 1 in front of a remote
 * store, and everything under emulation) the hot path stays in the interpreter and the baseline compiler for
 * tens of seconds. Measured with V8's code log (rbd backend, 4 KiB reads at QD1, single-threaded TCG): the first
 * TurboFan code of the request path 2 s after I/O began, the last of it after 32 s, and some of it (the
 * completion callbacks) not within 54 s; the start-up warm-up (../mgmt/blk/warmup.ts) got nothing to TurboFan
 * in its second. A smaller budget makes V8 decide sooner, on the same feedback-driven heuristics.
 *
 * The flag is process-wide (queue threads share it) and set before the daemon's code runs. Node started with
 * its own --interrupt-budget keeps it; VDUSE_TIERING=default keeps V8's default (to measure against).
 */
import { setFlagsFromString } from 'node:v8';

/** The interrupt budget the daemon runs with (V8's default in Node 20: 67584). */
export const DAEMON_INTERRUPT_BUDGET = 8192;

/** The flag to set for this process, or null when it keeps what it has. */
export function tieringFlag(
  execArgv: readonly string[] = process.execArgv,
  env: NodeJS.ProcessEnv = process.env,
): string | null {
  if (env.VDUSE_TIERING === 'default') return null;
  if (execArgv.some((arg) => /^--interrupt[-_]budget(=|$)/.test(arg))) return null;
  return `--interrupt-budget=${DAEMON_INTERRUPT_BUDGET}`;
}

const flag = tieringFlag();
if (flag !== null) setFlagsFromString(flag);
