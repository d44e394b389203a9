import assert from 'node:assert/strict';
import { test } from 'node:test';

import { BLK_LATENCY_BOUNDS_US } from '../../../src/devices/blk/device.js';
import type { DeviceInfo, DeviceStats } from '../../../src/mgmt/manager.js';
import { createMetricsRegistry, startMetricsServer } from '../../../src/mgmt/metrics.js';
import { netDeviceInfo } from './net-fixtures.js';

function stats(name: string, n: number): DeviceStats {
  const buckets = new Array<number>(BLK_LATENCY_BOUNDS_US.length + 1).fill(0);
  buckets[0] = n; // <= 16 us
  buckets[3] = 2; // (64, 128] us
  buckets[BLK_LATENCY_BOUNDS_US.length] = 1; // overflow
  return {
    name,
    requests: n,
    reads: 1,
    writes: n - 1,
    flushes: 0,
    discards: 0,
    writeZeroes: 0,
    bytesRead: 4096,
    bytesWritten: (n - 1) * 4096,
    errors: { io: 1, unsupported: 0, driver: 2, backend: 1 },
    inFlight: 3,
    latency: { boundsUs: BLK_LATENCY_BOUNDS_US, buckets, count: n + 3, sumSeconds: 0.5 },
    queues: [
      {
        index: 0,
        requests: n,
        bytesRead: 4096,
        bytesWritten: 0,
        errors: 1,
        inFlight: 3,
        kicks: 5,
        interrupts: 6,
      },
      {
        index: 1,
        requests: 0,
        bytesRead: 0,
        bytesWritten: 0,
        errors: 0,
        inFlight: 0,
        kicks: 0,
        interrupts: 0,
      },
    ],
    configInterrupts: 1,
    controlMessages: 40,
    controlMessageMaxMs: 2.5,
  };
}

function source(current: { n: number }) {
  return {
    list: (): DeviceInfo[] => [
      {
        name: 'd0',
        state: 'running',
        path: '/dev/vda',
        backend: 'null:1M',
        queues: 2,
        queueSize: 256,
        logicalBlockSize: 512,
        readOnly: false,
        packed: false,
        attach: true,
        driver: 'virtio-vdpa',
        features: '0x0',
        size: 1 << 20,
      },
    ],
    stats: (): DeviceStats[] => [stats('d0', current.n)],
  };
}

test('metrics are read from the counters at scrape time, in Prometheus text format', async () => {
  const current = { n: 10 };
  const registry = createMetricsRegistry(source(current), { processMetrics: false });
  let text = await registry.metrics();
  assert.match(text, /^# TYPE vduse_device_completed_total counter$/m);
  assert.match(text, /^vduse_device_completed_total\{device="d0"\} 10$/m);
  assert.match(text, /^vduse_device_requests_total\{device="d0",op="write"\} 9$/m);
  assert.match(text, /^vduse_device_written_bytes_total\{device="d0"\} 36864$/m);
  assert.match(text, /^vduse_device_errors_total\{device="d0",kind="driver"\} 2$/m);
  assert.match(text, /^vduse_device_in_flight\{device="d0"\} 3$/m);
  assert.match(text, /^vduse_device_size_bytes\{device="d0"\} 1048576$/m);
  assert.match(text, /^vduse_device_control_message_max_seconds\{device="d0"\} 0\.0025$/m);
  assert.match(text, /^vduse_queue_kicks_total\{device="d0",queue="0"\} 5$/m);
  assert.match(text, /^vduse_queue_interrupts_total\{device="d0",queue="0"\} 6$/m);
  assert.match(text, /^vduse_devices\{state="running"\} 1$/m);
  // the histogram: cumulative buckets, +Inf = count
  assert.match(text, /^# TYPE vduse_device_request_duration_seconds histogram$/m);
  assert.match(text, /^vduse_device_request_duration_seconds_bucket\{device="d0",le="0\.000016"\} 10$/m);
  assert.match(text, /^vduse_device_request_duration_seconds_bucket\{device="d0",le="0\.000064"\} 10$/m);
  assert.match(text, /^vduse_device_request_duration_seconds_bucket\{device="d0",le="0\.000128"\} 12$/m);
  assert.match(text, /^vduse_device_request_duration_seconds_bucket\{device="d0",le="\+Inf"\} 13$/m);
  assert.match(text, /^vduse_device_request_duration_seconds_count\{device="d0"\} 13$/m);
  assert.match(text, /^vduse_device_request_duration_seconds_sum\{device="d0"\} 0\.5$/m);
  current.n = 20;
  text = await registry.metrics();
  assert.match(
    text,
    /^vduse_device_completed_total\{device="d0"\} 20$/m,
    'a later scrape sees the new values',
  );
});

test('the HTTP listener serves /metrics and 404s the rest', async () => {
  const registry = createMetricsRegistry(source({ n: 1 }), { processMetrics: false });
  const server = await startMetricsServer(registry, '127.0.0.1', 0);
  try {
    const a = server.address();
    assert.ok(typeof a === 'object' && a !== null);
    const res = await fetch(`http://127.0.0.1:${a.port}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain/);
    assert.match(await res.text(), /vduse_device_completed_total\{device="d0"\} 1/);
    assert.equal((await fetch(`http://127.0.0.1:${a.port}/nope`)).status, 404);
    assert.equal((await fetch(`http://127.0.0.1:${a.port}/metrics`, { method: 'POST' })).status, 405);
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});

test('a net device: packets, bytes and drops per direction and its link; no block-only metric for it', async () => {
  const net: DeviceStats = {
    ...stats('n0', 1),
    type: 'net',
    latency: { boundsUs: [], buckets: [0], count: 0, sumSeconds: 0 },
    net: {
      rx: { packets: 11, bytes: 1100, drops: 2 },
      tx: { packets: 7, bytes: 700, drops: 1 },
      link: 'down',
    },
  };
  const registry = createMetricsRegistry(
    {
      list: () => [netDeviceInfo('n0', { tap: 't0', link: 'down' })],
      stats: () => [net],
    },
    { processMetrics: false },
  );
  const text = await registry.metrics();
  assert.match(text, /^vduse_net_packets_total\{device="n0",direction="rx"\} 11$/m);
  assert.match(text, /^vduse_net_packets_total\{device="n0",direction="tx"\} 7$/m);
  assert.match(text, /^vduse_net_bytes_total\{device="n0",direction="rx"\} 1100$/m);
  assert.match(text, /^vduse_net_drops_total\{device="n0",direction="rx"\} 2$/m);
  assert.match(text, /^vduse_net_drops_total\{device="n0",direction="tx"\} 1$/m);
  assert.match(text, /^vduse_net_link_up\{device="n0"\} 0$/m);
  assert.match(text, /^vduse_queue_kicks_total\{device="n0",queue="0"\} 5$/m);
  assert.doesNotMatch(text, /vduse_device_requests_total\{device="n0"/);
  assert.doesNotMatch(text, /vduse_device_request_duration_seconds_bucket\{.*device="n0"/);
  assert.doesNotMatch(text, /vduse_device_size_bytes\{device="n0"/);
});
