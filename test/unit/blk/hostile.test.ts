// virtio-blk against a hostile driver and a failing environment: ids the driver chooses never make a callback
// of the data path (kick, poll turn, publish, backend completion) throw; a bad one is the queue's error (the
// transport's needs-reset), whatever else fails inside a callback makes the device ask for a reset itself, and
// the backend never holds more requests per queue than the queue has entries.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { MemoryBackend } from '../../../src/backends/memory-backend.js';
import { VduseTsError } from '../../../src/common/errors.js';
import { BlkError } from '../../../src/devices/blk/errors.js';
import type { QueueLog } from '../../../src/transports/vduse/recovery/state-log.js';
import { VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from '../../../src/uapi/virtio-blk.js';
import { VirtqueueError, type InflightRecorder } from '../../../src/virtio/virtqueue.js';
import {
  BlkHarness,
  TestBackend,
  pattern,
  pushPackedRequest,
  queueLog,
  type HarnessOptions,
} from './harness.js';

const MiB = 1024 * 1024;

/** A recorder over a QueueLog that throws (a bug somewhere below the device) when `explode` names the call. */
function faultyRecorder(log: QueueLog): InflightRecorder & { explode: string | null } {
  const r = {
    explode: null as string | null,
    get capacity() {
      return log.capacity;
    },
    popped(id: number, pos: number) {
      if (r.explode === 'popped') throw new Error('recorder broke in popped');
      log.popped(id, pos);
    },
    poppedPacked(id: number, ring: Uint32Array, first: number, slots: number, pos: number) {
      if (r.explode === 'popped') throw new Error('recorder broke in popped');
      log.poppedPacked(id, ring, first, slots, pos);
    },
    completed(ids: ArrayLike<number>, count: number, pos: number) {
      if (r.explode === 'completed') throw new Error('recorder broke in completed');
      log.completed(ids, count, pos);
    },
    publishingPacked(ids: ArrayLike<number>, count: number, from: number, to: number) {
      log.publishingPacked(ids, count, from, to);
    },
    completedPacked(ids: ArrayLike<number>, count: number, pos: number) {
      if (r.explode === 'completed') throw new Error('recorder broke in completed');
      log.completedPacked(ids, count, pos);
    },
  };
  return r;
}

/** A clock that stands still unless moved: poll windows never pass by themselves. */
function stillClock(): () => number {
  return () => 1000;
}

async function withHarness(options: HarnessOptions, body: (h: BlkHarness) => Promise<void>): Promise<void> {
  const harness = new BlkHarness(options);
  try {
    await body(harness);
  } finally {
    await harness.device.reset();
  }
}

async function until(done: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await BlkHarness.idle(1);
  }
}

describe('virtio-blk, hostile driver: ids and ring sizes', () => {
  it('packed ring, polling, state log: a buffer id >= the queue size is a queue error, no throw', async () => {
    const log = queueLog(256);
    await withHarness(
      {
        backend: new MemoryBackend({ size: MiB }),
        packed: true,
        pollUs: 10000,
        now: stillClock(),
        inflight: () => log,
      },
      async (harness) => {
        const drv = harness.drivers[0]!;
        assert.equal((await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: 0, inLength: 512 })).status, 0);
        assert.equal(harness.device.isPolling(0), true, 'the queue is polled');
        pushPackedRequest(drv, 300);
        assert.equal(drv.kick(), false, 'no kick while polling: the poll turn finds it');
        await until(() => harness.resetReasons.length > 0, 'the queue error');
        const [reason] = harness.resetReasons;
        assert.ok(reason instanceof VirtqueueError, String(reason));
        assert.equal(reason.kind, 'buffer-id');
        assert.equal(reason.queue, 0);
        await until(() => !harness.device.isPolling(0), 'polling stops');
        assert.deepEqual(log.inflightIds(), [], 'nothing past the log');
        assert.equal(harness.resetReasons.length, 1);
      },
    );
  });

  for (const packed of [false, true]) {
    it(`${packed ? 'packed' : 'split'} ring larger than the device maximum (the state log): refused, no throw`, async () => {
      const backend = new TestBackend(new MemoryBackend({ size: MiB }));
      const log = queueLog(64);
      await withHarness(
        { backend, packed, queueSize: 64, ringSize: 256, inflight: () => log },
        async (harness) => {
          // Heads (split) / ids (packed) well past the log's 64 entries.
          for (let i = 0; i < 70; i++) harness.add(0, { type: VIRTIO_BLK_T_IN, sector: i, inLength: 512 });
          assert.doesNotThrow(() => harness.device.queueNotify(0));
          await BlkHarness.idle();
          assert.equal(harness.resetReasons.length, 1);
          const reason = harness.resetReasons[0];
          assert.ok(reason instanceof VirtqueueError);
          assert.equal(reason.kind, 'ring-size');
          assert.equal(backend.calls.length, 0, 'nothing reached the backend');
          assert.deepEqual(log.inflightIds(), []);
        },
      );
    });

    it(`${packed ? 'packed' : 'split'}: re-offered in-flight requests never pile up in the backend`, async () => {
      const backend = new TestBackend(new MemoryBackend({ size: MiB }));
      backend.holdEach = true;
      const releaseAll = (): void => {
        for (const held of backend.held.splice(0)) held.release();
      };
      await withHarness({ backend, packed, queueSize: 64 }, async (harness) => {
        const drv = harness.drivers[0]!;
        const chain = harness.submit(0, { type: VIRTIO_BLK_T_OUT, sector: 0, out: pattern(512) });
        await BlkHarness.idle();
        assert.equal(backend.running, 1);
        let most = 0;
        for (let i = 0; i < 2000; i++) {
          try {
            if (packed) {
              pushPackedRequest(drv, chain.id);
            } else {
              drv.pushAvail(chain.id);
            }
          } catch {
            break;
          }
          drv.kick();
          harness.device.queueNotify(0);
          await BlkHarness.idle(1);
          most = Math.max(most, backend.running, harness.device.inFlight);
        }
        releaseAll(); // whatever the outcome, so that reset() can settle
        assert.ok(most <= 64, `${most} requests in the backend of a 64-entry queue`);
        assert.equal(backend.calls.length, 1, 'one request reached the backend');
        const [reason] = harness.resetReasons;
        assert.ok(reason instanceof VirtqueueError);
        assert.equal(reason.kind, 'inflight-id');
        await BlkHarness.idle();
        assert.equal(harness.device.inFlight, 0);
      });
    });
  }
});

