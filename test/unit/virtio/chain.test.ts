/**
 * Descriptor chains, for both ring formats: every malformed shape the issue lists ends as one typed
 * VirtqueueError (never an exception out of pop()), zero-length descriptors are skipped, and the copy helpers
 * work across buffer boundaries.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { ACCESS_READ, ACCESS_WRITE } from '../../../src/memory/index.js';
import { MockDriver } from '../../../src/testing/index.js';
import {
  VRING_DESC_F_INDIRECT as INDIRECT,
  VRING_DESC_F_NEXT as NEXT,
  VRING_DESC_F_WRITE as WRITE,
} from '../../../src/uapi/virtio-ring.js';
import {
  copyFromParts,
  copyToParts,
  readFromChain,
  sliceParts,
  writeStatus,
  writeToChain,
} from '../../../src/virtio/index.js';
import type { DescriptorChain, VirtqueueErrorKind } from '../../../src/virtio/index.js';
import { rawChain } from './helpers.js';

const FORMATS = [
  { name: 'split', packed: false },
  { name: 'packed', packed: true },
] as const;

function setup(packed: boolean, size = 8, indirect = true): { drv: MockDriver; errors: unknown[] } {
  const drv = new MockDriver({ size, packed, indirect });
  return { drv, errors: drv.errors };
}

/** Expect the next pop() to fail with `kind`, once, and the queue to stay dead. */
function expectError(drv: MockDriver, kind: VirtqueueErrorKind): void {
  let calls = 0;
  const q = drv.createDeviceQueue({ onError: () => calls++ });
  assert.doesNotThrow(() => assert.equal(q.pop(), null));
  assert.equal(q.error?.kind, kind, q.error?.message);
  assert.equal(q.error?.queue, 0);
  assert.equal(calls, 1);
  assert.equal(q.pop(), null);
  assert.equal(q.pop(), null);
  assert.equal(calls, 1);
}

