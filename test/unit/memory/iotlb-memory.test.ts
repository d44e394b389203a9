import assert from 'node:assert/strict';
import { openSync } from 'node:fs';
import { describe, it } from 'node:test';

import { ACCESS_READ, ACCESS_RW, ACCESS_WRITE, GuestMemoryError } from '../../../src/memory/guest-memory.js';
import { PROT_READ, PROT_WRITE, type SysBinding } from '../../../src/sys/binding.js';
import type { IotlbEntry } from '../../../src/transports/vduse/ioctls.js';
import { IotlbMemory, type IotlbSource } from '../../../src/memory/iotlb-memory.js';

/** An IOTLB made of "files": the bytes at file offset X are X & 0xff, so a view's content tells where it maps. */
function setup(entries: IotlbEntry[]) {
  const calls = {
    lookups: [] as number[],
    mmaps: [] as { length: number; prot: number; offset: number }[],
    unmaps: 0,
  };
  const source: IotlbSource = {
    lookup(iova) {
      calls.lookups.push(iova);
      const entry = entries.find((e) => iova >= e.start && iova <= e.last);
      return entry ? { entry: { ...entry }, fd: openSync('/dev/null', 'r') } : null;
    },
  };
  const binding = {
    mmap(_fd: number, length: number, prot: number, _flags: number, offset: number): ArrayBuffer {
      assert.equal(offset % 4096, 0, 'mmap offsets are page-aligned');
      calls.mmaps.push({ length, prot, offset });
      const ab = new ArrayBuffer(length);
      const b = new Uint8Array(ab);
      for (let i = 0; i < length; i++) b[i] = (offset + i) & 0xff;
      return ab;
    },
    munmap(ab: ArrayBuffer): void {
      calls.unmaps++;
      structuredClone(ab, { transfer: [ab] }); // detach, as the real binding does
    },
  } as unknown as SysBinding;
  return { memory: new IotlbMemory(binding, source), calls };
}

