/**
 * Environment of an e2e scenario: CI mode and timing.
 *
 * Scenarios run inside the test VM (a TCG guest, ~6-25x slower than the host), so every timeout in this
 * library is generous and goes through {@link scaled}.
 */
import fs from 'node:fs';

/** True under CI (`CI` set and not "false"/"0"): a missing prerequisite is then a failure, never a skip. */
export const isCI: boolean = ((v) => v !== undefined && v !== '' && v !== 'false' && v !== '0')(
  process.env.CI,
);

/** Multiplier for every timeout (VDUSE_E2E_TIME_SCALE, default 1), for slower machines. */
export const timeScale: number = (() => {
  const v = Number(process.env.VDUSE_E2E_TIME_SCALE ?? '1');
  return Number.isFinite(v) && v > 0 ? v : 1;
})();

/** `ms` times {@link timeScale}. */
export function scaled(ms: number): number {
  return Math.round(ms * timeScale);
}

/** Default node:test timeout of one scenario test (10 min, scaled). */
export const TEST_TIMEOUT_MS: number = scaled(10 * 60_000);

/** Default timeout for a single command or wait (60 s, scaled). */
export const STEP_TIMEOUT_MS: number = scaled(60_000);

/** True when running inside the vduse-ts test VM (its init bind-mounts the control share at /run/vm). */
export const inTestVm: boolean = fs.existsSync('/run/vm/cmd');
