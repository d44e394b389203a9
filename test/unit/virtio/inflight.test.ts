// Crash consistency of the in-flight log: a daemon killed at any step of the pop / complete / publish sequence
// is recovered from the state log and the rings, and every request reaches the driver exactly once.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { MockDriver, type MockChain } from '../../../src/testing/mock-driver.js';
import {
  StateLog,
  stateLogSize,
  type StateLogIdentity,
} from '../../../src/transports/vduse/recovery/state-log.js';
import { createVirtqueue } from '../../../src/virtio/create-virtqueue.js';
import type { DescriptorChain, InflightRecorder, Virtqueue } from '../../../src/virtio/virtqueue.js';

/** Split: a power of two; packed: 10 slots, so that the 6 chains (9 slots) make the driver wrap around. */
const SIZE = 16;
const PACKED_SIZE = 10;
const identity: StateLogIdentity = {
  name: 'crash',
  deviceId: 2,
  features: 0x3_0000_0000n,
  numQueues: 1,
  maxQueueSize: SIZE,
  config: new Uint8Array([1, 2, 3]),
};

class Crash extends Error {}

/** One run of the device: a script of pops and completions, with a crash at point `crashAt`. */
interface Run {
  drv: MockDriver;
  chains: MockChain[];
  /** Ids in the order the device popped them. */
  popOrder: number[];
  memory: Uint8Array;
  log: ArrayBuffer;
  /** Points met (when crashAt is beyond the end, the total). */
  points: number;
  crashed: boolean;
}

function memoryBytes(drv: MockDriver): Uint8Array {
  return drv.memory.hostView(0x100000, 1 << 20);
}

function newLog(): { buffer: ArrayBuffer; log: StateLog } {
  const buffer = new ArrayBuffer(stateLogSize(1, SIZE));
  StateLog.format(buffer, identity);
  return { buffer, log: new StateLog(buffer) };
}

/** Complete `chain`: write its id in every writable byte. */
function complete(q: Virtqueue, chain: DescriptorChain): void {
  let n = 0;
  for (const w of chain.writable) {
    w.fill(chain.id + 1);
    n += w.length;
  }
  q.addUsed(chain, n);
}

function run(packed: boolean, crashAt: number, onPoint?: (point: number, drv: MockDriver) => void): Run {
  const size = packed ? PACKED_SIZE : SIZE;
  const drv = new MockDriver({ size, packed, eventIdx: true, indirect: true, memorySize: 1 << 20 });
  const { buffer, log } = newLog();
  const ql = log.queue(0);
  const c = drv.config;
  ql.start(
    { size, packed, descAddr: c.descAddr, driverAddr: c.driverAddr, deviceAddr: c.deviceAddr },
    packed ? 1 << 15 : 0,
    packed ? 1 << 15 : 0,
  );
  const result: Run = {
    drv,
    chains: [],
    popOrder: [],
    memory: new Uint8Array(0),
    log: new ArrayBuffer(0),
    points: 0,
    crashed: false,
  };
  const point = (): void => {
    const p = result.points++;
    onPoint?.(p, drv);
    if (p === crashAt) {
      result.memory = memoryBytes(drv).slice();
      result.log = buffer.slice(0);
      result.crashed = true;
      throw new Crash();
    }
  };
  // Every store the log makes on the hot path, with a crash point between each two.
  const recorder: InflightRecorder = {
    capacity: ql.capacity,
    popped(id, pos) {
      point();
      ql.popped(id, pos);
      result.popOrder.push(id);
      point();
    },
    poppedPacked(id, ring, first, slots, pos) {
      point();
      ql.poppedPacked(id, ring, first, slots, pos);
      result.popOrder.push(id);
      point();
    },
    completed(ids, count, pos) {
      point(); // used->idx is stored: the batch is visible
      for (let k = 0; k < count; k++) {
        ql.clear(ids[k]!);
        point();
      }
      ql.completed(ids, count, pos);
      point();
    },
    publishingPacked(ids, count, from, to) {
      point();
      ql.publishingPacked(ids, count, from, to);
      point(); // the first used descriptor's flags are stored next
    },
    completedPacked(ids, count, pos) {
      point(); // the batch is visible
      for (let k = 0; k < count; k++) {
        ql.clear(ids[k]!);
        point();
      }
      ql.completedPacked(ids, count, pos);
      point();
    },
  };
  const q = createVirtqueue(drv.config, packed, drv.memory, { signal: () => {}, inflight: recorder });
  for (let i = 0; i < 6; i++) {
    result.chains.push(
      drv.addChain({ readable: [new Uint8Array([i, i, i])], writable: [i + 1], indirect: i % 2 === 1 }),
    );
  }
  drv.kick();
  const popped: DescriptorChain[] = [];
  const pop = (): void => {
    const chain = q.pop();
    assert.ok(chain);
    popped.push(chain);
  };
  const take = (i: number): DescriptorChain => popped.splice(i, 1)[0]!;
  try {
    pop();
    pop();
    pop();
    complete(q, take(1)); // out of order
    q.publish();
    pop();
    complete(q, take(0));
    complete(q, take(1));
    q.publish();
    pop();
    pop();
    complete(q, take(1));
    q.publish();
    point();
  } catch (e) {
    if (!(e instanceof Crash)) throw e;
  }
  if (!result.crashed) {
    result.memory = memoryBytes(drv).slice();
    result.log = buffer.slice(0);
  }
  return result;
}

