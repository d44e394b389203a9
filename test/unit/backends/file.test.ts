import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it, mock } from 'node:test';

import { BackendError } from '../../../src/backends/backend.js';
import { UsageError } from '../../../src/backends/errors.js';
import { FileBackend } from '../../../src/backends/file-backend.js';
import type { SysBinding } from '../../../src/sys/binding.js';
import { systemError } from '../../../src/sys/errors.js';
import { loadNativeBinding } from '../../../src/sys/native.js';

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

const NOTES = '/sys/kernel/notes';

/** Whether `file` opens for reading but not for writing (EACCES). */
function readableOnly(file: string): boolean {
  try {
    fs.closeSync(fs.openSync(file, 'r'));
  } catch {
    return false;
  }
  try {
    fs.closeSync(fs.openSync(file, 'r+'));
    return false;
  } catch (error) {
    return (error as { code?: string }).code === 'EACCES';
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

  it(
    'falls back to read-only when the file cannot be opened for writing',
    { skip: !readableOnly(NOTES) },
    async () => {
      // /sys/kernel/notes can be read but not opened for writing, even by root.
      const notes: string[] = [];
      const backend = await FileBackend.open({ path: NOTES, log: (m) => notes.push(m) });
      assert.equal(backend.readOnly, true);
      assert.match(notes.join('\n'), /cannot open it for writing \(EACCES\); serving it read-only/);
      await assert.rejects(backend.write(0, [new Uint8Array(512)]), (e: unknown) => {
        return e instanceof BackendError && e.code === 'EROFS';
      });
      await backend.close();
    },
  );

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
    { skip: !fs.existsSync('/dev/loop0') },
    async () => {
      let asked = 0;
      const binding = overriding({
        ioctl: (fd: number, request: number, arg: Uint8Array | number) => {
          if (request === 0x80081272) asked++;
          return loadNativeBinding().ioctl(fd, request, arg);
        },
      });
      const backend = await FileBackend.open({ path: '/dev/loop0', readOnly: true, binding });
      assert.equal(backend.kind, 'block-device');
      assert.equal(asked, 1);
      assert.equal(backend.size % 512, 0);
      await assert.rejects(backend.resize(backend.size + 512), /block device cannot be resized/);
      await backend.close();
    },
  );
});
