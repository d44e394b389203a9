// A block backend whose writes wait until release() (requests kept in flight on purpose).
import type { BackendResult, BlockBackend } from '../../../src/backends/backend.js';

/** Writes wait until release(); everything else goes to `inner`. */
export class GatedBackend implements BlockBackend {
  readonly pending: (() => void)[] = [];
  constructor(readonly inner: BlockBackend) {}
  get size(): number {
    return this.inner.size;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  get capabilities(): BlockBackend['capabilities'] {
    return this.inner.capabilities;
  }
  read(offset: number, buffers: readonly Uint8Array[]): BackendResult {
    return this.inner.read(offset, buffers);
  }
  write(offset: number, buffers: readonly Uint8Array[]): BackendResult {
    const copies = buffers.map((b) => b.slice());
    return new Promise<void>((resolve) => this.pending.push(resolve)).then(() =>
      this.inner.write(offset, copies),
    );
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
  release(): void {
    for (const r of this.pending.splice(0)) r();
  }
  async close(): Promise<void> {}
}
