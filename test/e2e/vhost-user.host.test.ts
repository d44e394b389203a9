// Host-side: the vhost-user-blk scenarios against this project's `vduse blk --vhost-user PATH` (see
// vhost-user-scenarios.ts), QEMU 7.2 as the VMM; plus the socket paths `vduse blk` must refuse.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { exec, projectRoot, vhostUserServer } from './lib/index.js';
import { vhostUserScenarios } from './vhost-user-scenarios.js';

vhostUserScenarios('ours');

const cli = () => path.join(projectRoot(), 'dist', 'src', 'cli', 'main.js');

/** A refusal: non-zero exit, one line on stderr, no stack trace. */
function assertOneLineRefusal(r: { code: number | null; stderr: string }, what: string) {
  assert.notEqual(r.code, 0, `${what}: exit status`);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `${what}: one line, got:\n${r.stderr}`);
  assert.doesNotMatch(r.stderr, /^\s+at /m, `${what}: no stack trace`);
}

test('ours: a socket path that holds a regular file, or a live socket, is refused with one line; the socket is 0600 and removed at exit', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'e2e-vu-paths-'));
  try {
    const plain = path.join(dir, 'not-a-socket');
    fs.writeFileSync(plain, 'keep me');
    const args = (sock: string) => [
      cli(),
      'blk',
      '--name',
      'vu-paths',
      '--backend',
      'null:16M',
      '--vhost-user',
      sock,
    ];
    const r1 = await exec(process.execPath, args(plain), { timeoutMs: 30_000 });
    assertOneLineRefusal(r1, 'a regular file');
    assert.equal(fs.readFileSync(plain, 'utf8'), 'keep me', 'the file is left alone');

    const sock = path.join(dir, 'live.sock');
    const first = vhostUserServer('ours', { id: 'vu-paths-1', socket: sock, nullBytes: 16 << 20 });
    await first.start();
    try {
      assert.equal(fs.statSync(sock).mode & 0o777, 0o600, 'the socket is mode 0600');
      const r2 = await exec(process.execPath, args(sock), { timeoutMs: 30_000 });
      assertOneLineRefusal(r2, 'a live socket');
      assert.ok(fs.statSync(sock).isSocket(), 'the first daemon keeps its socket');
    } finally {
      await first.stop();
    }
    assert.ok(!fs.existsSync(sock), 'a clean stop removes the socket');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
