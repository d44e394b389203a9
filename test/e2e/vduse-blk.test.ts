// Scenarios of our daemon (`vduse blk`) on the real kernel: virtio_vdpa + virtio_blk over our VDUSE transport.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import {
  TEST_TIMEOUT_MS,
  assertSameData,
  blockDeviceInfo,
  exec,
  execOk,
  makePattern,
  readDirect,
  readFileRange,
  requirePrereqs,
  useCleanup,
  vdpaDevExists,
  vdpaDriver,
  vduseDevExists,
  waitFor,
  waitForBlockDevice,
  writeDirect,
  writeFileRange,
  writeReadVerify,
  tempDir,
} from './lib/index.js';
import { CLI, PREREQS, VduseDaemon, lastStats } from './vduse-daemon.js';

const MiB = 1 << 20;

/** Stop the daemon with SIGINT and check it left nothing behind. */
async function stopClean(d: VduseDaemon, name: string): Promise<string> {
  const e = await d.stop();
  assert.equal(e.code, 0, `daemon exit status; stderr:\n${e.stderr}`);
  assert.equal(vdpaDevExists(name), false, 'vdpa device removed');
  assert.equal(vduseDevExists(name), false, 'VDUSE device destroyed');
  return e.stderr;
}

test(
  'memory backend: block device with the right size, serial and virtio id; data round-trip; clean exit',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, PREREQS)) return;
    const cleanup = useCleanup(t);
    const name = 'e2e-vd-basic';
    const size = 96 * MiB + 4096;
    const d = await VduseDaemon.start(
      ['--name', name, '--backend', `memory:${size}`, '--serial', 'SER-1234'],
      cleanup,
    );
    assert.match(d.path, /^\/dev\/vd[a-z]+$/);
    const dev = blockDeviceInfo(path.basename(d.path));
    assert.equal(dev.sizeBytes, size);
    assert.equal(dev.readOnly, false);
    assert.equal(dev.logicalBlockSize, 512);
    assert.equal(fs.readFileSync(`/sys/block/${dev.name}/serial`, 'utf8').trim(), 'SER-1234');
    assert.equal(
      fs.readFileSync(`/sys/block/${dev.name}/device/device`, 'utf8').trim(),
      '0x0002',
      'virtio-blk',
    );
    assert.equal(vdpaDriver(name), 'virtio_vdpa');
    await writeReadVerify(d.path, 0, 4 * MiB, 'head');
    await writeReadVerify(d.path, size - MiB, MiB, 'tail');
    await assert.rejects(readDirect(d.path, size, 4096), 'reading past the end fails');
    await stopClean(d, name);
    assert.equal(fs.existsSync(`/sys/block/${dev.name}`), false, 'block device gone');
  },
);

test(
  'usage and kernel errors: one line, exit 2 for usage, exit 1 for a taken name',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, PREREQS)) return;
    const cleanup = useCleanup(t);
    const bad = await VduseDaemon.spawn(['blk', '--name', 'x', '--backend', 'memory:64M', '--queues', '0'])
      .exited;
    assert.equal(bad.code, 2);
    assert.equal(bad.stderr.trim().split('\n').length, 1, bad.stderr);
    const badSpec = await VduseDaemon.spawn(['blk', '--name', 'x', '--backend', 'floppy:1M']).exited;
    assert.equal(badSpec.code, 2, badSpec.stderr);
    const name = 'e2e-vd-taken';
    const first = await VduseDaemon.start(['--name', name, '--backend', 'memory:16M'], cleanup);
    const second = await VduseDaemon.spawn(['blk', '--name', name, '--backend', 'memory:16M']).exited;
    assert.equal(second.code, 1);
    assert.match(second.stderr, /already exists/);
    assert.equal(second.stderr.trim().split('\n').length, 1, second.stderr);
    // the first one is unharmed
    await writeReadVerify(first.path, 0, MiB, 'still-there');
    await stopClean(first, name);
  },
);

