/**
 * The vhost-user-blk scenarios with a real VMM (#17), run ON THE HOST: one test VM (QEMU, TCG, guest RAM in a
 * shared memfd) gets five vhost-user-blk-pci devices, each served by its own server process started here
 * (qemu-storage-daemon's export or ours, see lib/vhost-user.ts), and the guest is driven through its agent.
 * Imported by vhost-user.host.test.ts (ours) and vhost-user-qsd.host.test.ts (the harness check).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import {
  HostVm,
  STEP_TIMEOUT_MS,
  TEST_TIMEOUT_MS,
  findCommand,
  isCI,
  makePattern,
  readFileRange,
  scaled,
  sleep,
  vhostUserBlkQemuArgs,
  vhostUserServer,
  waitFor,
  writeFileRange,
  type VhostUserBlkSpec,
  type VhostUserKind,
  type VhostUserServer,
} from './lib/index.js';

const MiB = 1 << 20;

interface Disk {
  spec: VhostUserBlkSpec;
  server: VhostUserServer;
  slot: number;
  /** Its block device in the guest (/dev/vdX), found through the PCI slot. */
  dev: string;
  sysfs: string;
}

const SERIAL = 'vu-e2e-serial';

/** Prerequisites on the host; under CI a missing one fails, else the file is skipped. */
function missing(kind: VhostUserKind): string | null {
  const need = ['qemu-system-x86_64', 'fio'];
  if (kind === 'qsd') need.push('qemu-storage-daemon');
  const gone = need.filter((c) => !findCommand(c));
  return gone.length ? `missing ${gone.join(', ')}` : null;
}