/** Restart from a crash image: recover, serve everything, and check the driver sees each chain once. */
function recoverAndFinish(r: Run, packed: boolean): { resubmitted: number[] } {
  memoryBytes(r.drv).set(r.memory);
  const log = new StateLog(r.log);
  const ql = log.queue(0);
  const q = createVirtqueue(r.drv.config, packed, r.drv.memory, { signal: () => {}, inflight: ql });
  const n = q.recoverInflight(ql);
  const resubmitted: number[] = [];
  for (let chain = q.pop(); chain; chain = q.pop()) {
    if (resubmitted.length < n) resubmitted.push(chain.id);
    complete(q, chain);
  }
  q.publish();
  assert.equal(q.inFlight, 0);
  assert.equal(ql.inflightIds().length, 0, 'nothing left in flight in the log');
  return { resubmitted };
}

function checkDelivery(r: Run, extra: MockChain[] = [], consumed: number[] = []): void {
  const entries = r.drv.usedEntries(); // throws on an id that is not in flight: a chain completed twice
  const ids = [...consumed, ...entries.map((e) => e.id)].sort((a, b) => a - b);
  const want = [...r.chains, ...extra].map((c) => c.id).sort((a, b) => a - b);
  assert.deepEqual(ids, want, 'every chain completed exactly once');
  for (const e of entries) {
    assert.equal(e.len, e.chain!.writable[0]!.len);
    assert.ok(
      e.written.every((b) => b === e.id + 1),
      `chain ${e.id} data`,
    );
  }
}

for (const packed of [false, true]) {
  const kind = packed ? 'packed' : 'split';
  describe(`in-flight log, ${kind} ring`, () => {
    it('a crash at every point of the pop / complete / publish sequence is recovered exactly', () => {
      const total = run(packed, Infinity).points;
      assert.ok(total > 20, `${total} crash points`);
      for (let at = 0; at < total; at++) {
        const r = run(packed, at);
        assert.ok(r.crashed);
        const { resubmitted } = recoverAndFinish(r, packed);
        // resubmitted chains come in the order they were first popped
        const order = r.popOrder.filter((id) => resubmitted.includes(id));
        assert.deepEqual(resubmitted, order, `crash point ${at}: resubmission order`);
        checkDelivery(r);
      }
    });

    it('a published batch the driver already took back (and reused) is not resubmitted', () => {
      // Crash right after the batch became visible; before that the driver takes the entries and adds a chain
      // that reuses the freed descriptors / ring slots.
      let consumed: number[] = [];
      const extra: MockChain[] = [];
      // The first publish comes after 3 pops (2 points each); split: its first point follows the used->idx
      // store; packed: 'publishingPacked' (2 points) comes first, then the first descriptor's flags are stored.
      const commit = packed ? 3 * 2 + 2 : 3 * 2;
      const r = run(packed, commit, (p, drv) => {
        if (p !== commit) return;
        consumed = drv.usedEntries().map((e) => e.id);
        assert.equal(consumed.length, 1, 'the first batch is visible to the driver');
        extra.push(drv.addChain({ readable: [new Uint8Array([9])], writable: [7] }));
        drv.kick();
      });
      assert.ok(r.crashed);
      recoverAndFinish(r, packed);
      checkDelivery(r, extra, consumed);
    });
  });
}