const fioCases: { backend: string; queues: number; packed: boolean; queueSize?: number }[] = [
  { backend: 'memory', queues: 1, packed: false },
  { backend: 'memory', queues: 2, packed: true },
  { backend: 'file', queues: 2, packed: false },
  { backend: 'file', queues: 1, packed: true },
  // more queues than guest CPUs: the driver leaves some not ready, the daemon serves the others
  { backend: 'memory', queues: 4, packed: true, queueSize: 64 },
];
for (const c of fioCases) {
  test(
    `fio O_DIRECT verify (crc32c): ${c.backend} backend, ${c.queues} queue(s), ${c.packed ? 'packed' : 'split'} ring`,
    { timeout: TEST_TIMEOUT_MS },
    async (t) => {
      if (!requirePrereqs(t, { ...PREREQS, commands: ['fio'] })) return;
      const cleanup = useCleanup(t);
      const name = `e2e-vd-fio-${c.backend}-${c.queues}${c.packed ? 'p' : 's'}`;
      let spec = 'memory:64M';
      let file = '';
      if (c.backend === 'file') {
        file = path.join(tempDir(cleanup, 'vduse-fio'), 'disk.raw');
        spec = `file:${file},size=64M`;
      }
      const args = ['--name', name, '--backend', spec, '--queues', String(c.queues), '--verbose'];
      if (c.packed) args.push('--packed');
      if (c.queueSize !== undefined) args.push('--queue-size', String(c.queueSize));
      const d = await VduseDaemon.start(args, cleanup);
      assert.match(
        d.stderr,
        new RegExp(`${c.packed ? 'packed' : 'split'} ring`),
        'the ring layout that was asked for',
      );
      const mq = fs.readdirSync(`/sys/block/${path.basename(d.path)}/mq`).length;
      const used = Math.min(c.queues, os.cpus().length);
      assert.equal(mq, used, 'blk-mq hardware queues (virtio_blk uses at most one per CPU)');
      assert.match(d.stderr, new RegExp(`driver ready: ${used}/${c.queues} queue`));
      const r = await exec('fio', [
        '--name=verify',
        `--filename=${d.path}`,
        '--direct=1',
        '--ioengine=libaio',
        '--rw=randwrite',
        '--bs=4k',
        '--bsrange=512-64k',
        '--size=24M',
        '--iodepth=16',
        `--numjobs=${Math.min(c.queues, 2)}`,
        '--verify=crc32c',
        '--verify_fatal=1',
        '--verify_state_save=0',
        '--do_verify=1',
        '--group_reporting',
        '--offset_increment=24M',
      ]);
      assert.equal(r.code, 0, `fio failed:\n${r.stdout}\n${r.stderr}`);
      assert.doesNotMatch(r.stdout + r.stderr, /verify: bad|crc32c: verify failed/);
      await stopClean(d, name);
    },
  );
}

test(
  'ext4: mkfs, mount, write files, umount, fsck -f clean, files still there after a remount',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, { ...PREREQS, commands: ['mkfs.ext4', 'e2fsck', 'mount', 'umount'] })) return;
    const cleanup = useCleanup(t);
    const name = 'e2e-vd-ext4';
    const file = path.join(tempDir(cleanup, 'vduse-ext4'), 'disk.raw');
    const d = await VduseDaemon.start(
      ['--name', name, '--backend', `file:${file},size=128M`, '--queues', '2'],
      cleanup,
    );
    await execOk('mkfs.ext4', ['-q', '-F', d.path]);
    const mnt = tempDir(cleanup, 'vduse-mnt');
    await execOk('mount', [d.path, mnt]);
    let mounted = true;
    cleanup.add('umount', async () => {
      if (mounted) await exec('umount', [mnt]);
    });
    const data = crypto.randomBytes(3 * MiB + 123);
    for (let i = 0; i < 5; i++) fs.writeFileSync(path.join(mnt, `f${i}`), data);
    fs.mkdirSync(path.join(mnt, 'dir'));
    fs.writeFileSync(path.join(mnt, 'dir', 'small'), 'hello\n');
    await execOk('sync');
    await execOk('umount', [mnt]);
    mounted = false;
    const fsck = await exec('e2fsck', ['-f', '-n', d.path]);
    assert.equal(fsck.code, 0, `fsck:\n${fsck.stdout}\n${fsck.stderr}`);
    await execOk('mount', [d.path, mnt]);
    mounted = true;
    for (let i = 0; i < 5; i++) assertSameData(data, fs.readFileSync(path.join(mnt, `f${i}`)), `file f${i}`);
    assert.equal(fs.readFileSync(path.join(mnt, 'dir', 'small'), 'utf8'), 'hello\n');
    await execOk('umount', [mnt]);
    mounted = false;
    await stopClean(d, name);
    // the image is a valid ext4 file system on its own
    const fsckFile = await exec('e2fsck', ['-f', '-n', file]);
    assert.equal(fsckFile.code, 0, fsckFile.stdout);
  },
);

