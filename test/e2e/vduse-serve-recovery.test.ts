// Crash recovery of `vduse serve` (issue 14 item 9): the devices of a config file with the recovery keys
// (state-dir, persist) are taken over by the next daemon after a SIGKILL, under fio --verify: no I/O error,
// the data verifies, no hung task. A clean stop with persist: true keeps the device for the next daemon;
// vduse del destroys it anyway.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import {
  TEST_TIMEOUT_MS,
  exec,
  lowerHungTaskThreshold,
  requirePrereqs,
  sleep,
  tempDir,
  useCleanup,
  vdpaDevExists,
  vduseDevExists,
  waitForBlockDevice,
  waitForVduseDevGone,
} from './lib/index.js';
import { PREREQS } from './vduse-daemon.js';
import { ServeDaemon } from './serve-daemon.js';

const NAME = 'e2e-srec';

test(
  'serve: SIGKILL and restart 3 times under fio verify, then a persist stop and take-over: no I/O error, no hung task',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, { ...PREREQS, commands: ['fio', 'dmesg'] })) return;
    const cleanup = useCleanup(t);
    lowerHungTaskThreshold(cleanup, 30);
    const dir = tempDir(cleanup, 'srec');
    const socket = path.join(dir, 'vduse.sock');
    const stateDir = path.join(dir, 'state');
    const config = path.join(dir, 'vduse.yaml');
    fs.writeFileSync(
      config,
      [
        `state-dir: ${stateDir}`,
        'devices:',
        `  - name: ${NAME}`,
        `    backend: file:${path.join(dir, 'disk.raw')},size=128M`,
        '    queues: 2',
        '    reconnect: auto',
        '    persist: true',
        '',
      ].join('\n'),
    );
    const daemons: ServeDaemon[] = [];
    const start = async (): Promise<ServeDaemon> => {
      const d = ServeDaemon.spawn(['--config', config, '--log-format', 'text'], socket, cleanup);
      daemons.push(d);
      await d.waitLog(/ready: 1 device/, 120_000);
      return d;
    };
    // whatever happens, leave no device behind: take it over and remove it
    cleanup.add(`remove ${NAME}`, async () => {
      for (const x of daemons) if (x.alive) await x.stop('SIGKILL');
      if (!vduseDevExists(NAME)) return;
      const last = await start();
      await last.cli(['del', NAME, '--force']);
      await last.stop();
    });

    let d = await start();
    assert.ok(
      fs.existsSync(path.join(stateDir, `${NAME}.state`)),
      'the state log is in the configured state-dir',
    );
    const dev = (await waitForBlockDevice(NAME)).path;
    const load = exec(
      'fio',
      [
        '--name=srec',
        `--filename=${dev}`,
        '--direct=1',
        '--ioengine=libaio',
        '--rw=randwrite',
        '--bsrange=4k-128k',
        '--size=48M',
        '--iodepth=16',
        '--numjobs=2',
        '--offset_increment=48M',
        '--verify=crc32c',
        '--verify_fatal=1',
        '--verify_state_save=0',
        '--do_verify=1',
        '--group_reporting',
      ],
      { timeoutMs: 8 * 60_000, cwd: os.tmpdir() },
    );
    let done = false;
    void load.then(() => (done = true));
    let kills = 0;
    while (kills < 3 && !done) {
      await sleep(300 + kills * 200);
      if (done) break;
      d.child.kill('SIGKILL');
      await d.exited;
      kills++;
      d = await start();
      assert.match(d.stderr, new RegExp(`reconnected to ${NAME}: status 0x`), 'the device was taken over');
    }
    // a clean stop with persist: the device stays (attached), the next daemon takes it over
    let persisted = false;
    if (!done) {
      const e = await d.stop('SIGTERM');
      assert.equal(e.code, 0, d.stderr);
      assert.ok(vduseDevExists(NAME) && vdpaDevExists(NAME), 'persist: the device is kept at a clean stop');
      d = await start();
      assert.match(d.stderr, new RegExp(`reconnected to ${NAME}`));
      persisted = true;
    }
    const r = await load;
    t.diagnostic(`${kills} SIGKILLs${persisted ? ' and a persist stop' : ''} under fio`);
    process.stderr.write(
      `serve recovery: ${kills} SIGKILLs${persisted ? ' and a persist stop' : ''} under fio\n`,
    );
    assert.equal(r.timedOut, false, 'fio finished');
    assert.equal(r.code, 0, `fio failed:\n${r.stdout}\n${r.stderr}`);
    assert.doesNotMatch(
      r.stdout + r.stderr,
      /verify: bad|crc32c: verify failed|Input\/output error|err=\s*[1-9]/,
    );
    assert.equal(kills, 3, `fio ended after ${kills} kills: make it longer`);
    assert.ok(persisted, 'fio ended before the persist stop: make it longer');
    const dmesg = await exec('dmesg');
    assert.doesNotMatch(dmesg.stdout, /blocked for more than/, 'a task was reported hung');

    // vduse del removes a persisting device for good; the state log goes with it
    await d.cliOk(['del', NAME]);
    await waitForVduseDevGone(NAME);
    assert.ok(!fs.existsSync(path.join(stateDir, `${NAME}.state`)), 'state log removed');
    const e = await d.stop('SIGTERM');
    assert.equal(e.code, 0, d.stderr);
  },
);
