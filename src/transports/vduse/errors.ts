import { VduseTsError, systemErrorMessage } from '../../common/errors.js';

/**
 * Errors of the VDUSE transport and the vdpa netlink client. Every VduseError has a stable `code`
 * (ERR_VDUSE_*, ERR_VDPA_*) and a one-line message meant for users; the underlying system error, if any, is
 * the `cause`.
 */

export type VduseErrorCode =
  | 'ERR_VDUSE_UNAVAILABLE'
  | 'ERR_VDUSE_PERMISSION'
  | 'ERR_VDUSE_API'
  | 'ERR_VDUSE_NAME'
  | 'ERR_VDUSE_CONFIG'
  | 'ERR_VDUSE_EXISTS'
  | 'ERR_VDUSE_CREATE'
  | 'ERR_VDUSE_BUSY'
  | 'ERR_VDUSE_NOT_FOUND'
  | 'ERR_VDUSE_DESTROY'
  | 'ERR_VDUSE_CLOSED'
  | 'ERR_VDUSE_OPEN'
  | 'ERR_VDUSE_STATE'
  | 'ERR_VDUSE_RECONNECT'
  | 'ERR_VDUSE_THREADS'
  | 'ERR_VDPA_FAMILY'
  | 'ERR_VDPA_PERMISSION'
  | 'ERR_VDPA'
  | 'ERR_VDPA_PROTOCOL';

export class VduseError extends VduseTsError {
  declare readonly code: VduseErrorCode;
  constructor(code: VduseErrorCode, message: string, cause?: unknown) {
    super(code, message, { cause });
  }
}

export { systemErrorMessage };
