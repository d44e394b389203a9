import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import {
  EFD_NONBLOCK,
  EFD_SEMAPHORE,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  MAP_PRIVATE,
  MAP_SHARED,
  PROT_READ,
  PROT_WRITE,
  RWF_DSYNC,
  RWF_NOWAIT,
  UV_READABLE,
  UV_WRITABLE,
  isSystemError,
  systemError,
} from '../../../src/sys/index.js';
import { FakeBinding } from '../../../src/testing/fake-binding.js';

const RW = PROT_READ | PROT_WRITE;

test('eventfd: counter, non-blocking read of 0 gives -1, semaphore mode, overflow', () => {
  const sys = new FakeBinding();
  const efd = sys.eventfd(2, EFD_NONBLOCK);
  assert.equal(sys.eventfdRead(efd), 2);
  assert.equal(sys.eventfdRead(efd), -1);
  sys.eventfdWrite(efd, 2 ** 40);
  sys.eventfdWrite(efd, 3);
  assert.equal(sys.eventfdCounter(efd), 2 ** 40 + 3);
  assert.equal(sys.eventfdRead(efd), 2 ** 40 + 3);

  const sem = sys.eventfd(2, EFD_NONBLOCK | EFD_SEMAPHORE);
  assert.equal(sys.eventfdRead(sem), 1);
  assert.equal(sys.eventfdRead(sem), 1);
  assert.equal(sys.eventfdRead(sem), -1);

  const buf = new Uint8Array(8);
  new DataView(buf.buffer).setBigUint64(0, 0xffff_ffff_ffff_fffen, true);
  assert.equal(sys.write(efd, buf), 8);
  assert.throws(
    () => sys.eventfdWrite(efd, 1),
    (e) => isSystemError(e, 'EAGAIN') && e.syscall === 'write',
  );
  assert.equal(sys.read(efd, buf), 8);
  assert.equal(new DataView(buf.buffer).getBigUint64(0, true), 0xffff_ffff_ffff_fffen);
  assert.equal(sys.read(efd, buf), -1);

  const blocking = sys.eventfd(0, 0);
  assert.throws(() => sys.eventfdRead(blocking), /would hang/);
  assert.equal(sys.calls.eventfd, 3);
  assert.equal(sys.calls.eventfdWrite, 3);
});

test('closed and unknown fds fail with EBADF', () => {
  const sys = new FakeBinding();
  const efd = sys.eventfd(0, EFD_NONBLOCK);
  assert.ok(sys.isOpen(efd));
  assert.deepEqual(sys.openFds(), [efd]);
  sys.close(efd);
  assert.ok(!sys.isOpen(efd));
  assert.throws(
    () => sys.eventfdRead(efd),
    (e) => isSystemError(e, 'EBADF') && e.errno === -9,
  );
  assert.throws(
    () => sys.close(efd),
    (e) => isSystemError(e, 'EBADF'),
  );
  assert.throws(
    () => sys.ioctl(3, 0, 0),
    (e) => isSystemError(e, 'EBADF') && e.syscall === 'ioctl',
  );
});

test('ioctl goes to onIoctl (default ENOTTY) or to a device handler, with the request unsigned', () => {
  const sys = new FakeBinding();
  const efd = sys.eventfd(0, 0);
  assert.throws(
    () => sys.ioctl(efd, 0x80086601, 0),
    (e) => isSystemError(e, 'ENOTTY') && e.message === 'ENOTTY: inappropriate ioctl for device, ioctl',
  );
  const seen: number[] = [];
  sys.onIoctl = (fd, request, arg) => {
    assert.equal(fd, efd);
    seen.push(request);
    if (arg instanceof Uint8Array) arg[0] = 42;
    return 7;
  };
  const arg = new Uint8Array(4);
  assert.equal(sys.ioctl(efd, 0x80086601 | 0, arg), 7);
  assert.deepEqual(seen, [0x80086601]);
  assert.equal(arg[0], 42);

  const dev = sys.openDevice({ ioctl: (request) => request & 0xff });
  assert.equal(sys.ioctl(dev, 0xc0de_0011, 0), 0x11);
  assert.equal(sys.calls.ioctl, 3);
});

