/**
 * The request latency histogram (VirtioBlkDevice.latency): backend submit to completion, on a clock the test
 * moves (VirtioBlkOptions.now). A backend call that answers before returning costs no clock reading and counts
 * as 0; one that returns a promise is timed from the submit to its settling.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { BackendResult } from '../../../src/backends/backend.js';
import { MemoryBackend } from '../../../src/backends/memory-backend.js';
import { NullBackend } from '../../../src/backends/null-backend.js';
import { BLK_LATENCY_BOUNDS_US } from '../../../src/devices/blk/device.js';
import { VIRTIO_BLK_T_IN } from '../../../src/uapi/virtio-blk.js';
import { BlkHarness, TestBackend } from './harness.js';

const MiB = 1024 * 1024;

/** A clock that counts its readings and stands still unless moved. */
function testClock(): { now: () => number; reads: number; ms: number } {
  const clock = {
    reads: 0,
    ms: 1000,
    now: (): number => {
      clock.reads++;
      return clock.ms;
    },
  };
  return clock;
}

/** The histogram bucket of `us` microseconds: (16·2^(i-1), 16·2^i]. */
function bucketOf(us: number): number {
  return BLK_LATENCY_BOUNDS_US.findIndex((bound) => us <= bound);
}

describe('virtio-blk latency histogram', () => {
  it('counts requests the backend answers synchronously as 0, without reading the clock', async () => {
    const clock = testClock();
    const harness = new BlkHarness({ backend: new NullBackend({ size: MiB }), now: clock.now });
    for (let i = 0; i < 3; i++) await harness.read(i * 8, 4096);
    const lat = harness.device.latency;
    assert.equal(lat.count, 3);
    assert.equal(lat.buckets[0], 3);
    assert.equal(lat.sumSeconds, 0);
    assert.equal(clock.reads, 0);
    await harness.device.reset();
  });

  it('a synchronous throw is counted once, as 0, and answered IOERR', async () => {
    const clock = testClock();
    const backend = new NullBackend({ size: MiB });
    backend.read = (): BackendResult => {
      throw new Error('boom');
    };
    const harness = new BlkHarness({ backend, now: clock.now });
    const done = await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: 0, inLength: 512 });
    assert.notEqual(done.status, 0);
    assert.equal(harness.device.latency.count, 1);
    assert.equal(harness.device.latency.buckets[0], 1);
    assert.equal(harness.device.stats.backendErrors, 1);
    await harness.device.reset();
  });

  it('times a request that returns a promise from its submit to its settling', async () => {
    const clock = testClock();
    const backend = new TestBackend(new MemoryBackend({ size: MiB }));
    backend.holdEach = true;
    const harness = new BlkHarness({ backend, now: clock.now });
    const slow = harness.submit(0, { type: VIRTIO_BLK_T_IN, sector: 0, inLength: 4096 });
    const fast = harness.submit(0, { type: VIRTIO_BLK_T_IN, sector: 8, inLength: 4096 });
    while (backend.held.length < 2) await BlkHarness.idle(1);
    clock.ms += 0.02; // 20 µs
    backend.held[1]!.release();
    assert.equal((await harness.wait(fast)).status, 0);
    clock.ms += 0.08; // 100 µs in all
    backend.held[0]!.release();
    assert.equal((await harness.wait(slow)).status, 0);
    const lat = harness.device.latency;
    assert.equal(lat.count, 2);
    assert.equal(lat.buckets[bucketOf(20)], 1);
    assert.equal(lat.buckets[bucketOf(100)], 1);
    assert.ok(Math.abs(lat.sumSeconds - 120e-6) < 1e-9, `sum ${lat.sumSeconds}`);
    await harness.device.reset();
  });
});