describe('virtio-blk: callbacks of the data path never throw out to the event loop', () => {
  for (const packed of [false, true]) {
    const ring = packed ? 'packed' : 'split';

    it(`a failure in a backend completion asks for a reset (${ring} ring)`, async () => {
      const backend = new TestBackend(new MemoryBackend({ size: MiB }));
      backend.delay = () => 1;
      const recorder = faultyRecorder(queueLog(256));
      await withHarness({ backend, packed, inflight: () => recorder }, async (harness) => {
        assert.equal((await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: 0, inLength: 512 })).status, 0);
        recorder.explode = 'completed';
        harness.submit(0, { type: VIRTIO_BLK_T_IN, sector: 1, inLength: 512 });
        await until(() => harness.resetReasons.length > 0, 'the device asks for a reset');
        const [reason] = harness.resetReasons;
        assert.ok(reason instanceof BlkError, String(reason));
        assert.ok(reason instanceof VduseTsError);
        assert.equal(reason.code, 'ERR_BLK_DATA_PATH');
        assert.match(reason.message, /^virtio-blk: .*recorder broke in completed/);
        assert.ok(reason.cause instanceof Error);
        // The device stopped serving until the driver resets it.
        recorder.explode = null;
        const after = harness.submit(0, { type: VIRTIO_BLK_T_IN, sector: 2, inLength: 512 });
        harness.device.queueNotify(0);
        await BlkHarness.idle(5);
        harness.collect();
        await assert.rejects(harness.wait(after, 50), /did not complete/);
        assert.equal(harness.resetReasons.length, 1, 'asked once');
      });
    });

    it(`a failure in a poll turn asks for a reset (${ring} ring)`, async () => {
      const recorder = faultyRecorder(queueLog(256));
      await withHarness(
        {
          backend: new MemoryBackend({ size: MiB }),
          packed,
          pollUs: 10000,
          now: stillClock(),
          inflight: () => recorder,
        },
        async (harness) => {
          assert.equal((await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: 0, inLength: 512 })).status, 0);
          assert.equal(harness.device.isPolling(0), true);
          recorder.explode = 'popped';
          harness.add(0, { type: VIRTIO_BLK_T_IN, sector: 1, inLength: 512 });
          harness.drivers[0]!.kick();
          await until(() => harness.resetReasons.length > 0, 'the device asks for a reset');
          const [reason] = harness.resetReasons;
          assert.ok(reason instanceof BlkError);
          assert.equal(reason.code, 'ERR_BLK_DATA_PATH');
          assert.match(reason.message, /poll/);
          assert.equal(harness.device.isPolling(0), false, 'polling stopped');
        },
      );
    });

    it(`a logger that throws does not lose the request (${ring} ring)`, async () => {
      const backend = new TestBackend(new MemoryBackend({ size: MiB }));
      backend.delay = () => 1;
      backend.failWith = new Error('disk on fire');
      const logger = {
        warn(): void {
          throw new Error('log full');
        },
      };
      await withHarness({ backend, packed, logger }, async (harness) => {
        const done = await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: 0, inLength: 512 });
        assert.equal(done.status, 1, 'IOERR reaches the driver');
        assert.deepEqual(harness.resetReasons, []);
      });
    });
  }
});
