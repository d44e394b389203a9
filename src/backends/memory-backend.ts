/**
 * The memory backend: a RAM disk. Storage is sparse: a chunk is allocated on the first write into it, reads of
 * chunks never written give zeroes, and discard / write-zeroes give whole chunks back. A disk of any size can
 * be created; only the data written costs memory.
 */
import type { BackendCapabilities, BlockBackend } from './backend.js';
import { checkBackendSize } from './size.js';

export interface MemoryBackendOptions {
  /** Size in bytes (a multiple of 512). */
  size: number;
  readOnly?: boolean;
  /** Allocation unit in bytes: a power of two from 4 KiB to 64 MiB (default 64 KiB). */
  chunkSize?: number;
}

export const DEFAULT_MEMORY_CHUNK_SIZE = 64 * 1024;

export class MemoryBackend implements BlockBackend {
  readonly readOnly: boolean;
  readonly chunkSize: number;
  readonly capabilities: BackendCapabilities;
  #size: number;
  readonly #chunks = new Map<number, Uint8Array>();

  constructor(options: MemoryBackendOptions) {
    checkBackendSize(options.size, 'memory backend');
    const chunkSize = options.chunkSize ?? DEFAULT_MEMORY_CHUNK_SIZE;
    if (
      !Number.isInteger(chunkSize) ||
      chunkSize < 4096 ||
      chunkSize > 2 ** 26 ||
      (chunkSize & (chunkSize - 1)) !== 0
    ) {
      throw new RangeError(
        `memory backend: chunk size ${chunkSize} is not a power of two from 4 KiB to 64 MiB`,
      );
    }
    this.#size = options.size;
    this.readOnly = options.readOnly ?? false;
    this.chunkSize = chunkSize;
    this.capabilities = {
      flush: false,
      discard: true,
      writeZeroes: true,
      writeZeroesUnmap: true,
      secureErase: true,
      minIoSize: 512,
      optIoSize: 0,
      discardAlignment: chunkSize,
    };
  }

  get size(): number {
    return this.#size;
  }

  /** Bytes of RAM holding data (allocated chunks times the chunk size). */
  get allocatedBytes(): number {
    return this.#chunks.size * this.chunkSize;
  }

  // Every request completes synchronously (returns void): the device answers it without a promise.

  read(offset: number, buffers: readonly Uint8Array[]): void {
    for (const buffer of buffers) {
      this.#copyOut(offset, buffer);
      offset += buffer.length;
    }
  }

  write(offset: number, buffers: readonly Uint8Array[]): void {
    for (const buffer of buffers) {
      this.#copyIn(offset, buffer);
      offset += buffer.length;
    }
  }

  flush(): void {}

  discard(offset: number, length: number): void {
    this.#zero(offset, length);
  }

  /** Zeroes are never stored: the range is always deallocated (unmap or not). */
  writeZeroes(offset: number, length: number, _options?: { unmap?: boolean }): void {
    this.#zero(offset, length);
  }

  /** The old data is overwritten with zeroes before its chunk is dropped. */
  secureErase(offset: number, length: number): void {
    this.#zero(offset, length, true);
  }

  resize(size: number): Promise<void> {
    checkBackendSize(size, 'memory backend');
    if (size < this.#size) {
      // Forget what lies beyond the new end so that growing again shows zeroes there.
      this.#zero(size, this.#size - size);
    }
    this.#size = size;
    return Promise.resolve();
  }

  close(): Promise<void> {
    this.#chunks.clear();
    return Promise.resolve();
  }

  #copyOut(offset: number, target: Uint8Array): void {
    const chunkSize = this.chunkSize;
    let done = 0;
    while (done < target.length) {
      const position = offset + done;
      const index = Math.floor(position / chunkSize);
      const within = position - index * chunkSize;
      const count = Math.min(chunkSize - within, target.length - done);
      const chunk = this.#chunks.get(index);
      if (chunk === undefined) target.fill(0, done, done + count);
      else target.set(chunk.subarray(within, within + count), done);
      done += count;
    }
  }

  #copyIn(offset: number, source: Uint8Array): void {
    const chunkSize = this.chunkSize;
    let done = 0;
    while (done < source.length) {
      const position = offset + done;
      const index = Math.floor(position / chunkSize);
      const within = position - index * chunkSize;
      const count = Math.min(chunkSize - within, source.length - done);
      let chunk = this.#chunks.get(index);
      if (chunk === undefined) {
        chunk = new Uint8Array(chunkSize);
        this.#chunks.set(index, chunk);
      }
      chunk.set(source.subarray(done, done + count), within);
      done += count;
    }
  }

  /**
   * Zero [offset, offset + length): whole chunks are dropped, partly covered ones are cleared in place. With
   * `scrub`, dropped chunks are overwritten first (their memory may linger until it is collected).
   */
  #zero(offset: number, length: number, scrub = false): void {
    if (length === 0) return;
    const chunkSize = this.chunkSize;
    const end = offset + length;
    const firstFull = Math.ceil(offset / chunkSize);
    const endFull = Math.floor(end / chunkSize); // exclusive
    if (firstFull >= endFull) {
      // No whole chunk inside: the range lies in one chunk or straddles one boundary.
      const boundary = Math.min(firstFull * chunkSize, end);
      this.#clearPart(offset, boundary);
      this.#clearPart(boundary, end);
      return;
    }
    this.#clearPart(offset, firstFull * chunkSize);
    this.#clearPart(endFull * chunkSize, end);
    if (endFull - firstFull > this.#chunks.size) {
      // A large range over a sparse disk (mkfs discards everything): walk what is allocated, not the range.
      for (const [index, chunk] of this.#chunks) {
        if (index >= firstFull && index < endFull) this.#drop(index, chunk, scrub);
      }
    } else {
      for (let index = firstFull; index < endFull; index++) {
        const chunk = this.#chunks.get(index);
        if (chunk !== undefined) this.#drop(index, chunk, scrub);
      }
    }
  }

  #drop(index: number, chunk: Uint8Array, scrub: boolean): void {
    if (scrub) chunk.fill(0);
    this.#chunks.delete(index);
  }

  /** Clear [start, end), which lies inside one chunk (or is empty). */
  #clearPart(start: number, end: number): void {
    if (start >= end) return;
    const index = Math.floor(start / this.chunkSize);
    const chunk = this.#chunks.get(index);
    if (chunk === undefined) return;
    const base = index * this.chunkSize;
    chunk.fill(0, start - base, end - base);
  }
}
