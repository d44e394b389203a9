// QueueThreads with real worker threads (the native addon loads in each) and a test device module.
import assert from 'node:assert/strict';
import { threadId } from 'node:worker_threads';
import { describe, it } from 'node:test';

import { nullLogger, type Logger } from '../../../src/common/logger.js';
import {
  QueueThreads,
  threadExecArgv,
  type QueueThreadsOptions,
} from '../../../src/transports/engine/threads/queue-threads.js';
import { QueueThreadError } from '../../../src/transports/engine/errors.js';
import { VduseTsError } from '../../../src/common/errors.js';
import { vduseThreadTransport } from '../../../src/transports/vduse/queue-transport.js';
import type { TestThreadTypes } from '../vduse/fixtures/thread-device.js';

const MODULE = new URL('../vduse/fixtures/thread-device.js', import.meta.url).href;

function pool(extra: Partial<QueueThreadsOptions<TestThreadTypes>> = {}) {
  const needs: { reason: Error; failed: boolean }[] = [];
  /** Resolves once `n` reports have come in (the threads report on their own time). */
  const waiters: { n: number; resolve: () => void }[] = [];
  const reported = (n: number): Promise<void> =>
    new Promise((resolve) => {
      if (needs.length >= n) resolve();
      else waiters.push({ n, resolve });
    });
  const lines: string[] = [];
  const logger: Logger = { ...nullLogger, error: (m) => lines.push(m), warn: (m) => lines.push(m) };
  const threads = new QueueThreads<TestThreadTypes>({
    spec: { module: MODULE, options: {} },
    // no queue is started here, so no ioctl reaches this fd
    transport: vduseThreadTransport({ devFd: -1, stateLog: null }),
    numQueues: 3,
    threads: 2,
    logger,
    // Not what these tests check: a thread starting (the addon and the modules load in it) or answering on
    // a loaded 2-core machine may take seconds; only a thread that hangs should hit this.
    timeoutMs: 60_000,
    onNeedsReset: (reason, failed) => {
      needs.push({ reason, failed });
      for (const w of waiters) if (needs.length >= w.n) w.resolve();
    },
    ...extra,
  });
  return { threads, needs, reported, lines };
}

const common = {
  features: 1n << 32n,
  packed: false,
  eventIdx: false,
  indirect: false,
  recover: false,
  queues: [],
};

describe('QueueThreads (worker threads)', () => {
  it('starts N threads that build their device, then start / snapshot / stop / call / close', async () => {
    const { threads, needs } = pool();
    try {
      assert.equal(threads.threadCount, 2);
      assert.deepEqual(
        [0, 1, 2].map((i) => threads.ownerOf(i)),
        [0, 1, 0],
      );
      assert.equal(threads.start(common), 0);
      const snaps = threads.snapshot().map((s) => s!);
      assert.equal(snaps.length, 2);
      const ids = new Set(snaps.map((s) => s.threadId));
      assert.equal(ids.size, 2, 'two threads');
      assert.ok(!ids.has(threadId), 'not this thread');
      for (const s of snaps) {
        assert.equal(s.activations, 1, 'activated once, synchronously before start() returned');
        assert.equal(s.features, 1n << 32n);
      }
      assert.deepEqual(threads.stop(true), [], 'no live queue');
      assert.deepEqual(
        threads.snapshot().map((s) => s?.resets),
        [1, 1],
      );
      assert.equal(threads.invalidate(0, 0xffff), true);
      assert.equal(threads.state(1), null);
      assert.deepEqual(await threads.call('echo', 42), [42, 42]);
      await assert.rejects(threads.call('fail', 'x'), /refused x/);
      assert.equal(threads.kicks.length, 3);
      assert.equal(threads.interrupts.length, 3);
      await threads.drain(10);
      assert.deepEqual(needs, []);
    } finally {
      await threads.close();
    }
  });

  it('a thread that cannot build its device: one-line error, no thread left', () => {
    assert.throws(
      () => pool({ spec: { module: MODULE, options: { fail: true } } }),
      /^QueueThreadError: queue thread 0 could not start: the backend cannot be opened here$/,
    );
    assert.throws(
      () => pool({ spec: { module: MODULE, options: { fail: true } } }),
      (err: unknown) =>
        err instanceof QueueThreadError && err instanceof VduseTsError && err.code === 'ERR_QUEUE_THREAD',
    );
  });

  it('the spec, the calls and the snapshots are typed by the device module (compile-time checks)', () => {
    // Nothing runs: these lines only have to compile, and the marked ones must not.
    const check = (threads: QueueThreads<TestThreadTypes>): void => {
      const echoed: Promise<number[]> = threads.call('echo', 1);
      // @ts-expect-error echo takes a number
      void threads.call('echo', 'x');
      // @ts-expect-error no such call
      void threads.call('resize', 1);
      const snap = threads.snapshot()[0];
      const resets: number | undefined = snap?.resets;
      // @ts-expect-error no such counter
      void snap?.missing;
      void echoed;
      void resets;
    };
    assert.equal(typeof check, 'function');
  });

  it('a thread count that does not fit the queues is refused', () => {
    assert.throws(() => pool({ threads: 4 }), /4 thread\(s\) for 3 queue\(s\)/);
    assert.throws(() => pool({ threads: 1 }), RangeError);
  });

  it(
    'a crashed thread is reported once (needs reset), skipped by stop, and replaced at the next start',
    { timeout: 120_000 },
    async () => {
      const { threads, needs, reported } = pool();
      try {
        threads.start(common);
        await threads.call('crash', null).catch(() => undefined);
        // Each thread crashes on its own time (one report may come long after the other on a loaded machine):
        // wait for both reports, however long they take (the test's timeout guards against a hang).
        await reported(2);
        assert.equal(needs.length, 2, 'both threads crashed (each got the call)');
        for (const n of needs) {
          assert.equal(n.failed, true);
          assert.match(n.reason.message, /^queue thread [01] \(queues? [0-9, ]+\) failed: boom$/);
        }
        assert.deepEqual(threads.stop(true), [], 'dead threads are skipped');
        assert.deepEqual(threads.snapshot(), [null, null]);
        // The dead threads' exits come after their errors: they must not be reported again.
        await new Promise((r) => setTimeout(r, 20));
        threads.start(common);
        const snaps = threads.snapshot().map((s) => s!);
        assert.deepEqual(
          snaps.map((s) => s.activations),
          [1, 1],
          'fresh threads',
        );
        assert.equal(needs.length, 2, 'nothing new reported');
      } finally {
        await threads.close();
      }
    },
  );
});

describe('threadExecArgv', () => {
  it('gives each thread its own CPU profile name; without one the thread inherits the options', () => {
    assert.deepEqual(
      threadExecArgv(
        ['--cpu-prof', '--cpu-prof-dir=/p', '--cpu-prof-name=bench-1.cpuprofile', '--max-semi-space-size=16'],
        1,
      ),
      ['--cpu-prof', '--cpu-prof-dir=/p', '--cpu-prof-name=bench-1-queue-1.cpuprofile'],
    );
    assert.deepEqual(threadExecArgv(['--cpu-prof-name=p'], 0), ['--cpu-prof-name=p-queue-0']);
    assert.equal(threadExecArgv(['--cpu-prof', '--x'], 0), undefined);
    assert.equal(threadExecArgv([], 0), undefined);
  });
});
