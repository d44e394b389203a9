/**
 * The guest kernel's log, for scenarios that must show that no I/O error or hung task reached the kernel.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';

import { execOk } from './exec.js';

/** Seconds since boot, as the kernel log stamps lines. */
export function uptimeSeconds(): number {
  return Number(fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0]);
}

/** Kernel log lines stamped at or after `since` (seconds since boot). */
export async function kernelLogSince(since: number): Promise<string[]> {
  const r = await execOk('dmesg', []);
  return r.stdout.split('\n').filter((line) => {
    const m = /^\[\s*(\d+\.\d+)\]/.exec(line);
    return m !== null && Number(m[1]) >= since;
  });
}

/** Fails when the kernel reported a hung task, or an error about `dev` (a vdX name), since `since`. */
export async function assertQuietKernel(since: number, dev: string): Promise<void> {
  const bad = (await kernelLogSince(since)).filter(
    (l) =>
      /blocked for more than|hung_task|INFO: task .* blocked/.test(l) ||
      new RegExp(`\\b${dev}\\b.*(error|timeout)|I/O error, dev ${dev}\\b|EXT4-fs error`, 'i').test(l),
  );
  assert.deepEqual(bad, [], 'kernel log since the test started');
}

/** Fails when the kernel warned, oopsed, hung a task or timed out a transmit queue since `since`. */
export async function assertNoKernelWarnings(
  since: number,
  what = 'kernel log since the test started',
): Promise<void> {
  const bad = (await kernelLogSince(since)).filter((l) =>
    /WARNING:|BUG:|Oops|general protection|blocked for more than|hung_task|NETDEV WATCHDOG|transmit queue \d+ timed out|refcount_t|unregister_netdevice: waiting/.test(
      l,
    ),
  );
  assert.deepEqual(bad, [], what);
}
