// The native addon against the real kernel (no VDUSE needed): mmap/munmap, ioctl, eventfd, fallocate,
// netlink. Needs build/Release/vduse_native.node (built by `npm ci` / `npm run build:native`).

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, fstatSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';

import {
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  MAP_PRIVATE,
  MAP_SHARED,
  MFD_CLOEXEC,
  PROT_READ,
  PROT_WRITE,
  RWF_DSYNC,
  RWF_NOWAIT,
  findPackageRoot,
  isSystemError,
  loadNativeBinding,
} from '../../../src/sys/index.js';

const sys = loadNativeBinding();
const ADDON = join(findPackageRoot(), 'build/Release/vduse_native.node');
const RW = PROT_READ | PROT_WRITE;

const FIONREAD = 0x541b;
const FIONBIO = 0x5421;
/** _IOR('f', 1, long): bit 31 set. */
const FS_IOC_GETFLAGS = 0x80086601;

function memfd(size: number, name = 'vduse-ts-test'): number {
  const fd = sys.memfdCreate(name, MFD_CLOEXEC);
  if (size > 0) sys.fallocate(fd, 0, 0, size);
  return fd;
}

/** Runs `code` (CommonJS; `addon` is the loaded addon) in a child node; returns its stdout. */
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

test('loadNativeBinding is cached and finds the package root', () => {
  assert.equal(loadNativeBinding(), sys);
  assert.match(ADDON, /build\/Release\/vduse_native\.node$/);
});

test('a memfd mapped twice shows writes through both mappings', () => {
  const fd = memfd(8192);
  const a = sys.mmap(fd, 8192, RW, MAP_SHARED, 0);
  const b = sys.mmap(fd, 8192, RW, MAP_SHARED, 0);
  assert.ok(a instanceof ArrayBuffer);
  assert.equal(a.byteLength, 8192);
  assert.notEqual(a, b);
  new Uint16Array(a)[2049] = 0xbeef;
  assert.equal(new Uint16Array(b)[2049], 0xbeef);
  new DataView(b).setUint32(100, 0x12345678, true);
  assert.equal(new DataView(a).getUint32(100, true), 0x12345678);
  // a mapping at a file offset sees the same bytes
  const tail = sys.mmap(fd, 4096, PROT_READ, MAP_SHARED, 4096);
  assert.equal(new Uint16Array(tail)[1], 0xbeef);
  // a private mapping does not write through
  const priv = sys.mmap(fd, 8192, RW, MAP_PRIVATE, 0);
  new Uint8Array(priv)[0] = 7;
  assert.equal(new Uint8Array(a)[0], 0);
  for (const m of [a, b, tail, priv]) sys.munmap(m);
  closeSync(fd);
});

test('munmap detaches every view; reading them is harmless; munmap twice is a no-op', () => {
  const fd = memfd(4096);
  const ab = sys.mmap(fd, 4096, RW, MAP_SHARED, 0);
  const bytes = new Uint8Array(ab);
  const words = new Uint32Array(ab, 8, 4);
  const view = new DataView(ab);
  bytes[8] = 1;
  assert.equal(words[0], 1);
  sys.munmap(ab);
  assert.equal(ab.byteLength, 0);
  assert.equal(bytes.byteLength, 0);
  assert.equal(words.length, 0);
  assert.equal(bytes[8], undefined);
  assert.equal(words[0], undefined);
  assert.throws(() => view.getUint8(0), TypeError);
  sys.munmap(ab);
  // the file still holds the data
  const again = sys.mmap(fd, 4096, PROT_READ, MAP_SHARED, 0);
  assert.equal(new Uint8Array(again)[8], 1);
  sys.munmap(again);
  closeSync(fd);
});

test('munmap rejects an ArrayBuffer that mmap did not return', () => {
  assert.throws(() => sys.munmap(new ArrayBuffer(16)), TypeError);
});

test('mmap failures are system errors', () => {
  const fd = memfd(4096);
  assert.throws(
    () => sys.mmap(fd, 4096, RW, 0 /* neither shared nor private */, 0),
    (e) => isSystemError(e, 'EINVAL') && e.syscall === 'mmap' && e.errno === -22,
  );
  closeSync(fd);
});

