import assert from 'node:assert/strict';
import { test } from 'node:test';

import { NullBackend } from '../../../src/backends/null-backend.js';
import { openBackend } from '../../../src/backends/spec.js';
import { FakeBinding } from '../../../src/testing/fake-binding.js';

const pages = (n: number): Uint8Array[] => Array.from({ length: n }, () => new Uint8Array(4096).fill(0xee));

test('a null read zeroes every buffer of a many-buffer request (a 128 KiB read is 32 page views); read-zeroes=off leaves them', () => {
  const big = pages(32);
  new NullBackend({ size: 1 << 20 }).read(0, big);
  assert.ok(big.every((b) => b.every((x) => x === 0)));
  const off = pages(32);
  new NullBackend({ size: 1 << 20, readZeroes: false }).read(0, off);
  assert.ok(
    off.every((b) => b.every((x) => x === 0xee)),
    'read-zeroes=off leaves the buffers',
  );
});

test('openBackend gives a null backend that zeroes every buffer of a read', async () => {
  const backend = await openBackend('null:1M', { binding: new FakeBinding() });
  const big = pages(8);
  await backend.read(0, big);
  assert.ok(big.every((b) => b.every((x) => x === 0)));
});
