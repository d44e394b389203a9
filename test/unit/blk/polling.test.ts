import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { MemoryBackend } from '../../../src/backends/memory-backend.js';
import { NullBackend } from '../../../src/backends/null-backend.js';
import { VirtioBlkDevice } from '../../../src/devices/blk/device.js';
import { VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from '../../../src/uapi/virtio-blk.js';
import { BlkHarness, TestBackend, pattern } from './harness.js';

const MiB = 1024 * 1024;
/** The longest window accepted: 10 ms, long enough to act inside it on a loaded machine. */
const POLL_US = 10000;

describe('virtio-blk polling option', () => {
  it('is off by default and accepts integers from 0 to 10000', () => {
    const backend = new NullBackend({ size: MiB });
    assert.equal(new VirtioBlkDevice({ backend }).options.pollUs, 0);
    assert.equal(new VirtioBlkDevice({ backend, pollUs: 10000 }).options.pollUs, 10000);
    for (const bad of [-1, 1.5, 10001, Number.NaN]) {
      assert.throws(
        () => new VirtioBlkDevice({ backend, pollUs: bad }),
        (e: unknown) =>
          e instanceof RangeError &&
          /^virtio-blk: pollUs must be an integer from 0 to 10000/.test(e.message) &&
          !e.message.includes('\n'),
      );
    }
  });

  it('without polling, every request after an empty ring needs a kick', async () => {
    const harness = new BlkHarness({ backend: new MemoryBackend({ size: MiB }) });
    await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: 0, inLength: 512 });
    harness.add(0, { type: VIRTIO_BLK_T_IN, sector: 1, inLength: 512 });
    assert.equal(harness.drivers[0]!.kick(), true);
    assert.equal(harness.device.isPolling(0), false);
  });
});

