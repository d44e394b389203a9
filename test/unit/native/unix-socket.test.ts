// Unix sockets with fd passing through the native addon (vhost-user's transport): listen/connect/accept,
// the path checks of listenUnix, socketpair, SCM_RIGHTS both ways, MSG_CTRUNC.

import assert from 'node:assert/strict';
import { closeSync, fstatSync, mkdtempSync, rmSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';

import { MFD_CLOEXEC, isSystemError, listenUnix, loadNativeBinding } from '../../../src/sys/index.js';
import { FakeBinding } from '../../../src/testing/index.js';

const sys = loadNativeBinding();
const dir = mkdtempSync(join(tmpdir(), 'vduse-ts-unix-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const isOpen = (fd: number): boolean => {
  try {
    fstatSync(fd);
    return true;
  } catch {
    return false;
  }
};

test('listenUnix: mode 0600, connect + accept4, the path checks', () => {
  const path = join(dir, 'a.sock');
  const fd = listenUnix(sys, path);
  try {
    assert.equal(statSync(path).mode & 0o777, 0o600);
    assert.equal(sys.accept(fd), -1, 'nothing waiting');
    const client = sys.unixConnect(path);
    const server = sys.accept(fd);
    assert.ok(server >= 0);
    assert.equal(sys.send(client, Buffer.from('hi')), 2);
    const buf = new Uint8Array(8);
    assert.equal(sys.recv(server, buf), 2);
    assert.equal(Buffer.from(buf.subarray(0, 2)).toString(), 'hi');
    assert.equal(sys.recv(server, buf), -1, 'non-blocking');
    closeSync(client);
    assert.equal(sys.recv(server, buf), 0, 'end');
    closeSync(server);
    // a live socket at the path: EADDRINUSE, left in place
    assert.throws(
      () => listenUnix(sys, path),
      (e) => isSystemError(e, 'EADDRINUSE') && /in use/.test(e.message),
    );
    assert.ok(existsSync(path));
  } finally {
    closeSync(fd);
  }
  // the server is gone: the stale socket is replaced
  const again = listenUnix(sys, path);
  closeSync(again);
  // not a socket: refused, never unlinked
  const file = join(dir, 'file');
  writeFileSync(file, 'keep');
  assert.throws(
    () => listenUnix(sys, file),
    (e) => isSystemError(e, 'EEXIST') && /not a socket/.test(e.message),
  );
  assert.ok(existsSync(file));
  assert.throws(
    () => sys.unixConnect(join(dir, 'none')),
    (e) => isSystemError(e, 'ENOENT'),
  );
  assert.throws(
    () => sys.unixListen('x'.repeat(200), 1, 0o600),
    (e) => isSystemError(e, 'ENAMETOOLONG'),
  );
});

test('sendmsg/recvmsg pass fds; too many fds is EMSGSIZE and closes them', () => {
  const [a, b] = sys.socketPair();
  const m1 = sys.memfdCreate('t1', MFD_CLOEXEC);
  const m2 = sys.memfdCreate('t2', MFD_CLOEXEC);
  try {
    assert.equal(sys.sendmsg(a, Buffer.from([1, 2, 3]), [m1, m2]), 3);
    const buf = new Uint8Array(16);
    const got = sys.recvmsg(b, buf, 8);
    assert.notEqual(got, -1);
    if (got === -1) return;
    assert.equal(got.bytes, 3);
    assert.equal(got.fds.length, 2);
    for (const fd of got.fds) {
      assert.ok(isOpen(fd));
      closeSync(fd);
    }
    assert.equal(sys.recvmsg(b, buf, 8), -1);
    // 2 fds sent, room for 1: refused, and nothing leaks
    sys.sendmsg(a, Buffer.from([9]), [m1, m2]);
    const before = sys.memfdCreate('probe', MFD_CLOEXEC);
    closeSync(before);
    assert.throws(
      () => sys.recvmsg(b, buf, 1),
      (e) => isSystemError(e, 'EMSGSIZE'),
    );
    // the fds that arrived were closed: the next new fd reuses the lowest number again
    const probe = sys.memfdCreate('probe', MFD_CLOEXEC);
    assert.equal(probe, before);
    closeSync(probe);
    assert.throws(
      () => sys.sendmsg(a, Buffer.from([1]), new Array<number>(33).fill(m1)),
      (e) => isSystemError(e, 'EINVAL'),
    );
    closeSync(a);
    const end = sys.recvmsg(b, buf, 8);
    assert.deepEqual(end, { bytes: 0, fds: [] });
  } finally {
    closeSync(m1);
    closeSync(m2);
    closeSync(b);
  }
});

test('the fake binding refuses Unix sockets with EOPNOTSUPP', () => {
  const fake = new FakeBinding();
  assert.throws(
    () => fake.socketPair(),
    (e) => isSystemError(e, 'EOPNOTSUPP'),
  );
  assert.throws(
    () => fake.unixListen('/x', 1, 0o600),
    (e) => isSystemError(e, 'EOPNOTSUPP'),
  );
  assert.throws(
    () => fake.recvmsg(3, new Uint8Array(1), 1),
    (e) => isSystemError(e, 'EOPNOTSUPP'),
  );
  assert.equal(fake.calls.socketPair, 1);
});
