// QueueSet, the one queue-serving engine, over FakeBinding and a MockDriver: a throw in a data-path callback is
// needs-reset for this device only, and a guest that keeps dropping mappings under hung requests is bounded.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { nullLogger } from '../../../src/common/logger.js';
import { FakeBinding } from '../../../src/testing/fake-binding.js';
import { MockDriver } from '../../../src/testing/mock-driver.js';
import { QueueSet, RETIRED_MAX } from '../../../src/transports/engine/queue-set.js';
import type { TransportMemory } from '../../../src/transports/engine/data-path.js';
import { EchoDevice, splitStart, until } from '../vduse/helpers.js';

function setup(memoryOf: (drv: MockDriver) => TransportMemory = (drv) => drv.memory) {
  const binding = new FakeBinding();
  const drv = new MockDriver({ size: 16 });
  const device = new EchoDevice();
  const kicks = new Map<number, number>();
  const irqs: number[] = [];
  const resets: Error[] = [];
  const set = new QueueSet({
    binding,
    device,
    transport: {
      memory: memoryOf(drv),
      openKick: (i) => {
        const fd = binding.eventfd(0, 0);
        kicks.set(i, fd);
        return fd;
      },
      signal: (i) => void irqs.push(i),
      inflightLog: () => undefined,
    },
    numQueues: 2,
    logger: nullLogger,
    closeFd: (fd) => binding.close(fd),
    onNeedsReset: (r) => resets.push(r),
  });
  device.bind({ configChanged: () => undefined, needsReset: (r) => set.fail(r) });
  const start = (): number => set.start(splitStart(drv));
  return { binding, drv, device, set, kicks, irqs, resets, start };
}

describe('QueueSet', () => {
  it('serves a kick: the device pops, completes, the interrupt is counted; stop gives the state back', async () => {
    const t = setup();
    assert.equal(t.start(), 0);
    assert.equal(t.set.running, true);
    t.drv.addChain({ readable: [new Uint8Array([1, 2])], writable: [2] });
    t.drv.kick();
    t.binding.eventfdWrite(t.kicks.get(0)!, 1);
    await until('the used entry', () => t.drv.usedEntries().length === 1);
    assert.deepEqual(t.irqs, [0]);
    assert.equal(t.set.counters[0], 1, 'kick counted');
    assert.equal(t.set.counters[2], 1, 'interrupt counted');
    assert.deepEqual(t.set.state(0), { nextAvail: 1, nextUsed: 1 });
    assert.deepEqual(t.set.stop(true), [[0, { nextAvail: 1, nextUsed: 1 }]]);
    assert.equal(t.set.running, false);
    assert.equal(t.device.resets, 1);
    await t.set.close();
    assert.deepEqual(t.binding.openFds(), [], 'kick fds closed');
  });

  it('a device that throws on a kick: needs reset once, for this device; later kicks do not reach it', async () => {
    const t = setup();
    t.start();
    let calls = 0;
    t.device.queueNotify = () => {
      calls++;
      throw new TypeError('a bug in the device');
    };
    t.binding.eventfdWrite(t.kicks.get(0)!, 1);
    await until('the report', () => t.resets.length === 1);
    assert.match(t.resets[0]!.message, /a bug in the device/);
    t.binding.eventfdWrite(t.kicks.get(0)!, 1);
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    assert.equal(calls, 1, 'halted');
    assert.equal(t.resets.length, 1, 'reported once');
    // the driver resets: served again
    t.set.stop(true);
    t.device.queueNotify = EchoDevice.prototype.queueNotify.bind(t.device);
    t.start();
    t.drv.addChain({ readable: [new Uint8Array(1)], writable: [1] });
    t.drv.kick();
    t.binding.eventfdWrite(t.kicks.get(0)!, 1);
    await until('served after the reset', () => t.drv.usedEntries().length === 1);
    await t.set.close();
  });

  it(`more than ${RETIRED_MAX} dropped regions waiting for requests: the device is halted (needs reset)`, async () => {
    let retired = 0;
    const t = setup((drv) => {
      const m = Object.create(drv.memory) as TransportMemory;
      m.invalidate = () => void retired++;
      Object.defineProperty(m, 'retiredRegions', { get: () => retired });
      return m;
    });
    t.start();
    for (let i = 0; i < RETIRED_MAX; i++) t.set.invalidate(0, 0xfff);
    assert.equal(t.resets.length, 0);
    t.set.invalidate(0, 0xfff);
    assert.equal(t.resets.length, 1);
    assert.match(t.resets[0]!.message, /dropped guest-memory regions wait for requests/);
    t.drv.addChain({ readable: [new Uint8Array(1)], writable: [1] });
    t.drv.kick();
    assert.equal(t.set.queues[0]!.pop(), null, 'no new request while halted');
    await t.set.close();
  });

  it('a drain waits for chains in progress, not for those the device declares idle (receive buffers)', async () => {
    const t = setup();
    const held: unknown[] = [];
    let declareIdle = false;
    t.device.queueNotify = (i) => {
      const q = t.device.context!.queues[i]!;
      for (let c = q.pop(); c; c = q.pop()) held.push(c);
    };
    t.start();
    t.drv.addChain({ readable: [], writable: [64] });
    t.drv.addChain({ readable: [], writable: [64] });
    t.drv.kick();
    t.binding.eventfdWrite(t.kicks.get(0)!, 1);
    await until('both chains held', () => held.length === 2);
    assert.equal(t.set.inFlight, 2);
    assert.equal(t.set.busy, 2, 'no idleChains: every held chain is work');
    let t0 = Date.now();
    await t.set.drain(150);
    assert.ok(Date.now() - t0 >= 140, 'the drain waited for the held chains');

    (t.device as { idleChains?: (i: number) => number }).idleChains = (i: number) =>
      declareIdle && i === 0 ? held.length : 0;
    declareIdle = true;
    assert.equal(t.set.busy, 0);
    t0 = Date.now();
    await t.set.drain(5000);
    assert.ok(Date.now() - t0 < 1000, 'idle receive buffers do not hold a drain up');
    await t.set.close();
  });
});