test('memfd: fallocate sizes it, mappings share memory with each other and with memfdBytes()', () => {
  const sys = new FakeBinding();
  const fd = sys.memfdCreate('guest', 0);
  sys.fallocate(fd, 0, 0, 4096);
  const a = sys.mmap(fd, 4096, RW, MAP_SHARED, 0);
  const b = sys.mmap(fd, 4096, RW, MAP_SHARED, 0);
  new Uint16Array(a)[10] = 0xbeef;
  assert.equal(new Uint16Array(b)[10], 0xbeef);
  assert.equal(new Uint16Array(sys.memfdBytes(fd).buffer)[10], 0xbeef);
  const priv = sys.mmap(fd, 4096, RW, MAP_PRIVATE, 0);
  new Uint8Array(priv)[0] = 1;
  assert.equal(new Uint8Array(a)[0], 0, 'a private mapping is a copy');
  assert.throws(() => sys.mmap(fd, 100, RW, MAP_SHARED, 0), /whole memfds/);
  assert.throws(() => sys.fallocate(fd, 0, 0, 8192), /while it is mapped/);

  const view = new Uint8Array(a);
  sys.munmap(a);
  assert.equal(view.byteLength, 4096, 'still mapped once');
  sys.munmap(b);
  assert.equal(view.byteLength, 0, 'detached after the last munmap');
  assert.equal(view[20], undefined);
  sys.munmap(a); // no-op
  assert.throws(() => sys.munmap(new ArrayBuffer(8)), TypeError);
  // the file kept its contents and can grow again
  sys.fallocate(fd, 0, 0, 8192);
  const bytes = sys.memfdBytes(fd);
  assert.equal(bytes.byteLength, 8192);
  assert.equal(new Uint16Array(bytes.buffer)[10], 0xbeef);
  assert.equal(sys.calls.mmap, 4);
  assert.equal(sys.calls.munmap, 4);
});

test('memfd: read/write at the file position, punch hole zeroes, mmap of a non-memfd is ENODEV', () => {
  const sys = new FakeBinding();
  const fd = sys.memfdCreate('f', 0);
  assert.equal(sys.write(fd, new Uint8Array([1, 2, 3, 4, 5, 6])), 6);
  sys.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 1, 2);
  assert.deepEqual([...sys.memfdBytes(fd)], [1, 0, 0, 4, 5, 6]);
  assert.throws(
    () => sys.fallocate(fd, FALLOC_FL_PUNCH_HOLE, 0, 1),
    (e) => isSystemError(e, 'ENOTSUP'),
  );
  assert.equal(sys.read(fd, new Uint8Array(4)), 0, 'at end of file');
  const efd = sys.eventfd(0, 0);
  assert.throws(
    () => sys.mmap(efd, 8, RW, MAP_SHARED, 0),
    (e) => isSystemError(e, 'ENODEV'),
  );
});

test('watchers fire while the fd is readable (level-triggered) and stop on stop()/close()', async () => {
  const sys = new FakeBinding();
  const efd = sys.eventfd(0, EFD_NONBLOCK);
  const seen: Array<[number, number]> = [];
  const watcher = sys.createFdWatcher(efd, (status, events) => seen.push([status, events]));
  watcher.start(UV_READABLE);
  assert.equal(sys.activeWatchers(), 1);
  await sleep(5);
  assert.equal(seen.length, 0);
  sys.eventfdWrite(efd, 1);
  await sleep(10);
  assert.ok(seen.length >= 3, `fired ${seen.length} times`);
  assert.deepEqual(seen[0], [0, UV_READABLE]);
  watcher.stop();
  const stoppedAt = seen.length;
  await sleep(5);
  assert.equal(seen.length, stoppedAt);
  sys.eventfdRead(efd);
  watcher.start(UV_READABLE | UV_WRITABLE);
  await sleep(5);
  assert.deepEqual(seen.at(-1), [0, UV_WRITABLE]);
  watcher.close();
  assert.equal(sys.activeWatchers(), 0);
  assert.throws(() => watcher.start(UV_READABLE), /closed/);
});

test('a watcher that consumes the event fires once per write; nextTick runs between callbacks', async () => {
  const sys = new FakeBinding();
  const a = sys.eventfd(0, EFD_NONBLOCK);
  const b = sys.eventfd(0, EFD_NONBLOCK);
  const order: string[] = [];
  const watchers = [a, b].map((fd, i) => {
    const w = sys.createFdWatcher(fd, () => {
      sys.eventfdRead(fd);
      order.push(`cb${i}`);
      process.nextTick(() => order.push(`tick${i}`));
    });
    w.start(UV_READABLE);
    return w;
  });
  sys.eventfdWrite(a, 1);
  sys.eventfdWrite(b, 1);
  await sleep(10);
  assert.deepEqual(order, ['cb0', 'tick0', 'cb1', 'tick1']);
  for (const w of watchers) w.close();
});

