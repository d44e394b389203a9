/**
 * Errors of the virtio-blk device. What the driver gets wrong in a request is not an error here: it is answered
 * with a status (IOERR / UNSUPP) and logged. What a caller asks wrongly (an option out of range, a resize to a
 * size that cannot be) is a UsageError with code 'ERR_BLK_OPTION' or 'ERR_BLK_RESIZE'; a failure inside the
 * device's data path is a BlkError.
 */
import { UsageError, VduseTsError, type VduseTsErrorOptions } from '../../common/errors.js';

/** A failure of the device itself, e.g. 'ERR_BLK_DATA_PATH': a data-path callback failed; the device needs a reset. */
export class BlkError extends VduseTsError {
  constructor(code: `ERR_BLK_${string}`, message: string, options: VduseTsErrorOptions = {}) {
    super(code, message, options);
  }
}

/** An option of the device that cannot be used (one line, 'virtio-blk: ...'). */
export function blkOptionError(message: string): UsageError {
  return new UsageError(`virtio-blk: ${message}`, { code: 'ERR_BLK_OPTION' });
}

/** A resize that cannot be done as asked. */
export function blkResizeError(message: string): UsageError {
  return new UsageError(`virtio-blk: ${message}`, { code: 'ERR_BLK_RESIZE' });
}
