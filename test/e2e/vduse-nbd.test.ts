// `vduse blk` with the NBD backend on the real kernel: nbdkit (file plugin over a file on the guest's tmpfs)
// serves the storage on the guest's loopback, over TCP and over a Unix socket. The device must survive nbdkit
// being SIGKILLed and restarted on the same address while the guest does I/O: no error reaches the guest, the
// data is intact (ext4 fsck, fio crc32c verify) and the kernel reports no hung task.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { test } from 'node:test';

import {
  STEP_TIMEOUT_MS,
  TEST_TIMEOUT_MS,
  assertSameData,
  exec,
  execOk,
  requirePrereqs,
  sleep,
  useCleanup,
  vdpaDevExists,
  vduseDevExists,
  waitFor,
  type Cleanup,
  tempDir,
  lowerHungTaskThreshold,
} from './lib/index.js';
import { PREREQS, VduseDaemon } from './vduse-daemon.js';
import { assertQuietKernel, uptimeSeconds } from './lib/kernel-log.js';

const MiB = 1 << 20;
const DISK_BYTES = 128 * MiB;
const KILLS = 3;
/** The guest's hung-task threshold during these tests: I/O stuck this long in D state gets reported. */
const HUNG_TASK_SECS = 10;

/** A TCP port on 127.0.0.1 that nothing listens on right now. */
async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const port = (server.address() as net.AddressInfo).port;
  await new Promise((r) => server.close(r));
  return port;
}

type Listen = { port: number } | { socket: string };

/**
 * nbdkit's file plugin over `file`, in the foreground, listening on `listen`. It can be SIGKILLed and
 * started again on the same address; the data stays in the file.
 */
class Nbdkit {
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  output = '';
  starts = 0;

