// `npm run bench:net [-- --seconds N] [--rounds N] [--rr N]`: boots the test VM once and measures, between two
// network namespaces of one guest, TCP stream throughput, TCP request/response latency (1-byte round trips) and
// ping through our VDUSE NIC <-> TAP (vduse net, virtio_vdpa + virtio_net) next to a veth pair (the kernel's own
// path). Rounds alternate the two paths (default 5 rounds of a 10 s stream each). Prints medians with their
// spread (min..max over the rounds) and writes bench/results/net-<time>.{json,md} and net-latest.{json,md}.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { runGuestScript, writeResults } from './guest-run.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(name);
  return i < 0 ? dflt : argv[i + 1];
};
const seconds = opt('--seconds', '10');
const rounds = opt('--rounds', '5');
const rr = opt('--rr', '2000');
if (Number(rounds) < 1 || Number(seconds) <= 0) {
  console.error('bench:net: --rounds must be at least 1 and --seconds positive');
  process.exit(2);
}
const { code, result: r } = await runGuestScript({
  root: ROOT,
  script: 'bench/vm/net-guest.mjs',
  args: ['--seconds', seconds, '--rounds', rounds, '--rr', rr],
  timeoutSec: 1800,
  tag: 'net',
});

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const n = (x, d = 0) =>
  x === null || x === undefined
    ? '-'
    : x.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });
const stat = (rows, key, d) => {
  const xs = rows.map((x) => x[key]).filter((x) => typeof x === 'number');
  if (xs.length === 0) return '-';
  return `${n(median(xs), d)} (${n(Math.min(...xs), d)}..${n(Math.max(...xs), d)})`;
};
const paths = [...new Set(r.results.map((x) => x.path))];
const summary = paths.map((p) => {
  const rows = r.results.filter((x) => x.path === p);
  return {
    path: p,
    rounds: rows.length,
    gbitps: median(rows.map((x) => x.gbitps)),
    rrMedianUs: median(rows.map((x) => x.rrMedianUs)),
    pingAvgUs: median(rows.map((x) => x.pingAvgUs ?? NaN)),
    line: `| ${p} | ${rows.length} | ${stat(rows, 'gbitps', 2)} | ${stat(rows, 'rrMedianUs', 0)} | ${stat(rows, 'rrP99Us', 0)} | ${stat(rows, 'pingAvgUs', 0)} |`,
  };
});
const lines = [
  `Guest: Linux ${r.kernel}, ${r.node}, ${r.cpus} vCPU(s); ${r.rounds} alternating rounds; TCP stream ${r.seconds} s per round; TCP RR ${r.rrCount} 1-byte round trips; ping 50 x 20 ms.`,
  '',
  '| path | rounds | TCP stream Gbit/s | TCP RR median µs | TCP RR p99 µs | ping avg µs |',
  '|---|---:|---:|---:|---:|---:|',
  ...summary.map((s) => s.line),
  '',
  'Each cell: the median over the rounds (min..max). Both paths connect two network namespaces of the same guest',
  'with the sender and receiver in node (test/e2e/net-peer.ts); the VDUSE path goes guest stack -> virtio_net ->',
  'our daemon (one event-loop thread) -> TAP -> guest stack, with checksum/TSO offloads through the vnet header.',
];
if (r.daemonStats)
  lines.push('', `Daemon counters at the end: ${r.daemonStats.slice(r.daemonStats.indexOf('stats: ') + 7)}`);
const md = lines.join('\n') + '\n';
process.stdout.write('\n' + md);
writeResults(
  ROOT,
  'net',
  {
    ...r,
    summary: summary.map((s) => Object.fromEntries(Object.entries(s).filter(([k]) => k !== 'line'))),
  },
  md,
);
process.exit(code);
