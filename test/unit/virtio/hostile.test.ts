// A hostile driver against the queue engines: ids and indexes it chooses are checked where they enter, a bad one
// is one latched VirtqueueError (never an exception out of the queue), and whatever it offers, at most `size`
// chains are in flight.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { VduseTsError } from '../../../src/common/errors.js';
import { GuestMemoryError } from '../../../src/memory/guest-memory.js';
import { HeapMemory } from '../../../src/memory/heap-memory.js';
import { MockDriver } from '../../../src/testing/mock-driver.js';
import { heapQueueLog } from '../../../src/transports/vduse/recovery/state-log.js';
import { VRING_DESC_F_WRITE } from '../../../src/uapi/virtio-ring.js';
import { createVirtqueue } from '../../../src/virtio/create-virtqueue.js';
import {
  VirtqueueError,
  type DescriptorChain,
  type InflightRecorder,
  type Virtqueue,
} from '../../../src/virtio/virtqueue.js';
import { popAll } from './helpers.js';

/** A state log for one queue of at most `maxQueueSize` entries (what the transport gives each queue). */
function queueLog(maxQueueSize: number) {
  return heapQueueLog('hostile', maxQueueSize);
}

/** A recorder that counts calls and refuses (throws) any id at or above its capacity, like an array would. */
function countingRecorder(capacity: number): InflightRecorder & { calls: number } {
  const check = (id: number): void => {
    if (!(id >= 0 && id < capacity)) throw new RangeError(`id ${id} outside the recorder`);
  };
  const r = {
    capacity,
    calls: 0,
    popped(id: number) {
      r.calls++;
      check(id);
    },
    poppedPacked(id: number) {
      r.calls++;
      check(id);
    },
    completed() {
      r.calls++;
    },
    publishingPacked() {
      r.calls++;
    },
    completedPacked() {
      r.calls++;
    },
  };
  return r;
}

function fill(drv: MockDriver, n: number): void {
  for (let i = 0; i < n; i++) drv.addChain({ readable: [new Uint8Array([i])], writable: [4] });
  drv.kick();
}

/** Offer the in-flight chain `id` again: split: its head in the next avail entry; packed: a new slot with that id. */
function reoffer(drv: MockDriver, id: number): void {
  if (drv.packed) {
    drv.pushRaw([{ addr: drv.alloc(16), len: 16, flags: VRING_DESC_F_WRITE, id }]);
  } else {
    drv.pushAvail(id);
  }
  drv.kick();
}

