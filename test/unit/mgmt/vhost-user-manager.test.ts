// `vduse serve` with a `vhost-user: PATH` device: the manager starts it without VDUSE, lists it with its socket,
// counts its kicks, resizes it (the VMM gets CONFIG_CHANGE_MSG) and removes it (the socket goes); the config
// key is validated like the flag.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';

import { nullLogger } from '../../../src/common/logger.js';
import { validateConfig } from '../../../src/mgmt/config.js';
import { BlkDeviceManager } from '../../../src/mgmt/manager.js';
import { loadNativeBinding } from '../../../src/sys/native.js';
import type { VdpaClient } from '../../../src/transports/vdpa/client.js';
import { VhostUserFrontend } from '../../../src/testing/vhost-user/index.js';
import { BlkClient, withTimeout } from '../../../src/testing/vhost-vdpa/blk.js';
import { SharedGuestMemory } from '../../../src/testing/vhost-vdpa/shared-memory.js';
import { VIRTIO_BLK_S_OK } from '../../../src/uapi/virtio-blk.js';

const sys = loadNativeBinding();

/** A front-end on `sock` and its guest RAM. */
function connectVmm(sock: string, tag: string): { mem: SharedGuestMemory; vmm: VhostUserFrontend } {
  const mem = new SharedGuestMemory(sys, { size: 1 << 20, iova: 0x100000, tag });
  return { mem, vmm: VhostUserFrontend.connect(sys, sock) };
}

/** Negotiate, open the backend channel, give the memory table, set up 2 rings of 32. */
async function setUp(vmm: VhostUserFrontend, mem: SharedGuestMemory): Promise<BlkClient> {
  await vmm.negotiate();
  await vmm.openBackendChannel();
  await vmm.setMemory(mem);
  return new BlkClient(await vmm.setupQueues({ count: 2, size: 32 }));
}
const dir = mkdtempSync(join(tmpdir(), 'vduse-ts-vu-mgr-'));
after(() => rmSync(dir, { recursive: true, force: true }));

test('a vhost-user device in vduse serve: add, list, stats, resize, remove', async () => {
  const sock = join(dir, 'd0.sock');
  const manager = new BlkDeviceManager({
    binding: sys,
    logger: nullLogger,
    vdpa: {} as VdpaClient, // never used: no VDUSE device
  });
  const config = validateConfig({
    devices: [{ name: 'd0', backend: 'memory:4M', 'vhost-user': sock, queues: 2 }],
  }).devices[0]!;
  const info = await manager.add(config);
  after(() => manager.removeAll());
  assert.equal(info.path, sock);
  assert.equal(info.driver, 'vhost-user');
  assert.ok(existsSync(sock));
  const { mem, vmm } = connectVmm(sock, 'vu-mgr');
  try {
    const blk = await setUp(vmm, mem);
    await withTimeout(blk.write(0, new Uint8Array(512).fill(1), { queue: 1 }), 3000, 'write');
    // the kick may be counted after the completion (the ring started with the request already in it)
    await withTimeout(
      (async () => {
        while (manager.stats('d0')[0]!.queues[1]!.kicks === 0) await new Promise((r) => setTimeout(r, 5));
      })(),
      3000,
      'the kick counted',
    );
    const [stats] = manager.stats('d0');
    assert.equal(stats!.writes, 1);
    assert.equal(stats!.queues[1]!.interrupts, 1);
    assert.notEqual(manager.list()[0]!.features, '0x0');
    const resized = await manager.resize('d0', 8 << 20);
    assert.equal(resized.size, 8 << 20);
    await withTimeout(
      (async () => {
        while (vmm.configChanges === 0) await new Promise((r) => setTimeout(r, 5));
      })(),
      3000,
      'CONFIG_CHANGE_MSG',
    );
    blk.close();
  } finally {
    vmm.close();
    mem.close();
  }
  await manager.remove('d0', { force: true });
  assert.ok(!existsSync(sock), 'socket removed');
  assert.deepEqual(manager.list(), []);
});

test('the vhost-user config key: VDUSE-only keys refused, one line', () => {
  assert.throws(
    () =>
      validateConfig({
        devices: [{ name: 'd', backend: 'null:1M', 'vhost-user': '/x', driver: 'vhost-vdpa' }],
      }),
    /driver: is a VDUSE option; it makes no sense with vhost-user/,
  );
  assert.throws(
    () => validateConfig({ devices: [{ name: 'd', backend: 'null:1M', 'vhost-user': 5 }] }),
    /expected a socket path/,
  );
});

test('a vhost-user device with queue-threads in vduse serve: served by the threads, their counters merged, resize', async () => {
  const sock = join(dir, 'd1.sock');
  const img = join(dir, 'd1.img');
  writeFileSync(img, Buffer.alloc(4 << 20));
  const manager = new BlkDeviceManager({ binding: sys, logger: nullLogger, vdpa: {} as VdpaClient });
  const config = validateConfig({
    devices: [{ name: 'd1', backend: `file:${img}`, 'vhost-user': sock, queues: 2, 'queue-threads': 2 }],
  }).devices[0]!;
  await manager.add(config);
  const { mem, vmm } = connectVmm(sock, 'vu-mgr-t');
  try {
    const blk = await setUp(vmm, mem);
    for (const queue of [0, 1])
      await withTimeout(blk.write(queue, new Uint8Array(512).fill(7), { queue }), 5000, 'write');
    // the writes were served by the threads' devices: only the merged counters see them
    const [stats] = manager.stats('d1');
    assert.equal(stats!.writes, 2);
    assert.deepEqual(readFileSync(img).subarray(0, 1024), Buffer.alloc(1024, 7));
    const resized = await manager.resize('d1', 8 << 20);
    assert.equal(resized.size, 8 << 20);
    // a thread's device learnt the new capacity: a write past the old end succeeds
    const last = (8 << 20) / 512 - 1;
    const w = await withTimeout(blk.write(last, new Uint8Array(512).fill(9), { queue: 1 }), 5000, 'write');
    assert.equal(w.status, VIRTIO_BLK_S_OK);
    blk.close();
  } finally {
    vmm.close();
    mem.close();
  }
  await manager.remove('d1', { force: true });
  assert.ok(!existsSync(sock), 'socket removed');
});
