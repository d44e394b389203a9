/**
 * Errors of the management plane (`vduse serve`, its API and the device runner), in the one error model of
 * src/common/errors.ts. The JSON-RPC error numbers these map to live only at the RPC edge
 * (./daemon/rpc.ts: RPC_ERROR_NUMBERS).
 */
import { UsageError, VduseTsError, type VduseTsErrorOptions } from '../../common/errors.js';

export type MgmtErrorCode =
  /** device.* on a name the daemon does not hold. */
  | 'ERR_MGMT_NO_SUCH_DEVICE'
  /** device.add of a name the daemon holds (or is adding) already. */
  | 'ERR_MGMT_DEVICE_EXISTS'
  /** device.add / device.remove after the daemon dropped its privileges. */
  | 'ERR_MGMT_NOT_PERMITTED'
  /** The device is mounted, still has requests in flight, or is being removed. */
  | 'ERR_MGMT_DEVICE_BUSY'
  /** A resize that cannot be done (a read-only device, not a multiple of the logical block size). */
  | 'ERR_MGMT_RESIZE'
  /** A resize without a size (SIGHUP) on a backend that is not a regular file. */
  | 'ERR_MGMT_RESIZE_NO_FILE'
  | 'ERR_MGMT_VHOST_USER'
  /** The runner was asked for its VDUSE device before it served one. */
  | 'ERR_MGMT_NOT_STARTED'
  /** A net device's tap cannot be opened (no /dev/net/tun, busy, not a tap, not permitted). */
  | 'ERR_MGMT_TAP'
  /** A method for another type of device (resize of a net device, link of a block device). */
  | 'ERR_MGMT_WRONG_TYPE'
  /** The device did not come up (no block device or vhost node appeared). */
  | 'ERR_MGMT_ATTACH'
  /** A socket, state directory or pid file path the daemon cannot use. */
  | 'ERR_MGMT_PATH'
  /** The metrics listener could not start. */
  | 'ERR_MGMT_METRICS'
  /** --user: no such user, or the privileges could not be dropped for good. */
  | 'ERR_MGMT_PRIVILEGES'
  /** The privileged vdpa helper process failed or is gone. */
  | 'ERR_MGMT_HELPER';

export class MgmtError extends VduseTsError {
  declare readonly code: MgmtErrorCode;
  constructor(code: MgmtErrorCode, message: string, options: VduseTsErrorOptions = {}) {
    super(code, message, options);
  }
}

/**
 * A bad config file, bad device.add params or a bad daemon setting: what a person wrote wrongly (exit 2, and
 * JSON-RPC "invalid params"). `path` is the bad key's path ("devices[1].queues"), without the "config " prefix.
 */
export class ConfigError extends UsageError {
  constructor(
    message: string,
    readonly path: string,
    options: VduseTsErrorOptions = {},
  ) {
    super(message, { ...options, code: 'ERR_CONFIG_INVALID' });
  }
}
