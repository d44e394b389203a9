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
}

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

  constructor(options: NullBackendOptions) {
    checkBackendSize(options.size, 'null backend');
    this.size = options.size;
    this.readOnly = options.readOnly ?? false;
    this.readZeroes = options.readZeroes ?? true;
  }

  // Every request completes synchronously (returns void): the device answers it without a promise.

  read(_offset: number, buffers: readonly Uint8Array[]): void {
    if (!this.readZeroes) return;
    for (let i = 0; i < buffers.length; i++) buffers[i]!.fill(0);
  }

  write(_offset: number, _buffers: readonly Uint8Array[]): void {}

  flush(): void {}

  discard(_offset: number, _length: number): void {}

  writeZeroes(_offset: number, _length: number): void {}

  close(): Promise<void> {
    return Promise.resolve();
  }
}