for (const packed of [false, true]) {
  const ring = packed ? 'packed' : 'split';

  describe(`virtio-blk polling (${ring} ring)`, () => {
    for (const kind of ['synchronous', 'asynchronous'] as const) {
      it(`serves a request made available in the poll window without a kick (${kind} backend)`, async () => {
        const memory = new MemoryBackend({ size: MiB });
        const backend = kind === 'synchronous' ? memory : new TestBackend(memory);
        if (backend instanceof TestBackend) backend.delay = () => 1;
        const harness = new BlkHarness({ backend, packed, pollUs: POLL_US });
        const driver = harness.drivers[0]!;
        const first = await harness.run(0, { type: VIRTIO_BLK_T_OUT, sector: 8, out: pattern(4096, 5) });
        assert.equal(first.status, 0);
        assert.equal(harness.device.isPolling(0), true, 'the queue is polled after it ran empty');
        const kicksBefore = driver.kicks;
        const chain = harness.add(0, { type: VIRTIO_BLK_T_IN, sector: 8, inLength: 4096 });
        assert.equal(driver.kick(), false, 'notifications stay off while polling');
        // No queueNotify: the poll has to find it.
        const done = await harness.wait(chain, 2000);
        assert.equal(done.status, 0);
        assert.deepEqual(done.writable.subarray(0, 4096), pattern(4096, 5));
        assert.equal(driver.kicks, kicksBefore);
      });
    }

    it('turns notifications back on when the window has passed, and a kick then works as usual', async () => {
      const harness = new BlkHarness({ backend: new MemoryBackend({ size: MiB }), packed, pollUs: 1000 });
      const driver = harness.drivers[0]!;
      await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: 0, inLength: 512 });
      assert.equal(harness.device.isPolling(0), true);
      const deadline = Date.now() + 2000;
      while (harness.device.isPolling(0) && Date.now() < deadline) await sleep(5);
      assert.equal(harness.device.isPolling(0), false, 'polling stops after its window');
      const chain = harness.add(0, { type: VIRTIO_BLK_T_IN, sector: 1, inLength: 512 });
      assert.equal(driver.kick(), true, 'the driver must kick again');
      await BlkHarness.idle();
      harness.collect();
      assert.equal(harness.device.inFlight, 0);
      harness.device.queueNotify(0);
      assert.equal((await harness.wait(chain)).status, 0);
    });

    it('reset stops polling at once', async () => {
      const harness = new BlkHarness({ backend: new MemoryBackend({ size: MiB }), packed, pollUs: POLL_US });
      await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: 0, inLength: 512 });
      assert.equal(harness.device.isPolling(0), true);
      await harness.device.reset();
      assert.equal(harness.device.isPolling(0), false);
      harness.add(0, { type: VIRTIO_BLK_T_IN, sector: 1, inLength: 512 });
      harness.drivers[0]!.publish();
      await BlkHarness.idle(5);
      assert.equal(harness.drivers[0]!.usedEntries().length, 0, 'nothing is served after the reset');
    });

    it('polls every queue of the device, and stops polling them all when a ring breaks', async () => {
      const harness = new BlkHarness({
        backend: new MemoryBackend({ size: MiB }),
        packed,
        numQueues: 2,
        pollUs: POLL_US,
      });
      await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: 0, inLength: 512 });
      await harness.run(1, { type: VIRTIO_BLK_T_IN, sector: 0, inLength: 512 });
      assert.equal(harness.device.isPolling(0) && harness.device.isPolling(1), true);
      const chain = harness.add(1, { type: VIRTIO_BLK_T_IN, sector: 2, inLength: 512 });
      harness.drivers[1]!.publish();
      assert.equal((await harness.wait(chain, 2000)).status, 0);
      // Queue 0 gets a malformed ring: the poll finds the error and stops polling it.
      const driver0 = harness.drivers[0]!;
      if (packed) {
        driver0.pushRaw([{ addr: 0, len: 16, id: 0, flags: 0x10 /* INDIRECT */ | 0x1 /* NEXT */ }]);
      } else {
        driver0.pushAvail(60000);
      }
      driver0.publish();
      const deadline = Date.now() + 2000;
      while (harness.queues[0]!.error === null && Date.now() < deadline) await sleep(1);
      await BlkHarness.idle();
      assert.notEqual(harness.queues[0]!.error, null);
      assert.equal(harness.device.isPolling(0), false);
      assert.equal(
        harness.device.isPolling(1),
        false,
        'the data path stops until the reset: no queue is polled',
      );
      const late = harness.add(1, { type: VIRTIO_BLK_T_IN, sector: 3, inLength: 512 });
      harness.drivers[1]!.publish();
      await BlkHarness.idle(5);
      harness.collect();
      await assert.rejects(harness.wait(late, 50), /did not complete/);
    });
  });
}

describe('virtio-blk adaptive poll window', () => {
  it('halves on kicks that come after pollUs, switches off, and comes back on a quick kick', async () => {
    const harness = new BlkHarness({ backend: new MemoryBackend({ size: MiB }), pollUs: 1000 });
    const device = harness.device;
    assert.equal(device.pollWindowUs(0), 1000);
    const windows: number[] = [];
    for (let i = 0; i < 6; i++) {
      // Wait out the window and then some (more than pollUs after the last work), then kick.
      while (device.isPolling(0)) await sleep(2);
      await sleep(3);
      await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: i, inLength: 512 });
      windows.push(device.pollWindowUs(0));
    }
    assert.deepEqual(windows, [500, 250, 125, 62.5, 0, 0]);
    assert.equal(device.isPolling(0), false, 'window 0: no polling');
    // Two requests back to back: the second kick comes right after the first one's work.
    harness.submit(0, { type: VIRTIO_BLK_T_IN, sector: 0, inLength: 512 });
    harness.submit(0, { type: VIRTIO_BLK_T_IN, sector: 1, inLength: 512 });
    assert.equal(device.pollWindowUs(0), 1000 / 16);
    harness.submit(0, { type: VIRTIO_BLK_T_IN, sector: 2, inLength: 512 });
    assert.ok(device.isPolling(0));
    await BlkHarness.idle();
  });
});