describe('IotlbMemory', () => {
  it('maps an entry lazily on the first access and serves later accesses from the cache', () => {
    const { memory, calls } = setup([{ start: 0x10000, last: 0x1ffff, offset: 0x10000, perm: 3 }]);
    const v = memory.view(0x10010, 4, ACCESS_READ);
    assert.deepEqual([...v], [0x10, 0x11, 0x12, 0x13]);
    memory.view(0x1fffc, 4, ACCESS_WRITE);
    memory.view(0x10000, 1, ACCESS_RW);
    assert.equal(calls.lookups.length, 1);
    assert.deepEqual(calls.mmaps, [{ length: 0x10000, prot: PROT_READ | PROT_WRITE, offset: 0x10000 }]);
    assert.equal(memory.mappedRegions, 1);
  });

  it('aligns an unaligned file offset down to a page and adds the difference', () => {
    const { memory, calls } = setup([{ start: 0x4000, last: 0x4fff, offset: 0x123456, perm: 3 }]);
    const v = memory.view(0x4000, 2, ACCESS_READ);
    assert.deepEqual([...v], [0x56, 0x57]);
    assert.deepEqual(calls.mmaps, [{ length: 0x456 + 0x1000, prot: 3, offset: 0x123000 }]);
  });

  it('maps read-only entries PROT_READ and refuses device writes to them', () => {
    const { memory, calls } = setup([{ start: 0, last: 0xfff, offset: 0, perm: 1 }]);
    assert.equal(memory.view(0, 8, ACCESS_READ).length, 8);
    assert.equal(calls.mmaps[0]?.prot, PROT_READ);
    assert.throws(() => memory.view(0, 8, ACCESS_WRITE), GuestMemoryError);
    assert.throws(() => memory.view(0, 8, ACCESS_RW), /does not allow/);
  });

  it('refuses write-only entries (they cannot be mapped) and unmapped addresses', () => {
    const { memory, calls } = setup([{ start: 0, last: 0xfff, offset: 0, perm: 2 }]);
    assert.throws(() => memory.view(0, 4, ACCESS_WRITE), /write-only/);
    assert.throws(() => memory.view(0x5000, 4, ACCESS_READ), /not mapped/);
    assert.equal(calls.mmaps.length, 0);
  });

  it('view() refuses a range crossing a region end; gather() splits it across regions', () => {
    const { memory } = setup([
      { start: 0x1000, last: 0x1fff, offset: 0x1000, perm: 3 },
      { start: 0x2000, last: 0x2fff, offset: 0x7000, perm: 3 },
    ]);
    assert.throws(() => memory.view(0x1ffe, 4, ACCESS_READ), /crosses/);
    const out: Uint8Array[] = [];
    memory.gather(0x1ffe, 4, ACCESS_READ, out);
    assert.deepEqual(
      out.map((b) => [...b]),
      [
        [0xfe, 0xff],
        [0x00, 0x01],
      ],
    );
    assert.equal(memory.mappedRegions, 2);
  });

  it('gather() inside one region appends one view of exactly the range, and checks the permission', () => {
    const { memory } = setup([
      { start: 0x1000, last: 0x1fff, offset: 0x1000, perm: 1 },
      { start: 0x2000, last: 0x2fff, offset: 0x7000, perm: 3 },
    ]);
    const out: Uint8Array[] = [new Uint8Array(1)];
    memory.gather(0x1ff0, 0x10, ACCESS_READ, out);
    assert.equal(out.length, 2);
    assert.deepEqual([...out[1]!.subarray(0, 2)], [0xf0, 0xf1]);
    assert.equal(out[1]!.length, 0x10);
    assert.throws(() => memory.gather(0x1ff0, 0x10, ACCESS_WRITE, out), /does not allow/);
    assert.throws(() => memory.gather(0x1ff0, 0x20, ACCESS_WRITE, out), /does not allow/);
    assert.equal(out.length, 2);
  });

  it('gather() appends nothing when any byte is unmapped', () => {
    const { memory } = setup([{ start: 0x1000, last: 0x1fff, offset: 0x1000, perm: 3 }]);
    const out: Uint8Array[] = [];
    assert.throws(() => memory.gather(0x1ff0, 0x20, ACCESS_READ, out), GuestMemoryError);
    assert.equal(out.length, 0);
    memory.gather(0x1000, 0, ACCESS_READ, out);
    assert.equal(out.length, 0);
  });

  it('invalidate() drops only the overlapping regions, detaches their views and bumps the generation', () => {
    const { memory, calls } = setup([
      { start: 0x1000, last: 0x1fff, offset: 0x1000, perm: 3 },
      { start: 0x8000, last: 0x8fff, offset: 0x8000, perm: 3 },
    ]);
    const a = memory.view(0x1000, 16, ACCESS_READ);
    const b = memory.view(0x8000, 16, ACCESS_READ);
    const g = memory.generation;
    memory.invalidate(0x1800, 0x2000);
    assert.equal(memory.generation, g + 1);
    assert.equal(calls.unmaps, 1);
    assert.equal(a.length, 0, 'views of the dropped region are detached');
    assert.equal(b.length, 16);
    assert.equal(memory.mappedRegions, 1);
    // The next access maps it again.
    assert.equal(memory.view(0x1000, 16, ACCESS_READ)[0], 0x00);
    assert.equal(calls.lookups.length, 3);
  });

  it('invalidateAll() drops everything', () => {
    const { memory, calls } = setup([
      { start: 0x1000, last: 0x1fff, offset: 0x1000, perm: 3 },
      { start: 0x8000, last: 0x8fff, offset: 0x8000, perm: 3 },
    ]);
    memory.view(0x1000, 1, ACCESS_READ);
    memory.view(0x8000, 1, ACCESS_READ);
    const g = memory.generation;
    memory.invalidateAll();
    assert.equal(calls.unmaps, 2);
    assert.equal(memory.mappedRegions, 0);
    assert.equal(memory.generation, g + 1);
  });

  it('rejects negative, fractional and overflowing ranges', () => {
    const { memory } = setup([]);
    assert.throws(() => memory.view(-1, 1, ACCESS_READ), GuestMemoryError);
    assert.throws(() => memory.view(1.5, 1, ACCESS_READ), GuestMemoryError);
    assert.throws(() => memory.view(Number.MAX_SAFE_INTEGER, 2, ACCESS_READ), /overflows/);
  });

  it('keeps the region list sorted whatever the mapping order', () => {
    const entries = [0x9000, 0x3000, 0x6000, 0x1000].map((s) => ({
      start: s,
      last: s + 0xfff,
      offset: s,
      perm: 3,
    }));
    const { memory, calls } = setup(entries);
    for (const e of entries) memory.view(e.start + 5, 1, ACCESS_READ);
    for (const e of entries) assert.equal(memory.view(e.last, 1, ACCESS_READ)[0], e.last & 0xff);
    assert.equal(calls.lookups.length, 4);
  });
});

