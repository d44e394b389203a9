/**
 * Split virtqueue device side against the mock driver: round trips at many queue sizes, free-running index
 * wrap at 65535, batching, out-of-order completion, notification suppression (flags and EVENT_IDX against the
 * spec formula), state save/restore, re-translation after a memory generation change, and ring-level errors.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { HeapMemory } from '../../../src/memory/index.js';
import { MockDriver } from '../../../src/testing/index.js';
import { VRING_USED_F_NO_NOTIFY, vringNeedEvent } from '../../../src/uapi/virtio-ring.js';
import { SplitQueue, createVirtqueue, writeStatus, writeToChain } from '../../../src/virtio/index.js';
import type { SplitQueueState } from '../../../src/virtio/index.js';
import { popAll, rng } from './helpers.js';

describe('split queue: data path', () => {
  it('round trip: ids are heads, data and lengths reach the driver', () => {
    const drv = new MockDriver({ size: 16 });
    const q = drv.createDeviceQueue();
    assert.equal(q.packed, false);
    assert.equal(q.size, 16);
    const a = drv.addChain({ readable: [new Uint8Array([1, 2, 3])], writable: [4, 1] });
    const b = drv.addChain({ readable: [new Uint8Array([9])], writable: [2] });
    drv.kick();
    const [ca, cb] = popAll(q);
    assert.equal(ca?.id, a.id);
    assert.equal(cb?.id, b.id);
    assert.deepEqual([...ca!.readable[0]!], [1, 2, 3]);
    assert.equal(q.inFlight, 2);
    writeToChain(ca!, 0, new Uint8Array([5, 6, 7, 8]));
    writeStatus(ca!, 0);
    q.addUsed(ca!, 5);
    q.addUsed(cb!, 0);
    assert.equal(q.inFlight, 0);
    assert.equal(drv.usedEntries().length, 0, 'nothing visible before publish()');
    assert.equal(q.publish(), true);
    const used = drv.usedEntries();
    assert.deepEqual(
      used.map((u) => [u.id, u.len, [...u.written]]),
      [
        [a.id, 5, [5, 6, 7, 8, 0]],
        [b.id, 0, []],
      ],
    );
    assert.equal(drv.inFlight, 0);
  });

  for (const size of [1, 2, 4, 16, 256, 32768]) {
    it(`size ${size}: a full ring, completed in reverse, twice`, () => {
      const drv = new MockDriver({ size, memorySize: 64 * size + 65536 * 8 });
      const q = drv.createDeviceQueue();
      for (let round = 0; round < 2; round++) {
        const ids = new Set<number>();
        for (let i = 0; i < size; i++) ids.add(drv.addChain({ writable: [1] }).id);
        assert.throws(() => drv.addChain({ writable: [1] }), /full/);
        drv.kick();
        const chains = popAll(q);
        assert.equal(chains.length, size);
        assert.equal(q.pop(), null);
        for (const c of chains.reverse()) {
          writeStatus(c, c.id & 0xff);
          q.addUsed(c, 1);
        }
        q.publish();
        const used = drv.usedEntries();
        assert.equal(used.length, size);
        assert.deepEqual(
          used.map((u) => u.id),
          chains.map((c) => c.id),
        );
        for (const u of used) assert.equal(u.written[0], u.id & 0xff);
        assert.deepEqual(new Set(used.map((u) => u.id)), ids);
      }
      assert.equal(q.error, null);
      assert.deepEqual(q.getState(), { nextAvail: (2 * size) & 0xffff, nextUsed: (2 * size) & 0xffff });
    });
  }

  it('free-running indexes wrap at 65535 (70000 requests through a queue of 4)', () => {
    const drv = new MockDriver({ size: 4, eventIdx: true });
    const q = drv.createDeviceQueue();
    const r = rng(7);
    let total = 0;
    while (total < 70000) {
      const n = 1 + r.int(2);
      for (let k = 0; k < n; k++) drv.addChain({ readable: [new Uint8Array([total + k])], writable: [1] });
      drv.kick();
      const chains = popAll(q);
      assert.equal(chains.length, n);
      for (let k = 0; k < n; k++) assert.equal(chains[k]!.readable[0]![0], (total + k) & 0xff);
      for (const c of chains) q.addUsed(c, 1);
      q.publish();
      assert.equal(drv.usedEntries().length, n);
      total += n;
      assert.equal((q.getState() as SplitQueueState).nextAvail, total & 0xffff);
    }
    assert.equal(q.error, null);
    assert.ok(total > 65536);
  });

  it('batching: many pops, one publish, one signal', () => {
    const drv = new MockDriver({ size: 128 });
    const q = drv.createDeviceQueue();
    for (let i = 0; i < 32; i++) drv.addChain({ readable: [16], writable: [4096, 1] });
    drv.kick();
    const chains = popAll(q);
    assert.equal(chains.length, 32);
    for (const c of chains) q.addUsed(c, 4097);
    assert.equal(drv.signals, 0);
    assert.equal(q.publish(), true);
    assert.equal(drv.signals, 1);
    assert.equal(q.publish(), false, 'nothing new: no signal');
    assert.equal(drv.signals, 1);
    assert.equal(drv.usedEntries().length, 32);
  });

  it('out-of-order completion: the used ring follows addUsed order', () => {
    const drv = new MockDriver({ size: 16 });
    const q = drv.createDeviceQueue();
    const ids = [0, 1, 2, 3, 4].map(() => drv.addChain({ readable: [1], writable: [2, 3] }).id);
    drv.kick();
    const chains = popAll(q);
    const order = [3, 0, 4, 1, 2];
    for (const k of order) q.addUsed(chains[k]!, k);
    q.publish();
    assert.deepEqual(
      drv.usedEntries().map((u) => [u.id, u.len]),
      order.map((k) => [ids[k], k]),
    );
    // Freed descriptors are reused by the driver in another order; the device does not care.
    for (let i = 0; i < 16; i++) drv.addChain({ writable: [1] });
    drv.kick();
    assert.equal(popAll(q).length, 16);
  });

  it('indirect chains', () => {
    const drv = new MockDriver({ size: 2, indirect: true });
    const q = drv.createDeviceQueue();
    const hdr = Uint8Array.from({ length: 16 }, (_, i) => i);
    const sent = drv.addChain({
      readable: [hdr.subarray(0, 7), hdr.subarray(7)],
      writable: [512, 512, 1],
      indirect: true,
    });
    assert.ok(sent.table);
    assert.equal(drv.freeDescriptors, 1, 'one ring descriptor for five buffers');
    drv.kick();
    const c = q.pop()!;
    assert.equal(c.readable.length, 2);
    assert.equal(c.writable.length, 3);
    assert.equal(c.writableBytes, 1025);
    writeStatus(c, 7);
    q.addUsed(c, 1025);
    q.publish();
    const [u] = drv.usedEntries();
    assert.equal(u?.written[1024], 7);
  });

  it('used len is clamped to the writable size', () => {
    const drv = new MockDriver({ size: 4 });
    const q = drv.createDeviceQueue();
    drv.addChain({ readable: [8], writable: [4] });
    drv.addChain({ readable: [8] });
    drv.kick();
    const [a, b] = popAll(q);
    q.addUsed(a!, 100);
    q.addUsed(b!, -3);
    q.publish();
    assert.deepEqual(
      drv.usedEntries().map((u) => u.len),
      [4, 0],
    );
  });
});

describe('split queue: notifications', () => {
  it('without EVENT_IDX: VRING_AVAIL_F_NO_INTERRUPT suppresses signals', () => {
    const drv = new MockDriver({ size: 8 });
    const q = drv.createDeviceQueue();
    const cycle = (): boolean => {
      drv.addChain({ writable: [1] });
      drv.kick();
      q.addUsed(q.pop()!, 1);
      const s = q.publish();
      drv.usedEntries();
      return s;
    };
    drv.setNoInterrupt(true);
    assert.equal(cycle(), false);
    assert.equal(drv.signals, 0);
    drv.setNoInterrupt(false);
    assert.equal(cycle(), true);
    assert.equal(drv.signals, 1);
  });

  it('without EVENT_IDX: disableNotification sets VRING_USED_F_NO_NOTIFY, enable clears it', () => {
    const drv = new MockDriver({ size: 8 });
    const q = drv.createDeviceQueue();
    drv.addChain({ writable: [1] });
    assert.equal(drv.kick(), true);
    q.disableNotification();
    assert.equal(drv.deviceSuppression().flags, VRING_USED_F_NO_NOTIFY);
    drv.addChain({ writable: [1] });
    assert.equal(drv.kick(), false);
    assert.equal(q.enableNotification(), true, 'buffers arrived while disabled');
    assert.equal(drv.deviceSuppression().flags, 0);
    assert.equal(popAll(q).length, 2);
    assert.equal(q.enableNotification(), false);
    drv.addChain({ writable: [1] });
    assert.equal(drv.kick(), true);
    assert.equal(drv.kicks, 2);
  });

  it('EVENT_IDX: the signal decision is vring_need_event(used_event, new, old), flags ignored', () => {
    const size = 16;
    const drv = new MockDriver({ size, eventIdx: true, autoEvent: false });
    const q = drv.createDeviceQueue();
    drv.setNoInterrupt(true); // must be ignored with EVENT_IDX
    const r = rng(42);
    let signals = 0;
    let hits = 0;
    for (let i = 0; i < 3000; i++) {
      const n = 1 + r.int(size);
      for (let k = 0; k < n; k++) drv.addChain({ writable: [1] });
      drv.kick();
      const chains = popAll(q);
      const old = (q.getState() as SplitQueueState).nextUsed!;
      // used_event near the window (the interesting cases), sometimes anywhere.
      const usedEvent = r.next() < 0.8 ? (old - 2 + r.int(n + 4)) & 0xffff : r.int(65536);
      drv.setUsedEvent(usedEvent);
      for (const c of chains) q.addUsed(c, 1);
      const signalled = q.publish();
      const now = (q.getState() as SplitQueueState).nextUsed!;
      assert.equal(now, (old + n) & 0xffff);
      assert.equal(
        signalled,
        vringNeedEvent(usedEvent, now, old),
        `event ${usedEvent} old ${old} new ${now}`,
      );
      if (signalled) signals++;
      if (signalled) hits++;
      drv.usedEntries();
    }
    assert.equal(drv.signals, signals);
    assert.ok(hits > 100 && hits < 2900, `both outcomes exercised (${hits})`);
  });

  it('EVENT_IDX: the driver re-arming used_event like Linux gets one signal per batch', () => {
    const drv = new MockDriver({ size: 32, eventIdx: true });
    const q = drv.createDeviceQueue();
    for (let i = 0; i < 50; i++) {
      for (let k = 0; k < 5; k++) drv.addChain({ writable: [1] });
      drv.kick();
      for (const c of popAll(q)) q.addUsed(c, 1);
      assert.equal(q.publish(), true);
      drv.usedEntries();
    }
    assert.equal(drv.signals, 50);
    // A batch published before the driver reads the previous one: no new signal (used_event not passed again).
    drv.addChain({ writable: [1] });
    drv.kick();
    q.addUsed(q.pop()!, 1);
    assert.equal(q.publish(), true);
    drv.addChain({ writable: [1] });
    drv.kick();
    q.addUsed(q.pop()!, 1);
    assert.equal(q.publish(), false);
  });

  it('EVENT_IDX: avail_event drives the kicks (vring_need_event on the driver side)', () => {
    const drv = new MockDriver({ size: 16, eventIdx: true });
    const q = drv.createDeviceQueue();
    assert.equal(q.enableNotification(), false);
    assert.equal(drv.deviceSuppression().event, 0);
    drv.addChain({ writable: [1] });
    assert.equal(drv.kick(), true, 'idx 0 -> 1 passes avail_event 0');
    drv.addChain({ writable: [1] });
    assert.equal(drv.kick(), false, 'device has not caught up: no kick');
    // The device pops until empty; the empty pop re-arms avail_event at its next index.
    assert.equal(popAll(q).length, 2);
    assert.equal(drv.deviceSuppression().event, 2);
    drv.addChain({ writable: [1] });
    assert.equal(drv.kick(), true);
    // Polling mode: disabled notifications are not re-armed by pop().
    q.disableNotification();
    assert.equal(popAll(q).length, 1);
    assert.equal(drv.deviceSuppression().event, 2);
    drv.addChain({ writable: [1] });
    assert.equal(drv.kick(), false);
    assert.equal(q.enableNotification(), true, 'a buffer is already there');
    assert.equal(drv.deviceSuppression().event, 3);
    assert.equal(drv.kicks, 2);
  });

  it('EVENT_IDX: kicks counted by the driver match the formula against avail_event', () => {
    const drv = new MockDriver({ size: 8, eventIdx: true });
    const q = drv.createDeviceQueue();
    const r = rng(3);
    for (let i = 0; i < 500; i++) {
      const n = 1 + r.int(4);
      const before = drv.availPosition().idx;
      for (let k = 0; k < n; k++) drv.addChain({ writable: [1] });
      const availEvent = drv.deviceSuppression().event;
      const kicked = drv.kick();
      assert.equal(kicked, vringNeedEvent(availEvent, (before + n) & 0xffff, before));
      if (r.next() < 0.5) q.disableNotification();
      else q.enableNotification();
      for (const c of popAll(q)) q.addUsed(c, 0);
      q.publish();
      drv.usedEntries();
    }
  });

  it('the optional fence runs once per publish and per re-enable', () => {
    const drv = new MockDriver({ size: 8, eventIdx: true });
    let fences = 0;
    const q = drv.createDeviceQueue({ fence: () => fences++ });
    q.enableNotification();
    assert.equal(fences, 1);
    for (let i = 0; i < 3; i++) drv.addChain({ writable: [1] });
    drv.kick();
    for (const c of popAll(q)) q.addUsed(c, 1);
    assert.equal(fences, 2, 'the empty pop re-armed avail_event once');
    assert.equal(q.pop(), null);
    assert.equal(fences, 2, 'already armed at this index');
    q.publish();
    assert.equal(fences, 3);
  });
});

describe('split queue: state and memory', () => {
  it('getState / setState: a new queue continues where the old one stopped', () => {
    const drv = new MockDriver({ size: 16 });
    const q1 = drv.createDeviceQueue();
    for (let i = 0; i < 5; i++) drv.addChain({ readable: [new Uint8Array([i])], writable: [1] });
    drv.kick();
    const first = [q1.pop()!, q1.pop()!, q1.pop()!];
    q1.addUsed(first[0]!, 1);
    q1.publish();
    const state = q1.getState();
    assert.deepEqual(state, { nextAvail: 3, nextUsed: 1 });
    const q2 = drv.createDeviceQueue();
    q2.setState(state);
    const rest = popAll(q2);
    assert.deepEqual(
      rest.map((c) => c.readable[0]![0]),
      [3, 4],
    );
    // Chains of the old queue are not in flight on the new one.
    q2.addUsed(first[1]!, 1);
    assert.equal(q2.error?.kind, 'used-id');
  });

  it('setState forgets chains in flight and validates its input', () => {
    const drv = new MockDriver({ size: 8 });
    const q = drv.createDeviceQueue();
    drv.addChain({ writable: [1] });
    drv.kick();
    const c = q.pop()!;
    q.setState({ nextAvail: 0 });
    assert.equal(q.inFlight, 0);
    assert.deepEqual(q.getState(), { nextAvail: 0, nextUsed: 0 });
    assert.equal(q.pop()?.id, c.id, 'the same chain again');
    q.addUsed(c, 1);
    assert.equal(q.error?.kind, 'used-id');
    assert.throws(() => q.setState({ nextAvail: 65536 }), RangeError);
    assert.throws(() => q.setState({ nextAvail: 1.5 }), RangeError);
    assert.throws(
      () => q.setState({ lastAvailCounter: 1, lastAvailIdx: 0, lastUsedCounter: 1, lastUsedIdx: 0 }),
      TypeError,
    );
  });

  it('addUsed twice, or with a chain of another queue, is a used-id error', () => {
    const [d0, d1] = MockDriver.createQueues(2, { size: 4 });
    const q0 = d0!.createDeviceQueue();
    const q1 = d1!.createDeviceQueue();
    d0!.addChain({ writable: [1] });
    d0!.kick();
    d1!.addChain({ writable: [1] });
    d1!.kick();
    const c0 = q0.pop()!;
    const c1 = q1.pop()!;
    q0.addUsed(c1, 1);
    assert.equal(q0.error?.kind, 'used-id');
    q1.addUsed(c1, 1);
    assert.equal(q1.inFlight, 0);
    q1.addUsed(c1, 1);
    assert.equal(q1.error?.kind, 'used-id');
    assert.equal(c0.id, 0);
  });

  it('re-translates the rings after a generation change', () => {
    const drv = new MockDriver({ size: 8 });
    const q = drv.createDeviceQueue();
    drv.addChain({ readable: [new Uint8Array([1])], writable: [1] });
    drv.kick();
    const a = q.pop()!;
    q.addUsed(a, 1);
    // Invalidate + map again (a copy of the bytes): views from before now point at a stale copy.
    drv.memory.remapRegion(drv.memory.regionList[0]!.addr);
    q.publish(); // written into the new copy
    assert.equal(drv.usedEntries().length, 1);
    drv.addChain({ readable: [new Uint8Array([2])], writable: [1] });
    drv.kick();
    const b = q.pop();
    assert.equal(b?.readable[0]![0], 2);
    assert.equal(q.error, null);
  });

  it('pending used entries survive a re-translation between addUsed and publish', () => {
    const drv = new MockDriver({ size: 8, packed: false });
    const q = drv.createDeviceQueue();
    for (let i = 0; i < 3; i++) drv.addChain({ writable: [1] });
    drv.kick();
    for (const c of popAll(q)) q.addUsed(c, 1);
    drv.memory.remapRegion(drv.memory.regionList[0]!.addr);
    q.publish();
    assert.equal(drv.usedEntries().length, 3);
  });

  it('rings that are not mapped, misaligned, or a size that is not a power of 2: ring-layout', () => {
    const mem = new HeapMemory([{ addr: 0x10000, size: 0x10000 }]);
    const base = {
      index: 3,
      size: 8,
      descAddr: 0x10000,
      driverAddr: 0x11000,
      deviceAddr: 0x12000,
      eventIdx: true,
      indirect: false,
    };
    const bad = [
      { ...base, descAddr: 0x8000 },
      { ...base, deviceAddr: 0x1fff0 }, // runs off the end
      { ...base, descAddr: 0x10008 },
      { ...base, driverAddr: 0x11001 },
      { ...base, deviceAddr: 0x12002 },
      { ...base, size: 12 },
    ];
    for (const config of bad) {
      const errors: unknown[] = [];
      const q = createVirtqueue(config, false, mem, { signal: () => {}, onError: (e) => errors.push(e) });
      assert.doesNotThrow(() => q.pop());
      assert.equal(q.error?.kind, 'ring-layout', JSON.stringify(config));
      assert.equal(q.error?.queue, 3);
      assert.equal(errors.length, 1);
      assert.equal(q.publish(), false);
      assert.equal(q.enableNotification(), false);
      assert.equal(errors.length, 1);
    }
    assert.throws(() => new SplitQueue({ ...base, size: 0 }, mem, { signal: () => {} }), RangeError);
    assert.throws(() => new SplitQueue({ ...base, size: 65536 }, mem, { signal: () => {} }), RangeError);
  });

  it('avail.idx more than size ahead: avail-index', () => {
    const drv = new MockDriver({ size: 8 });
    const q = drv.createDeviceQueue();
    drv.setAvailIdx(8);
    // Exactly `size` ahead is fine (the zeroed descriptors are empty chains).
    assert.ok(q.pop());
    assert.equal(q.error, null);
    const drv2 = new MockDriver({ size: 8 });
    const q2 = drv2.createDeviceQueue();
    drv2.setAvailIdx(9);
    assert.equal(q2.pop(), null);
    assert.equal(q2.error?.kind, 'avail-index');
    assert.equal(drv2.errors.length, 1);
  });
});
