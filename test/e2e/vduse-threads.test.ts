// Queue threads (`--queue-threads N`) on the real kernel: a 2-queue device whose queues are served by two worker
// threads, each with its own guest memory mappings, kick watcher and backend handle.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import {
  TEST_TIMEOUT_MS,
  assertSameData,
  exec,
  lowerHungTaskThreshold,
  readDirect,
  requirePrereqs,
  tempDir,
  useCleanup,
  vdpaDevExists,
  vduseDevExists,
  waitFor,
  waitForBlockDevice,
  waitForVduseDevGone,
  writeReadVerify,
} from './lib/index.js';
import { CLI, PREREQS, VduseDaemon, lastStats } from './vduse-daemon.js';

const MiB = 1 << 20;

/** fio arguments: 2 jobs, one pinned per CPU (so one per blk-mq queue), random writes verified with crc32c. */
function fioVerifyArgs(name: string, dev: string, sizeMiB: number, bsrange: string): string[] {
  return [
    `--name=${name}`,
    `--filename=${dev}`,
    '--direct=1',
    '--ioengine=libaio',
    '--rw=randwrite',
    `--bsrange=${bsrange}`,
    `--size=${sizeMiB}M`,
    `--offset_increment=${sizeMiB}M`,
    '--iodepth=16',
    '--numjobs=2',
    '--cpus_allowed=0-1',
    '--cpus_allowed_policy=split',
    '--verify=crc32c',
    '--verify_fatal=1',
    '--verify_state_save=0',
    '--do_verify=1',
    '--group_reporting',
  ];
}

/** fioVerifyArgs with requests of 512 bytes to 64 KiB; fails the test unless fio passes. */
async function fioVerify(dev: string, sizeMiB: number): Promise<void> {
  const r = await exec('fio', fioVerifyArgs('verify', dev, sizeMiB, '512-64k'));
  assert.equal(r.code, 0, `fio failed:\n${r.stdout}\n${r.stderr}`);
  assert.doesNotMatch(r.stdout + r.stderr, /verify: bad|crc32c: verify failed/);
}

test(
  'vduse blk --queue-threads 2, file backend: fio verify with 2 jobs, driver rebind (reset) while idle, clean stop',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, { ...PREREQS, commands: ['fio'] })) return;
    const cleanup = useCleanup(t);
    const name = 'e2e-thr-blk';
    const file = path.join(tempDir(cleanup, 'vduse-threads'), 'disk.raw');
    const d = await VduseDaemon.start(
      [
        '--name',
        name,
        '--backend',
        `file:${file},size=64M`,
        '--queues',
        '2',
        '--queue-threads',
        '2',
        '--stats',
        '--verbose',
      ],
      cleanup,
    );
    assert.match(d.stderr, /driver ready: 2\/2 queue\(s\) on 2 threads/);
    await fioVerify(d.path, 24);
    const data = await writeReadVerify(d.path, 60 * MiB, MiB, 'threads-before');

    // reset while idle: unbind the driver (status 0 reaches every thread), bind again (DRIVER_OK again)
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
    assertSameData(data, await readDirect(dev, 60 * MiB, MiB), 'data kept across the rebind');
    await fioVerify(dev, 8);

    const e = await d.stop();
    assert.equal(e.code, 0, `daemon exit status; stderr:\n${e.stderr}`);
    assert.doesNotMatch(e.stderr, /needs reset|failed|error:/i);
    assert.equal(vdpaDevExists(name), false, 'vdpa device removed');
    assert.equal(vduseDevExists(name), false, 'VDUSE device destroyed');
    const stats = lastStats(e.stderr);
    assert.ok(
      stats.writes! > 0 && stats.reads! > 0,
      `the threads' backend counters reach --stats: ${e.stderr}`,
    );
  },
);

test(
  'vduse serve, queue-threads: 2 in the config: both queues get requests (per-queue stats), resize, stop',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, { ...PREREQS, commands: ['fio'] })) return;
    const cleanup = useCleanup(t);
    const dir = tempDir(cleanup, 'vduse-threads-serve');
    const socket = path.join(dir, 'vduse.sock');
    const config = path.join(dir, 'vduse.json');
    const name = 'e2e-thr-serve';
    fs.writeFileSync(
      config,
      JSON.stringify({
        devices: [
          { name, backend: 'null:64M', queues: 2, 'queue-threads': 2, 'poll-us': 0 },
          {
            name: `${name}-f`,
            backend: `file:${path.join(dir, 'f.raw')},size=32M`,
            queues: 2,
            'queue-threads': 2,
          },
        ],
      }),
    );
    let stderr = '';
    const child = spawn(process.execPath, [CLI, 'serve', '--socket', socket, '--config', config], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    cleanup.add('stop vduse serve', async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        await exited;
      }
    });
    const cli = async (args: string[]): Promise<string> => {
      const r = await exec(process.execPath, [CLI, ...args, '--socket', socket], { timeoutMs: 120_000 });
      assert.equal(r.code, 0, `vduse ${args.join(' ')} failed: ${r.stderr}\ndaemon: ${stderr}`);
      return r.stdout;
    };
    const dev = await waitForBlockDevice(name);
    const fileDev = await waitForBlockDevice(`${name}-f`);
    await fioVerify(fileDev.path, 12);
    const r = await exec('fio', [
      '--name=rr',
      `--filename=${dev.path}`,
      '--direct=1',
      '--ioengine=libaio',
      '--rw=randread',
      '--bs=4k',
      '--iodepth=8',
      '--numjobs=2',
      '--cpus_allowed=0-1',
      '--cpus_allowed_policy=split',
      '--time_based',
      '--runtime=2',
      '--group_reporting',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const stats = JSON.parse(await cli(['stats', '--json'])) as {
      name: string;
      requests: number;
      reads: number;
      queues: { index: number; requests: number; kicks: number; interrupts: number }[];
    }[];
    for (const s of stats) {
      assert.equal(s.queues.length, 2);
      for (const q of s.queues) {
        assert.ok(q.requests > 0, `${s.name} queue ${q.index} served requests: ${JSON.stringify(s.queues)}`);
        assert.ok(q.kicks > 0 && q.interrupts > 0, `${s.name} queue ${q.index} kicks and interrupts counted`);
      }
      assert.equal(
        s.requests,
        s.queues.reduce((n, q) => n + q.requests, 0),
        'device total = sum of the queues',
      );
    }
    // resize: the threads' devices take requests past the old end
    await cli(['resize', `${name}-f`, '48M']);
    await waitFor(
      'the guest to see 48 MiB',
      () =>
        Number(fs.readFileSync(`/sys/block/${fileDev.name}/size`, 'utf8').trim()) * 512 === 48 * MiB || null,
      { timeoutMs: 10_000 },
    );
    await writeReadVerify(fileDev.path, 40 * MiB, MiB, 'grown');
    child.kill('SIGTERM');
    assert.equal(await exited, 0, stderr);
    assert.doesNotMatch(stderr, /needs reset|failed/i);
    await waitForVduseDevGone(name);
  },
);

