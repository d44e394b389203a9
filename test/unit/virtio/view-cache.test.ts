/**
 * The queues' ViewCache (src/virtio/chain.ts): small buffers offered again at the same address get the same
 * view, but only while the memory generation and the access are the same; what a chain sees is always what
 * memory.gather() would give (a remapped region, a buffer offered writable after readable, one split over two
 * regions, one that became unmapped).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { openSync } from 'node:fs';

import { ACCESS_READ, ACCESS_WRITE } from '../../../src/memory/index.js';
import { HeapMemory } from '../../../src/memory/heap-memory.js';
import { IotlbMemory, type IotlbEntry } from '../../../src/memory/iotlb-memory.js';
import type { SysBinding } from '../../../src/sys/binding.js';
import { MockDriver } from '../../../src/testing/index.js';
import { QueueChain, VIEW_CACHE_MAX_LEN, ViewCache, addDescriptor } from '../../../src/virtio/chain.js';
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
  it('answers only for the same address, length and access, and forgets everything at a new generation', () => {
    const mem = new HeapMemory([{ addr: 0x1000, size: 0x100000 }]);
    const cache = new ViewCache();
    assert.equal(cache.lookup(mem, 0x1010, 0, 16, ACCESS_READ), null);
    const v = mem.view(0x1010, 16, ACCESS_READ);
    cache.store(0x1010, 0, 16, ACCESS_READ, v);
    assert.equal(cache.lookup(mem, 0x1010, 0, 16, ACCESS_READ), v);
    assert.equal(cache.lookup(mem, 0x1010, 0, 8, ACCESS_READ), null);
    assert.equal(cache.lookup(mem, 0x1010, 0, 16, ACCESS_WRITE), null);
    assert.equal(cache.lookup(mem, 0x1010, 1, 16, ACCESS_READ), null);
    assert.equal(cache.lookup(mem, 0x1020, 0, 16, ACCESS_READ), null);
    // Another range in the same slot replaces the entry.
    let other = 0x1020;
    while (cache.lookup(mem, 0x1010, 0, 16, ACCESS_READ) !== null && other < 0x100000) {
      cache.store(other, 0, 16, ACCESS_READ, mem.view(other, 16, ACCESS_READ));
      other += 16;
    }
    assert.equal(cache.lookup(mem, 0x1010, 0, 16, ACCESS_READ), null, 'no address collided');
    cache.store(0x1010, 0, 16, ACCESS_READ, v);
    mem.remapRegion(0x1000);
    assert.equal(cache.lookup(mem, 0x1010, 0, 16, ACCESS_READ), null);
  });
});

describe('ViewCache over IotlbMemory', () => {
  it('a region a look-up found stale is not handed out again from the cache', () => {
    // IOTLB "files" whose byte at file offset X is X & 0xff: a view's content tells which mapping it is of.
    const entries: IotlbEntry[] = [{ start: 0x1000, last: 0x1fff, offset: 0x1000, perm: 3 }];
    let unmaps = 0;
    const binding = {
      mmap(_fd: number, length: number, _prot: number, _flags: number, offset: number): ArrayBuffer {
        const ab = new ArrayBuffer(length);
        const b = new Uint8Array(ab);
        for (let i = 0; i < length; i++) b[i] = (offset + i) & 0xff;
        return ab;
      },
      munmap(ab: ArrayBuffer): void {
        unmaps++;
        structuredClone(ab, { transfer: [ab] }); // detach, as the real binding does
      },
    } as unknown as SysBinding;
    const memory = new IotlbMemory(binding, {
      lookup(iova) {
        const entry = entries.find((e) => iova >= e.start && iova <= e.last);
        return entry ? { entry: { ...entry }, fd: openSync('/dev/null', 'r') } : null;
      },
    });
    const cache = new ViewCache();
    const header = (): Uint8Array => {
      const chain = new QueueChain();
      addDescriptor(chain, memory, cache, 0, 0x1010, 0, 16, false);
      assert.equal(chain.readable.length, 1);
      return chain.readable[0]!;
    };
    const first = header();
    assert.equal(first[0], 0x10);
    assert.equal(header(), first, 'cached');
    // The kernel's map changed without an UPDATE_IOTLB: the entry now comes from elsewhere in the file, and a
    // look-up of another buffer brings it, dropping the old region.
    entries[0] = { start: 0x0, last: 0x2fff, offset: 0x20080, perm: 3 };
    const chain = new QueueChain();
    addDescriptor(chain, memory, cache, 0, 0x2800, 0, 16, false);
    assert.equal(memory.retiredRegions + unmaps, 1, 'the old region was dropped');
    const again = header();
    assert.notEqual(again, first, 'not the view of the dropped region');
    assert.equal(again.length, 16);
    assert.equal(again[0], (0x20080 + 0x1010) & 0xff, 'the bytes of the mapping the kernel has now');
  });
});