test('createFdWatcher: EBADF, EPERM for a memfd, EEXIST for a second started watcher', () => {
  const sys = new FakeBinding();
  assert.throws(
    () => sys.createFdWatcher(99, () => {}),
    (e) => isSystemError(e, 'EBADF'),
  );
  assert.throws(
    () => sys.createFdWatcher(sys.memfdCreate('m', 0), () => {}),
    (e) => isSystemError(e, 'EPERM'),
  );
  const efd = sys.eventfd(0, EFD_NONBLOCK);
  const w = sys.createFdWatcher(efd, () => {});
  w.start(UV_READABLE);
  assert.throws(
    () => sys.createFdWatcher(efd, () => {}),
    (e) => isSystemError(e, 'EEXIST'),
  );
  w.close();
  sys.createFdWatcher(efd, () => {}).close();
});

test('devices: read/write handlers, setReadable drives watchers, missing handlers are EINVAL', async () => {
  const sys = new FakeBinding();
  const queue: number[][] = [[1, 2], [3]];
  const written: number[][] = [];
  const dev = sys.openDevice(
    {
      read: (buffer) => {
        const next = queue.shift();
        if (next === undefined) return -1;
        buffer.set(next);
        if (queue.length === 0) sys.setReadable(dev, false);
        return next.length;
      },
      write: (buffer) => {
        written.push([...buffer]);
        return buffer.byteLength;
      },
    },
    { readable: true },
  );
  const got: number[][] = [];
  const watcher = sys.createFdWatcher(dev, () => {
    const buf = new Uint8Array(16);
    const n = sys.read(dev, buf);
    if (n >= 0) got.push([...buf.subarray(0, n)]);
  });
  watcher.start(UV_READABLE);
  await sleep(10);
  assert.deepEqual(got, [[1, 2], [3]]);
  assert.equal(sys.calls.read, 2, 'no callbacks once unreadable');
  queue.push([9]);
  sys.setReadable(dev);
  await sleep(10);
  assert.deepEqual(got.at(-1), [9]);
  assert.equal(sys.write(dev, new Uint8Array([7, 8])), 2);
  assert.deepEqual(written, [[7, 8]]);
  watcher.close();

  const readOnly = sys.openDevice({ read: () => 0 });
  assert.throws(
    () => sys.write(readOnly, new Uint8Array(1)),
    (e) => isSystemError(e, 'EINVAL'),
  );
});

test('netlinkSocket: EPROTONOSUPPORT by default, else a device served by onNetlinkSocket', () => {
  const sys = new FakeBinding();
  assert.throws(
    () => sys.netlinkSocket(16, true),
    (e) => isSystemError(e, 'EPROTONOSUPPORT') && e.syscall === 'socket',
  );
  const sent: Uint8Array[] = [];
  sys.onNetlinkSocket = (protocol, nonBlocking) => {
    assert.equal(protocol, 16);
    assert.equal(nonBlocking, true);
    return {
      write: (b) => (sent.push(b.slice()), b.byteLength),
      read: () => -1,
    };
  };
  const fd = sys.netlinkSocket(16, true);
  assert.equal(sys.send(fd, new Uint8Array(20)), 20);
  assert.equal(sent.length, 1);
  assert.equal(sys.recv(fd, new Uint8Array(64)), -1);
  assert.throws(
    () => sys.send(sys.eventfd(0, 0), new Uint8Array(1)),
    (e) => isSystemError(e, 'ENOTSOCK'),
  );
  assert.equal(sys.calls.netlinkSocket, 2);
});

test('with keepEventLoopAlive, an active ref’d watcher keeps the loop alive; unref() does not', () => {
  // ref'd timers, as the event loop counts them
  const timers = () => process.getActiveResourcesInfo().filter((name) => name === 'Timeout').length;
  const base = timers();
  const plain = new FakeBinding();
  const idle = plain.createFdWatcher(plain.eventfd(0, EFD_NONBLOCK), () => {});
  idle.start(UV_READABLE);
  assert.equal(timers(), base, 'by default the fake does not hold the loop');
  idle.close();

  const sys = new FakeBinding({ keepEventLoopAlive: true });
  const efd = sys.eventfd(0, EFD_NONBLOCK);
  const w = sys.createFdWatcher(efd, () => {});
  try {
    w.start(UV_READABLE);
    assert.equal(timers(), base + 1);
    w.unref();
    assert.equal(timers(), base);
    w.ref();
    assert.equal(timers(), base + 1);
    w.stop();
    assert.equal(timers(), base);
    w.start(UV_READABLE);
  } finally {
    w.close();
  }
  assert.equal(timers(), base);
});

