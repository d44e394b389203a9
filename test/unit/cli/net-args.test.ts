// `vduse net` on the command line: defaults, every option, and one line (exit 2) for each bad input.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  CliUsageError,
  MAIN_USAGE,
  NET_USAGE,
  parseCommandLine,
  type NetCommand,
} from '../../../src/cli/args.js';
import { EXIT_USAGE, reportError } from '../../../src/cli/report.js';

const net = (...args: string[]): NetCommand => {
  const c = parseCommandLine(['net', ...args]);
  assert.equal(c.command, 'net');
  return c as NetCommand;
};
const usage = (args: string[], re: RegExp): void => {
  let caught: unknown = null;
  try {
    parseCommandLine(['net', ...args]);
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof CliUsageError, `${args.join(' ')}: expected a usage error`);
  assert.match(caught.message, re);
  assert.ok(!caught.message.includes('\n'), 'one line');
  const lines: string[] = [];
  assert.equal(reportError(caught, 'vduse', { write: (t) => void lines.push(t) }), EXIT_USAGE);
  assert.equal(lines.length, 1);
};

describe('vduse net command line', () => {
  it('parses the defaults', () => {
    assert.deepEqual(net('--name', 'n0', '--tap', 'vts0'), {
      command: 'net',
      type: 'net',
      name: 'n0',
      tap: 'vts0',
      mtu: 1500,
      queueSize: 256,
      link: 'up',
      offloads: true,
      attach: true,
      driver: 'virtio-vdpa',
      reconnect: 'never',
      persist: false,
      verbose: false,
      stats: false,
    });
  });

  it('parses every option', () => {
    const c = net(
      '--name=n1',
      '--tap=t1',
      '--mac',
      '52-54-00-AB-cd-01',
      '--mtu',
      '9000',
      '--queue-size',
      '1024',
      '--link',
      'down',
      '--no-offloads',
      '--driver',
      'vhost-vdpa',
      '--stats',
      '-v',
    );
    assert.equal(c.mac, '52:54:00:ab:cd:01');
    assert.equal(c.mtu, 9000);
    assert.equal(c.queueSize, 1024);
    assert.equal(c.link, 'down');
    assert.equal(c.offloads, false);
    assert.equal(c.driver, 'vhost-vdpa');
    assert.equal(c.stats, true);
    assert.equal(c.verbose, true);
    assert.equal(net('--name', 'n', '--tap', 't', '--no-attach').attach, false);
  });

  it('help: vduse net --help, and the main help names the command', () => {
    assert.deepEqual(parseCommandLine(['net', '--help']), { command: 'help', topic: 'net' });
    assert.deepEqual(parseCommandLine(['net', '-h', '--mtu', 'x']), { command: 'help', topic: 'net' });
    for (const flag of [
      '--tap',
      '--mac',
      '--mtu',
      '--queue-size',
      '--link',
      '--driver',
      '--stats',
      '--no-attach',
    ])
      assert.ok(NET_USAGE.includes(flag), flag);
    assert.match(MAIN_USAGE, /^ {2}net {4}/m);
  });

  it('one line for each bad input', () => {
    usage(['--tap', 't'], /^--name is required/);
    usage(['--name', 'n'], /^--tap is required/);
    usage(['--name', 'n', '--tap', 'a/b'], /^--tap "a\/b" is not an interface name/);
    usage(['--name', 'n', '--tap', 'sixteen-bytes-xx'], /^--tap .*is not an interface name/);
    usage(['--name', 'bad name', '--tap', 't'], /^--name "bad name" is not a valid device name/);
    usage(
      ['--name', 'n', '--tap', 't', '--mac', 'zz:00:00:00:00:01'],
      /^--mac "zz:00:00:00:00:01" is not six hex pairs/,
    );
    usage(['--name', 'n', '--tap', 't', '--mac', '01:00:00:00:00:01'], /^--mac .* is a multicast address/);
    usage(['--name', 'n', '--tap', 't', '--mac', '00:00:00:00:00:00'], /^--mac .* is all zero/);
    usage(['--name', 'n', '--tap', 't', '--mtu', '67'], /^--mtu must be between 68 and 65535, got 67$/);
    usage(['--name', 'n', '--tap', 't', '--mtu', '65536'], /^--mtu must be between 68 and 65535, got 65536$/);
    usage(['--name', 'n', '--tap', 't', '--mtu', '1.5k'], /^--mtu must be a whole number/);
    usage(
      ['--name', 'n', '--tap', 't', '--queue-size', '100'],
      /^--queue-size must be a power of two, got 100$/,
    );
    usage(['--name', 'n', '--tap', 't', '--link', 'sideways'], /^--link must be up or down, got "sideways"$/);
    usage(['--name', 'n', '--tap', 't', '--driver', 'vfio'], /^--driver must be virtio-vdpa or vhost-vdpa/);
    usage(
      ['--name', 'n', '--tap', 't', '--no-attach', '--driver', 'vhost-vdpa'],
      /^--driver makes no sense with --no-attach$/,
    );
    usage(['--name', 'n', '--tap', 't', '--backend', 'memory:1M'], /Unknown option '--backend'/);
    usage(['--name', 'n', '--tap', 't', '--tap', 'u'], /^--tap is given twice/);
  });
});
