import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { FakeBinding } from '../../../src/testing/fake-binding.js';
import { MockDriver } from '../../../src/testing/mock-driver.js';
import {
  VDUSE_IOTLB_GET_FD,
  VDUSE_VQ_INJECT_IRQ,
  VDUSE_VQ_SETUP_KICKFD,
  decodeVduseIotlbEntry,
  decodeVduseVqEventfd,
  encodeVduseIotlbEntry,
} from '../../../src/uapi/vduse.js';
import { nullLogger } from '../../../src/common/logger.js';
import {
  interruptSlot,
  kickSlot,
  queueOwner,
  queuesOf,
  type QueueThreadCommand,
  type QueueThreadEvent,
  type StoppedQueues,
} from '../../../src/transports/engine/threads/protocol.js';
import { QueueThreadServer } from '../../../src/transports/engine/threads/server.js';
import { IotlbMemory } from '../../../src/memory/iotlb-memory.js';
import { deviceFdSource } from '../../../src/transports/vduse/iotlb-source.js';
import { vduseQueueTransport } from '../../../src/transports/vduse/queue-transport.js';
import { EchoDevice, until } from '../vduse/helpers.js';

const FEATURES = (1n << 32n) | (1n << 33n) | (1n << 29n);

/** A server for queue 1 of a 2-queue device (thread 1 of 2), over a fake dev fd whose IOTLB maps the driver heap. */
function setup() {
  const binding = new FakeBinding();
  const drv = new MockDriver({ size: 16, eventIdx: true, memorySize: 1 << 20 });
  const heap = drv.memory.hostView(0x100000, 1 << 20);
  binding.mmap = () => heap.buffer as ArrayBuffer;
  let unmaps = 0;
  binding.munmap = () => void unmaps++;
  const kickfds = new Map<number, number>();
  const irqs: number[] = [];
  const fd = binding.openDevice({
    read: () => -1,
    write: (b) => b.length,
    ioctl(request, arg) {
      const bytes = arg as Uint8Array;
      switch (request) {
        case VDUSE_VQ_SETUP_KICKFD: {
          const e = decodeVduseVqEventfd(bytes);
          kickfds.set(e.index, e.fd);
          return 0;
        }
        case VDUSE_VQ_INJECT_IRQ:
          irqs.push(new DataView(bytes.buffer, bytes.byteOffset).getUint32(0, true));
          return 0;
        case VDUSE_IOTLB_GET_FD: {
          const e = decodeVduseIotlbEntry(bytes);
          assert.ok(e.start >= 0x100000 && e.start < 0x200000);
          bytes.set(encodeVduseIotlbEntry({ start: 0x100000, last: 0x1fffff, offset: 0, perm: 3 }));
          return binding.eventfd(0, 0);
        }
        default:
          return 0;
      }
    },
  });
  const device = new EchoDevice();
  const events: QueueThreadEvent[] = [];
  const counters = new Float64Array(4);
  let closed = false;
  const closeFd = (x: number): void => binding.close(x);
  const memory = new IotlbMemory(binding, deviceFdSource(binding, fd), closeFd);
  const server = new QueueThreadServer<{
    options: object;
    snapshot: { notified: number };
    calls: { resize: [number, { name: string; arg: number }] };
  }>({
    binding,
    transport: vduseQueueTransport(binding, fd, memory, null, closeFd),
    numQueues: 2,
    device: {
      device,
      snapshot: () => ({ notified: device.notified.length }),
      call: (name, arg) => Promise.resolve({ name, arg }),
      close: () => {
        closed = true;
        return Promise.resolve();
      },
    },
    counters,
    emit: (e) => events.push(e),
    logger: nullLogger,
    closeFd,
  });
  const start: Extract<QueueThreadCommand, { op: 'start' }> = {
    op: 'start',
    start: {
      features: FEATURES,
      packed: false,
      eventIdx: true,
      indirect: true,
      queues: [
        {
          index: 1,
          size: 16,
          descAddr: drv.config.descAddr,
          driverAddr: drv.config.driverAddr,
          deviceAddr: drv.config.deviceAddr,
          state: { nextAvail: 0 },
        },
      ],
      recover: false,
    },
    generation: 1,
  };
  return {
    binding,
    drv,
    device,
    server,
    memory,
    kickfds,
    irqs,
    events,
    counters,
    start,
    unmaps: () => unmaps,
    closed: () => closed,
  };
}

describe('queue thread protocol', () => {
  it('queue i goes to thread i % N', () => {
    assert.deepEqual(queuesOf(0, 2, 5), [0, 2, 4]);
    assert.deepEqual(queuesOf(1, 2, 5), [1, 3]);
    assert.deepEqual(queuesOf(2, 3, 4), [2]);
    assert.equal(queueOwner(3, 2), 1);
    assert.equal(kickSlot(1), 1);
    assert.equal(interruptSlot(1, 2), 3);
  });
});

