#!/usr/bin/env node
// npm run bench:vm -- [options]: boots the test VM once and runs fio in it against the project's vduse-blk
// daemon and its peers (qemu-storage-daemon's vduse-blk export; the kernel's NBD client), alternately, then
// writes bench/results/vm-<time>.{json,md,svg} and vm-latest.{json,md,svg}. See docs/performance.md.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { CASES, QUICK_WORKLOADS, WORKLOADS, targetOf } from './workloads.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
const RESULTS = path.join(ROOT, 'bench/results');

const USAGE = `Usage: npm run bench:vm -- [options]

Boots the test VM once (npm run vm) and runs fio (libaio, direct, time based) inside it: the project's
vduse-blk device against qemu-storage-daemon's vduse-blk export (null and tmpfs-file backends) and, over NBD
to one nbdkit memory export, against the kernel's NBD client, and, on one image of a one-node Ceph cluster in
the guest (case rbd), against qemu-storage-daemon's rbd driver. Contenders run alternately, round by round.

Options (environment variable in brackets):
  --quick              smoke run: 1 round of 2 s, 4 workloads
  --runtime S          seconds per fio run (default 6) [VDUSE_BENCH_RUNTIME]
  --ramp S             fio ramp time in seconds (default 1) [VDUSE_BENCH_RAMP]
  --warmup S           unrecorded warm-up per contender and case, 3 fio jobs of S seconds (default 4)
  --rounds N           rounds per workload, at least 1 (default 3) [VDUSE_BENCH_ROUNDS]
  --cases LIST         comma list of ${CASES.map((c) => c.id).join(',')} [VDUSE_BENCH_CASES]
  --workloads LIST     comma list of workload ids (default all) [VDUSE_BENCH_WORKLOADS]
  --queues N           queues of every device (default 2) [VDUSE_BENCH_QUEUES]
  --queue-size N       queue size of every device (default 256)
  --dist DIR           build directory holding the compiled project (default dist) [VDUSE_BENCH_DIST]
  --profile            run our daemon with node --cpu-prof; profiles land in bench/results/profiles/
  --node-args "ARGS"   extra node options for our daemon
  --daemon-args "ARGS" extra \`vduse blk\` options for our daemon (default "--queue-threads 2": one thread per
                       queue, as recommended for a multi-queue device on a multi-core host; "" for none)
                       [VDUSE_BENCH_DAEMON_ARGS]
  --baseline-dist DIR  A/B mode: compare the build in --dist with the build in DIR (same backends; DIR may be
                       the same build, to compare daemon options)
  --baseline-daemon-args "ARGS"  extra \`vduse blk\` options for the baseline daemon in A/B mode (default:
                       the same as --daemon-args)
  --report FILE        only (re)write the report from a raw results file
  --update-docs        also put the table into docs/performance.md and README.md, the chart into
                       docs/performance-vm.svg
  --timeout S          time limit of the VM run (default: estimated from the plan)
  --accel A            QEMU accelerator (default tcg,thread=multi: one host thread per vCPU, as on hardware;
                       tcg,thread=single emulates both vCPUs on one host thread) [VDUSE_BENCH_ACCEL]
  -h, --help           this text

Workloads: ${WORKLOADS.map((w) => w.id).join(', ')}.`;

// ------------------------------------------------------------------------------------------------ arguments

