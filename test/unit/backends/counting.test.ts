import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { BackendError } from '../../../src/backends/backend.js';
import { MemoryBackend } from '../../../src/backends/memory-backend.js';
import { CountingBackend } from '../../../src/backends/counting-backend.js';

describe('CountingBackend', () => {
  it('counts what reaches the backend and passes it through', async () => {
    const inner = new MemoryBackend({ size: 1 << 20 });
    const b = new CountingBackend(inner);
    assert.equal(b.size, 1 << 20);
    await b.write(0, [new Uint8Array(512).fill(7), new Uint8Array(512).fill(8)]);
    const out = new Uint8Array(1024);
    await b.read(0, [out]);
    assert.equal(out[0], 7);
    assert.equal(out[1023], 8);
    await b.flush();
    await b.discard(0, 4096);
    await b.writeZeroes(4096, 4096);
    assert.deepEqual(b.counters, {
      reads: 1,
      writes: 1,
      flushes: 1,
      discards: 1,
      writeZeroes: 1,
      secureErases: 0,
      bytesRead: 1024,
      bytesWritten: 1024,
      errors: 0,
    });
    assert.match(b.format(), /^reads=1 writes=1 flushes=1 discards=1 writeZeroes=1 .*errors=0$/);
    await b.close();
  });

  it('counts failures and rethrows them', async () => {
    const failing = {
      size: 4096,
      readOnly: false,
      capabilities: new MemoryBackend({ size: 4096 }).capabilities,
      read: () => Promise.reject(new BackendError('boom')),
      write: () => Promise.resolve(),
      flush: () => Promise.resolve(),
      discard: () => Promise.resolve(),
      writeZeroes: () => Promise.resolve(),
      close: () => Promise.resolve(),
    };
    const b = new CountingBackend(failing);
    await assert.rejects(async () => b.read(0, [new Uint8Array(512)]), /boom/);
    assert.equal(b.counters.errors, 1);
    assert.equal(b.resize, undefined, 'no resize when the backend has none');
  });

  it('passes a synchronous result through without adding a promise, and counts a synchronous throw', () => {
    const inner = new MemoryBackend({ size: 1 << 20 });
    const b = new CountingBackend(inner);
    assert.equal(b.write(0, [new Uint8Array(512).fill(3)]), undefined);
    const out = new Uint8Array(512);
    assert.equal(b.read(0, [out]), undefined);
    assert.equal(out[511], 3, 'the read completed before the call returned');
    assert.equal(b.flush(), undefined);
    assert.equal(b.secureErase?.(0, 512), undefined);
    assert.equal(b.counters.errors, 0);
    inner.write = () => {
      throw new BackendError('sync boom');
    };
    assert.throws(() => b.write(0, [new Uint8Array(512)]), /sync boom/);
    assert.equal(b.counters.errors, 1);
    assert.equal(b.counters.writes, 2);
  });
});
