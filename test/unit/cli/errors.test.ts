import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { UsageError, VduseTsError, isVduseTsError } from '../../../src/common/errors.js';
import { CliUsageError, parseCommandLine } from '../../../src/cli/args.js';
import { listDevices } from '../../../src/cli/list.js';
import { reportError } from '../../../src/cli/report.js';
import { parseServeArgs } from '../../../src/cli/serve.js';
import { ConfigError } from '../../../src/mgmt/daemon/errors.js';
import { RpcCallError, RpcError } from '../../../src/mgmt/daemon/rpc.js';

test('every error class of the management plane and the CLI is a VduseTsError with a stable code', () => {
  const config = new ConfigError('config devices[0].queues: bad', 'devices[0].queues');
  assert.ok(config instanceof UsageError && config.code === 'ERR_CONFIG_INVALID');
  assert.equal(config.path, 'devices[0].queues');
  const usage = new CliUsageError('--x: bad');
  assert.ok(usage instanceof UsageError && usage.code === 'ERR_CLI_USAGE' && usage.name === 'CliUsageError');
  assert.ok(new RpcError('ERR_RPC_PARSE', 'x') instanceof VduseTsError);
  const call = new RpcCallError('ERR_MGMT_DEVICE_BUSY', -32004, 'busy');
  assert.ok(call instanceof VduseTsError && call.code === 'ERR_MGMT_DEVICE_BUSY' && call.rpcCode === -32004);
});

test('the CLI prints a VduseTsError as one line (UsageError exit 2, others 1), anything else with its stack', () => {
  const out: string[] = [];
  const write = (t: string): void => void out.push(t);
  assert.equal(
    reportError(new UsageError('--queues must be a whole number, got "x"'), 'vduse', { write }),
    2,
  );
  assert.equal(reportError(new ConfigError('config x: bad', 'x'), 'vduse', { write }), 2);
  assert.equal(reportError(new VduseTsError('ERR_X', 'no such device'), 'vduse del', { write }), 1);
  assert.deepEqual(out, [
    'vduse: --queues must be a whole number, got "x"\n',
    'vduse: config x: bad\n',
    'vduse del: no such device\n',
  ]);
  out.length = 0;
  assert.equal(
    reportError(new CliUsageError('vduse add: --queues must be a whole number, got "x"'), null, { write }),
    2,
  );
  assert.deepEqual(
    out,
    ['vduse add: --queues must be a whole number, got "x"\n'],
    'the message names its command',
  );
  out.length = 0;
  assert.equal(reportError(new TypeError('oops'), 'vduse', { write }), 1);
  assert.match(out[0]!, /^vduse: internal error: TypeError: oops\n\s+at /);
});

test('a single-valued option given twice is refused, not silently the last one', () => {
  const refused = (args: string[], message: string): void =>
    assert.throws(
      () => parseCommandLine(args),
      (e: unknown) => e instanceof CliUsageError && e.message === message,
    );
  refused(
    ['blk', '--name', 'a', '--name', 'b', '--backend', 'null:1M'],
    '--name is given twice (give it once)',
  );
  refused(
    ['blk', '--name', 'a', '--backend', 'null:1M', '--backend=null:2M'],
    '--backend is given twice (give it once)',
  );
  refused(
    ['blk', '--name', 'a', '--backend', 'null:1M', '--readonly', '--readonly'],
    '--readonly is given twice (give it once)',
  );
  assert.throws(
    () => parseServeArgs(['--socket', '/a', '--socket', '/b']),
    /^CliUsageError: --socket is given twice/,
  );
});

test('the memory backend with queue threads is a usage error with its own words (exit 2), not matched on text', () => {
  assert.throws(
    () =>
      parseCommandLine([
        'blk',
        '--name',
        'a',
        '--backend',
        'memory:1M',
        '--queues',
        '2',
        '--queue-threads',
        '2',
      ]),
    (e: unknown) =>
      e instanceof UsageError &&
      e.message ===
        '--queue-threads cannot serve a memory backend (its data lives in one thread); use a file on tmpfs instead',
  );
});

test('vduse list without VDUSE says so (ERR_VDUSE_UNAVAILABLE) instead of printing nothing', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vduse-list-'));
  try {
    assert.throws(
      () => listDevices({ sysClassDir: join(dir, 'sys'), devDir: join(dir, 'dev') }),
      (e: unknown) =>
        isVduseTsError(e, 'ERR_VDUSE_UNAVAILABLE') && /^VDUSE is not available: neither /.test(e.message),
    );
    mkdirSync(join(dir, 'sys'));
    mkdirSync(join(dir, 'sys', 'control'));
    assert.deepEqual(listDevices({ sysClassDir: join(dir, 'sys'), devDir: join(dir, 'dev') }), []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
