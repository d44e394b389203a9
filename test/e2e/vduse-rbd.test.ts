// `vduse blk` with the Ceph RBD backend on the real kernel, against a one-node cluster (monitor + one bluestore
// OSD, no manager) started in the guest for this file. The device serves 2 queues on 2 threads (fio verify,
// ext4 + fsck), what it writes is what another client reads (`rbd export`), discard and write-zeroes show in the
// image (`rbd diff`), a `rbd resize` reaches the guest; then the OSD is SIGKILLed and restarted under verified
// writes and no I/O error reaches the guest.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test, type TestContext } from 'node:test';

import {
  TEST_TIMEOUT_MS,
  assertSameData,
  blockDeviceInfo,
  exec,
  execOk,
  lowerHungTaskThreshold,
  makePattern,
  readDirect,
  requirePrereqs,
  sleep,
  useCleanup,
  vdpaDevExists,
  vduseDevExists,
  waitFor,
  writeDirect,
} from './lib/index.js';
import { assertQuietKernel, uptimeSeconds } from './lib/kernel-log.js';
import { PREREQS, VduseDaemon, lastStats } from './vduse-daemon.js';
import { CephCluster, cephMissing } from '../unit/rbd/cluster.js';

const MiB = 1 << 20;
const COMMANDS = ['fio', 'mkfs.ext4', 'e2fsck', 'mount', 'umount', 'blkdiscard', 'fallocate', 'dmesg'];
/** The guest's hung-task threshold while the OSD is away: a request stuck this long would be reported. */
const HUNG_TASK_SECS = 30;

let cluster: CephCluster | undefined;
let clusterError: Error | undefined;
let clusterStartMs = 0;

before(async () => {
  if (cephMissing() !== null) return;
  try {
    const started = Date.now();
    cluster = await CephCluster.start({ store: 'bluestore' });
    clusterStartMs = Date.now() - started;
  } catch (err) {
    clusterError = err as Error;
  }
});
after(async () => {
  await cluster?.stop();
});

/** The cluster, or null (the test skipped: Ceph missing outside CI); a failed start fails the test. */
function needCluster(t: TestContext): CephCluster | null {
  if (!requirePrereqs(t, { ...PREREQS, commands: [...COMMANDS, 'ceph-mon', 'ceph-osd', 'rbd'] })) return null;
  if (clusterError !== undefined) throw clusterError;
  assert.ok(cluster, 'the cluster started');
  t.diagnostic(`cluster started in ${clusterStartMs} ms: ${JSON.stringify(cluster.timings)}`);
  return cluster;
}

function fioVerifyArgs(name: string, dev: string, sizeMiB: number, jobs: number): string[] {
  return [
    `--name=${name}`,
    `--filename=${dev}`,
    '--direct=1',
    '--ioengine=libaio',
    '--rw=randwrite',
    '--bsrange=4k-64k',
    `--size=${sizeMiB}M`,
    `--offset_increment=${sizeMiB}M`,
    '--iodepth=16',
    `--numjobs=${jobs}`,
    ...(jobs > 1 ? ['--cpus_allowed=0-1', '--cpus_allowed_policy=split'] : []),
    '--verify=crc32c',
    '--verify_fatal=1',
    '--verify_state_save=0',
    '--do_verify=1',
    '--group_reporting',
  ];
}

async function fioVerify(dev: string, sizeMiB: number, jobs: number): Promise<void> {
  // the cluster and the guest share 2 emulated CPUs: far slower than on hardware
  const r = await exec('fio', fioVerifyArgs('verify', dev, sizeMiB, jobs), { timeoutMs: 240_000 });
  assert.equal(r.code, 0, `fio failed:\n${r.stdout}\n${r.stderr}`);
  assert.doesNotMatch(r.stdout + r.stderr, /verify: bad|crc32c: verify failed|error=/);
}

/** A FLUSH from the guest (fsync of the block device), so that librbd's cache reaches the OSD. */
async function flushDevice(dev: string): Promise<void> {
  await execOk('dd', ['if=/dev/zero', `of=${dev}`, 'bs=512', 'count=0', 'conv=fsync,notrunc']);
}

/** `rbd diff` extents of the image inside [from, to). */
async function allocatedIn(
  c: CephCluster,
  image: string,
  from: number,
  to: number,
): Promise<[number, number][]> {
  const extents = JSON.parse(await c.rbd('diff', '--format', 'json', image)) as {
    offset: number;
    length: number;
  }[];
  return extents.filter((e) => e.offset < to && e.offset + e.length > from).map((e) => [e.offset, e.length]);
}

