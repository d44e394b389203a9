/**
 * A machine without librbd: the rest of vduse-ts works and asking for rbd: says what is missing in one line.
 * Simulated by pointing the loader at a library that does not exist (VDUSE_TS_LIBRBD), in a child process.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const BACKENDS = fileURLToPath(new URL('../../../src/backends/index.js', import.meta.url));
const CLI = fileURLToPath(new URL('../../../src/cli/main.js', import.meta.url));

function node(args: string[], env: NodeJS.ProcessEnv) {
  return spawnSync(process.execPath, args, {
    env: { ...process.env, ...env },
    encoding: 'utf8',
    timeout: 30_000,
  });
}

test('without librbd: other backends open, rbd: is one line naming the library', () => {
  const script = `
    const { openBackend } = await import(${JSON.stringify(BACKENDS)});
    const nul = await openBackend('null:1M');
    const out = { nullSize: nul.size };
    try { await openBackend('rbd:rbd/img,mon=127.0.0.1:1'); out.opened = true; }
    catch (e) { out.name = e.constructor.name; out.code = e.code; out.message = e.message; }
    console.log(JSON.stringify(out));`;
  for (const env of [
    { VDUSE_TS_LIBRBD: '/nonexistent/librbd.so.1' },
    { VDUSE_TS_LIBRADOS: 'libnotrados.so.9' },
  ]) {
    const r = node(['--input-type=module', '-e', script], env);
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { nullSize: number; name?: string; code?: string; message?: string };
    assert.equal(out.nullSize, 1024 * 1024);
    assert.equal(out.name, 'RbdError');
    assert.equal(out.code, 'ERR_RBD_LIBRARY');
    assert.match(out.message!, /^rbd:rbd\/img: cannot load \S+ .*install Ceph's client libraries/);
    assert.ok(!out.message!.includes('\n'));
  }
});

test('without librbd: vduse blk --backend rbd:... exits with that one line', () => {
  const r = node([CLI, 'blk', '--name', 'rbdmissing0', '--backend', 'rbd:rbd/img'], {
    VDUSE_TS_LIBRBD: '/nonexistent/librbd.so.1',
  });
  assert.notEqual(r.status, 0);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0]!, /rbd:rbd\/img: cannot load \/nonexistent\/librbd\.so\.1 .*librbd1/);
});
