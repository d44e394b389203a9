/**
 * The mock driver itself (shipped for users): layout, allocator reuse, multi-queue over one memory, the lean
 * path, raw injection helpers, and its own checks on what the device returns.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { GuestAllocator, MockDriver } from '../../../src/testing/index.js';
import { HeapMemory } from '../../../src/memory/index.js';
import { VRING_DESC_F_NEXT, VRING_DESC_F_WRITE } from '../../../src/uapi/virtio-ring.js';
import { readFromChain } from '../../../src/virtio/index.js';
import { popAll } from './helpers.js';

describe('MockDriver', () => {
  it('rejects invalid sizes', () => {
    assert.throws(() => new MockDriver({ size: 0 }), RangeError);
    assert.throws(() => new MockDriver({ size: 3 }), /split/);
    assert.throws(() => new MockDriver({ size: 65536, packed: true }), RangeError);
    assert.equal(new MockDriver({ size: 3, packed: true }).size, 3);
  });

  it('lays the rings out aligned inside its memory', () => {
    for (const packed of [false, true]) {
      const drv = new MockDriver({ size: 64, packed, eventIdx: true, baseAddr: 0x7000_0000 });
      const { descAddr, driverAddr, deviceAddr } = drv.config;
      assert.equal(descAddr % 16, 0);
      assert.equal(driverAddr % 4, 0);
      assert.equal(deviceAddr % 4, 0);
      assert.ok(descAddr >= 0x7000_0000);
      assert.equal(drv.config.eventIdx, true);
      assert.equal(drv.memory.regionList.length, 1);
    }
  });

  it('frees descriptors and buffers: a long run does not grow memory', () => {
    for (const packed of [false, true]) {
      const drv = new MockDriver({ size: 8, packed, memorySize: 64 * 1024 });
      const q = drv.createDeviceQueue();
      for (let i = 0; i < 5000; i++) {
        drv.addChain({ readable: [100], writable: [1000, 1] });
        drv.addChain({ readable: [16], writable: [17] });
        drv.kick();
        for (const c of popAll(q)) q.addUsed(c, 0);
        q.publish();
        assert.equal(drv.usedEntries().length, 2);
      }
      assert.equal(drv.freeDescriptors, 8);
      assert.equal(drv.inFlight, 0);
    }
  });

  it('createQueues: several queues over one memory, each with its own rings and counters', () => {
    const drvs = MockDriver.createQueues(3, { size: 16, packed: true, eventIdx: true });
    assert.equal(drvs.length, 3);
    assert.ok(drvs.every((d) => d.memory === drvs[0]!.memory));
    assert.deepEqual(
      drvs.map((d) => d.config.index),
      [0, 1, 2],
    );
    const qs = drvs.map((d) => d.createDeviceQueue());
    drvs.forEach((d, i) => d.addChain({ readable: [new Uint8Array([i])], writable: [1] }));
    drvs.forEach((d) => d.kick());
    qs.forEach((q, i) => {
      const c = q.pop()!;
      assert.equal(c.readable[0]![0], i);
      q.addUsed(c, 1);
      if (i !== 1) q.publish();
    });
    assert.deepEqual(
      drvs.map((d) => d.signals),
      [1, 0, 1],
    );
    assert.deepEqual(
      drvs.map((d) => d.usedEntries().length),
      [1, 0, 1],
    );
  });

  it('lean path: addBuffers + reclaim over reused buffers', () => {
    for (const packed of [false, true]) {
      const drv = new MockDriver({ size: 4, packed });
      const q = drv.createDeviceQueue();
      const hdr = { addr: drv.alloc(16), len: 16 };
      drv.write(hdr.addr, new Uint8Array(16).fill(3));
      const data = { addr: drv.alloc(512), len: 512 };
      for (let i = 0; i < 100; i++) {
        const id = drv.addBuffers([hdr], [data]);
        assert.equal(drv.reclaim(), 0);
        drv.kick();
        const c = q.pop()!;
        assert.equal(c.id, id);
        const out = new Uint8Array(16);
        readFromChain(c, 0, out);
        assert.equal(out[15], 3);
        q.addUsed(c, 512);
        q.publish();
        assert.equal(drv.reclaim(), 1);
      }
      assert.throws(() => drv.addBuffers([], []), /at least one buffer/);
      assert.throws(() => drv.addBuffers([hdr], [], true), /not negotiated/);
    }
  });

  it('nothing is visible before kick()/publish()', () => {
    for (const packed of [false, true]) {
      const drv = new MockDriver({ size: 4, packed });
      const q = drv.createDeviceQueue();
      drv.addChain({ readable: [1] });
      assert.equal(q.pop(), null);
      drv.publish();
      assert.ok(q.pop());
      assert.equal(drv.kicks, 0, 'publish() alone never kicks');
    }
  });

  it('usedEntries() refuses ids that are not in flight, and lengths beyond the chain', () => {
    const drv = new MockDriver({ size: 4 });
    drv.addChain({ writable: [4] });
    drv.kick();
    // Play a buggy device by writing the used ring by hand.
    const used = drv.memory.hostView(drv.config.deviceAddr, 16);
    const dv = new DataView(used.buffer, used.byteOffset, 16);
    dv.setUint32(4, 0, true);
    dv.setUint32(8, 5, true);
    dv.setUint16(2, 1, true);
    assert.throws(() => drv.usedEntries(), /5 bytes written/);
    const drv2 = new MockDriver({ size: 4 });
    const used2 = drv2.memory.hostView(drv2.config.deviceAddr, 16);
    const dv2 = new DataView(used2.buffer, used2.byteOffset, 16);
    dv2.setUint32(4, 3, true);
    dv2.setUint16(2, 1, true);
    assert.throws(() => drv2.usedEntries(), /not in flight/);
  });

  it('raw injection: descriptors, avail entries and indexes as written', () => {
    const drv = new MockDriver({ size: 8, indirect: true });
    const a = drv.alloc(32);
    drv.writeDescriptor(5, { addr: a, len: 8, flags: VRING_DESC_F_NEXT, next: 2 });
    drv.writeDescriptor(2, { addr: a + 8, len: 8, flags: VRING_DESC_F_WRITE, next: 0 });
    assert.deepEqual(drv.readDescriptor(5), { addr: a, len: 8, flags: VRING_DESC_F_NEXT, next: 2, id: 0 });
    drv.pushAvail(5);
    drv.kick();
    const q = drv.createDeviceQueue();
    const c = q.pop()!;
    assert.equal(c.id, 5);
    assert.equal(c.readableBytes, 8);
    assert.equal(c.writableBytes, 8);
    q.addUsed(c, 8);
    q.publish();
    const [u] = drv.usedEntries();
    assert.deepEqual([u!.id, u!.len, u!.chain], [5, 8, null]);
    assert.throws(() => drv.pushRaw([]), TypeError);
  });

  it('GuestAllocator reuses freed blocks and reports exhaustion', () => {
    const mem = new HeapMemory([{ addr: 0x1000, size: 256 }]);
    const alloc = new GuestAllocator(mem, 0x1000, 256);
    const x = alloc.alloc(100);
    assert.equal(x, 0x1000);
    alloc.release(x, 100);
    assert.equal(alloc.alloc(112), x, 'same size class');
    const y = alloc.alloc(64, 64);
    assert.equal(y % 64, 0);
    assert.throws(() => alloc.alloc(200), /exhausted/);
  });
});
