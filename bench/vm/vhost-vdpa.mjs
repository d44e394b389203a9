// `npm run bench:vhost-vdpa [-- --seconds N] [--backend SPEC]`: boots the test VM once and measures the latency
// of the VM path (vduse blk --driver vhost-vdpa, driven from userspace in the guest by the project's vhost-vdpa
// driver, as a VMM would) next to virtio-vdpa's (/dev/vdX with fio), 4 KiB random reads at QD1 and QD32 on the
// same daemon build and backend. Prints a table and writes bench/results/vhost-vdpa-<time>.{json,md} and
// vhost-vdpa-latest.{json,md}.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(name);
  return i < 0 ? dflt : argv[i + 1];
};
const seconds = opt('--seconds', '4');
const backend = opt('--backend', 'null:1G');
const raw = path.join(ROOT, 'bench/results', `.vhost-vdpa-raw-${process.pid}.json`);
fs.mkdirSync(path.dirname(raw), { recursive: true });

const code = await new Promise((resolve) => {
  const vm = spawn(
    process.execPath,
    [
      path.join(ROOT, 'scripts/vm/vm.mjs'),
      '--timeout',
      '900',
      '--',
      'node',
      path.join(ROOT, 'bench/vm/vhost-vdpa-guest.mjs'),
      '--seconds',
      seconds,
      '--backend',
      backend,
      '--out',
      raw,
    ],
    { stdio: 'inherit', cwd: ROOT },
  );
  vm.on('exit', (c, s) => resolve(c ?? (s ? 128 : 1)));
});
if (!fs.existsSync(raw)) {
  console.error(`bench:vhost-vdpa: the VM run ended (${code}) without results`);
  process.exit(code === 0 ? 1 : code);
}
const r = JSON.parse(fs.readFileSync(raw, 'utf8'));
fs.rmSync(raw, { force: true });
const n = (x, d = 0) => x.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });
const lines = [
  `Guest: Linux ${r.kernel}, ${r.node}; backend ${r.backend}; 4 KiB random reads, ${r.seconds} s per row, 1 queue, same daemon build.`,
  '',
  '| path | QD | IOPS | lat mean µs | p50 µs | p99 µs |',
  '|---|---:|---:|---:|---:|---:|',
  ...r.rows.map(
    (x) =>
      `| ${x.path} | ${x.depth} | ${n(x.iops)} | ${n(x.latMeanUs, 1)} | ${n(x.latP50Us, 1)} | ${n(x.latP99Us, 1)} |`,
  ),
  '',
  'vhost-vdpa rows: the driver is a Node.js process in the guest (the role of a VMM), completions on the call',
  'eventfd; virtio-vdpa rows: the kernel virtio_blk driver under fio (libaio, direct=1). Same VDUSE daemon and backend.',
];
const md = lines.join('\n') + '\n';
process.stdout.write('\n' + md);
const stamp = new Date().toISOString().replace(/[:.]/g, '-');
const dir = path.join(ROOT, 'bench/results');
for (const base of [`vhost-vdpa-${stamp}`, 'vhost-vdpa-latest']) {
  fs.writeFileSync(path.join(dir, `${base}.json`), JSON.stringify(r, null, 2) + '\n');
  fs.writeFileSync(path.join(dir, `${base}.md`), md);
}
process.exit(code);
