// ServedQueue: what the engine adds to a ring engine (pins per popped chain, no throw out of the data path,
// halt), and the state log's in-flight recorder refusing a buffer id it has no slot for.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { MockDriver } from '../../../src/testing/mock-driver.js';
import { ServedQueue } from '../../../src/transports/engine/served-queue.js';
import { StateLog, stateLogSize } from '../../../src/transports/vduse/recovery/state-log.js';
import { VirtqueueError, createVirtqueue, type Virtqueue } from '../../../src/virtio/index.js';

/** GuestMemory with pins counted (the driver's heap memory never unmaps, so it takes none by itself). */
function pinned(drv: MockDriver) {
  const pins: number[] = [];
  const memory = Object.assign(Object.create(drv.memory) as typeof drv.memory, {
    pin: () => {
      pins.push(drv.memory.generation);
      return drv.memory.generation;
    },
    unpin: (g: number) => {
      const i = pins.indexOf(g);
      assert.ok(i >= 0, `unpin of a generation not pinned: ${g}`);
      pins.splice(i, 1);
    },
    retiredRegions: 0,
  });
  return { memory, pins };
}

function log(maxQueueSize: number): StateLog {
  const buffer = new ArrayBuffer(stateLogSize(1, maxQueueSize));
  StateLog.format(buffer, {
    name: 't',
    deviceId: 2,
    features: 1n << 32n,
    numQueues: 1,
    maxQueueSize,
    config: new Uint8Array(1),
  });
  return new StateLog(buffer);
}

describe('ServedQueue', () => {
  it('pins each popped chain until it is given back; release() gives back what a reset dropped', () => {
    const drv = new MockDriver({ size: 8 });
    const { memory, pins } = pinned(drv);
    const errors: Error[] = [];
    const onError = (e: Error): number => errors.push(e);
    const q = new ServedQueue(drv.createDeviceQueue({ onError }), memory, onError);
    drv.addChain({ readable: [new Uint8Array(4)], writable: [4] });
    drv.addChain({ readable: [new Uint8Array(4)], writable: [4] });
    drv.publish();
    const a = q.pop()!;
    const b = q.pop()!;
    assert.equal(pins.length, 2);
    assert.equal(q.pinned, 2);
    q.addUsed(a, 0);
    assert.equal(pins.length, 1, 'given back: unpinned');
    q.addUsed(a, 0); // a device bug: not in flight any more; no second unpin
    assert.equal(pins.length, 1);
    assert.equal(errors.length, 1, 'the ring engine reports the bad completion');
    q.retire();
    assert.equal(q.pop(), null, 'a retired queue hands out nothing');
    q.addUsed(b, 0); // late completion after the stop: the pin stays until release()
    assert.equal(pins.length, 1);
    q.release();
    assert.equal(pins.length, 0);
  });

  it('a throw inside the ring engine or its in-flight log never leaves pop(): the queue stops, reported once', () => {
    const drv = new MockDriver({ size: 8 });
    const errors: Error[] = [];
    const inner = drv.createDeviceQueue();
    const throwing: Virtqueue = Object.assign(Object.create(inner) as Virtqueue, {
      pop: () => {
        throw new RangeError('offset is out of bounds');
      },
    });
    const q = new ServedQueue(throwing, drv.memory, (e) => errors.push(e));
    assert.equal(q.pop(), null);
    assert.equal(q.pop(), null);
    assert.equal(errors.length, 1);
    assert.ok(q.error instanceof VirtqueueError);
    assert.match(q.error.message, /^queue 0: offset is out of bounds$/);
    assert.equal(q.enableNotification(), false);
  });

  it('a halted queue hands out no new chain but completions still go through', () => {
    const drv = new MockDriver({ size: 8 });
    const q = new ServedQueue(drv.createDeviceQueue(), drv.memory, () => assert.fail('no error'));
    drv.addChain({ readable: [new Uint8Array(1)], writable: [1] });
    drv.addChain({ readable: [new Uint8Array(1)], writable: [1] });
    drv.publish();
    const a = q.pop()!;
    q.halt();
    assert.equal(q.pop(), null);
    q.addUsed(a, 1);
    q.publish();
    assert.equal(drv.usedEntries().length, 1);
  });

  it('a packed buffer id at or above the logged maximum is a queue error, not a RangeError (#14.2)', () => {
    // A ring of 32 on a device whose maximum (and state-log slots) is 16: the driver picks buffer id 20.
    const drv = new MockDriver({ size: 32, packed: true });
    const queueLog = log(16).queue(0);
    const errors: Error[] = [];
    const onError = (e: Error): number => errors.push(e);
    const q = new ServedQueue(
      createVirtqueue(drv.config, true, drv.memory, { signal: () => undefined, onError, inflight: queueLog }),
      drv.memory,
      onError,
    );
    drv.pushRaw([{ addr: drv.alloc(16), len: 16, id: 20, flags: 0 }]);
    drv.publish();
    assert.doesNotThrow(() => assert.equal(q.pop(), null));
    assert.equal(errors.length, 1);
    assert.ok(errors[0] instanceof VirtqueueError);
    assert.equal((errors[0] as VirtqueueError).code, 'ERR_VIRTQUEUE');
  });
});

describe('QueueLog (the in-flight recorder)', () => {
  it('refuses an id it has no slot for with a VirtqueueError, never a RangeError', () => {
    const q = log(16).queue(0);
    assert.throws(
      () => q.popped(16, 1),
      (e: unknown) =>
        e instanceof VirtqueueError && e.kind === 'descriptor-index' && !(e instanceof RangeError),
    );
    assert.throws(() => q.poppedPacked(0xffff, new Uint32Array(64), 0, 1, 1), VirtqueueError);
    q.popped(15, 1);
    assert.deepEqual(q.inflightIds(), [15]);
    assert.equal(q.slotsOf(99), 0);
    assert.equal(q.descriptorsOf(99), null);
  });
});
