// `npm run bench:vhost-vdpa [-- --seconds N] [--backend SPEC]`: boots the test VM once and measures the latency
// of the VM path (vduse blk --driver vhost-vdpa, driven from userspace in the guest by the project's vhost-vdpa
// driver, as a VMM would) next to virtio-vdpa's (/dev/vdX with fio), 4 KiB random reads at QD1 and QD32 on the
// same daemon build and backend. Prints a table and writes bench/results/vhost-vdpa-<time>.{json,md} and
// vhost-vdpa-latest.{json,md}.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { runGuestScript, writeResults } from './guest-run.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(name);
  return i < 0 ? dflt : argv[i + 1];
};
const seconds = opt('--seconds', '4');
const backend = opt('--backend', 'null:1G');
const { code, result: r } = await runGuestScript({
  root: ROOT,
  script: 'bench/vm/vhost-vdpa-guest.mjs',
  args: ['--seconds', seconds, '--backend', backend],
  timeoutSec: 900,
  tag: 'vhost-vdpa',
});
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
writeResults(ROOT, 'vhost-vdpa', r, md);
process.exit(code);
