#!/usr/bin/env node
// Runs inside the test VM (bench/vm/cpu-probe.mjs starts it): where a daemon's CPU goes at one fio workload
// (default 4 KiB randread QD1; --workload ID for one of bench/vm/workloads.mjs) on the null backend (--backend
// file: a raw file on the guest's tmpfs; rbd: an image on a one-node Ceph cluster), for our daemon and for
// qemu-storage-daemon, each with its defaults.
// Per contender, after a warm-up, one fio run per probe, so that no probe disturbs another:
//   plain   the device's queue limits and virtio features, data segments per request (a kretprobe histogram
//           of __blk_rq_map_sg) and sectors per request (/sys/block/X/stat) over the run, and
//           per-thread CPU (/proc/PID/task/*/stat utime+stime, schedstat run time, voluntary/nonvoluntary context
//           switches), the guest's /proc/stat per CPU and the busiest tasks of the whole guest
//   pstat   perf stat -e task-clock,context-switches,cpu-migrations,page-faults --per-thread -p PID
//   strace  strace -c -f -p PID (syscall counts and time), and a short strace -f -tt -T of the same daemon for
//           the wait/kick/interrupt sequence and the epoll_wait timeouts and results
//   perf    perf record -e cpu-clock -g -p PID (ours under node --perf-basic-prof), report by dso,sym and by
//           thread; and perf record -a (the whole guest) by comm,dso
// Writes the results as JSON to --out.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { spawn } from 'node:child_process';

import {
  blockStat,
  CLK_TCK,
  deviceLimits,
  fio as runFio,
  iovaTrace,
  threadStats,
  projectDaemon,
  qsdDaemon,
  run,
  runOk,
  segmentHistogram,
  startRbdBench,
} from './guest-lib.mjs';
import { WORKLOADS } from './workloads.mjs';

const argv = process.argv.slice(2);
const opt = (name, def) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1] : def;
};

const root = path.resolve(opt('root', process.cwd()));
const dist = path.resolve(root, opt('dist', 'dist'));
const out = path.resolve(opt('out', path.join(root, 'bench/results/.cpu-probe-raw.json')));
const runtime = Number(opt('runtime', '6'));
const warmup = Number(opt('warmup', '3'));
const contenderIds = opt('contenders', 'project,qsd').split(',').filter(Boolean);
const probes = opt('probes', 'plain,host,pstat,strace,perf').split(',').filter(Boolean);
const named = opt('workload', null);
const preset = named === null ? null : WORKLOADS.find((w) => w.id === named);
if (named !== null && !preset) throw new Error(`unknown workload ${named}`);
const workload = preset
  ? { id: preset.id, rw: preset.rw, bs: preset.bs, iodepth: preset.iodepth, numjobs: preset.numjobs }
  : { rw: opt('rw', 'randread'), bs: opt('bs', '4k'), iodepth: Number(opt('iodepth', '1')), numjobs: 1 };
/**
 * null (default), file (a raw file on the guest's tmpfs, both buffered) or rbd (an image on a one-node Ceph
 * cluster in the guest, which shares the guest's vCPUs with the daemons).
 */
const backendKind = opt('backend', 'null');
if (!['null', 'file', 'rbd'].includes(backendKind)) throw new Error(`unknown backend ${backendKind}`);
const RBD_SIZE = 256 << 20;
/** The rbd case's cluster and image (set up before the first contender). */
let rbdBench = null;
const FILE = '/tmp/probe-file.raw';
const FILE_SIZE = 256 << 20;
const queues = Number(opt('queues', '2'));
const queueSize = Number(opt('queue-size', '256'));
const nodeArgs = opt('node-args', '--perf-basic-prof').split(' ').filter(Boolean);
const daemonArgs = opt('daemon-args', '').split(' ').filter(Boolean);
/**
 * Contenders "variant", "variant2", ...: our daemon again with extra options and environment (A/B in one boot):
 * --variant-args "vduse blk options", --variant-node-args "node options", --variant-env "K=V ...",
 * --variant-dist DIR (another build: its dist/, in a package root with build/ and node_modules/) (and
 * --variant2-args etc.).
 */
