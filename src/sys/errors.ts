/**
 * Node-style system errors, as thrown by a SysBinding (and by Node's own fs/net calls): an Error with
 * `code` ('ENOTTY'), `errno` (the negated errno, as libuv reports it) and `syscall` ('ioctl').
 */

import { constants } from 'node:os';
import { getSystemErrorMap } from 'node:util';

export interface SystemError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

/** True when `error` is a system error, and, if `code` is given, one with that code ('ENOENT'). */
export function isSystemError(error: unknown, code?: string): error is SystemError {
  if (!(error instanceof Error)) return false;
  const e = error as Partial<SystemError>;
  if (typeof e.code !== 'string' || typeof e.errno !== 'number' || typeof e.syscall !== 'string')
    return false;
  return code === undefined || e.code === code;
}

/**
 * A system error for `code` as the native binding would throw it, e.g. systemError('ENOTTY', 'ioctl') has
 * message "ENOTTY: inappropriate ioctl for device, ioctl". For fakes and for TypeScript code that detects a
 * failure itself. Throws a TypeError for a code this platform does not know.
 */
export function systemError(code: string, syscall: string): SystemError {
  const errnoValue = (constants.errno as Record<string, number | undefined>)[code];
  if (errnoValue === undefined) throw new TypeError(`unknown errno code: ${code}`);
  const description = getSystemErrorMap().get(-errnoValue)?.[1] ?? 'unknown error';
  const error = new Error(`${code}: ${description}, ${syscall}`) as SystemError;
  error.code = code;
  error.errno = -errnoValue;
  error.syscall = syscall;
  return error;
}
