/**
 * Listening on a Unix socket path with the checks a daemon owes its users: a path held by a live socket is
 * EADDRINUSE (another server answers there), a path that exists and is not a socket is refused and left alone
 * (never unlink a user's file), a socket nobody answers on (a dead server's leftover) is replaced. The socket
 * gets `mode` (0600 by default) before it accepts anything.
 */
import { closeSync, lstatSync, unlinkSync } from 'node:fs';

import type { SysBinding } from './binding.js';
import { isSystemError, systemError, type SystemError } from './errors.js';

export interface UnixListenOptions {
  /** Default 0o600. */
  mode?: number;
  /** Default 16. */
  backlog?: number;
  closeFd?: (fd: number) => void;
}

/** Why a socket path cannot be listened on: `code` EADDRINUSE (live socket) or EEXIST (not a socket). */
export function unixPathError(code: 'EADDRINUSE' | 'EEXIST', path: string): SystemError {
  const error = systemError(code, 'bind');
  error.message =
    code === 'EADDRINUSE'
      ? `${path} is in use: another process listens on it`
      : `${path} exists and is not a socket (left alone)`;
  (error as SystemError & { path: string }).path = path;
  return error;
}

/** The listening fd (non-blocking, CLOEXEC) at `path`. Throws a system error (see the top) when it cannot. */
export function listenUnix(binding: SysBinding, path: string, options: UnixListenOptions = {}): number {
  const closeFd = options.closeFd ?? closeSync;
  let kind: 'none' | 'socket' | 'other' = 'none';
  try {
    kind = lstatSync(path).isSocket() ? 'socket' : 'other';
  } catch (err) {
    if (!isSystemError(err, 'ENOENT')) throw err;
  }
  if (kind === 'other') throw unixPathError('EEXIST', path);
  if (kind === 'socket') {
    let live = false;
    try {
      closeFd(binding.unixConnect(path));
      live = true;
    } catch (err) {
      if (!isSystemError(err, 'ECONNREFUSED')) throw err;
    }
    if (live) throw unixPathError('EADDRINUSE', path);
    unlinkSync(path);
  }
  return binding.unixListen(path, options.backlog ?? 16, options.mode ?? 0o600);
}
