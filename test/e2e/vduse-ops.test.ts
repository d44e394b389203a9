// Scenarios of `vduse serve` on the real kernel: devices from a config file, the management socket and its
// client commands, metrics against fio's own totals, resize seen by the guest, SIGHUP reload, readiness.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import {
  TEST_TIMEOUT_MS,
  exec,
  execOk,
  requirePrereqs,
  useCleanup,
  waitFor,
  waitForBlockDevice,
  waitForVduseDevGone,
  writeReadVerify,
  tempDir,
} from './lib/index.js';
import { CLI, PREREQS } from './vduse-daemon.js';
import { ServeDaemon } from './serve-daemon.js';

async function scrape(port: number): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  assert.equal(res.status, 200);
  return res.text();
}

/** The value of one sample (labels in any order given as a subset). */
function sample(text: string, name: string, labels: Record<string, string>): number {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const m = /^([^{ ]+)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries(
      (m[2] ?? '')
        .split(',')
        .filter(Boolean)
        .map((kv) => {
          const [k, v] = kv.split('=');
          return [k, JSON.parse(v ?? '""') as string];
        }),
    );
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[3]);
  }
  throw new Error(`no sample ${name}${JSON.stringify(labels)} in the metrics`);
}

function sysfsSize(dev: string): number {
  return Number(fs.readFileSync(`/sys/block/${path.basename(dev)}/size`, 'utf8').trim()) * 512;
}

interface Listed {
  name: string;
  state: string;
  path: string;
  size: number;
  queues: number;
  backend: string;
}