for (const packed of [false, true]) {
  const ring = packed ? 'packed' : 'split';
  describe(`hostile driver, ${ring} ring`, () => {
    it('re-offering a chain that is in flight is an inflight-id error; in flight never exceeds the size', () => {
      const size = 64;
      const drv = new MockDriver({ size, packed, memorySize: 4 << 20 });
      const q = drv.createDeviceQueue();
      fill(drv, size / 2);
      const chains = popAll(q);
      assert.equal(chains.length, size / 2);
      // Re-offer the same id many times (the driver of the report reached 1,280,001 requests this way).
      let popped = 0;
      for (let i = 0; i < 1000; i++) {
        try {
          reoffer(drv, chains[7]!.id);
        } catch {
          break; // the mock's ring is full: the queue stopped long before
        }
        for (let c = q.pop(); c !== null; c = q.pop()) popped++;
        assert.ok(q.inFlight <= size, `in flight ${q.inFlight}`);
      }
      assert.equal(popped, 0, 'no re-offered chain was handed out');
      assert.equal(q.error?.kind, 'inflight-id', q.error?.message);
      assert.equal(drv.errors.length, 1, 'reported once');
      assert.equal(q.inFlight, size / 2);
      assert.equal(q.pop(), null);
    });

    it('an id completed but not yet published is still in flight', () => {
      const drv = new MockDriver({ size: 8, packed });
      const q = drv.createDeviceQueue();
      fill(drv, 1);
      const chain = q.pop()!;
      q.addUsed(chain, 0);
      reoffer(drv, chain.id);
      assert.equal(q.pop(), null);
      assert.equal(q.error?.kind, 'inflight-id');
    });

    it('an id the driver got back may be offered again', () => {
      const drv = new MockDriver({ size: 8, packed });
      const q = drv.createDeviceQueue();
      for (let round = 0; round < 20; round++) {
        fill(drv, 3);
        const chains = popAll(q);
        assert.equal(chains.length, 3);
        for (const c of chains) q.addUsed(c, 1);
        q.publish();
        assert.equal(drv.usedEntries().length, 3);
      }
      assert.equal(q.error, null, q.error?.message);
    });

    it('setState() frees every id: chains offered again after it are served', () => {
      const drv = new MockDriver({ size: 8, packed });
      const q = drv.createDeviceQueue();
      fill(drv, 2);
      const [a] = popAll(q);
      q.setState(q.getState()); // a reconnect: what was in flight is the driver's to re-offer
      reoffer(drv, a!.id);
      const again = q.pop();
      assert.equal(q.error, null, q.error?.message);
      assert.equal(again?.id, a!.id);
    });

    it(`a ring larger than the in-flight recorder is refused (ring-size), never indexed past it`, () => {
      const recorder = countingRecorder(16);
      const drv = new MockDriver({ size: 64, packed });
      const q = drv.createDeviceQueue({ inflight: recorder });
      // Chains whose ids lie beyond the recorder's 16 entries (split heads 0..38, packed ids 0..19).
      for (let i = 0; i < 20; i++) drv.addChain({ readable: [1], writable: [1] });
      drv.kick();
      assert.doesNotThrow(() => popAll(q));
      assert.equal(q.error?.kind, 'ring-size', q.error?.message);
      assert.match(q.error!.message, /larger than the device's maximum queue size 16/);
      assert.equal(recorder.calls, 0);
      assert.equal(drv.errors.length, 1);
      // Recovery onto such a ring is refused too, with the same error.
      const q2 = drv.createDeviceQueue({ inflight: recorder });
      assert.throws(
        () => q2.recoverInflight(queueLog(16)),
        (e: unknown) => e instanceof VirtqueueError && e.kind === 'ring-size',
      );
    });

    it('a ring larger than the state log (the device maximum): a queue error, no exception', () => {
      // The transport sizes the log by the device's maximum queue size; the driver chose a larger ring.
      const log = queueLog(16);
      const drv = new MockDriver({ size: 64, packed });
      const q = drv.createDeviceQueue({ inflight: log });
      for (let i = 0; i < 20; i++) drv.addChain({ readable: [1], writable: [1] });
      drv.kick();
      let chains: DescriptorChain[] = [];
      assert.doesNotThrow(() => (chains = popAll(q)));
      assert.equal(chains.length, 0);
      assert.equal(q.error?.kind, 'ring-size');
      assert.deepEqual(log.inflightIds(), []);
    });

    it('a ring as large as the recorder is served', () => {
      const recorder = countingRecorder(16);
      const drv = new MockDriver({ size: 16, packed });
      const q = drv.createDeviceQueue({ inflight: recorder });
      fill(drv, 8);
      assert.equal(popAll(q).length, 8);
      assert.equal(q.error, null, q.error?.message);
    });
  });
}

describe('hostile driver, packed buffer ids', () => {
  it('a buffer id at or above the size is a buffer-id error before it reaches the state log', () => {
    for (const id of [8, 9, 255, 0xffff]) {
      const log = queueLog(256); // the device's maximum, larger than this ring
      const drv = new MockDriver({ size: 8, packed: true });
      const q = drv.createDeviceQueue({ inflight: log });
      drv.pushRaw([{ addr: drv.alloc(16), len: 16, flags: VRING_DESC_F_WRITE, id }]);
      drv.kick();
      assert.equal(q.pop(), null);
      assert.equal(q.error?.kind, 'buffer-id', `id ${id}`);
      assert.match(q.error!.message, new RegExp(`buffer id ${id} is outside 0\\.\\.7`));
      assert.deepEqual(log.inflightIds(), []);
    }
  });

  it('a buffer id past the state log (the report: RangeError out of QueueLog.popped) is a queue error', () => {
    const log = queueLog(8);
    const drv = new MockDriver({ size: 8, packed: true });
    const q = drv.createDeviceQueue({ inflight: log });
    drv.pushRaw([{ addr: drv.alloc(16), len: 16, flags: VRING_DESC_F_WRITE, id: 300 }]);
    drv.kick();
    assert.doesNotThrow(() => q.pop());
    assert.equal(q.error?.kind, 'buffer-id');
  });

  it('the last descriptor of a chain carries the id that is checked', () => {
    const drv = new MockDriver({ size: 8, packed: true });
    const q = drv.createDeviceQueue();
    const a = drv.alloc(16);
    drv.pushRaw([
      { addr: a, len: 4, flags: 1 /* NEXT */, id: 500 },
      { addr: a, len: 4, flags: VRING_DESC_F_WRITE, id: 2 },
    ]);
    drv.kick();
    assert.equal(q.pop()?.id, 2);
    assert.equal(q.error, null);
  });
});

describe('queue errors are VduseTsErrors', () => {
  it('VirtqueueError and GuestMemoryError carry a stable code, their fields and the cause', () => {
    const memory = new HeapMemory([{ addr: 0x1000, size: 0x1000 }]);
    let memoryError: unknown;
    try {
      memory.view(0x5000, 16, 1);
    } catch (e) {
      memoryError = e;
    }
    assert.ok(memoryError instanceof GuestMemoryError);
    assert.ok(memoryError instanceof VduseTsError);
    assert.equal(memoryError.code, 'ERR_GUEST_MEMORY');
    assert.equal(memoryError.name, 'GuestMemoryError');
    assert.equal(memoryError.addr, 0x5000);
    assert.equal(memoryError.len, 16);

    // A descriptor pointing outside memory: a 'memory' error whose cause is the GuestMemoryError.
    const drv = new MockDriver({ size: 4 });
    const q: Virtqueue = drv.createDeviceQueue();
    drv.writeDescriptor(0, { addr: 0x10, len: 16, flags: 0, next: 0 });
    drv.pushAvail(0);
    drv.kick();
    assert.equal(q.pop(), null);
    const error = q.error!;
    assert.ok(error instanceof VirtqueueError);
    assert.ok(error instanceof VduseTsError);
    assert.equal(error.code, 'ERR_VIRTQUEUE');
    assert.equal(error.name, 'VirtqueueError');
    assert.equal(error.kind, 'memory');
    assert.equal(error.queue, 0);
    assert.match(error.message, /^queue 0: /);
    assert.ok(error.cause instanceof GuestMemoryError, 'cause');
    assert.ok(!error.message.includes('\n'));
  });

  it('a queue built through createVirtqueue exposes recoverInflight on the interface', () => {
    const drv = new MockDriver({ size: 8, packed: true });
    const log = queueLog(8);
    const c = drv.config;
    log.start(
      { size: 8, packed: true, descAddr: c.descAddr, driverAddr: c.driverAddr, deviceAddr: c.deviceAddr },
      1 << 15,
      1 << 15,
    );
    const q: Virtqueue = createVirtqueue(drv.config, true, drv.memory, { signal: () => {}, inflight: log });
    assert.equal(q.recoverInflight(log), 0);
  });
});
