// QueueSet on a queue thread (kickLoop: true) over FakeBinding's KickLoop, which models the native contract:
// kicks drained and marked, one callback per wake-up for every kicked queue, interrupts marked by signal() and
// injected by the loop (VDUSE_VQ_INJECT_IRQ ioctl or a call-eventfd write), never through transport.signal();
// counters exact; failed injections counted and logged, not an error.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { nullLogger } from '../../../src/common/logger.js';
import { KICK_STAT_FAILED_IRQS, KICK_STAT_WAKEUPS } from '../../../src/sys/binding.js';
import { FakeBinding } from '../../../src/testing/fake-binding.js';
import { MockDriver } from '../../../src/testing/mock-driver.js';
import { QueueSet } from '../../../src/transports/engine/queue-set.js';
import { VDUSE_VQ_INJECT_IRQ } from '../../../src/uapi/vduse.js';
import { EchoDevice, splitStart, until } from '../vduse/helpers.js';
import { kickLoopSet } from './helpers.js';

const turns = async (n: number): Promise<void> => {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
};

/**
 * A one-queue set on `binding`, started. kickLoop: a queue thread's set (interrupts injected through an ioctl on
 * a fake device fd, or through transport.signal() when it serves with FdWatchers); inline: FdWatchers and
 * transport.signal() only. serve() adds one request, kicks it and waits for its interrupt.
 */
function oneQueue(binding: FakeBinding, mode: 'kickLoop' | 'inline') {
  const drv = new MockDriver({ size: 16 });
  const device = new EchoDevice();
  const irqs: number[] = [];
  const kicks: number[] = [];
  const devFd =
    mode === 'kickLoop'
      ? binding.openDevice({
          ioctl: (_request, arg) =>
            irqs.push(new DataView((arg as Uint8Array).buffer).getUint32(0, true)) && 0,
        })
      : -1;
  const set = new QueueSet({
    binding,
    device,
    kickLoop: mode === 'kickLoop',
    transport: {
      memory: drv.memory,
      openKick: () => {
        const fd = binding.eventfd(0, 0);
        kicks.push(fd);
        return fd;
      },
      signal: (i) => void irqs.push(i),
      interruptTarget: () =>
        mode === 'kickLoop'
          ? { fd: devFd, request: VDUSE_VQ_INJECT_IRQ }
          : assert.fail('inline interrupts are not folded'),
      inflightLog: () => undefined,
    },
    numQueues: 1,
    logger: nullLogger,
    closeFd: (fd) => binding.close(fd),
    onNeedsReset: () => undefined,
  });
  device.bind({ configChanged: () => undefined, needsReset: (r) => set.fail(r) });
  set.start(splitStart(drv));
  const serve = async (): Promise<void> => {
    const before = irqs.length;
    drv.addChain({ readable: [new Uint8Array(1)], writable: [1] });
    drv.kick();
    binding.eventfdWrite(kicks.at(-1)!, 1);
    await until('the interrupt', () => irqs.length === before + 1);
  };
  return { set, serve, irqs };
}