test(
  'serve: two devices from a YAML config, pidfile only when ready, ls, metrics match fio, resize seen by the guest, clean stop',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, { ...PREREQS, commands: ['fio'] })) return;
    const cleanup = useCleanup(t);
    const dir = tempDir(cleanup, 'ops-cfg');
    const socket = path.join(dir, 'run', 'vduse.sock');
    const pidfile = path.join(dir, 'vduse.pid');
    const image = path.join(dir, 'b.img');
    const config = path.join(dir, 'vduse.yaml');
    fs.writeFileSync(
      config,
      [
        '# two devices',
        'devices:',
        '  - name: e2e-ops-a',
        '    backend: memory:64M',
        '    queues: 2',
        '    serial: ops-a',
        '  - name: e2e-ops-b',
        `    backend: file:${image},size=32M`,
        '',
      ].join('\n'),
    );
    const port = 19470;
    const d = ServeDaemon.spawn(
      ['--config', config, '--pidfile', pidfile, '--metrics', `127.0.0.1:${port}`, '--log-format', 'json'],
      socket,
      cleanup,
    );
    await waitFor('the pid file', () => fs.existsSync(pidfile) || (!d.alive && d.fail()), {
      timeoutMs: 60_000,
    });
    // readiness: when the pid file appears, both block devices exist already
    assert.ok(fs.existsSync('/sys/bus/vdpa/devices/e2e-ops-a'), 'e2e-ops-a attached before the pid file');
    const a = await waitForBlockDevice('e2e-ops-a', { timeoutMs: 1000 });
    const b = await waitForBlockDevice('e2e-ops-b', { timeoutMs: 1000 });
    assert.equal(fs.readFileSync(pidfile, 'utf8'), `${d.child.pid}\n`);
    assert.equal(fs.statSync(socket).mode & 0o777, 0o600, 'management socket is 0600');
    const logs = d.logs();
    assert.ok(
      logs.length > 0 &&
        logs.every(
          (l) => typeof l.level === 'string' && typeof l.time === 'string' && typeof l.msg === 'string',
        ),
    );
    assert.ok(
      logs.some((l) => l.device === 'e2e-ops-a' && /ready at \/dev\/vd/.test(String(l.msg))),
      'per-device field',
    );

    const listed = JSON.parse(await d.cliOk(['ls', '--json'])) as Listed[];
    assert.deepEqual(
      listed.map((x) => [x.name, x.state, x.path, x.size, x.queues]),
      [
        ['e2e-ops-a', 'running', a.path, 64 << 20, 2],
        ['e2e-ops-b', 'running', b.path, 32 << 20, 1],
      ],
    );
    const table = await d.cliOk(['ls']);
    assert.match(table, /^NAME\s+STATE\s+DEVICE/);
    assert.match(table, new RegExp(`e2e-ops-b\\s+running\\s+${b.path}\\s+32 MiB`));
    await writeReadVerify(b.path, 0, 1 << 20, 'ops-b');

    // metrics against fio's own count
    const before = await scrape(port);
    const w0 = sample(before, 'vduse_device_written_bytes_total', { device: 'e2e-ops-a' });
    const n0 = sample(before, 'vduse_device_requests_total', { device: 'e2e-ops-a', op: 'write' });
    const h0 = sample(before, 'vduse_device_request_duration_seconds_count', { device: 'e2e-ops-a' });
    const r = await execOk('fio', [
      '--name=w',
      `--filename=${a.path}`,
      '--direct=1',
      '--ioengine=libaio',
      '--rw=randwrite',
      '--bs=4k',
      '--size=16M',
      '--iodepth=8',
      '--randrepeat=0',
      '--norandommap',
      '--output-format=json',
    ]);
    const job = (
      JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as {
        jobs: { write: { io_bytes: number; total_ios: number } }[];
      }
    ).jobs[0]!;
    assert.equal(job.write.io_bytes, 16 << 20);
    const after = await scrape(port);
    const written = sample(after, 'vduse_device_written_bytes_total', { device: 'e2e-ops-a' }) - w0;
    const writes = sample(after, 'vduse_device_requests_total', { device: 'e2e-ops-a', op: 'write' }) - n0;
    assert.ok(written >= 16 << 20, `bytes written ${written} >= 16 MiB`);
    assert.ok(written <= (16 << 20) * 1.05, `bytes written ${written} about 16 MiB`);
    const ios = job.write.total_ios;
    assert.ok(Math.abs(writes - ios) <= ios * 0.05, `write requests ${writes} match fio's ${ios} within 5%`);
    const h1 = sample(after, 'vduse_device_request_duration_seconds_count', { device: 'e2e-ops-a' });
    assert.ok(h1 - h0 >= writes, 'every write is in the latency histogram');
    assert.equal(
      sample(after, 'vduse_device_request_duration_seconds_bucket', { device: 'e2e-ops-a', le: '+Inf' }),
      h1,
    );
    const kicks =
      sample(after, 'vduse_queue_kicks_total', { device: 'e2e-ops-a', queue: '0' }) +
      sample(after, 'vduse_queue_kicks_total', { device: 'e2e-ops-a', queue: '1' });
    assert.ok(kicks > 0, 'kicks counted');
    assert.ok(
      sample(after, 'vduse_queue_interrupts_total', { device: 'e2e-ops-a', queue: '0' }) +
        sample(after, 'vduse_queue_interrupts_total', { device: 'e2e-ops-a', queue: '1' }) >
        0,
      'interrupts counted',
    );
    assert.ok(sample(after, 'vduse_device_control_messages_total', { device: 'e2e-ops-a' }) > 0);
    assert.equal(sample(after, 'vduse_devices', { state: 'running' }), 2);
    const stats = JSON.parse(await d.cliOk(['stats', 'e2e-ops-a', '--json'])) as { bytesWritten: number }[];
    assert.ok(stats[0]!.bytesWritten >= 16 << 20);
    const watch = await d.cliOk(['stats', '--watch', '--interval', '0.3', '--count', '2']);
    assert.equal(watch.match(/^DEVICE\s+IOPS\s+READ MB\/s/gm)?.length, 2, watch);
    assert.match(watch, /e2e-ops-b/);

    // resize: the guest sees the new capacity; the file grows
    assert.match(await d.cliOk(['resize', 'e2e-ops-b', '48M']), /e2e-ops-b: 48 MiB/);
    await waitFor('vdY grown to 48 MiB', () => sysfsSize(b.path) === 48 << 20, { timeoutMs: 10_000 });
    assert.equal(fs.statSync(image).size, 48 << 20);
    await d.cliOk(['resize', 'e2e-ops-a', '128M']);
    await waitFor('vdX grown to 128 MiB', () => sysfsSize(a.path) === 128 << 20, { timeoutMs: 10_000 });
    await writeReadVerify(a.path, 100 << 20, 1 << 20, 'ops-a-grown');
    const bad = await d.cli(['resize', 'e2e-ops-a', '1000']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /^vduse resize: .*multiple of the logical block size 512\n$/);

    const e = await d.stop('SIGTERM');
    assert.equal(e.code, 0, d.stderr);
    assert.ok(!fs.existsSync(pidfile), 'pid file removed');
    assert.ok(!fs.existsSync(socket), 'socket removed');
    await waitForVduseDevGone('e2e-ops-a');
    await waitForVduseDevGone('e2e-ops-b');
  },
);

