/**
 * A null backend whose size can change (it holds nothing, so any size is as good as another): what `vduse blk
 * --backend null:SIZE` serves, so that a resize works on it.
 */
import type { BackendResult, BlockBackend } from './backend.js';
import type { NullBackend } from './null-backend.js';

export class ResizableNull implements BlockBackend {
  #size: number;
  constructor(readonly inner: NullBackend) {
    this.#size = inner.size;
  }
  get size(): number {
    return this.#size;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  get capabilities(): NullBackend['capabilities'] {
    return this.inner.capabilities;
  }
  read(offset: number, buffers: readonly Uint8Array[]): BackendResult {
    return this.inner.read(offset, buffers);
  }
  write(offset: number, buffers: readonly Uint8Array[]): BackendResult {
    return this.inner.write(offset, buffers);
  }
  flush(): BackendResult {
    return this.inner.flush();
  }
  discard(offset: number, length: number): BackendResult {
    return this.inner.discard(offset, length);
  }
  writeZeroes(offset: number, length: number): BackendResult {
    return this.inner.writeZeroes(offset, length);
  }
  resize(size: number): Promise<void> {
    if (!Number.isSafeInteger(size) || size <= 0 || size % 512 !== 0) {
      return Promise.reject(new RangeError(`null backend: size ${size} is not a positive multiple of 512`));
    }
    this.#size = size;
    return Promise.resolve();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
