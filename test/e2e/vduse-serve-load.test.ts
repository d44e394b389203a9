// The management plane of `vduse serve` under data-path load (issue 14 item 5): 16 file-backed 2-queue devices
// under fio on all of them, while a 17th device is added and removed 10 times. A client that is already
// connected times a device.list round trip every 250 ms; the figures are printed, and the slowest must stay
// under 1 s. fio must see no error (nothing is lost), the daemon stops cleanly.
//
// VDUSE_E2E_LOAD_QUEUE_THREADS=N sets queue-threads on every device (to compare with the daemon's default);
// VDUSE_E2E_LOAD_CYCLES=N runs N add/remove cycles instead of 10.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import {
  TEST_TIMEOUT_MS,
  requirePrereqs,
  sleep,
  useCleanup,
  waitFor,
  waitForVduseDevGone,
  tempDir,
} from './lib/index.js';
import { PREREQS } from './vduse-daemon.js';
import { RpcConnection, ServeDaemon } from './serve-daemon.js';

const DEVICES = 16;
const CYCLES = Number(process.env.VDUSE_E2E_LOAD_CYCLES ?? '10');

interface Listed {
  name: string;
  state: string;
  path: string;
}

function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

test(
  `serve under load: device.list answered within 1 s while ${DEVICES} devices run fio and another is added and removed ${CYCLES} times`,
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, { ...PREREQS, commands: ['fio'] })) return;
    const cleanup = useCleanup(t);
    const dir = tempDir(cleanup, 'load');
    const socket = path.join(dir, 'vduse.sock');
    const threads = process.env.VDUSE_E2E_LOAD_QUEUE_THREADS;
    const names = Array.from({ length: DEVICES }, (_, i) => `e2e-load-${String(i).padStart(2, '0')}`);
    const config = {
      devices: names.map((name) => ({
        name,
        backend: `file:${path.join(dir, `${name}.raw`)},size=16M`,
        queues: 2,
        ...(threads !== undefined ? { 'queue-threads': Number(threads) } : {}),
      })),
    };
    const configFile = path.join(dir, 'vduse.json');
    fs.writeFileSync(configFile, JSON.stringify(config));
    const t0 = Date.now();
    const d = ServeDaemon.spawn(['--config', configFile, '--log-format', 'text'], socket, cleanup);
    await d.waitLog(/ready: 16 device\(s\)/, 240_000);
    const startS = (Date.now() - t0) / 1000;
    const list = await RpcConnection.connect(socket);
    const control = await RpcConnection.connect(socket);
    cleanup.add('close the clients', () => {
      list.close();
      control.close();
    });
    const devices = (await list.call('device.list')) as Listed[];
    assert.equal(devices.length, DEVICES);
    assert.ok(devices.every((x) => x.state === 'running' && x.path.startsWith('/dev/vd')));

    // fio on every device, until told to stop (SIGINT makes it finish and report)
    const args = [
      '--direct=1',
      '--ioengine=libaio',
      '--rw=randrw',
      '--bs=4k',
      '--iodepth=16',
      '--numjobs=2',
      '--time_based',
      '--runtime=600',
      '--size=16M',
      '--group_reporting',
      '--output-format=json',
      ...devices.flatMap((x) => [`--name=${x.name}`, `--filename=${x.path}`]),
    ];
    const fio = spawn('fio', args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: os.tmpdir() });
    let fioOut = '';
    let fioErr = '';
    fio.stdout.setEncoding('utf8').on('data', (s: string) => (fioOut += s));
    fio.stderr.setEncoding('utf8').on('data', (s: string) => (fioErr += s));
    const fioDone = new Promise<number | null>((resolve) => fio.on('close', (code) => resolve(code)));
    let fioRunning = true;
    void fioDone.then(() => (fioRunning = false));
    cleanup.add('stop fio', async () => {
      if (fioRunning) fio.kill('SIGKILL');
      await fioDone;
    });
    await sleep(5000); // fio up to speed

    // device.list every 250 ms on the connection that stays open
    const rtts: number[] = [];
    let polling = true;
    const poller = (async () => {
      while (polling) {
        const { result, ms } = await list.timed('device.list');
        rtts.push(ms);
        assert.ok((result as Listed[]).length >= DEVICES);
        await sleep(250);
      }
    })();

    const cycles: number[] = [];
    const extra = 'e2e-load-x';
    const extraFile = path.join(dir, `${extra}.raw`);
    for (let i = 0; i < CYCLES; i++) {
      const c0 = performance.now();
      const info = (await control.call('device.add', {
        name: extra,
        backend: `file:${extraFile},size=16M`,
        queues: 2,
      })) as Listed;
      assert.match(info.path, /^\/dev\/vd/);
      await control.call('device.remove', { name: extra });
      cycles.push(performance.now() - c0);
      assert.ok(fioRunning, `fio stopped during cycle ${i}: ${fioErr}`);
    }
    polling = false;
    await poller;
    assert.ok(fioRunning, 'fio ran the whole time');
    fio.kill('SIGINT');
    await fioDone;

    const sorted = [...rtts].sort((a, b) => a - b);
    const cs = [...cycles].sort((a, b) => a - b);
    const line =
      `serve load (${DEVICES} devices x 2 queues, queue-threads ${threads ?? 'default'}): ` +
      `start ${startS.toFixed(1)} s; device.list round trip over ${rtts.length} calls: ` +
      `p50 ${quantile(sorted, 0.5).toFixed(1)} ms, p99 ${quantile(sorted, 0.99).toFixed(1)} ms, ` +
      `max ${sorted[sorted.length - 1]!.toFixed(1)} ms; add+remove cycle: ` +
      `median ${(quantile(cs, 0.5) / 1000).toFixed(2)} s, max ${(cs[cs.length - 1]! / 1000).toFixed(2)} s`;
    t.diagnostic(line);
    process.stderr.write(`${line}\n`);

    // stopped by SIGINT: its exit status says so; the I/O errors are in the report
    assert.doesNotMatch(fioErr, /Input\/output error|err=\s*[1-9]/, 'fio saw no I/O error');
    const report = JSON.parse(fioOut.slice(fioOut.indexOf('{'))) as {
      jobs: { error: number; read: { total_ios: number }; write: { total_ios: number } }[];
    };
    const job = report.jobs[0]!;
    assert.equal(job.error, 0, 'fio saw no I/O error');
    assert.ok(job.read.total_ios + job.write.total_ios > 0, 'fio did I/O');
    process.stderr.write(
      `serve load: fio did ${job.read.total_ios + job.write.total_ios} I/Os on ${DEVICES} devices\n`,
    );
    const slowest = sorted[sorted.length - 1]!;
    assert.ok(slowest < 1000, `the slowest device.list round trip took ${slowest.toFixed(0)} ms`);

    list.close();
    control.close();
    const e = await d.stop('SIGTERM', 180_000);
    assert.equal(e.code, 0, d.stderr);
    await waitFor('the devices to go away', () => names.every((n) => !fs.existsSync(`/dev/vduse/${n}`)), {
      timeoutMs: 60_000,
    });
    await waitForVduseDevGone(extra);
  },
);
