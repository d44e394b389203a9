import { availableParallelism } from 'node:os';
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { defaultQueueThreads, type BlkDeviceConfig } from '../../../src/mgmt/blk/options.js';

import {
  ConfigError,
  changedDeviceKeys,
  parseConfigText,
  parseDeviceOptions,
  parseListenAddress,
  validateConfig,
} from '../../../src/mgmt/config.js';

function fails(fn: () => unknown, message: string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof ConfigError, `a ConfigError, got ${String(err)}`);
    assert.equal(err.message, message);
    return true;
  });
}

test('YAML config with defaults filled in', () => {
  const c = parseConfigText(
    [
      'socket: /run/x.sock',
      'metrics: 127.0.0.1:9470',
      'log-format: json',
      'devices:',
      '  - name: disk0',
      '    backend: memory:64M',
      '  - name: disk1',
      '    backend: file:/var/lib/d1.img,size=1G',
      '    queues: 4',
      '    queue-size: 128',
      '    logical-block-size: 4096',
      '    serial: abc',
      '    readonly: false',
      '    packed: true',
      '    driver: vhost-vdpa',
    ].join('\n'),
    'vduse.yaml',
  );
  assert.equal(c.socket, '/run/x.sock');
  assert.equal(c.metrics, '127.0.0.1:9470');
  assert.equal(c.logFormat, 'json');
  assert.deepEqual(c.devices[0], {
    name: 'disk0',
    backend: 'memory:64M',
    queues: 1,
    queueSize: 256,
    logicalBlockSize: 512,
    readOnly: false,
    packed: false,
    attach: true,
    driver: 'virtio-vdpa',
    queueThreads: 1,
    reconnect: 'auto',
    persist: false,
  });
  assert.deepEqual(c.devices[1], {
    name: 'disk1',
    backend: 'file:/var/lib/d1.img,size=1G',
    queues: 4,
    queueSize: 128,
    logicalBlockSize: 4096,
    serial: 'abc',
    readOnly: false,
    packed: true,
    attach: true,
    driver: 'vhost-vdpa',
    queueThreads: Math.max(1, Math.min(4, availableParallelism() - 1)), // the default: a thread per queue, at most cores - 1
    reconnect: 'auto',
    persist: false,
  });
});

test('queue-threads and poll-us: defaults, values, one message each for a bad one', () => {
  const one = (extra: string) =>
    parseConfigText(`devices:\n  - name: a\n    backend: null:1M\n    queues: 4\n${extra}`, 'c.yaml')
      .devices[0] as BlkDeviceConfig;
  assert.equal(one('').queueThreads, Math.max(1, Math.min(4, availableParallelism() - 1)));
  assert.equal(one('').pollUs, undefined);
  assert.equal(one('    queue-threads: 4\n').queueThreads, 4);
  assert.equal(one('    queue-threads: 0\n').queueThreads, 0);
  assert.equal(one('    poll-us: 50\n').pollUs, 50);
  fails(
    () => one('    queue-threads: 5\n'),
    'config devices[0].queue-threads: 5 is more than the 4 queue(s) (each thread serves at least one queue)',
  );
  fails(
    () => one('    queue-threads: two\n'),
    'config devices[0].queue-threads: expected an integer 0..64, got "two"',
  );
  fails(() => one('    poll-us: -1\n'), 'config devices[0].poll-us: expected an integer 0..10000, got -1');
  fails(
    () => one('    queueThreads: 2\n'),
    'config devices[0].queueThreads: unknown key (did you mean "queue-threads"?)',
  );
});

test('JSON config by file name or by a leading brace; empty document = no devices', () => {
  assert.equal(parseConfigText('{"devices":[{"name":"a","backend":"null:1M"}]}', 'x.json').devices.length, 1);
  assert.equal(parseConfigText('  {"devices":[]}', 'x.conf').devices.length, 0);
  assert.deepEqual(parseConfigText('', 'x.yaml'), { devices: [] });
  assert.deepEqual(parseConfigText('# nothing\n', 'x.yaml'), { devices: [] });
});

