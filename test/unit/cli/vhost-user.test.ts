// `vduse blk --vhost-user PATH` as a process (no VDUSE needed): it listens at mode 0600 and serves a VMM (the
// userspace front-end), a SIGHUP after the file grew reaches the VMM as CONFIG_CHANGE_MSG, SIGTERM removes the
// socket; a path held by a live socket or by a non-socket is one line and exit 1; VDUSE-only options are refused.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';

import { parseCommandLine } from '../../../src/cli/args.js';
import { findPackageRoot, loadNativeBinding } from '../../../src/sys/native.js';
import { VhostUserFrontend } from '../../../src/testing/vhost-user/index.js';
import { BlkClient, withTimeout } from '../../../src/testing/vhost-vdpa/blk.js';
import { SharedGuestMemory } from '../../../src/testing/vhost-vdpa/shared-memory.js';

const sys = loadNativeBinding();
const CLI = join(findPackageRoot(), 'dist/src/cli/main.js');
const dir = mkdtempSync(join(tmpdir(), 'vduse-ts-vu-cli-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function run(args: string[]): { status: number | null; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 20_000 });
  return { status: r.status, stderr: r.stderr };
}

async function waitFor(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('vduse blk --vhost-user: serve a VMM, resize on SIGHUP, socket removed at exit, path errors', async () => {
  const sock = join(dir, 'disk.sock');
  const image = join(dir, 'disk.img');
  writeFileSync(image, Buffer.alloc(1 << 20));
  const child = spawn(
    process.execPath,
    [CLI, 'blk', '--name', 'vu0', '--backend', `file:${image}`, '--vhost-user', sock, '--serial', 'cli-vu'],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const mem = new SharedGuestMemory(sys, { size: 1 << 20, iova: 0x100000, tag: 'vu-cli' });
  try {
    await waitFor(() => out.includes(sock), 'the ready line');
    assert.equal(statSync(sock).mode & 0o777, 0o600);
    // the path is taken: one line, exit 1
    const taken = run(['blk', '--name', 'vu1', '--backend', 'null:1M', '--vhost-user', sock]);
    assert.equal(taken.status, 1);
    assert.match(
      taken.stderr,
      /^vduse: cannot listen: .*disk\.sock is in use: another process listens on it\n$/,
    );
    const vmm = VhostUserFrontend.connect(sys, sock);
    await vmm.negotiate();
    await vmm.openBackendChannel();
    await vmm.setMemory(mem);
    const blk = new BlkClient(await vmm.setupQueues({ count: 1, size: 64 }));
    await withTimeout(blk.write(0, Buffer.alloc(512, 7)), 5000, 'write');
    assert.equal(readFileSync(image)[0], 7);
    const id = await withTimeout(blk.getId(), 5000, 'get id');
    assert.match(Buffer.from(id.data).toString('latin1'), /^cli-vu/);
    truncateSync(image, 2 << 20);
    child.kill('SIGHUP');
    await waitFor(() => vmm.configChanges === 1, 'CONFIG_CHANGE_MSG');
    const config = await vmm.getConfig(0, 8);
    assert.equal(new DataView(config.buffer).getBigUint64(0, true), BigInt((2 << 20) / 512));
    blk.close();
    vmm.close();
  } finally {
    child.kill('SIGTERM');
    mem.close();
  }
  assert.equal(await exited, 0, err);
  assert.ok(!existsSync(sock), 'socket removed at exit');
  assert.match(err, /resized to 2 MiB/);
  // not a socket: refused and left alone
  const file = join(dir, 'not-a-socket');
  writeFileSync(file, 'keep');
  const notSock = run(['blk', '--name', 'vu1', '--backend', 'null:1M', '--vhost-user', file]);
  assert.equal(notSock.status, 1);
  assert.match(
    notSock.stderr,
    /^vduse: cannot listen: .*not-a-socket exists and is not a socket \(left alone\)\n$/,
  );
  assert.equal(readFileSync(file, 'utf8'), 'keep');
});

test('--vhost-user refuses the VDUSE-only options, one line each; takes queue threads', () => {
  const base = ['blk', '--name', 'x', '--backend', 'null:1M', '--vhost-user', '/tmp/x.sock'];
  for (const [extra, re] of [
    [['--driver', 'vhost-vdpa'], /--driver is a VDUSE option; it makes no sense with --vhost-user/],
    [['--no-attach'], /--no-attach is a VDUSE option/],
    [['--persist'], /--persist is a VDUSE option/],
    [['--reconnect', 'never'], /--reconnect is a VDUSE option/],
    [['--state-dir', '/tmp'], /--state-dir is a VDUSE option/],
    [['--packed'], /--packed is a VDUSE option/],
  ] as [string[], RegExp][]) {
    assert.throws(() => parseCommandLine([...base, ...extra]), re);
  }
  const ok = parseCommandLine([...base, '--queues', '2', '--poll-us', '10', '--readonly', '--stats']);
  assert.equal(ok.command === 'blk' && ok.vhostUser, '/tmp/x.sock');
  const threaded = parseCommandLine([...base, '--queues', '2', '--queue-threads', '2']);
  assert.equal(threaded.command === 'blk' && threaded.queueThreads, 2);
  assert.throws(() => parseCommandLine([...base.slice(0, 5), '--vhost-user=']), /must be a socket path/);
});
