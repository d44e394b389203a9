/**
 * HeapMemory: translation inside and across regions, permissions, invalid ranges, the generation counter on
 * removal/remap, access tracking and the translation cache staying correct when regions change.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  ACCESS_READ,
  ACCESS_RW,
  ACCESS_WRITE,
  GuestMemoryError,
  HeapMemory,
} from '../../../src/memory/index.js';

function twoRegions(): HeapMemory {
  // [0x1000, 0x2000) RW, [0x2000, 0x3000) read-only, hole, [0x5000, 0x5100) write-only.
  return new HeapMemory([
    { addr: 0x1000, size: 0x1000 },
    { addr: 0x2000, size: 0x1000, access: ACCESS_READ },
    { addr: 0x5000, size: 0x100, access: ACCESS_WRITE },
  ]);
}

describe('HeapMemory.view', () => {
  it('returns a zero-copy view of the backing buffer', () => {
    const buffer = new ArrayBuffer(0x200);
    const mem = new HeapMemory([{ addr: 0x10000, buffer, offset: 0x100 }]);
    const v = mem.view(0x10010, 4, ACCESS_RW);
    v.set([1, 2, 3, 4]);
    assert.deepEqual([...new Uint8Array(buffer, 0x110, 4)], [1, 2, 3, 4]);
    assert.equal(v.buffer, buffer);
  });

  it('works over a SharedArrayBuffer', () => {
    const sab = new SharedArrayBuffer(64);
    const mem = new HeapMemory([{ addr: 0, buffer: sab }]);
    mem.view(8, 1, ACCESS_WRITE)[0] = 9;
    assert.equal(new Uint8Array(sab)[8], 9);
  });

  it('checks permissions', () => {
    const mem = twoRegions();
    assert.equal(mem.view(0x2000, 16, ACCESS_READ).length, 16);
    assert.throws(() => mem.view(0x2000, 16, ACCESS_WRITE), GuestMemoryError);
    assert.throws(() => mem.view(0x2000, 16, ACCESS_RW), /not permitted/);
    assert.equal(mem.view(0x5000, 16, ACCESS_WRITE).length, 16);
    assert.throws(() => mem.view(0x5000, 16, ACCESS_READ), /not permitted/);
  });

  it('rejects unmapped bytes and ranges crossing a region boundary', () => {
    const mem = twoRegions();
    assert.throws(() => mem.view(0x3000, 1, ACCESS_READ), /not mapped/);
    assert.throws(() => mem.view(0xfff, 2, ACCESS_READ), /not mapped/);
    assert.throws(() => mem.view(0x1ff0, 0x20, ACCESS_READ), /crosses a region boundary/);
    assert.throws(() => mem.view(0x2ff0, 0x20, ACCESS_READ), /not mapped/);
    assert.throws(() => mem.view(0x50f0, 0x20, ACCESS_WRITE), /not mapped/);
  });

  it('rejects invalid numbers', () => {
    const mem = twoRegions();
    for (const [addr, len] of [
      [-1, 1],
      [0x1000, -1],
      [NaN, 1],
      [0x1000, NaN],
      [4096.5, 1],
      [0x1000, 1.5],
      [Infinity, 1],
    ] as const) {
      assert.throws(() => mem.view(addr, len, ACCESS_READ), GuestMemoryError, `${addr} ${len}`);
    }
  });

  it('gives a zero-length view at a mapped address', () => {
    const mem = twoRegions();
    assert.equal(mem.view(0x1000, 0, ACCESS_READ).length, 0);
  });

  it('errors carry the address and length', () => {
    const mem = twoRegions();
    try {
      mem.view(0x4000, 8, ACCESS_READ);
      assert.fail('no error');
    } catch (e) {
      assert.ok(e instanceof GuestMemoryError);
      assert.equal(e.addr, 0x4000);
      assert.equal(e.len, 8);
      assert.equal(e.code, 'ERR_GUEST_MEMORY');
      assert.match(e.message, /0x4000/);
    }
  });
});

describe('HeapMemory.gather', () => {
  it('splits a range over adjacent regions', () => {
    const mem = twoRegions();
    const out: Uint8Array[] = [];
    mem.gather(0x1ff0, 0x20, ACCESS_READ, out);
    assert.deepEqual(
      out.map((v) => v.length),
      [0x10, 0x10],
    );
    out[0]?.fill(1);
    assert.equal(mem.view(0x1fff, 1, ACCESS_READ)[0], 1);
    assert.equal(mem.view(0x2000, 1, ACCESS_READ)[0], 0);
  });

  it('appends nothing when any part fails', () => {
    const mem = twoRegions();
    const out: Uint8Array[] = [new Uint8Array(1)];
    assert.throws(() => mem.gather(0x1ff0, 0x20, ACCESS_WRITE, out), /not permitted/);
    assert.throws(() => mem.gather(0x2ff0, 0x20, ACCESS_READ, out), /not mapped/);
    assert.throws(() => mem.gather(-5, 0x20, ACCESS_READ, out), /not a valid range/);
    assert.equal(out.length, 1);
  });

  it('appends nothing for length 0, and one view inside a region', () => {
    const mem = twoRegions();
    const out: Uint8Array[] = [];
    mem.gather(0x1234, 0, ACCESS_READ, out);
    assert.equal(out.length, 0);
    mem.gather(0x1234, 8, ACCESS_READ, out);
    mem.gather(0x1234, 8, ACCESS_READ, out); // cached path
    assert.equal(out.length, 2);
    assert.equal(out[1]?.byteOffset, 0x234);
  });
});

describe('HeapMemory regions', () => {
  it('rejects overlapping regions and bad options', () => {
    const mem = twoRegions();
    assert.throws(() => mem.addRegion({ addr: 0x2800, size: 0x1000 }), /overlaps/);
    assert.throws(() => mem.addRegion({ addr: 0x0, size: 0x1001 }), /overlaps/);
    assert.throws(() => mem.addRegion({ addr: 0x10000 }), /size or a buffer/);
    assert.throws(() => mem.addRegion({ addr: 0x10000, buffer: new ArrayBuffer(8), size: 16 }), /fit/);
    assert.throws(() => mem.addRegion({ addr: 2 ** 53 - 4, size: 8 }), /2\^53/);
    mem.addRegion({ addr: 0x3000, size: 0x100 });
    assert.throws(() => mem.view(0x2ff0, 0x20, ACCESS_READ), /crosses a region boundary/);
    const out: Uint8Array[] = [];
    mem.gather(0x2ff0, 0x20, ACCESS_READ, out);
    assert.equal(out.length, 2);
  });

  it('removal bumps the generation and drops the cached translation', () => {
    const mem = twoRegions();
    const g0 = mem.generation;
    mem.view(0x1000, 4, ACCESS_READ); // cache the first region
    assert.ok(mem.removeRegion(0x1000));
    assert.equal(mem.generation, g0 + 1);
    assert.throws(() => mem.view(0x1000, 4, ACCESS_READ), /not mapped/);
    assert.equal(mem.removeRegion(0x1000), null);
    assert.equal(mem.generation, g0 + 1);
  });

  it('remapRegion replaces the buffer with a copy: old views no longer reach the guest', () => {
    const mem = new HeapMemory([{ addr: 0x1000, size: 0x100 }]);
    const old = mem.view(0x1000, 4, ACCESS_RW);
    old.set([1, 2, 3, 4]);
    const g = mem.generation;
    mem.remapRegion(0x1000);
    assert.equal(mem.generation, g + 1);
    const fresh = mem.view(0x1000, 4, ACCESS_RW);
    assert.deepEqual([...fresh], [1, 2, 3, 4]);
    old[0] = 99;
    assert.equal(fresh[0], 1);
  });

  it('isMapped and access tracking', () => {
    const mem = twoRegions();
    assert.ok(mem.isMapped(0x1000, 0x2000, ACCESS_READ));
    assert.ok(!mem.isMapped(0x1000, 0x2000, ACCESS_WRITE));
    assert.ok(!mem.isMapped(0x2f00, 0x200, ACCESS_READ));
    const log = mem.trackAccesses(true);
    mem.view(0x1000, 8, ACCESS_READ);
    mem.gather(0x1ff8, 16, ACCESS_READ, []);
    mem.hostView(0x1000, 8); // host accesses are not device accesses
    assert.deepEqual(log, [
      { addr: 0x1000, len: 8, access: ACCESS_READ },
      { addr: 0x1ff8, len: 8, access: ACCESS_READ },
      { addr: 0x2000, len: 8, access: ACCESS_READ },
    ]);
    mem.trackAccesses(false);
    mem.view(0x1000, 8, ACCESS_READ);
    assert.equal(log.length, 3);
  });

  it('finds regions by binary search among many', () => {
    const mem = new HeapMemory();
    for (let i = 0; i < 64; i++) mem.addRegion({ addr: (63 - i) * 0x2000, size: 0x1000 });
    for (let i = 0; i < 64; i++) {
      assert.equal(mem.view(i * 0x2000 + 0xff0, 16, ACCESS_RW).length, 16);
      assert.throws(() => mem.view(i * 0x2000 + 0x1000, 1, ACCESS_RW), /not mapped/);
    }
  });
});