test('discard, punch-hole and flush reach the file backend', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  if (!requirePrereqs(t, { ...PREREQS, commands: ['blkdiscard', 'fallocate', 'sync'] })) return;
  const cleanup = useCleanup(t);
  const name = 'e2e-vd-discard';
  const file = path.join(tempDir(cleanup, 'vduse-discard'), 'disk.raw');
  const d = await VduseDaemon.start(
    ['--name', name, '--backend', `file:${file},size=64M`, '--stats'],
    cleanup,
  );
  const dev = path.basename(d.path);
  assert.notEqual(
    fs.readFileSync(`/sys/block/${dev}/queue/discard_max_bytes`, 'utf8').trim(),
    '0',
    'discard offered',
  );
  await writeDirect(d.path, 0, makePattern(16 * MiB, 'fill'));
  await execOk('sync');
  const full = fs.statSync(file).blocks;
  assert.ok(full * 512 >= 16 * MiB, `file is allocated (${full} blocks)`);

  // blkdiscard -> VIRTIO_BLK_T_DISCARD -> backend discard (punches a hole in the file)
  await execOk('blkdiscard', ['-o', String(0), '-l', String(8 * MiB), d.path]);
  await waitFor('the discarded range to be deallocated', () =>
    fs.statSync(file).blocks * 512 <= 9 * MiB ? true : null,
  );
  // fallocate --punch-hole on the block device -> write-zeroes with unmap (or discard): reads zero, file gets a hole
  await execOk('fallocate', ['--punch-hole', '-o', String(8 * MiB), '-l', String(4 * MiB), d.path]);
  assertSameData(
    Buffer.alloc(4 * MiB),
    await readDirect(d.path, 8 * MiB, 4 * MiB),
    'punched range reads zeroes',
  );
  assertSameData(Buffer.alloc(4 * MiB), readFileRange(file, 8 * MiB, 4 * MiB), 'punched range in the file');
  await waitFor('the punched range to be deallocated', () =>
    fs.statSync(file).blocks * 512 <= 5 * MiB ? true : null,
  );

  // sync -> flush
  d.signal('SIGUSR1');
  await d.waitStderr(/stats: /);
  const before = lastStats(d.stderr);
  await writeDirect(d.path, 32 * MiB, makePattern(MiB, 'flushme'));
  const fd = fs.openSync(d.path, 'r+');
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  const count = (d.stderr.match(/stats: /g) ?? []).length;
  d.signal('SIGUSR1');
  await waitFor('a new stats line', () => ((d.stderr.match(/stats: /g) ?? []).length > count ? true : null));
  const after = lastStats(d.stderr);
  assert.ok(after.flushes! > before.flushes!, `flushes ${before.flushes} -> ${after.flushes}`);
  assert.ok(after.discards! >= 1, `discards ${after.discards}`);
  const stderr = await stopClean(d, name);
  assert.match(stderr, /stats: .*flushes=\d+/);
});