test(
  'serve: vduse add / del / ls at run time, safe del refuses a mounted device, SIGHUP reload adds a device, sd_notify READY=1',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, { ...PREREQS, commands: ['mkfs.ext4', 'mount', 'umount'] })) return;
    const cleanup = useCleanup(t);
    const dir = tempDir(cleanup, 'ops-rt');
    const socket = path.join(dir, 'vduse.sock');
    const config = path.join(dir, 'vduse.json');
    fs.writeFileSync(config, JSON.stringify({ devices: [{ name: 'e2e-ops-c', backend: 'memory:32M' }] }));
    // a stand-in systemd-notify records how it was called
    const bin = path.join(dir, 'bin');
    fs.mkdirSync(bin);
    const record = path.join(dir, 'notify.log');
    fs.writeFileSync(path.join(bin, 'systemd-notify'), `#!/bin/sh\necho "$NOTIFY_SOCKET $*" >> ${record}\n`, {
      mode: 0o755,
    });
    const d = ServeDaemon.spawn(['--config', config, '--log-format', 'text'], socket, cleanup, {
      ...process.env,
      PATH: `${bin}:${process.env.PATH ?? ''}`,
      NOTIFY_SOCKET: '/run/fake-notify',
    });
    await d.waitLog(/ready: 1 device/);
    await waitFor(
      'READY=1 sent',
      () => fs.existsSync(record) && fs.readFileSync(record, 'utf8').includes('READY=1'),
      { timeoutMs: 5000 },
    );
    assert.match(
      fs.readFileSync(record, 'utf8'),
      new RegExp(`^/run/fake-notify --pid=${d.child.pid} READY=1 STATUS=serving 1 device\\(s\\)$`, 'm'),
    );

    const added = (await d.cliOk(['add', 'e2e-ops-d', '--backend', 'memory:64M', '--queues', '2'])).trim();
    assert.match(added, /^\/dev\/vd[a-z]+$/);
    const dev = await waitForBlockDevice('e2e-ops-d', { timeoutMs: 1000 });
    assert.equal(dev.path, added);
    const dup = await d.cli(['add', 'e2e-ops-d', '--backend', 'memory:1M']);
    assert.equal(dup.code, 1);
    assert.equal(dup.stderr, 'vduse add: device e2e-ops-d exists already\n');
    // the words and the exit code of vduse blk --queues x
    const badq = await d.cli(['add', 'e2e-ops-x', '--backend', 'memory:1M', '--queues', 'x']);
    assert.equal(badq.stderr, 'vduse add: --queues must be a whole number, got "x"\n');
    assert.equal(badq.code, 2);
    const memThreads = await d.cli([
      'add',
      'e2e-ops-x',
      '--backend',
      'memory:1M',
      '--queues',
      '2',
      '--queue-threads',
      '2',
    ]);
    assert.equal(memThreads.code, 2);
    assert.match(memThreads.stderr, /^vduse add: --queue-threads cannot serve a memory backend/);
    // an unknown option is a usage error like any other
    const unknown = await d.cli(['add', 'e2e-ops-x', '--backend', 'memory:1M', '--name', 'y']);
    assert.equal(unknown.code, 2);
    const names = (JSON.parse(await d.cliOk(['ls', '--json'])) as Listed[]).map((x) => x.name);
    assert.deepEqual(names, ['e2e-ops-c', 'e2e-ops-d']);

    // safe removal refuses while mounted
    const mnt = path.join(dir, 'mnt');
    fs.mkdirSync(mnt);
    await execOk('mkfs.ext4', ['-q', '-F', dev.path]);
    await execOk('mount', [dev.path, mnt]);
    let mounted = true;
    cleanup.add('umount', async () => {
      if (mounted) await exec('umount', [mnt]);
    });
    fs.writeFileSync(path.join(mnt, 'f'), 'hello');
    const busy = await d.cli(['del', 'e2e-ops-d']);
    assert.equal(busy.code, 1);
    assert.match(
      busy.stderr,
      /is in use \(mounted or held open exclusively\); unmount it first or use force/,
    );
    await execOk('umount', [mnt]);
    mounted = false;
    await d.cliOk(['del', 'e2e-ops-d']);
    await waitForVduseDevGone('e2e-ops-d');
    const gone = await d.cli(['del', 'e2e-ops-d']);
    assert.equal(gone.stderr, 'vduse del: no device named e2e-ops-d\n');

    // reload: a new device is added, a changed one is reported and left alone
    fs.writeFileSync(
      config,
      JSON.stringify({
        devices: [
          { name: 'e2e-ops-c', backend: 'memory:32M', queues: 2 },
          { name: 'e2e-ops-e', backend: 'null:16M' },
        ],
      }),
    );
    d.child.kill('SIGHUP');
    await d.waitLog(/reload done: added e2e-ops-e/);
    assert.match(d.stderr, /reload: device e2e-ops-c: queues changed: needs the device re-created/);
    const e = await waitForBlockDevice('e2e-ops-e', { timeoutMs: 1000 });
    assert.equal(e.sizeBytes, 16 << 20);
    // a broken config on reload changes nothing
    fs.writeFileSync(config, '{"devices": [{"name": "e2e-ops-f", "backend": "memory:1M", "queues": "x"}]}');
    d.child.kill('SIGHUP');
    await d.waitLog(
      /reload: config devices\[0\]\.queues: expected an integer 1\.\.64, got "x"; nothing changed/,
    );
    assert.ok(d.alive);

    const x = await d.stop('SIGINT');
    assert.equal(x.code, 0, d.stderr);
    assert.match(fs.readFileSync(record, 'utf8'), /STOPPING=1/);
    await waitForVduseDevGone('e2e-ops-c');
    await waitForVduseDevGone('e2e-ops-e');
  },
);