function variantOf(id) {
  const env = Object.fromEntries(
    opt(`${id}-env`, '')
      .split(' ')
      .filter((x) => x.includes('='))
      .map((x) => [x.slice(0, x.indexOf('=')), x.slice(x.indexOf('=') + 1)]),
  );
  return {
    args: opt(`${id}-args`, '').split(' ').filter(Boolean),
    nodeArgs: opt(`${id}-node-args`, '').split(' ').filter(Boolean),
    env,
    dist: opt(`${id}-dist`, null),
  };
}
const keepDir = opt('keep-dir', null);

const lib = await import(pathToFileURL(path.join(dist, 'test/e2e/lib/index.js')).href);
const { VduseDaemon, CLI } = await import(pathToFileURL(path.join(dist, 'test/e2e/vduse-daemon.js')).href);

const log = (m) => process.stderr.write(`[probe ${new Date().toISOString().slice(11, 19)}] ${m}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------------- helpers

/** A background tool (strace, perf): started now, stopped with SIGINT by stop(), which resolves its output. */
function background(cmd, args) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise((resolve) => {
    child.on('error', (e) => resolve({ code: -1, stdout, stderr: `${stderr}${e.message}` }));
    child.on('exit', (code, signal) => resolve({ code: code ?? -1, signal, stdout, stderr }));
  });
  return {
    get stderr() {
      return stderr;
    },
    async stop(timeoutMs = 120_000) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
      const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      const r = await exited;
      clearTimeout(t);
      return r;
    },
    exited,
  };
}

const read = (p) => {
  try {
    return fs.readFileSync(p, 'utf8');
  } catch {
    return null;
  }
};

function threadDelta(a, b) {
  const d = {};
  for (const [tid, y] of Object.entries(b)) {
    const x = a[tid] ?? { utime: 0, stime: 0, runS: 0, waitS: 0, slices: 0, vcsw: 0, nvcsw: 0 };
    d[tid] = {
      comm: y.comm,
      utime: y.utime - x.utime,
      stime: y.stime - x.stime,
      runS: y.runS - x.runS,
      waitS: y.waitS - x.waitS,
      slices: y.slices - x.slices,
      vcsw: y.vcsw - x.vcsw,
      nvcsw: y.nvcsw - x.nvcsw,
      lastCpu: y.cpu,
      new: !(tid in a),
    };
  }
  return d;
}

/** Run time (schedstat) of every task of the guest, keyed by "pid/tid". */
function allTasks() {
  const m = {};
  for (const pid of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    let tids = [];
    try {
      tids = fs.readdirSync(`/proc/${pid}/task`);
    } catch {
      continue;
    }
    for (const tid of tids) {
      const s = read(`/proc/${pid}/task/${tid}/schedstat`);
      const c = read(`/proc/${pid}/task/${tid}/comm`);
      if (s === null) continue;
      m[`${pid}/${tid}`] = { comm: (c ?? '?').trim(), runS: Number(s.split(' ')[0]) / 1e9 };
    }
  }
  return m;
}

function topTasks(a, b, n = 12) {
  const rows = [];
  for (const [k, y] of Object.entries(b)) {
    const d = y.runS - (a[k]?.runS ?? 0);
    if (d > 0) rows.push({ task: k, comm: y.comm, runS: d });
  }
  return rows.sort((x, y) => y.runS - x.runS).slice(0, n);
}

/** /proc/stat lines cpu, cpu0, cpu1 ... in jiffies (USER_HZ). */
function procStat() {
  const m = {};
  for (const line of (read('/proc/stat') ?? '').split('\n')) {
    const p = line.trim().split(/\s+/);
    if (!/^cpu\d*$/.test(p[0] ?? '')) continue;
    const [user, nice, system, idle, iowait, irq, softirq, steal] = p.slice(1).map(Number);
    m[p[0]] = { user, nice, system, idle, iowait, irq, softirq, steal };
  }
  return m;
}

function statDelta(a, b) {
  const d = {};
  for (const k of Object.keys(b)) {
    d[k] = {};
    for (const f of Object.keys(b[k])) d[k][f] = (b[k][f] - (a[k]?.[f] ?? 0)) / CLK_TCK;
  }
  return d;
}

/** Interrupt counts of the guest (/proc/interrupts: total over CPUs per line). */
function interrupts() {
  const m = {};
  const text = read('/proc/interrupts') ?? '';
  const lines = text.split('\n');
  const ncpu = (lines[0] ?? '').trim().split(/\s+/).length;
  for (const line of lines.slice(1)) {
    const p = line.trim().split(/\s+/);
    if (p.length < 2) continue;
    const name = p[0].replace(/:$/, '');
    const counts = p.slice(1, 1 + ncpu).map(Number);
    if (counts.some((x) => !Number.isFinite(x))) continue;
    m[`${name} ${p.slice(1 + ncpu).join(' ')}`.trim()] = counts.reduce((s, x) => s + x, 0);
  }
  return m;
}

function interruptDelta(a, b) {
  const d = {};
  for (const [k, v] of Object.entries(b)) if (v - (a[k] ?? 0) > 0) d[k] = v - (a[k] ?? 0);
  return d;
}

function fio(devPath, seconds) {
  return runFio(devPath, workload, { seconds, name: 'probe' });
}

/** fio with the whole-run counters around it (ramp 0: every I/O of the window is counted by fio). */
async function measured(devPath, pid, seconds, { segments = false } = {}) {
  const seg = segments ? await segmentHistogram() : null;
  const iova = segments ? await iovaTrace() : null;
  const b0 = blockStat(devPath);
  const t0 = threadStats(pid);
  const s0 = procStat();
  const a0 = allTasks();
  const i0 = interrupts();
  const w0 = process.hrtime.bigint();
  const m = await fio(devPath, seconds);
  const wall = Number(process.hrtime.bigint() - w0) / 1e9;
  const b1 = blockStat(devPath);
  const block = {};
  for (const k of Object.keys(b1)) block[k] = b1[k] - b0[k];
  return {
    fio: m,
    wallS: wall,
    block,
    segments: seg === null ? undefined : seg.stop ? seg.stop() : seg,
    iovas: iova === null ? undefined : iova.stop ? iova.stop() : iova,
    threads: threadDelta(t0, threadStats(pid)),
    guest: statDelta(s0, procStat()),
    top: topTasks(a0, allTasks()),
    interrupts: interruptDelta(i0, interrupts()),
  };
}

// ------------------------------------------------------------------------------------------------ contenders

const GiB = 1 << 30;

function project({
  id = 'project',
  label = 'vduse-ts',
  extraArgs = [],
  extraNodeArgs = [],
  env = {},
  cli = CLI,
} = {}) {
  return projectDaemon({
    VduseDaemon,
    cli,
    name: 'probe-p',
    backend: backendKind === 'file' ? `file:${FILE}` : backendKind === 'rbd' ? rbdBench.spec : `null:${GiB}`,
    queues,
    queueSize,
    id,
    label,
    nodeArgs: [...nodeArgs, ...extraNodeArgs],
    args: [...daemonArgs, ...extraArgs],
    env,
    readyMs: 120_000,
    log,
  });
}

function qsd() {
  return qsdDaemon({
    lib,
    name: 'probe-q',
    blockdev:
      backendKind === 'file'
        ? lib.fileBlockdev('f0', FILE)
        : backendKind === 'rbd'
          ? rbdBench.blockdev
          : lib.nullBlockdev('n0', GiB),
    queues,
    queueSize,
  });
}

// ----------------------------------------------------------------------------------------------------- probes

/** strace -c output: rows { syscall, calls, errors, seconds }. */
function parseStraceC(text) {
  const rows = [];
  for (const line of text.split('\n')) {
    const p = line.trim().split(/\s+/);
    if (p.length < 5 || !/^\d+(\.\d+)?$/.test(p[0]) || p[p.length - 1] === 'total') continue;
    const name = p[p.length - 1];
    const nums = p.slice(0, -1).map(Number);
    // % time, seconds, usecs/call, calls, [errors]
    rows.push({ syscall: name, seconds: nums[1], calls: nums[3], errors: nums[4] ?? 0 });
  }
  return rows.sort((a, b) => b.calls - a.calls);
}

/**
 * A strace -f -tt -T log: per syscall name, counts by (timeout argument, result) for the waits, and the first
 * lines of the main thread.
 */
function parseStraceLog(text, pid) {
  const waits = {};
  const calls = {};
  const lines = text.split('\n').filter(Boolean);
  for (const line of lines) {
    // "TID HH:MM:SS.us name(args) = ret <t>", or the second half of a call another thread's line interrupted:
    // "TID HH:MM:SS.us <... name resumed>args) = ret <t>"
    const m =
      /^\d+\s+\S+\s+(\w+)\((.*)\)\s+=\s+(-?\d+)/.exec(line) ??
      /^\d+\s+\S+\s+<\.\.\. (\w+) resumed>(.*)\)\s+=\s+(-?\d+)/.exec(line);
    if (!m) continue;
    const [, name, argsText, ret] = m;
    calls[name] = (calls[name] ?? 0) + 1;
    if (/^(epoll_p?wait|ppoll|poll)$/.test(name)) {
      // the arguments after the events/fds array: ", maxevents, timeout[, sigmask, size]" (ppoll: ", nfds, ts")
      const tail = argsText
        .slice(argsText.lastIndexOf(']') + 1)
        .split(',')
        .map((x) => x.trim());
      const timeout = name === 'ppoll' ? (tail[2] === 'NULL' ? 'inf' : (tail[2] ?? '?')) : (tail[2] ?? '?');
      const key = `${name} timeout=${timeout} -> ${ret}`;
      waits[key] = (waits[key] ?? 0) + 1;
    }
  }
  const mainLines = lines.filter((l) => l.startsWith(`${pid} `));
  return { calls, waits, sample: (mainLines.length ? mainLines : lines).slice(-80) };
}

/** Stop a background tool after fio. */
async function withTool(startTool, devPath, pid, seconds, settleMs = 1500) {
  const tool = startTool();
  await sleep(settleMs);
  const m = await measured(devPath, pid, seconds);
  const r = await tool.stop();
  return { m, r };
}

async function perfReport(data, args, lines = 60) {
  const r = await run('perf', ['report', '-i', data, '--stdio', '--percent-limit', '0.3', ...args], {
    timeoutMs: 240_000,
  });
  return r.stdout
    .split('\n')
    .filter((l) => l.trim() && !l.startsWith('#'))
    .slice(0, lines)
    .join('\n');
}

async function probe(k) {
  const res = { id: k.id, label: k.label, probes: {} };
  const dev = await k.start();
  const pid = k.pid;
  fs.writeFileSync(`/sys/block/${path.basename(dev)}/queue/scheduler`, 'none');
  res.device = dev;
  res.pid = pid;
  res.cmdline = (read(`/proc/${pid}/cmdline`) ?? '').split('\0').join(' ').trim();
  res.limits = deviceLimits(dev);
  log(`  queue limits: ${JSON.stringify(res.limits)}`);
  log(`${k.label} pid ${pid} on ${dev}; warm-up`);
  if (warmup > 0) {
    for (const w of [
      { rw: 'randrw', bs: '4k', iodepth: 32 },
      { rw: 'randrw', bs: '4k', iodepth: 1 },
      workload,
    ]) {
      await runFio(dev, w, { seconds: warmup, name: 'warm' });
    }
  }
  const tmp = `/tmp/probe-${k.id}`;
  fs.mkdirSync(tmp, { recursive: true });

  if (probes.includes('plain')) {
    res.probes.plain = await measured(dev, pid, runtime, { segments: true });
    const p = res.probes.plain;
    log(`  segments per request: ${JSON.stringify(p.segments)}; block stat: ${JSON.stringify(p.block)}`);
    log(`  consecutive IOVAs: ${JSON.stringify(p.iovas)}`);
    const cpu = Object.values(p.threads).reduce((s, t) => s + t.utime + t.stime, 0);
    log(
      `  plain: ${Math.round(p.fio.iops)} IOPS, lat ${p.fio.latMeanUs.toFixed(0)} us, daemon cpu ${cpu.toFixed(2)} s = ${((cpu / p.fio.ios) * 1e6).toFixed(0)} us/IO`,
    );
  }

  if (probes.includes('host')) {
    // the same run again, for the host: cpu-probe.mjs records QEMU's threads between the two marks
    log(`MARK begin ${k.id} host`);
    res.probes.host = await measured(dev, pid, runtime);
    log(`MARK end ${k.id} host`);
    log(`  host: ${Math.round(res.probes.host.fio.iops)} IOPS`);
  }

  if (probes.includes('pstat')) {
    const file = `${tmp}/perf-stat.csv`;
    const { m, r } = await withTool(
      () =>
        background('perf', [
          'stat',
          '-e',
          'task-clock,context-switches,cpu-migrations,page-faults',
          '--per-thread',
          '-x',
          ',',
          '-o',
          file,
          '-p',
          String(pid),
        ]),
      dev,
      pid,
      runtime,
      500,
    );
    res.probes.pstat = { fio: m.fio, threads: m.threads, csv: read(file) ?? r.stderr, code: r.code };
    log(`  perf stat: ${Math.round(m.fio.iops)} IOPS`);
  }

  if (probes.includes('strace')) {
    const file = `${tmp}/strace-c.txt`;
    const { m, r } = await withTool(
      () => background('strace', ['-c', '-f', '-o', file, '-p', String(pid)]),
      dev,
      pid,
      runtime,
    );
    const text = read(file) ?? '';
    res.probes.strace = { fio: m.fio, threads: m.threads, rows: parseStraceC(text), text, code: r.code };
    log(`  strace -c: ${Math.round(m.fio.iops)} IOPS`);
    const logFile = `${tmp}/strace.log`;
    const t = await withTool(
      () => background('strace', ['-f', '-tt', '-T', '-o', logFile, '-p', String(pid)]),
      dev,
      pid,
      2,
    );
    res.probes.straceLog = { fio: t.m.fio, ...parseStraceLog(read(logFile) ?? '', pid) };
    log(`  strace -tt: ${Math.round(t.m.fio.iops)} IOPS`);
  }

  if (probes.includes('perf')) {
    const data = `${tmp}/perf.data`;
    const { m, r } = await withTool(
      () =>
        background('perf', ['record', '-e', 'cpu-clock', '-F', '2000', '-g', '-o', data, '-p', String(pid)]),
      dev,
      pid,
      runtime,
    );
    res.probes.perf = { fio: m.fio, threads: m.threads, code: r.code, stderr: r.stderr.slice(-2000) };
    log(`  perf record: ${Math.round(m.fio.iops)} IOPS; reporting`);
    res.probes.perf.bySym = await perfReport(data, ['--no-children', '--sort', 'dso,sym', '-g', 'none']);
    res.probes.perf.byThread = await perfReport(data, ['--no-children', '--sort', 'comm,dso', '-g', 'none']);
    res.probes.perf.inclusive = await perfReport(data, ['--children', '--sort', 'sym', '-g', 'none'], 160);
    const all = `${tmp}/perf-all.data`;
    const a = await withTool(
      () => background('perf', ['record', '-e', 'cpu-clock', '-F', '1000', '-a', '-g', '-o', all]),
      dev,
      pid,
      runtime,
    );
    res.probes.perfAll = { fio: a.m.fio, code: a.r.code };
    res.probes.perfAll.byComm = await perfReport(all, ['--no-children', '--sort', 'comm,dso', '-g', 'none']);
    res.probes.perfAll.bySym = await perfReport(all, ['--no-children', '--sort', 'comm,sym', '-g', 'none']);
    log(`  perf record -a: ${Math.round(a.m.fio.iops)} IOPS`);
    if (keepDir) {
      const dir = path.join(keepDir, k.id);
      fs.mkdirSync(dir, { recursive: true });
      for (const f of [data, all]) fs.copyFileSync(f, path.join(dir, path.basename(f)));
      fs.writeFileSync(path.join(dir, 'kallsyms'), read('/proc/kallsyms') ?? '');
      const map = `/tmp/perf-${pid}.map`;
      if (fs.existsSync(map)) fs.copyFileSync(map, path.join(dir, path.basename(map)));
    }
  }
  await k.stop();
  return res;
}

// ----------------------------------------------------------------------------------------------------- main

for (const [f, v] of [
  ['/proc/sys/kernel/kptr_restrict', '0'],
  ['/proc/sys/kernel/perf_event_paranoid', '-1'],
]) {
  try {
    fs.writeFileSync(f, v);
  } catch (e) {
    log(`${f}: ${e.message}`);
  }
}
const dmesg = await run('dmesg', []);
const result = {
  startedAt: new Date().toISOString(),
  conditions: {
    kernel: os.release(),
    cpus: os.cpus().length,
    node: process.version,
    cmdline: (read('/proc/cmdline') ?? '').trim(),
    clocksource: (read('/sys/devices/system/clocksource/clocksource0/current_clocksource') ?? '').trim(),
    clocksources: (read('/sys/devices/system/clocksource/clocksource0/available_clocksource') ?? '').trim(),
    nohzFull: (read('/sys/devices/system/cpu/nohz_full') ?? '').trim(),
    meltdown: (read('/sys/devices/system/cpu/vulnerabilities/meltdown') ?? '').trim(),
    cpuFlags: ((read('/proc/cpuinfo') ?? '').match(/^flags\s*:(.*)$/m)?.[1] ?? '')
      .trim()
      .split(' ')
      .filter((f) =>
        /^(pcid|invpcid|tsc|constant_tsc|nonstop_tsc|tsc_known_freq|avx2|avx512f|pti|x2apic|hypervisor)$/.test(
          f,
        ),
      )
      .join(' '),
    timeLines: dmesg.stdout
      .split('\n')
      .filter((l) => /tsc|clocksource|sched_clock|nohz|hpet|kvm-clock|Calibrat/i.test(l))
      .slice(0, 30),
    workload,
    backend: backendKind,
    runtimeS: runtime,
    warmupS: warmup,
    queues,
    queueSize,
    nodeArgs,
    daemonArgs,
    variants: Object.fromEntries(
      contenderIds.filter((x) => x.startsWith('variant')).map((x) => [x, variantOf(x)]),
    ),
    perf: (await run('perf', ['--version'])).stdout.trim(),
    strace: (await run('strace', ['-V'])).stdout.split('\n')[0],
    qsd: (await run('qemu-storage-daemon', ['--version'])).stdout.split('\n')[0],
  },
  contenders: [],
};
const save = () => fs.writeFileSync(out, JSON.stringify(result, null, 2));
if (backendKind === 'file')
  await runOk('dd', ['if=/dev/zero', `of=${FILE}`, 'bs=1M', `count=${FILE_SIZE >> 20}`, 'status=none']);
if (backendKind === 'rbd') {
  log('starting a one-node Ceph cluster');
  rbdBench = await startRbdBench(dist, RBD_SIZE);
}
let failed = false;
for (const id of contenderIds) {
  const k =
    id === 'qsd'
      ? qsd()
      : id.startsWith('variant')
        ? (() => {
            const v = variantOf(id);
            const what = [
              ...(v.dist !== null ? [v.dist] : []),
              ...v.nodeArgs,
              ...v.args,
              ...Object.entries(v.env).map(([x, y]) => `${x}=${y}`),
            ];
            return project({
              id,
              label: `vduse-ts (${what.join(' ')})`,
              extraArgs: v.args,
              extraNodeArgs: v.nodeArgs,
              env: v.env,
              ...(v.dist !== null ? { cli: path.join(path.resolve(v.dist), 'src/cli/main.js') } : {}),
            });
          })()
        : project();
  try {
    result.contenders.push(await probe(k));
  } catch (e) {
    failed = true;
    log(`${id} failed: ${e instanceof Error ? e.stack : e}`);
    result.contenders.push({ id, error: e instanceof Error ? e.message : String(e) });
    try {
      await k.stop();
    } catch {
      // already gone
    }
  }
  save();
}
if (rbdBench !== null) await rbdBench.stop();
result.finishedAt = new Date().toISOString();
save();
process.exit(failed ? 1 : 0);