test('each bad value is one message naming the key path', () => {
  const dev = (extra: string): string =>
    `devices:\n  - name: a\n    backend: memory:1M\n  - name: b\n    backend: memory:1M\n${extra}`;
  fails(
    () => parseConfigText(dev('    queues: x\n'), 'c.yaml'),
    'config devices[1].queues: expected an integer 1..64, got "x"',
  );
  fails(
    () => parseConfigText(dev('    queues: 65\n'), 'c.yaml'),
    'config devices[1].queues: expected an integer 1..64, got 65',
  );
  fails(
    () => parseConfigText(dev('    queues: 1.5\n'), 'c.yaml'),
    'config devices[1].queues: expected an integer 1..64, got 1.5',
  );
  fails(
    () => parseConfigText(dev('    queue-size: 100\n'), 'c.yaml'),
    'config devices[1].queue-size: expected a power of two 2..32768, got 100',
  );
  fails(
    () => parseConfigText(dev('    logical-block-size: 8192\n'), 'c.yaml'),
    'config devices[1].logical-block-size: expected a power of two 512..4096, got 8192',
  );
  fails(
    () => parseConfigText(dev('    readonly: yes please\n'), 'c.yaml'),
    'config devices[1].readonly: expected true or false, got "yes please"',
  );
  fails(
    () => parseConfigText(dev('    queueSize: 8\n'), 'c.yaml'),
    'config devices[1].queueSize: unknown key (did you mean "queue-size"?)',
  );
  fails(
    () => parseConfigText(dev('    driver: vhost\n'), 'c.yaml'),
    'config devices[1].driver: expected "virtio-vdpa" or "vhost-vdpa", got "vhost"',
  );
  fails(
    () => parseConfigText(dev('    attach: false\n    driver: vhost-vdpa\n'), 'c.yaml'),
    'config devices[1].driver: makes no sense with attach: false',
  );
  fails(
    () => parseConfigText(dev('    serial: "123456789012345678901"\n'), 'c.yaml'),
    'config devices[1].serial: expected at most 20 printable ASCII characters, got "123456789012345678901"',
  );
  fails(
    () => parseConfigText('devices:\n  - backend: memory:1M\n', 'c.yaml'),
    'config devices[0].name: expected a device name, got nothing',
  );
  fails(
    () => parseConfigText('devices:\n  - name: control\n    backend: memory:1M\n', 'c.yaml'),
    `config devices[0].name: "control" is not a valid device name (letters, digits, '.', '_', '-'; up to 255 bytes; not "control")`,
  );
  fails(
    () => parseConfigText('devices:\n  - name: a\n', 'c.yaml'),
    'config devices[0].backend: expected a non-empty string, got nothing',
  );
  fails(
    () => parseConfigText('devices: {}\n', 'c.yaml'),
    'config devices: expected a list of devices, got an object',
  );
  fails(
    () => parseConfigText('devices:\n  - 5\n', 'c.yaml'),
    'config devices[0]: expected an object (key: value), got 5',
  );
  fails(() => parseConfigText('- a\n', 'c.yaml'), 'config: expected an object (key: value), got a list');
  fails(
    () => parseConfigText('sockets: /x\n', 'c.yaml'),
    'config sockets: unknown key (known keys: socket, metrics, pidfile, user, log-format, state-dir, devices)',
  );
  fails(
    () => parseConfigText('log-format: xml\n', 'c.yaml'),
    'config log-format: expected "json" or "text", got "xml"',
  );
  fails(
    () => parseConfigText('metrics: localhost\n', 'c.yaml'),
    'config metrics: expected ADDR:PORT (like 127.0.0.1:9470), got "localhost"',
  );
  fails(
    () => parseConfigText(dev('').replace('name: b', 'name: a'), 'c.yaml'),
    'config devices[1].name: "a" is declared twice',
  );
});

test('a bad backend spec is reported under the backend key', () => {
  assert.throws(
    () => parseConfigText('devices:\n  - name: a\n    backend: floppy:1M\n', 'c.yaml'),
    (err: unknown) =>
      err instanceof ConfigError &&
      err.message.startsWith('config devices[0].backend: ') &&
      err.path === 'config devices[0].backend',
  );
});

test('syntax errors say which language failed, on one line', () => {
  assert.throws(
    () => parseConfigText('{"devices": [', 'c.json'),
    /^ConfigError: config: not valid JSON: [^\n]+$/,
  );
  assert.throws(
    () => parseConfigText('devices: [\n  a: b: c\n', 'c.yaml'),
    /^ConfigError: config: not valid YAML: [^\n]+$/,
  );
});

test('device options for device.add take the same keys, prefixed with params', () => {
  assert.equal(parseDeviceOptions({ name: 'x', backend: 'null:1M', attach: false }, 'params').attach, false);
  fails(
    () => parseDeviceOptions({ name: 'x', backend: 'null:1M', queues: '2' }, 'params'),
    'params.queues: expected an integer 1..64, got "2"',
  );
  fails(() => parseDeviceOptions(null, 'params'), 'params: expected an object (key: value), got null');
});

test('listen addresses', () => {
  assert.deepEqual(parseListenAddress('127.0.0.1:9470', 'm'), { host: '127.0.0.1', port: 9470 });
  assert.deepEqual(parseListenAddress('9470', 'm'), { host: '127.0.0.1', port: 9470 });
  assert.deepEqual(parseListenAddress(':9470', 'm'), { host: '127.0.0.1', port: 9470 });
  assert.deepEqual(parseListenAddress('[::1]:9470', 'm'), { host: '::1', port: 9470 });
  assert.throws(() => parseListenAddress('127.0.0.1:99999', '--metrics'), /--metrics: expected ADDR:PORT/);
});

