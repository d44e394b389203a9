import assert from 'node:assert/strict';
import { test } from 'node:test';

import { createApi, type DaemonInfo } from '../../../src/mgmt/api.js';
import type { BlkDeviceConfig } from '../../../src/mgmt/blk/runner.js';
import type { DeviceConfig } from '../../../src/mgmt/config.js';
import type { NetLinkState } from '../../../src/mgmt/net/options.js';
import type { DeviceInfo, DeviceManager, DeviceStats, RemoveOptions } from '../../../src/mgmt/manager.js';
import { handleRequestLine } from '../../../src/mgmt/daemon/rpc.js';
import { MgmtError } from '../../../src/mgmt/daemon/errors.js';

/** A device manager without a kernel: records calls. */
class FakeManager implements DeviceManager {
  readonly devices = new Map<string, BlkDeviceConfig & { size: number }>();
  readonly configs = new Map<string, DeviceConfig>();
  readonly calls: string[] = [];
  add(config: DeviceConfig): Promise<DeviceInfo> {
    this.calls.push(`add ${config.name}`);
    if (this.devices.has(config.name))
      return Promise.reject(new MgmtError('ERR_MGMT_DEVICE_EXISTS', `device ${config.name} exists already`));
    this.configs.set(config.name, config);
    this.devices.set(config.name, { ...(config as BlkDeviceConfig), size: 1 << 20 });
    return Promise.resolve(this.#info(config.name));
  }
  remove(name: string, options: RemoveOptions = {}): Promise<void> {
    this.calls.push(`remove ${name} force=${options.force === true}`);
    if (!this.devices.delete(name))
      return Promise.reject(new MgmtError('ERR_MGMT_NO_SUCH_DEVICE', `no device named ${name}`));
    return Promise.resolve();
  }
  list(): DeviceInfo[] {
    return [...this.devices.keys()].map((n) => this.#info(n));
  }
  stats(name?: string): DeviceStats[] {
    this.calls.push(`stats ${name ?? '*'}`);
    return [];
  }
  resize(name: string, bytes: number): Promise<DeviceInfo> {
    this.calls.push(`resize ${name} ${bytes}`);
    const d = this.devices.get(name);
    if (!d) return Promise.reject(new MgmtError('ERR_MGMT_NO_SUCH_DEVICE', `no device named ${name}`));
    d.size = bytes;
    return Promise.resolve(this.#info(name));
  }
  link(name: string, state: NetLinkState): DeviceInfo {
    this.calls.push(`link ${name} ${state}`);
    if (!this.devices.has(name)) throw new MgmtError('ERR_MGMT_NO_SUCH_DEVICE', `no device named ${name}`);
    return this.#info(name);
  }
  configOf(name: string): BlkDeviceConfig | undefined {
    return this.devices.get(name);
  }
  #info(name: string): DeviceInfo {
    const d = this.devices.get(name)!;
    return {
      name,
      state: 'running',
      path: '/dev/vda',
      backend: d.backend,
      queues: d.queues,
      queueSize: d.queueSize,
      logicalBlockSize: d.logicalBlockSize,
      readOnly: d.readOnly,
      packed: d.packed,
      attach: d.attach,
      driver: d.driver,
      features: '0x0',
      size: d.size,
    };
  }
}

const info: DaemonInfo = {
  version: '0.0.0',
  pid: 1,
  uptimeSeconds: 0,
  socket: '/s',
  metrics: null,
  user: null,
  privileged: true,
  devices: 0,
};

async function call(
  m: FakeManager,
  method: string,
  params?: unknown,
): Promise<{ result?: unknown; error?: { code: number; message: string } }> {
  const api = createApi(m, () => info);
  const text = await handleRequestLine(
    JSON.stringify({ jsonrpc: '2.0', id: 1, method, ...(params === undefined ? {} : { params }) }),
    api,
  );
  return JSON.parse(text!) as { result?: unknown; error?: { code: number; message: string; data?: unknown } };
}

test('device.add validates like the config file and passes a full config', async () => {
  const m = new FakeManager();
  const ok = await call(m, 'device.add', { name: 'd0', backend: 'memory:1M', queues: 2, 'queue-size': 64 });
  assert.equal((ok.result as DeviceInfo).queues, 2);
  assert.deepEqual(m.devices.get('d0'), {
    name: 'd0',
    backend: 'memory:1M',
    queues: 2,
    queueSize: 64,
    logicalBlockSize: 512,
    readOnly: false,
    packed: false,
    attach: true,
    driver: 'virtio-vdpa',
    queueThreads: 1,
    reconnect: 'auto',
    persist: false,
    size: 1 << 20,
  });
  assert.deepEqual((await call(m, 'device.add', { name: 'd1', backend: 'memory:1M', queues: 'x' })).error, {
    code: -32602,
    message: 'params.queues: expected an integer 1..64, got "x"',
    data: { code: 'ERR_CONFIG_INVALID' },
  });
  assert.deepEqual(
    (await call(m, 'device.add', { name: 'd1', backend: 'memory:1M', bogus: 1 })).error?.code,
    -32602,
  );
  assert.deepEqual((await call(m, 'device.add', { backend: 'memory:1M' })).error, {
    code: -32602,
    message: 'params.name: expected a device name, got nothing',
    data: { code: 'ERR_CONFIG_INVALID' },
  });
  assert.deepEqual((await call(m, 'device.add', { name: 'd0', backend: 'memory:1M' })).error, {
    code: -32002,
    message: 'device d0 exists already',
    data: { code: 'ERR_MGMT_DEVICE_EXISTS' },
  });
  assert.deepEqual(m.calls, ['add d0', 'add d0']);
});

test('device.remove: name required, force must be a boolean, unknown names are -32001', async () => {
  const m = new FakeManager();
  await call(m, 'device.add', { name: 'd0', backend: 'null:1M' });
  assert.deepEqual((await call(m, 'device.remove', { name: 'd0', force: 'yes' })).error, {
    code: -32602,
    message: 'params.force: expected true or false, got "yes"',
    data: { code: 'ERR_RPC_INVALID_PARAMS' },
  });
  assert.deepEqual((await call(m, 'device.remove', { name: 'd0', force: true })).result, { removed: 'd0' });
  assert.equal((await call(m, 'device.remove', { name: 'd0' })).error?.code, -32001);
  assert.deepEqual((await call(m, 'device.remove', { nam: 'd0' })).error, {
    code: -32602,
    message: 'params.nam: unknown parameter (known: name, force)',
    data: { code: 'ERR_RPC_INVALID_PARAMS' },
  });
  assert.deepEqual(m.calls.slice(1), ['remove d0 force=true', 'remove d0 force=false']);
});

test('device.resize takes bytes or a size string; a bad size names the field', async () => {
  const m = new FakeManager();
  await call(m, 'device.add', { name: 'd0', backend: 'null:1M' });
  assert.equal(
    ((await call(m, 'device.resize', { name: 'd0', size: '2M' })).result as DeviceInfo).size,
    2 << 20,
  );
  assert.equal(
    ((await call(m, 'device.resize', { name: 'd0', size: 4096 })).result as DeviceInfo).size,
    4096,
  );
  assert.deepEqual((await call(m, 'device.resize', { name: 'd0', size: 'big' })).error, {
    code: -32602,
    message: 'params.size: expected a size in bytes or like "2G", got "big"',
    data: { code: 'ERR_RPC_INVALID_PARAMS' },
  });
  assert.deepEqual(
    (await call(m, 'device.resize', { name: 'd0' })).error?.message,
    'params.size: expected a size in bytes or like "2G", got nothing',
  );
  assert.deepEqual((await call(m, 'device.resize', { name: 'd0', size: -5 })).error?.code, -32602);
});

test('device.list, device.stats, daemon.info; params checked', async () => {
  const m = new FakeManager();
  await call(m, 'device.add', { name: 'd0', backend: 'null:1M' });
  assert.deepEqual(
    ((await call(m, 'device.list')).result as DeviceInfo[]).map((d) => d.name),
    ['d0'],
  );
  assert.deepEqual((await call(m, 'device.list', { x: 1 })).error, {
    code: -32602,
    message: 'params.x: unknown parameter (none taken)',
    data: { code: 'ERR_RPC_INVALID_PARAMS' },
  });
  await call(m, 'device.stats', { name: 'd0' });
  await call(m, 'device.stats');
  assert.deepEqual(m.calls.slice(-2), ['stats d0', 'stats *']);
  assert.equal(
    (await call(m, 'device.stats', { name: 5 })).error?.message,
    'params.name: expected a device name, got 5',
  );
  assert.deepEqual((await call(m, 'daemon.info')).result, info);
  assert.equal((await call(m, 'device.add', [])).error?.code, -32602);
  assert.equal(
    (await call(m, 'device.list', [1])).error?.message,
    'invalid params: expected an object, got a list',
  );
});

test('device.add of a net device (type: net) validates its own keys; device.link takes up or down', async () => {
  const m = new FakeManager();
  const ok = await call(m, 'device.add', { type: 'net', name: 'n0', tap: 'vts0', mtu: 9000, link: 'down' });
  assert.equal(ok.error, undefined);
  assert.deepEqual(m.configs.get('n0'), {
    type: 'net',
    name: 'n0',
    tap: 'vts0',
    mtu: 9000,
    queueSize: 256,
    link: 'down',
    offloads: true,
    attach: true,
    driver: 'virtio-vdpa',
    reconnect: 'never',
    persist: false,
  });
  assert.deepEqual(
    (await call(m, 'device.add', { type: 'net', name: 'n1', tap: 'vts1', backend: 'x' })).error,
    {
      code: -32602,
      message:
        'params.backend: unknown key of a net device (known keys: type, name, tap, mac, mtu, queue-size, link, offloads, attach, driver)',
      data: { code: 'ERR_CONFIG_INVALID' },
    },
  );
  assert.equal(
    (await call(m, 'device.add', { type: 'net', name: 'n1', tap: 'vts1', mac: 'nope' })).error?.message,
    'params.mac: expected a unicast MAC like "52:54:00:12:34:56", got "nope" (it is not six hex pairs like 52:54:00:12:34:56)',
  );
  assert.equal(
    (await call(m, 'device.add', { type: 'disk', name: 'n1' })).error?.message,
    'params.type: expected "blk" or "net", got "disk"',
  );
  assert.equal((await call(m, 'device.link', { name: 'n0', state: 'up' })).error, undefined);
  assert.deepEqual((await call(m, 'device.link', { name: 'n0', state: 'sideways' })).error, {
    code: -32602,
    message: 'params.state: expected "up" or "down", got "sideways"',
    data: { code: 'ERR_RPC_INVALID_PARAMS' },
  });
  assert.equal(
    (await call(m, 'device.link', { name: 'n0' })).error?.message,
    'params.state: expected "up" or "down", got nothing',
  );
  assert.equal((await call(m, 'device.link', { name: 'zz', state: 'up' })).error?.code, -32001);
  assert.deepEqual(m.calls, ['add n0', 'link n0 up', 'link zz up']);
});
