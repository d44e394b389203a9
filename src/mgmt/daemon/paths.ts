/**
 * Paths the daemon creates things in (the management socket's directory, the state directory, the pid file's
 * directory). Node's recursive mkdir loops for ever (100 % CPU, deaf to SIGTERM) under /proc, where mkdir
 * answers ENOENT for a parent that exists; so a path on a pseudo filesystem is refused up front, and missing
 * directories are created one at a time (an error is then an error, never a loop).
 */
import { mkdirSync, statSync, statfsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

import { UsageError, errnoOf, systemErrorMessage } from '../../common/errors.js';
import { MgmtError } from './errors.js';

/** statfs f_type of the filesystems nothing of ours belongs on (linux/magic.h). */
const PSEUDO_FILESYSTEMS: ReadonlyMap<number, string> = new Map([
  [0x9fa0, 'procfs'],
  [0x62656572, 'sysfs'],
  [0x1cd1, 'devpts'],
  [0x64626720, 'debugfs'],
  [0x74726163, 'tracefs'],
  [0x73636673, 'securityfs'],
  [0x27e0eb, 'cgroup'],
  [0x63677270, 'cgroup2'],
  [0xcafe4a11, 'bpf'],
]);

/** The nearest ancestor of `path` (itself included) that exists. */
export function existingAncestor(path: string): string {
  let p = resolve(path);
  for (;;) {
    try {
      statSync(p);
      return p;
    } catch {
      const up = dirname(p);
      if (up === p) return p;
      p = up;
    }
  }
}

/**
 * Refuse a path (or the directory it would be created in) that lies on procfs, sysfs or another pseudo
 * filesystem: a UsageError (code ERR_MGMT_BAD_PATH) that names `label` ("--socket", "config socket").
 */
export function checkDaemonPath(path: string, label: string): void {
  if (path === '') throw new UsageError(`${label}: must not be empty`, { code: 'ERR_MGMT_BAD_PATH' });
  const at = existingAncestor(path);
  let type: number;
  try {
    type = Number(statfsSync(at).type);
  } catch {
    return;
  }
  const fs = PSEUDO_FILESYSTEMS.get(type);
  if (fs !== undefined) {
    throw new UsageError(
      `${label} ${path}: ${at} is on ${fs}, where nothing can be created; choose another path`,
      {
        code: 'ERR_MGMT_BAD_PATH',
      },
    );
  }
}

/**
 * Create `dir` and its missing parents with `mode` (0700), one at a time. A failure is a one-line MgmtError
 * (ERR_MGMT_PATH) naming `label` and the directory that could not be made.
 */
export function makeDaemonDir(dir: string, label: string, mode = 0o700): void {
  checkDaemonPath(dir, label);
  const missing: string[] = [];
  for (let p = resolve(dir); ; p = dirname(p)) {
    let exists = false;
    try {
      const st = statSync(p);
      if (!st.isDirectory()) {
        throw new MgmtError('ERR_MGMT_PATH', `${label} ${dir}: ${p} is not a directory`, {
          errno: 'ENOTDIR',
        });
      }
      exists = true;
    } catch (err) {
      if (err instanceof MgmtError) throw err;
    }
    if (exists || dirname(p) === p) break;
    missing.push(p);
  }
  for (const p of missing.reverse()) {
    try {
      mkdirSync(p, { mode });
    } catch (err) {
      if (errnoOf(err) === 'EEXIST') continue;
      throw new MgmtError(
        'ERR_MGMT_PATH',
        `${label} ${dir}: cannot create ${p}: ${systemErrorMessage(err)}`,
        {
          cause: err,
        },
      );
    }
  }
}
