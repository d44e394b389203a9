// Smoke tests of the harness and the baseline for the project's daemon: Debian's qemu-storage-daemon exporting
// vduse-blk devices, added to the vdpa bus with iproute2's `vdpa`, used through virtio_vdpa + virtio_blk.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import {
  type BlockDevice,
  type Cleanup,
  type QsdOptions,
  QemuStorageDaemon,
  TEST_TIMEOUT_MS,
  fileBlockdev,
  nullBlockdev,
  readDirect,
  readFileRange,
  requirePrereqs,
  useCleanup,
  vdpaDevAdd,
  vdpaDevDel,
  vdpaDevExists,
  vdpaDevShow,
  vdpaDriver,
  waitForBlockDevice,
  waitForVdpaDevGone,
  waitForVduseDevGone,
  writeDirect,
  writeFileRange,
  writeReadVerify,
  makePattern,
  assertSameData,
} from './lib/index.js';

const PREREQS = {
  root: true,
  commands: ['qemu-storage-daemon', 'vdpa', 'dd'],
  paths: ['/dev/vduse/control', '/sys/bus/vdpa'],
  modules: ['vduse', 'vdpa', 'virtio_vdpa', 'virtio_blk'],
};

const MiB = 1 << 20;

/** A started export on the vdpa bus, with cleanup registered. */
interface Attached {
  qsd: QemuStorageDaemon;
  dev: BlockDevice;
}

/** Starts qsd, adds its device to the vdpa bus and waits for the block device; cleanup undoes both. */
async function attach(cleanup: Cleanup, opts: QsdOptions): Promise<Attached> {
  const qsd = await QemuStorageDaemon.start(opts);
  cleanup.add(`stop qemu-storage-daemon ${opts.name}`, () => qsd.stop());
  await vdpaDevAdd(opts.name);
  cleanup.add(`vdpa dev del ${opts.name}`, async () => {
    if (vdpaDevExists(opts.name)) await vdpaDevDel(opts.name);
  });
  const dev = await waitForBlockDevice(opts.name);
  return { qsd, dev };
}

/** The documented teardown order: vdpa dev del, wait for the disk to go, stop the daemon, VDUSE device gone. */
async function detach(a: Attached): Promise<void> {
  await vdpaDevDel(a.qsd.name);
  await waitForVdpaDevGone(a.qsd.name, a.dev.name);
  await a.qsd.stopClean();
  await waitForVduseDevGone(a.qsd.name);
}

test(
  'null-co export: vdpa device, block device size, O_DIRECT I/O, removal',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, PREREQS)) return;
    const cleanup = useCleanup(t);
    const name = 'e2e-qsd-null';
    // 1 GiB plus 5 pages: an exact size that a rounding bug would not hit by chance
    const size = 1024 * MiB + 5 * 4096;
    const a = await attach(cleanup, { name, blockdev: nullBlockdev('null0', size) });

    const show = await vdpaDevShow(name);
    assert.equal(show.type, 'block');
    assert.equal(show.mgmtdev, 'vduse');
    assert.equal(vdpaDriver(name), 'virtio_vdpa');
    assert.match(a.dev.name, /^vd[a-z]+$/);
    assert.equal(a.dev.sizeBytes, size, `size of ${a.dev.path} from /sys/block/${a.dev.name}/size`);
    assert.equal(a.dev.readOnly, false);

    // null-co discards writes and reads zeroes: the write must succeed, reads must be zero.
    await writeDirect(a.dev.path, 0, makePattern(MiB, 'null'));
    const zeroes = Buffer.alloc(4 * MiB);
    assertSameData(zeroes, await readDirect(a.dev.path, 0, 4 * MiB), 'start of the null device');
    assertSameData(zeroes, await readDirect(a.dev.path, size - 4 * MiB, 4 * MiB), 'end of the null device');
    await assert.rejects(
      readDirect(a.dev.path, size, 4096),
      /dd|short read/,
      'reading past the end must fail',
    );

    await detach(a);
  },
);

test(
  'file export on guest tmpfs: pattern write and O_DIRECT read-back, backing file matches',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, PREREQS)) return;
    const cleanup = useCleanup(t);
    const name = 'e2e-qsd-file';
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'e2e-qsd-'));
    cleanup.add('remove the backing file', () => fs.rmSync(dir, { recursive: true, force: true }));
    const file = path.join(dir, 'backing.raw');
    const size = 64 * MiB;
    fs.writeFileSync(file, '');
    fs.truncateSync(file, size);
    // data already in the file must be what the device reads
    const seeded = makePattern(2 * MiB, 'seeded', 16 * MiB);
    writeFileRange(file, 16 * MiB, seeded);

    const a = await attach(cleanup, { name, blockdev: fileBlockdev('file0', file) });
    assert.equal(a.dev.sizeBytes, size);
    assertSameData(
      seeded,
      await readDirect(a.dev.path, 16 * MiB, 2 * MiB),
      'seeded data read through the device',
    );

    const head = await writeReadVerify(a.dev.path, 0, 8 * MiB, 'head');
    const tail = await writeReadVerify(a.dev.path, size - 4 * MiB, 4 * MiB, 'tail');
    const odd = await writeReadVerify(a.dev.path, 33 * MiB + 3 * 512, 7 * 512, 'odd');

    await detach(a);
    assertSameData(head, readFileRange(file, 0, head.length), 'backing file, head');
    assertSameData(tail, readFileRange(file, size - tail.length, tail.length), 'backing file, tail');
    assertSameData(odd, readFileRange(file, 33 * MiB + 3 * 512, odd.length), 'backing file, odd range');
    assertSameData(
      seeded,
      readFileRange(file, 16 * MiB, seeded.length),
      'backing file, seeded range untouched',
    );
  },
);

test('add and remove a null-co export 10 times', { timeout: TEST_TIMEOUT_MS }, async (t: TestContext) => {
  if (!requirePrereqs(t, PREREQS)) return;
  const cleanup = useCleanup(t);
  const name = 'e2e-qsd-loop';
  const size = 256 * MiB;
  const times: number[] = [];
  for (let i = 1; i <= 10; i++) {
    const start = Date.now();
    const a = await attach(cleanup, { name, blockdev: nullBlockdev('null0', size), numQueues: 1 + (i % 2) });
    assert.equal(a.dev.sizeBytes, size, `iteration ${i}: size`);
    assertSameData(Buffer.alloc(MiB), await readDirect(a.dev.path, size - MiB, MiB), `iteration ${i}: read`);
    await detach(a);
    times.push(Date.now() - start);
  }
  t.diagnostic(`cycle times (ms): ${times.join(' ')}`);
});