test(
  '--queue-threads: one-line usage errors, memory backend refused',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, PREREQS)) return;
    const tooMany = await exec(process.execPath, [
      CLI,
      'blk',
      '--name',
      'e2e-thr-bad',
      '--backend',
      'null:16M',
      '--queues',
      '2',
      '--queue-threads',
      '3',
    ]);
    assert.equal(tooMany.code, 2);
    assert.match(tooMany.stderr, /^vduse: --queue-threads 3 is more than --queues 2 .*\n$/);
    const memory = await exec(process.execPath, [
      CLI,
      'blk',
      '--name',
      'e2e-thr-mem',
      '--backend',
      'memory:16M',
      '--queues',
      '2',
      '--queue-threads',
      '2',
    ]);
    // a usage error since the one option validator (#14.8): exit 2
    assert.equal(memory.code, 2);
    assert.match(memory.stderr, /^vduse: --queue-threads cannot serve a memory backend/);
    assert.equal(memory.stderr.trim().split('\n').length, 1, memory.stderr);
    assert.equal(vduseDevExists('e2e-thr-mem'), false);
  },
);

test(
  '--queue-threads 2 with crash recovery: SIGKILL and restart 5 times under fio verify (2 jobs), then --persist',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, { ...PREREQS, commands: ['fio', 'dmesg'] })) return;
    const cleanup = useCleanup(t);
    lowerHungTaskThreshold(cleanup, 30);
    const name = 'e2e-thr-rec';
    const dir = tempDir(cleanup, 'vduse-threads-rec');
    const args = [
      '--name',
      name,
      '--backend',
      `file:${path.join(dir, 'disk.raw')},size=64M`,
      '--state-dir',
      path.join(dir, 'state'),
      '--queues',
      '2',
      '--queue-threads',
      '2',
    ];
    const daemons: VduseDaemon[] = [];
    cleanup.add(`remove ${name}`, async () => {
      for (const x of daemons)
        if (x.child.exitCode === null && x.child.signalCode === null) await x.stop('SIGKILL');
      if (!vduseDevExists(name)) return;
      await (await VduseDaemon.start([...args, '--reconnect', 'always'])).stop();
    });
    const start = async (extra: string[] = []): Promise<VduseDaemon> => {
      const x = await VduseDaemon.start([...args, ...extra]);
      daemons.push(x);
      return x;
    };
    // --persist: a SIGTERM (an upgrade) finishes what is in flight and leaves the device to the next daemon
    let d = await start(['--persist']);
    const dev = d.path;
    const load = exec('fio', fioVerifyArgs('recovery', dev, 24, '4k-128k'), {
      timeoutMs: 8 * 60_000,
    });
    let done = false;
    void load.then(() => (done = true));
    let kills = 0;
    while (kills < 5 && !done) {
      await new Promise((r) => setTimeout(r, 300 + kills * 97));
      if (done) break;
      d.signal('SIGKILL');
      await d.exited;
      kills++;
      d = await start(['--persist']);
      assert.equal(d.path, dev, 'the same block device');
      assert.match(d.stderr, /reconnected to e2e-thr-rec: status 0x[0-9a-f]+/);
    }
    if (!done) {
      const p = await d.stop('SIGTERM');
      assert.equal(p.code, 0, p.stderr);
      d = await start(['--persist']);
    }
    const r = await load;
    const p = await d.stop('SIGTERM');
    assert.equal(p.code, 0, p.stderr);
    assert.ok(vduseDevExists(name), 'kept by --persist');
    d = await start();
    assert.equal(r.code, 0, `fio failed:\n${r.stdout}\n${r.stderr}`);
    assert.doesNotMatch(
      r.stdout + r.stderr,
      /verify: bad|crc32c: verify failed|Input\/output error|err=\s*[1-9]/,
    );
    assert.ok(kills >= 3, `fio ended after ${kills} kills: make it longer`);
    const dmesg = await exec('dmesg');
    assert.doesNotMatch(dmesg.stdout, /blocked for more than/, 'a task was reported hung');
    const e = await d.stop();
    assert.equal(e.code, 0, e.stderr);
    assert.equal(vduseDevExists(name), false, 'VDUSE device destroyed');
  },
);
