import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import type { Logger } from '../../../src/common/logger.js';
import type { VirtioBlkDevice } from '../../../src/devices/blk/device.js';
import { createQueueThreadDevice, type BlkCounters } from '../../../src/mgmt/blk/thread-device.js';
import {
  deviceWarmupGate,
  resetThreadWarmup,
  startBlkWarmup,
  warmUpBlk,
  warmupDisabled,
  type WarmupGate,
} from '../../../src/mgmt/blk/warmup.js';
import { FakeBinding } from '../../../src/testing/fake-binding.js';

const device0 = { queueSize: 256, logicalBlockSize: 512, packed: false, readOnly: false };

function capture(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const put = (m: string): void => void lines.push(m);
  return { lines, error: put, warn: put, info: put, debug: put };
}

test('the warm-up runs requests through a split ring, and a packed one when the device offers packed', async () => {
  const split = await warmUpBlk(device0, { budgetMs: 5000, requests: 500 });
  assert.equal(split.errors, 0);
  assert.ok(split.requests.split >= 500, `split requests: ${split.requests.split}`);
  assert.equal(split.requests.packed, 0);
  const both = await warmUpBlk({ ...device0, packed: true }, { budgetMs: 5000, requests: 500 });
  assert.equal(both.errors, 0);
  assert.ok(both.requests.split >= 500 && both.requests.packed >= 500, JSON.stringify(both.requests));
  // Read-only devices and 4K blocks, small rings: still no errors.
  const ro = await warmUpBlk(
    { queueSize: 16, logicalBlockSize: 4096, packed: true, readOnly: true },
    { budgetMs: 5000, requests: 200 },
  );
  assert.equal(ro.errors, 0);
  assert.ok(ro.requests.split >= 200 && ro.requests.packed >= 200, JSON.stringify(ro.requests));
});

test('the warm-up is bounded by its time budget (a clock that advances 1 ms per reading)', async () => {
  let t = 0;
  const r = await warmUpBlk({ ...device0, packed: true }, { budgetMs: 40, requests: 1e9, now: () => t++ });
  assert.equal(r.errors, 0);
  assert.ok(r.ms <= 80, `took ${r.ms} clock ms`);
  assert.ok(r.requests.split > 0 && r.requests.packed > 0);
  assert.deepEqual((await warmUpBlk(device0, { budgetMs: 0 })).requests, { split: 0, packed: 0 });
  assert.deepEqual((await warmUpBlk({ ...device0, queueSize: 4 })).requests, { split: 0, packed: 0 });
});

test('VDUSE_WARMUP=0 turns it off', async () => {
  assert.equal(warmupDisabled({ VDUSE_WARMUP: '0' }), true);
  assert.equal(warmupDisabled({}), false);
  const saved = process.env.VDUSE_WARMUP;
  process.env.VDUSE_WARMUP = '0';
  try {
    assert.equal(await startBlkWarmup({ name: 'd', ...device0 }, capture()), null);
  } finally {
    if (saved === undefined) delete process.env.VDUSE_WARMUP;
    else process.env.VDUSE_WARMUP = saved;
  }
});