test('read-only device: writes fail, the backend is untouched', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  if (!requirePrereqs(t, PREREQS)) return;
  const cleanup = useCleanup(t);
  const name = 'e2e-vd-ro';
  const file = path.join(tempDir(cleanup, 'vduse-ro'), 'disk.raw');
  fs.writeFileSync(file, '');
  fs.truncateSync(file, 32 * MiB);
  const seeded = makePattern(MiB, 'ro-seed');
  writeFileRange(file, 0, seeded);
  const d = await VduseDaemon.start(
    ['--name', name, '--backend', `file:${file}`, '--readonly', '--stats'],
    cleanup,
  );
  const dev = blockDeviceInfo(path.basename(d.path));
  assert.equal(dev.readOnly, true);
  assertSameData(seeded, await readDirect(d.path, 0, MiB), 'reads work');
  const w = await exec('dd', ['if=/dev/zero', `of=${d.path}`, 'bs=4096', 'count=4', 'oflag=direct']);
  assert.notEqual(w.code, 0, 'a write must fail');
  assert.match(w.stderr, /Read-only|Operation not permitted|Input\/output error/i);
  const stderr = await stopClean(d, name);
  assertSameData(seeded, readFileRange(file, 0, MiB), 'backing file untouched');
  assert.match(stderr, /writes=0 /);
});

test(
  'online resize: grow the file, SIGHUP, the guest sees the new size',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, PREREQS)) return;
    const cleanup = useCleanup(t);
    const name = 'e2e-vd-resize';
    const file = path.join(tempDir(cleanup, 'vduse-resize'), 'disk.raw');
    const d = await VduseDaemon.start(['--name', name, '--backend', `file:${file},size=32M`], cleanup);
    const dev = path.basename(d.path);
    assert.equal(blockDeviceInfo(dev).sizeBytes, 32 * MiB);
    fs.truncateSync(file, 80 * MiB);
    d.signal('SIGHUP');
    await waitFor('the new capacity', () => (blockDeviceInfo(dev).sizeBytes === 80 * MiB ? true : null));
    await writeReadVerify(d.path, 80 * MiB - MiB, MiB, 'new-tail');
    await stopClean(d, name);
  },
);

test(
  'driver rebind: unbind virtio_vdpa and bind again resets and re-negotiates',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, PREREQS)) return;
    const cleanup = useCleanup(t);
    const name = 'e2e-vd-rebind';
    const d = await VduseDaemon.start(['--name', name, '--backend', 'memory:32M', '--verbose'], cleanup);
    const data = await writeReadVerify(d.path, 0, MiB, 'before');
    const readyBefore = (d.stderr.match(/driver ready/g) ?? []).length;
    await fs.promises.writeFile('/sys/bus/vdpa/drivers/virtio_vdpa/unbind', name);
    await waitFor('the block device to go', () => (fs.existsSync(d.path) ? null : true));
    await fs.promises.writeFile('/sys/bus/vdpa/drivers/virtio_vdpa/bind', name);
    const dev = await waitFor('a block device again', () => {
      try {
        const v = fs.readdirSync(`/sys/bus/vdpa/devices/${name}`).find((x) => /^virtio\d+$/.test(x));
        const b = v && fs.readdirSync(`/sys/bus/vdpa/devices/${name}/${v}/block`)[0];
        return b && fs.existsSync(`/dev/${b}`) ? `/dev/${b}` : null;
      } catch {
        return null;
      }
    });
    assert.ok((d.stderr.match(/driver ready/g) ?? []).length > readyBefore, 'DRIVER_OK again');
    assert.match(d.stderr, /SET_STATUS 0x0/);
    assertSameData(data, await readDirect(dev, 0, MiB), 'memory kept across the rebind');
    await writeReadVerify(dev, MiB, MiB, 'after');
    await stopClean(d, name);
  },
);

test('vhost-vdpa: --driver vhost-vdpa gives /dev/vhost-vdpa-N', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  if (!requirePrereqs(t, { ...PREREQS, modules: [...PREREQS.modules, 'vhost_vdpa'] })) return;
  const cleanup = useCleanup(t);
  const name = 'e2e-vd-vhost';
  const d = await VduseDaemon.start(
    ['--name', name, '--backend', 'memory:32M', '--driver', 'vhost-vdpa'],
    cleanup,
  );
  assert.match(d.path, /^\/dev\/vhost-vdpa-\d+$/);
  assert.ok(fs.statSync(d.path).isCharacterDevice());
  assert.equal(vdpaDriver(name), 'vhost_vdpa');
  await stopClean(d, name);
});

