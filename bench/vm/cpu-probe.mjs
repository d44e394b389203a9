#!/usr/bin/env node
// node bench/vm/cpu-probe.mjs [options]: where the daemon's CPU goes at one fio workload (default 4 KiB randread
// QD1; --workload ID for one of bench/vm/workloads.mjs) on the null backend (--backend file: a tmpfs file;
// --backend rbd: an image on a one-node Ceph cluster in the guest), ours vs qemu-storage-daemon, both with their
// defaults. Boots the test VM once per accelerator and runs
// bench/vm/cpu-probe-guest.mjs in it (per-thread CPU and context switches, perf stat, strace -c, a short strace
// -tt log, perf record of the daemon and of the whole guest). Writes bench/results/cpu-probe-<time>.{json,md}
// and cpu-probe-latest.{json,md}. Serialize with other VM runs: flock /tmp/vduse-vm.lock node bench/vm/cpu-probe.mjs
//
// Options: --accel single|multi|both (default single), --runtime S per probe (default 6), --warmup S (default 3),
//          --probes plain,pstat,strace,perf, --contenders project,qsd, --dist DIR, --workload ID (or --iodepth N,
//          --rw RW, --bs BS), --backend null|file|rbd,
//          --node-args "ARGS" (default --perf-basic-prof), --daemon-args "ARGS", --keep (perf.data, perf maps,
//          the guest's kallsyms
//          under bench/results/cpu-probe-data/), --report FILE (only re-render a raw JSON). A/B in one boot:
//          --contenders project,variant,qsd with --variant-args "ARGS" (vduse blk options), --variant-node-args
//          "ARGS", --variant-env "K=V ...", --variant-dist DIR (another build's dist/) for the second daemon of
//          ours (variant2, ... likewise).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { threadStats } from './guest-lib.mjs';
import { writeResults } from './guest-run.mjs';
import { commitOf } from './commit.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(name);
  return i < 0 ? dflt : argv[i + 1];
};
const ACCELS = { single: 'tcg,thread=single', multi: 'tcg,thread=multi' };

const n = (x, d = 0) =>
  Number.isFinite(x)
    ? x.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d })
    : '–';

/** Group a probe's per-thread deltas by thread name (V8 workers etc. share a name). */
function byComm(threads) {
  const g = {};
  for (const t of Object.values(threads ?? {})) {
    const k = t.comm;
    g[k] ??= { comm: k, n: 0, utime: 0, stime: 0, runS: 0, waitS: 0, vcsw: 0, nvcsw: 0, slices: 0 };
    const x = g[k];
    x.n++;
    for (const f of ['utime', 'stime', 'runS', 'waitS', 'vcsw', 'nvcsw', 'slices']) x[f] += t[f];
  }
  return Object.values(g).sort((a, b) => b.runS + b.utime + b.stime - (a.runS + a.utime + a.stime));
}