test('a queue thread warms up and leaves no trace: its device and backend counters stay zero, the file is untouched', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vduse-warmup-'));
  try {
    const path = join(dir, 'disk.raw');
    const content = Buffer.alloc(1 << 20, 0x5a);
    writeFileSync(path, content);
    const logger = capture();
    const t = await createQueueThreadDevice(
      {
        name: 'w0',
        backend: `file:${path}`,
        queues: 2,
        queueSize: 128,
        logicalBlockSize: 512,
        readOnly: false,
        packed: true,
      },
      { binding: new FakeBinding(), logger },
    );
    // The device is idle: the warm-up runs to its end (the debug line), with both ring formats.
    const before = t.snapshot() as BlkCounters;
    const dev = t.device as VirtioBlkDevice;
    const findLine = (): string | undefined => logger.lines.find((l) => l.startsWith('w0: warm-up: '));
    for (let i = 0; i < 500 && findLine() === undefined; i++) await new Promise((r) => setTimeout(r, 10));
    await t.close();
    const line = findLine();
    assert.ok(line !== undefined, logger.lines.join('\n'));
    assert.match(
      line,
      /^w0: warm-up: [1-9]\d* split and [1-9]\d* packed requests in \d+ ms \(\d+ ms paused\)$/,
    );
    for (const counters of [before, t.snapshot() as BlkCounters]) {
      assert.ok(
        Object.values(counters.stats).every((v) => v === 0),
        JSON.stringify(counters.stats),
      );
      assert.ok(
        Object.values(counters.backend).every((v) => v === 0),
        JSON.stringify(counters.backend),
      );
      assert.equal(counters.latency.count, 0);
      assert.ok(counters.queues.every((q) => Object.values(q).every((v) => v === 0)));
    }
    assert.equal(dev.inFlight, 0);
    assert.deepEqual(readFileSync(path), content);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a device gate: busy while requests are in flight or one completed less than idleMs ago; done when warm or closed', () => {
  const real = { inFlight: 0, stats: { completed: 0 } };
  let device: typeof real | null = null;
  let t = 1000;
  const gate = deviceWarmupGate(() => device, { warmRequests: 100, idleMs: 200, now: () => t });
  assert.equal(gate.busy(), false, 'no device yet');
  assert.equal(gate.done(), false);
  device = real;
  assert.equal(gate.busy(), false, 'nothing served yet');
  real.inFlight = 1;
  assert.equal(gate.busy(), true, 'a request in flight');
  real.inFlight = 0;
  real.stats.completed = 3; // e.g. the kernel's partition scan
  t += 10;
  assert.equal(gate.busy(), true, 'completed just now');
  t += 150;
  assert.equal(gate.busy(), true, 'idle for 150 ms: not long enough');
  t += 60;
  assert.equal(gate.busy(), false, 'idle for 210 ms');
  real.stats.completed = 4; // a workload with short gaps keeps it busy
  t += 1;
  assert.equal(gate.busy(), true);
  t += 199;
  assert.equal(gate.busy(), true);
  t += 1;
  assert.equal(gate.busy(), false);
  assert.equal(gate.done(), false);
  real.stats.completed = 100;
  assert.equal(gate.done(), true, 'the device warmed its own code');
  const other = deviceWarmupGate(() => real, { warmRequests: 1000 });
  assert.equal(other.done(), false);
  other.close();
  assert.equal(other.done(), true, 'closed');
});

/** A gate that is busy for the looks in [from, to) (counted from 1) and done from look `doneAt` on. */
function scriptedGate(from: number, to: number, doneAt = Infinity): WarmupGate & { looks: number } {
  const g = {
    looks: 0,
    busy: () => {
      g.looks++;
      return g.looks >= from && g.looks < to;
    },
    done: () => g.looks >= doneAt,
  };
  return g;
}

test('the warm-up waits while its gate is busy and goes on after; the wait does not count against the budget', async () => {
  const gate = scriptedGate(3, 8);
  const r = await warmUpBlk(
    { ...device0, packed: true },
    { budgetMs: 5000, requests: 300, gate, pauseMs: 5 },
  );
  assert.equal(r.errors, 0);
  assert.ok(r.requests.split >= 300 && r.requests.packed >= 300, JSON.stringify(r.requests));
  // Looks 3..7 were busy: at least 4 pauses of 5 ms (timers may fire late, never early by more than 1 ms).
  assert.ok(r.pausedMs >= 4 * 4, `paused ${r.pausedMs} ms`);
  // A budget that the pauses alone would exceed still lets the warm-up run after them.
  const slow = await warmUpBlk(device0, {
    budgetMs: 200,
    requests: 50,
    gate: scriptedGate(1, 30),
    pauseMs: 10,
  });
  assert.ok(slow.pausedMs >= 250, `paused ${slow.pausedMs} ms`);
  assert.ok(slow.requests.split >= 50, JSON.stringify(slow.requests));
});

