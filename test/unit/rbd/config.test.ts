// `vduse serve` takes an rbd spec as any other: a config file's backend key and device.add's params.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import type { BlkDeviceConfig } from '../../../src/mgmt/blk/options.js';
import { ConfigError, parseConfigText, parseDeviceOptions } from '../../../src/mgmt/config.js';

test('serve config and device.add accept rbd: specs and refuse bad ones with the key named', () => {
  const config = parseConfigText(
    JSON.stringify({ devices: [{ name: 'ceph0', backend: 'rbd:rbd/vm0,id=vduse,timeout=60', queues: 2 }] }),
    'vduse.json',
  );
  assert.equal((config.devices[0] as BlkDeviceConfig).backend, 'rbd:rbd/vm0,id=vduse,timeout=60');
  const params = parseDeviceOptions({ name: 'ceph1', backend: 'rbd:pool/ns/img@snap' }, 'params');
  assert.equal((params as BlkDeviceConfig).backend, 'rbd:pool/ns/img@snap');
  assert.throws(
    () => parseDeviceOptions({ name: 'ceph2', backend: 'rbd:img' }, 'params'),
    (e: unknown) => e instanceof ConfigError && /params\.backend.*expected POOL\/IMAGE/.test(e.message),
  );
});
