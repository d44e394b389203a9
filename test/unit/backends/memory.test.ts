import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { MemoryBackend } from '../../../src/backends/memory-backend.js';
import { NullBackend } from '../../../src/backends/null-backend.js';

const KiB = 1024;
const MiB = 1024 * KiB;

function bytes(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (i * 31 + seed * 7 + (i >> 8)) & 0xff;
  return out;
}

describe('MemoryBackend', () => {
  it('is sparse: nothing is allocated until written, unwritten data reads as zeroes', async () => {
    const backend = new MemoryBackend({ size: 2 ** 50 });
    assert.equal(backend.size, 2 ** 50);
    assert.equal(backend.allocatedBytes, 0);
    const buffer = new Uint8Array(4096).fill(0xaa);
    await backend.read(2 ** 49, [buffer]);
    assert.ok(buffer.every((b) => b === 0));
    await backend.write(2 ** 49, [bytes(512, 1)]);
    assert.equal(backend.allocatedBytes, 64 * KiB);
  });

  it('reads and writes across chunk boundaries and several buffers', async () => {
    const backend = new MemoryBackend({ size: MiB, chunkSize: 4096 });
    const data = bytes(12 * KiB, 2);
    // Three buffers of odd sizes that straddle chunks.
    await backend.write(3584, [data.subarray(0, 1000), data.subarray(1000, 9000), data.subarray(9000)]);
    const out = [new Uint8Array(5000), new Uint8Array(12 * KiB - 5000)];
    await backend.read(3584, out);
    assert.deepEqual(out[0], data.subarray(0, 5000));
    assert.deepEqual(out[1], data.subarray(5000));
    assert.equal(backend.allocatedBytes, 4 * 4096);
  });

  it('discard and write-zeroes free whole chunks and clear partial ones', async () => {
    const backend = new MemoryBackend({ size: MiB, chunkSize: 4096 });
    await backend.write(0, [bytes(64 * KiB, 3)]);
    assert.equal(backend.allocatedBytes, 64 * KiB);
    await backend.discard(2048, 16 * KiB); // clears the second half of chunk 0, frees chunks 1-3, clears half of chunk 4
    assert.equal(backend.allocatedBytes, 13 * 4096);
    await backend.writeZeroes(40 * KiB, 24 * KiB, { unmap: true });
    assert.equal(backend.allocatedBytes, 7 * 4096);
    const out = new Uint8Array(64 * KiB);
    await backend.read(0, [out]);
    const expected = bytes(64 * KiB, 3);
    expected.fill(0, 2048, 2048 + 16 * KiB);
    expected.fill(0, 40 * KiB);
    assert.deepEqual(out, expected);
    // A range inside one chunk and one that straddles a boundary without covering a chunk.
    await backend.write(0, [bytes(16 * KiB, 4)]);
    await backend.discard(512, 1024);
    await backend.writeZeroes(4096 + 3072, 2048);
    await backend.read(0, [out.subarray(0, 16 * KiB)]);
    const again = bytes(16 * KiB, 4);
    again.fill(0, 512, 1536);
    again.fill(0, 4096 + 3072, 4096 + 5120);
    assert.deepEqual(out.subarray(0, 16 * KiB), again);
  });

  it('discarding a huge sparse range walks only what is allocated', async () => {
    const backend = new MemoryBackend({ size: 2 ** 50 });
    await backend.write(2 ** 40, [bytes(4096, 5)]);
    const start = Date.now();
    await backend.discard(0, 2 ** 50);
    assert.ok(Date.now() - start < 1000);
    assert.equal(backend.allocatedBytes, 0);
  });

  it('secure erase zeroes the data', async () => {
    const backend = new MemoryBackend({ size: MiB });
    await backend.write(0, [bytes(128 * KiB, 6)]);
    await backend.secureErase(0, 128 * KiB);
    const out = new Uint8Array(128 * KiB);
    await backend.read(0, [out]);
    assert.ok(out.every((b) => b === 0));
    assert.equal(backend.allocatedBytes, 0);
  });

  it('resize shrinks (forgetting the tail) and grows (with zeroes)', async () => {
    const backend = new MemoryBackend({ size: MiB, chunkSize: 4096 });
    await backend.write(MiB - 8192, [bytes(8192, 7)]);
    await backend.resize(MiB - 6144);
    assert.equal(backend.size, MiB - 6144);
    await backend.resize(MiB);
    const out = new Uint8Array(8192);
    await backend.read(MiB - 8192, [out]);
    assert.deepEqual(out.subarray(0, 2048), bytes(8192, 7).subarray(0, 2048));
    assert.ok(out.subarray(2048).every((b) => b === 0));
  });

  it('checks its options', () => {
    assert.throws(() => new MemoryBackend({ size: 1000 }), /multiple of 512/);
    assert.throws(() => new MemoryBackend({ size: MiB, chunkSize: 3000 }), /chunk size/);
    assert.throws(() => new MemoryBackend({ size: MiB, chunkSize: 1024 }), /chunk size/);
    assert.equal(new MemoryBackend({ size: MiB, readOnly: true }).readOnly, true);
  });
});

describe('NullBackend', () => {
  it('reads zeroes and drops writes', async () => {
    const backend = new NullBackend({ size: MiB });
    await backend.write(0, [new Uint8Array(512).fill(1)]);
    const out = new Uint8Array(512).fill(0xee);
    await backend.read(0, [out]);
    assert.ok(out.every((b) => b === 0));
    assert.equal(backend.capabilities.flush, false);
    await backend.discard(0, 512);
    await backend.writeZeroes(0, 512);
    await backend.flush();
  });

  it('can leave read buffers untouched', async () => {
    const backend = new NullBackend({ size: MiB, readZeroes: false });
    const out = new Uint8Array(512).fill(0xee);
    await backend.read(0, [out]);
    assert.ok(out.every((b) => b === 0xee));
  });

  it('checks its size', () => {
    assert.throws(() => new NullBackend({ size: -512 }), RangeError);
    assert.throws(() => new NullBackend({ size: 2 ** 60 }), RangeError);
  });
});
