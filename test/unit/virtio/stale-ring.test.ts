/**
 * A look-up made while a queue translates its ring areas may find a mapping stale and drop it (IotlbMemory: a
 * new memory generation in the middle of map()). The queue then takes every area again, so that it never reads
 * the ring through a view of the dropped mapping.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { GuestMemory } from '../../../src/memory/guest-memory.js';
import { MockDriver } from '../../../src/testing/index.js';
import { createVirtqueue } from '../../../src/virtio/index.js';

const FORMATS = [
  { name: 'split', packed: false },
  { name: 'packed', packed: true },
] as const;

/**
 * The driver's memory, except that the first view handed out is of a mapping that goes away right after it was
 * taken: the region is replaced by a copy (a new generation) and the old bytes are overwritten, as whatever the
 * kernel puts there next would be.
 */
function droppingFirstView(drv: MockDriver): { memory: GuestMemory; views: () => number } {
  let views = 0;
  const memory: GuestMemory = {
    get generation() {
      return drv.memory.generation;
    },
    view(addr, len, access) {
      const v = drv.memory.view(addr, len, access);
      if (views++ === 0) {
        const old = drv.memory.regionList[0]!;
        drv.memory.remapRegion(old.addr);
        old.bytes.fill(0xff);
      }
      return v;
    },
    gather: (addr, len, access, out) => drv.memory.gather(addr, len, access, out),
  };
  return { memory, views: () => views };
}

describe('ring areas and a mapping dropped while they are translated', () => {
  for (const { name, packed } of FORMATS) {
    it(`${name}: the areas are taken again and the chain is read from the live mapping`, () => {
      const drv = new MockDriver({ size: 8, packed });
      const { memory, views } = droppingFirstView(drv);
      const errors: Error[] = [];
      const q = createVirtqueue(drv.config, packed, memory, {
        signal: () => undefined,
        onError: (e) => errors.push(e),
      });
      drv.addChain({ readable: [new Uint8Array([1, 2, 3, 4])], writable: [4] });
      drv.kick();
      const chain = q.pop();
      assert.deepEqual(errors, []);
      assert.ok(chain !== null, 'a chain');
      assert.equal(views(), 6, 'three areas, translated twice');
      assert.deepEqual([...chain.readable[0]!], [1, 2, 3, 4]);
      chain.writable[0]!.set([9, 8, 7, 6]);
      q.addUsed(chain, 4);
      q.publish();
      const [used] = drv.usedEntries();
      assert.equal(used?.len, 4, 'the used entry reached the driver');
      assert.deepEqual([...used.written.subarray(0, 4)], [9, 8, 7, 6]);
    });
  }
});
