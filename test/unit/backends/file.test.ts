import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it, mock } from 'node:test';

import { BackendError } from '../../../src/backends/backend.js';
import { UsageError } from '../../../src/common/errors.js';
import { FileBackend, INLINE_MAX } from '../../../src/backends/file-backend.js';
import { openBackend } from '../../../src/backends/spec.js';
import { RWF_NOWAIT, type SysBinding } from '../../../src/sys/binding.js';
import { isSystemError, systemError } from '../../../src/sys/errors.js';
import { loadNativeBinding } from '../../../src/sys/native.js';
import { FakeBinding } from '../../../src/testing/fake-binding.js';

const KiB = 1024;
const MiB = 1024 * KiB;

let dir = '';
let counter = 0;
const temp = (name = 'disk') => path.join(dir, `${name}-${counter++}.img`);

before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vduse-ts-file-'));
});
after(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

function bytes(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (i * 13 + seed * 101 + (i >> 9)) & 0xff;
  return out;
}

/** The real binding with some calls replaced. */
function overriding(overrides: Partial<SysBinding>): SysBinding {
  const real = loadNativeBinding();
  return new Proxy(real, {
    get(target, key, receiver) {
      if (key in overrides) return overrides[key as keyof SysBinding];
      const value = Reflect.get(target, key, receiver) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
}

/**
 * A 64 KiB file that opens for reading but not for writing (EACCES or EPERM): mode 0444 for a user, immutable
 * (chattr +i) for root. `undo()` makes it removable again. Null where neither can be had.
 */
function readOnlyFile(): { path: string; undo: () => void } | null {
  const file = temp('ro');
  fs.writeFileSync(file, Buffer.alloc(64 * KiB, 7));
  let undo = (): void => {};
  if (process.getuid?.() === 0) {
    if (spawnSync('chattr', ['+i', file]).status !== 0) return null;
    undo = () => void spawnSync('chattr', ['-i', file]);
  } else {
    fs.chmodSync(file, 0o444);
  }
  try {
    fs.closeSync(fs.openSync(file, 'r+'));
    undo();
    return null;
  } catch (error) {
    const code = (error as { code?: string }).code;
    if (code === 'EACCES' || code === 'EPERM') return { path: file, undo };
    undo();
    return null;
  }
}

function blocks(file: string): number {
  return fs.statSync(file).blocks;
}

describe('FileBackend', () => {
  it('creates a file of the given size, writes and reads at positions', async () => {
    const file = temp();
    const backend = await FileBackend.open({ path: file, size: 4 * MiB });
    try {
      assert.equal(backend.kind, 'file');
      assert.equal(backend.created, true);
      assert.equal(backend.size, 4 * MiB);
      assert.equal(fs.statSync(file).size, 4 * MiB);
      const data = bytes(12 * KiB, 1);
      await backend.write(MiB, [data.subarray(0, 5000), data.subarray(5000)]);
      const out = [new Uint8Array(4096), new Uint8Array(8 * KiB)];
      await backend.read(MiB, out);
      assert.deepEqual(out[0], data.subarray(0, 4096));
      assert.deepEqual(out[1], data.subarray(4096));
      const onDisk = fs.readFileSync(file).subarray(MiB, MiB + 12 * KiB);
      assert.deepEqual(new Uint8Array(onDisk), data);
    } finally {
      await backend.close();
    }
  });

  it('uses an existing file as it is and refuses a different size', async () => {
    const file = temp();
    fs.writeFileSync(file, Buffer.alloc(MiB + 100, 7));
    const notes: string[] = [];
    const backend = await FileBackend.open({ path: file, log: (m) => notes.push(m) });
    assert.equal(backend.size, MiB, 'the trailing partial sector is not used');
    assert.equal(backend.created, false);
    assert.match(notes.join('\n'), /not a multiple of 512/);
    await backend.close();
    await assert.rejects(FileBackend.open({ path: file, size: 2 * MiB }), (e: unknown) => {
      assert.ok(e instanceof UsageError);
      assert.match(e.message, /exists with 1048676 bytes, not size=2097152/);
      return true;
    });
  });

  it('gives one-line usage errors for paths it cannot use', async () => {
    await assert.rejects(
      FileBackend.open({ path: path.join(dir, 'missing.img') }),
      /no such file \(add size=SIZE/,
    );
    await assert.rejects(FileBackend.open({ path: dir }), (e: unknown) => e instanceof UsageError);
    await assert.rejects(FileBackend.open({ path: '/dev/null' }), /not a regular file or a block device/);
  });

  it('falls back to read-only when the file cannot be opened for writing', async (t) => {
    const file = readOnlyFile();
    if (file === null) {
      t.skip('no file that opens for reading only (chattr +i or mode 0444)');
      return;
    }
    try {
      const notes: string[] = [];
      const backend = await FileBackend.open({ path: file.path, log: (m) => notes.push(m) });
      assert.equal(backend.readOnly, true);
      assert.equal(backend.size, 64 * KiB);
      assert.match(notes.join('\n'), /cannot open it for writing \((EACCES|EPERM)\); serving it read-only/);
      await assert.rejects(backend.write(0, [new Uint8Array(512)]), (e: unknown) => {
        return e instanceof BackendError && e.code === 'ERR_BACKEND_READ_ONLY' && e.errno === 'EROFS';
      });
      await backend.close();
    } finally {
      file.undo();
    }
  });

  it('refuses an empty file, one shorter than a sector, and procfs/sysfs files, with one line like null:0', async () => {
    const empty = temp('empty');
    fs.writeFileSync(empty, '');
    const short = temp('short');
    fs.writeFileSync(short, Buffer.alloc(100, 1));
    const notes: string[] = [];
    const refused = async (file: string, code: string, message: RegExp): Promise<void> => {
      await assert.rejects(FileBackend.open({ path: file, log: (m) => notes.push(m) }), (e: unknown) => {
        assert.ok(e instanceof UsageError, String(e));
        assert.equal(e.code, code);
        assert.match(e.message, message);
        assert.doesNotMatch(e.message, /\n/);
        return true;
      });
    };
    await refused(empty, 'ERR_BACKEND_EMPTY', /is empty \(0 bytes\); give it a size first/);
    await refused(short, 'ERR_BACKEND_EMPTY', /is empty \(100 bytes, less than one 512-byte sector\)/);
    // stat says 0 bytes, reads give data: not storage.
    await refused(
      '/proc/version',
      'ERR_BACKEND_NOT_STORAGE',
      /\/proc\/version: is on procfs, not a disk image/,
    );
    if (fs.existsSync('/sys/kernel/notes')) {
      await refused('/sys/kernel/notes', 'ERR_BACKEND_NOT_STORAGE', /is on sysfs/);
    }
    // Only the refusals: no "serving it read-only" note for a file that is refused anyway.
    assert.deepEqual(notes, []);
    // The file descriptors were closed and the files left as they were.
    assert.equal(fs.statSync(empty).size, 0);
    assert.equal(fs.statSync(short).size, 100);
    // The same through a spec string, as the CLI opens it.
    await assert.rejects(openBackend('file:/proc/version'), UsageError);
    await assert.rejects(openBackend(`file:${empty}`), /is empty/);
  });

  it('opens read-only when asked', async () => {
    const file = temp();
    fs.writeFileSync(file, Buffer.alloc(MiB, 1));
    const backend = await FileBackend.open({ path: file, readOnly: true });
    assert.equal(backend.readOnly, true);
    await assert.rejects(backend.discard(0, 4096), BackendError);
    const out = new Uint8Array(512);
    await backend.read(0, [out]);
    assert.ok(out.every((b) => b === 1));
    await backend.close();
    await assert.rejects(backend.read(0, [out]), /closed/);
  });

  it('discard punches a hole (st_blocks drops) and the range reads as zeroes', async () => {
    const file = temp();
    const backend = await FileBackend.open({ path: file, size: 4 * MiB });
    await backend.write(0, [bytes(4 * MiB, 2)]);
    await backend.flush();
    const full = blocks(file);
    assert.ok(full >= (4 * MiB) / 512, `allocated: ${full} blocks`);
    await backend.discard(MiB, 2 * MiB);
    const after = blocks(file);
    assert.ok(after <= full - (2 * MiB) / 512, `blocks ${full} -> ${after}`);
    const out = new Uint8Array(4 * MiB);
    await backend.read(0, [out]);
    assert.ok(out.subarray(MiB, 3 * MiB).every((b) => b === 0));
    assert.deepEqual(out.subarray(0, MiB), bytes(4 * MiB, 2).subarray(0, MiB));
    await backend.close();
  });

  it('write-zeroes zeroes the range, and with unmap deallocates it', async () => {
    const file = temp();
    const backend = await FileBackend.open({ path: file, size: 4 * MiB });
    await backend.write(0, [bytes(4 * MiB, 3)]);
    await backend.flush();
    const full = blocks(file);
    await backend.writeZeroes(0, MiB);
    await backend.writeZeroes(2 * MiB, MiB, { unmap: true });
    assert.ok(blocks(file) <= full - MiB / 512, 'the unmapped range was deallocated');
    const out = new Uint8Array(4 * MiB);
    await backend.read(0, [out]);
    const expected = bytes(4 * MiB, 3);
    expected.fill(0, 0, MiB);
    expected.fill(0, 2 * MiB, 3 * MiB);
    assert.deepEqual(out, expected);
    await backend.close();
  });

  it('writes zeroes itself when the filesystem cannot fallocate (EOPNOTSUPP), and discard does nothing', async () => {
    const file = temp();
    let fallocates = 0;
    const binding = overriding({
      fallocate: () => {
        fallocates++;
        throw systemError('EOPNOTSUPP', 'fallocate');
      },
    });
    const notes: string[] = [];
    const backend = await FileBackend.open({ path: file, size: 2 * MiB, binding, log: (m) => notes.push(m) });
    await backend.write(0, [bytes(2 * MiB, 4)]);
    await backend.writeZeroes(4096, 1536 * KiB, { unmap: true });
    assert.equal(fallocates, 2, 'PUNCH_HOLE then ZERO_RANGE were tried');
    await backend.writeZeroes(0, 4096);
    assert.equal(fallocates, 2, 'unsupported modes are not tried again');
    await backend.discard(0, MiB);
    assert.equal(fallocates, 2);
    assert.match(notes.join('\n'), /cannot punch holes; discard does nothing/);
    assert.match(notes.join('\n'), /cannot zero ranges; write-zeroes writes zeroes/);
    const out = new Uint8Array(2 * MiB);
    await backend.read(0, [out]);
    const expected = bytes(2 * MiB, 4);
    expected.fill(0, 0, 4096 + 1536 * KiB);
    assert.deepEqual(out, expected);
    await backend.close();
  });

  it('splits a huge fallocate into 1 GiB steps', async () => {
    const file = temp();
    const calls: [number, number][] = [];
    const real = loadNativeBinding();
    const binding = overriding({
      fallocate: (fd: number, mode: number, offset: number, length: number) => {
        calls.push([offset, length]);
        real.fallocate(fd, mode, offset, length);
      },
    });
    const GiB = 1024 * MiB;
    const backend = await FileBackend.open({ path: file, size: 3 * GiB, binding });
    await backend.discard(512, 2.5 * GiB);
    assert.deepEqual(calls, [
      [512, GiB],
      [512 + GiB, GiB],
      [512 + 2 * GiB, 0.5 * GiB],
    ]);
    await backend.close();
  });

  it('flush calls fdatasync; fua writes too', async (t) => {
    const file = temp();
    const backend = await FileBackend.open({ path: file, size: MiB });
    const spy = t.mock.method(fs, 'fdatasync');
    await backend.flush();
    assert.equal(spy.mock.callCount(), 1);
    await backend.write(0, [new Uint8Array(512)]);
    assert.equal(spy.mock.callCount(), 1);
    await backend.write(0, [new Uint8Array(512)], { fua: true });
    assert.equal(spy.mock.callCount(), 2);
    mock.restoreAll();
    await backend.close();
  });

  it('O_DIRECT: unaligned guest buffers go through a bounce buffer, aligned ones straight through', async () => {
    const file = temp();
    const backend = await FileBackend.open({ path: file, size: 4 * MiB, direct: true });
    assert.ok(backend.directAlignment === 512 || backend.directAlignment === 4096);
    // A buffer at an odd offset of a heap ArrayBuffer is never aligned.
    const heap = new Uint8Array(64 * KiB + 16);
    const unaligned = heap.subarray(16, 16 + 64 * KiB);
    unaligned.set(bytes(64 * KiB, 5));
    await backend.write(0, [unaligned]);
    assert.ok(backend.directStats.bounced >= 1);
    const out = new Uint8Array(64 * KiB + 16).subarray(16);
    await backend.read(0, [out]);
    assert.deepEqual(out, bytes(64 * KiB, 5));
    // Page-aligned memory (a shared mapping) goes straight to the kernel.
    const binding = loadNativeBinding();
    const memfd = binding.memfdCreate('test', 1);
    fs.ftruncateSync(memfd, 64 * KiB);
    const mapping = binding.mmap(memfd, 64 * KiB, 3, 1, 0);
    fs.closeSync(memfd);
    const aligned = new Uint8Array(mapping);
    aligned.set(bytes(64 * KiB, 6));
    const before = backend.directStats.direct;
    await backend.write(MiB, [aligned.subarray(0, 32 * KiB), aligned.subarray(32 * KiB)]);
    assert.equal(backend.directStats.direct, before + 1);
    aligned.fill(0);
    await backend.read(MiB, [aligned]);
    assert.deepEqual(aligned, bytes(64 * KiB, 6));
    binding.munmap(mapping);
    // The data is in the file (read through the page cache).
    const onDisk = new Uint8Array(fs.readFileSync(file));
    assert.deepEqual(onDisk.subarray(0, 64 * KiB), bytes(64 * KiB, 5));
    assert.deepEqual(onDisk.subarray(MiB, MiB + 64 * KiB), bytes(64 * KiB, 6));
    await backend.close();
  });

  it('O_DIRECT: offsets off the direct-I/O alignment use the buffered descriptor', async () => {
    const file = temp();
    const backend = await FileBackend.open({ path: file, size: MiB, direct: true, directAlignment: 4096 });
    const data = bytes(1536, 7);
    await backend.write(512, [data]);
    assert.equal(backend.directStats.buffered, 1);
    const out = new Uint8Array(4096);
    await backend.read(0, [out]);
    assert.deepEqual(out.subarray(512, 2048), data);
    await backend.writeZeroes(1024, 512);
    await backend.read(0, [out]);
    assert.ok(out.subarray(1024, 1536).every((b) => b === 0));
    await backend.close();
  });

  it('handles more buffers than IOV_MAX and short reads at the end of a shrunk file', async () => {
    const file = temp();
    const backend = await FileBackend.open({ path: file, size: 2 * MiB });
    const data = bytes(1500 * 512, 8);
    const pieces = Array.from({ length: 1500 }, (_, i) => data.subarray(i * 512, (i + 1) * 512));
    await backend.write(0, pieces);
    const out = new Uint8Array(1500 * 512);
    await backend.read(
      0,
      Array.from({ length: 1500 }, (_, i) => out.subarray(i * 512, (i + 1) * 512)),
    );
    assert.deepEqual(out, data);
    // Someone truncates the file behind our back: reads past its end give zeroes.
    fs.truncateSync(file, 4096);
    const tail = new Uint8Array(8192).fill(0xee);
    await backend.read(0, [tail]);
    assert.deepEqual(tail.subarray(0, 4096), data.subarray(0, 4096));
    assert.ok(tail.subarray(4096).every((b) => b === 0));
    await backend.close();
  });

  it('resizes a file; a read-only file only to the size it has now', async () => {
    const file = temp();
    const backend = await FileBackend.open({ path: file, size: MiB });
    await backend.resize(3 * MiB);
    assert.equal(backend.size, 3 * MiB);
    assert.equal(fs.statSync(file).size, 3 * MiB);
    await backend.close();
    const reader = await FileBackend.open({ path: file, readOnly: true });
    fs.truncateSync(file, 5 * MiB);
    await assert.rejects(reader.resize(4 * MiB), /cannot be resized/);
    await reader.resize(5 * MiB);
    assert.equal(reader.size, 5 * MiB);
    await reader.close();
  });

  it(
    'gets the size of a block device with BLKGETSIZE64',
    { skip: !fs.existsSync('/dev/loop0') || !fs.existsSync('/sys/block/loop0/size') },
    async () => {
      let asked = 0;
      const binding = overriding({
        ioctl: (fd: number, request: number, arg: Uint8Array | number) => {
          if (request === 0x80081272) asked++;
          return loadNativeBinding().ioctl(fd, request, arg);
        },
      });
      const sectors = Number(fs.readFileSync('/sys/block/loop0/size', 'utf8').trim());
      if (sectors === 0) {
        // A loop device with nothing attached holds 0 bytes: refused like an empty file.
        await assert.rejects(
          FileBackend.open({ path: '/dev/loop0', readOnly: true, binding }),
          (e: unknown) => {
            return (
              e instanceof UsageError &&
              e.code === 'ERR_BACKEND_EMPTY' &&
              /block device|0 bytes/.test(e.message)
            );
          },
        );
        assert.equal(asked, 1);
        return;
      }
      const backend = await FileBackend.open({ path: '/dev/loop0', readOnly: true, binding });
      assert.equal(backend.kind, 'block-device');
      assert.equal(asked, 1);
      assert.equal(backend.size % 512, 0);
      await assert.rejects(backend.resize(backend.size + 512), /block device cannot be resized/);
      await backend.close();
    },
  );
});

/** A memory-backed directory (tmpfs /dev/shm) where the backend picks plain I/O on the loop thread, if any. */
function shmDir(): string | null {
  try {
    if (fs.statfsSync('/dev/shm').type !== 0x01021994) return null;
    if (fs.readFileSync('/proc/swaps', 'utf8').trim().split('\n').length !== 1) return null;
    return fs.mkdtempSync('/dev/shm/vduse-ts-file-');
  } catch {
    return null;
  }
}

interface VectorCall {
  write: boolean;
  offset: number;
  length: number;
  flags: number;
}

/**
 * The real binding with preadv2/pwritev2 recorded; `nowait` decides RWF_NOWAIT calls (whatever the filesystem
 * would say): a byte count to do (fewer than asked makes them short), 0 for EAGAIN (-1), or an error to throw.
 */
function recording(nowait: (call: VectorCall) => number | Error = (call) => call.length) {
  const real = loadNativeBinding();
  const calls: VectorCall[] = [];
  const vector =
    (write: boolean) =>
    (fd: number, buffers: readonly Uint8Array[], offset: number, flags: number): number => {
      const length = buffers.slice(0, 1024).reduce((sum, b) => sum + b.length, 0);
      const call = { write, offset, length, flags };
      if (length > 0) calls.push(call);
      let limit = length;
      if ((flags & RWF_NOWAIT) !== 0 && length > 0) {
        const decision = nowait(call);
        if (decision instanceof Error) throw decision;
        if (decision === 0) return -1;
        limit = decision;
      }
      const cut: Uint8Array[] = [];
      for (const buffer of buffers.slice(0, 1024)) {
        if (limit === 0) break;
        cut.push(buffer.subarray(0, Math.min(limit, buffer.length)));
        limit -= cut.at(-1)!.length;
      }
      // the decision above stands for the filesystem's: the real call goes without RWF_NOWAIT
      const plain = flags & ~RWF_NOWAIT;
      return write ? real.pwritev2(fd, cut, offset, plain) : real.preadv2(fd, cut, offset, plain);
    };
  const binding = overriding({ preadv2: vector(false), pwritev2: vector(true) });
  return { binding, calls };
}

describe('FileBackend on the event-loop thread (RWF_NOWAIT / memory-backed files)', () => {
  it('completes page-cache hits with RWF_NOWAIT on the loop thread, no thread pool', async (t) => {
    const file = temp();
    const { binding, calls } = recording();
    const backend = await FileBackend.open({ path: file, size: MiB, binding });
    try {
      // a non-memory filesystem (the host's /tmp); on tmpfs the mode is 'inline', tested below
      if (backend.inlineModes.read === 'inline') return t.skip(`${dir} is memory-backed`);
      assert.deepEqual(backend.inlineModes, { read: 'nowait', write: 'nowait' });
      const readv = t.mock.method(fs, 'readv');
      const writev = t.mock.method(fs, 'writev');
      const data = bytes(8 * KiB, 11);
      await backend.write(4096, [data.subarray(0, 100), data.subarray(100)]);
      const out = [new Uint8Array(5000), new Uint8Array(8 * KiB - 5000)];
      await backend.read(4096, out);
      assert.deepEqual(Buffer.concat(out), Buffer.from(data));
      assert.deepEqual(calls, [
        { write: true, offset: 4096, length: 8 * KiB, flags: RWF_NOWAIT },
        { write: false, offset: 4096, length: 8 * KiB, flags: RWF_NOWAIT },
      ]);
      assert.equal(readv.mock.callCount(), 0);
      assert.equal(writev.mock.callCount(), 0);
      assert.deepEqual(backend.inlineStats, { done: 2, partial: 0, handedOn: 0 });
      const onDisk = new Uint8Array(fs.readFileSync(file)).subarray(4096, 4096 + 8 * KiB);
      assert.deepEqual(onDisk, data);
    } finally {
      mock.restoreAll();
      await backend.close();
    }
  });

  it('hands a miss (EAGAIN) or the part not in the cache to the thread pool', async (t) => {
    const file = temp();
    let allow = 0;
    const { binding, calls } = recording((call) => Math.min(allow, call.length));
    const backend = await FileBackend.open({ path: file, size: MiB, binding });
    try {
      if (backend.inlineModes.read === 'inline') return t.skip(`${dir} is memory-backed`);
      const readv = t.mock.method(fs, 'readv');
      const writev = t.mock.method(fs, 'writev');
      const data = bytes(16 * KiB, 12);
      await backend.write(0, [data]); // EAGAIN: all in the pool
      assert.equal(writev.mock.callCount(), 1);
      allow = 5000;
      const out = [new Uint8Array(3000), new Uint8Array(16 * KiB - 3000)];
      await backend.read(0, out); // 5000 bytes here, the rest in the pool
      assert.deepEqual(Buffer.concat(out), Buffer.from(data));
      assert.equal(readv.mock.callCount(), 1);
      assert.equal(calls.length, 2);
      assert.deepEqual(backend.inlineStats, { done: 0, partial: 1, handedOn: 1 });
      assert.deepEqual(backend.inlineModes, { read: 'nowait', write: 'nowait' });
    } finally {
      mock.restoreAll();
      await backend.close();
    }
  });

  it('stops asking for RWF_NOWAIT in a direction the filesystem refuses (EOPNOTSUPP)', async (t) => {
    const file = temp();
    const { binding, calls } = recording((call) =>
      call.write ? systemError('EOPNOTSUPP', 'pwritev2') : call.length,
    );
    const backend = await FileBackend.open({ path: file, size: MiB, binding });
    try {
      if (backend.inlineModes.read === 'inline') return t.skip(`${dir} is memory-backed`);
      const data = bytes(4 * KiB, 13);
      for (let i = 0; i < 3; i++) await backend.write(i * 4096, [data]);
      assert.deepEqual(backend.inlineModes, { read: 'nowait', write: 'off' });
      assert.equal(calls.filter((c) => c.write).length, 1, 'asked once');
      const out = new Uint8Array(4096);
      await backend.read(8192, [out]);
      assert.deepEqual(out, data);
      assert.equal(calls.filter((c) => !c.write).length, 1);
    } finally {
      await backend.close();
    }
  });

  it('after 16 misses in a row asks less often (16, 32, ... requests), and again at once after a hit', async (t) => {
    const file = temp();
    let hit = false;
    const { binding, calls } = recording((call) => (hit ? call.length : 0));
    const backend = await FileBackend.open({ path: file, size: MiB, binding });
    try {
      if (backend.inlineModes.read === 'inline') return t.skip(`${dir} is memory-backed`);
      const out = new Uint8Array(512);
      const reads = async (n: number) => {
        for (let i = 0; i < n; i++) await backend.read(0, [out]);
      };
      await reads(16);
      assert.equal(calls.length, 16);
      await reads(16);
      assert.equal(calls.length, 16, 'the next 16 go straight to the pool');
      await reads(1);
      assert.equal(calls.length, 17, 'then one more try, a miss');
      await reads(32);
      assert.equal(calls.length, 17, 'the back-off doubled');
      hit = true;
      await reads(1);
      assert.equal(calls.length, 18);
      await reads(5);
      assert.equal(calls.length, 23, 'a hit ends the back-off');
      assert.equal(backend.inlineStats.done, 6);
    } finally {
      await backend.close();
    }
  });

  it('more than IOV_MAX buffers: in steps of 1024 on the loop thread', async (t) => {
    const file = temp();
    const { binding, calls } = recording();
    const backend = await FileBackend.open({ path: file, size: MiB, binding });
    try {
      if (backend.inlineModes.read === 'inline') return t.skip(`${dir} is memory-backed`);
      const data = bytes(1500 * 128, 14);
      const split = (buffer: Uint8Array) =>
        Array.from({ length: 1500 }, (_, i) => buffer.subarray(i * 128, (i + 1) * 128));
      await backend.write(0, split(data));
      const out = new Uint8Array(data.length);
      await backend.read(0, split(out));
      assert.deepEqual(out, data);
      assert.deepEqual(
        calls.map((c) => [c.write, c.offset, c.length]),
        [
          [true, 0, 1024 * 128],
          [true, 1024 * 128, 476 * 128],
          [false, 0, 1024 * 128],
          [false, 1024 * 128, 476 * 128],
        ],
      );
    } finally {
      await backend.close();
    }
  });

  it('sends requests over INLINE_MAX, O_DIRECT files and nowait: false to the thread pool', async () => {
    const { binding, calls } = recording();
    const big = await FileBackend.open({ path: temp(), size: MiB, binding });
    await big.write(0, [new Uint8Array(INLINE_MAX + 512)]);
    await big.read(0, [new Uint8Array(INLINE_MAX + 512)]);
    assert.equal(calls.length, 0);
    await big.close();
    const direct = await FileBackend.open({ path: temp(), size: MiB, binding, direct: true });
    assert.deepEqual(direct.inlineModes, { read: 'off', write: 'off' });
    await direct.close();
    const off = await FileBackend.open({ path: temp(), size: MiB, binding, nowait: false });
    assert.deepEqual(off.inlineModes, { read: 'off', write: 'off' });
    await off.write(0, [new Uint8Array(4096)]);
    await off.read(0, [new Uint8Array(4096)]);
    assert.equal(calls.length, 0);
    await off.close();
    const file = temp();
    fs.writeFileSync(file, new Uint8Array(MiB));
    const readOnly = await FileBackend.open({ path: file, readOnly: true, binding });
    assert.equal(readOnly.inlineModes.write, 'off');
    assert.notEqual(readOnly.inlineModes.read, 'off');
    await readOnly.close();
  });

  it('works without the loop-thread path when the binding cannot preadv2 on the file (a fake)', async () => {
    const binding = new FakeBinding();
    const backend = await FileBackend.open({ path: temp(), size: MiB, binding });
    assert.deepEqual(backend.inlineModes, { read: 'off', write: 'off' });
    const data = bytes(4096, 15);
    await backend.write(512, [data]);
    const out = new Uint8Array(4096);
    await backend.read(512, [out]);
    assert.deepEqual(out, data);
    await backend.close();
  });

  const shm = shmDir();
  it(
    'on tmpfs (no swap): plain preadv2/pwritev2 on the loop thread; failures fail the request',
    { skip: shm === null },
    async (t) => {
      const file = path.join(shm!, 'disk.img');
      let fail: Error | null = null;
      const real = loadNativeBinding();
      const calls: number[] = [];
      const binding = overriding({
        preadv2: (fd, buffers, offset, flags) => {
          calls.push(flags);
          if (fail !== null) throw fail;
          return real.preadv2(fd, buffers, offset, flags);
        },
        pwritev2: (fd, buffers, offset, flags) => {
          calls.push(flags);
          if (fail !== null) throw fail;
          return real.pwritev2(fd, buffers, offset, flags);
        },
      });
      const backend = await FileBackend.open({ path: file, size: MiB, binding });
      try {
        assert.deepEqual(backend.inlineModes, { read: 'inline', write: 'inline' });
        const readv = t.mock.method(fs, 'readv');
        const writev = t.mock.method(fs, 'writev');
        const data = bytes(64 * KiB, 16);
        await backend.write(MiB - 64 * KiB, [data.subarray(0, 1000), data.subarray(1000)]);
        const out = new Uint8Array(64 * KiB);
        await backend.read(MiB - 64 * KiB, [out]);
        assert.deepEqual(out, data);
        assert.equal(readv.mock.callCount() + writev.mock.callCount(), 0);
        assert.ok(calls.length >= 2 && calls.every((flags) => flags === 0));
        // the file shrank behind our back: the loop thread reads what is there, the rest reads as zeroes
        fs.truncateSync(file, MiB - 32 * KiB);
        out.fill(0xee);
        await backend.read(MiB - 64 * KiB, [out]);
        assert.deepEqual(out.subarray(0, 32 * KiB), data.subarray(0, 32 * KiB));
        assert.ok(out.subarray(32 * KiB).every((b) => b === 0));
        fail = systemError('ENOSPC', 'pwritev2');
        await assert.rejects(backend.write(0, [data]), (e) => isSystemError(e, 'ENOSPC'));
        fail = systemError('EIO', 'preadv2');
        await assert.rejects(backend.read(0, [out]), (e) => isSystemError(e, 'EIO'));
      } finally {
        mock.restoreAll();
        await backend.close();
        fs.rmSync(shm!, { recursive: true, force: true });
      }
    },
  );
});
