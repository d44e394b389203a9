// Adaptive ring polling: PollControl's decisions (pure), and QueueSet's side of it over FakeBinding's KickLoop:
// ring watches and idle marks kept current (a pop makes a mark stale, an invalidation clears them, a stop drops
// the watches), a kick for work already served absorbed, work found by a spin served and not counted as a kick,
// the controller's window applied, and nothing of it for a device that does not want it.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { KICK_STAT_ABSORBED, WATCH_SPLIT } from '../../../src/sys/binding.js';
import type { MockDriver } from '../../../src/testing/mock-driver.js';
import { PollControl } from '../../../src/transports/engine/poll-control.js';
import { EchoDevice, until } from '../vduse/helpers.js';
import { kickLoopSet } from './helpers.js';

describe('PollControl', () => {
  const busy = 200;
  it('starts closed, probes after one busy epoch, keeps polling while it is faster, and checks again', () => {
    const c = new PollControl({ windowUs: 500, runMin: 3, runMax: 12 });
    assert.equal(c.window, 0);
    assert.equal(c.epoch(busy, 100), 500, 'one epoch measured closed, then a probe');
    assert.equal(c.phase, 'probe-on');
    assert.equal(c.epoch(2 * busy, 100), 500, 'twice the rate: polling stays');
    assert.equal(c.phase, 'on');
    assert.equal(c.epoch(2 * busy, 100), 500);
    assert.equal(c.epoch(2 * busy, 100), 500);
    assert.equal(c.epoch(2 * busy, 100), 0, 'after the run: a probe with the window closed');
    assert.equal(c.phase, 'probe-off');
    assert.equal(c.epoch(busy, 100), 500, 'closed is slower: polling again, for a doubled run');
    for (let i = 0; i < 5; i++) assert.equal(c.epoch(2 * busy, 100), 500, `epoch ${i} of the 6-epoch run`);
    assert.equal(c.epoch(2 * busy, 100), 0);
    assert.equal(c.epoch(2 * busy, 100), 0, 'as fast closed: polling stops (it costs CPU for nothing)');
    assert.equal(c.phase, 'off');
    assert.deepEqual([c.probes, c.wins], [3, 2]);
  });

  it('a probe that is not faster by the margin closes the window, and probes come less often', () => {
    const c = new PollControl({ windowUs: 500, runMin: 2, runMax: 8, margin: 0.1 });
    c.epoch(busy, 100);
    assert.equal(c.epoch(busy * 1.05, 100), 0, '5 % faster is not enough');
    const runs: number[] = [];
    for (let probe = 0; probe < 4; probe++) {
      let closed = 0;
      while (c.epoch(busy, 100) === 0) closed++;
      runs.push(closed + 1);
      assert.equal(c.epoch(busy * 0.8, 100), 0, 'slower with polling (a CPU the guest needs)');
    }
    assert.deepEqual(runs, [2, 4, 8, 8], 'closed runs double up to runMax');
  });

  it('an idle device never polls and never probes; load that goes away closes the window at once', () => {
    const c = new PollControl({ windowUs: 500, runMin: 2 });
    for (let i = 0; i < 20; i++) assert.equal(c.epoch(5, 100), 0);
    assert.equal(c.probes, 0);
    c.epoch(busy, 100);
    assert.equal(c.epoch(3 * busy, 100), 500);
    assert.equal(c.epoch(0, 100), 0, 'idle: closed');
    assert.equal(c.phase, 'off');
    assert.equal(c.epoch(busy, 100), 500, 'load again: a probe at once');
  });

  it('rates are per millisecond: a late epoch does not look faster', () => {
    const c = new PollControl({ windowUs: 500 });
    c.epoch(busy, 100);
    assert.equal(c.epoch(busy * 1.5, 150), 0, 'the same rate over a longer epoch');
  });
});

class PollingDevice extends EchoDevice {
  readonly ringPolling: boolean;
  constructor(polling: boolean) {
    super();
    this.ringPolling = polling;
  }
}

function setup(polling = true) {
  const t = kickLoopSet('ioctl', new PollingDevice(polling));
  const add = (drv: MockDriver): unknown => drv.addChain({ readable: [new Uint8Array([7])], writable: [1] });
  return { ...t, add, kick: t.kickFd };
}