test('the GC finalizer unmaps dropped mappings, and not the ones munmap already unmapped', () => {
  const child = runChild(
    `
    const NAME = 'vduse-gc-' + process.pid;
    const count = () => require('fs').readFileSync('/proc/self/maps', 'utf8').split('\\n').filter((l) => l.includes(NAME)).length;
    const settle = async () => { for (let i = 0; i < 5; i++) { global.gc(); await new Promise((r) => setImmediate(r)); } };
    (async () => {
      const fd = addon.memfdCreate(NAME, 1);
      addon.fallocate(fd, 0, 0, 65536);
      let maps = [];
      for (let i = 0; i < 100; i++) maps.push(addon.mmap(fd, 4096 * (1 + (i % 4)), 3, 1, 0));
      const before = count();
      maps = null;
      await settle();
      const after = count();
      // unmapped by munmap, then its address reused by a new mapping: the finalizer of the old one
      // must not unmap the new one
      let old = addon.mmap(fd, 65536, 3, 1, 0);
      addon.munmap(old);
      const keep = addon.mmap(fd, 65536, 3, 1, 0);
      old = null;
      await settle();
      new Uint8Array(keep)[65535] = 9;
      console.log(JSON.stringify({ before, after, keep: count(), value: new Uint8Array(keep)[65535] }));
    })();
    `,
    ['--expose-gc'],
  );
  assert.equal(child.status, 0, child.stderr);
  const result = JSON.parse(child.stdout) as { before: number; after: number; keep: number; value: number };
  assert.equal(result.before, 100);
  assert.equal(result.after, 0);
  assert.equal(result.keep, 1);
  assert.equal(result.value, 9);
});

test('system errors carry code, errno and syscall; ioctl on a memfd is ENOTTY', () => {
  const fd = memfd(0);
  let caught: unknown;
  try {
    sys.ioctl(fd, 0x1234, 0);
  } catch (e) {
    caught = e;
  }
  assert.ok(isSystemError(caught, 'ENOTTY'));
  assert.equal(caught.errno, -25);
  assert.equal(caught.syscall, 'ioctl');
  assert.equal(caught.message, 'ENOTTY: inappropriate ioctl for device, ioctl');
  closeSync(fd);
  assert.throws(
    () => sys.eventfdRead(fd),
    (e) => isSystemError(e, 'EBADF') && e.errno === -9 && e.syscall === 'read',
  );
});

test('ioctl requests >= 2^31 reach the kernel as unsigned numbers', () => {
  const fd = memfd(4096);
  const flags = Buffer.alloc(8, 0xff);
  assert.equal(sys.ioctl(fd, FS_IOC_GETFLAGS, flags), 0);
  assert.notDeepEqual([...flags], new Array<number>(8).fill(0xff), 'the kernel wrote the flags');
  // the same request as a negative int32 (what `|` produces) means the same thing
  assert.equal(sys.ioctl(fd, FS_IOC_GETFLAGS | 0, Buffer.alloc(8)), 0);
  // an unknown request with bit 31 set is "no such ioctl", not EINVAL from a mangled number
  assert.throws(
    () => sys.ioctl(fd, 0xc0dec0de, Buffer.alloc(64)),
    (e) => isSystemError(e, 'ENOTTY'),
  );
  closeSync(fd);
});

test('ioctl passes the data pointer of a Uint8Array (with its byteOffset) and integer arguments', () => {
  const fd = memfd(12345);
  const backing = new Uint8Array(16).fill(0xaa);
  const arg = backing.subarray(4, 8);
  assert.equal(sys.ioctl(fd, FIONREAD, arg), 0);
  assert.equal(new DataView(backing.buffer).getInt32(4, true), 12345);
  assert.equal(backing[0], 0xaa);
  assert.equal(backing[8], 0xaa);
  closeSync(fd);

  // FIONBIO makes a blocking eventfd non-blocking: a read then returns -1 instead of hanging.
  const efd = sys.eventfd(0, EFD_CLOEXEC);
  const on = new Uint8Array(12);
  new DataView(on.buffer).setInt32(8, 1, true);
  sys.ioctl(efd, FIONBIO, on.subarray(8));
  assert.equal(sys.eventfdRead(efd), -1);
  closeSync(efd);
});

test('eventfd counter round trip, EFD_NONBLOCK, and read/write returning -1 on EAGAIN', () => {
  const efd = sys.eventfd(3, EFD_NONBLOCK | EFD_CLOEXEC);
  assert.equal(sys.eventfdRead(efd), 3);
  assert.equal(sys.eventfdRead(efd), -1);
  sys.eventfdWrite(efd, 2 ** 40 + 1);
  sys.eventfdWrite(efd, 1);
  assert.equal(sys.eventfdRead(efd), 2 ** 40 + 2);

  const buf = new Uint8Array(8);
  assert.equal(sys.read(efd, buf), -1);
  new DataView(buf.buffer).setBigUint64(0, 5n, true);
  assert.equal(sys.write(efd, buf), 8);
  // would overflow the counter: EAGAIN on a non-blocking eventfd
  new DataView(buf.buffer).setBigUint64(0, 0xffff_ffff_ffff_fffen, true);
  assert.equal(sys.write(efd, buf), -1);
  buf.fill(0);
  assert.equal(sys.read(efd, buf), 8);
  assert.equal(new DataView(buf.buffer).getBigUint64(0, true), 5n);
  assert.throws(
    () => sys.read(efd, new Uint8Array(4)),
    (e) => isSystemError(e, 'EINVAL'),
  );
  closeSync(efd);
});