for (const { name, packed } of FORMATS) {
  describe(`${name} chains: malformed rings`, () => {
    it('descriptor pointing outside mapped memory -> memory', () => {
      const { drv } = setup(packed);
      rawChain(drv, [{ addr: 0x10, len: 16, flags: 0 }]);
      expectError(drv, 'memory');
    });

    it('buffer crossing the end of memory -> memory', () => {
      const { drv } = setup(packed);
      const end = drv.memory.regionList[0]!.addr + drv.memory.regionList[0]!.size;
      rawChain(drv, [{ addr: end - 8, len: 16, flags: 0 }]);
      expectError(drv, 'memory');
    });

    it('address >= 2^53 -> memory', () => {
      const { drv } = setup(packed);
      rawChain(drv, [{ addr: 2 ** 53, len: 16, flags: 0 }]);
      expectError(drv, 'memory');
    });

    it('writable buffer in read-only memory -> memory', () => {
      const { drv } = setup(packed);
      drv.memory.addRegion({ addr: 0x4000_0000, size: 0x1000, access: ACCESS_READ });
      rawChain(drv, [{ addr: 0x4000_0000, len: 16, flags: WRITE }]);
      expectError(drv, 'memory');
    });

    it('readable buffer in write-only memory -> memory', () => {
      const { drv } = setup(packed);
      drv.memory.addRegion({ addr: 0x4000_0000, size: 0x1000, access: ACCESS_WRITE });
      rawChain(drv, [{ addr: 0x4000_0000, len: 16, flags: 0 }]);
      expectError(drv, 'memory');
    });

    it('readable after writable -> write-order', () => {
      const { drv } = setup(packed);
      const a = drv.alloc(64);
      rawChain(drv, [
        { addr: a, len: 16, flags: WRITE | NEXT },
        { addr: a + 16, len: 16, flags: 0 },
      ]);
      expectError(drv, 'write-order');
    });

    it('indirect when not negotiated -> indirect-not-negotiated', () => {
      const { drv } = setup(packed, 8, false);
      const t = drv.buildIndirectTable([{ addr: drv.alloc(16), len: 16, flags: 0, next: 0 }]);
      rawChain(drv, [{ addr: t.addr, len: t.len, flags: INDIRECT }]);
      expectError(drv, 'indirect-not-negotiated');
    });

    it('INDIRECT together with NEXT -> indirect-table', () => {
      const { drv } = setup(packed);
      const t = drv.buildIndirectTable([{ addr: drv.alloc(16), len: 16, flags: 0, next: 0 }]);
      rawChain(drv, [
        { addr: t.addr, len: t.len, flags: INDIRECT | NEXT },
        { addr: drv.alloc(16), len: 16, flags: 0 },
      ]);
      expectError(drv, 'indirect-table');
    });

    for (const [what, len] of [
      ['zero-length', 0],
      ['not a multiple of 16', 24],
      ['oversized', 16 * 65537],
    ] as const) {
      it(`${what} indirect table -> indirect-table`, () => {
        const { drv } = setup(packed);
        const t = drv.buildIndirectTable([
          { addr: drv.alloc(16), len: 16, flags: NEXT, next: 1 },
          { addr: drv.alloc(16), len: 16, flags: 0, next: 0 },
        ]);
        rawChain(drv, [{ addr: t.addr, len, flags: INDIRECT }]);
        expectError(drv, 'indirect-table');
      });
    }

    it('indirect table outside memory -> memory', () => {
      const { drv } = setup(packed);
      rawChain(drv, [{ addr: 0x20, len: 32, flags: INDIRECT }]);
      expectError(drv, 'memory');
    });

    it('indirect inside indirect -> nested-indirect', () => {
      const { drv } = setup(packed);
      const inner = drv.buildIndirectTable([{ addr: drv.alloc(16), len: 16, flags: 0, next: 0 }]);
      const outer = drv.buildIndirectTable([
        { addr: drv.alloc(16), len: 16, flags: NEXT, next: 1 },
        { addr: inner.addr, len: inner.len, flags: INDIRECT, next: 0 },
      ]);
      rawChain(drv, [{ addr: outer.addr, len: outer.len, flags: INDIRECT }]);
      expectError(drv, 'nested-indirect');
    });

    it('readable after writable inside an indirect table -> write-order', () => {
      const { drv } = setup(packed);
      const t = drv.buildIndirectTable([
        { addr: drv.alloc(16), len: 16, flags: WRITE | NEXT, next: 1 },
        { addr: drv.alloc(16), len: 16, flags: 0, next: 0 },
      ]);
      rawChain(drv, [{ addr: t.addr, len: t.len, flags: INDIRECT }]);
      expectError(drv, 'write-order');
    });

    it('lengths adding up to more than 2^32 -> length-overflow', () => {
      const { drv } = setup(packed);
      // 1 GiB, lazily allocated: views over it cost nothing.
      drv.memory.addRegion({ addr: 2 ** 40, size: 2 ** 30 });
      const big = { addr: 2 ** 40, len: 2 ** 30, flags: NEXT };
      rawChain(drv, [big, big, big, big, { addr: 2 ** 40, len: 1, flags: 0 }]);
      expectError(drv, 'length-overflow');
    });

    it('exactly 2^32 bytes is accepted', () => {
      const { drv } = setup(packed);
      drv.memory.addRegion({ addr: 2 ** 40, size: 2 ** 30 });
      const big = { addr: 2 ** 40, len: 2 ** 30, flags: NEXT };
      rawChain(drv, [big, big, big, { ...big, flags: 0 }]);
      const q = drv.createDeviceQueue();
      const c = q.pop();
      assert.equal(q.error, null);
      assert.equal(c?.readableBytes, 2 ** 32);
    });

    it('zero-length descriptors are allowed and skipped in the views', () => {
      const { drv } = setup(packed);
      const a = drv.alloc(64);
      drv.write(a, new Uint8Array([1, 2, 3, 4]));
      rawChain(drv, [
        { addr: a, len: 0, flags: NEXT },
        { addr: a, len: 4, flags: NEXT },
        { addr: 0, len: 0, flags: WRITE | NEXT }, // not even mapped: never translated
        { addr: a + 16, len: 8, flags: WRITE },
      ]);
      const q = drv.createDeviceQueue();
      const c = q.pop();
      assert.equal(q.error, null);
      assert.ok(c);
      assert.equal(c.readable.length, 1);
      assert.equal(c.writable.length, 1);
      assert.deepEqual([...c.readable[0]!], [1, 2, 3, 4]);
      assert.equal(c.readableBytes, 4);
      assert.equal(c.writableBytes, 8);
    });

    it('a buffer spanning two regions gives two views', () => {
      const { drv } = setup(packed);
      const r = drv.memory.regionList[0]!;
      drv.memory.addRegion({ addr: r.addr + r.size, size: 0x1000 });
      rawChain(drv, [{ addr: r.addr + r.size - 4, len: 12, flags: WRITE }]);
      const q = drv.createDeviceQueue();
      const c = q.pop();
      assert.equal(q.error, null);
      assert.deepEqual(
        c?.writable.map((v) => v.length),
        [4, 8],
      );
      assert.equal(c?.writableBytes, 12);
    });
  });
}