function parseArgs(argv) {
  const env = process.env;
  const o = {
    quick: false,
    runtime: env.VDUSE_BENCH_RUNTIME,
    ramp: env.VDUSE_BENCH_RAMP,
    warmup: env.VDUSE_BENCH_WARMUP,
    rounds: env.VDUSE_BENCH_ROUNDS,
    cases: env.VDUSE_BENCH_CASES,
    workloads: env.VDUSE_BENCH_WORKLOADS,
    queues: env.VDUSE_BENCH_QUEUES ?? '2',
    queueSize: '256',
    dist: env.VDUSE_BENCH_DIST ?? 'dist',
    profile: false,
    nodeArgs: '',
    daemonArgs: env.VDUSE_BENCH_DAEMON_ARGS ?? '--queue-threads 2',
    baselineDaemonArgs: null,
    baselineDist: null,
    report: null,
    updateDocs: false,
    timeout: null,
    accel: env.VDUSE_BENCH_ACCEL ?? 'tcg,thread=multi',
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    switch (a) {
      case '--quick':
        o.quick = true;
        break;
      case '--runtime':
        o.runtime = val();
        break;
      case '--ramp':
        o.ramp = val();
        break;
      case '--warmup':
        o.warmup = val();
        break;
      case '--rounds':
        o.rounds = val();
        break;
      case '--cases':
        o.cases = val();
        break;
      case '--workloads':
        o.workloads = val();
        break;
      case '--queues':
        o.queues = val();
        break;
      case '--queue-size':
        o.queueSize = val();
        break;
      case '--dist':
        o.dist = val();
        break;
      case '--profile':
        o.profile = true;
        break;
      case '--node-args':
        o.nodeArgs = val();
        break;
      case '--daemon-args':
        o.daemonArgs = val();
        break;
      case '--baseline-daemon-args':
        o.baselineDaemonArgs = val();
        break;
      case '--baseline-dist':
        o.baselineDist = val();
        break;
      case '--update-docs':
        o.updateDocs = true;
        break;
      case '--report':
        o.report = val();
        break;
      case '--accel':
        o.accel = val();
        break;
      case '--timeout':
        o.timeout = val();
        break;
      case '-h':
      case '--help':
        console.log(USAGE);
        process.exit(0);
        break;
      default:
        throw new Error(`unknown option ${a} (see --help)`);
    }
  }
  o.runtime = Number(o.runtime ?? (o.quick ? 2 : 6));
  o.ramp = Number(o.ramp ?? (o.quick ? 0.5 : 1));
  o.rounds = Number(o.rounds ?? (o.quick ? 1 : 3));
  o.warmup = Number(o.warmup ?? (o.quick ? 2 : 4));
  o.cases = (o.cases ?? CASES.map((c) => c.id).join(',')).split(',').filter(Boolean);
  o.workloads = (o.workloads ?? (o.quick ? QUICK_WORKLOADS : WORKLOADS.map((w) => w.id)).join(','))
    .split(',')
    .filter(Boolean);
  for (const c of o.cases) if (!CASES.some((x) => x.id === c)) throw new Error(`unknown case ${c}`);
  for (const w of o.workloads)
    if (!WORKLOADS.some((x) => x.id === w)) throw new Error(`unknown workload ${w}`);
  for (const [k, v] of [
    ['runtime', o.runtime],
    ['rounds', o.rounds],
  ]) {
    if (!Number.isFinite(v) || v < 1) throw new Error(`--${k} must be a number >= 1`);
  }
  if (!Number.isFinite(o.ramp) || o.ramp < 0) throw new Error('--ramp must be a number >= 0');
  if (!Number.isFinite(o.warmup) || o.warmup < 0) throw new Error('--warmup must be a number >= 0');
  return o;
}

// --------------------------------------------------------------------------------------------------- report

const median = (xs) => {
  const s = [...xs].filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/** Rows: per case and workload, medians of each contender and the per-round ratios project/peer. */
export function summarize(raw) {
  const rows = [];
  for (const c of raw.cases) {
    const meta = CASES.find((x) => x.id === c.id);
    for (const w of WORKLOADS) {
      const runs = c.runs.filter((r) => r.workload === w.id);
      if (runs.length === 0) continue;
      const mine = runs.filter((r) => r.contender === 'project');
      const peerId = c.peer ?? meta.peer;
      const peer = runs.filter((r) => r.contender === peerId);
      const ratios = [];
      for (const m of mine) {
        const p = peer.find((x) => x.round === m.round);
        if (p && p.iops > 0) ratios.push(m.iops / p.iops);
      }
      const big = w.bs !== '4k';
      const target = targetOf(c.id, w.id);
      const ratio = median(ratios);
      rows.push({
        case: c.id,
        caseTitle: meta.title,
        peer: peerId,
        peerLabel:
          peerId === 'baseline' ? `baseline ${path.basename(raw.conditions.baseline ?? '')}` : meta.peerLabel,
        workload: w.id,
        workloadTitle: w.title,
        unit: big ? 'MB/s' : 'IOPS',
        project: big ? median(mine.map((r) => r.bwBytes / 1e6)) : median(mine.map((r) => r.iops)),
        peerValue: big ? median(peer.map((r) => r.bwBytes / 1e6)) : median(peer.map((r) => r.iops)),
        projectLatUs: median(mine.map((r) => r.latMeanUs)),
        peerLatUs: median(peer.map((r) => r.latMeanUs)),
        projectCpuPerKio: median(mine.map((r) => (r.daemonCpuS / Math.max(1, r.ios)) * 1e6)),
        peerCpuPerKio: median(peer.map((r) => (r.daemonCpuS / Math.max(1, r.ios)) * 1e6)),
        guestBusyProject: median(mine.map((r) => r.guestBusy)),
        guestBusyPeer: median(peer.map((r) => r.guestBusy)),
        ratios,
        ratio,
        target: peerId === 'baseline' ? 1 : target,
        met: Number.isFinite(ratio) ? ratio >= (peerId === 'baseline' ? 1 : target) : null,
      });
    }
  }
  return rows;
}

const fmt = (v, digits = 0) =>
  Number.isFinite(v)
    ? v.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits })
    : '–';

