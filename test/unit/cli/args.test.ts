import { availableParallelism } from 'node:os';
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { BLK_USAGE, CliUsageError, parseCommandLine, type BlkCommand } from '../../../src/cli/args.js';

const blk = (...args: string[]): BlkCommand => {
  const c = parseCommandLine(['blk', ...args]);
  assert.equal(c.command, 'blk');
  return c as BlkCommand;
};
const usage = (args: string[], re: RegExp): void => {
  assert.throws(
    () => parseCommandLine(args),
    (e: unknown) => e instanceof CliUsageError && re.test(e.message) && !e.message.includes('\n'),
  );
};

describe('vduse command line', () => {
  it('parses blk with defaults', () => {
    assert.deepEqual(blk('--name', 'd0', '--backend', 'memory:64M'), {
      command: 'blk',
      name: 'd0',
      backend: 'memory:64M',
      queues: 1,
      queueSize: 256,
      logicalBlockSize: 512,
      readOnly: false,
      packed: false,
      attach: true,
      driver: 'virtio-vdpa',
      queueThreads: 1,
      verbose: false,
      stats: false,
      reconnect: 'auto',
      persist: false,
    });
  });

  it('parses the crash-recovery options', () => {
    const c = blk(
      '--name',
      'd0',
      '--backend',
      'memory:64M',
      '--state-dir',
      '/x/y',
      '--reconnect',
      'always',
      '--persist',
    );
    assert.equal(c.stateDir, '/x/y');
    assert.equal(c.reconnect, 'always');
    assert.equal(c.persist, true);
    usage(
      ['blk', '--name', 'd0', '--backend', 'memory:1M', '--reconnect', 'sometimes'],
      /--reconnect must be/,
    );
  });

  it('parses every blk option', () => {
    const c = blk(
      '--name=d1',
      '--backend',
      'file:/tmp/x',
      '--queues',
      '4',
      '--queue-size',
      '128',
      '--logical-block-size',
      '4096',
      '--serial',
      'ABC',
      '--readonly',
      '--packed',
      '--driver',
      'vhost-vdpa',
      '-v',
      '--stats',
    );
    assert.equal(c.queues, 4);
    assert.equal(c.queueSize, 128);
    assert.equal(c.logicalBlockSize, 4096);
    assert.equal(c.serial, 'ABC');
    assert.equal(c.readOnly, true);
    assert.equal(c.packed, true);
    assert.equal(c.driver, 'vhost-vdpa');
    assert.equal(c.verbose, true);
    assert.equal(c.stats, true);
    assert.equal(blk('--name', 'd', '--backend', 'null:1G', '--no-attach').attach, false);
  });

  it('help, version and list', () => {
    assert.deepEqual(parseCommandLine(['--help']), { command: 'help' });
    assert.deepEqual(parseCommandLine(['-h']), { command: 'help' });
    assert.deepEqual(parseCommandLine(['blk', '--help']), { command: 'help', topic: 'blk' });
    assert.deepEqual(parseCommandLine(['--version']), { command: 'version' });
    assert.deepEqual(parseCommandLine(['-V']), { command: 'version' });
    assert.deepEqual(parseCommandLine(['list']), { command: 'list' });
  });

  it('rejects bad arguments with one line each', () => {
    usage([], /missing command/);
    usage(['frob'], /unknown command "frob"/);
    usage(['--frob'], /unknown option "--frob"/);
    usage(
      ['blk', '--name', 'x', '--backend', 'null:1G', '--poll-us', '-5'],
      /^Option '--poll-us' argument is ambiguous: write --poll-us=VALUE for a value that starts with '-'$/,
    );
    usage(['blk', '--name', 'x', '--backend', 'null:1G', '--poll-us=-5'], /--poll-us must be a whole number/);
    usage(['list', 'x'], /no arguments/);
    usage(['blk', '--backend', 'memory:1M'], /--name is required/);
    usage(['blk', '--name', 'x'], /--backend is required/);
    usage(['blk', '--name', 'x', '--backend', 'memory:1M', '--bogus'], /bogus/);
    usage(['blk', '--name', 'x', '--backend', 'memory:1M', 'extra'], /extra/);
    usage(['blk', '--name', 'a/b', '--backend', 'memory:1M'], /not a valid device name/);
    usage(['blk', '--name', 'control', '--backend', 'memory:1M'], /not a valid device name/);
    usage(['blk', '--name', 'x'.repeat(256), '--backend', 'memory:1M'], /not a valid device name/);
    usage(
      ['blk', '--name', 'x', '--backend', 'memory:1M', '--queues', '0'],
      /--queues must be between 1 and 64/,
    );
    usage(['blk', '--name', 'x', '--backend', 'memory:1M', '--queues', 'two'], /whole number/);
    usage(['blk', '--name', 'x', '--backend', 'memory:1M', '--queue-size', '100'], /power of two/);
    usage(['blk', '--name', 'x', '--backend', 'memory:1M', '--queue-size', '65536'], /between 2 and 32768/);
    usage(['blk', '--name', 'x', '--backend', 'memory:1M', '--logical-block-size', '3000'], /power of two/);
    usage(
      ['blk', '--name', 'x', '--backend', 'memory:1M', '--logical-block-size', '256'],
      /between 512 and 4096/,
    );
    usage(['blk', '--name', 'x', '--backend', 'memory:1M', '--serial', 'x'.repeat(21)], /at most 20/);
    usage(['blk', '--name', 'x', '--backend', 'memory:1M', '--driver', 'vfio'], /virtio-vdpa or vhost-vdpa/);
    usage(
      ['blk', '--name', 'x', '--backend', 'memory:1M', '--no-attach', '--driver', 'vhost-vdpa'],
      /--no-attach/,
    );
    usage(['blk', '--name', 'x', '--backend', 'memory:1M', '--queues'], /argument missing|queues/);
    usage(
      ['blk', '--name', 'x', '--backend', 'null:1M', '--queues', '2', '--queue-threads', '3'],
      /^--queue-threads 3 is more than --queues 2 \(each thread serves at least one queue\)$/,
    );
    usage(
      ['blk', '--name', 'x', '--backend', 'null:1M', '--queue-threads', 'many'],
      /--queue-threads must be a whole number/,
    );
    usage(['blk', '--name', 'x', '--backend', 'null:1M', '--queue-threads', '65'], /between 0 and 64/);
    usage(
      ['blk', '--name', 'x', '--backend', 'null:1M', '--poll-us', '1.5'],
      /--poll-us must be a whole number/,
    );
    usage(['blk', '--name', 'x', '--backend', 'null:1M', '--poll-us', '10001'], /between 0 and 10000/);
  });

  it('parses --queue-threads and --poll-us', () => {
    const c = blk(
      '--name',
      'd',
      '--backend',
      'null:1M',
      '--queues',
      '4',
      '--queue-threads',
      '2',
      '--poll-us',
      '30',
    );
    assert.equal(c.queueThreads, 2);
    assert.equal(c.pollUs, 30);
    assert.equal(blk('--name', 'd', '--backend', 'null:1M', '--queue-threads', '0').queueThreads, 0);
    assert.match(BLK_USAGE, /--queue-threads N/);
    assert.match(BLK_USAGE, /--poll-us N/);
  });

  it('defaults --queue-threads to min(queues, cores - 1), inline for a memory backend or one queue', () => {
    const spare = Math.max(1, availableParallelism() - 1);
    assert.equal(
      blk('--name', 'd', '--backend', 'null:1M', '--queues', '4').queueThreads,
      Math.min(4, spare),
    );
    assert.equal(
      blk('--name', 'd', '--backend', 'file:/x', '--queues', '64').queueThreads,
      Math.min(64, spare),
    );
    assert.equal(blk('--name', 'd', '--backend', 'null:1M').queueThreads, 1);
    // A memory backend cannot be served by threads: inline by default, an error only when asked for.
    assert.equal(blk('--name', 'd', '--backend', 'memory:1M', '--queues', '4').queueThreads, 1);
    usage(
      ['blk', '--name', 'x', '--backend', 'memory:1M', '--queues', '4', '--queue-threads', '2'],
      /--queue-threads cannot serve a memory backend/,
    );
    assert.match(BLK_USAGE, /Default: min\(queues, cores - 1\)/);
  });
});
