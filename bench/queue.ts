/**
 * Virtqueue engine benchmark: the mock driver and the device side exchange virtio-blk-shaped chains (16-byte
 * readable header, one 4 KiB writable data buffer, 1-byte writable status) in one thread, for split and packed
 * rings, with and without EVENT_IDX, one or 32 requests per batch. Both sides are measured together: the number
 * is what a device loop costs per request plus what a (lean) driver costs.
 *
 *   npm run bench:queue            # ~2.5 s per case
 *   BENCH_SECONDS=1 npm run bench:queue
 *
 * Writes bench/results/queue-<timestamp>.json and bench/results/queue-latest.json.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MockDriver } from '../src/testing/mock-driver.js';
import type { BufferRef } from '../src/testing/mock-driver.js';
import { readFromChain, writeStatus } from '../src/virtio/chain.js';
import type { Virtqueue } from '../src/virtio/virtqueue.js';

interface Case {
  name: string;
  packed: boolean;
  eventIdx: boolean;
  batch: number;
}

interface CaseResult extends Case {
  requests: number;
  seconds: number;
  requestsPerSecond: number;
  /**
   * Requests per second of CPU time the process got (user + system): what one core does, even when other
   * processes share the machine and the wall-clock figure drops.
   */
  requestsPerCpuSecond: number;
  nsPerRequest: number;
  /** The device side's share (timed separately, includes timer overhead per batch). */
  deviceNsPerRequest: number;
  kicksPerRequest: number;
  signalsPerRequest: number;
}

const QUEUE_SIZE = 256;
const SECONDS = Number(process.env.BENCH_SECONDS ?? 2.5);

function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg) && (JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'vduse-ts')
      return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find the vduse-ts package root');
    dir = up;
  }
}

/** The device loop of one batch: pop everything, read the header, set the status, return, publish once. */
function serve(q: Virtqueue, header: Uint8Array): number {
  let n = 0;
  for (let c = q.pop(); c !== null; c = q.pop()) {
    readFromChain(c, 0, header);
    writeStatus(c, 0);
    q.addUsed(c, c.writableBytes);
    n++;
  }
  q.publish();
  return n;
}

function run(c: Case): CaseResult {
  const drv = new MockDriver({ size: QUEUE_SIZE, packed: c.packed, eventIdx: c.eventIdx });
  const q = drv.createDeviceQueue();
  // One set of buffers per in-flight request slot, reused (the lean driver path).
  const readable: BufferRef[][] = [];
  const writable: BufferRef[][] = [];
  for (let k = 0; k < c.batch; k++) {
    const hdr = drv.alloc(16);
    drv.write(hdr, new Uint8Array([1, 0, 0, 0, 0, 0, 0, 0, k, 0, 0, 0, 0, 0, 0, 0]));
    readable.push([{ addr: hdr, len: 16 }]);
    writable.push([
      { addr: drv.alloc(4096), len: 4096 },
      { addr: drv.alloc(1), len: 1 },
    ]);
  }
  const header = new Uint8Array(16);
  const batch = c.batch;
  const step = (): number => {
    for (let k = 0; k < batch; k++) drv.addBuffers(readable[k] as BufferRef[], writable[k] as BufferRef[]);
    drv.kick();
    const served = serve(q, header);
    if (drv.reclaim() !== batch || served !== batch)
      throw new Error(`lost requests: ${q.error?.message ?? '?'}`);
    return served;
  };
  // Warm up (JIT), then measure in slices so the clock is read rarely.
  const warmEnd = performance.now() + 300;
  while (performance.now() < warmEnd) for (let i = 0; i < 100; i++) step();
  const kicks0 = drv.kicks;
  const signals0 = drv.signals;
  let requests = 0;
  const start = process.hrtime.bigint();
  const cpu0 = process.cpuUsage();
  const end = performance.now() + SECONDS * 1000;
  const slice = Math.max(1, Math.floor(2048 / batch));
  while (performance.now() < end) for (let i = 0; i < slice; i++) requests += step();
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  const cpuSeconds = (cpu.user + cpu.system) / 1e6;
  const kicks = drv.kicks - kicks0;
  const signals = drv.signals - signals0;
  // A shorter second phase times the device side alone (pop, header copy, status, addUsed, publish).
  let deviceMs = 0;
  let deviceRequests = 0;
  const end2 = performance.now() + (SECONDS * 1000) / 4;
  while (performance.now() < end2) {
    for (let i = 0; i < slice; i++) {
      for (let k = 0; k < batch; k++) drv.addBuffers(readable[k] as BufferRef[], writable[k] as BufferRef[]);
      drv.kick();
      const t0 = performance.now();
      deviceRequests += serve(q, header);
      deviceMs += performance.now() - t0;
      drv.reclaim();
    }
  }
  if (q.error !== null) throw q.error;
  return {
    ...c,
    requests,
    seconds,
    requestsPerSecond: requests / seconds,
    requestsPerCpuSecond: requests / cpuSeconds,
    nsPerRequest: (seconds * 1e9) / requests,
    deviceNsPerRequest: (deviceMs * 1e6) / deviceRequests,
    kicksPerRequest: kicks / requests,
    signalsPerRequest: signals / requests,
  };
}

function main(): void {
  const cases: Case[] = [];
  for (const packed of [false, true]) {
    for (const eventIdx of [false, true]) {
      for (const batch of [1, 32]) {
        cases.push({
          name: `${packed ? 'packed' : 'split'}${eventIdx ? '+event-idx' : ''} batch ${batch}`,
          packed,
          eventIdx,
          batch,
        });
      }
    }
  }
  const results: CaseResult[] = [];
  console.log(`virtqueue engine, queue size ${QUEUE_SIZE}, ${SECONDS} s per case, node ${process.version}`);
  console.log('case                        req/s  req/cpu-s   ns/req  device ns/req  kicks/req  signals/req');
  for (const c of cases) {
    const r = run(c);
    results.push(r);
    console.log(
      [
        r.name.padEnd(26),
        `${(r.requestsPerSecond / 1e6).toFixed(2)} M`.padStart(7),
        `${(r.requestsPerCpuSecond / 1e6).toFixed(2)} M`.padStart(10),
        r.nsPerRequest.toFixed(0).padStart(8),
        r.deviceNsPerRequest.toFixed(0).padStart(14),
        r.kicksPerRequest.toFixed(3).padStart(10),
        r.signalsPerRequest.toFixed(3).padStart(12),
      ].join(' '),
    );
  }
  const date = new Date();
  const report = {
    benchmark: 'queue',
    date: date.toISOString(),
    node: process.version,
    cpu: cpus()[0]?.model ?? 'unknown',
    cpus: cpus().length,
    queueSize: QUEUE_SIZE,
    secondsPerCase: SECONDS,
    cases: results,
  };
  const dir = join(packageRoot(), 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  const stamp = date.toISOString().replace(/[:.]/g, '-');
  const text = JSON.stringify(report, null, 2) + '\n';
  writeFileSync(join(dir, `queue-${stamp}.json`), text);
  writeFileSync(join(dir, 'queue-latest.json'), text);
  console.log(`results: bench/results/queue-${stamp}.json`);
}

main();
