// The native KickLoop (uv_prepare + epoll over kick eventfds and libuv's backend fd) on eventfds: kicks drained
// and marked, one callback per wake-up, interrupts injected after the callback and before the loop blocks,
// failures counted, libuv's own callbacks (timers, immediates, thread-pool I/O) not starved, stop/close/unref,
// worker teardown. Needs the built addon.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, readdirSync, readlinkSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Worker } from 'node:worker_threads';

import {
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  KICK_STAT_ABSORBED,
  KICK_STAT_FAILED_IRQS,
  KICK_STAT_LAST_ERRNO,
  KICK_STAT_POLL_HITS,
  KICK_STAT_POLLS,
  KICK_STAT_WAKEUPS,
  MAP_SHARED,
  MFD_CLOEXEC,
  PROT_READ,
  PROT_WRITE,
  WATCH_PACKED,
  WATCH_SPLIT,
  findPackageRoot,
  loadNativeBinding,
} from '../../../src/sys/index.js';

const sys = loadNativeBinding();
const ADDON = join(findPackageRoot(), 'build/Release/vduse_native.node');

function eventfd(): number {
  return sys.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
}

function runChild(code: string): { status: number | null; stdout: string; stderr: string } {
  const prelude = `const addon = require(${JSON.stringify(ADDON)});\n`;
  const result = spawnSync(process.execPath, ['-e', prelude + code], { encoding: 'utf8', timeout: 20_000 });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

test('kicks on two queues before a wake-up: one callback, both marked, both eventfds drained', async () => {
  const kicks = [eventfd(), eventfd()];
  const seen: number[][] = [];
  const injected = new Float64Array(2);
  const loop = sys.createKickLoop(2, injected, () => {
    seen.push([...loop.kicked]);
    loop.kicked.fill(0);
  });
  loop.addKick(0, kicks[0]!);
  loop.addKick(1, kicks[1]!);
  assert.throws(() => loop.addKick(1, kicks[1]!), { code: 'EEXIST', syscall: 'epoll_ctl' });
  assert.throws(() => loop.addKick(2, kicks[1]!), RangeError);
  sys.eventfdWrite(kicks[0]!, 3);
  sys.eventfdWrite(kicks[1]!, 1);
  loop.start();
  await sleep(20);
  assert.deepEqual(seen, [[1, 1]]);
  assert.equal(loop.stats[KICK_STAT_WAKEUPS], 1);
  assert.equal(sys.eventfdRead(kicks[0]!), -1, 'drained by the loop');
  assert.equal(sys.eventfdRead(kicks[1]!), -1);
  sys.eventfdWrite(kicks[1]!, 1);
  await sleep(20);
  assert.deepEqual(seen, [
    [1, 1],
    [0, 1],
  ]);
  loop.removeKick(1);
  sys.eventfdWrite(kicks[1]!, 1);
  await sleep(20);
  assert.equal(seen.length, 2, 'a removed kick fd does not wake the loop');
  assert.equal(sys.eventfdRead(kicks[1]!), 1, 'nor is it read');
  loop.close();
  loop.close(); // twice is harmless
  assert.throws(() => loop.start(), /closed/);
  for (const fd of kicks) closeSync(fd);
});

test('interrupts marked in the callback are injected after it, once per queue; failures are counted', async () => {
  const kick = eventfd();
  const calls = [eventfd(), eventfd()];
  const injected = new Float64Array(2);
  let callFdAtCallback = -2;
  const loop = sys.createKickLoop(2, injected, () => {
    loop.kicked.fill(0);
    loop.signals[0] = 1;
    loop.signals[0] = 1; // folded
    loop.signals[1] = 1;
    callFdAtCallback = sys.eventfdRead(calls[0]!);
  });
  loop.addKick(0, kick);
  loop.setInterrupt(0, calls[0]!, 0);
  // an ioctl the eventfd does not know: the injection fails with ENOTTY
  loop.setInterrupt(1, calls[1]!, 0x4004_8117);
  loop.start();
  sys.eventfdWrite(kick, 1);
  await sleep(20);
  assert.equal(callFdAtCallback, -1, 'not injected before the callback returned');
  assert.equal(sys.eventfdRead(calls[0]!), 1, 'one write for the two marks');
  assert.deepEqual([...injected], [1, 0]);
  assert.equal(loop.stats[KICK_STAT_FAILED_IRQS], 1);
  assert.equal(loop.stats[KICK_STAT_LAST_ERRNO], -25, '-ENOTTY');
  assert.deepEqual([...loop.signals], [0, 0], 'marks cleared');
  loop.close();
  closeSync(kick);
  for (const fd of calls) closeSync(fd);
});

test('an interrupt marked outside the callback (a timer, an immediate) is injected before the loop blocks', async () => {
  const call = eventfd();
  const injected = new Float64Array(1);
  const loop = sys.createKickLoop(1, injected, () => undefined);
  loop.setInterrupt(0, call, 0);
  loop.start();
  await sleep(5);
  loop.signals[0] = 1; // from a timer's continuation
  await sleep(20);
  assert.equal(sys.eventfdRead(call), 1);
  setImmediate(() => void (loop.signals[0] = 1));
  await sleep(20);
  assert.equal(sys.eventfdRead(call), 1);
  assert.equal(injected[0], 2);
  // flush() injects at once; a new target first injects a pending one with the old target
  loop.signals[0] = 1;
  loop.flush();
  assert.equal(sys.eventfdRead(call), 1);
  loop.signals[0] = 1;
  loop.setInterrupt(0, -1, 0);
  assert.equal(sys.eventfdRead(call), 1);
  loop.signals[0] = 1;
  loop.flush();
  assert.equal(sys.eventfdRead(call), -1, 'no target: dropped');
  assert.equal(injected[0], 4);
  loop.close();
  closeSync(call);
});

test('kicks that never stop do not starve timers, immediates or thread-pool I/O on the same thread', async () => {
  const kick = eventfd();
  let wakeups = 0;
  const loop = sys.createKickLoop(1, new Float64Array(1), () => {
    wakeups++;
    loop.kicked[0] = 0;
    sys.eventfdWrite(kick, 1); // always another kick ready: the loop never has to block
  });
  loop.addKick(0, kick);
  loop.start();
  sys.eventfdWrite(kick, 1);
  const t0 = Date.now();
  await sleep(15);
  await new Promise((r) => setImmediate(r));
  const text = await readFile(join(findPackageRoot(), 'package.json'), 'utf8');
  const elapsed = Date.now() - t0;
  assert.match(text, /vduse-ts/);
  assert.ok(elapsed < 2000, `libuv ran its callbacks (${elapsed} ms)`);
  assert.ok(wakeups > 10, `kicks were served meanwhile (${wakeups} wake-ups)`);
  loop.stop();
  const stoppedAt = wakeups;
  await sleep(20);
  assert.equal(wakeups, stoppedAt, 'no wake-up after stop()');
  loop.close();
  closeSync(kick);
});

test('a watcher started in the callback is served at once (libuv applies it before the loop blocks again)', () => {
  // Nothing else wakes the thread for a second: without the rule the new watcher would wait for that timer.
  const child = runChild(`
    const kick = addon.eventfd(0, ${EFD_NONBLOCK | EFD_CLOEXEC});
    const kicked = new Int32Array(1);
    let t0 = 0;
    const k = new addon.KickLoop(() => {
      kicked[0] = 0;
      const [a, b] = addon.socketPair();
      addon.write(b, new Uint8Array([1]));
      t0 = Date.now();
      const w = new addon.FdWatcher(a, () => {
        console.log(Date.now() - t0 < 500 ? 'prompt' : 'late ' + (Date.now() - t0));
        w.close(); k.close(); clearTimeout(timer);
      });
      w.start(1);
    }, kicked, new Int32Array(1), new Float64Array(1), new Float64Array(7), new Int32Array(1).fill(-1));
    k.addKick(0, kick);
    k.start();
    addon.eventfdWrite(kick, 1);
    const timer = setTimeout(() => { console.log('timer'); k.close(); }, 1000);`);
  assert.equal(child.status, 0, child.stderr);
  assert.equal(child.stdout, 'prompt\n');
});

test('a started loop keeps the process alive unless unref()ed', () => {
  const make = `const k = new addon.KickLoop(() => {}, new Int32Array(1), new Int32Array(1), new Float64Array(1), new Float64Array(7), new Int32Array(1).fill(-1));
k.start();`;
  const unrefd = runChild(`${make}\nk.unref(); console.log('done');`);
  assert.equal(unrefd.status, 0, unrefd.stderr);
  assert.equal(unrefd.stdout, 'done\n');
  const refd = runChild(`${make}\nsetTimeout(() => { console.log('alive'); k.close(); }, 100);`);
  assert.equal(refd.status, 0, refd.stderr);
  assert.equal(refd.stdout, 'alive\n');
});

test('a worker that exits or is terminated with a started KickLoop tears it down cleanly', async () => {
  const code = `
    const { parentPort } = require('node:worker_threads');
    const addon = require(${JSON.stringify(ADDON)});
    const kick = addon.eventfd(0, ${EFD_NONBLOCK | EFD_CLOEXEC});
    const kicked = new Int32Array(1);
    const k = new addon.KickLoop(() => { kicked[0] = 0; parentPort.postMessage('kick'); },
      kicked, new Int32Array(1), new Float64Array(1), new Float64Array(7), new Int32Array(1).fill(-1));
    k.addKick(0, kick);
    k.start();
    parentPort.on('message', (m) => { if (m === 'kick') addon.eventfdWrite(kick, 1); else process.exit(7); });
    parentPort.postMessage('ready');`;
  for (const how of ['exit', 'terminate'] as const) {
    const worker = new Worker(code, { eval: true });
    const messages: string[] = [];
    await new Promise<void>((resolve) =>
      worker.on('message', (m: string) => {
        messages.push(m);
        if (m === 'ready') worker.postMessage('kick');
        if (m === 'kick') resolve();
      }),
    );
    const exited = new Promise<number>((resolve) => worker.on('exit', resolve));
    if (how === 'exit') worker.postMessage('exit');
    else void worker.terminate();
    const status = await exited;
    assert.equal(status, how === 'exit' ? 7 : 1);
    assert.deepEqual(messages, ['ready', 'kick']);
  }
});

test('close() gives back the epoll fd at once, not when libuv gets to the close callbacks', () => {
  const epollFds = (): number =>
    readdirSync('/proc/self/fd').filter((fd) => {
      try {
        return readlinkSync(`/proc/self/fd/${fd}`) === 'anon_inode:[eventpoll]';
      } catch {
        return false;
      }
    }).length;
  const before = epollFds();
  const kick = eventfd();
  const loop = sys.createKickLoop(1, new Float64Array(1), () => undefined);
  loop.addKick(0, kick);
  loop.start();
  assert.equal(epollFds(), before + 1);
  loop.close();
  assert.equal(epollFds(), before, 'closed synchronously');
  closeSync(kick);
});

// Ring watches and polling (KickLoop.watch / marks / setPoll).

test('a kick for work already served is absorbed (no callback); one for new work is not', async (t) => {
  const kick = eventfd();
  const ring = new Uint16Array(4); // a split avail ring: flags, idx, ...
  let calls = 0;
  const loop = sys.createKickLoop(1, new Float64Array(1), () => {
    calls++;
    loop.kicked.fill(0);
  });
  t.after(() => loop.close());
  loop.addKick(0, kick);
  loop.watch(0, ring, WATCH_SPLIT);
  ring[1] = 7;
  loop.marks[0] = 7; // idle at 7: everything up to avail.idx 7 was served
  loop.start();
  sys.eventfdWrite(kick, 1);
  await sleep(20);
  assert.equal(calls, 0);
  assert.equal(loop.stats[KICK_STAT_ABSORBED], 1);
  assert.equal(sys.eventfdRead(kick), -1, 'read all the same');
  ring[1] = 8;
  sys.eventfdWrite(kick, 1);
  await sleep(20);
  assert.equal(calls, 1, 'avail.idx moved past the mark');
  loop.marks[0] = -1; // not known idle: every kick is a callback
  ring[1] = 8;
  sys.eventfdWrite(kick, 1);
  await sleep(20);
  assert.equal(calls, 2);
  loop.marks[0] = 8;
  loop.watch(0, null, WATCH_SPLIT); // no watch: every kick is a callback
  sys.eventfdWrite(kick, 1);
  await sleep(20);
  assert.equal(calls, 3);
  assert.equal(loop.stats[KICK_STAT_ABSORBED], 1);
  assert.equal(loop.stats[KICK_STAT_POLLS], 0, 'no spin without a window');
  loop.close();
  closeSync(kick);
});

test('spinning finds new work on a watched ring written by another thread, without a kick (split and packed)', async (t) => {
  for (const kind of [WATCH_SPLIT, WATCH_PACKED]) {
    const kick = eventfd();
    const ring = new Uint16Array(new SharedArrayBuffer(4 * 16)); // split: avail words; packed: 4 descriptors
    // packed: next avail position 2, wrap counter 1: descriptor 2 becomes available with AVAIL=1, USED=0.
    const mark = kind === WATCH_SPLIT ? 3 : (2 << 1) | 1;
    if (kind === WATCH_SPLIT) ring[1] = 3;
    else ring[2 * 8 + 7] = 1 << 15; // AVAIL 0, USED 1: used in the last round, not available now
    let seenAt = 0;
    let resolve!: () => void;
    const called = new Promise<void>((r) => (resolve = r));
    const loop = sys.createKickLoop(1, new Float64Array(1), () => {
      if (loop.kicked[0] === 2 && seenAt === 0) seenAt = performance.now();
      loop.kicked.fill(0);
      loop.marks[0] = -1;
      resolve();
    });
    t.after(() => loop.close());
    loop.addKick(0, kick);
    loop.watch(0, ring, kind);
    loop.marks[0] = mark;
    loop.setPoll(500e6); // a 500 ms window: the write comes inside it
    loop.start();
    const worker = new Worker(
      `const { workerData } = require('node:worker_threads');
       const ring = new Uint16Array(workerData.buffer);
       setTimeout(() => {
         if (workerData.kind === ${WATCH_SPLIT}) Atomics.store(ring, 1, 4);
         else Atomics.store(ring, 2 * 8 + 7, 1 << 7);
       }, 50);`,
      { eval: true, workerData: { buffer: ring.buffer, kind } },
    );
    const start = performance.now();
    const guard = setTimeout(() => resolve(), 3000);
    await called;
    clearTimeout(guard);
    await worker.terminate();
    assert.ok(seenAt > 0, `kind ${kind}: the spin saw the write`);
    assert.ok(seenAt - start < 1500, `kind ${kind}: within the window (${seenAt - start} ms)`);
    assert.ok(loop.stats[KICK_STAT_POLLS]! >= 1);
    assert.equal(loop.stats[KICK_STAT_POLL_HITS], 1);
    assert.equal(sys.eventfdRead(kick), -1, 'nobody kicked');
    loop.close();
    closeSync(kick);
  }
});

test('a spin gives way to timers and thread-pool completions; an unmapped ring is never read', async (ctx) => {
  const kick = eventfd();
  const ring = new Uint16Array(4);
  const loop = sys.createKickLoop(1, new Float64Array(1), () => loop.kicked.fill(0));
  ctx.after(() => loop.close());
  loop.addKick(0, kick);
  loop.watch(0, ring, WATCH_SPLIT);
  loop.marks[0] = 0; // idle, never written: every spin runs its full window
  loop.setPoll(1e9); // 1 s, the longest
  loop.start();
  let t = performance.now();
  await sleep(30);
  const timerLate = performance.now() - t;
  t = performance.now();
  await readFile(ADDON);
  const ioTime = performance.now() - t;
  assert.ok(timerLate < 500, `a 30 ms timer fired after ${timerLate} ms`);
  assert.ok(ioTime < 500, `a thread-pool read took ${ioTime} ms`);
  assert.ok(loop.stats[KICK_STAT_POLLS]! >= 1, 'it did spin');
  assert.equal(loop.stats[KICK_STAT_POLL_HITS], 0);

  // A watch over a mapping that is then unmapped: the loop looks its views up again, finds it detached, and
  // stops watching it (reading it would be a SIGSEGV).
  const fd = sys.memfdCreate('kick-loop-watch', MFD_CLOEXEC);
  sys.fallocate(fd, 0, 0, 4096);
  const mapping = sys.mmap(fd, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, 0);
  const mapped = new Uint16Array(mapping, 0, 8);
  mapped[1] = 5;
  loop.watch(0, mapped, WATCH_SPLIT);
  loop.marks[0] = 5;
  sys.munmap(mapping);
  const polls = loop.stats[KICK_STAT_POLLS]!;
  await sleep(30);
  assert.equal(loop.stats[KICK_STAT_POLLS], polls, 'nothing watched: no spin');
  sys.eventfdWrite(kick, 1);
  await sleep(20);
  assert.equal(loop.stats[KICK_STAT_ABSORBED], 0, 'a kick is a callback again');
  assert.throws(() => loop.watch(0, new Uint8Array(4) as unknown as Uint16Array, WATCH_SPLIT), TypeError);
  assert.throws(() => loop.watch(0, ring, 9), RangeError);
  assert.throws(() => loop.setPoll(-1), RangeError);
  loop.close();
  closeSync(fd);
  closeSync(kick);
});
