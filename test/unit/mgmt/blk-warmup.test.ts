import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import type { Logger } from '../../../src/common/logger.js';
import type { VirtioBlkDevice } from '../../../src/devices/blk/device.js';
import { createQueueThreadDevice, type BlkCounters } from '../../../src/mgmt/blk/thread-device.js';
import {
  startBlkWarmup,
  stopAtFirstRequest,
  warmUpBlk,
  warmupDisabled,
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
  // Every fourth round answers through promises: the device's asynchronous completion path runs too.
  assert.ok(split.deferred >= 64 && split.deferred < split.requests.split / 2, `deferred: ${split.deferred}`);
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
  // A clock that leaps past every deadline at its k-th reading cuts the warm-up at a different point for each k,
  // some inside a deferred round with requests still in the backend (a short count: only deferred reaps can
  // return short); it still ends without errors, the throwaway device's reset waiting for them.
  const cuts = [];
  for (let k = 4; k <= 16; k++) {
    let u = 0;
    cuts.push(await warmUpBlk(device0, { budgetMs: 1e6, requests: 1e9, now: () => (++u > k ? u + 1e7 : u) }));
  }
  assert.ok(
    cuts.every((c) => c.errors === 0),
    JSON.stringify(cuts),
  );
  const round = cuts[0]!.requests.split;
  assert.ok(
    cuts.some((c) => c.requests.split % round !== 0),
    JSON.stringify(cuts.map((c) => c.requests)),
  );
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
    // close() waits for the warm-up: it has run (the debug line), with both ring formats.
    const before = t.snapshot() as BlkCounters;
    const dev = t.device as VirtioBlkDevice;
    await t.close();
    const line = logger.lines.find((l) => l.startsWith('w0: warm-up: '));
    assert.ok(line !== undefined, logger.lines.join('\n'));
    assert.match(
      line,
      /^w0: warm-up: [1-9]\d* split and [1-9]\d* packed requests \([1-9]\d* through promises\) in \d+ ms$/,
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

test('the warm-up stops at the real device first request (stopAtFirstRequest)', async () => {
  const real = { inFlight: 0, stats: { completed: 0 } };
  let device: typeof real | null = null;
  const stop = stopAtFirstRequest(() => device);
  assert.equal(stop(), false, 'no device yet');
  device = real;
  assert.equal(stop(), false, 'nothing served yet');
  let checks = 0;
  const r = await warmUpBlk(
    { ...device0, packed: true },
    {
      budgetMs: 5000,
      requests: 1e9,
      stop: () => {
        if (++checks === 3) real.inFlight = 1; // the first real request arrives
        return stop();
      },
    },
  );
  assert.equal(r.errors, 0);
  assert.equal(r.requests.packed, 0, 'stopped before the packed run');
  assert.ok(r.requests.split > 0 && r.requests.split < 200, JSON.stringify(r.requests));
  real.inFlight = 0;
  real.stats.completed = 1;
  assert.equal(stop(), true);
});

test('one warm-up per thread: a second device shares it, unless it adds packed rings', async () => {
  const logger = capture();
  const a = startBlkWarmup({ name: 'a', ...device0, packed: true }, logger, { requests: 50 });
  assert.equal(startBlkWarmup({ name: 'b', ...device0 }, logger), a);
  assert.equal(startBlkWarmup({ name: 'c', ...device0, packed: true }, logger), a);
  await a;
  // At most one line: none when an earlier test of this file already warmed this thread up.
  assert.ok(logger.lines.filter((l) => / warm-up: /.test(l)).length <= 1, logger.lines.join('\n'));
});