test('fallocate punches a hole into a memfd', () => {
  const size = 1 << 20;
  const fd = memfd(size);
  const ab = sys.mmap(fd, size, RW, MAP_SHARED, 0);
  new Uint8Array(ab).fill(0x5a);
  const before = fstatSync(fd);
  sys.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, size / 4, size / 2);
  const after = fstatSync(fd);
  assert.equal(after.size, size);
  assert.ok(after.blocks <= before.blocks - size / 2 / 512, `${before.blocks} -> ${after.blocks} blocks`);
  const bytes = new Uint8Array(ab);
  assert.equal(bytes[size / 4 - 1], 0x5a);
  assert.ok(bytes.subarray(size / 4, (size * 3) / 4).every((b) => b === 0));
  assert.equal(bytes[(size * 3) / 4], 0x5a);
  sys.munmap(ab);
  assert.throws(
    () => sys.fallocate(fd, FALLOC_FL_PUNCH_HOLE, 0, 4096),
    (e) => isSystemError(e, 'ENOTSUP') && e.errno === -95 && e.syscall === 'fallocate',
  );
  closeSync(fd);
});

const tempDir = mkdtempSync(join(tmpdir(), 'vduse-ts-addon-'));
after(() => rmSync(tempDir, { recursive: true, force: true }));

function pattern(length: number, seed: number): Uint8Array {
  return Uint8Array.from({ length }, (_, i) => (i * 7 + seed) & 0xff);
}

test('preadv2/pwritev2: vectored I/O at an offset, buffers with a byteOffset, short reads at the end', () => {
  const file = join(tempDir, 'vectored.raw');
  writeFileSync(file, new Uint8Array(8192));
  const fd = openSync(file, 'r+');
  try {
    const data = pattern(3000, 1);
    const backing = new Uint8Array(4000);
    backing.set(data.subarray(1000), 500);
    // two buffers, the second a view at byteOffset 500 of a larger buffer
    assert.equal(sys.pwritev2(fd, [data.subarray(0, 1000), backing.subarray(500, 2500)], 4096, 0), 3000);
    assert.deepEqual(new Uint8Array(readFileSync(file)).subarray(4096, 7096), data);
    const a = new Uint8Array(100);
    const b = new Uint8Array(4000).subarray(1000, 3900);
    assert.equal(sys.preadv2(fd, [a, b], 4096, 0), 3000);
    assert.deepEqual(a, data.subarray(0, 100));
    assert.deepEqual(b, data.subarray(100));
    // at the end of the file: short, then 0
    assert.equal(sys.preadv2(fd, [new Uint8Array(4096)], 6000, 0), 2192);
    assert.equal(sys.preadv2(fd, [new Uint8Array(4096)], 8192, 0), 0);
    assert.equal(sys.preadv2(fd, [], 0, 0), 0);
    // offset -1: at the file position, which moves
    const head = new Uint8Array(4096);
    assert.equal(sys.preadv2(fd, [head], -1, 0), 4096);
    assert.equal(sys.preadv2(fd, [head.subarray(0, 10)], -1, 0), 10);
    assert.deepEqual(head.subarray(0, 10), data.subarray(0, 10));
    // RWF_DSYNC is a flag every filesystem takes
    assert.equal(sys.pwritev2(fd, [data.subarray(0, 512)], 0, RWF_DSYNC), 512);
  } finally {
    closeSync(fd);
  }
});

test('preadv2/pwritev2 take at most IOV_MAX buffers per call (a short count), any TypedArray kind', () => {
  const file = join(tempDir, 'iov-max.raw');
  writeFileSync(file, new Uint8Array(0));
  const fd = openSync(file, 'r+');
  try {
    const pieces = Array.from({ length: 1500 }, (_, i) => new Uint8Array(4).fill(i & 0xff));
    assert.equal(sys.pwritev2(fd, pieces, 0, 0), 1024 * 4);
    assert.equal(fstatSync(fd).size, 4096);
    const words = new Uint32Array(2);
    assert.equal(sys.preadv2(fd, [words as unknown as Uint8Array], 4092, 0), 4);
    assert.equal(words[0], 0xffffffff);
  } finally {
    closeSync(fd);
  }
});

