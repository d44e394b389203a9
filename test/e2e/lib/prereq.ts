/**
 * Prerequisites of a scenario. Outside CI a missing prerequisite skips the test; under CI it fails it.
 */
import fs from 'node:fs';
import type { TestContext } from 'node:test';
import { isCI } from './env.js';
import { findCommand } from './exec.js';

export interface Prereqs {
  /** Must run as uid 0 (VDUSE devices and vdpa netlink need it). */
  root?: boolean;
  /** Commands that must be in PATH, e.g. 'qemu-storage-daemon', 'vdpa'. */
  commands?: readonly string[];
  /** Paths that must exist, e.g. '/dev/vduse/control'. */
  paths?: readonly string[];
  /** Kernel modules that must be loaded (or built in), checked through /sys/module/NAME. */
  modules?: readonly string[];
}

/** Human-readable list of what is missing; empty when everything is there. */
export function missingPrereqs(p: Prereqs): string[] {
  const missing: string[] = [];
  if (p.root && process.getuid?.() !== 0) missing.push('root');
  for (const c of p.commands ?? []) if (!findCommand(c)) missing.push(`command ${c}`);
  for (const f of p.paths ?? []) if (!fs.existsSync(f)) missing.push(f);
  for (const m of p.modules ?? []) {
    if (!fs.existsSync(`/sys/module/${m.replace(/-/g, '_')}`)) missing.push(`kernel module ${m}`);
  }
  return missing;
}

/**
 * Checks `p` for test `t`. Returns true when all is there. Otherwise, under CI it throws (the test fails);
 * outside CI it marks `t` skipped and returns false, so the test returns early:
 *
 *     if (!requirePrereqs(t, { root: true, commands: ['vdpa'] })) return;
 */
export function requirePrereqs(t: TestContext, p: Prereqs): boolean {
  const missing = missingPrereqs(p);
  if (missing.length === 0) return true;
  const reason = `missing ${missing.join(', ')}`;
  if (isCI) throw new Error(`prerequisite missing under CI: ${reason}`);
  t.skip(reason);
  return false;
}
