/**
 * Readiness for service managers: the pid file (written only once every configured device is ready, like
 * qemu-storage-daemon's --pidfile) and systemd's sd_notify.
 *
 * sd_notify is a datagram on the AF_UNIX socket named by NOTIFY_SOCKET, and Node has no Unix datagram
 * sockets. So the message is sent by running systemd-notify(1) with MAINPID set to this process; the unit
 * needs NotifyAccess=all because the sender is a child (contrib/vduse.service does that).
 */
import { spawn } from 'node:child_process';
import { closeSync, constants as fsConstants, openSync, renameSync, unlinkSync, writeSync } from 'node:fs';

import { errnoOf, systemErrorMessage } from '../../common/errors.js';
import { MgmtError } from './errors.js';

export type NotifyResult = 'sent' | 'no-socket' | 'failed';

/** Send `assignments` (e.g. ["READY=1", "STATUS=serving 2 devices"]) when NOTIFY_SOCKET is set. */
export function sdNotify(
  assignments: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
  command = 'systemd-notify',
): Promise<{ result: NotifyResult; detail?: string }> {
  if (env.NOTIFY_SOCKET === undefined || env.NOTIFY_SOCKET === '')
    return Promise.resolve({ result: 'no-socket' });
  return new Promise((resolve) => {
    let stderr = '';
    const child = spawn(command, [`--pid=${process.pid}`, ...assignments], {
      env,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', (err) => resolve({ result: 'failed', detail: `${command}: ${err.message}` }));
    child.on('close', (code) =>
      resolve(
        code === 0
          ? { result: 'sent' }
          : { result: 'failed', detail: `${command} exited with ${code}: ${stderr.trim()}` },
      ),
    );
  });
}

/**
 * Create `path` new with `text`, never through a symlink or into a file that exists (O_CREAT|O_EXCL|O_NOFOLLOW):
 * the daemon runs as root, and the directory may be writable by others. Something already at `path` is
 * removed first (unlink removes a planted symlink, not its target) and the create tried again, once.
 */
export function createFileExclusive(path: string, text: string, mode: number): void {
  const flags = fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW;
  let fd: number;
  try {
    fd = openSync(path, flags, mode);
  } catch (err) {
    if (errnoOf(err) !== 'EEXIST') throw err;
    unlinkSync(path);
    fd = openSync(path, flags, mode);
  }
  try {
    writeSync(fd, text);
  } finally {
    closeSync(fd);
  }
}

/**
 * Write the pid file atomically (a reader never sees it half written): a new PATH.PID.tmp (see
 * createFileExclusive), then renamed over PATH (rename replaces a symlink at PATH, it does not follow it).
 */
export function writePidFile(path: string, pid = process.pid): void {
  const tmp = `${path}.${pid}.tmp`;
  try {
    createFileExclusive(tmp, `${pid}\n`, 0o644);
    renameSync(tmp, path);
  } catch (err) {
    try {
      unlinkSync(tmp);
    } catch {
      // not there
    }
    throw new MgmtError('ERR_MGMT_PATH', `pid file ${path}: ${systemErrorMessage(err)}`, { cause: err });
  }
}

export function removePidFile(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // gone, or not ours to remove any more (privileges dropped): leave it
  }
}
