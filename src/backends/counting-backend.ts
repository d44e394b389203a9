/**
 * A BlockBackend wrapper that counts what reaches the backend: `vduse blk --stats` prints these counters, which
 * is how a test sees that a guest `sync` became a backend flush, or a `blkdiscard` a backend discard.
 */
import type { BackendCapabilities, BackendResult, BlockBackend } from './backend.js';

export interface BackendCounters {
  reads: number;
  writes: number;
  flushes: number;
  discards: number;
  writeZeroes: number;
  secureErases: number;
  bytesRead: number;
  bytesWritten: number;
  errors: number;
}

function sum(buffers: readonly Uint8Array[]): number {
  let n = 0;
  for (let i = 0; i < buffers.length; i++) n += buffers[i]!.length;
  return n;
}

export class CountingBackend implements BlockBackend {
  readonly counters: BackendCounters = {
    reads: 0,
    writes: 0,
    flushes: 0,
    discards: 0,
    writeZeroes: 0,
    secureErases: 0,
    bytesRead: 0,
    bytesWritten: 0,
    errors: 0,
  };
  readonly secureErase?: (offset: number, length: number) => BackendResult;
  readonly resize?: (size: number) => Promise<void>;

  constructor(readonly inner: BlockBackend) {
    const erase = inner.secureErase?.bind(inner);
    if (erase) {
      this.secureErase = (offset, length) => {
        this.counters.secureErases++;
        try {
          return this.#count(erase(offset, length));
        } catch (error) {
          this.counters.errors++;
          throw error;
        }
      };
    }
    const resize = inner.resize?.bind(inner);
    if (resize) this.resize = (size) => resize(size);
  }

  get size(): number {
    return this.inner.size;
  }

  get readOnly(): boolean {
    return this.inner.readOnly;
  }

  get capabilities(): BackendCapabilities {
    return this.inner.capabilities;
  }

  // A synchronous result (void) passes straight through: no promise is added for it. A throw is counted.

  read(offset: number, buffers: readonly Uint8Array[]): BackendResult {
    this.counters.reads++;
    this.counters.bytesRead += sum(buffers);
    try {
      return this.#count(this.inner.read(offset, buffers));
    } catch (error) {
      this.counters.errors++;
      throw error;
    }
  }

  write(offset: number, buffers: readonly Uint8Array[], options?: { fua?: boolean }): BackendResult {
    this.counters.writes++;
    this.counters.bytesWritten += sum(buffers);
    try {
      return this.#count(this.inner.write(offset, buffers, options));
    } catch (error) {
      this.counters.errors++;
      throw error;
    }
  }

  flush(): BackendResult {
    this.counters.flushes++;
    try {
      return this.#count(this.inner.flush());
    } catch (error) {
      this.counters.errors++;
      throw error;
    }
  }

  discard(offset: number, length: number): BackendResult {
    this.counters.discards++;
    try {
      return this.#count(this.inner.discard(offset, length));
    } catch (error) {
      this.counters.errors++;
      throw error;
    }
  }

  writeZeroes(offset: number, length: number, options?: { unmap?: boolean }): BackendResult {
    this.counters.writeZeroes++;
    try {
      return this.#count(this.inner.writeZeroes(offset, length, options));
    } catch (error) {
      this.counters.errors++;
      throw error;
    }
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  /** One line: "reads=1 writes=2 flushes=0 ...". */
  format(): string {
    return Object.entries(this.counters)
      .map(([k, v]) => `${k}=${v}`)
      .join(' ');
  }

  /** A promise gets a failure counter; a synchronous result (undefined) is returned as it is. */
  #count(result: BackendResult): BackendResult {
    if (result === undefined) return undefined;
    return result.catch(this.#countError);
  }

  readonly #countError = (error: unknown): never => {
    this.counters.errors++;
    throw error;
  };
}
