import assert from 'node:assert/strict';
import { test } from 'node:test';

import { NATIVE_FILL_MIN_BUFFERS, NullBackend } from '../../../src/backends/null-backend.js';
import { openBackend } from '../../../src/backends/spec.js';
import { FakeBinding } from '../../../src/testing/fake-binding.js';

const pages = (n: number): Uint8Array[] => Array.from({ length: n }, () => new Uint8Array(4096).fill(0xee));

test('null reads of many buffers are zeroed with one zeroFill call; small ones and the fallback with fill()', () => {
  const seen: number[] = [];
  const backend = new NullBackend({
    size: 1 << 20,
    zeroFill: (buffers) => {
      seen.push(buffers.length);
      for (const b of buffers) b.fill(0);
    },
  });
  const big = pages(32);
  backend.read(0, big);
  assert.deepEqual(seen, [32]);
  assert.ok(big.every((b) => b.every((x) => x === 0)));
  const small = pages(NATIVE_FILL_MIN_BUFFERS - 1);
  backend.read(0, small);
  assert.deepEqual(seen, [32], 'below the threshold: no call');
  assert.ok(small.every((b) => b.every((x) => x === 0)));
  const plain = pages(32);
  new NullBackend({ size: 1 << 20 }).read(0, plain);
  assert.ok(
    plain.every((b) => b.every((x) => x === 0)),
    'without zeroFill: fill()',
  );
  const off = pages(32);
  new NullBackend({ size: 1 << 20, readZeroes: false, zeroFill: () => seen.push(-1) }).read(0, off);
  assert.ok(
    off.every((b) => b.every((x) => x === 0xee)),
    'read-zeroes=off leaves the buffers',
  );
  assert.deepEqual(seen, [32]);
});

test('openBackend does not give a null backend the binding zeroFill (it measured slower under emulation)', async () => {
  const binding = new FakeBinding();
  const backend = await openBackend('null:1M', { binding });
  const big = pages(8);
  await backend.read(0, big);
  assert.equal(binding.calls.zeroFill, 0);
  assert.ok(big.every((b) => b.every((x) => x === 0)));
});