test(
  '--no-attach: serves /dev/vduse/NAME; an outside vdpa dev add works; exit detaches it',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, { ...PREREQS, commands: ['vdpa'] })) return;
    const cleanup = useCleanup(t);
    const name = 'e2e-vd-noattach';
    const d = await VduseDaemon.start(['--name', name, '--backend', 'memory:16M', '--no-attach'], cleanup);
    assert.equal(d.path, `/dev/vduse/${name}`);
    assert.equal(vdpaDevExists(name), false);
    await execOk('vdpa', ['dev', 'add', 'name', name, 'mgmtdev', 'vduse']);
    const dev = await waitForBlockDevice(name);
    await writeReadVerify(dev.path, 0, MiB, 'outside-attach');
    // still attached when the daemon stops: it detaches before destroying
    await stopClean(d, name);
  },
);

test('not root: one clear line and exit 1', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  if (!requirePrereqs(t, { ...PREREQS, commands: ['setpriv'] })) return;
  const r = await exec('setpriv', [
    '--reuid=65534',
    '--regid=65534',
    '--clear-groups',
    process.execPath,
    CLI,
    'blk',
    '--name',
    'e2e-vd-user',
    '--backend',
    'memory:16M',
  ]);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /permission denied/);
  assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  assert.equal(vduseDevExists('e2e-vd-user'), false);
});

test(
  'reset under load: vdpa dev del while fio runs, then dev add again; the daemon survives and serves',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, { ...PREREQS, commands: ['fio', 'vdpa'] })) return;
    const cleanup = useCleanup(t);
    const name = 'e2e-vd-load';
    const d = await VduseDaemon.start(
      ['--name', name, '--backend', 'memory:64M', '--queues', '2', '--verbose'],
      cleanup,
    );
    const fio = exec('fio', [
      '--name=load',
      `--filename=${d.path}`,
      '--direct=1',
      '--ioengine=libaio',
      '--rw=randrw',
      '--bs=4k',
      '--iodepth=32',
      '--numjobs=2',
      '--time_based',
      '--runtime=30',
      '--size=64M',
      '--group_reporting',
    ]);
    await new Promise((r) => setTimeout(r, 3000));
    await execOk('vdpa', ['dev', 'del', name]);
    const r = await fio;
    assert.notEqual(r.timedOut, true, 'fio was not stuck');
    assert.match(d.stderr, /SET_STATUS 0x0/, 'the detach reset the device');
    await execOk('vdpa', ['dev', 'add', 'name', name, 'mgmtdev', 'vduse']);
    const dev = await waitForBlockDevice(name);
    await writeReadVerify(dev.path, 0, 4 * MiB, 'after-reset');
    await stopClean(d, name);
  },
);

test(
  '4 KiB logical blocks: the guest sees them, ext4 works on top',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, { ...PREREQS, commands: ['mkfs.ext4', 'e2fsck'] })) return;
    const cleanup = useCleanup(t);
    const name = 'e2e-vd-4k';
    const d = await VduseDaemon.start(
      ['--name', name, '--backend', 'memory:64M', '--logical-block-size', '4096'],
      cleanup,
    );
    const dev = blockDeviceInfo(path.basename(d.path));
    assert.equal(dev.logicalBlockSize, 4096);
    assert.equal(dev.sizeBytes, 64 * MiB);
    await writeReadVerify(d.path, 4096, 64 * 1024, '4k');
    await assert.rejects(
      writeDirect(d.path, 512, makePattern(512, 'small')),
      '512-byte direct I/O is refused',
    );
    await execOk('mkfs.ext4', ['-q', '-F', d.path]);
    const fsck = await exec('e2fsck', ['-f', '-n', d.path]);
    assert.equal(fsck.code, 0, fsck.stdout);
    await stopClean(d, name);
  },
);
