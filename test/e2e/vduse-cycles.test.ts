// Lifecycle scenarios driven through the library API in this process (no CLI): repeated create / attach /
// detach / destroy must leave no VDUSE device, no vdpa device, no fd and no IOTLB mapping behind.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';

import { MemoryBackend } from '../../src/backends/memory-backend.js';
import { VirtioBlkDevice } from '../../src/devices/blk/device.js';
import { loadNativeBinding } from '../../src/sys/native.js';
import { VduseControl, describeDevice, listVduseDevices } from '../../src/transports/vduse/control.js';
import { VduseDevice } from '../../src/transports/vduse/device.js';
import { VdpaClient } from '../../src/transports/vdpa/client.js';
import {
  TEST_TIMEOUT_MS,
  requirePrereqs,
  useCleanup,
  vdpaDevExists,
  vduseDevExists,
  waitForBlockDevice,
  waitForVdpaDevGone,
  writeReadVerify,
} from './lib/index.js';
import { PREREQS } from './vduse-daemon.js';

const MiB = 1 << 20;

const openFds = (): string[] =>
  fs.readdirSync('/proc/self/fd').map((fd) => {
    try {
      return fs.readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      return '?';
    }
  });
const vduseMappings = (): string[] =>
  fs
    .readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((l) => l.includes('vduse') && !l.endsWith('.node'));

test(
  '20 create/attach/detach/destroy cycles leave no device, fd or mapping behind',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, PREREQS)) return;
    const cleanup = useCleanup(t);
    const binding = loadNativeBinding();
    const vdpa = new VdpaClient();
    cleanup.add('stop the vdpa worker', () => vdpa.close());
    // Open the worker's netlink socket before taking the baseline.
    await vdpa.listMgmtDevices();
    const fdsBefore = openFds();
    assert.deepEqual(vduseMappings(), []);

    for (let i = 0; i < 20; i++) {
      const name = `e2e-cycle-${i % 3}`;
      const backend = new MemoryBackend({ size: 16 * MiB });
      const device = new VirtioBlkDevice({ backend, name, numQueues: 1 + (i % 2), packed: i % 4 === 3 });
      const control = VduseControl.open(binding);
      control.createDevice(describeDevice(name, device));
      const dev = VduseDevice.open({ binding, name, device });
      await vdpa.addDevice(name);
      const block = await waitForBlockDevice(name);
      assert.equal(block.sizeBytes, 16 * MiB);
      if (i % 5 === 0) await writeReadVerify(block.path, 0, MiB, `cycle-${i}`);
      assert.ok(dev.running, 'DRIVER_OK reached');
      assert.ok(vduseMappings().length > 0, 'rings and bounce buffer are mapped while running');
      await vdpa.deleteDevice(name);
      await waitForVdpaDevGone(name, block.name);
      assert.equal(dev.running, false, 'the detach reset the device');
      assert.deepEqual(vduseMappings(), [], `no IOTLB mapping after the reset (cycle ${i})`);
      await dev.close();
      await control.destroyDevice(name);
      control.close();
      await backend.close();
      assert.equal(vduseDevExists(name), false);
      assert.equal(vdpaDevExists(name), false);
    }
    assert.deepEqual(
      listVduseDevices().filter((n) => n.startsWith('e2e-cycle-')),
      [],
    );
    assert.deepEqual(openFds().sort(), fdsBefore.sort(), 'same open fds as before the cycles');
    assert.deepEqual(vduseMappings(), []);
  },
);

test(
  'destroy while attached is refused with a clear EBUSY error; detach then destroy works',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, PREREQS)) return;
    const cleanup = useCleanup(t);
    const binding = loadNativeBinding();
    const vdpa = new VdpaClient();
    cleanup.add('stop the vdpa worker', () => vdpa.close());
    const name = 'e2e-busy';
    const backend = new MemoryBackend({ size: 8 * MiB });
    const device = new VirtioBlkDevice({ backend, name });
    const control = VduseControl.open(binding);
    cleanup.add('close control', () => control.close());
    control.createDevice(describeDevice(name, device));
    const dev = VduseDevice.open({ binding, name, device });
    await vdpa.addDevice(name);
    await assert.rejects(control.destroyDevice(name, { busyRetryMs: 200 }), {
      code: 'ERR_VDUSE_BUSY',
      message: /busy: still attached/,
    });
    await assert.rejects(vdpa.addDevice(name), { code: 'EEXIST' });
    await vdpa.deleteDevice(name);
    await dev.close();
    await control.destroyDevice(name);
    await assert.rejects(control.destroyDevice(name), { code: 'ERR_VDUSE_NOT_FOUND' });
    await backend.close();
  },
);
