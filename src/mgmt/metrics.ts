/**
 * Prometheus metrics of `vduse serve`, with prom-client. Nothing happens per request: the device and transport
 * keep plain number counters, and the collect() callbacks copy them into the metrics at scrape time.
 *
 * Names (labels: device, and queue where per queue):
 *   vduse_device_requests_total{device,op}          requests that reached the backend, by op (read, write, flush,
 *                                                   discard, write_zeroes)
 *   vduse_device_completed_total{device}            requests answered to the driver
 *   vduse_device_read_bytes_total{device}, vduse_device_written_bytes_total{device}
 *   vduse_device_errors_total{device,kind}          kind: io, unsupported, driver, backend
 *   vduse_device_in_flight{device}                  requests in the backend now
 *   vduse_device_request_duration_seconds{device}   histogram (backend submit to completion)
 *   vduse_device_size_bytes{device}                 capacity
 *   vduse_device_config_interrupts_total{device}
 *   vduse_device_control_messages_total{device}     VDUSE messages answered
 *   vduse_device_control_message_max_seconds{device}  the slowest answer so far
 *   vduse_queue_requests_total{device,queue}, vduse_queue_read_bytes_total, vduse_queue_written_bytes_total,
 *   vduse_queue_errors_total, vduse_queue_in_flight, vduse_queue_kicks_total, vduse_queue_interrupts_total
 *   vduse_devices{state}                            devices by state
 * A net device (type: net) has the per-device and per-queue counters too (requests: frames, read bytes: those
 * received by the driver, written: those it sent; queue 0 receive, 1 transmit), but no request-by-op counter,
 * latency histogram or size; and these, with direction rx (towards the guest) or tx (from it):
 *   vduse_net_packets_total{device,direction}, vduse_net_bytes_total{device,direction}
 *   vduse_net_drops_total{device,direction}         frames dropped (too long, bad header, link down, refused)
 *   vduse_net_link_up{device}                       1 when the link is up
 * plus prom-client's default process metrics (process_*, nodejs_*).
 */
import { createServer, type Server } from 'node:http';

import {
  Counter,
  Gauge,
  Registry,
  collectDefaultMetrics,
  type MetricObjectWithValues,
  type MetricValue,
} from 'prom-client';

import type { DeviceInfo, DeviceStats, NetDirectionStats } from './manager.js';
import { messageOf, systemErrorMessage } from '../common/errors.js';
import { MgmtError } from './daemon/errors.js';

export interface MetricsSource {
  list(): DeviceInfo[];
  stats(): DeviceStats[];
}

type Labels = Record<string, string | number>;

/** A counter or gauge whose values are taken from the devices at scrape time. */
function fromSource<T extends string>(
  registry: Registry,
  kind: 'counter' | 'gauge',
  name: string,
  help: string,
  labelNames: readonly T[],
  read: () => Iterable<[Partial<Record<T, string | number>>, number]>,
): void {
  const config = {
    name,
    help,
    labelNames,
    registers: [registry],
    collect(this: Counter<T> | Gauge<T>) {
      this.reset();
      for (const [labels, value] of read()) {
        if (this instanceof Gauge) this.set(labels, value);
        else this.inc(labels, value);
      }
    },
  };
  if (kind === 'counter') new Counter<T>(config);
  else new Gauge<T>(config);
}

/** The latency histogram, built from the device's fixed buckets (prom-client formats it). */
class LatencyHistogram {
  readonly name = 'vduse_device_request_duration_seconds';
  readonly help = 'Request latency from backend submit to completion';
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  constructor(readonly source: MetricsSource) {}

