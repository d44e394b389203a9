/**
 * The queues' TableCache (src/virtio/chain.ts): an indirect table offered again at the same address and length
 * is read through the typed array made for it the first time, in place (a rewrite of the table shows), and only
 * in the memory generation it was made in (a remap translates it again).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { HeapMemory } from '../../../src/memory/heap-memory.js';
import { MockDriver } from '../../../src/testing/index.js';
import { TableCache, indirectTable } from '../../../src/virtio/chain.js';
import type { Virtqueue } from '../../../src/virtio/index.js';

const FORMATS = [
  { name: 'split', packed: false },
  { name: 'packed', packed: true },
] as const;

/** Offer a 16-byte header and a status byte through an indirect table; what the popped chain saw. */
function offer(
  drv: MockDriver,
  q: Virtqueue,
  hdr: number,
  status: number,
): { header: number; readable: number; writable: number } {
  drv.addBuffers([{ addr: hdr, len: 16 }], [{ addr: status, len: 1 }], true);
  drv.kick();
  const c = q.pop();
  assert.ok(c !== null, q.error?.message);
  const seen = { header: c.readable[0]![0]!, readable: c.readableBytes, writable: c.writableBytes };
  c.writable[0]![0] = 0;
  q.addUsed(c, 1);
  q.publish();
  assert.equal(drv.reclaim(), 1);
  return seen;
}

for (const { name, packed } of FORMATS) {
  describe(`${name} queue: indirect tables offered again`, () => {
    it('a table at the same address with other descriptors in it gives the new buffers', () => {
      const drv = new MockDriver({ size: 8, packed, indirect: true });
      const q = drv.createDeviceQueue();
      const status = drv.alloc(1);
      const headers = [drv.alloc(16), drv.alloc(16), drv.alloc(16)];
      headers.forEach((h, i) => drv.write(h, new Uint8Array(16).fill(0x10 + i)));
      // The mock driver takes each table from a LIFO free list: the same address every round.
      for (let round = 0; round < 6; round++) {
        const seen = offer(drv, q, headers[round % 3]!, status);
        assert.equal(seen.header, 0x10 + (round % 3), `round ${round}`);
        assert.equal(seen.readable, 16);
        assert.equal(seen.writable, 1);
      }
      assert.equal(q.error, null);
    });

    it('after a remap (new generation) the table is translated again, not read from the old buffer', () => {
      const drv = new MockDriver({ size: 8, packed, indirect: true });
      const q = drv.createDeviceQueue();
      const status = drv.alloc(1);
      const a = drv.alloc(16);
      const b = drv.alloc(16);
      drv.write(a, new Uint8Array(16).fill(0xa));
      drv.write(b, new Uint8Array(16).fill(0xb));
      assert.equal(offer(drv, q, a, status).header, 0xa);
      // HeapMemory keeps the old buffer readable: a stale table view would still name buffer `a`.
      drv.memory.remapRegion(drv.memory.regionList[0]!.addr);
      assert.equal(offer(drv, q, b, status).header, 0xb);
      assert.equal(offer(drv, q, a, status).header, 0xa);
      assert.equal(q.error, null);
    });
  });
}

describe('indirectTable with a TableCache', () => {
  it('hands out the same words for the same address and length, in place, until the generation changes', () => {
    const mem = new HeapMemory([{ addr: 0x1000, size: 0x10000 }]);
    const cache = new TableCache();
    const t1 = indirectTable(mem, cache, 0, 0x2000, 0, 32);
    assert.equal(t1.length, 8);
    assert.equal(indirectTable(mem, cache, 0, 0x2000, 0, 32), t1, 'cached');
    // Another length or address is another table.
    assert.equal(indirectTable(mem, cache, 0, 0x2000, 0, 16).length, 4);
    assert.notEqual(indirectTable(mem, cache, 0, 0x2010, 0, 32), t1);
    // In place: what the guest writes into the table later is what the cached words read.
    mem.view(0x2000, 16, 2)[12] = 0x7f;
    assert.equal(indirectTable(mem, cache, 0, 0x2000, 0, 32)[3]! & 0xff, 0x7f);
    mem.remapRegion(0x1000);
    const t2 = indirectTable(mem, cache, 0, 0x2000, 0, 32);
    assert.notEqual(t2, t1);
    mem.view(0x2000, 16, 2)[12] = 0x11;
    assert.equal(t2[3]! & 0xff, 0x11, 'the new mapping');
    assert.equal(t1[3]! & 0xff, 0x7f, 'the old buffer, no longer handed out');
  });

  it('a table split over two regions is copied each time, never cached', () => {
    const mem = new HeapMemory([
      { addr: 0x1000, size: 0x1000 },
      { addr: 0x2000, size: 0x1000 },
    ]);
    const cache = new TableCache();
    const t1 = indirectTable(mem, cache, 0, 0x1ff0, 0, 32);
    const t2 = indirectTable(mem, cache, 0, 0x1ff0, 0, 32);
    assert.notEqual(t2, t1);
    // A copy: a later write by the guest shows only in the next translation.
    mem.view(0x2000, 16, 2)[0] = 0x42;
    assert.equal(t2[4], 0);
    assert.equal(indirectTable(mem, cache, 0, 0x1ff0, 0, 32)[4]! & 0xff, 0x42);
  });

  it('checks the length before it looks in the cache', () => {
    const mem = new HeapMemory([{ addr: 0x1000, size: 0x10000 }]);
    const cache = new TableCache();
    indirectTable(mem, cache, 0, 0x2000, 0, 32);
    assert.throws(() => indirectTable(mem, cache, 0, 0x2000, 0, 0), { kind: 'indirect-table' });
    assert.throws(() => indirectTable(mem, cache, 0, 0x2000, 0, 24), { kind: 'indirect-table' });
  });
});
