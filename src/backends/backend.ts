/**
 * Storage behind a block device. Offsets and lengths are in bytes; the device checks ranges and alignment
 * before it calls a backend, so a backend sees only requests inside [0, size) that are multiples of the
 * device's logical block size. Buffers are views of guest memory: read into them / write from them directly.
 */

export interface BackendCapabilities {
  /** flush() makes completed writes durable (false: there is nothing to flush, e.g. memory). */
  flush: boolean;
  /** discard() is supported. */
  discard: boolean;
  /** writeZeroes() is supported (always possible by writing zeroes; true means cheap). */
  writeZeroes: boolean;
  /** writeZeroes({ unmap: true }) may deallocate. */
  writeZeroesUnmap: boolean;
  /** secureErase() is supported. */
  secureErase: boolean;
  /** Smallest I/O the storage handles without read-modify-write, in bytes (power of two, >= 512). */
  minIoSize: number;
  /** Best I/O size in bytes (0: no preference). */
  optIoSize: number;
  /** Discard granularity in bytes (0: any 512-byte sector). */
  discardAlignment: number;
}

export interface BlockBackend {
  /** Size in bytes (a multiple of 512). */
  readonly size: number;
  readonly readOnly: boolean;
  readonly capabilities: BackendCapabilities;
  /** Fill `buffers` in order from `offset`. */
  read(offset: number, buffers: readonly Uint8Array[]): Promise<void>;
  /** Write `buffers` in order at `offset`. With `fua`, the data is durable when the promise resolves. */
  write(offset: number, buffers: readonly Uint8Array[], options?: { fua?: boolean }): Promise<void>;
  flush(): Promise<void>;
  discard(offset: number, length: number): Promise<void>;
  writeZeroes(offset: number, length: number, options?: { unmap?: boolean }): Promise<void>;
  secureErase?(offset: number, length: number): Promise<void>;
  /** Grow or shrink (online resize); optional. */
  resize?(size: number): Promise<void>;
  close(): Promise<void>;
}

/** A failed backend request; the device answers VIRTIO_BLK_S_IOERR (or UNSUPP for code 'ENOTSUP'). */
export class BackendError extends Error {
  constructor(
    message: string,
    readonly code: string = 'EIO',
  ) {
    super(message);
    this.name = 'BackendError';
  }
}
