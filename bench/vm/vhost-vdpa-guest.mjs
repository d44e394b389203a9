// Guest side of `npm run bench:vhost-vdpa` (run by bench/vm/vhost-vdpa.mjs inside the test VM, as root): the
// latency of the VM path (vduse blk --driver vhost-vdpa, driven by the userspace vhost-vdpa driver of
// src/testing/vhost-vdpa in this process: 4 KiB reads at QD1 and QD32, completions on the call eventfd) next
// to the same daemon and backend through virtio-vdpa (/dev/vdX, fio libaio direct=1 randread 4k, same depths).
// Writes the results as JSON to --out.
import { spawn } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const CLI = path.join(ROOT, 'dist/src/cli/main.js');
const { startVmPath } = await import(path.join(ROOT, 'dist/test/e2e/lib/vhost-vdpa.js'));
const { withTimeout } = await import(path.join(ROOT, 'dist/src/testing/vhost-vdpa/index.js'));

const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(name);
  return i < 0 ? dflt : argv[i + 1];
};
const seconds = Number(opt('--seconds', '4'));
const out = opt('--out', '/tmp/vhost-vdpa-bench.json');
const backend = opt('--backend', 'null:1G');
const SIZE = 1 << 30;

function startDaemon(name, driver) {
  const child = spawn(
    process.execPath,
    [CLI, 'blk', '--name', name, '--backend', backend, '--driver', driver, '--state-dir', '/tmp/bench-state'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
  const exited = new Promise((r) => child.on('exit', r));
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const tick = setInterval(() => {
      if (stdout.includes('\n')) {
        clearInterval(tick);
        resolve({ path: stdout.split('\n')[0], stop: () => (child.kill('SIGINT'), exited), child });
      } else if (child.exitCode !== null || Date.now() - t0 > 60_000) {
        clearInterval(tick);
        reject(new Error(`vduse blk (${driver}) did not start: ${stderr}`));
      }
    }, 25);
  });
}

function summarize(lat, ms) {
  lat.sort((a, b) => a - b);
  const at = (q) => lat[Math.min(lat.length - 1, Math.floor(q * lat.length))] ?? 0;
  return {
    iops: (lat.length * 1000) / ms,
    latMeanUs: lat.reduce((s, x) => s + x, 0) / Math.max(1, lat.length),
    latP50Us: at(0.5),
    latP99Us: at(0.99),
    ios: lat.length,
  };
}

/** `depth` 4 KiB random reads kept in flight for `secs` seconds; per-request latency in µs. */
async function driverRun(blk, depth, secs) {
  const lat = [];
  const end = performance.now() + secs * 1000;
  let running = true;
  const one = async () => {
    while (running) {
      const sector = Math.floor(Math.random() * (SIZE / 4096)) * 8;
      const t = performance.now();
      await withTimeout(blk.read(sector, 4096), 30_000, 'bench read');
      lat.push((performance.now() - t) * 1000);
      if (performance.now() >= end) running = false;
    }
  };
  const t0 = performance.now();
  await Promise.all(Array.from({ length: depth }, one));
  return summarize(lat, performance.now() - t0);
}

function fio(dev, depth, secs) {
  return new Promise((resolve, reject) => {
    const args = [
      '--name=lat',
      `--filename=${dev}`,
      '--direct=1',
      '--ioengine=libaio',
      '--rw=randread',
      '--bs=4k',
      `--iodepth=${depth}`,
      '--time_based',
      `--runtime=${secs}`,
      '--norandommap',
      '--randrepeat=0',
      '--output-format=json',
    ];
    const c = spawn('fio', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let o = '';
    c.stdout.setEncoding('utf8').on('data', (d) => (o += d));
    c.on('exit', (code) => {
      if (code !== 0) return reject(new Error(`fio exited ${code}`));
      const r = JSON.parse(o.slice(o.indexOf('{'))).jobs[0].read;
      resolve({
        iops: r.iops,
        latMeanUs: r.clat_ns.mean / 1000,
        latP50Us: (r.clat_ns.percentile?.['50.000000'] ?? 0) / 1000,
        latP99Us: (r.clat_ns.percentile?.['99.000000'] ?? 0) / 1000,
        ios: r.total_ios,
      });
    });
  });
}

const rows = [];
{
  const d = await startDaemon('bench-vh', 'vhost-vdpa');
  const p = startVmPath(d.path, { queues: 1, queueSize: 128, eventIdx: true, memory: 16 << 20 });
  await driverRun(p.blk, 1, 1); // warm-up
  for (const depth of [1, 32])
    rows.push({ path: 'vhost-vdpa (userspace driver)', depth, ...(await driverRun(p.blk, depth, seconds)) });
  p.blk.close();
  p.drv.close();
  await d.stop();
}
{
  const d = await startDaemon('bench-vv', 'virtio-vdpa');
  await fio(d.path, 1, 1); // warm-up
  for (const depth of [1, 32])
    rows.push({ path: 'virtio-vdpa (/dev/vdX, fio)', depth, ...(await fio(d.path, depth, seconds)) });
  await d.stop();
}
const kernel = fs.readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim();
fs.writeFileSync(out, JSON.stringify({ kernel, node: process.version, backend, seconds, rows }, null, 2));