test('validateConfig(null) and changedDeviceKeys', () => {
  assert.deepEqual(validateConfig(null), { devices: [] });
  const a = parseDeviceOptions({ name: 'x', backend: 'null:1M' }, 'p');
  const b = parseDeviceOptions({ name: 'x', backend: 'null:2M', queues: 2 }, 'p');
  assert.deepEqual(changedDeviceKeys(a, a), []);
  const changed = availableParallelism() > 2 ? ['backend', 'queues', 'queue-threads'] : ['backend', 'queues'];
  assert.deepEqual(changedDeviceKeys(a, b), changed);
});

test('the example config in contrib/ is valid', async () => {
  const { readFileSync } = await import('node:fs');
  const { join } = await import('node:path');
  const { findPackageRoot } = await import('../../../src/sys/native.js');
  const c = parseConfigText(
    readFileSync(join(findPackageRoot(), 'contrib', 'vduse.yaml'), 'utf8'),
    'vduse.yaml',
  );
  assert.deepEqual(
    c.devices.map((d) => d.name),
    ['data0', 'scratch0'],
  );
  assert.equal(c.metrics, '127.0.0.1:9470');
});

test('a type: net entry next to a block device; its keys, its messages, what a reload would change', () => {
  const c = parseConfigText(
    [
      'devices:',
      '  - name: d0',
      '    backend: null:1M',
      '  - type: net',
      '    name: n0',
      '    tap: vts0',
      '    mac: 52:54:00:12:34:56',
      '    mtu: 9000',
      '    link: down',
      '    offloads: false',
      '',
    ].join('\n'),
    'c.yaml',
  );
  assert.equal((c.devices[0] as BlkDeviceConfig).backend, 'null:1M');
  assert.deepEqual(c.devices[1], {
    type: 'net',
    name: 'n0',
    tap: 'vts0',
    mac: '52:54:00:12:34:56',
    mtu: 9000,
    queueSize: 256,
    link: 'down',
    offloads: false,
    attach: true,
    driver: 'virtio-vdpa',
    reconnect: 'never',
    persist: false,
  });
  const bad = (entry: string, re: RegExp): void =>
    assert.throws(
      () => parseConfigText(`devices:\n  - type: net\n    name: n0\n${entry}`, 'c.yaml'),
      (e: unknown) => e instanceof ConfigError && re.test(e.message),
      entry,
    );
  bad('    tap: t\n    backend: null:1M\n', /^config devices\[0\]\.backend: unknown key of a net device/);
  bad(
    '    tap: t\n    mtu: 65536\n',
    /^config devices\[0\]\.mtu: expected an integer 68\.\.65535, got 65536$/,
  );
  bad(
    '    tap: t\n    queueSize: 64\n',
    /^config devices\[0\]\.queueSize: unknown key of a net device \(did you mean "queue-size"\?\)$/,
  );
  bad('', /^config devices\[0\]\.tap: expected a tap interface name, got nothing$/);
  assert.throws(
    () => parseConfigText('devices:\n  - type: disk\n    name: x\n', 'c.yaml'),
    /config devices\[0\]\.type: expected "blk" or "net", got "disk"/,
  );
  const n = c.devices[1]!;
  assert.deepEqual(changedDeviceKeys(n, { ...n, mtu: 1500, tap: 'other' } as typeof n), ['tap', 'mtu']);
  assert.deepEqual(changedDeviceKeys(n, c.devices[0]!), ['type']);
  assert.deepEqual(changedDeviceKeys(n, n), []);
});

test('the default queue-threads: min(queues, cores); inline for a memory backend, one queue or one core', () => {
  assert.equal(defaultQueueThreads(4, 'file:/x', 3), 2);
  assert.equal(defaultQueueThreads(4, 'file:/x', 8), 4);
  assert.equal(defaultQueueThreads(2, 'null:1G', 8), 2);
  assert.equal(defaultQueueThreads(1, 'nbd://h/e', 8), 1);
  assert.equal(defaultQueueThreads(4, 'file:/x', 2), 1, 'two cores: inline (measured best there)');
  assert.equal(defaultQueueThreads(4, 'file:/x', 1), 1);
  assert.equal(defaultQueueThreads(4, 'memory:1G', 8), 1);
  assert.equal(defaultQueueThreads(4, 'file:/x'), Math.max(1, Math.min(4, availableParallelism() - 1)));
  // The config, device.add and vduse blk resolve it the same way; a memory backend is inline, not an error.
  const mem = parseDeviceOptions({ name: 'm', backend: 'memory:1M', queues: 4 }, 'p') as BlkDeviceConfig;
  assert.equal(mem.queueThreads, 1);
  assert.throws(
    () => parseDeviceOptions({ name: 'm', backend: 'memory:1M', queues: 4, 'queue-threads': 2 }, 'p'),
    /queue-threads: queue threads cannot serve a memory backend/,
  );
  assert.equal(
    (
      parseDeviceOptions(
        { name: 'f', backend: 'null:1M', queues: 4, 'queue-threads': 0 },
        'p',
      ) as BlkDeviceConfig
    ).queueThreads,
    0,
  );
});
