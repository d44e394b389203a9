/**
 * Dropping root after the devices are up (`vduse serve --user NAME`). The data path (the /dev/vduse/NAME fds,
 * eventfds, guest memory maps, the backend fds) needs no privileges once open. What does:
 *   - opening /dev/vduse/control and creating/destroying devices: root (the node is 0600 root);
 *     the control fd of each device stays open, so destroying at shutdown works after the drop;
 *   - vdpa DEV_NEW / DEV_DEL (netlink): CAP_NET_ADMIN, checked at each call: they go through a helper process
 *     forked before the drop that keeps root (./vdpa-helper.ts), so shutdown can still detach;
 *   - opening /dev/vduse/NAME of a new device (devtmpfs node 0600 root): so device.add / device.remove are
 *     refused after the drop.
 */
import { spawnSync } from 'node:child_process';

import { UsageError } from '../../common/errors.js';
import { MgmtError } from './errors.js';

export interface Account {
  user: string;
  uid: number;
  gid: number;
}

/** uid and primary gid of `user` (a name or a number), from id(1) (which reads NSS). */
export function lookupAccount(user: string): Account {
  const ask = (flag: string): number => {
    const r = spawnSync('id', [flag, user], { encoding: 'utf8' });
    const n = Number(r.stdout.trim());
    if (r.status !== 0 || r.stdout.trim() === '' || !Number.isInteger(n)) {
      throw new UsageError(`--user ${user}: no such user`, { code: 'ERR_MGMT_NO_SUCH_USER' });
    }
    return n;
  };
  return { user, uid: ask('-u'), gid: ask('-g') };
}

/** setgroups (initgroups), setgid, setuid; then check that root cannot be regained. */
export function dropPrivileges(account: Account): void {
  const p = process as NodeJS.Process & {
    initgroups?: (user: string, extraGroup: number) => void;
  };
  if (p.getuid?.() !== 0 || !p.setuid || !p.setgid || !p.setgroups || !p.initgroups) {
    throw new MgmtError('ERR_MGMT_PRIVILEGES', `--user ${account.user}: only root can change user`);
  }
  const name = /^\d+$/.test(account.user) ? null : account.user;
  if (name !== null) p.initgroups(name, account.gid);
  else p.setgroups([account.gid]);
  p.setgid(account.gid);
  p.setuid(account.uid);
  let regained = false;
  try {
    p.setuid(0);
    regained = true;
  } catch {
    // expected
  }
  if (regained) {
    throw new MgmtError(
      'ERR_MGMT_PRIVILEGES',
      `--user ${account.user}: could regain root after setuid; refusing to run`,
    );
  }
}
