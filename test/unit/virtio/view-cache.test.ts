/**
 * The queues' ViewCache (src/virtio/chain.ts): small buffers offered again at the same address get the same
 * view, but only while the memory generation and the access are the same; what a chain sees is always what
 * memory.gather() would give (a remapped region, a buffer offered writable after readable, one split over two
 * regions, one that became unmapped).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { ACCESS_READ } from '../../../src/memory/index.js';
import { HeapMemory } from '../../../src/memory/heap-memory.js';
import { MockDriver } from '../../../src/testing/index.js';
import { VIEW_CACHE_MAX_LEN, ViewCache } from '../../../src/virtio/chain.js';
import type { DescriptorChain, Virtqueue } from '../../../src/virtio/index.js';

const FORMATS = [
  { name: 'split', packed: false },
  { name: 'packed', packed: true },
] as const;

function roundTrip(drv: MockDriver, q: Virtqueue, hdr: number, status: number): DescriptorChain {
  drv.addBuffers([{ addr: hdr, len: 16 }], [{ addr: status, len: 1 }]);
  drv.kick();
  const c = q.pop();
  assert.ok(c !== null, q.error?.message);
  q.addUsed(c, 1);
  q.publish();
  assert.equal(drv.reclaim(), 1);
  return c;
}

for (const { name, packed } of FORMATS) {
  describe(`${name} queue: views of small buffers`, () => {
    it('the same small buffer at the same address gets the same view; a large one a new view', () => {
      const drv = new MockDriver({ size: 8, packed });
      const q = drv.createDeviceQueue();
      const hdr = drv.alloc(16);
      const status = drv.alloc(1);
      const a = roundTrip(drv, q, hdr, status);
      const b = roundTrip(drv, q, hdr, status);
      assert.equal(b.readable[0], a.readable[0]);
      assert.equal(b.writable[0], a.writable[0]);
      const big = drv.alloc(VIEW_CACHE_MAX_LEN + 1);
      const views: Uint8Array[] = [];
      for (let i = 0; i < 2; i++) {
        drv.addBuffers([{ addr: big, len: VIEW_CACHE_MAX_LEN + 1 }], []);
        drv.kick();
        const c = q.pop()!;
        views.push(c.readable[0]!);
        q.addUsed(c, 0);
        q.publish();
        drv.reclaim();
      }
      assert.notEqual(views[0], views[1]);
      assert.equal(views[1]!.length, VIEW_CACHE_MAX_LEN + 1);
    });

    it('after a remap (new generation) the chain sees the new bytes and its writes reach the driver', () => {
      const drv = new MockDriver({ size: 8, packed });
      const q = drv.createDeviceQueue();
      const hdr = drv.alloc(16);
      const status = drv.alloc(1);
      drv.write(hdr, new Uint8Array(16).fill(1));
      const a = roundTrip(drv, q, hdr, status);
      drv.memory.remapRegion(drv.memory.regionList[0]!.addr);
      drv.write(hdr, new Uint8Array(16).fill(2));
      drv.addBuffers([{ addr: hdr, len: 16 }], [{ addr: status, len: 1 }]);
      drv.kick();
      const b = q.pop()!;
      assert.notEqual(b.readable[0], a.readable[0]);
      assert.equal(b.readable[0]![0], 2);
      b.writable[0]![0] = 0x5a;
      q.addUsed(b, 1);
      q.publish();
      assert.equal(drv.read(status, 1)[0], 0x5a);
    });

    it('a buffer cached as readable in a read-only region is refused when offered writable', () => {
      const drv = new MockDriver({ size: 8, packed });
      const main = drv.memory.regionList[0]!;
      const ro = main.addr + main.size;
      drv.memory.addRegion({ addr: ro, size: 4096, access: ACCESS_READ });
      const q = drv.createDeviceQueue();
      drv.addBuffers([{ addr: ro, len: 16 }], [{ addr: drv.alloc(1), len: 1 }]);
      drv.kick();
      const c = q.pop()!;
      q.addUsed(c, 1);
      q.publish();
      drv.reclaim();
      drv.addBuffers([], [{ addr: ro, len: 16 }]);
      drv.kick();
      assert.equal(q.pop(), null);
      assert.equal(q.error?.kind, 'memory');
    });

    it('a buffer whose region went away is refused even though its view was cached', () => {
      const drv = new MockDriver({ size: 8, packed });
      const extra = 2 ** 36;
      drv.memory.addRegion({ addr: extra, size: 4096 });
      const q = drv.createDeviceQueue();
      const status = drv.alloc(1);
      roundTrip(drv, q, extra, status);
      drv.memory.removeRegion(extra);
      drv.addBuffers([{ addr: extra, len: 16 }], [{ addr: status, len: 1 }]);
      drv.kick();
      assert.equal(q.pop(), null);
      assert.equal(q.error?.kind, 'memory');
    });

    it('a small buffer split over two regions gets both parts, each time', () => {
      const drv = new MockDriver({ size: 8, packed });
      const main = drv.memory.regionList[0]!;
      const end = main.addr + main.size;
      drv.memory.addRegion({ addr: end, size: 4096 });
      const q = drv.createDeviceQueue();
      const status = drv.alloc(1);
      for (let i = 0; i < 2; i++) {
        const c = roundTrip(drv, q, end - 8, status);
        assert.deepEqual(
          c.readable.map((v) => v.length),
          [8, 8],
        );
        assert.equal(c.readableBytes, 16);
      }
    });
  });
}

describe('ViewCache', () => {
  it('answers what gather() answers, and forgets everything at a new generation', () => {
    const mem = new HeapMemory([{ addr: 0x1000, size: 0x1000 }]);
    const cache = new ViewCache();
    const out: Uint8Array[] = [];
    cache.gather(mem, 0x1010, 0, 16, ACCESS_READ, out);
    cache.gather(mem, 0x1010, 0, 16, ACCESS_READ, out);
    cache.gather(mem, 0x1010, 0, 8, ACCESS_READ, out); // another length: another view
    assert.equal(out[0], out[1]);
    assert.notEqual(out[2], out[0]);
    assert.equal(out[2]!.length, 8);
    assert.equal(out[0]!.byteOffset, 0x10);
    // A colliding address in the same slot replaces the entry, and the old one is translated again correctly.
    for (let a = 0x1000; a < 0x2000; a += 16) cache.gather(mem, a, 0, 16, ACCESS_READ, []);
    const again: Uint8Array[] = [];
    cache.gather(mem, 0x1010, 0, 16, ACCESS_READ, again);
    assert.equal(again[0]!.byteOffset, 0x10);
    assert.equal(again[0]!.length, 16);
    mem.remapRegion(0x1000);
    const after: Uint8Array[] = [];
    cache.gather(mem, 0x1010, 0, 16, ACCESS_READ, after);
    assert.notEqual(after[0], out[0]);
    assert.notEqual(after[0]!.buffer, out[0]!.buffer);
    // The high address word is part of the key.
    const high = new HeapMemory([
      { addr: 0x1000, size: 0x1000 },
      { addr: 2 ** 32 + 0x1000, size: 0x1000 },
    ]);
    const c2 = new ViewCache();
    const h: Uint8Array[] = [];
    c2.gather(high, 0x1010, 0, 16, ACCESS_READ, h);
    c2.gather(high, 0x1010, 1, 16, ACCESS_READ, h);
    assert.notEqual(h[0]!.buffer, h[1]!.buffer);
  });
});
