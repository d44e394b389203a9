/**
 * Packed virtqueue device side against the mock driver: sizes that are not powers of two, wrap counters over
 * many laps, chains of different lengths completed out of order (the used index advances by each chain's
 * descriptor count), batch visibility, event suppression in both directions (DESC checked against a brute-force
 * reading of §2.8.10), state save/restore, indirect tables, re-translation and layout errors.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { HeapMemory } from '../../../src/memory/index.js';
import { MockDriver } from '../../../src/testing/index.js';
import {
  VRING_DESC_F_WRITE,
  VRING_PACKED_DESC_F_AVAIL,
  VRING_PACKED_DESC_F_USED,
  VRING_PACKED_EVENT_FLAG_DESC,
  VRING_PACKED_EVENT_FLAG_DISABLE,
  VRING_PACKED_EVENT_FLAG_ENABLE,
} from '../../../src/uapi/virtio-ring.js';
import { PackedQueue, createVirtqueue, writeStatus } from '../../../src/virtio/index.js';
import type { DescriptorChain, PackedQueueState } from '../../../src/virtio/index.js';
import { popAll, rng } from './helpers.js';

const AVAIL = 1 << VRING_PACKED_DESC_F_AVAIL;
const USED = 1 << VRING_PACKED_DESC_F_USED;

describe('packed queue: data path', () => {
  for (const size of [1, 3, 255, 256, 32768]) {
    it(`size ${size}: a full ring, completed in reverse, three laps`, () => {
      const drv = new MockDriver({ size, packed: true, memorySize: 64 * size + 65536 * 8 });
      const q = drv.createDeviceQueue();
      assert.equal(q.packed, true);
      for (let lap = 0; lap < 3; lap++) {
        for (let i = 0; i < size; i++) drv.addChain({ readable: [new Uint8Array([i & 0xff])], writable: [] });
        assert.throws(() => drv.addChain({ writable: [1] }), /full/);
        drv.kick();
        const chains = popAll(q);
        assert.equal(chains.length, size);
        for (let i = 0; i < size; i++) assert.equal(chains[i]!.readable[0]![0], i & 0xff);
        for (const c of chains.slice().reverse()) q.addUsed(c, 0);
        q.publish();
        const used = drv.usedEntries();
        assert.deepEqual(
          used.map((u) => u.id),
          chains.map((c) => c.id).reverse(),
        );
        const wrap = (lap + 1) % 2 === 0 ? 1 : 0;
        assert.deepEqual(q.getState(), {
          lastAvailCounter: wrap,
          lastAvailIdx: 0,
          lastUsedCounter: wrap,
          lastUsedIdx: 0,
        });
      }
      assert.equal(q.error, null);
    });
  }

  it('chains of 1-3 descriptors, completed in random order, over many laps of odd-sized rings', () => {
    for (const size of [3, 5, 7, 16]) {
      const drv = new MockDriver({ size, packed: true, indirect: true });
      const q = drv.createDeviceQueue();
      const r = rng(size);
      const inFlight: DescriptorChain[] = [];
      let seq = 0;
      const expected = new Map<number, number>(); // id -> first readable byte
      for (let step = 0; step < 3000; step++) {
        // Driver: add what fits.
        for (;;) {
          const nd = 1 + r.int(3);
          const indirect = r.next() < 0.2;
          if (drv.freeDescriptors < (indirect ? 1 : nd)) break;
          const readable = [new Uint8Array([seq & 0xff])];
          const writable = Array.from({ length: nd - 1 }, () => 1 + r.int(3));
          const m = drv.addChain({ readable, writable, indirect });
          expected.set(m.id, seq & 0xff);
          seq++;
          if (r.next() < 0.3) break;
        }
        drv.kick();
        inFlight.push(...popAll(q));
        // Device: complete a random subset in random order.
        for (let k = r.int(inFlight.length + 1); k > 0; k--) {
          const [c] = inFlight.splice(r.int(inFlight.length), 1);
          assert.equal(c!.readable[0]![0], expected.get(c!.id));
          writeStatus(c!, c!.id);
          q.addUsed(c!, c!.writableBytes);
        }
        q.publish();
        for (const u of drv.usedEntries()) {
          assert.equal(
            u.len,
            u.chain!.writable.reduce((s, b) => s + b.len, 0),
          );
          if (u.len > 0) assert.equal(u.written[u.len - 1], u.id & 0xff);
        }
      }
      assert.equal(q.error, null, q.error?.message);
      assert.ok(seq > 3 * size, 'several laps');
    }
  });

  it('a batch becomes visible at publish(), all at once; used descriptors carry WRITE iff len > 0', () => {
    const drv = new MockDriver({ size: 8, packed: true });
    const q = drv.createDeviceQueue();
    for (let i = 0; i < 3; i++) drv.addChain({ readable: [2], writable: [4] });
    drv.kick();
    const chains = popAll(q);
    q.addUsed(chains[1]!, 4);
    q.addUsed(chains[0]!, 0);
    assert.equal(drv.usedEntries().length, 0);
    q.publish();
    const first = drv.readDescriptor(0);
    assert.equal(first.flags & (AVAIL | USED), AVAIL | USED);
    assert.equal(first.flags & VRING_DESC_F_WRITE, VRING_DESC_F_WRITE);
    assert.equal(first.id, chains[1]!.id);
    assert.equal(first.len, 4);
    const second = drv.readDescriptor(2); // the first chain took slots 0-1
    assert.equal(second.id, chains[0]!.id);
    assert.equal(second.flags & VRING_DESC_F_WRITE, 0);
    assert.deepEqual(
      drv.usedEntries().map((u) => [u.id, u.len]),
      [
        [chains[1]!.id, 4],
        [chains[0]!.id, 0],
      ],
    );
  });

  it('indirect chains take one ring slot', () => {
    const drv = new MockDriver({ size: 2, packed: true, indirect: true });
    const q = drv.createDeviceQueue();
    drv.addChain({ readable: [16], writable: [4096, 1], indirect: true });
    drv.addChain({ readable: [16], writable: [8, 1], indirect: true });
    assert.equal(drv.freeDescriptors, 0);
    drv.kick();
    const [a, b] = popAll(q);
    assert.equal(a!.writableBytes, 4097);
    assert.equal(b!.writableBytes, 9);
    q.addUsed(b!, 9);
    q.addUsed(a!, 4097);
    q.publish();
    assert.deepEqual(
      drv.usedEntries().map((u) => u.len),
      [9, 4097],
    );
    assert.deepEqual(q.getState(), {
      lastAvailCounter: 0,
      lastAvailIdx: 0,
      lastUsedCounter: 0,
      lastUsedIdx: 0,
    });
  });
});

describe('packed queue: notifications', () => {
  it('driver event flags: ENABLE signals every batch, DISABLE never', () => {
    const drv = new MockDriver({ size: 8, packed: true });
    const q = drv.createDeviceQueue();
    const cycle = (): boolean => {
      drv.addChain({ writable: [1] });
      drv.kick();
      q.addUsed(q.pop()!, 1);
      const s = q.publish();
      drv.usedEntries();
      return s;
    };
    assert.equal(cycle(), true);
    drv.setNoInterrupt(true);
    assert.equal(cycle(), false);
    assert.equal(cycle(), false);
    drv.setNoInterrupt(false);
    assert.equal(cycle(), true);
    assert.equal(drv.signals, 2);
  });

  it('DESC (EVENT_IDX): signal iff the event position (offset, wrap) was used in this batch', () => {
    for (const size of [1, 3, 8, 13]) {
      const drv = new MockDriver({ size, packed: true, eventIdx: true, autoEvent: false });
      const q = drv.createDeviceQueue();
      const r = rng(100 + size);
      let yes = 0;
      for (let i = 0; i < 2000; i++) {
        let slots = 0;
        for (;;) {
          const nd = 1 + r.int(2);
          if (drv.freeDescriptors < nd) break;
          drv.addChain({ readable: nd === 2 ? [1] : [], writable: [1] });
          slots += nd;
          if (r.next() < 0.5) break;
        }
        drv.kick();
        const chains = popAll(q);
        const before = q.getState() as PackedQueueState;
        // The positions this batch will write: `slots` ring slots from the used position.
        const positions = new Set<string>();
        let idx = before.lastUsedIdx;
        let wrap = before.lastUsedCounter;
        for (let k = 0; k < slots; k++) {
          positions.add(`${idx}/${wrap}`);
          if (++idx === size) {
            idx = 0;
            wrap ^= 1;
          }
        }
        const eventIdx = r.int(size);
        const eventWrap = r.int(2);
        drv.setUsedEvent(eventIdx, eventWrap);
        for (const c of chains) q.addUsed(c, 1);
        const signalled = q.publish();
        assert.equal(
          signalled,
          positions.has(`${eventIdx}/${eventWrap}`),
          `size ${size} event ${eventIdx}/${eventWrap}`,
        );
        if (signalled) yes++;
        drv.usedEntries();
      }
      assert.ok(yes > 20 && yes < 1980, `both outcomes (${yes})`);
    }
  });

  it('with the Linux-like driver (DESC at its next used index), one signal per batch', () => {
    const drv = new MockDriver({ size: 5, packed: true, eventIdx: true });
    const q = drv.createDeviceQueue();
    for (let i = 0; i < 40; i++) {
      drv.addChain({ readable: [1], writable: [1] });
      drv.addChain({ writable: [1] });
      drv.kick();
      for (const c of popAll(q)) q.addUsed(c, 1);
      assert.equal(q.publish(), true);
      drv.usedEntries();
    }
    assert.equal(drv.signals, 40);
  });

  it('device event area: disable, enable (ENABLE without EVENT_IDX)', () => {
    const drv = new MockDriver({ size: 4, packed: true });
    const q = drv.createDeviceQueue();
    drv.addChain({ writable: [1] });
    assert.equal(drv.kick(), true);
    q.disableNotification();
    assert.equal(drv.deviceSuppression().flags, VRING_PACKED_EVENT_FLAG_DISABLE);
    drv.addChain({ writable: [1] });
    assert.equal(drv.kick(), false);
    assert.equal(q.enableNotification(), true);
    assert.equal(drv.deviceSuppression().flags, VRING_PACKED_EVENT_FLAG_ENABLE);
    assert.equal(popAll(q).length, 2);
    assert.equal(q.enableNotification(), false);
  });

  it('device event area with EVENT_IDX: DESC at the next available position; pop-until-empty re-arms it', () => {
    const drv = new MockDriver({ size: 3, packed: true, eventIdx: true });
    const q = drv.createDeviceQueue();
    assert.equal(q.enableNotification(), false);
    assert.deepEqual(drv.deviceSuppression(), { flags: VRING_PACKED_EVENT_FLAG_DESC, event: 0, wrap: 1 });
    drv.addChain({ writable: [1] });
    assert.equal(drv.kick(), true);
    drv.addChain({ writable: [1] });
    assert.equal(drv.kick(), false, 'the device has not consumed up to the event yet');
    const chains = popAll(q);
    assert.equal(chains.length, 2);
    assert.deepEqual(drv.deviceSuppression(), { flags: VRING_PACKED_EVENT_FLAG_DESC, event: 2, wrap: 1 });
    for (const c of chains) q.addUsed(c, 1);
    q.publish();
    drv.usedEntries();
    // Across the wrap: slot 2 of lap 1, then slot 0 of lap 2.
    drv.addChain({ writable: [1] });
    assert.equal(drv.kick(), true);
    assert.equal(popAll(q).length, 1);
    assert.deepEqual(drv.deviceSuppression(), { flags: VRING_PACKED_EVENT_FLAG_DESC, event: 0, wrap: 0 });
    drv.addChain({ writable: [1] });
    assert.equal(drv.kick(), true);
    q.disableNotification();
    assert.equal(popAll(q).length, 1);
    drv.addChain({ writable: [1] });
    assert.equal(drv.kick(), false);
    assert.equal(drv.kicks, 3);
  });
});

describe('packed queue: state and memory', () => {
  it('getState / setState across queues, with wrap counters', () => {
    const drv = new MockDriver({ size: 3, packed: true });
    const q1 = drv.createDeviceQueue();
    for (let i = 0; i < 4; i++) {
      drv.addChain({ readable: [new Uint8Array([i])] });
      drv.kick();
      q1.addUsed(q1.pop()!, 0);
      q1.publish();
      drv.usedEntries();
    }
    drv.addChain({ readable: [new Uint8Array([4])] });
    drv.addChain({ readable: [new Uint8Array([5])] });
    drv.kick();
    const c4 = q1.pop()!;
    q1.addUsed(c4, 0);
    q1.publish();
    const state = q1.getState();
    assert.deepEqual(state, { lastAvailCounter: 0, lastAvailIdx: 2, lastUsedCounter: 0, lastUsedIdx: 2 });
    const q2 = drv.createDeviceQueue();
    q2.setState(state);
    const c5 = q2.pop()!;
    assert.equal(c5.readable[0]![0], 5);
    q2.addUsed(c5, 0);
    q2.publish();
    assert.deepEqual(
      drv.usedEntries().map((u) => u.chain!.readable.length),
      [1, 1],
    );
    assert.deepEqual(q2.getState(), {
      lastAvailCounter: 1,
      lastAvailIdx: 0,
      lastUsedCounter: 1,
      lastUsedIdx: 0,
    });
    q2.addUsed(c4, 0);
    assert.equal(q2.error?.kind, 'used-id');
  });

  it('setState validates its input', () => {
    const drv = new MockDriver({ size: 3, packed: true });
    const q = drv.createDeviceQueue();
    const ok = { lastAvailCounter: 1, lastAvailIdx: 2, lastUsedCounter: 0, lastUsedIdx: 0 };
    q.setState(ok);
    assert.deepEqual(q.getState(), ok);
    assert.throws(() => q.setState({ ...ok, lastAvailIdx: 3 }), RangeError);
    assert.throws(() => q.setState({ ...ok, lastUsedCounter: 2 }), RangeError);
    assert.throws(() => q.setState({ nextAvail: 0 }), TypeError);
  });

  it('re-translates the ring after a generation change, keeping pending used entries', () => {
    const drv = new MockDriver({ size: 4, packed: true });
    const q = drv.createDeviceQueue();
    drv.addChain({ readable: [new Uint8Array([1])], writable: [1] });
    drv.kick();
    q.addUsed(q.pop()!, 1);
    drv.memory.remapRegion(drv.memory.regionList[0]!.addr);
    q.publish();
    assert.equal(drv.usedEntries().length, 1);
    drv.addChain({ readable: [new Uint8Array([2])], writable: [1] });
    drv.kick();
    assert.equal(q.pop()?.readable[0]![0], 2);
    assert.equal(q.error, null);
  });

  it('layout errors: ring-layout, reported once, never thrown', () => {
    const mem = new HeapMemory([{ addr: 0x10000, size: 0x10000 }]);
    const base = {
      index: 1,
      size: 5,
      descAddr: 0x10000,
      driverAddr: 0x11000,
      deviceAddr: 0x12000,
      eventIdx: false,
      indirect: false,
    };
    for (const config of [
      { ...base, descAddr: 0x10004 },
      { ...base, driverAddr: 0x11002 },
      { ...base, deviceAddr: 0x30000 },
      { ...base, descAddr: 0x1fff0 },
    ]) {
      const q = createVirtqueue(config, true, mem, { signal: () => {} });
      assert.doesNotThrow(() => q.disableNotification());
      assert.equal(q.error?.kind, 'ring-layout', JSON.stringify(config));
      assert.equal(q.pop(), null);
    }
    assert.throws(() => new PackedQueue({ ...base, size: 32769 }, mem, { signal: () => {} }), RangeError);
    // Any size 1..32768 is fine for packed.
    assert.equal(createVirtqueue({ ...base, size: 7 }, true, mem, { signal: () => {} }).pop(), null);
  });
});