describe('QueueThreadServer (over FakeBinding)', () => {
  it('start: only its queues, its own kick eventfd; a kick is served with its own mapping and interrupt', async () => {
    const t = setup();
    assert.equal(t.server.handle(t.start), 0, 'nothing resubmitted');
    assert.deepEqual([...t.kickfds.keys()], [1], 'a kick eventfd for queue 1 only');
    assert.equal(t.device.context?.queues[0], null, "queue 0 is another thread's");
    assert.ok(t.device.context?.queues[1]);
    assert.equal(t.device.context?.memory, t.server.memory, 'the thread maps guest memory itself');
    assert.equal(t.server.memory, t.memory);
    t.drv.addChain({ readable: [new Uint8Array([1, 2, 3])], writable: [3] });
    t.drv.kick();
    t.binding.eventfdWrite(t.kickfds.get(1)!, 1);
    await until('the used entry', () => t.drv.usedEntries().length === 1);
    assert.deepEqual(t.device.notified, [1]);
    assert.deepEqual(t.irqs, [1]);
    assert.equal(t.counters[kickSlot(1)], 1, 'kick counted in the shared counters');
    assert.equal(t.counters[interruptSlot(1, 2)], 1, 'interrupt counted');
    assert.deepEqual(t.server.handle({ op: 'snapshot' }), { notified: 1 });
    await t.server.close();
  });

  it('state, invalidate, stop and reset: the queue state comes back, the mappings go', async () => {
    const t = setup();
    t.server.handle(t.start);
    t.drv.addChain({ readable: [new Uint8Array(2)], writable: [2] });
    t.drv.kick();
    t.binding.eventfdWrite(t.kickfds.get(1)!, 1);
    await until('served', () => t.drv.usedEntries().length === 1);
    assert.deepEqual(t.server.handle({ op: 'state', index: 1 }), { nextAvail: 1, nextUsed: 1 });
    assert.equal(t.server.handle({ op: 'state', index: 0 }), null, 'not served here');
    assert.equal(t.memory.mappedRegions, 1);
    t.server.handle({ op: 'invalidate', start: 0, last: 0xfffff });
    assert.equal(t.memory.mappedRegions, 1, 'outside the range: kept');
    t.server.handle({ op: 'invalidate', start: 0x180000, last: 0x180000 });
    assert.equal(t.memory.mappedRegions, 0, 'overlapping: dropped');
    const stopped: StoppedQueues = t.server.handle({ op: 'stop', reset: true }) as StoppedQueues;
    assert.deepEqual(stopped, [[1, { nextAvail: 1, nextUsed: 1 }]]);
    assert.equal(t.device.resets, 1);
    assert.equal(t.binding.activeWatchers(), 0, 'kick watcher closed');
    assert.ok(!t.binding.isOpen(t.kickfds.get(1)!), 'kick eventfd closed');
    // a kick after the reset reaches nothing
    assert.equal(t.server.queues.length, 0);
    await t.server.close();
    assert.ok(t.closed(), 'the backend handle is closed');
  });

  it('a guest error asks the main thread for a reset once, with the activation number; halted queues ignore kicks', async () => {
    const t = setup();
    t.server.handle({ ...t.start, generation: 7 });
    t.device.host!.needsReset(new Error('bad ring'));
    t.device.host!.needsReset(new Error('again'));
    assert.deepEqual(t.events, [{ event: 'needs-reset', error: { message: 'bad ring' }, generation: 7 }]);
    t.drv.addChain({ readable: [new Uint8Array(2)], writable: [2] });
    t.drv.kick();
    t.binding.eventfdWrite(t.kickfds.get(1)!, 1);
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(t.device.notified, [], 'halted');
    // a new activation serves again
    t.server.handle({ op: 'stop', reset: true });
    t.server.handle({ ...t.start, generation: 8 });
    t.binding.eventfdWrite(t.kickfds.get(1)!, 1);
    await until('served after the reset', () => t.device.notified.length === 1);
    t.server.handle({ op: 'halt' });
    t.binding.eventfdWrite(t.kickfds.get(1)!, 1);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(t.device.notified.length, 1, 'halt stops taking kicks');
    await t.server.close();
  });

  it('device calls go to the device; an unknown op has no call', async () => {
    const t = setup();
    assert.deepEqual(await t.server.handle({ op: 'call', name: 'resize', arg: 4096 }), {
      name: 'resize',
      arg: 4096,
    });
    await t.server.handle({ op: 'drain', ms: 10 });
    await t.server.close();
  });
});