test('preadv2 with RWF_NOWAIT returns -1 where a plain read would block (an empty blocking eventfd)', () => {
  const efd = sys.eventfd(0, EFD_CLOEXEC); // blocking: a plain read would hang
  try {
    const counter = new Uint8Array(8);
    assert.equal(sys.preadv2(efd, [counter], -1, RWF_NOWAIT), -1);
    sys.eventfdWrite(efd, 5);
    assert.equal(sys.preadv2(efd, [counter], -1, RWF_NOWAIT), 8);
    assert.equal(new DataView(counter.buffer).getBigUint64(0, true), 5n);
  } finally {
    closeSync(efd);
  }
});

test('preadv2/pwritev2 errors are system errors; unknown flags are EOPNOTSUPP', () => {
  const file = join(tempDir, 'errors.raw');
  writeFileSync(file, new Uint8Array(4096));
  const fd = openSync(file, 'r');
  try {
    assert.throws(
      () => sys.preadv2(fd, [new Uint8Array(8)], 0, 1 << 24),
      (e) => isSystemError(e, 'ENOTSUP') && e.errno === -95 && e.syscall === 'preadv2',
    );
    assert.throws(
      () => sys.pwritev2(fd, [new Uint8Array(8)], 0, 0),
      (e) => isSystemError(e, 'EBADF') && e.syscall === 'pwritev2',
    );
    assert.throws(() => sys.preadv2(fd, 'x' as unknown as Uint8Array[], 0, 0), TypeError);
    assert.throws(() => sys.preadv2(fd, [7 as unknown as Uint8Array], 0, 0), TypeError);
  } finally {
    closeSync(fd);
  }
  const efd = sys.eventfd(0, EFD_CLOEXEC);
  assert.throws(
    () => sys.preadv2(efd, [new Uint8Array(8)], 0, 0),
    (e) => isSystemError(e, 'ESPIPE'),
  );
  closeSync(efd);
});

test('fence() runs', () => {
  assert.equal(sys.fence(), undefined);
});

// Generic netlink (linux/genetlink.h): ask the controller about its own family.
const NETLINK_GENERIC = 16;
const GENL_ID_CTRL = 0x10;
const NLM_F_REQUEST = 1;
const CTRL_CMD_GETFAMILY = 3;
const CTRL_ATTR_FAMILY_ID = 1;
const CTRL_ATTR_FAMILY_NAME = 2;

function getFamilyRequest(name: string, seq: number): Uint8Array {
  const nameBytes = Buffer.from(`${name}\0`);
  const attrLen = 4 + nameBytes.length;
  const total = 16 + 4 + ((attrLen + 3) & ~3);
  const msg = Buffer.alloc(total);
  msg.writeUInt32LE(total, 0); // nlmsg_len
  msg.writeUInt16LE(GENL_ID_CTRL, 4); // nlmsg_type
  msg.writeUInt16LE(NLM_F_REQUEST, 6); // nlmsg_flags
  msg.writeUInt32LE(seq, 8); // nlmsg_seq
  msg.writeUInt8(CTRL_CMD_GETFAMILY, 16); // genlmsghdr.cmd
  msg.writeUInt8(1, 17); // version
  msg.writeUInt16LE(attrLen, 20); // nla_len
  msg.writeUInt16LE(CTRL_ATTR_FAMILY_NAME, 22); // nla_type
  nameBytes.copy(msg, 24);
  return msg;
}

test('netlinkSocket talks to generic netlink: GETFAMILY "nlctrl" gets a reply', () => {
  const fd = sys.netlinkSocket(NETLINK_GENERIC, true);
  try {
    const reply = Buffer.alloc(8192);
    assert.equal(sys.recv(fd, reply), -1, 'nothing queued yet: would block');
    const request = getFamilyRequest('nlctrl', 42);
    assert.equal(sys.send(fd, request), request.byteLength);
    let n = -1;
    for (let i = 0; i < 100 && n < 0; i++) n = sys.recv(fd, reply);
    assert.ok(n >= 20, `reply of ${n} bytes`);
    assert.equal(reply.readUInt32LE(0), n); // one message
    assert.equal(reply.readUInt16LE(4), GENL_ID_CTRL);
    assert.equal(reply.readUInt32LE(8), 42); // our sequence number
    // walk the attributes for CTRL_ATTR_FAMILY_ID
    let familyId: number | undefined;
    for (let off = 20; off + 4 <= n;) {
      const len = reply.readUInt16LE(off);
      if (len < 4) break;
      if ((reply.readUInt16LE(off + 2) & 0x3fff) === CTRL_ATTR_FAMILY_ID)
        familyId = reply.readUInt16LE(off + 4);
      off += (len + 3) & ~3;
    }
    assert.equal(familyId, GENL_ID_CTRL);
  } finally {
    closeSync(fd);
  }
});

test('netlinkSocket errors are system errors', () => {
  assert.throws(
    () => sys.netlinkSocket(9999, false),
    (e) => isSystemError(e) && e.syscall === 'socket',
  );
});