  constructor(
    readonly file: string,
    readonly listen: Listen,
    private readonly pidFile: string,
  ) {}

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Starts nbdkit and waits until it listens (nbdkit writes its PID file once it listens). */
  async start(): Promise<void> {
    assert.equal(this.running, false, 'nbdkit is already running');
    fs.rmSync(this.pidFile, { force: true });
    // a SIGKILLed nbdkit leaves its socket file behind, and nbdkit does not bind over an existing one
    if ('socket' in this.listen) fs.rmSync(this.listen.socket, { force: true });
    const where =
      'socket' in this.listen
        ? ['-U', this.listen.socket]
        : ['-i', '127.0.0.1', '-p', String(this.listen.port)];
    const args = ['-f', '--exit-with-parent', '-P', this.pidFile, ...where, 'file', `file=${this.file}`];
    const child = spawn('nbdkit', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    this.starts++;
    const collect = (d: Buffer): void => {
      if (this.output.length < MiB) this.output += d.toString();
    };
    child.stdout!.on('data', collect);
    child.stderr!.on('data', collect);
    this.exited = new Promise((resolve) => {
      child.once('error', (e) => {
        this.output += `spawn error: ${e.message}\n`;
        resolve();
      });
      child.once('exit', () => resolve());
    });
    await waitFor(`nbdkit ${args.join(' ')} to listen`, () => {
      if (child.exitCode !== null || child.signalCode !== null)
        throw new Error(`nbdkit exited (${child.exitCode ?? child.signalCode}): ${this.output.trim()}`);
      try {
        return /^\d+\s*$/.test(fs.readFileSync(this.pidFile, 'utf8'));
      } catch {
        return false;
      }
    });
  }

  /** SIGKILL (or `sig`) and wait for the exit. */
  async kill(sig: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (!this.running) return;
    this.child!.kill(sig);
    await Promise.race([this.exited, sleep(STEP_TIMEOUT_MS, undefined, { ref: false })]);
    assert.equal(this.running, false, `nbdkit did not exit on ${sig}`);
  }
}

/** Seconds since boot, as the kernel log stamps lines. */
interface Setup {
  nbdkit: Nbdkit;
  daemon: VduseDaemon;
  spec: string;
  name: string;
  dir: string;
}

const transports = [
  // multi-conn: nbdkit's file plugin allows it, so both connections are lost and re-established on each kill
  { tag: 'tcp', connections: 2 },
  { tag: 'unix', connections: 1 },
] as const;

async function setUp(
  cleanup: Cleanup,
  tag: string,
  kind: string,
  connections: number,
  extraArgs: string[] = [],
): Promise<Setup> {
  const dir = tempDir(cleanup, `nbd-${tag}-${kind}`);
  const file = path.join(dir, 'disk.raw');
  fs.writeFileSync(file, '');
  fs.truncateSync(file, DISK_BYTES);
  const listen: Listen = tag === 'unix' ? { socket: path.join(dir, 'nbd.sock') } : { port: await freePort() };
  const nbdkit = new Nbdkit(file, listen, path.join(dir, 'nbdkit.pid'));
  cleanup.add('stop nbdkit', () => nbdkit.kill('SIGTERM'));
  await nbdkit.start();
  const uri = 'socket' in listen ? `nbd+unix:///?socket=${listen.socket}` : `nbd://127.0.0.1:${listen.port}/`;
  const spec = `${uri},connections=${connections},timeout=30s,retry=60s,queue=64`;
  const name = `e2e-nbd-${tag}-${kind}`;
  const daemon = await VduseDaemon.start(['--name', name, '--backend', spec, ...extraArgs], cleanup);
  assert.match(daemon.path, /^\/dev\/vd[a-z]+$/);
  return { nbdkit, daemon, spec, name, dir };
}

/** SIGKILL nbdkit, wait `downMs`, start it again on the same address, wait for the daemon to reconnect. */
async function killAndRestart(s: Setup, downMs: number): Promise<void> {
  const before = reconnects(s.daemon.stderr);
  await s.nbdkit.kill('SIGKILL');
  await sleep(downMs);
  await s.nbdkit.start();
  await waitFor('the daemon to reconnect to nbdkit', () => reconnects(s.daemon.stderr) > before);
}

function reconnects(stderr: string): number {
  return (stderr.match(/reconnected after \d+ ms/g) ?? []).length;
}

/** Stop the daemon with SIGINT and check it exited 0 and removed its devices. */
async function stopClean(s: Setup): Promise<string> {
  const e = await s.daemon.stop();
  assert.equal(e.code, 0, `daemon exit status; stderr:\n${e.stderr}`);
  assert.equal(vdpaDevExists(s.name), false, 'vdpa device removed');
  assert.equal(vduseDevExists(s.name), false, 'VDUSE device destroyed');
  return e.stderr;
}

for (const { tag, connections } of transports) {
  test(
    `nbd over ${tag}: ext4 (mkfs, files, sync across an nbdkit SIGKILL + restart, fsck -f clean, remount)`,
    { timeout: TEST_TIMEOUT_MS },
    async (t) => {
      if (
        !requirePrereqs(t, {
          ...PREREQS,
          commands: ['nbdkit', 'mkfs.ext4', 'e2fsck', 'mount', 'umount', 'sync', 'dmesg'],
        })
      )
        return;
      const cleanup = useCleanup(t);
      const since = uptimeSeconds();
      const hung = lowerHungTaskThreshold(cleanup, HUNG_TASK_SECS);
      const s = await setUp(cleanup, tag, 'ext4', connections, ['--queues', '2']);
      const dev = s.daemon.path;
      await execOk('mkfs.ext4', ['-q', '-F', dev]);
      const mnt = tempDir(cleanup, `nbd-${tag}-mnt`);
      await execOk('mount', [dev, mnt]);
      let mounted = true;
      cleanup.add('umount', async () => {
        if (mounted) await exec('umount', [mnt]);
      });
      const data = crypto.randomBytes(5 * MiB + 321);
      for (let i = 0; i < 4; i++) fs.writeFileSync(path.join(mnt, `f${i}`), data);
      fs.mkdirSync(path.join(mnt, 'dir'));
      fs.writeFileSync(path.join(mnt, 'dir', 'small'), 'hello over nbd\n');
      // the write-back of those files runs while nbdkit is dead: sync must wait for it to come back
      const sync = exec('sync', []);
      await sleep(200);
      await killAndRestart(s, 1500);
      const synced = await sync;
      assert.equal(synced.code, 0, `sync: ${synced.stderr}`);
      for (let i = 4; i < 6; i++) fs.writeFileSync(path.join(mnt, `f${i}`), data);
      await execOk('umount', [mnt]);
      mounted = false;
      const fsck = await exec('e2fsck', ['-f', '-n', dev]);
      assert.equal(fsck.code, 0, `fsck:\n${fsck.stdout}\n${fsck.stderr}`);
      await execOk('mount', [dev, mnt]);
      mounted = true;
      for (let i = 0; i < 6; i++)
        assertSameData(data, fs.readFileSync(path.join(mnt, `f${i}`)), `file f${i}`);
      assert.equal(fs.readFileSync(path.join(mnt, 'dir', 'small'), 'utf8'), 'hello over nbd\n');
      await execOk('umount', [mnt]);
      mounted = false;
      assert.match(
        s.daemon.stderr,
        /connection( \d+\/\d+)? lost \(/,
        'the daemon logged the lost connection',
      );
      assert.ok(reconnects(s.daemon.stderr) >= 1, `reconnect logged:\n${s.daemon.stderr}`);
      assert.doesNotMatch(s.daemon.stderr, /failing .* with EIO|request failed/);
      const stderr = await stopClean(s);
      assert.doesNotMatch(stderr, /error:/, 'no error in the daemon log');
      await assertQuietKernel(since, path.basename(dev));
      // what nbdkit kept in its file is the same file system
      const fsckFile = await exec('e2fsck', ['-f', '-n', s.nbdkit.file]);
      assert.equal(fsckFile.code, 0, fsckFile.stdout);
      t.diagnostic(`hung-task detector ${hung ? `on (${HUNG_TASK_SECS} s)` : 'not in this kernel'}`);
    },
  );

  test(
    `nbd over ${tag}: fio O_DIRECT verify (crc32c) passes while nbdkit is SIGKILLed and restarted ${KILLS} times`,
    { timeout: TEST_TIMEOUT_MS },
    async (t) => {
      if (!requirePrereqs(t, { ...PREREQS, commands: ['nbdkit', 'fio', 'dmesg'] })) return;
      const cleanup = useCleanup(t);
      const since = uptimeSeconds();
      lowerHungTaskThreshold(cleanup, HUNG_TASK_SECS);
      const s = await setUp(cleanup, tag, 'fio', connections, ['--queues', '2']);
      const dev = s.daemon.path;
      const fioArgs = [
        '--name=nbd-verify',
        `--filename=${dev}`,
        '--direct=1',
        '--ioengine=libaio',
        '--rw=randwrite',
        '--bs=4k',
        '--bsrange=512-64k',
        '--size=16M',
        '--offset_increment=16M',
        '--iodepth=16',
        '--numjobs=2',
        '--verify=crc32c',
        '--verify_fatal=1',
        '--verify_state_save=0',
        '--do_verify=1',
        '--group_reporting',
      ];
      // fio runs back to back (each one writes, then reads back and verifies) until the kills are done
      let killing = true;
      const runs: { ms: number; out: string }[] = [];
      const fioLoop = (async () => {
        do {
          const r = await exec('fio', fioArgs, { timeoutMs: STEP_TIMEOUT_MS * 3 });
          const out = `${r.stdout}\n${r.stderr}`;
          assert.equal(
            r.code,
            0,
            `fio run ${runs.length + 1} failed (${r.timedOut ? 'timed out' : r.code}):\n${out}`,
          );
          runs.push({ ms: r.durationMs, out });
        } while (killing);
      })();
      fioLoop.catch(() => {}); // awaited below; keep an early failure from being unhandled meanwhile
      const downs: number[] = [];
      try {
        for (let k = 0; k < KILLS; k++) {
          await sleep(1500 + Math.floor(Math.random() * 1500)); // let I/O flow first
          const down = 1000 + Math.floor(Math.random() * 2000);
          downs.push(down);
          await killAndRestart(s, down);
        }
      } finally {
        killing = false;
      }
      await fioLoop;
      for (const [i, r] of runs.entries()) {
        assert.match(r.out, /err= 0/, `fio run ${i + 1} reports err= 0`);
        assert.doesNotMatch(r.out, /err=\s*[1-9]|verify: bad|crc32c: verify failed|Input\/output error/);
      }
      assert.equal(s.nbdkit.starts, KILLS + 1);
      const stderr = s.daemon.stderr;
      assert.ok(reconnects(stderr) >= KILLS, `${KILLS} reconnects (one per connection) logged:\n${stderr}`);
      const resent = [...stderr.matchAll(/reconnected after \d+ ms; (\d+) request\(s\) to resend/g)].map(
        (m) => Number(m[1]),
      );
      assert.ok(
        resent.some((n) => n > 0),
        `at least one reconnect had guest requests waiting (the kills hit I/O in flight):\n${stderr}`,
      );
      assert.doesNotMatch(stderr, /failing .* with EIO|request failed|refusing it/);
      assert.doesNotMatch(stderr, /lost \(nbds?:\/\//, 'the cause does not repeat the target');
      const final = await stopClean(s);
      assert.doesNotMatch(final, /error:/, 'no error in the daemon log');
      await assertQuietKernel(since, path.basename(dev));
      t.diagnostic(
        `${runs.length} fio run(s) (${runs.map((r) => (r.ms / 1000).toFixed(1)).join(', ')} s); ` +
          `nbdkit down ${downs.join(', ')} ms; requests resent per reconnect: ${resent.join(', ')}`,
      );
      const sample = stderr.split('\n').filter((l) => /lost \(|reconnected after/.test(l));
      t.diagnostic(`daemon log, first kill:\n${sample.slice(0, 2 * connections).join('\n')}`);
    },
  );
}
