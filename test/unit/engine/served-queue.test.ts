// ServedQueue: what the engine adds to a ring engine (pins per popped chain, no throw out of the data path,
// halt), and the state log's in-flight recorder refusing a buffer id it has no slot for.
import assert from 'node:assert/strict';
import { openSync } from 'node:fs';
import { describe, it } from 'node:test';

import { ACCESS_READ } from '../../../src/memory/guest-memory.js';
import { IotlbMemory, type IotlbEntry } from '../../../src/memory/iotlb-memory.js';
import type { SysBinding } from '../../../src/sys/binding.js';
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

  it('a chain pins before it is read: a region its reading finds stale stays mapped until the chain is given back', () => {
    const entries: IotlbEntry[] = [{ start: 0x1000, last: 0x1fff, offset: 0x1000, perm: 3 }];
    let unmaps = 0;
    const binding = {
      mmap: (_fd: number, length: number) => new ArrayBuffer(length),
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
    // A ring engine whose chain has a buffer in the region, then one whose look-up drops that region as stale
    // (the kernel's map changed without an UPDATE_IOTLB).
    const chain = { id: 0, readable: [] as Uint8Array[], writable: [], readableBytes: 0, writableBytes: 0 };
    let offered = true;
    const inner = {
      index: 0,
      size: 4,
      packed: false,
      error: null,
      inFlight: 0,
      pop() {
        if (!offered) return null;
        offered = false;
        chain.readable.push(memory.view(0x1010, 16, ACCESS_READ));
        entries[0] = { start: 0x0, last: 0x2fff, offset: 0, perm: 3 };
        chain.readable.push(memory.view(0x2800, 16, ACCESS_READ));
        return chain;
      },
      addUsed: () => undefined,
      publish: () => false,
    } as unknown as Virtqueue;
    const q = new ServedQueue(inner, memory, (e) => assert.fail(e.message));
    assert.equal(q.pop(), chain);
    assert.equal(memory.retiredRegions, 1, 'the dropped region waits for the chain');
    assert.equal(unmaps, 0);
    assert.equal(chain.readable[0]!.length, 16, 'the view the chain took first is still mapped');
    assert.equal(q.pop(), null);
    assert.equal(memory.pins, 1, 'an empty pop gives its pin back');
    q.addUsed(chain, 0);
    assert.equal(unmaps, 1, 'unmapped once the chain is given back');
    assert.equal(memory.pins, 0);
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