  get(): Promise<MetricObjectWithValues<MetricValue<string>>> {
    const values: MetricValue<string>[] = [];
    for (const s of this.source.stats()) {
      if (s.net !== undefined) continue;
      let cumulative = 0;
      s.latency.boundsUs.forEach((us, i) => {
        cumulative += s.latency.buckets[i] ?? 0;
        values.push({
          metricName: `${this.name}_bucket`,
          labels: { device: s.name, le: us / 1e6 },
          value: cumulative,
        } as MetricValue<string>);
      });
      cumulative += s.latency.buckets[s.latency.boundsUs.length] ?? 0;
      values.push({
        metricName: `${this.name}_bucket`,
        labels: { device: s.name, le: '+Inf' },
        value: cumulative,
      } as MetricValue<string>);
      values.push({
        metricName: `${this.name}_sum`,
        labels: { device: s.name },
        value: s.latency.sumSeconds,
      } as MetricValue<string>);
      values.push({
        metricName: `${this.name}_count`,
        labels: { device: s.name },
        value: s.latency.count,
      } as MetricValue<string>);
    }
    return Promise.resolve({
      name: this.name,
      help: this.help,
      type: this.type,
      aggregator: this.aggregator,
      values,
    } as unknown as MetricObjectWithValues<MetricValue<string>>);
  }

  reset(): void {}
}

