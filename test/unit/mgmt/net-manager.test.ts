// The device manager with net devices: device.add of type net starts a NetRunner (here a fake one on the real
// prototype, without a kernel), device.link reaches the device and only a net device, resize refuses one, and
// list/stats show what a net device has.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { nullLogger } from '../../../src/common/logger.js';
import { createPacketPair } from '../../../src/backends/packet/index.js';
import { VirtioNetDevice } from '../../../src/devices/net/index.js';
import { BLK_DEFAULTS, Teardown, type BlkRunner } from '../../../src/mgmt/blk/runner.js';
import type { BlkDeviceConfig } from '../../../src/mgmt/blk/options.js';
import { BlkDeviceManager } from '../../../src/mgmt/manager.js';
import { NET_DEFAULTS, NetRunner, type NetDeviceConfig } from '../../../src/mgmt/net/runner.js';
import type { SysBinding } from '../../../src/sys/binding.js';
import type { VdpaClient } from '../../../src/transports/vdpa/client.js';

/** A NetRunner without a kernel: the real class's methods over a real device on a packet pair. */
function fakeNetRunner(config: NetDeviceConfig, configChanges: { n: number }): NetRunner {
  const [end] = createPacketPair();
  const device = new VirtioNetDevice({
    backend: end,
    name: config.name,
    mtu: config.mtu,
    linkUp: config.link === 'up',
  });
  device.bind({ configChanged: () => void configChanges.n++, needsReset: () => undefined });
  const teardown = new Teardown(nullLogger);
  let state = 'running';
  const r = Object.create(NetRunner.prototype) as NetRunner;
  Object.defineProperties(r, {
    config: { value: config },
    device: { value: device },
    backend: { value: { name: config.tap } },
    state: { get: () => state },
    vduse: {
      value: {
        features: 0x1n,
        stats: { kicks: [3, 4], interrupts: [5, 6], configInterrupts: 1, messages: 9, messageMaxMs: 1 },
      },
    },
    currentPath: { value: () => 'eth9' },
    path: { value: 'eth9' },
    stop: {
      value: () => {
        state = 'stopping';
        return teardown.run().finally(() => (state = 'stopped'));
      },
    },
  });
  return r;
}

function manager() {
  const changes = { n: 0 };
  const m = new BlkDeviceManager({
    binding: {} as SysBinding,
    logger: nullLogger,
    vdpa: {} as VdpaClient,
    start: (config: BlkDeviceConfig) =>
      Promise.resolve({
        config,
        name: config.name,
        state: 'running',
        on: () => undefined,
        vduse: { features: 0n },
        device: { capacityBytes: 1 << 20 },
        currentPath: () => '/dev/vda',
      } as unknown as BlkRunner),
    startNet: (config) => Promise.resolve(fakeNetRunner(config, changes)),
  });
  return { m, changes };
}

const NET: NetDeviceConfig = { ...NET_DEFAULTS, type: 'net', name: 'n0', tap: 'vts0', mtu: 1400 };

test('a net device: added, listed with its tap, MAC, MTU and link; link down/up reaches the config space', async () => {
  const { m, changes } = manager();
  const info = await m.add(NET);
  assert.equal(info.type, 'net');
  assert.equal(info.path, 'eth9');
  assert.equal(info.backend, 'tap:vts0');
  assert.deepEqual(
    { ...info.net, mac: undefined },
    { tap: 'vts0', mac: undefined, mtu: 1400, link: 'up', offloads: true },
  );
  assert.match(info.net!.mac, /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
  const runner = m.runners[0] as NetRunner;
  assert.equal(m.link('n0', 'down').net!.link, 'down');
  assert.equal(runner.device.linkUp, false);
  assert.equal(runner.device.config()[6]! & 1, 0, 'config space status: link down');
  assert.equal(changes.n, 1, 'the driver was told (config interrupt)');
  m.link('n0', 'down');
  assert.equal(changes.n, 1, 'no change, no interrupt');
  assert.equal(m.link('n0', 'up').net!.link, 'up');
  assert.equal(runner.device.config()[6]! & 1, 1);
  assert.equal(changes.n, 2);
  assert.deepEqual(m.configOf('n0'), NET);
});

test('stats of a net device: per direction, per queue (0 rx, 1 tx); link and resize refuse the wrong type', async () => {
  const { m } = manager();
  await m.add(NET);
  await m.add({ ...BLK_DEFAULTS, name: 'd0', backend: 'null:1M' });
  const [s] = m.stats('n0');
  assert.equal(s!.type, 'net');
  assert.deepEqual(s!.net, {
    rx: { packets: 0, bytes: 0, drops: 0 },
    tx: { packets: 0, bytes: 0, drops: 0 },
    link: 'up',
  });
  assert.deepEqual(
    s!.queues.map((q) => [q.index, q.kicks, q.interrupts]),
    [
      [0, 3, 5],
      [1, 4, 6],
    ],
  );
  assert.throws(() => m.link('d0', 'down'), /d0 is a block device: link up\/down is for net devices/);
  await assert.rejects(m.resize('n0', 1 << 20), /n0 is a net device: only a block device can be resized/);
  assert.throws(() => m.link('zz', 'up'), /no device named zz/);
  await m.remove('n0');
  assert.deepEqual(
    m.list().map((d) => d.name),
    ['d0'],
  );
});
