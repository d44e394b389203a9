/**
 * A BlockBackend wrapper that counts what reaches the backend: `vduse blk --stats` prints these counters, which
 * is how a test sees that a guest `sync` became a backend flush, or a `blkdiscard` a backend discard.
 */
import type { BackendCapabilities, BlockBackend } from '../backends/backend.js';

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

const sum = (buffers: readonly Uint8Array[]): number => buffers.reduce((n, b) => n + b.length, 0);

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
  readonly secureErase?: (offset: number, length: number) => Promise<void>;
  readonly resize?: (size: number) => Promise<void>;

  constructor(readonly inner: BlockBackend) {
    const erase = inner.secureErase?.bind(inner);
    if (erase) {
      this.secureErase = (offset, length) => {
        this.counters.secureErases++;
        return this.#count(erase(offset, length));
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

  read(offset: number, buffers: readonly Uint8Array[]): Promise<void> {
    this.counters.reads++;
    this.counters.bytesRead += sum(buffers);
    return this.#count(this.inner.read(offset, buffers));
  }

  write(offset: number, buffers: readonly Uint8Array[], options?: { fua?: boolean }): Promise<void> {
    this.counters.writes++;
    this.counters.bytesWritten += sum(buffers);
    return this.#count(this.inner.write(offset, buffers, options));
  }

  flush(): Promise<void> {
    this.counters.flushes++;
    return this.#count(this.inner.flush());
  }

  discard(offset: number, length: number): Promise<void> {
    this.counters.discards++;
    return this.#count(this.inner.discard(offset, length));
  }

  writeZeroes(offset: number, length: number, options?: { unmap?: boolean }): Promise<void> {
    this.counters.writeZeroes++;
    return this.#count(this.inner.writeZeroes(offset, length, options));
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

  #count(p: Promise<void>): Promise<void> {
    return p.catch((err: unknown) => {
      this.counters.errors++;
      throw err;
    });
  }
}