describe('IotlbMemory pins (a dropped region outlives the requests that may hold views of it)', () => {
  const two = (): IotlbEntry[] => [
    { start: 0x1000, last: 0x1fff, offset: 0x1000, perm: 3 },
    { start: 0x8000, last: 0x8fff, offset: 0x8000, perm: 3 },
  ];

  it('a region dropped while pinned stays mapped until the pin of its generation goes', async () => {
    const { memory, calls } = setup(two());
    const v = memory.view(0x1000, 16, ACCESS_WRITE);
    const g = memory.pin();
    memory.invalidate(0x1000, 0x1fff);
    assert.equal(memory.mappedRegions, 0, 'no new view of it');
    assert.equal(memory.retiredRegions, 1);
    assert.equal(calls.unmaps, 0, 'not unmapped under the request');
    assert.equal(v.length, 16, 'the view still works');
    let drained = false;
    void memory.drained().then(() => (drained = true));
    memory.unpin(g);
    assert.equal(calls.unmaps, 1);
    assert.equal(memory.retiredRegions, 0);
    assert.equal(v.length, 0, 'detached by the munmap');
    await new Promise((r) => setImmediate(r));
    assert.ok(drained, 'drained() resolves once nothing is retired');
    assert.equal(memory.pins, 0);
  });

  it('a pin taken after a region was dropped, or before it was mapped, does not hold it', () => {
    const { memory, calls } = setup(two());
    const early = memory.pin(); // generation 0, nothing mapped yet
    memory.invalidateAll(); // generation 1
    memory.view(0x1000, 1, ACCESS_READ); // mapped in generation 1
    memory.invalidate(0x1000, 0x1fff);
    assert.equal(calls.unmaps, 1, 'the early pin cannot hold a view of a region mapped after it');
    memory.view(0x8000, 1, ACCESS_READ); // generation 2
    const held = memory.pin();
    memory.invalidate(0x8000, 0x8fff); // generation 3
    const late = memory.pin();
    assert.equal(memory.retiredRegions, 1);
    memory.unpin(late);
    memory.unpin(early);
    assert.equal(memory.retiredRegions, 1, 'only the pin of its own generation holds it');
    memory.unpin(held);
    assert.equal(memory.retiredRegions, 0);
    assert.equal(calls.unmaps, 2);
  });

  it('a region found stale by a look-up: a new generation, the same epoch, so the pins taken before hold it', () => {
    const entries = [{ start: 0x1000, last: 0x1fff, offset: 0x1000, perm: 3 }];
    const { memory, calls } = setup(entries);
    memory.view(0x1000, 1, ACCESS_READ);
    const generation = memory.generation;
    const g = memory.pin();
    // The kernel's map changed without an UPDATE_IOTLB: the next miss brings an overlapping entry.
    entries[0] = { start: 0x0, last: 0x2fff, offset: 0, perm: 3 };
    memory.view(0x2800, 1, ACCESS_READ);
    assert.equal(memory.mappedRegions, 1);
    assert.equal(memory.retiredRegions, 1);
    assert.equal(calls.unmaps, 0);
    assert.equal(
      memory.generation,
      generation + 1,
      'a mapping went away: views kept per generation (ring areas, ViewCache) are taken again',
    );
    assert.equal(memory.epoch, g, 'the pins of the work that was reading stay current');
    const late = memory.pin();
    assert.equal(late, g);
    memory.unpin(late);
    assert.equal(memory.retiredRegions, 1, 'the pin taken before still holds it');
    memory.unpin(g);
    assert.equal(memory.retiredRegions, 0, 'swept when the last pin of the epoch goes');
    assert.equal(calls.unmaps, 1);
    memory.invalidate(0, 0x2fff);
    assert.equal(memory.epoch, g + 1, 'an invalidation starts a new epoch');
    assert.equal(memory.generation, generation + 2);
  });

  it('unpin of a generation that holds nothing is a no-op', () => {
    const { memory } = setup(two());
    memory.unpin(5);
    memory.unpin(memory.epoch);
    assert.equal(memory.pins, 0);
  });
});