test(
  'vduse blk, rbd backend on 2 queue threads: fio verify, rbd export, discard/write-zeroes in rbd diff, rbd resize, ext4',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    const c = needCluster(t);
    if (c === null) return;
    const cleanup = useCleanup(t);
    const name = 'e2e-rbd';
    const image = 'rbd/e2e-mq';
    let started = Date.now();
    const phase = (what: string) => {
      t.diagnostic(`${what}: ${Date.now() - started} ms`);
      started = Date.now();
    };
    await c.rbd('create', '--size', '128M', image);
    const since = uptimeSeconds();
    const d = await VduseDaemon.start(
      [
        '--name',
        name,
        '--backend',
        `rbd:${image},conf=${c.conf}`,
        '--queues',
        '2',
        '--queue-threads',
        '2',
        '--stats',
      ],
      cleanup,
    );
    const dev = d.path;
    const vd = path.basename(dev);
    assert.equal(blockDeviceInfo(vd).sizeBytes, 128 * MiB);

    phase('image created, daemon started');
    await fioVerify(dev, 4, 2);
    phase('fio verify 2 x 4 MiB on 2 queues');

    // what the device wrote is what another client reads
    const data = makePattern(MiB, 'rbd-export', 100 * MiB);
    await writeDirect(dev, 100 * MiB, data);
    await flushDevice(dev);
    const exported = await c.rbdExport(image);
    assertSameData(data, exported.subarray(100 * MiB, 101 * MiB), 'rbd export of what the guest wrote');
    phase('write, flush, rbd export');

    // discard (whole objects go), write-zeroes with unmap (punch hole: they go) and without (zeroes stay)
    await writeDirect(dev, 64 * MiB, makePattern(16 * MiB, 'rbd-trim', 64 * MiB));
    await flushDevice(dev);
    assert.equal(
      (await allocatedIn(c, image, 64 * MiB, 80 * MiB)).length > 0,
      true,
      'written data is allocated',
    );
    await execOk('blkdiscard', ['-o', String(64 * MiB), '-l', String(8 * MiB), dev]);
    await execOk('fallocate', [
      '--punch-hole',
      '--keep-size',
      '-o',
      String(72 * MiB),
      '-l',
      String(4 * MiB),
      dev,
    ]);
    await execOk('blkdiscard', ['-z', '-o', String(76 * MiB), '-l', String(4 * MiB), dev]);
    await flushDevice(dev);
    assert.deepEqual(
      await allocatedIn(c, image, 64 * MiB, 80 * MiB),
      [[76 * MiB, 4 * MiB]],
      'discarded and punched objects are gone; zeroed-without-unmap stays',
    );
    const zeroes = await readDirect(dev, 64 * MiB, 16 * MiB);
    assert.ok(
      zeroes.every((b) => b === 0),
      'the range reads as zeroes',
    );
    phase('discard, write-zeroes, rbd diff');

    // resize from outside: the guest sees the new capacity
    await c.rbd('resize', '--size', '192M', image);
    await waitFor('the guest to see 192 MiB', () => blockDeviceInfo(vd).sizeBytes === 192 * MiB, {
      timeoutMs: 30_000,
    });
    const grown = makePattern(MiB, 'rbd-grown', 190 * MiB);
    await writeDirect(dev, 190 * MiB, grown);
    assertSameData(grown, await readDirect(dev, 190 * MiB, MiB), 'the new space');
    phase('rbd resize seen by the guest');

    // ext4 over it, and a clean fsck
    const mnt = fs.mkdtempSync('/tmp/e2e-rbd-mnt-');
    cleanup.add('remove the mount point', () => fs.rmSync(mnt, { recursive: true, force: true }));
    await execOk('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard,lazy_itable_init=1,lazy_journal_init=1', dev]);
    await execOk('mount', [dev, mnt]);
    cleanup.add('umount', async () => void (await exec('umount', [mnt])));
    await execOk('dd', ['if=/dev/urandom', `of=${mnt}/file`, 'bs=1M', 'count=8', 'conv=fsync']);
    const sum = await execOk('sha256sum', [`${mnt}/file`]);
    await execOk('umount', [mnt]);
    await execOk('e2fsck', ['-f', '-n', dev]);
    await execOk('mount', ['-o', 'ro', dev, mnt]);
    assert.equal((await execOk('sha256sum', [`${mnt}/file`])).stdout, sum.stdout);
    await execOk('umount', [mnt]);
    phase('ext4 + fsck');

    const e = await d.stop();
    phase('stop');
    assert.equal(e.code, 0, `daemon exit status; stderr:\n${e.stderr}`);
    assert.match(e.stderr, /the backend was resized; now 192 MiB/);
    assert.doesNotMatch(e.stderr, /failed|error:/i);
    assert.equal(vdpaDevExists(name), false, 'vdpa device removed');
    assert.equal(vduseDevExists(name), false, 'VDUSE device destroyed');
    const stats = lastStats(e.stderr);
    assert.ok(stats.discards! > 0 && stats.writeZeroes! > 0 && stats.flushes! > 0, e.stderr);
    await assertQuietKernel(since, vd);
  },
);

test(
  'vduse blk, rbd backend: the OSD SIGKILLed and restarted under verified writes, no guest I/O error',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    const c = needCluster(t);
    if (c === null) return;
    const cleanup = useCleanup(t);
    const name = 'e2e-rbd-osd';
    const image = 'rbd/e2e-osd';
    await c.rbd('create', '--size', '64M', image);
    const hung = lowerHungTaskThreshold(cleanup, HUNG_TASK_SECS);
    const since = uptimeSeconds();
    const d = await VduseDaemon.start(
      ['--name', name, '--backend', `rbd:${image},conf=${c.conf}`, '--queues', '2'],
      cleanup,
    );
    const dev = d.path;
    // verified writes in rounds until one has run entirely after the OSD came back
    let restarted = false;
    let roundsAfter = 0;
    let rounds = 0;
    const load = (async () => {
      while (roundsAfter < 1) {
        const after = restarted;
        await fioVerify(dev, 4, 2);
        rounds++;
        if (after) roundsAfter++;
      }
    })();
    const failed = load.then(
      () => null,
      (err: unknown) => err as Error,
    );
    await sleep(1500);
    await c.stopOsd('SIGKILL');
    const down = Date.now();
    await sleep(3000);
    await c.startOsd();
    t.diagnostic(`OSD away for ${Date.now() - down} ms`);
    restarted = true;
    const error = await failed;
    assert.equal(error, null, `fio under the OSD restart: ${error?.message}`);
    t.diagnostic(
      `${rounds} fio verify rounds; hung-task detector ${hung ? `on (${HUNG_TASK_SECS} s)` : 'absent'}`,
    );
    const e = await d.stop();
    assert.equal(e.code, 0, `daemon exit status; stderr:\n${e.stderr}`);
    await assertQuietKernel(since, path.basename(dev));
  },
);
