import assert from 'node:assert/strict';
import { test } from 'node:test';

import { NullBackend } from '../../../src/backends/null-backend.js';
import { VirtioBlkDevice } from '../../../src/devices/blk/device.js';
import { CountingBackend } from '../../../src/backends/counting-backend.js';
import { FakeBinding } from '../../../src/testing/fake-binding.js';
import { nullLogger } from '../../../src/common/logger.js';
import {
  blkCounters,
  blkDeviceOptions,
  createQueueThreadDevice,
  mergeBlkCounters,
  type BlkThreadOptions,
} from '../../../src/mgmt/blk/thread-device.js';

const options: BlkThreadOptions = {
  name: 'd0',
  backend: 'null:1M',
  queues: 2,
  queueSize: 64,
  logicalBlockSize: 512,
  readOnly: false,
  packed: false,
};

test('the device options are the same for every thread; pollUs is passed on', () => {
  const backend = new NullBackend({ size: 1 << 20 });
  const o = blkDeviceOptions({ ...options, pollUs: 25 }, backend, nullLogger) as { pollUs?: number };
  assert.equal(o.pollUs, 25);
  assert.equal('pollUs' in blkDeviceOptions(options, backend, nullLogger), false);
  const a = new VirtioBlkDevice(blkDeviceOptions(options, backend, nullLogger));
  const b = new VirtioBlkDevice(blkDeviceOptions(options, backend, nullLogger));
  assert.equal(a.features, b.features);
  assert.deepEqual(a.config(), b.config());
});

test('counters of the main thread and the queue threads add up, per queue too', () => {
  const backend = new CountingBackend(new NullBackend({ size: 1 << 20 }));
  const device = new VirtioBlkDevice(blkDeviceOptions(options, backend, nullLogger));
  const zero = blkCounters(device, backend);
  const t0 = structuredClone(zero);
  t0.stats.completed = 5;
  t0.queues[0]!.completed = 5;
  t0.backend.reads = 5;
  t0.latency.buckets[2] = 5;
  t0.latency.count = 5;
  t0.latency.sumSeconds = 0.5;
  t0.inFlight = 1;
  const t1 = structuredClone(zero);
  t1.stats.completed = 7;
  t1.queues[1]!.completed = 7;
  t1.queues[1]!.bytesRead = 4096;
  t1.backend.writes = 7;
  t1.latency.buckets[2] = 1;
  t1.latency.count = 1;
  t1.latency.sumSeconds = 0.25;
  const m = mergeBlkCounters([zero, t0, t1]);
  assert.equal(m.stats.completed, 12);
  assert.deepEqual(
    m.queues.map((q) => q.completed),
    [5, 7],
  );
  assert.equal(m.queues[1]!.bytesRead, 4096);
  assert.equal(m.backend.reads, 5);
  assert.equal(m.backend.writes, 7);
  assert.equal(m.latency.buckets[2], 6);
  assert.equal(m.latency.count, 6);
  assert.equal(m.latency.sumSeconds, 0.75);
  assert.equal(m.inFlight, 1);
  assert.equal(zero.stats.completed, 0, 'inputs untouched');
});

test('a queue thread builds its own device and backend from the spec string; resize reaches it', async () => {
  const t = await createQueueThreadDevice(options, { binding: new FakeBinding(), logger: nullLogger });
  const device = t.device as VirtioBlkDevice;
  assert.equal(device.numQueues, 2);
  assert.equal(device.capacityBytes, 1 << 20);
  assert.equal(await t.call!('resize', 2 << 20), 2 << 20);
  assert.equal(device.capacityBytes, 2 << 20);
  // @ts-expect-error not a call of the blk device (the calls are typed); at run time it is refused
  await assert.rejects(t.call!('frob', null), /unknown call "frob"/);
  assert.equal((t.snapshot() as { queues: unknown[] }).queues.length, 2);
  await t.close();
});
