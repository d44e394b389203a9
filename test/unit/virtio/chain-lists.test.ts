/**
 * The readable and writable lists of popped chains: a side with no buffer is an empty list shared by all chains
 * (src/virtio/chain.ts NO_BUFFERS), which nothing may write into; every chain's lists stay its own.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { MockDriver } from '../../../src/testing/index.js';
import type { DescriptorChain } from '../../../src/virtio/index.js';

for (const packed of [false, true]) {
  describe(`${packed ? 'packed' : 'split'} queue: chain lists`, () => {
    it('empty sides are empty and frozen; filled sides are not shared between chains', () => {
      const drv = new MockDriver({ size: 8, packed, indirect: true });
      const q = drv.createDeviceQueue();
      const r = drv.alloc(16);
      const w = drv.alloc(16);
      const chains: DescriptorChain[] = [];
      const specs = [
        { readable: [{ addr: r, len: 16 }], writable: [] },
        { readable: [], writable: [{ addr: w, len: 16 }] },
        {
          readable: [{ addr: r, len: 8 }],
          writable: [
            { addr: w, len: 8 },
            { addr: w + 8, len: 8 },
          ],
        },
      ];
      for (const indirect of [false, true]) {
        for (const spec of specs) drv.addBuffers(spec.readable, spec.writable, indirect);
      }
      drv.kick();
      for (let c = q.pop(); c !== null; c = q.pop()) chains.push(c);
      assert.equal(q.error, null);
      assert.equal(chains.length, 6);
      for (let i = 0; i < 6; i++) {
        const c = chains[i]!;
        const spec = specs[i % 3]!;
        assert.deepEqual(
          c.readable.map((v) => v.length),
          spec.readable.map((b) => b.len),
        );
        assert.deepEqual(
          c.writable.map((v) => v.length),
          spec.writable.map((b) => b.len),
        );
        for (const list of [c.readable, c.writable]) {
          if (list.length === 0) {
            assert.ok(Object.isFrozen(list));
            assert.throws(() => (list as Uint8Array[]).push(new Uint8Array(1)), TypeError);
          }
        }
        for (let j = 0; j < i; j++) {
          const o = chains[j]!;
          if (c.readable.length > 0) assert.notEqual(c.readable, o.readable);
          if (c.writable.length > 0) assert.notEqual(c.writable, o.writable);
        }
      }
      for (const c of chains) q.addUsed(c, 0);
      q.publish();
      assert.equal(drv.reclaim(), 6);
    });
  });
}
