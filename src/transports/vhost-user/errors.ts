import { VduseTsError } from '../../common/errors.js';

/** Errors of the vhost-user transport: a stable `code` and a one-line message; the system error is the `cause`. */
export type VhostUserErrorCode =
  | 'ERR_VHOST_USER_PROTOCOL'
  | 'ERR_VHOST_USER_INFLIGHT'
  | 'ERR_VHOST_USER_SOCKET'
  | 'ERR_VHOST_USER_OPTIONS'
  | 'ERR_VHOST_USER_THREADS';

export class VhostUserError extends VduseTsError {
  declare readonly code: VhostUserErrorCode;
  constructor(code: VhostUserErrorCode, message: string, cause?: unknown) {
    super(code, message, { cause });
  }
}
