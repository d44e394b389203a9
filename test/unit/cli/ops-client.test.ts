import assert from 'node:assert/strict';
import { test } from 'node:test';

import { CliUsageError } from '../../../src/cli/args.js';
import { defaultSocketPath, formatDeviceTable, parseClientArgs } from '../../../src/cli/client.js';
import { parseServeArgs } from '../../../src/cli/serve.js';
import { percentile, rates, renderRates } from '../../../src/cli/stats-watch.js';
import { BLK_LATENCY_BOUNDS_US } from '../../../src/devices/blk/device.js';
import type { DeviceStats } from '../../../src/mgmt/manager.js';

test('default socket: /run for root, XDG_RUNTIME_DIR otherwise, a usage error without it', () => {
  assert.equal(defaultSocketPath({}, 0), '/run/vduse-ts/vduse.sock');
  assert.equal(
    defaultSocketPath({ XDG_RUNTIME_DIR: '/run/user/1000' }, 1000),
    '/run/user/1000/vduse-ts/vduse.sock',
  );
  assert.throws(() => defaultSocketPath({}, 1000), CliUsageError);
});

test('vduse add maps the blk options to device.add params (numbers as numbers), checked like vduse blk', () => {
  assert.deepEqual(
    parseClientArgs('add', [
      'd0',
      '--backend',
      'memory:1G',
      '--queues',
      '4',
      '--queue-size',
      '64',
      '--readonly',
      '--no-attach',
      '--socket',
      '/s',
    ]),
    {
      command: 'add',
      socket: '/s',
      method: 'device.add',
      params: {
        name: 'd0',
        backend: 'memory:1G',
        queues: 4,
        'queue-size': 64,
        readonly: true,
        attach: false,
      },
      json: false,
      watch: false,
      intervalMs: 1000,
      count: 0,
    },
  );
  assert.throws(() => parseClientArgs('add', ['d0']), /^CliUsageError: vduse add: --backend is required$/);
  // the same words as vduse blk (and exit 2), not the daemon's "params.queues"
  const bad = (args: string[], message: string): void =>
    assert.throws(
      () => parseClientArgs('add', ['d0', '--backend', 'null:1M', ...args]),
      (e: unknown) => e instanceof CliUsageError && e.message === message,
    );
  bad(['--queues', 'x'], 'vduse add: --queues must be a whole number, got "x"');
  bad(['--queue-size', '100'], 'vduse add: --queue-size must be a power of two, got 100');
  bad(['--reconnect', 'x'], 'vduse add: --reconnect must be auto, never or always, got "x"');
  bad(['--queues', '2', '--queues', '4'], 'vduse add: --queues is given twice (give it once)');
  assert.deepEqual(
    (
      parseClientArgs('add', [
        'd0',
        '--backend',
        'file:/x,size=1M',
        '--state-dir',
        '/var/lib/s',
        '--reconnect',
        'always',
        '--persist',
      ]) as { params: unknown }
    ).params,
    { name: 'd0', backend: 'file:/x,size=1M', 'state-dir': '/var/lib/s', reconnect: 'always', persist: true },
  );
  assert.throws(() => parseClientArgs('add', ['--backend', 'null:1M']), /vduse add: missing NAME/);
  assert.throws(() => parseClientArgs('add', ['a', 'b', '--backend', 'null:1M']), /unexpected argument "b"/);
  assert.throws(
    () => parseClientArgs('add', ['a', '--backend', 'null:1M', '--force']),
    /unknown option --force/,
  );
});

test('del, ls, resize, stats', () => {
  const del = parseClientArgs('del', ['d0', '--force']);
  assert.ok(del.command === 'del');
  assert.equal(del.method, 'device.remove');
  assert.deepEqual(del.params, { name: 'd0', force: true });
  const ls = parseClientArgs('ls', ['--json']);
  assert.ok(ls.command === 'ls' && ls.json && ls.method === 'device.list');
  assert.throws(() => parseClientArgs('ls', ['x']), /unexpected argument "x"/);
  const rs = parseClientArgs('resize', ['d0', '2G']);
  assert.ok(rs.command === 'resize');
  assert.deepEqual(rs.params, { name: 'd0', size: '2G' });
  assert.deepEqual((parseClientArgs('resize', ['d0', '4096']) as { params: unknown }).params, {
    name: 'd0',
    size: 4096,
  });
  assert.throws(() => parseClientArgs('resize', ['d0']), /missing NAME and SIZE/);
  const st = parseClientArgs('stats', ['d0', '--watch', '--interval', '0.5', '--count', '3']);
  assert.ok(st.command === 'stats');
  assert.deepEqual([st.params, st.watch, st.intervalMs, st.count], [{ name: 'd0' }, true, 500, 3]);
  assert.throws(
    () => parseClientArgs('stats', ['--interval', '1']),
    /--interval and --count go with --watch/,
  );
  assert.throws(
    () => parseClientArgs('stats', ['--watch', '--interval', '0']),
    /--interval must be 0.1..3600 seconds/,
  );
  assert.throws(() => parseClientArgs('stats', ['--bogus']), /vduse stats: Unknown option '--bogus'/);
  assert.deepEqual(parseClientArgs('del', ['--help']), { command: 'help' });
});

