/**
 * Storage behind a block device: implement BlockBackend to put your own storage behind a virtio-blk device
 * (see examples/latency-backend.ts for a complete one to copy; src/backends has null, memory and file).
 *
 * What the device guarantees a backend:
 * - Offsets and lengths are in bytes. The device checks ranges and alignment before it calls a backend, so a
 *   backend sees only requests inside [0, size) whose offset and length are multiples of the device's logical
 *   block size (512 unless configured larger). Malformed guest requests never reach it.
 * - Writes, discards and write-zeroes never reach a backend whose `readOnly` is true.
 * - Buffers are zero-copy views of guest memory: read into them / write from them directly. They are valid until
 *   the call completes (it returns, or its promise settles); do not keep them (or the array holding them)
 *   afterwards.
 * - Many requests are in flight at once, on several queues, and may complete in any order. The device does not
 *   order overlapping requests (the guest does not send them concurrently); `flush()` covers writes that have
 *   completed before it was called.
 * - After a device reset, results of calls still running are dropped, but the device waits for them to settle.
 *
 * Synchronous or asynchronous: read, write, flush, discard, writeZeroes and secureErase return either a promise
 * (the request completes when it settles) or nothing (`void`: the request completed before the call returned,
 * e.g. a RAM disk, or a read served from a cache on the event-loop thread). The device settles a synchronous
 * result at once, without a promise or microtask, which is the cheapest path. Callers that `await` the result
 * work either way (awaiting undefined is fine); a caller must not call `.then` on it.
 *
 * Errors: a rejected promise, or a throw from the call, answers the guest VIRTIO_BLK_S_IOERR; a BackendError with
 * code 'ERR_BACKEND_UNSUPPORTED' (`new BackendError(message, 'ENOTSUP')`) answers VIRTIO_BLK_S_UNSUPP. Fail rather than crash: guest activity must never take the daemon
 * down.
 */

import { VduseTsError, errnoOf, type VduseTsErrorOptions } from '../common/errors.js';

/** What a request method returns: a promise, or nothing when it completed synchronously (a throw = failure). */
export type BackendResult = Promise<void> | void;

/** What a backend can do; the device offers the matching virtio-blk features and config fields. */
export interface BackendCapabilities {
  /**
   * flush() makes completed writes durable (false: there is nothing to flush, e.g. memory). True offers
   * VIRTIO_BLK_F_FLUSH: without it the guest assumes every completed write is already durable.
   */
  flush: boolean;
  /** discard() is supported (offers VIRTIO_BLK_F_DISCARD). */
  discard: boolean;
  /**
   * writeZeroes() is cheap (offers VIRTIO_BLK_F_WRITE_ZEROES). writeZeroes() must work either way, if need be by
   * writing zeroes.
   */
  writeZeroes: boolean;
  /** writeZeroes({ unmap: true }) may deallocate (config write_zeroes_may_unmap). */
  writeZeroesUnmap: boolean;
  /** secureErase() is implemented (offers VIRTIO_BLK_F_SECURE_ERASE). */
  secureErase: boolean;
  /**
   * Smallest I/O the storage handles without read-modify-write, in bytes (power of two, >= 512): the guest's
   * physical block size (config topology).
   */
  minIoSize: number;
  /** Best I/O size in bytes (0: no preference); config opt_io_size. */
  optIoSize: number;
  /** Discard granularity in bytes (0: any 512-byte sector); config discard_sector_alignment. */
  discardAlignment: number;
  /**
   * Smallest unit the backend can address (a power of two from 512 to 4096; absent: 512): it fails a request
   * whose offset or length is not a multiple of it. A device should use at least this as its logical block size
   * (config blk_size), so that the guest never sends such a request. Optional, for backward compatibility.
   */
  logicalBlockSize?: number;
}

export interface BlockBackend {
  /** Size in bytes (a multiple of 512). The device's capacity is this, rounded down to whole logical blocks. */
  readonly size: number;
  /** Refuse changes; the device then offers VIRTIO_BLK_F_RO and answers writes with IOERR itself. */
  readonly readOnly: boolean;
  readonly capabilities: BackendCapabilities;
  /** Fill `buffers` in order from `offset` (the bytes [offset, offset + total length)). */
  read(offset: number, buffers: readonly Uint8Array[]): BackendResult;
  /** Write `buffers` in order at `offset`. With `fua`, the data is durable when the request completes. */
  write(offset: number, buffers: readonly Uint8Array[], options?: { fua?: boolean }): BackendResult;
  /** Make every write completed before this call durable. */
  flush(): BackendResult;
  /** The guest no longer needs this range: deallocate it if you can (a hint; doing nothing is correct). */
  discard(offset: number, length: number): BackendResult;
  /** Afterwards the range reads as zeroes. With `unmap`, it may also be deallocated. */
  writeZeroes(offset: number, length: number, options?: { unmap?: boolean }): BackendResult;
  /** Erase the range so that the old data cannot be recovered (only with capabilities.secureErase). */
  secureErase?(offset: number, length: number): BackendResult;
  /** Grow or shrink to `size` (online resize; VirtioBlkDevice.resize() calls it). Optional. */
  resize?(size: number): Promise<void>;
  /** Release the storage. The device is reset (no request running) before this is called. */
  close(): Promise<void>;
}

/** The stable codes of BackendError for the errno names a backend request usually fails with. */
const BACKEND_CODES: Readonly<Record<string, string>> = {
  EIO: 'ERR_BACKEND_IO',
  ENOTSUP: 'ERR_BACKEND_UNSUPPORTED',
  EOPNOTSUPP: 'ERR_BACKEND_UNSUPPORTED',
  EROFS: 'ERR_BACKEND_READ_ONLY',
  EBADF: 'ERR_BACKEND_CLOSED',
  ENOSPC: 'ERR_BACKEND_NO_SPACE',
  EINVAL: 'ERR_BACKEND_INVALID',
};

/** The code a request failing with system error `errno` gets: ERR_BACKEND_IO, ERR_BACKEND_UNSUPPORTED, ... */
export function backendCodeFor(errno: string): string {
  return BACKEND_CODES[errno] ?? 'ERR_BACKEND_IO';
}

export interface BackendErrorOptions extends VduseTsErrorOptions {
  /** Stable code (default: from `errno`, see backendCodeFor). */
  code?: string;
}

/**
 * A failed backend request; the device answers VIRTIO_BLK_S_IOERR, or VIRTIO_BLK_S_UNSUPP for code
 * 'ERR_BACKEND_UNSUPPORTED' (errno 'ENOTSUP'). The second argument is the errno name ('EIO' by default), as in
 * `new BackendError('cannot', 'ENOTSUP')`, or options with `code`, `errno` and `cause`.
 */
export class BackendError extends VduseTsError {
  constructor(message: string, errnoOrOptions: string | BackendErrorOptions = 'EIO') {
    const options = typeof errnoOrOptions === 'string' ? { errno: errnoOrOptions } : errnoOrOptions;
    const errno = options.errno ?? errnoOf(options.cause) ?? 'EIO';
    super(options.code ?? backendCodeFor(errno), message, { ...options, errno });
  }
}