describe('QueueSet with a KickLoop (queue threads)', () => {
  it('two queues kicked together: one wake-up, both served, one interrupt each, counters exact', async () => {
    const t = kickLoopSet();
    t.start();
    assert.equal(t.binding.activeKickLoops(), 1);
    assert.equal(t.binding.activeWatchers(), 0, 'no FdWatcher on this path');
    const reads = t.binding.calls.eventfdRead;
    t.kick(t.q0, 0);
    t.kick(t.q1, 1);
    await until(
      'both used entries',
      () => t.q0.usedEntries().length === 1 && t.q1.usedEntries().length === 1,
    );
    await until('both interrupts', () => t.injected.length === 2);
    assert.deepEqual(t.device.notified, [0, 1]);
    assert.equal(t.loop().stats[KICK_STAT_WAKEUPS], 1, 'one wake-up, one callback');
    assert.deepEqual([...t.injected].sort(), [0, 1]);
    assert.deepEqual([...t.set.counters], [1, 1, 1, 1], 'kicks and interrupts per queue');
    assert.equal(t.binding.calls.eventfdRead, reads, 'kicks drained by the loop, not by JS');
    // many completions in one callback fold into one interrupt
    for (let i = 0; i < 3; i++) t.q0.addChain({ readable: [new Uint8Array(1)], writable: [1] });
    t.q0.kick();
    t.binding.eventfdWrite(t.kicks.get(0)!, 1);
    let used = 0;
    await until('three more used entries', () => (used += t.q0.usedEntries().length) === 3);
    await until('the interrupt', () => t.injected.length === 3);
    assert.deepEqual([...t.set.counters], [2, 1, 2, 1]);
    t.set.stop(true);
    await t.set.close();
    assert.equal(t.binding.activeKickLoops(), 0, 'loop closed');
    for (const fd of t.kicks.values()) assert.ok(!t.binding.openFds().includes(fd), 'kick fds closed');
  });

  it('a completion published outside the callback (a backend finishing later) is injected by the loop', async () => {
    const t = kickLoopSet('eventfd');
    t.start();
    let later: (() => void) | null = null;
    t.device.queueNotify = (index) => {
      const q = t.device.context!.queues[index]!;
      const chain = q.pop()!;
      later = () => {
        q.addUsed(chain, 0);
        q.publish();
      };
    };
    t.kick(t.q1, 1);
    await until('the request reached the device', () => later !== null);
    await turns(3);
    assert.equal(t.binding.eventfdCounter(t.calls[1]!), 0, 'nothing to signal yet');
    await new Promise<void>((resolve) =>
      setTimeout(() => {
        later!();
        resolve();
      }, 2),
    );
    // The fake loop's prepare runs on a 1 ms timer: wait in time, not in a count of event-loop turns.
    const deadline = Date.now() + 2000;
    while (t.binding.eventfdCounter(t.calls[1]!) !== 1 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 1));
    }
    assert.equal(t.binding.eventfdCounter(t.calls[1]!), 1, 'the call eventfd was written');
    assert.equal(t.binding.eventfdCounter(t.calls[0]!), 0);
    assert.deepEqual([...t.set.counters], [0, 1, 0, 1]);
    await t.set.close();
  });

  it('an interrupt that cannot be injected: counted by the loop, logged (debug), not counted, no reset', async () => {
    const t = kickLoopSet();
    t.start();
    t.failIrq('EINVAL');
    t.kick(t.q0, 0);
    await until('the used entry', () => t.q0.usedEntries().length === 1);
    await until('the failure counted', () => t.loop().stats[KICK_STAT_FAILED_IRQS] === 1);
    assert.equal(t.set.counters[2], 0, 'no interrupt counted');
    t.failIrq(null);
    t.kick(t.q0, 0);
    await until('the next one injected', () => t.injected.length === 1);
    assert.equal(t.set.counters[2], 1);
    assert.ok(
      t.debug.some((m) => /1 interrupt\(s\) not injected \(last errno 22\)/.test(m)),
      t.debug.join('\n'),
    );
    assert.deepEqual(t.resets, []);
    await t.set.close();
  });

  it('halt: kicks no longer reach the device; a pending interrupt is injected at stop; restart serves', async () => {
    const t = kickLoopSet();
    t.start();
    t.set.halt();
    t.kick(t.q0, 0);
    await turns(5);
    assert.deepEqual(t.device.notified, []);
    // an interrupt marked just before the stop (no wake-up or prepare since) still reaches the driver
    t.loop().signals[1] = 1;
    t.set.stop(false);
    assert.deepEqual(t.injected, [1]);
    assert.equal(t.binding.activeKickLoops(), 0, 'stopped with the queues');
    t.start();
    t.kick(t.q1, 1);
    await until('served after the restart', () => t.q1.usedEntries().length === 1);
    await t.set.close();
    assert.deepEqual(t.resets, []);
  });

  it('the inline QueueSet (no kickLoop) keeps its FdWatchers and transport.signal()', async () => {
    const binding = new FakeBinding();
    const t = oneQueue(binding, 'inline');
    assert.equal(binding.calls.createKickLoop, 0);
    assert.equal(binding.calls.createFdWatcher, 1);
    await t.serve();
    assert.deepEqual(t.irqs, [0]);
    await t.set.close();
  });

  it('one set per thread holds the KickLoop: a second one on the same binding uses FdWatchers, a later one takes it over', async () => {
    const binding = new FakeBinding();
    const a = oneQueue(binding, 'kickLoop');
    assert.equal(binding.calls.createKickLoop, 1);
    assert.equal(binding.calls.createFdWatcher, 0);
    const b = oneQueue(binding, 'kickLoop');
    assert.equal(binding.calls.createKickLoop, 1, 'two KickLoops on one loop would block each other');
    assert.equal(binding.calls.createFdWatcher, 1);
    await a.serve();
    await b.serve();
    await a.set.close();
    const c = oneQueue(binding, 'kickLoop');
    assert.equal(binding.calls.createKickLoop, 2, 'the closed holder gave it up');
    await c.serve();
    await b.serve();
    await b.set.close();
    await c.set.close();
  });
});