function contenderMd(c, accel, host) {
  const L = [];
  if (c.error) return [`### ${c.id} (${accel}): failed: ${c.error}`, ''];
  L.push(`### ${c.label} (${accel}), pid ${c.pid}, ${c.device}`);
  L.push('');
  L.push(`\`${c.cmdline}\``);
  L.push('');
  if (c.limits) {
    L.push(
      `Queue limits and features (guest sysfs): ${Object.entries(c.limits)
        .map(([k, v]) => `${k} ${v}`)
        .join(', ')}.`,
      '',
    );
  }
  const pl = c.probes.plain;
  if (pl?.segments) L.push(`Data segments per request over the plain run: ${segmentsText(pl.segments)}.`, '');
  if (pl?.iovas) {
    const v = pl.iovas;
    L.push(
      v.error
        ? `Bounce IOVAs: not traced (${v.error}).`
        : `Bounce IOVAs (vduse_dev_map_page, ${n(v.maps)} traced): commonest differences between consecutive ones on a CPU: ${v.diffs
            .map(([d, k]) => `${d} × ${n(k)} (${n((k / Math.max(v.pairs, 1)) * 100, 1)} %)`)
            .join(', ')}.`,
      '',
    );
  }
  if (pl?.block) {
    const b = pl.block;
    const sectors = b.reads > 0 ? b.readSectors / b.reads : b.writes > 0 ? b.writeSectors / b.writes : 0;
    L.push(
      `Block stat over the plain run: ${n(b.reads)} reads (${n(b.readMerges)} merged), ${n(b.writes)} writes (${n(b.writeMerges)} merged), ${n(sectors, 1)} sectors per request.`,
      '',
    );
  }
  const p = c.probes.plain;
  if (p) {
    const ios = p.fio.ios;
    const per = (s) => (s / ios) * 1e6;
    const th = byComm(p.threads);
    const cpu = th.reduce((s, t) => s + t.utime + t.stime, 0);
    const run = th.reduce((s, t) => s + t.runS, 0);
    L.push(
      `Plain run: ${n(p.fio.iops)} IOPS, ${n(ios)} I/Os in ${n(p.wallS, 2)} s, mean latency ${n(p.fio.latMeanUs)} µs; daemon utime+stime ${n(cpu, 2)} s = **${n(per(cpu))} µs/IO**, schedstat run time ${n(run, 2)} s = ${n(per(run))} µs/IO; fio usr/sys ${n(p.fio.usrCpu, 1)} / ${n(p.fio.sysCpu, 1)} %.`,
    );
    L.push('');
    L.push(
      '| thread (count) | utime µs/IO | stime µs/IO | run (schedstat) µs/IO | runqueue wait µs/IO | vol. csw /IO | invol. csw /IO |',
    );
    L.push('|---|---:|---:|---:|---:|---:|---:|');
    for (const t of th) {
      if (t.utime + t.stime + t.runS === 0 && t.vcsw + t.nvcsw === 0) continue;
      L.push(
        `| ${t.comm} (${t.n}) | ${n(per(t.utime), 1)} | ${n(per(t.stime), 1)} | ${n(per(t.runS), 1)} | ${n(per(t.waitS), 1)} | ${n(t.vcsw / ios, 3)} | ${n(t.nvcsw / ios, 3)} |`,
      );
    }
    L.push('');
    const g = p.guest;
    const cpus = Object.keys(g).filter((k) => k !== 'cpu');
    L.push(`Guest /proc/stat over the run (s): `);
    L.push('');
    L.push('| cpu | user | system | irq | softirq | idle | steal |');
    L.push('|---|---:|---:|---:|---:|---:|---:|');
    for (const k of ['cpu', ...cpus]) {
      const x = g[k];
      L.push(
        `| ${k} | ${n(x.user + x.nice, 2)} | ${n(x.system, 2)} | ${n(x.irq, 2)} | ${n(x.softirq, 2)} | ${n(x.idle + x.iowait, 2)} | ${n(x.steal, 2)} |`,
      );
    }
    L.push('');
    L.push(
      `Busiest tasks of the guest (schedstat run time, µs/IO): ${p.top
        .slice(0, 10)
        .map((t) => `${t.comm} ${n(per(t.runS), 0)}`)
        .join(', ')}.`,
    );
    L.push('');
    const irqs = Object.entries(p.interrupts)
      .sort((a, b) => b[1] - a[1])
      .slice(0, 8)
      .map(([k, v]) => `${k}: ${n(v / ios, 2)}`);
    L.push(`Interrupts per I/O: ${irqs.join('; ')}.`);
    L.push('');
  }
  const hp = c.probes.host;
  if (hp && host) {
    const ios = hp.fio.ios;
    const gcpu = Object.values(hp.threads).reduce((s2, t) => s2 + t.utime + t.stime, 0);
    L.push(
      `Host side (same workload again, ${n(hp.fio.iops)} IOPS, ${n(ios)} I/Os; guest-accounted daemon CPU ${n((gcpu / ios) * 1e6)} µs/IO): QEMU pid ${host.qemuPid}, ${n(host.wallS, 2)} s window; host CPU per guest I/O by QEMU thread: ${host.threads
        .slice(0, 6)
        .map(
          (t) =>
            `${t.comm} ${n(((t.utime + t.stime) / ios) * 1e6)} µs (${n(((t.utime + t.stime) / host.wallS) * 100)} %)`,
        )
        .join(', ')}.`,
    );
    L.push('');
    L.push('Host perf record of QEMU (cpu-clock), by dso,sym:', '', '```', host.bySym ?? '', '```', '');
    L.push('By thread:', '', '```', (host.byThread ?? '').split('\n').slice(0, 12).join('\n'), '```', '');
  }
  const ps = c.probes.pstat;
  if (ps) {
    L.push(`perf stat --per-thread (${n(ps.fio.iops)} IOPS, ${n(ps.fio.ios)} I/Os):`);
    L.push('');
    L.push('```');
    const rows = (ps.csv ?? '')
      .split('\n')
      .filter((l) => l && !l.startsWith('#'))
      .map((l) => l.split(','))
      .filter((f) => f.length > 3 && Number(f[1]) > 0);
    for (const f of rows) {
      const v = Number(f[1]);
      const per = f[3]?.startsWith('task-clock')
        ? `${n((v * 1e3) / ps.fio.ios, 1)} µs/IO`
        : `${n(v / ps.fio.ios, 3)} /IO`;
      L.push(`${f[0].padEnd(24)} ${f[3].padEnd(18)} ${String(f[1]).padStart(14)}  ${per}`);
    }
    L.push('```');
    L.push('');
  }
  const st = c.probes.strace;
  if (st) {
    const ios = st.fio.ios;
    L.push(
      `strace -c -f (${n(st.fio.iops)} IOPS under strace, ${n(ios)} I/Os): syscalls per I/O: ${st.rows
        .slice(0, 12)
        .map((r) => `${r.syscall} ${n(r.calls / ios, 2)}${r.errors ? ` (${n(r.errors / ios, 2)} err)` : ''}`)
        .join(', ')}.`,
    );
    L.push('');
  }
  const sl = c.probes.straceLog;
  if (sl) {
    const ios = sl.fio.ios;
    L.push(
      `strace -f -tt (${n(sl.fio.iops)} IOPS, ${n(ios)} I/Os): waits by timeout and result, per I/O: ${Object.entries(
        sl.waits,
      )
        .sort((a, b) => b[1] - a[1])
        .slice(0, 8)
        .map(([k, v]) => `${k}: ${n(v / ios, 2)}`)
        .join('; ')}.`,
    );
    L.push('');
    L.push('<details><summary>strace sample</summary>');
    L.push('');
    L.push('```');
    L.push(...sl.sample.slice(0, 40));
    L.push('```');
    L.push('</details>');
    L.push('');
  }
  const pf = c.probes.perf;
  if (pf) {
    L.push(`perf record -e cpu-clock -g -p PID (${n(pf.fio.iops)} IOPS), --no-children by dso,sym:`);
    L.push('');
    L.push('```', pf.bySym.split('\n').slice(0, 40).join('\n'), '```', '');
    L.push('By thread (comm,dso):', '', '```', pf.byThread.split('\n').slice(0, 20).join('\n'), '```', '');
    L.push(
      'Inclusive (--children, by sym):',
      '',
      '```',
      pf.inclusive.split('\n').slice(0, 160).join('\n'),
      '```',
      '',
    );
  }
  const pa = c.probes.perfAll;
  if (pa) {
    L.push(`perf record -a (whole guest, ${n(pa.fio.iops)} IOPS), by comm,dso:`);
    L.push('');
    L.push('```', pa.byComm.split('\n').slice(0, 25).join('\n'), '```', '');
    L.push('By comm,sym:', '', '```', pa.bySym.split('\n').slice(0, 30).join('\n'), '```', '');
  }
  return L;
}

