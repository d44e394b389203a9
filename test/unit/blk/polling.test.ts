import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { MemoryBackend } from '../../../src/backends/memory-backend.js';
import { UsageError } from '../../../src/common/errors.js';
import { NullBackend } from '../../../src/backends/null-backend.js';
import { VirtioBlkDevice } from '../../../src/devices/blk/device.js';
import { VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from '../../../src/uapi/virtio-blk.js';
import { BlkHarness, TestBackend, pattern, type HarnessOptions } from './harness.js';

const MiB = 1024 * 1024;
/** The longest window accepted (10 ms). */
const POLL_US = 10000;

/**
 * The devices here run on a clock the test moves (VirtioBlkOptions.now): poll windows pass when the test says
 * so, not when a loaded machine happens to be slow, so every window below is exact. It starts past 0 (the
 * device reads 0 as "never").
 */
class TestClock {
  ms = 1000;
  readonly now = (): number => this.ms;
  advanceUs(us: number): void {
    this.ms += us / 1000;
  }
}

/**
 * A harness on a TestClock, for `body`; afterwards the device is reset, so that no poll is left spinning (with
 * the clock standing still, a window would never pass).
 */
async function withHarness(
  options: HarnessOptions,
  body: (harness: BlkHarness, clock: TestClock) => Promise<void>,
): Promise<void> {
  const clock = new TestClock();
  const harness = new BlkHarness({ ...options, now: clock.now });
  try {
    await body(harness, clock);
  } finally {
    await harness.device.reset();
  }
}

/** Let the device take poll turns until `done()` (bounded by a deadline that only guards against a hang). */
async function until(done: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await BlkHarness.idle(1);
  }
}

describe('virtio-blk polling option', () => {
  it('is off by default and accepts integers from 0 to 10000', () => {
    const backend = new NullBackend({ size: MiB });
    assert.equal(new VirtioBlkDevice({ backend }).options.pollUs, 0);
    assert.equal(new VirtioBlkDevice({ backend, pollUs: 10000 }).options.pollUs, 10000);
    for (const bad of [-1, 1.5, 10001, Number.NaN]) {
      assert.throws(
        () => new VirtioBlkDevice({ backend, pollUs: bad }),
        (e: unknown) =>
          e instanceof UsageError &&
          e.code === 'ERR_BLK_OPTION' &&
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
        await withHarness({ backend, packed, pollUs: POLL_US }, async (harness, clock) => {
          const driver = harness.drivers[0]!;
          const first = await harness.run(0, { type: VIRTIO_BLK_T_OUT, sector: 8, out: pattern(4096, 5) });
          assert.equal(first.status, 0);
          assert.equal(harness.device.isPolling(0), true, 'the queue is polled after it ran empty');
          // Just inside the window (counted from the completion of the first request).
          clock.advanceUs(POLL_US - 1);
          await BlkHarness.idle();
          assert.equal(harness.device.isPolling(0), true, 'still polled at the end of its window');
          const kicksBefore = driver.kicks;
          const chain = harness.add(0, { type: VIRTIO_BLK_T_IN, sector: 8, inLength: 4096 });
          assert.equal(driver.kick(), false, 'notifications stay off while polling');
          // No queueNotify: the poll has to find it.
          const done = await harness.wait(chain);
          assert.equal(done.status, 0);
          assert.deepEqual(done.writable.subarray(0, 4096), pattern(4096, 5));
          assert.equal(driver.kicks, kicksBefore);
          assert.equal(harness.device.isPolling(0), true, 'the window starts again');
        });
      });
    }

    it('turns notifications back on when the window has passed, and a kick then works as usual', async () => {
      await withHarness(
        { backend: new MemoryBackend({ size: MiB }), packed, pollUs: 1000 },
        async (harness, clock) => {
          const driver = harness.drivers[0]!;
          await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: 0, inLength: 512 });
          assert.equal(harness.device.isPolling(0), true);
          clock.advanceUs(999);
          await BlkHarness.idle();
          assert.equal(harness.device.isPolling(0), true, 'polling 999 µs into a 1000 µs window');
          clock.advanceUs(1);
          await until(() => !harness.device.isPolling(0), 'polling stops');
          assert.equal(harness.device.isPolling(0), false, 'polling stops when its window has passed');
          const chain = harness.add(0, { type: VIRTIO_BLK_T_IN, sector: 1, inLength: 512 });
          assert.equal(driver.kick(), true, 'the driver must kick again');
          await BlkHarness.idle();
          harness.collect();
          assert.equal(harness.device.inFlight, 0);
          assert.equal(driver.usedEntries().length, 0, 'nothing is served without the kick');
          harness.device.queueNotify(0);
          assert.equal((await harness.wait(chain)).status, 0);
        },
      );
    });

    it('reset stops polling at once', async () => {
      await withHarness(
        { backend: new MemoryBackend({ size: MiB }), packed, pollUs: POLL_US },
        async (harness) => {
          await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: 0, inLength: 512 });
          assert.equal(harness.device.isPolling(0), true);
          await harness.device.reset();
          assert.equal(harness.device.isPolling(0), false);
          harness.add(0, { type: VIRTIO_BLK_T_IN, sector: 1, inLength: 512 });
          harness.drivers[0]!.publish();
          await BlkHarness.idle(5);
          assert.equal(harness.drivers[0]!.usedEntries().length, 0, 'nothing is served after the reset');
        },
      );
    });

    it('polls every queue of the device, and stops polling them all when a ring breaks', async () => {
      const options = { backend: new MemoryBackend({ size: MiB }), packed, numQueues: 2, pollUs: POLL_US };
      await withHarness(options, async (harness) => {
        await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: 0, inLength: 512 });
        await harness.run(1, { type: VIRTIO_BLK_T_IN, sector: 0, inLength: 512 });
        assert.equal(harness.device.isPolling(0) && harness.device.isPolling(1), true);
        const chain = harness.add(1, { type: VIRTIO_BLK_T_IN, sector: 2, inLength: 512 });
        harness.drivers[1]!.publish();
        assert.equal((await harness.wait(chain)).status, 0);
        // Queue 0 gets a malformed ring: the poll finds the error and stops polling it.
        const driver0 = harness.drivers[0]!;
        if (packed) {
          driver0.pushRaw([{ addr: 0, len: 16, id: 0, flags: 0x10 /* INDIRECT */ | 0x1 /* NEXT */ }]);
        } else {
          driver0.pushAvail(60000);
        }
        driver0.publish();
        await until(() => harness.queues[0]!.error !== null, 'the poll finds the broken ring');
        await BlkHarness.idle();
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
  });
}

