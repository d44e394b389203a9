/**
 * Example: the smallest complete BlockBackend, to copy when you connect your own storage.
 *
 * A RAM disk that answers every request after a fixed latency, as remote storage would. Replace the bodies of
 * read/write/flush/discard/writeZeroes with calls to your storage and keep the rest:
 *
 *   import { VirtioBlkDevice } from 'vduse-ts/dist/src/devices/index.js';
 *   const backend = new LatencyRamBackend({ size: 64 * 1024 * 1024, latencyMs: 1 });
 *   const device = new VirtioBlkDevice({ backend, name: 'demo' });
 *   // then serve `device` through the VDUSE transport (src/transports/vduse), or the mock driver in a test.
 *
 * What the device guarantees you: every offset and length is inside [0, size) and a multiple of the logical
 * block size (512 by default); writes never reach a read-only backend; `buffers` are views of guest memory, valid
 * until your promise settles (read into them / write from them directly, and keep no reference afterwards).
 * Many requests are in flight at once and may finish in any order. A rejected promise answers the guest with an
 * I/O error (VIRTIO_BLK_S_IOERR), or "unsupported" for a BackendError with code 'ERR_BACKEND_UNSUPPORTED' (errno 'ENOTSUP').
 */
import { setTimeout as sleep } from 'node:timers/promises';

import { BackendError, type BackendCapabilities, type BlockBackend } from '../src/backends/backend.js';

export interface LatencyRamBackendOptions {
  /** Bytes, a multiple of 512. */
  size: number;
  /** Milliseconds every request takes (default 1). */
  latencyMs?: number;
}

export class LatencyRamBackend implements BlockBackend {
  readonly size: number;
  readonly readOnly = false;
  /** What the device offers the guest: FLUSH, DISCARD and WRITE_ZEROES (without deallocation). */
  readonly capabilities: BackendCapabilities = {
    flush: true,
    discard: true,
    writeZeroes: true,
    writeZeroesUnmap: false,
    secureErase: false,
    minIoSize: 4096,
    optIoSize: 0,
    discardAlignment: 0,
  };
  readonly #data: Uint8Array;
  readonly #latencyMs: number;
  #closed = false;

  constructor(options: LatencyRamBackendOptions) {
    if (!Number.isSafeInteger(options.size) || options.size % 512 !== 0) {
      throw new RangeError(`size ${options.size} is not a multiple of 512`);
    }
    this.size = options.size;
    this.#data = new Uint8Array(options.size);
    this.#latencyMs = options.latencyMs ?? 1;
  }

  async read(offset: number, buffers: readonly Uint8Array[]): Promise<void> {
    await this.#wait();
    for (const buffer of buffers) {
      buffer.set(this.#data.subarray(offset, offset + buffer.length));
      offset += buffer.length;
    }
  }

  async write(offset: number, buffers: readonly Uint8Array[]): Promise<void> {
    await this.#wait();
    for (const buffer of buffers) {
      this.#data.set(buffer, offset);
      offset += buffer.length;
    }
  }

  async flush(): Promise<void> {
    await this.#wait();
  }

  async discard(offset: number, length: number): Promise<void> {
    await this.writeZeroes(offset, length);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    await this.#wait();
    this.#data.fill(0, offset, offset + length);
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  async #wait(): Promise<void> {
    if (this.#closed) throw new BackendError('the backend is closed');
    await sleep(this.#latencyMs);
  }
}