/** One request per event-loop turn on queue 0 until the controller opens the window (true) or 1.5 s pass. */
async function loadUntilOpened(t: ReturnType<typeof setup>): Promise<boolean> {
  const loop = t.loop();
  const end = Date.now() + 1500;
  while (Date.now() < end) {
    t.add(t.q0);
    t.q0.kick();
    t.kick(0);
    await new Promise((r) => setImmediate(r));
    t.q0.usedEntries();
    if (loop.windowNs > 0) return true;
  }
  return false;
}

describe('QueueSet ring polling (KickLoop)', () => {
  it('watches each ring, marks it idle after every wake-up; a kick for served work is absorbed', async () => {
    const t = setup();
    t.start();
    const loop = t.loop();
    assert.equal(loop.watches[0]?.kind, WATCH_SPLIT);
    assert.ok(loop.watches[1] !== null);
    assert.deepEqual([...loop.marks], [0, 0], 'both rings idle at avail.idx 0');
    t.add(t.q0);
    t.q0.kick();
    t.kick(0);
    await until('served', () => t.q0.usedEntries().length === 1);
    assert.deepEqual([...loop.marks], [1, 0]);
    assert.equal(t.set.counters[0], 1);
    t.kick(0); // the driver kicks again with nothing new
    await until('the kick read', () => loop.stats[KICK_STAT_ABSORBED] === 1);
    assert.deepEqual(t.device.notified, [0], 'no callback for it');
    assert.equal(t.set.counters[0], 2, 'but counted: the driver did kick');
    // a pop outside a wake-up (a device resuming from a completion) makes the mark stale at once
    t.add(t.q1);
    t.q1.kick(); // avail.idx written; the eventfd is not
    const chain = t.device.context!.queues[1]!.pop();
    assert.ok(chain !== null);
    assert.equal(loop.marks[1], -1);
    t.device.context!.queues[1]!.addUsed(chain, 0);
    t.set.invalidate(0, 2 ** 52);
    assert.deepEqual([...loop.marks], [-1, -1], 'an invalidation: nothing is idle until looked at again');
    t.set.stop(true);
    assert.deepEqual(loop.watches, [null, null], 'stopped: no watch');
    assert.equal(loop.windowNs, 0);
    await t.set.close();
  });

  it('work found by a spin is served without a kick and not counted as one', async () => {
    const t = setup();
    t.start();
    const loop = t.loop();
    loop.setPoll(1_000_000); // as the controller does when polling pays
    t.add(t.q0);
    t.q0.kick(); // avail.idx written; the eventfd is not
    await until('served by the spin', () => t.q0.usedEntries().length === 1);
    assert.equal(t.set.counters[0], 0, 'no kick counted');
    assert.equal(t.set.counters[2], 1, 'one interrupt');
    assert.equal(loop.marks[0], 1);
    t.set.stop(true);
    await t.set.close();
  });

  it('under load the controller probes with the window open; a device without ringPolling is never watched', async () => {
    const t = setup();
    t.start();
    assert.ok(await loadUntilOpened(t), 'the window was opened for a probe');
    t.set.stop(true);
    await t.set.close();

    const u = setup(false);
    u.start();
    assert.deepEqual(u.loop().watches, [null, null]);
    u.add(u.q0);
    u.q0.kick();
    u.kick(0);
    await until('served', () => u.q0.usedEntries().length === 1);
    assert.deepEqual([...u.loop().marks], [-1, -1]);
    u.kick(0);
    await until('the second kick served', () => u.device.notified.length === 2);
    assert.equal(u.loop().stats[KICK_STAT_ABSORBED], 0);
    u.set.stop(true);
    await u.set.close();
  });

  it('an idle device stops counting epochs (no timer wakes it) and the next kick starts them again', async () => {
    const t = setup();
    t.start();
    const loop = t.loop();
    assert.ok(t.set.measuringPoll, 'counting from the start');
    await until('idle: the epoch timer stopped', () => !t.set.measuringPoll);
    t.add(t.q0);
    t.q0.kick();
    t.kick(0);
    await until('served', () => t.q0.usedEntries().length === 1);
    assert.ok(t.set.measuringPoll, 'a kick starts the epochs again');
    // Load after the idle stretch: the controller still probes with the window open.
    assert.ok(await loadUntilOpened(t), 'the window was opened for a probe');
    await until('idle again: the window closed and the timer stopped', () => !t.set.measuringPoll);
    assert.equal(loop.windowNs, 0);
    t.set.stop(true);
    await t.set.close();

    const u = setup(false);
    u.start();
    assert.equal(u.set.measuringPoll, false, 'no ring polling: no epochs');
    u.set.stop(true);
    await u.set.close();
  });
});