/** A registry with every metric above wired to `source`. */
export function createMetricsRegistry(
  source: MetricsSource,
  options: { processMetrics?: boolean } = {},
): Registry {
  const registry = new Registry();
  const perDevice = (pick: (s: DeviceStats) => number) =>
    function* (): Iterable<[Labels, number]> {
      for (const s of source.stats()) yield [{ device: s.name }, pick(s)];
    };
  const perQueue = (pick: (q: DeviceStats['queues'][number]) => number) =>
    function* (): Iterable<[Labels, number]> {
      for (const s of source.stats())
        for (const q of s.queues) yield [{ device: s.name, queue: q.index }, pick(q)];
    };
  fromSource(
    registry,
    'counter',
    'vduse_device_requests_total',
    'Requests that reached the backend, by operation',
    ['device', 'op'],
    function* () {
      for (const s of source.stats()) {
        if (s.net !== undefined) continue;
        yield [{ device: s.name, op: 'read' }, s.reads];
        yield [{ device: s.name, op: 'write' }, s.writes];
        yield [{ device: s.name, op: 'flush' }, s.flushes];
        yield [{ device: s.name, op: 'discard' }, s.discards];
        yield [{ device: s.name, op: 'write_zeroes' }, s.writeZeroes];
      }
    },
  );
  fromSource(
    registry,
    'counter',
    'vduse_device_completed_total',
    'Requests answered to the driver',
    ['device'],
    perDevice((s) => s.requests),
  );
  fromSource(
    registry,
    'counter',
    'vduse_device_read_bytes_total',
    'Bytes read by the driver',
    ['device'],
    perDevice((s) => s.bytesRead),
  );
  fromSource(
    registry,
    'counter',
    'vduse_device_written_bytes_total',
    'Bytes written by the driver',
    ['device'],
    perDevice((s) => s.bytesWritten),
  );
  fromSource(
    registry,
    'counter',
    'vduse_device_errors_total',
    'Errors by kind (io, unsupported, driver, backend)',
    ['device', 'kind'],
    function* () {
      for (const s of source.stats()) {
        for (const [kind, n] of Object.entries(s.errors)) yield [{ device: s.name, kind }, n];
      }
    },
  );
  fromSource(
    registry,
    'gauge',
    'vduse_device_in_flight',
    'Requests in the backend now',
    ['device'],
    perDevice((s) => s.inFlight),
  );
  fromSource(
    registry,
    'gauge',
    'vduse_device_size_bytes',
    'Device capacity in bytes',
    ['device'],
    function* () {
      for (const d of source.list()) if (d.net === undefined) yield [{ device: d.name }, d.size];
    },
  );
  fromSource(
    registry,
    'counter',
    'vduse_device_config_interrupts_total',
    'Config-change interrupts injected',
    ['device'],
    perDevice((s) => s.configInterrupts),
  );
  fromSource(
    registry,
    'counter',
    'vduse_device_control_messages_total',
    'VDUSE control messages answered',
    ['device'],
    perDevice((s) => s.controlMessages),
  );
  fromSource(
    registry,
    'gauge',
    'vduse_device_control_message_max_seconds',
    'Slowest answer to a VDUSE control message',
    ['device'],
    perDevice((s) => s.controlMessageMaxMs / 1000),
  );
  fromSource(
    registry,
    'counter',
    'vduse_queue_requests_total',
    'Requests answered, per queue',
    ['device', 'queue'],
    perQueue((q) => q.requests),
  );
  fromSource(
    registry,
    'counter',
    'vduse_queue_read_bytes_total',
    'Bytes read, per queue',
    ['device', 'queue'],
    perQueue((q) => q.bytesRead),
  );
  fromSource(
    registry,
    'counter',
    'vduse_queue_written_bytes_total',
    'Bytes written, per queue',
    ['device', 'queue'],
    perQueue((q) => q.bytesWritten),
  );
  fromSource(
    registry,
    'counter',
    'vduse_queue_errors_total',
    'Requests answered with an error, per queue',
    ['device', 'queue'],
    perQueue((q) => q.errors),
  );
  fromSource(
    registry,
    'gauge',
    'vduse_queue_in_flight',
    'Requests in the backend now, per queue',
    ['device', 'queue'],
    perQueue((q) => q.inFlight),
  );
  fromSource(
    registry,
    'counter',
    'vduse_queue_kicks_total',
    'Driver kicks (notifications), per queue',
    ['device', 'queue'],
    perQueue((q) => q.kicks),
  );
  fromSource(
    registry,
    'counter',
    'vduse_queue_interrupts_total',
    'Interrupts injected, per queue',
    ['device', 'queue'],
    perQueue((q) => q.interrupts),
  );
  const perDirection = (pick: (d: NetDirectionStats) => number) =>
    function* (): Iterable<[Labels, number]> {
      for (const s of source.stats()) {
        if (s.net === undefined) continue;
        yield [{ device: s.name, direction: 'rx' }, pick(s.net.rx)];
        yield [{ device: s.name, direction: 'tx' }, pick(s.net.tx)];
      }
    };
  fromSource(
    registry,
    'counter',
    'vduse_net_packets_total',
    'Frames delivered, by direction (rx: to the guest, tx: from it)',
    ['device', 'direction'],
    perDirection((d) => d.packets),
  );
  fromSource(
    registry,
    'counter',
    'vduse_net_bytes_total',
    'Frame bytes delivered, by direction',
    ['device', 'direction'],
    perDirection((d) => d.bytes),
  );
  fromSource(
    registry,
    'counter',
    'vduse_net_drops_total',
    'Frames dropped, by direction',
    ['device', 'direction'],
    perDirection((d) => d.drops),
  );
  fromSource(registry, 'gauge', 'vduse_net_link_up', 'Link state (1 up, 0 down)', ['device'], function* () {
    for (const s of source.stats())
      if (s.net !== undefined) yield [{ device: s.name }, s.net.link === 'up' ? 1 : 0];
  });
  fromSource(registry, 'gauge', 'vduse_devices', 'Devices by state', ['state'], function* () {
    const counts = new Map<string, number>();
    for (const d of source.list()) counts.set(d.state, (counts.get(d.state) ?? 0) + 1);
    for (const state of ['running', 'broken', 'starting', 'stopping'])
      yield [{ state }, counts.get(state) ?? 0];
  });
  registry.registerMetric(
    new LatencyHistogram(source) as unknown as Parameters<Registry['registerMetric']>[0],
  );
  if (options.processMetrics !== false) collectDefaultMetrics({ register: registry });
  return registry;
}

/** Serve GET /metrics on host:port; resolves with the server once listening. */
export async function startMetricsServer(registry: Registry, host: string, port: number): Promise<Server> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (path === '/metrics') {
      registry.metrics().then(
        (text) => {
          res.writeHead(200, { 'content-type': registry.contentType });
          res.end(req.method === 'HEAD' ? undefined : text);
        },
        (err: unknown) => {
          res.writeHead(500, { 'content-type': 'text/plain' }).end(`${messageOf(err)}\n`);
        },
      );
      return;
    }
    if (path === '/' || path === '/healthz') {
      res
        .writeHead(200, { 'content-type': 'text/plain' })
        .end(path === '/' ? 'vduse-ts: see /metrics\n' : 'ok\n');
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
  });
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (err) {
    throw new MgmtError('ERR_MGMT_METRICS', `metrics on ${host}:${port}: ${systemErrorMessage(err)}`, {
      cause: err,
    });
  }
  return server;
}