export function markdown(raw, rows) {
  const c = raw.conditions;
  const lines = [];
  lines.push(`## vduse-ts vs qemu-storage-daemon and the kernel NBD client (${raw.startedAt.slice(0, 16)}Z)`);
  lines.push('');
  lines.push(
    `Guest: Linux ${c.kernel}, ${c.cpus} vCPUs (QEMU ${c.accel ?? 'tcg,thread=single'}, software emulation), ${c.memMiB} MiB; ${c.node}; ${c.qsd}; ${c.fio}; ${c.nbdkit}.`,
  );
  lines.push(
    `Devices: ${c.queues} queue(s) of ${c.queueSize}, logical block size ${c.logicalBlockSize}, scheduler none${c.daemonArgs?.length ? `; ours run with \`${c.daemonArgs.join(' ')}\`` : ''}. fio libaio, direct=1, time based ${c.runtimeS} s (+${c.rampS} s ramp), ${c.rounds} round(s), contenders alternating; devices reused within a case after an unrecorded warm-up of ${c.warmupS ?? 0} s x 3 jobs per contender.`,
  );
  lines.push('');
  lines.push(
    '| backend | workload | vduse-ts | peer | peer value | ratio (median) | per round | target | lat µs (ours / peer) | daemon CPU µs per I/O (ours / peer) |',
  );
  lines.push('|---|---|---:|---|---:|---:|---|---:|---:|---:|');
  for (const r of rows) {
    const mark = r.met === null ? '' : r.met ? ' ✓' : ' ✗';
    lines.push(
      `| ${r.caseTitle} | ${r.workloadTitle} | ${fmt(r.project, r.unit === 'MB/s' ? 1 : 0)} ${r.unit} | ${r.peerLabel} | ${fmt(r.peerValue, r.unit === 'MB/s' ? 1 : 0)} ${r.unit} | **${fmt(r.ratio, 2)}**${mark} | ${r.ratios.map((x) => x.toFixed(2)).join(' ')} | ${r.target.toFixed(1)} | ${fmt(r.projectLatUs)} / ${fmt(r.peerLatUs)} | ${fmt(r.projectCpuPerKio, 1)} / ${fmt(r.peerCpuPerKio, 1)} |`,
    );
  }
  const errors = raw.cases.filter((x) => x.error);
  if (errors.length > 0) {
    lines.push('');
    for (const e of errors) lines.push(`- case ${e.id} failed: ${e.error}`);
  }
  lines.push('');
  lines.push(
    'Ratio = vduse-ts / peer (IOPS, or MB/s for 128K), per round, median over rounds. Daemon CPU includes nbdkit in the NBD rows (the kernel client itself has no process).',
  );
  return lines.join('\n') + '\n';
}

const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** A horizontal bar chart of the ratios with a 1.0 reference line and each row's target. */
const PEER_NAMES = { qsd: 'qsd', 'kernel-nbd': 'kernel NBD', baseline: 'baseline' };

function rowLabel(r) {
  return `${r.caseTitle} vs ${PEER_NAMES[r.peer] ?? r.peer} · ${r.workloadTitle}`;
}

export function svgChart(raw, rows) {
  // Wide enough for the longest row label (about 6.6 px per character at 12 px; no text metrics in an SVG file).
  const labelW = Math.max(200, Math.ceil(Math.max(0, ...rows.map((r) => rowLabel(r).length)) * 6.6) + 20);
  const plotW = 440;
  const rowH = 22;
  const top = 52;
  const bottom = 40;
  const finite = rows.map((r) => r.ratio).filter(Number.isFinite);
  const maxV = Math.max(2, Math.ceil(Math.max(...finite, 1.3) * 2) / 2);
  const x = (v) => Math.round((labelW + (Math.min(v, maxV) / maxV) * plotW) * 10) / 10;
  const h = top + rows.length * rowH + bottom;
  const w = labelW + plotW + 70;
  const out = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif" font-size="12">`,
  );
  out.push(`<rect width="${w}" height="${h}" fill="#ffffff"/>`);
  out.push(
    `<text x="12" y="20" font-size="14" font-weight="600">vduse-ts / peer, median ratio (higher is better)</text>`,
  );
  out.push(
    `<text x="12" y="38" fill="#555">${esc(`${raw.conditions.kernel}, ${raw.conditions.cpus} vCPUs under QEMU ${raw.conditions.accel ?? 'TCG'}; ${raw.conditions.rounds} round(s) × ${raw.conditions.runtimeS} s; ${raw.startedAt.slice(0, 16)}Z`)}</text>`,
  );
  // grid
  for (let v = 0; v <= maxV + 1e-9; v += 0.5) {
    const gx = x(v);
    out.push(
      `<line x1="${gx}" y1="${top - 4}" x2="${gx}" y2="${top + rows.length * rowH}" stroke="${v === 1 ? '#222' : '#e3e3e3'}" stroke-width="${v === 1 ? 1.5 : 1}"${v === 1 ? ' stroke-dasharray="4 3"' : ''}/>`,
    );
    out.push(
      `<text x="${gx}" y="${top + rows.length * rowH + 16}" text-anchor="middle" fill="#555">${v.toFixed(1)}</text>`,
    );
  }
  let prevCase = null;
  rows.forEach((r, i) => {
    const y = top + i * rowH;
    if (r.case !== prevCase && i > 0)
      out.push(`<line x1="8" y1="${y}" x2="${w - 8}" y2="${y}" stroke="#bbb" stroke-width="0.5"/>`);
    prevCase = r.case;
    out.push(`<text x="${labelW - 8}" y="${y + 15}" text-anchor="end">${esc(rowLabel(r))}</text>`);
    if (Number.isFinite(r.ratio)) {
      const color = r.met ? '#2e7d32' : '#e07b00';
      out.push(
        `<rect x="${labelW}" y="${y + 4}" width="${Math.max(1, x(r.ratio) - labelW)}" height="${rowH - 8}" fill="${color}" rx="2"/>`,
      );
      out.push(`<text x="${x(r.ratio) + 5}" y="${y + 15}" fill="#222">${r.ratio.toFixed(2)}</text>`);
      const tx = x(r.target);
      out.push(
        `<line x1="${tx}" y1="${y + 2}" x2="${tx}" y2="${y + rowH - 2}" stroke="#c62828" stroke-width="2"/>`,
      );
    } else {
      out.push(`<text x="${labelW + 4}" y="${y + 15}" fill="#999">no result</text>`);
    }
  });
  const ly = h - 10;
  out.push(`<rect x="12" y="${ly - 9}" width="10" height="10" fill="#2e7d32"/>`);
  out.push(`<text x="26" y="${ly}">meets target</text>`);
  out.push(`<rect x="112" y="${ly - 9}" width="10" height="10" fill="#e07b00"/>`);
  out.push(`<text x="126" y="${ly}">below target</text>`);
  out.push(`<line x1="216" y1="${ly - 10}" x2="216" y2="${ly + 1}" stroke="#c62828" stroke-width="2"/>`);
  out.push(`<text x="222" y="${ly}">target</text>`);
  out.push(`<line x1="276" y1="${ly - 4}" x2="296" y2="${ly - 4}" stroke="#222" stroke-dasharray="4 3"/>`);
  out.push(`<text x="300" y="${ly}">1.0 = parity</text>`);
  out.push('</svg>');
  return out.join('\n') + '\n';
}

