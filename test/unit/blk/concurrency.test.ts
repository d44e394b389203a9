import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { MemoryBackend } from '../../../src/backends/memory-backend.js';
import type { VirtioBlkDevice } from '../../../src/devices/blk/device.js';
import { MockDriver, type MockChain } from '../../../src/testing/mock-driver.js';
import { VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from '../../../src/uapi/virtio-blk.js';
import { BlkHarness, TestBackend, pattern } from './harness.js';

const MiB = 1024 * 1024;

for (const packed of [false, true]) {
  const ring = packed ? 'packed' : 'split';

  describe(`virtio-blk concurrency (${ring} ring)`, () => {
    it('keeps many requests in flight and completes them out of order', async () => {
      const backend = new TestBackend(new MemoryBackend({ size: 4 * MiB }));
      const harness = new BlkHarness({ backend, packed });
      for (let i = 0; i < 8; i++) await harness.write(i * 8, pattern(4096, i + 1));
      backend.holdEach = true;
      const chains: MockChain[] = [];
      for (let i = 0; i < 8; i++)
        chains.push(harness.add(0, { type: VIRTIO_BLK_T_IN, sector: i * 8, inLength: 4096 }));
      harness.kick(0);
      await BlkHarness.idle();
      assert.equal(backend.running, 8, 'all eight reads are in the backend at once');
      // The backend finishes them last to first.
      for (const held of [...backend.held].reverse()) {
        held.release();
        await BlkHarness.idle();
      }
      const start = harness.completionOrder.length;
      for (let i = 0; i < 8; i++) {
        const done = await harness.wait(chains[i]!);
        assert.equal(done.status, 0);
        assert.deepEqual(done.writable.subarray(0, 4096), pattern(4096, i + 1));
      }
      const order = harness.completionOrder.slice(start).map((chain) => chains.indexOf(chain));
      assert.deepEqual(
        order,
        [7, 6, 5, 4, 3, 2, 1, 0],
        'completions come back in the order the backend finished',
      );
    });

    it('publishes completions once per batch', async () => {
      const backend = new TestBackend(new MemoryBackend({ size: MiB }));
      const harness = new BlkHarness({ backend, packed, eventIdx: false });
      const driver = harness.drivers[0]!;
      backend.gate();
      const chains = [];
      for (let i = 0; i < 16; i++)
        chains.push(harness.add(0, { type: VIRTIO_BLK_T_IN, sector: i, inLength: 512 }));
      harness.kick(0);
      await BlkHarness.idle();
      assert.equal(driver.signals, 0);
      backend.release();
      for (const chain of chains) assert.equal((await harness.wait(chain)).status, 0);
      assert.equal(driver.signals, 1, 'sixteen completions, one used-buffer notification');
    });

    it('serves several queues at once', async () => {
      const backend = new TestBackend(new MemoryBackend({ size: 8 * MiB }));
      const harness = new BlkHarness({ backend, packed, numQueues: 4 });
      backend.gate();
      const writes = [];
      for (let q = 0; q < 4; q++) {
        for (let i = 0; i < 4; i++) {
          const sector = (q * 4 + i) * 16;
          writes.push(harness.add(q, { type: VIRTIO_BLK_T_OUT, sector, out: pattern(8192, q * 10 + i) }));
        }
      }
      for (let q = 0; q < 4; q++) harness.kick(q);
      await BlkHarness.idle();
      assert.equal(backend.running, 16);
      backend.release();
      for (const chain of writes) assert.equal((await harness.wait(chain)).status, 0);
      for (let q = 0; q < 4; q++) {
        for (let i = 0; i < 4; i++) {
          const data = await harness.read((q * 4 + i) * 16, 8192, (q + 1) % 4);
          assert.deepEqual(data, pattern(8192, q * 10 + i));
        }
      }
      for (const driver of harness.drivers) assert.ok(driver.signals > 0);
    });

    it('reset() drops the results of requests still in the backend and resolves when they are done', async () => {
      const backend = new TestBackend(new MemoryBackend({ size: MiB }));
      const harness = new BlkHarness({ backend, packed });
      await harness.write(0, pattern(512, 1));
      backend.gate();
      for (let i = 0; i < 4; i++) harness.add(0, { type: VIRTIO_BLK_T_IN, sector: 0, inLength: 512 });
      harness.kick(0);
      await BlkHarness.idle();
      assert.equal(harness.device.inFlight, 4);
      let resolved = false;
      const reset = harness.device.reset().then(() => (resolved = true));
      await BlkHarness.idle();
      assert.equal(resolved, false, 'requests are still in the backend');
      backend.release();
      await reset;
      assert.equal(harness.device.inFlight, 0);
      await BlkHarness.idle();
      assert.equal(harness.drivers[0]!.usedEntries().length, 0, 'nothing reaches the used ring after reset');
      // Kicks after reset are ignored.
      harness.add(0, { type: VIRTIO_BLK_T_IN, sector: 0, inLength: 512 });
      harness.device.queueNotify(0);
      await BlkHarness.idle();
      assert.equal(harness.drivers[0]!.usedEntries().length, 0);
      assert.equal(backend.calls.filter((c) => c.op === 'read').length, 4);
    });

    it('a reset device can be activated again and serves new queues', async () => {
      const memory = new MemoryBackend({ size: MiB });
      const harness = new BlkHarness({ backend: memory, packed });
      await harness.write(4, pattern(1024, 2));
      await harness.device.reset();
      const [driver] = MockDriver.createQueues(1, { size: 64, packed, eventIdx: true, indirect: true });
      const queue = driver!.createDeviceQueue();
      const device: VirtioBlkDevice = harness.device;
      assert.equal(device.negotiate(device.features), true);
      // A request made available before DRIVER_OK is served at activation, without a kick.
      harness.drivers[0] = driver!;
      const early = harness.add(0, { type: VIRTIO_BLK_T_IN, sector: 4, inLength: 1024 });
      driver!.publish();
      device.activate({ features: device.features, memory: driver!.memory, queues: [queue] });
      const done = await harness.wait(early);
      assert.equal(done.status, 0);
      assert.deepEqual(done.writable.subarray(0, 1024), pattern(1024, 2));
    });

    it('handles a full queue of requests in one kick', async () => {
      const backend = new MemoryBackend({ size: 4 * MiB });
      const harness = new BlkHarness({ backend, packed, queueSize: 64 });
      const chains = [];
      for (let i = 0; i < 64; i++) {
        chains.push(
          harness.add(0, {
            type: VIRTIO_BLK_T_OUT,
            sector: i * 8,
            out: pattern(4096, i),
            layout: 'indirect',
          }),
        );
      }
      harness.kick(0);
      for (const chain of chains) assert.equal((await harness.wait(chain)).status, 0);
      for (let i = 0; i < 64; i += 9) assert.deepEqual(await harness.read(i * 8, 4096), pattern(4096, i));
    });
  });
}