describe('split chains: table structure', () => {
  it('head outside the table -> descriptor-index', () => {
    const drv = new MockDriver({ size: 8 });
    drv.pushAvail(8);
    drv.kick();
    expectError(drv, 'descriptor-index');
  });

  it('next outside the table -> descriptor-index', () => {
    const drv = new MockDriver({ size: 8 });
    rawChain(drv, [{ addr: drv.alloc(16), len: 16, flags: NEXT, next: 9 }]);
    expectError(drv, 'descriptor-index');
  });

  it('a loop stops after size descriptors -> chain-loop', () => {
    for (const size of [1, 2, 8, 256]) {
      const drv = new MockDriver({ size });
      const a = drv.alloc(16);
      rawChain(drv, [{ addr: a, len: 16, flags: NEXT, next: 0 }]);
      expectError(drv, 'chain-loop');
    }
  });

  it('a chain using every descriptor once is fine; revisiting one is a loop', () => {
    const drv = new MockDriver({ size: 4 });
    const a = drv.alloc(16);
    rawChain(drv, [
      { addr: a, len: 1, flags: NEXT },
      { addr: a, len: 1, flags: NEXT },
      { addr: a, len: 1, flags: NEXT },
      { addr: a, len: 1, flags: 0 },
    ]);
    const q = drv.createDeviceQueue();
    assert.equal(q.pop()?.readableBytes, 4);
    rawChain(drv, [
      { addr: a, len: 1, flags: NEXT },
      { addr: a, len: 1, flags: NEXT },
      { addr: a, len: 1, flags: NEXT },
      { addr: a, len: 1, flags: NEXT, next: 1 },
    ]);
    assert.equal(q.pop(), null);
    assert.equal(q.error?.kind, 'chain-loop');
  });

  it('indirect next outside its table -> descriptor-index; a loop inside it -> chain-loop', () => {
    let drv = new MockDriver({ size: 8, indirect: true });
    let t = drv.buildIndirectTable([{ addr: drv.alloc(16), len: 16, flags: NEXT, next: 1 }]);
    rawChain(drv, [{ addr: t.addr, len: t.len, flags: INDIRECT }]);
    expectError(drv, 'descriptor-index');
    drv = new MockDriver({ size: 8, indirect: true });
    t = drv.buildIndirectTable([
      { addr: drv.alloc(16), len: 16, flags: NEXT, next: 1 },
      { addr: drv.alloc(16), len: 16, flags: NEXT, next: 0 },
    ]);
    rawChain(drv, [{ addr: t.addr, len: t.len, flags: INDIRECT }]);
    expectError(drv, 'chain-loop');
  });

  it('direct descriptors followed by one indirect descriptor (§2.7.5.3.2)', () => {
    const drv = new MockDriver({ size: 8, indirect: true });
    const hdr = drv.alloc(16);
    const data = drv.alloc(32);
    const t = drv.buildIndirectTable([{ addr: data, len: 32, flags: WRITE, next: 0 }]);
    // F_WRITE on the descriptor pointing at the table is ignored.
    rawChain(drv, [
      { addr: hdr, len: 16, flags: NEXT },
      { addr: t.addr, len: t.len, flags: INDIRECT | WRITE },
    ]);
    const q = drv.createDeviceQueue();
    const c = q.pop();
    assert.equal(q.error, null);
    assert.equal(c?.readableBytes, 16);
    assert.equal(c?.writableBytes, 32);
  });

  it('an indirect table may hold more descriptors than the queue size', () => {
    const drv = new MockDriver({ size: 2, indirect: true });
    const bufs = Array.from({ length: 40 }, (_, k) => ({
      addr: drv.alloc(8),
      len: 8,
      flags: k < 39 ? NEXT : 0,
      next: k + 1,
    }));
    const t = drv.buildIndirectTable(bufs);
    rawChain(drv, [{ addr: t.addr, len: t.len, flags: INDIRECT }]);
    const q = drv.createDeviceQueue();
    assert.equal(q.pop()?.readable.length, 40);
    assert.equal(q.error, null);
  });

  it('an indirect table split over two regions is read correctly', () => {
    const drv = new MockDriver({ size: 4, indirect: true });
    const r = drv.memory.regionList[0]!;
    drv.memory.addRegion({ addr: r.addr + r.size, size: 0x1000 });
    const tableAddr = r.addr + r.size - 16; // first descriptor in region 1, second in region 2
    const a = drv.alloc(16);
    const b = drv.alloc(16);
    const dv = (addr: number): DataView => {
      const v = drv.memory.hostView(addr, 16);
      return new DataView(v.buffer, v.byteOffset, 16);
    };
    const put = (at: number, addr: number, len: number, flags: number, next: number): void => {
      const d = dv(at);
      d.setUint32(0, addr, true);
      d.setUint32(8, len, true);
      d.setUint16(12, flags, true);
      d.setUint16(14, next, true);
    };
    put(tableAddr, a, 16, NEXT, 1);
    put(tableAddr + 16, b, 8, WRITE, 0);
    rawChain(drv, [{ addr: tableAddr, len: 32, flags: INDIRECT }]);
    const q = drv.createDeviceQueue();
    const c = q.pop();
    assert.equal(q.error, null, q.error?.message);
    assert.equal(c?.readableBytes, 16);
    assert.equal(c?.writableBytes, 8);
  });
});