test('the warm-up ends when its gate says done, or after waiting maxWaitMs in all', async () => {
  const done = await warmUpBlk(
    { ...device0, packed: true },
    { budgetMs: 5000, requests: 1e9, gate: scriptedGate(0, 0, 4) },
  );
  assert.equal(done.errors, 0);
  assert.equal(done.requests.packed, 0, 'ended before the packed run');
  assert.ok(done.requests.split > 0 && done.requests.split < 200, JSON.stringify(done.requests));
  const busy = await warmUpBlk(device0, {
    budgetMs: 5000,
    requests: 1e9,
    gate: scriptedGate(1, Infinity),
    pauseMs: 5,
    maxWaitMs: 40,
  });
  assert.deepEqual(busy.requests, { split: 0, packed: 0 });
  assert.ok(busy.pausedMs >= 35 && busy.pausedMs < 1000, `paused ${busy.pausedMs} ms`);
});

test('one warm-up per thread: a second device shares it (its gate joins), unless it adds packed rings', async () => {
  const logger = capture();
  const a = startBlkWarmup({ name: 'a', ...device0, packed: true }, logger, { requests: 50 });
  assert.equal(startBlkWarmup({ name: 'b', ...device0 }, logger), a);
  const real = { inFlight: 1, stats: { completed: 0 } };
  const gate = deviceWarmupGate(() => real);
  assert.equal(startBlkWarmup({ name: 'c', ...device0, packed: true }, logger, { gate }), a);
  gate.close(); // a device that closes at once never waits for the shared warm-up
  const r = await a;
  // At most one line: none when an earlier test of this file already warmed this thread up.
  assert.ok(logger.lines.filter((l) => / warm-up: /.test(l)).length <= 1, logger.lines.join('\n'));
  assert.ok(r === null || r.errors === 0);
});

test('a later device joins a running warm-up: its busy gate pauses it, its close ends it at once', async () => {
  resetThreadWarmup();
  const logger = capture();
  const started = performance.now();
  const a = startBlkWarmup({ name: 'a', ...device0, packed: true }, logger, {
    requests: 1e9,
    budgetMs: 60_000,
  });
  const real = { inFlight: 0, stats: { completed: 0 } };
  const gate = deviceWarmupGate(() => real);
  assert.equal(startBlkWarmup({ name: 'b', ...device0 }, logger, { gate }), a);
  await new Promise((r) => setTimeout(r, 50)); // idle: the warm-up runs
  real.inFlight = 1; // busy: it waits
  await new Promise((r) => setTimeout(r, 100));
  gate.close();
  const r = await a;
  assert.ok(r !== null && r.errors === 0);
  assert.ok(r.requests.split > 0, JSON.stringify(r.requests));
  assert.ok(r.pausedMs >= 50, `paused ${r.pausedMs} ms while the joined device was busy`);
  assert.ok(performance.now() - started < 5000, 'the close ended a 60 s warm-up');
  assert.match(
    logger.lines.join('\n'),
    /^a: warm-up: \d+ split and \d+ packed requests in \d+ ms \(\d+ ms paused\)$/m,
  );
});

test('the warm-up yields to the event loop between batches: a timer due during it fires on time', async () => {
  const started = performance.now();
  const firedAt = new Promise<number>((resolve) => setTimeout(() => resolve(performance.now()), 5));
  const r = await warmUpBlk(device0, { budgetMs: 400, requests: 1e9 });
  assert.ok(r.requests.split > 0);
  // Without a yield the timer would wait for the whole 400 ms budget.
  const late = (await firedAt) - started - 5;
  assert.ok(late < 150, `timer fired ${late.toFixed(0)} ms late`);
});