const DOCS_BEGIN = '<!-- bench:vm table begin -->';
const DOCS_END = '<!-- bench:vm table end -->';

/** Replace the table between the markers of `file` (relative to the package root) with `body`. */
function replaceTable(file, body) {
  const doc = path.join(ROOT, file);
  const text = fs.readFileSync(doc, 'utf8');
  const a = text.indexOf(DOCS_BEGIN);
  const b = text.indexOf(DOCS_END);
  if (a < 0 || b < a) throw new Error(`${file} has no ${DOCS_BEGIN} ... ${DOCS_END} markers`);
  fs.writeFileSync(doc, `${text.slice(0, a + DOCS_BEGIN.length)}\n${body}${text.slice(b)}`);
}

/** Put the table into docs/performance.md and README.md (between their markers) and write the chart. */
function updateDocs(md, svg) {
  const body = md.replace(/^## .*\n\n/, '');
  replaceTable('docs/performance.md', body);
  replaceTable('README.md', body);
  fs.writeFileSync(path.join(ROOT, 'docs/performance-vm.svg'), svg);
  console.log('updated docs/performance.md, README.md and docs/performance-vm.svg');
}

function writeReport(raw, stamp, docs = false) {
  const rows = summarize(raw);
  const json = { ...raw, summary: rows };
  const md = markdown(raw, rows);
  const svg = svgChart(raw, rows);
  fs.mkdirSync(RESULTS, { recursive: true });
  for (const name of [`vm-${stamp}`, 'vm-latest']) {
    fs.writeFileSync(path.join(RESULTS, `${name}.json`), JSON.stringify(json, null, 2) + '\n');
    fs.writeFileSync(path.join(RESULTS, `${name}.md`), md);
    fs.writeFileSync(path.join(RESULTS, `${name}.svg`), svg);
  }
  process.stdout.write(md);
  console.log(`\nwritten: bench/results/vm-${stamp}.{json,md,svg} and vm-latest.{json,md,svg}`);
  if (docs) updateDocs(md, svg);
  return rows;
}

// ----------------------------------------------------------------------------------------------------- main

async function main() {
  let o;
  try {
    o = parseArgs(process.argv.slice(2));
  } catch (e) {
    console.error(`bench:vm: ${e.message}`);
    process.exit(2);
  }
  if (o.report) {
    const raw = JSON.parse(fs.readFileSync(o.report, 'utf8'));
    writeReport(raw, raw.startedAt.replace(/[:.]/g, '-'), o.updateDocs);
    return;
  }
  const dist = path.resolve(ROOT, o.dist);
  if (
    !fs.existsSync(path.join(dist, 'src/cli/main.js')) ||
    !fs.existsSync(path.join(dist, 'test/e2e/lib/index.js'))
  ) {
    console.error(
      `bench:vm: ${path.relative(ROOT, dist) || '.'} has no build of the project; run npm run build first`,
    );
    process.exit(2);
  }
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const rawFile = path.join(RESULTS, `.vm-raw-${stamp}.json`);
  const runs = o.cases.length * o.workloads.length * o.rounds * 2;
  const estimate = runs * (o.runtime + o.ramp + 2.5) + o.cases.length * (40 + 6 * (o.warmup + 1)) + 30;
  const timeout = Number(o.timeout ?? Math.ceil(estimate * 1.6 + 120));
  console.error(
    `bench:vm: ${runs} fio runs of ${o.runtime}+${o.ramp} s, about ${Math.ceil(estimate / 60)} min (limit ${Math.ceil(timeout / 60)} min)`,
  );
  const guestArgs = [
    path.join(HERE, 'guest.mjs'),
    '--root',
    ROOT,
    '--dist',
    dist,
    '--out',
    rawFile,
    '--runtime',
    String(o.runtime),
    '--ramp',
    String(o.ramp),
    '--warmup',
    String(o.warmup),
    '--rounds',
    String(o.rounds),
    '--queues',
    String(o.queues),
    '--queue-size',
    String(o.queueSize),
    '--cases',
    o.cases.join(','),
    '--workloads',
    o.workloads.join(','),
    ...(o.profile ? ['--profile'] : []),
    ...(o.nodeArgs ? ['--node-args', o.nodeArgs] : []),
    ...(o.daemonArgs ? ['--daemon-args', o.daemonArgs] : []),
    ...((o.baselineDaemonArgs ?? o.daemonArgs)
      ? ['--baseline-daemon-args', o.baselineDaemonArgs ?? o.daemonArgs]
      : []),
    ...(o.baselineDist ? ['--baseline-dist', path.resolve(ROOT, o.baselineDist)] : []),
  ];
  const vm = spawn(
    process.execPath,
    [path.join(ROOT, 'scripts/vm/vm.mjs'), '--timeout', String(timeout), '--', 'node', ...guestArgs],
    { stdio: 'inherit', cwd: ROOT, env: { ...process.env, VDUSE_VM_ACCEL: o.accel } },
  );
  const code = await new Promise((resolve) => vm.on('exit', (c, s) => resolve(c ?? (s ? 128 : 1))));
  if (!fs.existsSync(rawFile)) {
    console.error(`bench:vm: the VM run ended (${code}) without results`);
    process.exit(code === 0 ? 1 : code);
  }
  const raw = JSON.parse(fs.readFileSync(rawFile, 'utf8'));
  raw.conditions.accel = o.accel;
  writeReport(raw, stamp, o.updateDocs);
  fs.rmSync(rawFile, { force: true });
  if (code !== 0) {
    console.error(
      `bench:vm: the guest run exited ${code} (see the log above); the report covers what finished`,
    );
    process.exit(code);
  }
}

await main();