test(
  'serve: a bad config file is one line naming the key, exit 2, nothing created',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, PREREQS)) return;
    const cleanup = useCleanup(t);
    const dir = tempDir(cleanup, 'ops-bad');
    const config = path.join(dir, 'bad.yaml');
    fs.writeFileSync(
      config,
      'devices:\n  - name: e2e-ops-g\n    backend: memory:1M\n  - name: e2e-ops-h\n    backend: memory:1M\n    queues: x\n',
    );
    const r = await exec(process.execPath, [
      CLI,
      'serve',
      '--config',
      config,
      '--socket',
      path.join(dir, 's'),
    ]);
    assert.equal(r.code, 2);
    assert.equal(r.stderr, 'vduse: config devices[1].queues: expected an integer 1..64, got "x"\n');
    assert.ok(!fs.existsSync('/sys/class/vduse/e2e-ops-g'));
  },
);

test(
  'serve --user: root dropped after start, the data path still works, add/del refused, clean stop through the vdpa helper',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, { ...PREREQS, commands: ['id'] })) return;
    const cleanup = useCleanup(t);
    const dir = tempDir(cleanup, 'ops-user');
    const socket = path.join(dir, 'vduse.sock');
    const config = path.join(dir, 'vduse.yaml');
    fs.writeFileSync(config, 'devices:\n  - name: e2e-ops-u\n    backend: memory:16M\n');
    const uid = Number((await execOk('id', ['-u', 'nobody'])).stdout.trim());
    const d = ServeDaemon.spawn(['--config', config, '--user', 'nobody'], socket, cleanup);
    await d.waitLog(/ready: 1 device/);
    assert.match(d.stderr, new RegExp(`running as nobody \\(uid ${uid},`));
    const status = fs.readFileSync(`/proc/${d.child.pid}/status`, 'utf8');
    assert.match(
      status,
      new RegExp(`^Uid:\\s+${uid}\\s+${uid}\\s+${uid}\\s+${uid}$`, 'm'),
      'all uids dropped',
    );
    const dev = await waitForBlockDevice('e2e-ops-u', { timeoutMs: 1000 });
    await writeReadVerify(dev.path, 0, 1 << 20, 'as-nobody');
    const add = await d.cli(['add', 'e2e-ops-v', '--backend', 'null:1M']);
    assert.equal(add.code, 1);
    assert.match(
      add.stderr,
      /^vduse add: cannot add e2e-ops-v: the daemon dropped its privileges \(--user nobody\)/,
    );
    const del = await d.cli(['del', 'e2e-ops-u']);
    assert.match(del.stderr, /^vduse del: cannot remove e2e-ops-u: the daemon dropped its privileges/);
    const info = JSON.parse(await d.cliOk(['stats', '--json'])) as { bytesWritten: number }[];
    assert.ok(info[0]!.bytesWritten >= 1 << 20);
    const x = await d.stop('SIGTERM');
    assert.equal(x.code, 0, d.stderr);
    // Known: the crash-recovery state log (/run/vduse-ts/NAME.state, root's directory) cannot be unlinked after
    // the drop; the device itself is destroyed. Any other error fails the test.
    const errors = d.stderr.split('\n').filter((l) => /error/i.test(l) && !/unlink '[^']*\.state'/.test(l));
    assert.deepEqual(errors, []);
    await waitForVduseDevGone('e2e-ops-u');
  },
);