// ------------------------------------------------------------------------------------------- host-side probe

const readText = (p) => {
  try {
    return fs.readFileSync(p, 'utf8');
  } catch {
    return null;
  }
};

/** The qemu-system process below `pid` (vm.mjs spawns it), or null. */
function qemuBelow(pid) {
  const kids = new Map();
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    const st = readText(`/proc/${d}/stat`);
    if (!st) continue;
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
    const comm = st.slice(st.indexOf('(') + 1, st.lastIndexOf(')'));
    const ppid = Number(f[1]);
    if (!kids.has(ppid)) kids.set(ppid, []);
    kids.get(ppid).push({ pid: Number(d), comm });
  }
  const queue = [pid];
  while (queue.length) {
    const p = queue.shift();
    for (const k of kids.get(p) ?? []) {
      if (k.comm.startsWith('qemu-system')) return k.pid;
      queue.push(k.pid);
    }
  }
  return null;
}

/**
 * Boot the VM with the guest script; while the guest marks a "host" probe, record QEMU on the host (perf record
 * of the QEMU process, its threads' CPU). Returns { code, result, host }.
 */
async function runVm({ accel, args, timeoutSec, dataDir }) {
  const raw = path.join(ROOT, 'bench/results', `.cpu-probe-raw-${process.pid}.json`);
  fs.mkdirSync(path.dirname(raw), { recursive: true });
  const host = {};
  let active = null;
  const vm = spawn(
    process.execPath,
    [
      path.join(ROOT, 'scripts/vm/vm.mjs'),
      '--timeout',
      String(timeoutSec),
      '--',
      'node',
      path.join(ROOT, 'bench/vm/cpu-probe-guest.mjs'),
      ...args,
      '--out',
      raw,
    ],
    { stdio: ['ignore', 'inherit', 'pipe'], cwd: ROOT, env: { ...process.env, VDUSE_VM_ACCEL: accel } },
  );
  let buf = '';
  const onLine = (line) => {
    const m = /MARK (begin|end) (\S+) (\S+)/.exec(line);
    if (!m) return;
    const [, what, id, probeName] = m;
    const key = `${id}`;
    if (what === 'begin') {
      const qpid = qemuBelow(vm.pid);
      if (!qpid) return;
      const file = path.join(dataDir, `host-${id}-${probeName}.data`);
      fs.mkdirSync(dataDir, { recursive: true });
      const perf = spawn('perf', ['record', '-e', 'cpu-clock', '-F', '999', '-p', String(qpid), '-o', file], {
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      active = { key, qpid, file, perf, t0: threadStats(qpid), w0: process.hrtime.bigint() };
    } else if (active && active.key === key) {
      const a = active;
      active = null;
      const t1 = threadStats(a.qpid);
      const wall = Number(process.hrtime.bigint() - a.w0) / 1e9;
      const threads = [];
      for (const [tid, y] of Object.entries(t1)) {
        const x = a.t0[tid] ?? { utime: 0, stime: 0 };
        const d = { tid, comm: y.comm, utime: y.utime - x.utime, stime: y.stime - x.stime };
        if (d.utime + d.stime > 0) threads.push(d);
      }
      threads.sort((p, q) => q.utime + q.stime - (p.utime + p.stime));
      a.perf.kill('SIGINT');
      host[key] = { qemuPid: a.qpid, wallS: wall, threads, perfData: a.file };
    }
  };
  vm.stderr.on('data', (d) => {
    process.stderr.write(d);
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      onLine(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  });
  const code = await new Promise((resolve) => vm.on('exit', (c, s) => resolve(c ?? (s ? 128 : 1))));
  if (active) active.perf.kill('SIGINT');
  if (!fs.existsSync(raw)) {
    console.error(`cpu-probe: the VM run ended (${code}) without results`);
    process.exit(code === 0 ? 1 : code);
  }
  const result = JSON.parse(fs.readFileSync(raw, 'utf8'));
  fs.rmSync(raw, { force: true });
  // the host's perf reports, after the VM is gone (nothing else to disturb)
  await new Promise((r) => setTimeout(r, 1000));
  for (const h of Object.values(host)) {
    const rep = (sort) =>
      new Promise((resolve) => {
        const p = spawn(
          'perf',
          ['report', '-i', h.perfData, '--stdio', '--no-children', '--sort', sort, '--percent-limit', '0.5'],
          { stdio: ['ignore', 'pipe', 'ignore'] },
        );
        let o = '';
        p.stdout.on('data', (d) => (o += d));
        p.on('exit', () =>
          resolve(
            o
              .split('\n')
              .filter((l) => l.trim() && !l.startsWith('#'))
              .slice(0, 45)
              .join('\n'),
          ),
        );
      });
    h.bySym = await rep('dso,sym');
    h.byThread = await rep('comm,dso');
  }
  return { code, result, host };
}

/** Share (%) of the daemon's samples under a function (perf report --children line), NaN when absent. */
function inclusive(text, re) {
  for (const line of (text ?? '').split('\n')) {
    const m = /^\s*([\d.]+)%\s+([\d.]+)%\s+\[[.k]\]\s+(.*)$/.exec(line);
    if (m && re.test(m[3].trim())) return Number(m[1]);
  }
  return NaN;
}

/** The kretprobe histogram of segments per request: "32 x 1,234 (99.9 %), ...", or why there is none. */
function segmentsText(seg) {
  if (seg.error) return `not measured (${seg.error})`;
  const rows = Object.entries(seg.hist ?? {}).map(([k, v]) => [Number(k), v]);
  const total = rows.reduce((a, [, v]) => a + v, 0);
  if (total === 0) return `none counted (${seg.fn})`;
  rows.sort((a, b) => b[1] - a[1]);
  return rows
    .slice(0, 4)
    .map(([k, v]) => `${k} × ${n(v)} (${n((v / total) * 100, 1)} %)`)
    .join(', ');
}

const BUCKETS = [
  ['JS (JSEntry)', /^Builtins_JSEntry$/],
  ['napi_make_callback', /^napi_make_callback$/],
  ['wait syscall', /^(epoll_wait|ppoll)$/],
  ['ioctl', /^__GI___ioctl$/],
  ['read', /^read$/],
  ['page faults', /^asm_exc_page_fault$/],
  ['exit to user', /^syscall_exit_to_user_mode$/],
  ['TypedArray fill', /^Builtins_TypedArrayPrototypeFill$/],
  ['memset', /^__memset_\w+$/],
  ['new Uint8Array', /^Builtins_CreateTypedArray$/],
  ['GC', /^v8::internal::Heap::CollectGarbage/],
];

/** One row per contender: the figures per I/O that answer "where does the CPU go". */
function summaryMd(report) {
  const L = [];
  const head = [
    'accel',
    'daemon',
    'IOPS',
    'daemon CPU µs/IO',
    'guest busy µs/IO',
    'wall µs/IO',
    'vol./invol. csw /IO',
    'syscalls /IO (strace -c)',
    'host vCPU threads busy',
    'segments /request',
    'guest CPUs busy (user+sys %)',
    ...BUCKETS.map(([k]) => `${k} % (µs/IO)`),
  ];
  L.push(`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`);
  for (const { accel, raw } of report.accels) {
    for (const c of raw.contenders) {
      if (c.error || !c.probes.plain) continue;
      const p = c.probes.plain;
      const ios = p.fio.ios;
      const th = Object.values(p.threads);
      const cpu = th.reduce((s, t) => s + t.utime + t.stime, 0);
      const g = p.guest.cpu;
      const busy = g.user + g.nice + g.system + g.irq + g.softirq;
      const st = c.probes.strace;
      const sys = st
        ? st.rows
            .slice(0, 4)
            .map((r) => `${r.syscall} ${n(r.calls / st.fio.ios, 2)}`)
            .join(', ')
        : '–';
      const h = raw.host?.[c.id];
      const hostBusy = h
        ? h.threads
            .filter((t) => (t.utime + t.stime) / h.wallS > 0.02)
            .map((t) => `${n(((t.utime + t.stime) / h.wallS) * 100)} %`)
            .join(' + ')
        : '–';
      const segs = p.segments ? segmentsText(p.segments).split(', ')[0] : '–';
      const perCpu = Object.keys(p.guest)
        .filter((k) => k !== 'cpu')
        .map((k) => {
          const x = p.guest[k];
          const tot = x.user + x.nice + x.system + x.irq + x.softirq + x.idle + x.iowait + x.steal;
          return `${k} ${n(((x.user + x.nice + x.system + x.irq + x.softirq) / Math.max(tot, 1e-9)) * 100)}`;
        })
        .join(', ');
      const pf = c.probes.perf;
      // perf's own sampling cost under TCG is not in its samples: the shares are applied to the plain run
      const pfCpu = (cpu / ios) * 1e6;
      const buckets = BUCKETS.map(([, re]) => {
        const v = inclusive(pf?.inclusive, re);
        return Number.isFinite(v) ? `${n(v, 1)} (${n((v / 100) * pfCpu)})` : '–';
      });
      L.push(
        `| ${accelShort(accel)} | ${c.label} | ${n(p.fio.iops)} | **${n((cpu / ios) * 1e6)}** | ${n((busy / ios) * 1e6)} | ${n((p.wallS / ios) * 1e6)} | ${n(th.reduce((s, t) => s + t.vcsw, 0) / ios, 2)} / ${n(th.reduce((s, t) => s + t.nvcsw, 0) / ios, 2)} | ${sys} | ${hostBusy} | ${segs} | ${perCpu} | ${buckets.join(' | ')} |`,
      );
    }
  }
  L.push(
    '',
    "Daemon CPU: utime+stime of all its threads over the plain run; guest busy: all CPUs of the guest (/proc/stat); wall: the fio run (ramp 0) per I/O. Buckets: share of the daemon's perf samples (cpu-clock, call graphs) under the function, and that share of the plain run's daemon CPU per I/O (the perf run itself is slowed by the sampling).",
    '',
  );
  return L;
}

const accelShort = (a) => /thread=(single|multi)/.exec(a)?.[1] ?? a;

export function markdown(report) {
  const L = [`## cpu-probe: daemon CPU at ${report.workloadTitle} (${report.startedAt.slice(0, 16)}Z)`, ''];
  L.push(`Commit ${report.commit}.`, '');
  L.push(...summaryMd(report));
  for (const { accel, raw } of report.accels) {
    const c = raw.conditions;
    L.push('');
    L.push(
      `Accelerator \`${accel}\`: Linux ${c.kernel}, ${c.cpus} vCPUs, ${c.node}, ${c.qsd}; clocksource ${c.clocksource} (available: ${c.clocksources}); nohz_full="${c.nohzFull}"; ${c.perf}; ${c.strace}. ${c.runtimeS} s per probe after ${c.warmupS} s x 3 warm-up jobs; ${c.queues} queues of ${c.queueSize}; ours with node ${c.nodeArgs.join(' ') || '(no options)'} ${c.daemonArgs.join(' ')}.`,
    );
    L.push('');
    for (const x of raw.contenders) L.push(...contenderMd(x, accel, raw.host?.[x.id]));
  }
  return L.join('\n') + '\n';
}

async function main() {
  const reportFile = opt('--report', null);
  if (reportFile) {
    process.stdout.write(markdown(JSON.parse(fs.readFileSync(reportFile, 'utf8'))));
    return;
  }
  const accelArg = opt('--accel', 'single');
  const accels = accelArg === 'both' ? ['single', 'multi'] : [accelArg];
  const dist = path.resolve(ROOT, opt('--dist', 'dist'));
  const guestArgs = [
    '--root',
    ROOT,
    '--dist',
    dist,
    '--runtime',
    opt('--runtime', '6'),
    '--warmup',
    opt('--warmup', '3'),
    '--probes',
    opt('--probes', 'plain,host,pstat,strace,perf'),
    '--contenders',
    opt('--contenders', 'project,qsd'),
    ...(opt('--workload', null) ? ['--workload', opt('--workload', null)] : []),
    '--iodepth',
    opt('--iodepth', '1'),
    '--rw',
    opt('--rw', 'randread'),
    '--bs',
    opt('--bs', '4k'),
    '--backend',
    opt('--backend', 'null'),
    '--node-args',
    opt('--node-args', '--perf-basic-prof'),
    '--daemon-args',
    opt('--daemon-args', ''),
    // every --variantN-args/-node-args/-env as given
    ...argv.flatMap((x, i) =>
      /^--variant\d*-(args|node-args|env|dist)$/.test(x) ? [x, argv[i + 1] ?? ''] : [],
    ),
  ];
  const startedAt = new Date().toISOString();
  const stamp = startedAt.replace(/[:.]/g, '-');
  const report = {
    startedAt,
    commit: commitOf(ROOT),
    workloadTitle: `${
      opt('--workload', null) ??
      `${opt('--bs', '4k').toUpperCase()} ${opt('--rw', 'randread')} QD${opt('--iodepth', '1')}`
    }, ${opt('--backend', 'null')} backend`,
    accels: [],
  };
  let worst = 0;
  for (const a of accels) {
    const accel = ACCELS[a] ?? a;
    const dataDir = path.join(ROOT, 'bench/results/cpu-probe-data', `${stamp}-${a}`);
    const keep = argv.includes('--keep') ? ['--keep-dir', dataDir] : [];
    console.error(`cpu-probe: booting the VM with -accel ${accel}`);
    const { code, result, host } = await runVm({
      accel,
      args: [...guestArgs, ...keep],
      timeoutSec: Number(opt('--timeout', '600')),
      dataDir,
    });
    result.host = host;
    report.accels.push({ accel, raw: result });
    worst = worst || code;
  }
  report.finishedAt = new Date().toISOString();
  const md = markdown(report);
  process.stdout.write('\n' + md);
  writeResults(ROOT, 'cpu-probe', report, md);
  console.error('written: bench/results/cpu-probe-<time>.{json,md} and cpu-probe-latest.{json,md}');
  process.exit(worst);
}

await main();
