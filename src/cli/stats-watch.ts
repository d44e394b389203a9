/**
 * `vduse stats`: counters of the daemon's devices, once or as a live view (`--watch`, like iostat): per device
 * IOPS, MB/s read and written, requests in flight and latency percentiles over the last interval, computed from
 * two snapshots of the counters and the latency histogram. The arithmetic is plain functions (unit-tested).
 */
import type { DeviceStats } from '../mgmt/manager.js';

/**
 * The p-th percentile (0..1) in seconds of a non-cumulative histogram: the upper bound of the bucket holding it
 * (null when empty; the overflow bucket gives Infinity).
 */
export function percentile(
  boundsUs: readonly number[],
  buckets: readonly number[],
  p: number,
): number | null {
  const total = buckets.reduce((a, b) => a + b, 0);
  if (total === 0) return null;
  const rank = Math.max(1, Math.ceil(total * p));
  let seen = 0;
  for (let i = 0; i < buckets.length; i++) {
    seen += buckets[i] ?? 0;
    if (seen >= rank) return i < boundsUs.length ? boundsUs[i]! / 1e6 : Infinity;
  }
  return Infinity;
}

export interface Rates {
  name: string;
  iops: number;
  readMBps: number;
  writeMBps: number;
  inFlight: number;
  errors: number;
  p50: number | null;
  p99: number | null;
}

const errorsOf = (s: DeviceStats): number =>
  s.errors.io + s.errors.unsupported + s.errors.driver + s.errors.backend;

/** Rates between two snapshots `seconds` apart (a device new in `cur` counts from zero). */
export function rates(prev: readonly DeviceStats[], cur: readonly DeviceStats[], seconds: number): Rates[] {
  return cur.map((c) => {
    const p = prev.find((x) => x.name === c.name);
    const d = (f: (s: DeviceStats) => number): number => f(c) - (p ? f(p) : 0);
    const buckets = c.latency.buckets.map((n, i) => n - (p?.latency.buckets[i] ?? 0));
    const dt = seconds > 0 ? seconds : 1;
    return {
      name: c.name,
      iops: d((s) => s.requests) / dt,
      readMBps: d((s) => s.bytesRead) / dt / 1e6,
      writeMBps: d((s) => s.bytesWritten) / dt / 1e6,
      inFlight: c.inFlight,
      errors: d(errorsOf),
      p50: percentile(c.latency.boundsUs, buckets, 0.5),
      p99: percentile(c.latency.boundsUs, buckets, 0.99),
    };
  });
}

function ms(seconds: number | null): string {
  if (seconds === null) return '-';
  if (seconds === Infinity) return '>8s';
  return seconds < 0.001 ? `${Math.round(seconds * 1e6)}us` : `${+(seconds * 1000).toFixed(1)}ms`;
}

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  // numbers (and "-", "12us", "1.5ms") are right-aligned, text left-aligned
  const numeric = header.map(
    (_, i) => rows.length > 0 && rows.every((r) => /^(?:-|>8s|-?\d+(?:\.\d+)?(?:us|ms)?)$/.test(r[i] ?? '')),
  );
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (numeric[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].join('\n') + '\n';
}

/** The live view: one line per device (latency percentiles are bucket upper bounds). */
export function renderRates(rows: readonly Rates[], now = new Date()): string {
  const head = `${now.toISOString().slice(11, 19)}  ${rows.length} device(s)\n`;
  return (
    head +
    table(
      ['DEVICE', 'IOPS', 'READ MB/s', 'WRITE MB/s', 'INFLIGHT', 'ERRORS', 'P50', 'P99'],
      rows.map((r) => [
        r.name,
        r.iops.toFixed(0),
        r.readMBps.toFixed(1),
        r.writeMBps.toFixed(1),
        String(r.inFlight),
        String(r.errors),
        ms(r.p50),
        ms(r.p99),
      ]),
    )
  );
}

/** Totals since each device was created. */
export function renderTotals(stats: readonly DeviceStats[]): string {
  return table(
    [
      'DEVICE',
      'REQUESTS',
      'READS',
      'WRITES',
      'FLUSHES',
      'READ MiB',
      'WRITTEN MiB',
      'ERRORS',
      'INFLIGHT',
      'P50',
      'P99',
    ],
    stats.map((s) => [
      s.name,
      String(s.requests),
      String(s.reads),
      String(s.writes),
      String(s.flushes),
      (s.bytesRead / 2 ** 20).toFixed(1),
      (s.bytesWritten / 2 ** 20).toFixed(1),
      String(errorsOf(s)),
      String(s.inFlight),
      ms(percentile(s.latency.boundsUs, s.latency.buckets, 0.5)),
      ms(percentile(s.latency.boundsUs, s.latency.buckets, 0.99)),
    ]),
  );
}

/** Totals of the net devices: packets, bytes and drops per direction (rx: towards the guest). */
export function renderNetTotals(stats: readonly DeviceStats[]): string {
  return table(
    ['DEVICE', 'LINK', 'RX PACKETS', 'RX MiB', 'RX DROPS', 'TX PACKETS', 'TX MiB', 'TX DROPS', 'ERRORS'],
    stats.flatMap((s) =>
      s.net === undefined
        ? []
        : [
            [
              s.name,
              s.net.link,
              String(s.net.rx.packets),
              (s.net.rx.bytes / 2 ** 20).toFixed(1),
              String(s.net.rx.drops),
              String(s.net.tx.packets),
              (s.net.tx.bytes / 2 ** 20).toFixed(1),
              String(s.net.tx.drops),
              String(errorsOf(s)),
            ],
          ],
    ),
  );
}

/** `vduse stats`: the block devices' table, then the net devices' (each only when there is one). */
export function renderAllTotals(stats: readonly DeviceStats[]): string {
  const blk = stats.filter((s) => s.net === undefined);
  const net = stats.filter((s) => s.net !== undefined);
  const parts: string[] = [];
  if (blk.length > 0 || net.length === 0) parts.push(renderTotals(blk));
  if (net.length > 0) parts.push(renderNetTotals(net));
  return parts.join('\n');
}

export { table as formatTable };
