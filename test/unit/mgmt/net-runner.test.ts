// NetRunner's parts that need no kernel: the tap errors (one line each), the counters, the option checks in
// config style. The kernel-tier scenarios (test/e2e/vduse-net.test.ts) run the whole thing.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { BackendError } from '../../../src/backends/backend.js';
import { isVduseTsError } from '../../../src/common/errors.js';
import { nullLogger } from '../../../src/common/logger.js';
import { ConfigError } from '../../../src/mgmt/daemon/errors.js';
import { validateNetOptions, type NetOptionKey } from '../../../src/mgmt/net/options.js';
import {
  NET_DEFAULTS,
  NetRunner,
  formatNetCounters,
  netCounters,
  tapOpenError,
} from '../../../src/mgmt/net/runner.js';
import type { OptionReporter } from '../../../src/mgmt/runner/options.js';
import { FakeBinding } from '../../../src/testing/fake-binding.js';
import type { VdpaClient } from '../../../src/transports/vdpa/client.js';

const keys: OptionReporter<NetOptionKey> = {
  style: 'key',
  label: (k) => `params.${k}`,
  error: (m, k) => new ConfigError(m, `params.${k}`),
};

describe('NetRunner', () => {
  it('no /dev/net/tun: one line naming the module, before anything is created', async () => {
    const binding = new FakeBinding();
    await assert.rejects(
      NetRunner.start(
        { ...NET_DEFAULTS, type: 'net', name: 'n0', tap: 't0' },
        { binding, logger: nullLogger, vdpa: {} as VdpaClient },
        { tunPath: '/nonexistent/tun' },
      ),
      (e: unknown) =>
        isVduseTsError(e, 'ERR_MGMT_TAP') &&
        e.message === 'no /nonexistent/tun: load the tun module (modprobe tun)',
    );
    assert.deepEqual(binding.openFds(), []);
  });

  it('a tap that cannot be opened says why in one line', () => {
    const cases: [string, RegExp][] = [
      ['EBUSY', /^tap t0 is in use by another process/],
      ['EINVAL', /^t0 exists and is not a tap/],
      ['EPERM', /^not permitted to open tap t0 \(needs CAP_NET_ADMIN/],
      ['ENOMEM', /^cannot open tap t0: /],
    ];
    for (const [errno, re] of cases) {
      const e = tapOpenError('t0', new BackendError(`tap: TUNSETIFF t0: ${errno}`, errno));
      assert.ok(isVduseTsError(e, 'ERR_MGMT_TAP'), errno);
      assert.match(e.message, re);
      assert.equal(e.errno, errno);
      assert.ok(!e.message.includes('\n'));
    }
  });

  it('counters per direction, and their one-line form', () => {
    const c = netCounters(
      {
        rxPackets: 3,
        rxBytes: 180,
        rxDropped: 1,
        txPackets: 2,
        txBytes: 120,
        txDropped: 4,
        driverErrors: 5,
        backendErrors: 6,
      },
      0,
    );
    assert.deepEqual(c.rx, { packets: 3, bytes: 180, drops: 1 });
    assert.deepEqual(c.tx, { packets: 2, bytes: 120, drops: 4 });
    assert.equal(
      formatNetCounters(c),
      'rx_packets=3 rx_bytes=180 rx_drops=1 tx_packets=2 tx_bytes=120 tx_drops=4 driver_errors=5 backend_errors=6',
    );
  });

  it('options in config style: defaults, and each bad value named by its key', () => {
    assert.deepEqual(
      validateNetOptions({ type: 'net', name: 'n', tap: 't', mtu: 9000, link: 'down' }, keys),
      {
        ...NET_DEFAULTS,
        type: 'net',
        name: 'n',
        tap: 't',
        mtu: 9000,
        link: 'down',
      },
    );
    const bad: [Record<string, unknown>, RegExp][] = [
      [{ name: 'n' }, /^params\.tap: expected a tap interface name, got nothing$/],
      [{ name: 'n', tap: 7 }, /^params\.tap: expected an interface name .*got 7$/],
      [{ name: 'n', tap: 't', mtu: '1500' }, /^params\.mtu: expected an integer 68\.\.65535, got "1500"$/],
      [{ name: 'n', tap: 't', mtu: 40 }, /^params\.mtu: expected an integer 68\.\.65535, got 40$/],
      [{ name: 'n', tap: 't', mac: 'ff:ff:ff:ff:ff:ff' }, /^params\.mac: .*multicast/],
      [{ name: 'n', tap: 't', mac: 5 }, /^params\.mac: expected a unicast MAC/],
      [{ name: 'n', tap: 't', link: true }, /^params\.link: expected "up" or "down", got true$/],
      [{ name: 'n', tap: 't', offloads: 'no' }, /^params\.offloads: expected true or false/],
      [{ name: 'n', tap: 't', type: 'blk' }, /^params\.type: expected "net"/],
      [{ name: 'n', tap: 't', attach: false, driver: 'vhost-vdpa' }, /^params\.driver: makes no sense/],
    ];
    for (const [o, re] of bad)
      assert.throws(
        () => validateNetOptions(o, keys),
        (e: unknown) => e instanceof ConfigError && re.test(e.message),
        JSON.stringify(o),
      );
  });
});
