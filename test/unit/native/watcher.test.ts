// The native FdWatcher (uv_poll_t) on eventfds: firing, level triggering, stop/close/ref/unref,
// MakeCallback semantics, exceptions, worker threads. Needs the built addon.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Worker } from 'node:worker_threads';

import {
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  UV_READABLE,
  UV_WRITABLE,
  findPackageRoot,
  isSystemError,
  loadNativeBinding,
} from '../../../src/sys/index.js';

const sys = loadNativeBinding();
const ADDON = join(findPackageRoot(), 'build/Release/vduse_native.node');

function runChild(
  code: string,
  nodeArgs: string[] = [],
): { status: number | null; stdout: string; stderr: string } {
  const prelude = `const addon = require(${JSON.stringify(ADDON)});\n`;
  const result = spawnSync(process.execPath, [...nodeArgs, '-e', prelude + code], {
    encoding: 'utf8',
    timeout: 20_000,
  });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

function eventfd(): number {
  return sys.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
}

test('a watcher fires when an eventfd is written, with status 0 and UV_READABLE', async () => {
  const efd = eventfd();
  const calls: Array<[number, number, number]> = [];
  const watcher = sys.createFdWatcher(efd, (status, events) => {
    calls.push([status, events, sys.eventfdRead(efd)]);
  });
  watcher.start(UV_READABLE);
  await sleep(20);
  assert.deepEqual(calls, [], 'not readable yet');
  sys.eventfdWrite(efd, 7);
  await sleep(20);
  assert.deepEqual(calls, [[0, UV_READABLE, 7]]);
  watcher.close();
  closeSync(efd);
});

test('a watcher is level-triggered and stops firing after stop(); start() resumes', async () => {
  const efd = eventfd();
  let count = 0;
  const watcher = sys.createFdWatcher(efd, () => {
    count++; // never reads: the fd stays readable
  });
  sys.eventfdWrite(efd, 1);
  watcher.start(UV_READABLE);
  await sleep(30);
  assert.ok(count >= 3, `fired ${count} times while readable`);
  watcher.stop();
  const stoppedAt = count;
  await sleep(30);
  assert.equal(count, stoppedAt);
  watcher.start(UV_READABLE);
  await sleep(30);
  assert.ok(count > stoppedAt);
  watcher.close();
  const closedAt = count;
  await sleep(20);
  assert.equal(count, closedAt);
  assert.throws(() => watcher.start(UV_READABLE), /closed/);
  watcher.close(); // twice is harmless
  closeSync(efd);
});

test('UV_WRITABLE fires for a writable eventfd', async () => {
  const efd = eventfd();
  const events = await new Promise<number>((resolve) => {
    const watcher = sys.createFdWatcher(efd, (_status, ev) => {
      watcher.close();
      resolve(ev);
    });
    watcher.start(UV_WRITABLE);
  });
  assert.equal(events, UV_WRITABLE);
  closeSync(efd);
});

test('nextTick callbacks and microtasks run after each watcher callback (MakeCallback)', async () => {
  const a = eventfd();
  const b = eventfd();
  const order: string[] = [];
  let pending = 2;
  let done!: () => void;
  const finished = new Promise<void>((resolve) => (done = resolve));
  const watchers = [a, b].map((fd, i) => {
    const watcher = sys.createFdWatcher(fd, () => {
      sys.eventfdRead(fd);
      watcher.stop();
      order.push(`cb${i}`);
      process.nextTick(() => order.push(`tick${i}`));
      void Promise.resolve().then(() => {
        order.push(`micro${i}`);
        if (--pending === 0) done();
      });
    });
    watcher.start(UV_READABLE);
    return watcher;
  });
  // both ready before the loop polls: both callbacks run in the same loop iteration
  sys.eventfdWrite(a, 1);
  sys.eventfdWrite(b, 1);
  await finished;
  assert.equal(order.length, 6);
  for (let i = 0; i < 6; i += 3) {
    assert.match(order[i]!, /^cb\d$/);
    const n = order[i]!.slice(2);
    assert.deepEqual(order.slice(i, i + 3), [`cb${n}`, `tick${n}`, `micro${n}`]);
  }
  for (const w of watchers) w.close();
  closeSync(a);
  closeSync(b);
});

test('an exception thrown by a watcher callback reaches uncaughtException', () => {
  const child = runChild(`
    process.on('uncaughtException', (e) => { console.log('caught ' + e.message); process.exit(0); });
    const efd = addon.eventfd(1, 0o4000);
    const w = new addon.FdWatcher(efd, () => { throw new Error('boom'); });
    w.start(1);
  `);
  assert.equal(child.status, 0, child.stderr);
  assert.equal(child.stdout.trim(), 'caught boom');
});

test('an active watcher keeps the process alive; unref() lets it exit; ref() undoes that', () => {
  const script = (calls: string): string => `
    const efd = addon.eventfd(0, 0o4000);
    const w = new addon.FdWatcher(efd, () => {});
    w.start(1);
    ${calls}
    setTimeout(() => { console.log('alive'); process.exit(0); }, 300).unref();
  `;
  assert.equal(runChild(script('')).stdout.trim(), 'alive');
  assert.equal(runChild(script('w.unref();')).stdout.trim(), '');
  assert.equal(runChild(script('w.unref(); w.ref();')).stdout.trim(), 'alive');
  assert.equal(runChild(script('w.stop();')).stdout.trim(), '', 'a stopped watcher does not hold the loop');
});

test('a started watcher that JS dropped keeps firing; stopped or closed ones are garbage collected', () => {
  const child = runChild(
    `
    const efd = addon.eventfd(0, 0o4000);
    let fired = 0;
    let collected = 0;
    const registry = new FinalizationRegistry(() => collected++);
    (() => {
      const w = new addon.FdWatcher(efd, () => { fired++; addon.eventfdRead(efd); });
      w.start(1);
      registry.register(w, 'active');
    })();
    for (let i = 0; i < 100; i++) {
      // the callback closes over its own watcher, as real callers' do. (libuv allows one poll handle
      // per fd and loop, hence a new eventfd each.)
      const w = new addon.FdWatcher(addon.eventfd(0, 0o4000), () => w.stop());
      w.start(1);
      if (i % 2) w.stop(); else w.close();
      registry.register(w, 'idle');
    }
    const settle = async () => { for (let i = 0; i < 5; i++) { global.gc(); await new Promise((r) => setTimeout(r, 5)); } };
    (async () => {
      await settle();
      addon.eventfdWrite(efd, 1);
      await new Promise((r) => setTimeout(r, 50));
      await settle();
      console.log(JSON.stringify({ fired, collected }));
      process.exit(0);
    })();
  `,
    ['--expose-gc'],
  );
  assert.equal(child.status, 0, child.stderr);
  const result = JSON.parse(child.stdout) as { fired: number; collected: number };
  assert.equal(result.fired, 1, 'the dropped active watcher still fired');
  assert.equal(result.collected, 100, 'all idle watchers, and not the active one, were collected');
});

test('createFdWatcher fails with a system error for an fd epoll refuses or one already watched', () => {
  const fd = sys.memfdCreate('not-pollable', 0);
  assert.throws(
    () => sys.createFdWatcher(fd, () => {}),
    (e) => isSystemError(e, 'EPERM') && e.syscall === 'uv_poll_init',
  );
  closeSync(fd);
  const efd = eventfd();
  const first = sys.createFdWatcher(efd, () => {});
  first.start(UV_READABLE);
  assert.throws(
    () => sys.createFdWatcher(efd, () => {}),
    (e) => isSystemError(e, 'EEXIST'),
  );
  first.close();
  sys.createFdWatcher(efd, () => {}).close();
  closeSync(efd);
});

test('watchers work in a worker thread, on its own loop, and a worker may exit with one still open', async () => {
  const code = `
    const { parentPort, workerData } = require('node:worker_threads');
    const addon = require(workerData.addon);
    const efd = addon.eventfd(0, 0o4000);
    const w = new addon.FdWatcher(efd, (status, events) => {
      const value = addon.eventfdRead(efd);
      parentPort.postMessage({ status, events, value });
      if (workerData.close) w.close();
      else process.exit(0); // leave the handle open: the addon must clean it up at teardown
    });
    w.start(1);
    setTimeout(() => addon.eventfdWrite(efd, 5), 10);
  `;
  for (const close of [true, false]) {
    const worker = new Worker(code, { eval: true, workerData: { addon: ADDON, close } });
    // Listen for 'exit' from the start: the worker may exit in the same turn that delivers its message.
    const exited = new Promise((resolve) => worker.once('exit', resolve));
    const message = await new Promise((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    assert.deepEqual(message, { status: 0, events: UV_READABLE, value: 5 });
    const exitCode = await exited;
    assert.equal(exitCode, 0);
  }
});
