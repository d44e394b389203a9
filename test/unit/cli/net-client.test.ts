// The client side of net devices in `vduse serve`: vduse add --type net, vduse link, and how ls and stats show them.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { formatDeviceTable, parseClientArgs, type ClientCommand } from '../../../src/cli/client.js';
import { renderAllTotals } from '../../../src/cli/stats-watch.js';
import type { DeviceStats } from '../../../src/mgmt/manager.js';
import { netDeviceInfo } from '../mgmt/net-fixtures.js';

const client = (name: Parameters<typeof parseClientArgs>[0], args: string[]): ClientCommand =>
  parseClientArgs(name, args) as ClientCommand;

test('vduse add --type net: the net options, checked like vduse net, numbers sent as numbers', () => {
  const c = client('add', [
    'n0',
    '--type',
    'net',
    '--tap',
    'vts0',
    '--mtu',
    '9000',
    '--link',
    'down',
    '--no-offloads',
  ]);
  assert.equal(c.method, 'device.add');
  assert.deepEqual(c.params, {
    type: 'net',
    name: 'n0',
    tap: 'vts0',
    mtu: 9000,
    link: 'down',
    offloads: false,
  });
  const bad: [string[], RegExp][] = [
    [['n0', '--type', 'net'], /^CliUsageError: vduse add: --tap is required for a net device$/],
    [
      ['n0', '--type', 'net', '--tap', 't', '--backend', 'null:1M'],
      /--backend is not an option of a net device$/,
    ],
    [
      ['n0', '--type', 'net', '--tap', 't', '--mtu', '10'],
      /^CliUsageError: vduse add: --mtu must be between 68 and 65535, got 10$/,
    ],
    [
      ['n0', '--type', 'net', '--tap', 't', '--mac', 'x'],
      /^CliUsageError: vduse add: --mac "x" is not six hex pairs/,
    ],
    [['n0', '--type', 'disk'], /^CliUsageError: vduse add: --type must be blk or net, got "disk"$/],
    [
      ['n0', '--backend', 'null:1M', '--tap', 't'],
      /^CliUsageError: vduse add: --tap is an option of a net device \(--type net\)$/,
    ],
  ];
  for (const [args, re] of bad) assert.throws(() => parseClientArgs('add', args), re, args.join(' '));
  // a block device as before
  assert.equal(client('add', ['d0', '--backend', 'null:1M', '--type', 'blk']).params.backend, 'null:1M');
});

test('vduse link NAME up|down', () => {
  const c = client('link', ['n0', 'down']);
  assert.equal(c.method, 'device.link');
  assert.deepEqual(c.params, { name: 'n0', state: 'down' });
  assert.throws(
    () => parseClientArgs('link', ['n0']),
    /^CliUsageError: vduse link: missing NAME and up\|down/,
  );
  assert.throws(
    () => parseClientArgs('link', ['n0', 'off']),
    /^CliUsageError: vduse link: the state is up or down, got "off"$/,
  );
  assert.throws(() => parseClientArgs('link', ['n0', 'up', 'x']), /unexpected argument "x"/);
  assert.equal(parseClientArgs('link', ['--help']).command, 'help');
});

const netStats = (name: string): DeviceStats => ({
  name,
  type: 'net',
  requests: 30,
  reads: 0,
  writes: 0,
  flushes: 0,
  discards: 0,
  writeZeroes: 0,
  bytesRead: 3 * 2 ** 20,
  bytesWritten: 2 ** 20,
  errors: { io: 0, unsupported: 0, driver: 1, backend: 0 },
  inFlight: 0,
  latency: { boundsUs: [], buckets: [0], count: 0, sumSeconds: 0 },
  queues: [],
  configInterrupts: 1,
  controlMessages: 5,
  controlMessageMaxMs: 1,
  net: {
    rx: { packets: 20, bytes: 3 * 2 ** 20, drops: 2 },
    tx: { packets: 10, bytes: 2 ** 20, drops: 0 },
    link: 'down',
  },
});

test('vduse stats: a net device gets its own table, packets, bytes and drops per direction', () => {
  const text = renderAllTotals([netStats('n0')]);
  assert.match(
    text,
    /^DEVICE\s+LINK\s+RX PACKETS\s+RX MiB\s+RX DROPS\s+TX PACKETS\s+TX MiB\s+TX DROPS\s+ERRORS\n/,
  );
  assert.match(text, /\nn0\s+down\s+20\s+3\.0\s+2\s+10\s+1\.0\s+0\s+1\n$/);
  assert.doesNotMatch(text, /FLUSHES/, 'no block table without block devices');
});

test('vduse ls: a net device shows its tap, MAC, MTU and link', () => {
  const d = netDeviceInfo('n0', { tap: 'vts0', link: 'up', features: '0x1' });
  assert.match(
    formatDeviceTable([d]),
    /\nn0\s+running\s+eth1\s+-\s+1x256\s+0x1\s+tap:vts0 \(02:00:00:00:00:01, mtu 1500, link up\)\n$/,
  );
});