test('fence() is counted', () => {
  const sys = new FakeBinding();
  sys.fence();
  assert.equal(sys.calls.fence, 1);
});

test('memfd: preadv2/pwritev2 at an offset (growing it), at the position with -1, IOV_MAX, flags', () => {
  const sys = new FakeBinding();
  const fd = sys.memfdCreate('vectored', 0);
  assert.equal(sys.pwritev2(fd, [Uint8Array.of(1, 2), Uint8Array.of(3)], 4, RWF_DSYNC), 3);
  assert.deepEqual(sys.memfdBytes(fd), Uint8Array.of(0, 0, 0, 0, 1, 2, 3));
  const a = new Uint8Array(3);
  const b = new Uint8Array(10);
  assert.equal(sys.preadv2(fd, [a, b.subarray(2)], 3, 0), 4, 'short at the end of the file');
  assert.deepEqual(a, Uint8Array.of(0, 1, 2));
  assert.deepEqual(b.subarray(2, 3), Uint8Array.of(3));
  assert.equal(sys.preadv2(fd, [b], 7, 0), 0);
  // -1: at the file position, which moves
  assert.equal(sys.preadv2(fd, [a], -1, 0), 3);
  assert.equal(sys.preadv2(fd, [a], -1, 0), 3);
  assert.deepEqual(a, Uint8Array.of(0, 1, 2));
  const pieces = Array.from({ length: 1500 }, () => new Uint8Array(2));
  assert.equal(sys.pwritev2(fd, pieces, 0, 0), 2048, 'at most IOV_MAX buffers');
  assert.throws(
    () => sys.preadv2(fd, [a], 0, 1 << 20),
    (e) => isSystemError(e, 'ENOTSUP') && e.errno === -95 && e.syscall === 'preadv2',
  );
  assert.throws(
    () => sys.pwritev2(sys.eventfd(0, 0), [a], 0, 0),
    (e) => isSystemError(e, 'ESPIPE'),
  );
  assert.throws(
    () => sys.preadv2(99, [a], 0, 0),
    (e) => isSystemError(e, 'EBADF'),
  );
  assert.equal(sys.calls.preadv2, 6);
  assert.equal(sys.calls.pwritev2, 3);
});

test('RWF_NOWAIT: onNowait makes a call complete, short, -1 (EAGAIN) or refused', () => {
  const sys = new FakeBinding();
  const fd = sys.memfdCreate('nowait', 0);
  sys.fallocate(fd, 0, 0, 4096);
  const asked: [boolean, number, number][] = [];
  let allow = Infinity;
  sys.onNowait = (_fd, write, offset, length) => {
    asked.push([write, offset, length]);
    return Math.min(allow, length);
  };
  const buf = new Uint8Array(1024).fill(9);
  assert.equal(sys.pwritev2(fd, [buf], 512, RWF_NOWAIT), 1024);
  allow = 100;
  assert.equal(sys.preadv2(fd, [new Uint8Array(600), new Uint8Array(600)], 1000, RWF_NOWAIT), 100);
  allow = 0;
  assert.equal(sys.preadv2(fd, [buf], 0, RWF_NOWAIT), -1);
  assert.equal(sys.pwritev2(fd, [buf], 0, RWF_NOWAIT), -1);
  assert.equal(sys.preadv2(fd, [buf], 0, 0), 1024, 'without RWF_NOWAIT onNowait is not asked');
  assert.deepEqual(asked, [
    [true, 512, 1024],
    [false, 1000, 1200],
    [false, 0, 1024],
    [true, 0, 1024],
  ]);
  sys.onNowait = () => {
    throw systemError('EOPNOTSUPP', 'pwritev2');
  };
  assert.throws(
    () => sys.pwritev2(fd, [buf], 0, RWF_NOWAIT),
    (e) => isSystemError(e, 'EOPNOTSUPP'),
  );
  assert.deepEqual(sys.memfdBytes(fd).subarray(510, 514), Uint8Array.of(0, 0, 9, 9));
});