describe('packed chains: ring structure', () => {
  it('a chain longer than the queue (NEXT all around the ring) -> chain-loop', () => {
    for (const size of [1, 3, 8]) {
      const drv = new MockDriver({ size, packed: true });
      const a = drv.alloc(16);
      rawChain(
        drv,
        Array.from({ length: size }, () => ({ addr: a, len: 4, flags: NEXT })),
      );
      expectError(drv, 'chain-loop');
    }
  });

  it('the buffer id comes from the last descriptor; ids inside indirect tables are ignored', () => {
    const drv = new MockDriver({ size: 8, packed: true, indirect: true });
    const a = drv.alloc(16);
    drv.pushRaw([
      { addr: a, len: 4, flags: NEXT, id: 1 },
      { addr: a, len: 4, flags: WRITE, id: 6 },
    ]);
    drv.kick();
    const q = drv.createDeviceQueue();
    const c = q.pop();
    assert.equal(c?.id, 6);
    q.addUsed(c!, 4);
    q.publish();
    const used = drv.usedEntries();
    assert.deepEqual(
      used.map((u) => [u.id, u.len]),
      [[6, 4]],
    );
    assert.deepEqual(drv.usedPosition(), { idx: 2, wrap: 1 });
  });

  it('NEXT inside a packed indirect table is ignored: every entry is used, in order', () => {
    const drv = new MockDriver({ size: 4, packed: true, indirect: true });
    const t = drv.buildIndirectTable([
      { addr: drv.alloc(8), len: 8, flags: 0, next: 0 },
      { addr: drv.alloc(8), len: 8, flags: NEXT, next: 0 },
      { addr: drv.alloc(8), len: 8, flags: WRITE, next: 0 },
    ]);
    rawChain(drv, [{ addr: t.addr, len: t.len, flags: INDIRECT, id: 3 }]);
    const q = drv.createDeviceQueue();
    const c = q.pop();
    assert.equal(q.error, null);
    assert.equal(c?.id, 3);
    assert.equal(c?.readable.length, 2);
    assert.equal(c?.writable.length, 1);
  });
});

