/**
 * virtio-blk device path benchmark, on the host: the mock driver submits 4 KiB reads (16-byte header, 4 KiB
 * data, status byte) to a VirtioBlkDevice over the null backend and reclaims them, in one thread, split and packed
 * rings, 1 or 32 requests per kick. It measures the device's per-request JavaScript (kick -> pop -> parse ->
 * backend -> addUsed -> publish) without the transport's system calls: what bench/queue.ts measures for the ring
 * engine alone, plus the device on top.
 *
 * Cases: direct chains (three descriptors in the ring); `indirect`, as Linux virtio_blk submits every request
 * when VIRTIO_RING_F_INDIRECT_DESC is negotiated (one ring descriptor pointing to a table, allocated per request
 * from a LIFO free list as the kernel's slab does); `128k`, a 128 KiB read over 32 data segments of 4 KiB in an
 * indirect table, 8 per kick (fio's read-128k-qd8). ns/req (wall) and cpu ns/req (the process's user + system
 * time, steadier on a busy host) include the mock driver's side.
 *
 *   node dist/bench/queue-blk.js                # ~2 s per case
 *   BENCH_SECONDS=1 node dist/bench/queue-blk.js
 *   BENCH_CASES=indirect node dist/bench/queue-blk.js   # only the cases whose name contains one of these (comma-separated)
 *
 * Prints a table; nothing is written.
 */
import { NullBackend } from '../src/backends/null-backend.js';
import { VirtioBlkDevice } from '../src/devices/blk/device.js';
import { MockDriver } from '../src/testing/mock-driver.js';
import type { BufferRef } from '../src/testing/mock-driver.js';

const QUEUE_SIZE = 256;
const SECONDS = Number(process.env.BENCH_SECONDS ?? 2);
const VIRTIO_BLK_T_IN = 0;

interface Case {
  name: string;
  packed: boolean;
  batch: number;
  indirect: boolean;
  /** Data segments of 4 KiB per request. */
  segments: number;
}

const immediate = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

async function run(
  c: Case,
): Promise<{ requestsPerSecond: number; nsPerRequest: number; cpuNsPerRequest: number; turns: number }> {
  const [drv] = MockDriver.createQueues(1, {
    size: QUEUE_SIZE,
    packed: c.packed,
    eventIdx: true,
    indirect: true,
    memorySize: 8 * 1024 * 1024,
  });
  const driver = drv!;
  const queue = driver.createDeviceQueue();
  const device = new VirtioBlkDevice({ backend: new NullBackend({ size: 1 << 30 }), packed: c.packed });
  device.bind({ configChanged: () => {}, needsReset: () => {} });
  if (!device.negotiate(device.features)) throw new Error('features refused');
  device.activate({ features: device.features, memory: driver.memory, queues: [queue] });
  const readable: BufferRef[][] = [];
  const writable: BufferRef[][] = [];
  for (let k = 0; k < c.batch; k++) {
    const hdr = driver.alloc(16);
    const header = new Uint8Array(16);
    header[0] = VIRTIO_BLK_T_IN;
    header[8] = (k * 8) & 0xff; // sector
    header[9] = (k * 8) >> 8;
    driver.write(hdr, header);
    readable.push([{ addr: hdr, len: 16 }]);
    const w: BufferRef[] = [];
    for (let s = 0; s < c.segments; s++) w.push({ addr: driver.alloc(4096), len: 4096 });
    w.push({ addr: driver.alloc(1), len: 1 });
    writable.push(w);
  }
  const batch = c.batch;
  const indirect = c.indirect;
  let turns = 0;
  const step = async (): Promise<void> => {
    for (let k = 0; k < batch; k++) driver.addBuffers(readable[k]!, writable[k]!, indirect);
    if (driver.kick()) device.queueNotify(0);
    let done = driver.reclaim();
    if (done < batch) {
      // A promise result settles in a microtask (as after a kick callback in the daemon).
      await null;
      done += driver.reclaim();
    }
    while (done < batch) {
      // An asynchronous backend result: let the event loop settle it and the device publish.
      turns++;
      await immediate();
      done += driver.reclaim();
    }
  };
  const warmEnd = performance.now() + 300;
  while (performance.now() < warmEnd) for (let i = 0; i < 50; i++) await step();
  let requests = 0;
  turns = 0;
  const start = process.hrtime.bigint();
  const cpuStart = process.cpuUsage();
  const end = performance.now() + SECONDS * 1000;
  const slice = Math.max(1, Math.floor(1024 / batch));
  while (performance.now() < end) {
    for (let i = 0; i < slice; i++) await step();
    requests += slice * batch;
  }
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const cpu = process.cpuUsage(cpuStart);
  if (queue.error !== null) throw queue.error;
  await device.reset();
  return {
    requestsPerSecond: requests / seconds,
    nsPerRequest: (seconds * 1e9) / requests,
    cpuNsPerRequest: ((cpu.user + cpu.system) * 1e3) / requests,
    turns: turns / requests,
  };
}

async function main(): Promise<void> {
  console.log(`virtio-blk device over the null backend, queue size ${QUEUE_SIZE}, ${SECONDS} s per case`);
  console.log('case                           req/s   ns/req  cpu ns/req  loop turns/req');
  const filter = (process.env.BENCH_CASES ?? '')
    .split(',')
    .map((w) => w.trim())
    .filter((w) => w !== '');
  const cases: Case[] = [];
  for (const packed of [false, true]) {
    const ring = packed ? 'packed' : 'split';
    for (const batch of [1, 32])
      cases.push({ name: `${ring} batch ${batch}`, packed, batch, indirect: false, segments: 1 });
    for (const batch of [1, 32])
      cases.push({ name: `${ring} indirect batch ${batch}`, packed, batch, indirect: true, segments: 1 });
    cases.push({ name: `${ring} 128k indirect batch 8`, packed, batch: 8, indirect: true, segments: 32 });
  }
  for (const c of cases) {
    if (filter.length > 0 && !filter.some((w) => c.name.includes(w))) continue;
    {
      const r = await run(c);
      console.log(
        [
          c.name.padEnd(28),
          `${(r.requestsPerSecond / 1e6).toFixed(2)} M`.padStart(7),
          r.nsPerRequest.toFixed(0).padStart(8),
          r.cpuNsPerRequest.toFixed(0).padStart(11),
          r.turns.toFixed(3).padStart(15),
        ].join(' '),
      );
    }
  }
}

await main();