export function vhostUserScenarios(kind: VhostUserKind): void {
  const why = missing(kind);
  if (why) {
    test(`vhost-user-blk (${kind}) with QEMU`, (t) => {
      if (isCI) throw new Error(`prerequisite missing under CI: ${why}`);
      t.skip(why);
    });
    return;
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `e2e-vu-${kind}-`));
  const file = (name: string, bytes: number, fill?: Buffer) => {
    const p = path.join(dir, name);
    fs.writeFileSync(p, '');
    fs.truncateSync(p, bytes);
    if (fill) writeFileRange(p, 0, fill);
    return p;
  };
  const roData = makePattern(MiB, 'vu-ro', 0);
  const specs: Record<string, VhostUserBlkSpec> = {
    rw: { id: `vu-${kind}-rw`, socket: path.join(dir, 'rw.sock'), file: file('rw.img', 256 * MiB) },
    ro: {
      id: `vu-${kind}-ro`,
      socket: path.join(dir, 'ro.sock'),
      file: file('ro.img', 16 * MiB, roData),
      readonly: true,
    },
    geo: {
      id: `vu-${kind}-geo`,
      socket: path.join(dir, 'geo.sock'),
      nullBytes: 64 * MiB,
      logicalBlockSize: 4096,
      ...(kind === 'ours' ? { serial: SERIAL } : {}),
    },
    grow: { id: `vu-${kind}-grow`, socket: path.join(dir, 'grow.sock'), file: file('grow.img', 64 * MiB) },
    restart: {
      id: `vu-${kind}-restart`,
      socket: path.join(dir, 'restart.sock'),
      file: file('restart.img', 128 * MiB),
    },
    // ours with --queue-threads 2: the same fio verify and restart scenarios, each queue on its own thread
    ...(kind === 'ours'
      ? {
          'rw-threads': {
            id: `vu-${kind}-rwt`,
            socket: path.join(dir, 'rwt.sock'),
            file: file('rwt.img', 128 * MiB),
            queueThreads: 2,
          },
          'restart-threads': {
            id: `vu-${kind}-rst`,
            socket: path.join(dir, 'rst.sock'),
            file: file('rst.img', 128 * MiB),
            queueThreads: 2,
          },
        }
      : {}),
  };
  const disks: Record<string, Disk> = {};
  let vm: HostVm | null = null;
  let bootError: unknown = null;

  before(async () => {
    try {
      let slot = 0x10;
      const qemuArgs: string[] = [];
      for (const [key, spec] of Object.entries(specs)) {
        const server = vhostUserServer(kind, spec);
        disks[key] = { spec, server, slot, dev: '', sysfs: '' };
        qemuArgs.push(...vhostUserBlkQemuArgs(key, spec.socket, slot, spec.queues ?? 2));
        slot++;
      }
      await Promise.all(Object.values(disks).map((d) => d.server.start()));
      vm = await HostVm.boot({ qemuArgs });
      for (const d of Object.values(disks)) {
        const pci = `/sys/bus/pci/devices/0000:00:${d.slot.toString(16).padStart(2, '0')}.0`;
        const name = (
          await vm.sh(`for b in ${pci}/virtio*/block/*; do [ -e "$b" ] && basename "$b"; done`)
        ).trim();
        assert.match(name, /^vd[a-z]+$/, `no block device under ${pci}`);
        d.dev = `/dev/${name}`;
        d.sysfs = `/sys/block/${name}`;
      }
    } catch (e) {
      bootError = e;
    }
  });

  after(async () => {
    const code = vm ? await vm.shutdown() : 0;
    await Promise.all(Object.values(disks).map((d) => d.server.stop()));
    fs.rmSync(dir, { recursive: true, force: true });
    if (code !== 0) throw new Error(`the test VM exited ${code}:\n${vm?.log.slice(-3000) ?? ''}`);
  });

  /** The VM and disk `key`, or a failure explaining why the VM is not there. */
  const use = (key: string): { vm: HostVm; d: Disk } => {
    if (bootError || !vm) {
      const servers = Object.values(disks)
        .map((d) => d.server.log.slice(-1500))
        .join('\n');
      throw new Error(
        `setup failed: ${bootError instanceof Error ? bootError.message : String(bootError)}\n${servers}`,
      );
    }
    return { vm, d: disks[key]! };
  };
  const sysfsText = async (vm: HostVm, p: string) => (await vm.sh(`cat ${p}`)).trim();
  const sizeOf = async (vm: HostVm, d: Disk) => Number(await sysfsText(vm, `${d.sysfs}/size`)) * 512;
  const opts = { timeout: TEST_TIMEOUT_MS };

  const fioVerify = async (key: string) => {
    const { vm, d } = use(key);
    if (d.spec.queueThreads) assert.match(d.server.log, /on 2 threads/, 'the queues are on 2 threads');
    const hctx = (await vm.sh(`ls ${d.sysfs}/mq`)).trim().split(/\s+/);
    assert.deepEqual(hctx, ['0', '1'], 'two request queues in the guest');
    // one job per vCPU, each pinned, so blk-mq sends each job's requests down its own queue
    await vm.runOk(
      'fio',
      [
        '--name=verify',
        `--filename=${d.dev}`,
        '--ioengine=libaio',
        '--direct=1',
        '--rw=randwrite',
        '--bs=4k',
        '--iodepth=16',
        '--numjobs=2',
        '--size=16M',
        '--offset_increment=64M',
        '--cpus_allowed=0-1',
        '--cpus_allowed_policy=split',
        '--verify=crc32c',
        '--verify_fatal=1',
        '--verify_state_save=0',
        '--group_reporting',
      ],
      { timeoutMs: scaled(300_000) },
    );
    const inflight = (await sysfsText(vm, `${d.sysfs}/inflight`)).split(/\s+/).map(Number);
    assert.deepEqual(inflight, [0, 0]);
  };
  test(`${kind}: fio verify on 2 queues`, opts, async () => {
    const { vm, d } = use('rw');
    assert.equal(await sizeOf(vm, d), 256 * MiB);
    await fioVerify('rw');
  });
  if (kind === 'ours')
    test(`${kind}: fio verify on 2 queues served on 2 queue threads`, opts, () => fioVerify('rw-threads'));

  test(`${kind}: mkfs.ext4, mount, remount, fsck`, opts, async () => {
    const { vm, d } = use('rw');
    const mnt = `/tmp/mnt-${d.spec.id}`;
    await vm.sh(
      [
        `set -e; mkdir -p ${mnt}`,
        `mkfs.ext4 -q -F ${d.dev}`,
        `mount ${d.dev} ${mnt}`,
        `dd if=/dev/urandom of=${mnt}/a bs=1M count=8 status=none`,
        `sha256sum ${mnt}/a | cut -d' ' -f1 >/tmp/a.sum`,
        `mount -o remount,ro ${mnt}`,
        `if touch ${mnt}/b 2>/dev/null; then echo 'wrote to a read-only mount' >&2; exit 1; fi`,
        `mount -o remount,rw ${mnt}`,
        `cp ${mnt}/a ${mnt}/b`,
        `umount ${mnt}`,
        `echo 3 >/proc/sys/vm/drop_caches`,
        `mount ${d.dev} ${mnt}`,
        `[ "$(sha256sum ${mnt}/a | cut -d' ' -f1)" = "$(cat /tmp/a.sum)" ]`,
        `cmp ${mnt}/a ${mnt}/b`,
        `umount ${mnt}`,
        `e2fsck -f -n ${d.dev}`,
      ].join('\n'),
      scaled(300_000),
    );
  });

  test(`${kind}: discard and write-zeroes`, opts, async () => {
    const { vm, d } = use('rw');
    assert.ok(Number(await sysfsText(vm, `${d.sysfs}/queue/discard_max_bytes`)) > 0, 'discard offered');
    assert.ok(
      Number(await sysfsText(vm, `${d.sysfs}/queue/write_zeroes_max_bytes`)) > 0,
      'write-zeroes offered',
    );
    const base = 200 * MiB;
    // 2 MiB of non-zero data, then discard the first MiB and write zeroes over the second
    await vm.sh(
      `dd if=/dev/urandom of=${d.dev} bs=1M count=2 seek=${base / MiB} oflag=direct conv=notrunc status=none`,
    );
    const written = readFileRange(d.spec.file!, base, 2 * MiB);
    assert.ok(
      written.some((b) => b !== 0),
      'the data reached the backing file',
    );
    await vm.sh(`blkdiscard -o ${base} -l ${MiB} ${d.dev}`);
    await vm.sh(`blkdiscard -z -o ${base + MiB} -l ${MiB} ${d.dev}`);
    const nonZero = (
      await vm.sh(
        `dd if=${d.dev} bs=1M count=2 skip=${base / MiB} iflag=direct status=none | tr -d '\\000' | wc -c`,
      )
    ).trim();
    assert.equal(nonZero, '0', 'the guest reads zeroes back');
    assert.ok(
      readFileRange(d.spec.file!, base, 2 * MiB).every((b) => b === 0),
      'the backing file is zero',
    );
  });

  test(`${kind}: serial and logical block size seen by the guest`, opts, async () => {
    const { vm, d } = use('geo');
    assert.equal(await sysfsText(vm, `${d.sysfs}/queue/logical_block_size`), '4096');
    assert.equal(await sizeOf(vm, d), 64 * MiB);
    // qemu-storage-daemon 7.2 answers GET_ID with a fixed string
    assert.equal(await sysfsText(vm, `${d.sysfs}/serial`), kind === 'ours' ? SERIAL : 'vhost_user_blk');
    const small = await vm.run('dd', [`if=${d.dev}`, 'of=/dev/null', 'bs=512', 'count=1', 'iflag=direct']);
    assert.notEqual(small.code, 0, 'a 512-byte direct read of a 4096-byte-sector disk is refused');
    await vm.runOk('dd', [`if=${d.dev}`, 'of=/dev/null', 'bs=4096', 'count=4', 'iflag=direct']);
  });

  test(`${kind}: online resize seen by the guest`, opts, async (t) => {
    if (kind === 'qsd') {
      // seen here: block_resize succeeds, but 7.2's vhost-user-blk export sends QEMU no config-change message
      t.skip('qemu-storage-daemon 7.2 does not tell the VMM of a resize over vhost-user');
      return;
    }
    const { vm, d } = use('grow');
    assert.equal(await sizeOf(vm, d), 64 * MiB);
    await d.server.resize(96 * MiB);
    await waitFor('the guest to see 96 MiB', async () => (await sizeOf(vm, d)) === 96 * MiB, {
      timeoutMs: STEP_TIMEOUT_MS,
      intervalMs: 200,
    });
    // the new end is usable
    const at = 96 * MiB - 4096;
    await vm.sh(
      `printf 'grown-end' | dd of=${d.dev} bs=4096 seek=${at / 4096} conv=sync oflag=direct status=none`,
    );
    assert.equal(readFileRange(d.spec.file!, at, 9).toString(), 'grown-end');
  });

  test(`${kind}: read-only device refuses writes`, opts, async () => {
    const { vm, d } = use('ro');
    assert.equal(await sysfsText(vm, `${d.sysfs}/ro`), '1');
    const w = await vm.run('dd', [`if=/dev/zero`, `of=${d.dev}`, 'bs=4k', 'count=1', 'oflag=direct']);
    assert.notEqual(w.code, 0, 'writing is refused');
    const z = await vm.run('blkdiscard', ['-z', '-l', String(MiB), d.dev]);
    assert.notEqual(z.code, 0, 'write-zeroes is refused');
    const sum = (await vm.sh(`dd if=${d.dev} bs=1M count=1 iflag=direct status=none | sha256sum`)).split(
      ' ',
    )[0];
    const { createHash } = await import('node:crypto');
    assert.equal(sum, createHash('sha256').update(roData).digest('hex'), 'the guest reads the image');
    assert.deepEqual(readFileRange(d.spec.file!, 0, MiB), roData, 'the image is unchanged');
  });

  const killAndRestart = async (key: string) => {
    const { vm, d } = use(key);
    // two jobs (one per queue), 24 MiB each, rate-limited so that the writes last ~8 s, then read back and verified
    const fio = vm.run(
      'fio',
      [
        '--name=restart',
        `--filename=${d.dev}`,
        '--ioengine=libaio',
        '--direct=1',
        '--rw=write',
        '--bs=64k',
        '--iodepth=8',
        '--numjobs=2',
        '--size=24M',
        '--offset_increment=64M',
        '--rate=3m',
        '--cpus_allowed=0-1',
        '--cpus_allowed_policy=split',
        '--verify=crc32c',
        '--verify_fatal=1',
        '--verify_state_save=0',
        '--group_reporting',
      ],
      { timeoutMs: scaled(300_000) },
    );
    let settled = false;
    void fio.then(() => (settled = true));
    const kills = 3;
    for (let i = 0; i < kills; i++) {
      await sleep(1500);
      assert.ok(!settled, `fio ended before kill ${i + 1}`);
      await d.server.kill('SIGKILL');
      await d.server.start();
    }
    const r = await fio;
    assert.equal(
      r.code,
      0,
      `fio failed:\n${r.stdout.slice(-2000)}\n${r.stderr.slice(-2000)}\n${d.server.log.slice(-3000)}`,
    );
    // every block written was read back and verified (fio's verify phase counts as reads)
    const issued = /issued rwts: total=(\d+),(\d+)/.exec(r.stdout);
    assert.ok(issued, `no fio totals in:\n${r.stdout}`);
    assert.equal(Number(issued[2]), (2 * 24 * MiB) / (64 << 10), 'all writes issued');
    assert.equal(issued[1], issued[2], 'every written block read back and verified');
    const name = path.basename(d.dev);
    const errors = (await vm.sh(`dmesg | grep -E '${name}|I/O error' || true`)).trim();
    assert.ok(!/error/i.test(errors), `the guest logged errors:\n${errors}`);
    assert.deepEqual((await sysfsText(vm, `${d.sysfs}/inflight`)).split(/\s+/).map(Number), [0, 0]);
    if (d.spec.queueThreads) assert.match(d.server.log, /on 2 threads/, 'restarted with its queue threads');
  };
  test(`${kind}: SIGKILL and restart under verified guest writes (reconnect)`, opts, () =>
    killAndRestart('restart'),
  );
  if (kind === 'ours')
    test(`${kind}: SIGKILL and restart with 2 queue threads (reconnect)`, opts, () =>
      killAndRestart('restart-threads'),
    );
}