describe('chain helpers', () => {
  const parts = (...lens: number[]): Uint8Array[] => {
    let n = 0;
    return lens.map((l) => Uint8Array.from({ length: l }, () => n++));
  };

  it('copyFromParts spans buffers at any offset', () => {
    const p = parts(3, 1, 5, 2); // bytes 0..10
    for (let off = 0; off <= 12; off++) {
      for (let len = 0; len <= 12; len++) {
        const out = new Uint8Array(len).fill(0xff);
        const n = copyFromParts(p, off, out);
        const expect = Math.max(0, Math.min(len, 11 - off));
        assert.equal(n, expect, `off ${off} len ${len}`);
        for (let i = 0; i < n; i++) assert.equal(out[i], off + i);
        for (let i = n; i < len; i++) assert.equal(out[i], 0xff);
      }
    }
  });

  it('copyToParts spans buffers at any offset', () => {
    for (let off = 0; off <= 12; off++) {
      for (let len = 0; len <= 12; len++) {
        const p = [
          new Uint8Array(3),
          new Uint8Array(0),
          new Uint8Array(1),
          new Uint8Array(5),
          new Uint8Array(2),
        ];
        const data = Uint8Array.from({ length: len }, (_, i) => 100 + i);
        const n = copyToParts(p, off, data);
        assert.equal(n, Math.max(0, Math.min(len, 11 - off)));
        const flat = Uint8Array.from(p.flatMap((x) => [...x]));
        for (let i = 0; i < 11; i++) assert.equal(flat[i], i >= off && i < off + n ? 100 + i - off : 0);
      }
    }
  });

  it('sliceParts returns views (no copy) of a byte range', () => {
    const p = parts(3, 1, 5, 2);
    const s = sliceParts(p, 2, 7);
    assert.deepEqual(
      s.map((v) => [...v]),
      [[2], [3], [4, 5, 6, 7, 8]],
    );
    s[0]![0] = 99;
    assert.equal(p[0]![2], 99);
    assert.deepEqual(sliceParts(p, 20, 5), []);
    assert.deepEqual(
      sliceParts(p, 9, 100).map((v) => [...v]),
      [[9, 10]],
    );
  });

  it('readFromChain / writeToChain / writeStatus on a real chain split at odd places', () => {
    const drv = new MockDriver({ size: 8 });
    const q = drv.createDeviceQueue();
    const hdr = Uint8Array.from({ length: 16 }, (_, i) => i + 1);
    drv.addChain({
      readable: [hdr.subarray(0, 3), hdr.subarray(3, 11), hdr.subarray(11)],
      writable: [5, 7, 1],
    });
    drv.kick();
    const c = q.pop() as DescriptorChain;
    const out = new Uint8Array(16);
    assert.equal(readFromChain(c, 0, out), 16);
    assert.deepEqual(out, hdr);
    assert.equal(readFromChain(c, 10, out), 6);
    assert.equal(
      writeToChain(
        c,
        3,
        Uint8Array.from({ length: 6 }, () => 0xab),
      ),
      6,
    );
    assert.ok(writeStatus(c, 0x42));
    q.addUsed(c, 13);
    q.publish();
    const [u] = drv.usedEntries();
    assert.deepEqual(
      [...u!.written],
      [0xee, 0xee, 0xee, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xee, 0xee, 0xee, 0x42],
    );
  });

  it('writeStatus on a chain without writable bytes returns false', () => {
    const drv = new MockDriver({ size: 2 });
    const q = drv.createDeviceQueue();
    drv.addChain({ readable: [4] });
    drv.kick();
    assert.equal(writeStatus(q.pop()!, 1), false);
  });
});
