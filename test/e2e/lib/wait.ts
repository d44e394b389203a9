/**
 * Waiting for conditions (devices appearing, daemons getting ready) with a timeout.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { STEP_TIMEOUT_MS } from './env.js';

export { sleep };

export interface WaitOptions {
  /** Give up after this long; default {@link STEP_TIMEOUT_MS}. */
  timeoutMs?: number;
  /** Delay between probes; default 50 ms. */
  intervalMs?: number;
}

/** A value that means "not yet" for {@link waitFor}. */
type NotYet = undefined | null | false;

/**
 * Calls `probe` until it returns something other than undefined/null/false and resolves with that value.
 * Rejects after the timeout with "timed out after N ms waiting for <what>", including the last error the probe
 * threw (a throwing probe counts as "not yet").
 */
export async function waitFor<T>(
  what: string,
  probe: () => T | NotYet | Promise<T | NotYet>,
  opts: WaitOptions = {},
): Promise<T> {
  const timeoutMs = opts.timeoutMs ?? STEP_TIMEOUT_MS;
  const intervalMs = opts.intervalMs ?? 50;
  const start = Date.now();
  let lastError: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined && v !== null && v !== false) return v;
    } catch (e) {
      lastError = e;
    }
    const elapsed = Date.now() - start;
    if (elapsed >= timeoutMs) {
      const last = lastError instanceof Error ? ` (last error: ${lastError.message})` : '';
      throw new Error(`timed out after ${elapsed} ms waiting for ${what}${last}`);
    }
    await sleep(Math.min(intervalMs, timeoutMs - elapsed));
  }
}
