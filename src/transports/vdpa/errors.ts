/** Errors of the vdpa netlink client: a stable ERR_VDPA_* code and a one-line message; errno when the kernel said no. */
import { VduseTsError } from '../../common/errors.js';

export type VdpaErrorCode =
  | 'ERR_VDPA'
  | 'ERR_VDPA_FAMILY'
  | 'ERR_VDPA_PERMISSION'
  | 'ERR_VDPA_PROTOCOL'
  /** The vdpa bus driver asked for (vhost_vdpa, virtio_vdpa) is not loaded. */
  | 'ERR_VDPA_DRIVER';

export class VdpaError extends VduseTsError {
  declare readonly code: VdpaErrorCode;
  constructor(code: VdpaErrorCode, message: string, options: { cause?: unknown; errno?: string } = {}) {
    super(code, message, options);
  }
}