describe('virtio-blk adaptive poll window', () => {
  it('halves on kicks that come after pollUs, switches off, and comes back on a quick kick', async () => {
    await withHarness({ backend: new MemoryBackend({ size: MiB }), pollUs: 1000 }, async (harness, clock) => {
      const device = harness.device;
      assert.equal(device.pollWindowUs(0), 1000);
      /** Let the window pass with nothing new, `afterUs` after the queue's last work. */
      const idleFor = async (afterUs: number): Promise<void> => {
        clock.advanceUs(afterUs);
        await until(() => !device.isPolling(0), 'the window passes');
      };
      const windows: number[] = [];
      for (let i = 0; i < 6; i++) {
        // The kick comes more than pollUs after the queue's last work.
        await idleFor(1001);
        await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: i, inLength: 512 });
        windows.push(device.pollWindowUs(0));
      }
      assert.deepEqual(windows, [500, 250, 125, 62.5, 0, 0]);
      assert.equal(device.isPolling(0), false, 'window 0: no polling');
      // A kick within pollUs of the last work: polling comes back at its smallest window.
      clock.advanceUs(1000);
      harness.submit(0, { type: VIRTIO_BLK_T_IN, sector: 0, inLength: 512 });
      assert.equal(device.pollWindowUs(0), 1000 / 16);
      assert.ok(device.isPolling(0));
      // Back to back: the next request is found by the poll, no kick, and the window stays.
      const next = harness.add(0, { type: VIRTIO_BLK_T_IN, sector: 1, inLength: 512 });
      assert.equal(harness.drivers[0]!.kick(), false);
      assert.equal((await harness.wait(next)).status, 0);
      assert.equal(device.pollWindowUs(0), 1000 / 16);
      // The window passes, then a kick within pollUs: a longer poll would have caught it, so it doubles.
      await idleFor(62.5);
      clock.advanceUs(500);
      await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: 2, inLength: 512 });
      assert.equal(device.pollWindowUs(0), 125);
      await idleFor(125);
      clock.advanceUs(1000 - 125);
      await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: 3, inLength: 512 });
      assert.equal(device.pollWindowUs(0), 250, 'exactly pollUs after the last work still counts as soon');
    });
  });
});
