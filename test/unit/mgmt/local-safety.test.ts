import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { UsageError, isVduseTsError } from '../../../src/common/errors.js';
import { nullLogger } from '../../../src/common/logger.js';
import { BLK_DEFAULTS, BlkRunner } from '../../../src/mgmt/blk/runner.js';
import { checkDaemonPath, makeDaemonDir } from '../../../src/mgmt/daemon/paths.js';
import { writePidFile } from '../../../src/mgmt/daemon/notify.js';
import { RpcServer } from '../../../src/mgmt/daemon/rpc.js';
import { MgmtError } from '../../../src/mgmt/daemon/errors.js';
import { FakeBinding } from '../../../src/testing/fake-binding.js';
import type { VdpaClient } from '../../../src/transports/vdpa/client.js';

const CLI = fileURLToPath(new URL('../../../src/cli/main.js', import.meta.url));

function withDir(fn: (dir: string) => Promise<void> | void) {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vduse-safety-'));
    try {
      await fn(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

test(
  'pid file: a symlink planted at PID.tmp does not make the daemon write into its target',
  withDir((dir) => {
    const target = join(dir, 'victim');
    writeFileSync(target, 'precious\n');
    const pidfile = join(dir, 'vduse.pid');
    symlinkSync(target, `${pidfile}.4242.tmp`);
    writePidFile(pidfile, 4242);
    assert.equal(readFileSync(target, 'utf8'), 'precious\n', 'the target is untouched');
    assert.equal(readFileSync(pidfile, 'utf8'), '4242\n');
    assert.ok(!lstatSync(pidfile).isSymbolicLink());
    assert.ok(!existsSync(`${pidfile}.4242.tmp`), 'no temporary left');
    // a symlink at the pid file itself is replaced, not followed
    symlinkSync(target, join(dir, 'other.pid'));
    writePidFile(join(dir, 'other.pid'), 7);
    assert.equal(readFileSync(target, 'utf8'), 'precious\n');
    assert.equal(readFileSync(join(dir, 'other.pid'), 'utf8'), '7\n');
  }),
);

test(
  'pid file in a directory that is not there: one line, ERR_MGMT_PATH',
  withDir((dir) => {
    assert.throws(
      () => writePidFile(join(dir, 'no', 'vduse.pid'), 1),
      (e: unknown) =>
        e instanceof MgmtError &&
        e.code === 'ERR_MGMT_PATH' &&
        e.errno === 'ENOENT' &&
        !e.message.includes('\n'),
    );
  }),
);

test('paths on procfs or sysfs are refused (Node would loop in mkdir there); real ones are made 0700', () => {
  for (const p of ['/proc/nope/x.sock', '/proc/self/x', '/sys/kernel/nope/dir']) {
    assert.throws(
      () => checkDaemonPath(p, '--socket'),
      (e: unknown) =>
        e instanceof UsageError && e.code === 'ERR_MGMT_BAD_PATH' && e.message.startsWith(`--socket ${p}: `),
      p,
    );
  }
  assert.throws(
    () => makeDaemonDir('/proc/nope/a/b', 'state-dir'),
    /state-dir \/proc\/nope\/a\/b: \/proc is on procfs/,
  );
  const dir = mkdtempSync(join(tmpdir(), 'vduse-paths-'));
  try {
    checkDaemonPath(join(dir, 'x.sock'), '--socket');
    makeDaemonDir(join(dir, 'a', 'b', 'c'), '--socket');
    assert.equal(statSync(join(dir, 'a', 'b', 'c')).mode & 0o777, 0o700);
    writeFileSync(join(dir, 'file'), '');
    assert.throws(
      () => makeDaemonDir(join(dir, 'file', 'sub'), '--socket'),
      (e: unknown) => isVduseTsError(e, 'ERR_MGMT_PATH') && /is not a directory/.test(e.message),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the RPC server refuses a socket under /proc instead of spinning', async () => {
  const server = new RpcServer({});
  await assert.rejects(server.listen('/proc/nope/x.sock'), (e: unknown) =>
    isVduseTsError(e, 'ERR_MGMT_BAD_PATH'),
  );
});

/** Run the CLI in a child with a deadline (a spin would otherwise hang the test run). */
function cli(args: string[], timeoutMs = 20_000) {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: timeoutMs });
}

test(
  'vduse serve with a socket, state dir or config socket under /proc: one line, exit 2, at once',
  withDir((dir) => {
    const config = join(dir, 'c.yaml');
    writeFileSync(config, 'socket: /proc/nope/c.sock\n');
    const cases: [string[], RegExp][] = [
      [
        ['serve', '--socket', '/proc/nope/x.sock'],
        /^vduse: --socket \/proc\/nope\/x\.sock: \/proc is on procfs/,
      ],
      [
        ['serve', '--socket', join(dir, 's.sock'), '--state-dir', '/proc/nope'],
        /^vduse: --state-dir \/proc\/nope: \/proc is on procfs/,
      ],
      [['serve', '--config', config], /^vduse: config socket \/proc\/nope\/c\.sock: \/proc is on procfs/],
    ];
    for (const [args, re] of cases) {
      const r = cli(args);
      assert.equal(r.signal, null, `${args.join(' ')}: still running after 20 s (killed)`);
      assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, re);
      assert.equal(r.stderr.split('\n').length, 2, `one line: ${r.stderr}`);
    }
  }),
);

test(
  'a file that file:PATH,size= created is removed again when the start fails; one that existed is kept',
  { skip: existsSync('/dev/vduse/control') ? 'this machine has VDUSE: the start would not fail' : false },
  withDir(async (dir) => {
    const deps = { binding: new FakeBinding(), logger: nullLogger, vdpa: {} as VdpaClient };
    const created = join(dir, 'new.raw');
    await assert.rejects(
      BlkRunner.start({ ...BLK_DEFAULTS, name: 'd0', backend: `file:${created},size=1M` }, deps),
      (e: unknown) => isVduseTsError(e, 'ERR_VDUSE_UNAVAILABLE'),
    );
    assert.equal(existsSync(created), false, 'the created file is gone');
    const kept = join(dir, 'old.raw');
    writeFileSync(kept, Buffer.alloc(1 << 20, 7));
    await assert.rejects(
      BlkRunner.start({ ...BLK_DEFAULTS, name: 'd0', backend: `file:${kept},size=1M` }, deps),
    );
    assert.equal(statSync(kept).size, 1 << 20, 'an existing file stays');
    mkdirSync(join(dir, 'sub'));
  }),
);
