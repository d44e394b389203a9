#!/usr/bin/env node
// npm run bench:vm -- [options]: boots the test VM once and runs fio in it against the project's vduse-blk
// daemon and its peers (qemu-storage-daemon's vduse-blk export; the kernel's NBD client), alternately, then
// writes bench/results/vm-<time>.{json,md,svg} and vm-latest.{json,md,svg}. See docs/performance.md.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { CASES, FRESH_TARGET, FRESH_WORKLOADS, QUICK_WORKLOADS, WORKLOADS, targetOf } from './workloads.mjs';
import { commitOf } from './commit.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
const RESULTS = path.join(ROOT, 'bench/results');

const USAGE = `Usage: npm run bench:vm -- [options]

Boots the test VM (npm run vm) once per accelerator and runs fio (libaio, direct, time based) inside it: the
project's vduse-blk device against qemu-storage-daemon's vduse-blk export (null and tmpfs-file backends), over
NBD to one nbdkit memory export against the kernel's NBD client, and, on one image of a one-node Ceph cluster in
the guest (case rbd), against qemu-storage-daemon's rbd driver. Both daemons run with their defaults.
Contenders run alternately, round by round; rows on fresh daemons restart both contenders every round.

Options (environment variable in brackets):
  --quick              smoke run: 1 round of 2 s, 4 workloads, 1 fresh row, multi-threaded TCG only
  --runtime S          seconds per fio run (default 6) [VDUSE_BENCH_RUNTIME]
  --fresh LIST         workloads also measured on freshly started daemons, no warm-up or ramp (default
                       randread-4k-qd1,randread-4k-qd32; "" for none) [VDUSE_BENCH_FRESH]
  --fresh-runtime S    seconds of each fresh run, from the daemon's start (default 10)
  --ramp S             fio ramp time in seconds (default 1) [VDUSE_BENCH_RAMP]
  --warmup S           unrecorded warm-up per contender and case, 3 fio jobs of S seconds (default 4)
  --rounds N           rounds per workload, at least 1 (default 5) [VDUSE_BENCH_ROUNDS]
  --cases LIST         comma list of ${CASES.map((c) => c.id).join(',')} [VDUSE_BENCH_CASES]
  --workloads LIST     comma list of workload ids (default all) [VDUSE_BENCH_WORKLOADS]
  --queues N           queues of every device (default 2) [VDUSE_BENCH_QUEUES]
  --queue-size N       queue size of every device (default 256)
  --dist DIR           build directory holding the compiled project (default dist) [VDUSE_BENCH_DIST]
  --profile            run our daemon with node --cpu-prof; profiles land in bench/results/profiles/
  --node-args "ARGS"   extra node options for our daemon
  --daemon-args "ARGS" extra \`vduse blk\` options for our daemon (default none: the daemon's defaults)
                       [VDUSE_BENCH_DAEMON_ARGS]
  --baseline-dist DIR  A/B mode: compare the build in --dist with the build in DIR (same backends; DIR may be
                       the same build, to compare daemon options)
  --baseline-daemon-args "ARGS"  extra \`vduse blk\` options for the baseline daemon in A/B mode (default:
                       the same as --daemon-args)
  --report FILE        only (re)write the report from a raw results file
  --update-docs        also put the table into docs/performance.md and README.md, the chart into
                       docs/performance-vm.svg
  --timeout S          time limit of the VM run (default: estimated from the plan)
  --accel A            QEMU accelerators, one VM boot each: both (default), single (tcg,thread=single: both
                       vCPUs and so guest and daemon share one host thread, the model of a busy host), multi
                       (tcg,thread=multi: a host thread per vCPU), or a QEMU -accel string [VDUSE_BENCH_ACCEL]
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
    daemonArgs: env.VDUSE_BENCH_DAEMON_ARGS ?? '',
    fresh: env.VDUSE_BENCH_FRESH,
    freshRuntime: '10',
    baselineDaemonArgs: null,
    baselineDist: null,
    report: null,
    updateDocs: false,
    timeout: null,
    accel: env.VDUSE_BENCH_ACCEL,
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
      case '--fresh':
        o.fresh = val();
        break;
      case '--fresh-runtime':
        o.freshRuntime = val();
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
  o.rounds = Number(o.rounds ?? (o.quick ? 1 : 5));
  o.freshRuntime = Number(o.freshRuntime);
  o.fresh = (o.fresh ?? (o.quick ? 'randread-4k-qd1' : FRESH_WORKLOADS.join(','))).split(',').filter(Boolean);
  o.accels = accelList(o.accel ?? (o.quick ? 'multi' : 'both'));
  o.warmup = Number(o.warmup ?? (o.quick ? 2 : 4));
  o.cases = (o.cases ?? CASES.map((c) => c.id).join(',')).split(',').filter(Boolean);
  o.workloads = (o.workloads ?? (o.quick ? QUICK_WORKLOADS : WORKLOADS.map((w) => w.id)).join(','))
    .split(',')
    .filter(Boolean);
  for (const c of o.cases) if (!CASES.some((x) => x.id === c)) throw new Error(`unknown case ${c}`);
  for (const w of [...o.workloads, ...o.fresh])
    if (!WORKLOADS.some((x) => x.id === w)) throw new Error(`unknown workload ${w}`);
  for (const [k, v] of [
    ['runtime', o.runtime],
    ['rounds', o.rounds],
    ['fresh-runtime', o.freshRuntime],
  ]) {
    if (!Number.isFinite(v) || v < 1) throw new Error(`--${k} must be a number >= 1`);
  }
  if (!Number.isFinite(o.ramp) || o.ramp < 0) throw new Error('--ramp must be a number >= 0');
  if (!Number.isFinite(o.warmup) || o.warmup < 0) throw new Error('--warmup must be a number >= 0');
  return o;
}

const ACCELS = { single: 'tcg,thread=single', multi: 'tcg,thread=multi' };

/** --accel: both | single | multi | a QEMU -accel string. */
export function accelList(value) {
  if (value === 'both') return [ACCELS.single, ACCELS.multi];
  if (ACCELS[value]) return [ACCELS[value]];
  if (!/^[a-z]+(,[a-z-]+=[a-z0-9-]+)*$/.test(value))
    throw new Error(`--accel: ${value} is not an accelerator`);
  return [value];
}

/** Short name of an accelerator for the table ('single TCG'). */
export function accelName(accel) {
  const m = /^tcg,thread=(single|multi)$/.exec(accel ?? '');
  return m ? `${m[1]} TCG` : (accel ?? 'tcg');
}

// --------------------------------------------------------------------------------------------------- report

const median = (xs) => {
  const s = [...xs].filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/**
 * A report's input: one raw guest result per accelerator. Older raw files (one guest result, `cases` at the top)
 * are read as a report of the one accelerator they name.
 */
export function normalize(raw) {
  if (Array.isArray(raw.accels)) return raw;
  return {
    format: 2,
    startedAt: raw.startedAt,
    finishedAt: raw.finishedAt,
    commit: raw.commit ?? 'unknown',
    accels: [{ accel: raw.conditions?.accel ?? 'tcg,thread=single', raw }],
  };
}

const phaseOf = (run) => run.phase ?? 'warm';

/** Medians of one contender pair over the rounds of one workload and phase; null when nothing ran. */
function statsOf(runs, peerId, big) {
  const mine = runs.filter((r) => r.contender === 'project');
  const peer = runs.filter((r) => r.contender === peerId);
  if (mine.length === 0 && peer.length === 0) return null;
  const ratios = [];
  for (const m of mine) {
    const p = peer.find((x) => x.round === m.round);
    if (p && p.iops > 0) ratios.push(m.iops / p.iops);
  }
  const value = (r) => (big ? r.bwBytes / 1e6 : r.iops);
  return {
    project: median(mine.map(value)),
    peerValue: median(peer.map(value)),
    projectIops: median(mine.map((r) => r.iops)),
    projectLatUs: median(mine.map((r) => r.latMeanUs)),
    peerLatUs: median(peer.map((r) => r.latMeanUs)),
    projectCpuPerKio: median(mine.map((r) => (r.daemonCpuS / Math.max(1, r.ios)) * 1e6)),
    peerCpuPerKio: median(peer.map((r) => (r.daemonCpuS / Math.max(1, r.ios)) * 1e6)),
    guestBusyProject: median(mine.map((r) => r.guestBusy)),
    guestBusyPeer: median(peer.map((r) => r.guestBusy)),
    ratios,
    ratio: median(ratios),
    min: ratios.length ? Math.min(...ratios) : NaN,
    max: ratios.length ? Math.max(...ratios) : NaN,
  };
}

/**
 * Rows: per case, workload and phase (warm, then the fresh-daemon row of the same workload), for every
 * accelerator the medians of each contender, the per-round ratios project/peer with their spread, and for a
 * fresh row our fresh IOPS over our warm IOPS (its target).
 */
export function summarize(input) {
  const report = normalize(input);
  const accels = report.accels.map((a) => a.accel);
  const rows = [];
  for (const meta of CASES) {
    const perAccel = report.accels.map((a) => a.raw.cases.find((c) => c.id === meta.id) ?? null);
    const present = perAccel.filter(Boolean);
    if (present.length === 0) continue;
    const peerId = present[0].peer ?? meta.peer;
    const baselineOf = report.accels.find((a) => a.raw.conditions?.baseline)?.raw.conditions.baseline;
    for (const w of WORKLOADS) {
      for (const phase of ['warm', 'fresh']) {
        const big = w.bs !== '4k';
        const byAccel = {};
        let any = false;
        perAccel.forEach((c, i) => {
          const runs = c ? c.runs.filter((r) => r.workload === w.id && phaseOf(r) === phase) : [];
          const st = statsOf(runs, peerId, big);
          if (st !== null && phase === 'fresh') {
            const warm = statsOf(
              c.runs.filter((r) => r.workload === w.id && phaseOf(r) === 'warm'),
              peerId,
              big,
            );
            st.freshOfWarm = warm ? st.projectIops / warm.projectIops : NaN;
          }
          byAccel[accels[i]] = st;
          if (st !== null) any = true;
        });
        if (!any) continue;
        const target = phase === 'fresh' ? FRESH_TARGET : peerId === 'baseline' ? 1 : targetOf(meta.id, w.id);
        const checked = Object.values(byAccel)
          .filter(Boolean)
          .map((st) => (phase === 'fresh' ? st.freshOfWarm : st.ratio));
        rows.push({
          case: meta.id,
          caseTitle: meta.title,
          peer: peerId,
          peerLabel: peerId === 'baseline' ? `baseline ${path.basename(baselineOf ?? '')}` : meta.peerLabel,
          workload: w.id,
          workloadTitle: phase === 'fresh' ? `${w.title}, fresh daemon` : w.title,
          phase,
          unit: big ? 'MB/s' : 'IOPS',
          target,
          byAccel,
          met: checked.some((v) => !Number.isFinite(v)) ? null : checked.every((v) => v >= target),
        });
      }
    }
  }
  return rows;
}

const fmt = (v, digits = 0) =>
  Number.isFinite(v)
    ? v.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits })
    : '–';

const mark = (v, target) => (Number.isFinite(v) ? (v >= target ? ' ✓' : ' ✗') : '');

export function markdown(input, rows) {
  const report = normalize(input);
  const first = report.accels[0].raw;
  const c = first.conditions;
  const accels = report.accels.map((a) => a.accel);
  const lines = [];
  lines.push(
    `## vduse-ts vs qemu-storage-daemon and the kernel NBD client (${report.startedAt.slice(0, 16)}Z)`,
  );
  lines.push('');
  lines.push(
    `Commit ${report.commit}. Guest: Linux ${c.kernel}, ${c.cpus} vCPUs, ${c.memMiB} MiB, QEMU software emulation under ${accels.map((a) => `\`${a}\``).join(' and ')}${accels.length > 1 ? ' (one boot each)' : ''}; ${c.node}; ${c.qsd}; ${c.fio}; ${c.nbdkit}.`,
  );
  const fresh = c.fresh?.length
    ? ` Fresh-daemon rows: both contenders started anew every round, fio for the first ${c.freshRuntimeS} s (no warm-up, no ramp).`
    : '';
  lines.push(
    `Devices: ${c.queues} queue(s) of ${c.queueSize}, logical block size ${c.logicalBlockSize}, scheduler none; ${c.daemonArgs?.length ? `ours run with \`${c.daemonArgs.join(' ')}\`` : 'both daemons run with their defaults'}. fio libaio, direct=1, time based ${c.runtimeS} s (+${c.rampS} s ramp), ${c.rounds} round(s), contenders alternating; warm rows reuse the devices after an unrecorded warm-up of ${c.warmupS ?? 0} s x 3 jobs per contender.${fresh}`,
  );
  lines.push('');
  const head = ['backend', 'workload', 'peer', 'target'];
  const align = ['---', '---', '---', '---:'];
  for (const a of accels) {
    const n = accelName(a);
    head.push(
      `ours / peer (${n})`,
      `ratio ${n}: median [min–max]`,
      `daemon CPU µs per I/O, ours / peer (${n})`,
    );
    align.push('---:', '---:', '---:');
  }
  head.push('ours fresh ÷ warm');
  align.push('---:');
  lines.push(`| ${head.join(' | ')} |`);
  lines.push(`|${align.join('|')}|`);
  for (const r of rows) {
    const digits = r.unit === 'MB/s' ? 1 : 0;
    const cells = [r.caseTitle, r.workloadTitle, r.peerLabel, r.target.toFixed(1)];
    for (const a of accels) {
      const st = r.byAccel[a];
      if (!st) {
        cells.push('–', '–', '–');
        continue;
      }
      const ratioMark = r.phase === 'fresh' ? '' : mark(st.ratio, r.target);
      cells.push(
        `${fmt(st.project, digits)} / ${fmt(st.peerValue, digits)} ${r.unit}`,
        `**${fmt(st.ratio, 2)}**${ratioMark} [${fmt(st.min, 2)}–${fmt(st.max, 2)}]`,
        `${fmt(st.projectCpuPerKio, 1)} / ${fmt(st.peerCpuPerKio, 1)}`,
      );
    }
    cells.push(
      r.phase === 'fresh'
        ? accels
            .map((a) => r.byAccel[a])
            .filter(Boolean)
            .map((st) => `${fmt(st.freshOfWarm, 2)}${mark(st.freshOfWarm, r.target)}`)
            .join(' / ')
        : '',
    );
    lines.push(`| ${cells.join(' | ')} |`);
  }
  for (const { accel, raw } of report.accels) {
    for (const e of raw.cases.filter((x) => x.error))
      lines.push('', `- ${accelName(accel)}: case ${e.id} failed: ${e.error}`);
  }
  lines.push('');
  lines.push(
    'Ratio = vduse-ts / peer (IOPS, or MB/s for 128K), per round, median over rounds, [lowest–highest round]; target checked on every accelerator. Fresh rows: target on our fresh IOPS over our warm IOPS (same accelerator; "fresh ÷ warm" in the order of the accelerators). Daemon CPU includes nbdkit in the NBD rows (the kernel client itself has no process).',
  );
  return lines.join('\n') + '\n';
}

const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** A horizontal bar chart of the ratios with a 1.0 reference line and each row's target. */
const PEER_NAMES = { qsd: 'qsd', 'kernel-nbd': 'kernel NBD', baseline: 'baseline' };

function rowLabel(r) {
  return `${r.caseTitle} vs ${PEER_NAMES[r.peer] ?? r.peer} · ${r.workloadTitle}`;
}

const ACCEL_COLORS = ['#1565c0', '#2e7d32', '#6a1b9a', '#00838f'];

/**
 * A horizontal bar chart of the median ratios, one bar per accelerator, with a 1.0 reference line and each warm
 * row's target; a bar below its row's target is drawn faded. Fresh rows show their ratio to the peer too.
 */
export function svgChart(input, rows) {
  const report = normalize(input);
  const accels = report.accels.map((a) => a.accel);
  const first = report.accels[0].raw.conditions;
  // Wide enough for the longest row label (about 6.6 px per character at 12 px; no text metrics in an SVG file).
  const labelW = Math.max(200, Math.ceil(Math.max(0, ...rows.map((r) => rowLabel(r).length)) * 6.6) + 20);
  const plotW = 440;
  const barH = 12;
  const rowH = accels.length * barH + 8;
  const top = 52;
  const bottom = 40;
  const finite = rows.flatMap((r) => accels.map((a) => r.byAccel[a]?.ratio)).filter(Number.isFinite);
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
    `<text x="12" y="38" fill="#555">${esc(`commit ${report.commit}; ${first.kernel}, ${first.cpus} vCPUs under QEMU ${accels.join(' and ')}; ${first.rounds} round(s) × ${first.runtimeS} s; ${report.startedAt.slice(0, 16)}Z`)}</text>`,
  );
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
    out.push(`<text x="${labelW - 8}" y="${y + rowH / 2 + 4}" text-anchor="end">${esc(rowLabel(r))}</text>`);
    accels.forEach((a, k) => {
      const st = r.byAccel[a];
      const by = y + 4 + k * barH;
      if (!st || !Number.isFinite(st.ratio)) {
        out.push(`<text x="${labelW + 4}" y="${by + barH - 2}" fill="#999">no result</text>`);
        return;
      }
      const below = r.phase === 'fresh' ? st.freshOfWarm < r.target : st.ratio < r.target;
      out.push(
        `<rect x="${labelW}" y="${by}" width="${Math.max(1, x(st.ratio) - labelW)}" height="${barH - 2}" fill="${ACCEL_COLORS[k % ACCEL_COLORS.length]}" fill-opacity="${below ? 0.4 : 1}" rx="2"/>`,
      );
      out.push(`<text x="${x(st.ratio) + 5}" y="${by + barH - 2}" fill="#222">${st.ratio.toFixed(2)}</text>`);
    });
    if (r.phase !== 'fresh') {
      const tx = x(r.target);
      out.push(
        `<line x1="${tx}" y1="${y + 2}" x2="${tx}" y2="${y + rowH - 2}" stroke="#c62828" stroke-width="2"/>`,
      );
    }
  });
  const ly = h - 10;
  let lx = 12;
  accels.forEach((a, k) => {
    out.push(
      `<rect x="${lx}" y="${ly - 9}" width="10" height="10" fill="${ACCEL_COLORS[k % ACCEL_COLORS.length]}"/>`,
    );
    out.push(`<text x="${lx + 14}" y="${ly}">${esc(accelName(a))}</text>`);
    lx += 24 + accelName(a).length * 7;
  });
  out.push(`<text x="${lx}" y="${ly}" fill="#555">faded: below target</text>`);
  lx += 130;
  out.push(`<line x1="${lx}" y1="${ly - 10}" x2="${lx}" y2="${ly + 1}" stroke="#c62828" stroke-width="2"/>`);
  out.push(`<text x="${lx + 6}" y="${ly}">target</text>`);
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

function writeReport(input, stamp, docs = false) {
  const raw = normalize(input);
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
  const startedAt = new Date().toISOString();
  const stamp = startedAt.replace(/[:.]/g, '-');
  const runs = o.cases.length * o.workloads.length * o.rounds * 2;
  const freshRuns = o.cases.length * o.fresh.length * o.rounds * 2;
  const estimate =
    runs * (o.runtime + o.ramp + 2.5) +
    freshRuns * (o.freshRuntime + 12) +
    o.cases.length * (40 + 6 * (o.warmup + 1)) +
    30;
  const timeout = Number(o.timeout ?? Math.ceil(estimate * 1.6 + 120));
  console.error(
    `bench:vm: ${o.accels.length} boot(s) (${o.accels.join('; ')}), each ${runs} fio runs of ${o.runtime}+${o.ramp} s and ${freshRuns} fresh-daemon runs of ${o.freshRuntime} s, about ${Math.ceil((o.accels.length * estimate) / 60)} min`,
  );
  const report = { format: 2, startedAt, commit: commitOf(ROOT), accels: [] };
  let worst = 0;
  for (const accel of o.accels) {
    const rawFile = path.join(RESULTS, `.vm-raw-${stamp}-${accel.replace(/[^a-z0-9]+/gi, '-')}.json`);
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
      ...(o.fresh.length ? ['--fresh', o.fresh.join(','), '--fresh-runtime', String(o.freshRuntime)] : []),
      ...(o.profile ? ['--profile'] : []),
      ...(o.nodeArgs ? ['--node-args', o.nodeArgs] : []),
      ...(o.daemonArgs ? ['--daemon-args', o.daemonArgs] : []),
      ...((o.baselineDaemonArgs ?? o.daemonArgs)
        ? ['--baseline-daemon-args', o.baselineDaemonArgs ?? o.daemonArgs]
        : []),
      ...(o.baselineDist ? ['--baseline-dist', path.resolve(ROOT, o.baselineDist)] : []),
    ];
    console.error(`bench:vm: booting the VM with -accel ${accel}`);
    const vm = spawn(
      process.execPath,
      [path.join(ROOT, 'scripts/vm/vm.mjs'), '--timeout', String(timeout), '--', 'node', ...guestArgs],
      { stdio: 'inherit', cwd: ROOT, env: { ...process.env, VDUSE_VM_ACCEL: accel } },
    );
    const code = await new Promise((resolve) => vm.on('exit', (c, s) => resolve(c ?? (s ? 128 : 1))));
    if (!fs.existsSync(rawFile)) {
      console.error(`bench:vm: the VM run under ${accel} ended (${code}) without results`);
      worst = worst || (code === 0 ? 1 : code);
      continue;
    }
    const raw = JSON.parse(fs.readFileSync(rawFile, 'utf8'));
    raw.conditions.accel = accel;
    report.accels.push({ accel, raw });
    fs.rmSync(rawFile, { force: true });
    if (code !== 0) {
      console.error(`bench:vm: the guest run under ${accel} exited ${code} (see the log above)`);
      worst = worst || code;
    }
  }
  report.finishedAt = new Date().toISOString();
  if (report.accels.length === 0) process.exit(worst || 1);
  writeReport(report, stamp, o.updateDocs && worst === 0);
  if (worst !== 0) {
    console.error('bench:vm: the report covers what finished' + (o.updateDocs ? '; docs not updated' : ''));
    process.exit(worst);
  }
}

await main();
