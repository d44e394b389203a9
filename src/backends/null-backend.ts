/**
 * The null backend: a disk of a given size that holds nothing. Reads give zeroes, writes are dropped. It is
 * the baseline for benchmarks (it measures the device and transport, not storage).
 */
import type { BackendCapabilities, BlockBackend } from './backend.js';
import { checkBackendSize } from './size.js';

export interface NullBackendOptions {
  /** Size in bytes (a multiple of 512). */
  size: number;
  readOnly?: boolean;
  /**
   * Fill read buffers with zeroes (default true). false leaves the buffers as the driver gave them: no data is
   * produced at all, which only makes sense to measure the request path.
   */
  readZeroes?: boolean;
  /**
   * Zero many buffers in one call (the native addon's SysBinding.zeroFill); used for reads of at least
   * NATIVE_FILL_MIN_BUFFERS buffers. Absent: TypedArray.fill per buffer.
   */
  zeroFill?: (buffers: readonly Uint8Array[]) => unknown;
}

/**
 * From this many buffers a read is zeroed with one zeroFill call instead of a fill() per buffer (a 128 KiB read
 * is 32 page-sized views of guest memory; a 4 KiB read is one, where fill() is cheaper than crossing to C++).
 */
export const NATIVE_FILL_MIN_BUFFERS = 4;

export class NullBackend implements BlockBackend {
  readonly size: number;
  readonly readOnly: boolean;
  readonly readZeroes: boolean;
  readonly capabilities: BackendCapabilities = {
    flush: false,
    discard: true,
    writeZeroes: true,
    writeZeroesUnmap: true,
    secureErase: false,
    minIoSize: 512,
    optIoSize: 0,
    discardAlignment: 0,
  };

  readonly #zeroFill: ((buffers: readonly Uint8Array[]) => unknown) | null;

  constructor(options: NullBackendOptions) {
    checkBackendSize(options.size, 'null backend');
    this.size = options.size;
    this.readOnly = options.readOnly ?? false;
    this.readZeroes = options.readZeroes ?? true;
    this.#zeroFill = options.zeroFill ?? null;
  }

  // Every request completes synchronously (returns void): the device answers it without a promise.

  read(_offset: number, buffers: readonly Uint8Array[]): void {
    if (!this.readZeroes) return;
    if (this.#zeroFill !== null && buffers.length >= NATIVE_FILL_MIN_BUFFERS) this.#zeroFill(buffers);
    else for (let i = 0; i < buffers.length; i++) buffers[i]!.fill(0);
  }

  write(_offset: number, _buffers: readonly Uint8Array[]): void {}

  flush(): void {}

  discard(_offset: number, _length: number): void {}

  writeZeroes(_offset: number, _length: number): void {}

  close(): Promise<void> {
    return Promise.resolve();
  }
}