test('vduse serve options', () => {
  assert.deepEqual(
    parseServeArgs(['--config', 'c.yaml', '--metrics', '9470', '--log-format', 'json', '-v']),
    {
      command: 'serve',
      verbose: true,
      config: 'c.yaml',
      metrics: '9470',
      logFormat: 'json',
    },
  );
  assert.throws(
    () => parseServeArgs(['--log-format', 'xml']),
    /--log-format must be json or text, got "xml"/,
  );
  assert.throws(() => parseServeArgs(['--metrics', 'x:y']), /--metrics: expected ADDR:PORT/);
  assert.throws(() => parseServeArgs(['extra']), CliUsageError);
  assert.equal(parseServeArgs(['-h']).command, 'help');
});

function snap(name: string, requests: number, written: number, buckets: number[]): DeviceStats {
  const b = new Array<number>(BLK_LATENCY_BOUNDS_US.length + 1).fill(0);
  buckets.forEach((n, i) => (b[i] = n));
  return {
    name,
    requests,
    reads: 0,
    writes: requests,
    flushes: 0,
    discards: 0,
    writeZeroes: 0,
    bytesRead: 0,
    bytesWritten: written,
    errors: { io: 0, unsupported: 0, driver: 0, backend: 0 },
    inFlight: 2,
    latency: { boundsUs: BLK_LATENCY_BOUNDS_US, buckets: b, count: requests, sumSeconds: 0 },
    queues: [],
    configInterrupts: 0,
    controlMessages: 0,
    controlMessageMaxMs: 0,
  };
}

test('percentiles from histogram buckets: the upper bound of the bucket holding the rank', () => {
  const b = [0, 0, 50, 49, 1]; // (32,64] x50, (64,128] x49, (128,256] x1
  assert.equal(percentile(BLK_LATENCY_BOUNDS_US, b, 0.5), 64e-6);
  assert.equal(percentile(BLK_LATENCY_BOUNDS_US, b, 0.99), 128e-6);
  assert.equal(percentile(BLK_LATENCY_BOUNDS_US, b, 1), 256e-6);
  assert.equal(percentile(BLK_LATENCY_BOUNDS_US, [0, 0], 0.5), null);
  const overflow = new Array<number>(BLK_LATENCY_BOUNDS_US.length + 1).fill(0);
  overflow[BLK_LATENCY_BOUNDS_US.length] = 1;
  assert.equal(percentile(BLK_LATENCY_BOUNDS_US, overflow, 0.5), Infinity);
});

test("rates over an interval use only that interval's requests and latencies", () => {
  const prev = [snap('a', 100, 1e6, [100])];
  const cur = [snap('a', 300, 5e6, [100, 0, 0, 200]), snap('b', 10, 0, [10])];
  const r = rates(prev, cur, 2);
  assert.deepEqual(r[0], {
    name: 'a',
    iops: 100,
    readMBps: 0,
    writeMBps: 2,
    inFlight: 2,
    errors: 0,
    p50: 128e-6,
    p99: 128e-6,
  });
  assert.equal(r[1]!.iops, 5, 'a new device counts from zero');
  const text = renderRates(r, new Date('2026-01-01T12:34:56Z'));
  assert.match(
    text,
    /^12:34:56 {2}2 device\(s\)\nDEVICE\s+IOPS\s+READ MB\/s\s+WRITE MB\/s\s+INFLIGHT\s+ERRORS\s+P50\s+P99\n/,
  );
  assert.match(text, /\na\s+100\s+0\.0\s+2\.0\s+2\s+0\s+128us\s+128us\n/);
});

test('ls table', () => {
  assert.equal(formatDeviceTable([]), 'no devices\n');
  const t = formatDeviceTable([
    {
      name: 'disk0',
      state: 'running',
      path: '/dev/vda',
      backend: 'memory:1G',
      queues: 2,
      queueSize: 256,
      logicalBlockSize: 512,
      readOnly: true,
      packed: false,
      attach: true,
      driver: 'virtio-vdpa',
      features: '0x1',
      size: 1 << 30,
    },
  ]);
  assert.equal(
    t,
    'NAME   STATE    DEVICE    SIZE   QUEUES  FEATURES  BACKEND\n' +
      'disk0  running  /dev/vda  1 GiB  2x256   0x1       memory:1G (ro)\n',
  );
});
