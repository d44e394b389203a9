// vhost-user with queue threads (`--queue-threads`): a blk device with 2 queues on 2 worker threads, over a
// socketpair with the userspace front-end. Each thread maps the VMM's regions itself, watches its kick fds,
// signals its call fds and logs into the inflight region; the main thread keeps the protocol and the fds.
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { MemoryBackend } from '../../../src/backends/memory-backend.js';
import { VirtioBlkDevice } from '../../../src/devices/blk/device.js';
import { blkDeviceOptions, blkThreadSpec, openBlkBackend } from '../../../src/mgmt/blk/thread-device.js';
import { VIRTIO_BLK_S_OK } from '../../../src/uapi/virtio-blk.js';
import { VhostUserBackend } from '../../../src/transports/vhost-user/index.js';
import { BlkClient, withTimeout } from '../../../src/testing/vhost-vdpa/blk.js';
import {
  captureLogger,
  connect,
  dieWithSixWrites,
  guestMemory,
  pattern,
  sys,
  resumeOn,
  waitFor,
} from './helpers.js';

const openFds = (): number => readdirSync('/proc/self/fd').length;
/** Mappings of guest RAM or an inflight region left in this process (any thread's). */
const leftMappings = (): string[] =>
  readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((l) => /vu-test|vduse-ts-inflight/.test(l));

/** A 2-queue blk device on a file, its queues on 2 threads. */
async function threaded(
  file: string,
): Promise<{ backend: VhostUserBackend; lines: string[]; close(): Promise<void> }> {
  const options = {
    name: 'vu-threads',
    backend: `file:${file}`,
    queues: 2,
    queueSize: 64,
    logicalBlockSize: 512,
    serial: 'vu-threads',
    readOnly: false,
    packed: false,
  };
  const { logger, lines } = captureLogger();
  const { backend: storage } = await openBlkBackend(options, { binding: sys, logger });
  const device = new VirtioBlkDevice(blkDeviceOptions(options, storage, logger));
  const backend = new VhostUserBackend({
    binding: sys,
    device,
    logger,
    drainMs: 2000,
    queueThreads: { threads: 2, spec: blkThreadSpec(options) },
  });
  return {
    backend,
    lines,
    close: async () => {
      await backend.close();
      await storage.close();
    },
  };
}

function tempFile(): { dir: string; file: string } {
  const dir = mkdtempSync(join(tmpdir(), 'vu-threads-'));
  const file = join(dir, 'disk.img');
  writeFileSync(file, Buffer.alloc(8 << 20));
  return { dir, file };
}

test('2 queues on 2 threads: I/O on both, a new memory table while running, a second VMM, no fd left', async () => {
  const { dir, file } = tempFile();
  const before = openFds();
  const rig = await threaded(file);
  const { backend } = rig;
  assert.equal(backend.queueThreads?.threadCount, 2);
  const mem = guestMemory();
  const io = async (blk: BlkClient, seed: number): Promise<void> => {
    const writes = [];
    for (let k = 0; k < 8; k++) writes.push(blk.write(k * 8, pattern(4096, k + seed), { queue: k % 2 }));
    for (const w of await withTimeout(Promise.all(writes), 5000, 'writes'))
      assert.equal(w.status, VIRTIO_BLK_S_OK);
    for (let k = 0; k < 8; k++) {
      const r = await withTimeout(blk.read(k * 8, 4096, { queue: (k + 1) % 2 }), 5000, 'read');
      assert.deepEqual(r.data, pattern(4096, k + seed), `block ${k} read back on the other queue`);
    }
    const disk = readFileSync(file);
    for (let k = 0; k < 8; k++)
      assert.deepEqual(new Uint8Array(disk.subarray(k * 4096, k * 4096 + 4096)), pattern(4096, k + seed));
  };
  try {
    let vmm = connect(backend);
    await vmm.negotiate();
    await vmm.setMemory(mem);
    const inflight = await vmm.getInflight(2, 64);
    assert.equal(await vmm.setInflight(inflight.fd, inflight.payload), 0n);
    let blk = new BlkClient(await vmm.setupQueues({ count: 2, size: 64 }));
    await waitFor(() => backend.servingRings.length === 2, 'both rings served', 10_000);
    await io(blk, 1);
    assert.ok(leftMappings().length > 0, 'guest RAM is mapped (what the end of the test checks is gone)');
    const c = backend.counters;
    assert.ok(c[0]! > 0 && c[1]! > 0, 'kicks on both rings (counted by the threads)');
    assert.ok(c[2]! > 0 && c[3]! > 0, 'interrupts on both rings (signalled by the threads)');

    // a new memory table while the rings run: the threads stop, map it, and go on serving
    assert.equal(await vmm.setMemory(mem), 0n);
    await waitFor(() => backend.servingRings.length === 2, 'served again over the new table', 10_000);
    await io(blk, 2);

    // the VMM goes away; the next one is served by the same threads
    blk.close();
    vmm.close();
    closeSync(inflight.fd);
    await waitFor(() => !backend.connected, 'disconnect noticed');
    vmm = connect(backend);
    await vmm.negotiate();
    await vmm.setMemory(mem);
    blk = new BlkClient(await vmm.setupQueues({ count: 2, size: 64 }));
    await waitFor(() => backend.servingRings.length === 2, 'the second VMM served', 10_000);
    await io(blk, 3);
    blk.close();
    vmm.close();
    await waitFor(() => !backend.connected, 'second disconnect noticed');
  } finally {
    await rig.close();
    mem.close();
  }
  assert.equal(openFds(), before, 'every fd closed (regions, kicks, calls, inflight, the threads)');
  assert.deepEqual(leftMappings(), [], 'every mapping of guest RAM and of the inflight region is gone');
  assert.ok(!rig.lines.some((l) => /error/i.test(l)), rig.lines.join('\n'));
  rmSync(dir, { recursive: true });
});

test('restart: the threads take over the inflight region and resubmit the writes in flight, on their rings', async () => {
  const { dir, file } = tempFile();
  const dead = await dieWithSixWrites(new MemoryBackend({ size: 8 << 20 }), 20);
  const { first: a, gated, mem, inflight } = dead;

  const before = openFds();
  const b = await threaded(file);
  const { vmm: vmm2, used } = await resumeOn(b.backend, dead, 10_000);
  try {
    assert.equal(used[0]!.length, 4, 'ring 0 (thread 0) completed its four');
    assert.equal(used[1]!.length, 2, 'ring 1 (thread 1) completed its two');
    const disk = readFileSync(file);
    for (let k = 0; k < 6; k++)
      assert.deepEqual(
        new Uint8Array(disk.subarray(k * 4096, k * 4096 + 4096)),
        pattern(4096, k + 20),
        `write ${k} landed`,
      );
    const blk2 = new BlkClient(vmm2.queues);
    const r = await withTimeout(blk2.read(8, 4096, { queue: 1 }), 5000, 'read after the restart');
    assert.deepEqual(r.data, pattern(4096, 21));
    blk2.close();
  } finally {
    vmm2.close();
    await b.close();
  }
  assert.equal(openFds(), before, 'every fd the threaded back-end had is closed');
  gated.release();
  await a.backend.close();
  closeSync(inflight.fd);
  mem.close();
  rmSync(dir, { recursive: true });
  assert.deepEqual(leftMappings(), [], 'every mapping of guest RAM and of the inflight region is gone');
});
