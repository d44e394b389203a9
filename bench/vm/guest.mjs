#!/usr/bin/env node
// Runs inside the test VM (bench/vm/run.mjs starts it through scripts/vm/vm.mjs): sets up each case's
// contenders, runs fio against them alternately and writes the raw results as JSON to --out.
//
// A case starts its contenders once (both devices exist side by side, the idle one costs nothing) and reuses them
// for every workload; for each workload the contenders run alternately, A B A B ..., `rounds` times.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

import {
  CLK_TCK,
  blockStat,
  deviceLimits,
  fio as runFio,
  projectDaemon,
  qsdDaemon,
  run,
  runOk,
  segmentHistogram,
  startRbdBench,
  threadStats,
} from './guest-lib.mjs';
import { CASES, WORKLOADS } from './workloads.mjs';

const argv = process.argv.slice(2);
const opt = (name, def) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1] : def;
};
const flag = (name) => argv.includes(`--${name}`);

const root = path.resolve(opt('root', process.cwd()));
const dist = path.resolve(root, opt('dist', 'dist'));
const out = path.resolve(opt('out', path.join(root, 'bench/results/.vm-raw.json')));
const runtime = Number(opt('runtime', '6'));
const ramp = Number(opt('ramp', '1'));
const rounds = Number(opt('rounds', '3'));
const warmup = Number(opt('warmup', '4'));
const queues = Number(opt('queues', '2'));
const queueSize = Number(opt('queue-size', '256'));
const caseNames = opt('cases', CASES.map((c) => c.id).join(',')).split(',');
const workloadNames = opt('workloads', WORKLOADS.map((w) => w.id).join(',')).split(',');
/** Workloads also measured on a freshly started daemon: each round restarts both contenders, no warm-up, no ramp. */
const freshNames = opt('fresh', '').split(',').filter(Boolean);
const freshRuntime = Number(opt('fresh-runtime', '10'));
const profileDir = flag('profile')
  ? path.resolve(opt('profile-dir', path.join(root, 'bench/results/profiles')))
  : null;
const nbdPort = 10809;
/** Extra node options for our daemon, e.g. "--max-semi-space-size=16". */
const nodeArgs = opt('node-args', '').split(' ').filter(Boolean);
/** Extra `vduse blk` options for the measured build (e.g. "--poll-us 50") and for the A/B baseline. */
const daemonArgs = opt('daemon-args', '').split(' ').filter(Boolean);
const baselineDaemonArgs = opt('baseline-daemon-args', '').split(' ').filter(Boolean);
/** A/B mode: the peer of every case is the project built in this directory (before/after a change). */
const baselineDist = opt('baseline-dist', null) ? path.resolve(root, opt('baseline-dist', '')) : null;

const lib = await import(pathToFileURL(path.join(dist, 'test/e2e/lib/index.js')).href);
const { VduseDaemon, CLI } = await import(pathToFileURL(path.join(dist, 'test/e2e/vduse-daemon.js')).href);

const log = (m) => process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${m}\n`);

// ---------------------------------------------------------------------------------------------------- helpers

/** utime + stime of a process in seconds (0 when it is gone or unknown). */
function processCpu(pid) {
  if (!pid) return 0;
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields after the name: state(0) ... utime(11) stime(12) cutime(13) cstime(14)
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return 0;
  }
}

/**
 * utime + stime per thread name of a process, in seconds ({ "node": 3.1, "msgr-worker-*": 0.4, ... }; names
 * that differ only by a trailing number are summed). Empty when the process is gone.
 */
function threadCpu(pid) {
  const out = {};
  if (!pid) return out;
  for (const t of Object.values(threadStats(pid))) {
    const name = t.comm.replace(/\d+$/, '*');
    out[name] = (out[name] ?? 0) + t.utime + t.stime;
  }
  return out;
}

/** b - a per thread name (threads that ended during the run are left out), rounded to 10 ms. */
function threadCpuDelta(a, b) {
  const out = {};
  for (const [name, v] of Object.entries(b)) {
    const d = v - (a[name] ?? 0);
    if (d > 0.005) out[name] = Math.round(d * 100) / 100;
  }
  return out;
}

/** Busy and total jiffies of the whole guest (/proc/stat "cpu" line). */
function guestCpu() {
  const line = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0];
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const total = v.reduce((a, b) => a + b, 0);
  const idle = (v[3] ?? 0) + (v[4] ?? 0);
  return { busy: total - idle, total };
}

function setScheduler(devPath) {
  const name = path.basename(devPath);
  try {
    fs.writeFileSync(`/sys/block/${name}/queue/scheduler`, 'none');
  } catch {
    // not every device offers a choice
  }
}

function waitPort(port, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve();
      });
      s.once('error', () => {
        s.destroy();
        if (Date.now() > deadline) reject(new Error(`nothing listens on 127.0.0.1:${port}`));
        else setTimeout(attempt, 100);
      });
    };
    attempt();
  });
}

// ------------------------------------------------------------------------------------------------ contenders

/**
 * Our daemon: `vduse blk` with the given backend spec, from `cli` (a build's src/cli/main.js), with extra node
 * options for the daemon (--node-args) on the measured build only.
 */
function project(
  name,
  backend,
  { id = 'project', label = 'vduse-ts', cli = CLI, extraNodeArgs = nodeArgs, extraArgs = daemonArgs } = {},
) {
  return projectDaemon({
    VduseDaemon,
    cli,
    name,
    backend,
    queues,
    queueSize,
    id,
    label,
    nodeArgs: extraNodeArgs,
    args: extraArgs,
    profileDir: id === 'project' ? profileDir : null,
    log,
  });
}

/** qemu-storage-daemon's vduse-blk export of `blockdev`. */
function qsd(name, blockdev) {
  return qsdDaemon({ lib, name, blockdev, queues, queueSize });
}

/** The kernel's NBD client (nbd-client, `connections` connections) on /dev/nbdN. */
function kernelNbd(dev, port, connections) {
  return {
    id: 'kernel-nbd',
    label: 'kernel NBD (nbd-client)',
    pid: 0,
    async start() {
      await runOk('nbd-client', ['127.0.0.1', String(port), dev, '-b', '512', '-C', String(connections)]);
      await lib.waitFor(`${dev} size`, () => {
        const s = Number(fs.readFileSync(`/sys/block/${path.basename(dev)}/size`, 'utf8'));
        return s > 0;
      });
      this.path = dev;
      return dev;
    },
    async stop() {
      await run('nbd-client', ['-d', dev]);
    },
  };
}

/** nbdkit serving a memory disk on 127.0.0.1:port. */
async function startNbdkit(port, size) {
  const child = spawn(
    'nbdkit',
    ['-f', '--exit-with-parent', '-i', '127.0.0.1', '-p', String(port), 'memory', String(size)],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  try {
    await waitPort(port);
  } catch (e) {
    child.kill('SIGKILL');
    throw new Error(`nbdkit did not start: ${e.message} ${err.trim()}`);
  }
  return {
    pid: child.pid,
    async stop() {
      child.kill('SIGTERM');
      await new Promise((r) => (child.exitCode !== null ? r() : child.once('exit', r)));
    },
  };
}

// ---------------------------------------------------------------------------------------------------- cases

const GiB = 1 << 30;
const FILE = '/tmp/bench-file.raw';
const FILE_SIZE = 256 << 20;
const NBD_SIZE = 256 << 20;
/** The rbd case's image (bluestore keeps it in a sparse file on the guest's tmpfs). */
const RBD_SIZE = 256 << 20;

/** Each case: its contenders (project first) plus setup/teardown of what they share. */
const caseSetups = {
  async null() {
    return {
      contenders: [project('bench-p-null', `null:${GiB}`), qsd('bench-q-null', lib.nullBlockdev('n0', GiB))],
      async teardown() {},
    };
  },
  async file() {
    await runOk('dd', ['if=/dev/zero', `of=${FILE}`, 'bs=1M', `count=${FILE_SIZE >> 20}`, 'status=none']);
    return {
      contenders: [
        project('bench-p-file', `file:${FILE}`),
        qsd('bench-q-file', lib.fileBlockdev('f0', FILE)),
      ],
      async teardown() {
        fs.rmSync(FILE, { force: true });
      },
    };
  },
  async rbd() {
    const bench = await startRbdBench(dist, RBD_SIZE);
    return {
      contenders: [project('bench-p-rbd', bench.spec), qsd('bench-q-rbd', bench.blockdev)],
      async teardown() {
        await bench.stop();
      },
    };
  },
  async nbd() {
    const server = await startNbdkit(nbdPort, NBD_SIZE);
    return {
      server,
      contenders: [
        project('bench-p-nbd', `nbd:nbd://127.0.0.1:${nbdPort}/,connections=${queues}`),
        kernelNbd('/dev/nbd0', nbdPort, queues),
      ],
      async teardown() {
        await server.stop();
      },
    };
  },
};

// ------------------------------------------------------------------------------------------------------ fio

const WARMUP = [
  { rw: 'randrw', bs: '4k', iodepth: 32, numjobs: 2 },
  { rw: 'randrw', bs: '4k', iodepth: 1, numjobs: 1 },
  { rw: 'readwrite', bs: '128k', iodepth: 8, numjobs: 1 },
];

function fio(devPath, w, seconds = runtime, rampS = ramp) {
  return runFio(devPath, w, { seconds, ramp: rampS });
}

// ----------------------------------------------------------------------------------------------------- main

const missing = ['fio', 'qemu-storage-daemon', 'nbdkit', 'nbd-client', 'vdpa'].filter(
  (c) => !lib.findCommand(c),
);
if (missing.length > 0) {
  console.error(`bench: missing in the guest: ${missing.join(', ')}`);
  process.exit(2);
}

const result = {
  startedAt: new Date().toISOString(),
  conditions: {
    kernel: os.release(),
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? '',
    memMiB: Math.round(os.totalmem() / 2 ** 20),
    thp: ['enabled', 'defrag']
      .map((f) => {
        try {
          return `${f} ${fs.readFileSync(`/sys/kernel/mm/transparent_hugepage/${f}`, 'utf8').trim()}`;
        } catch {
          return `${f} ?`;
        }
      })
      .join(', '),
    node: process.version,
    qsd: (await run('qemu-storage-daemon', ['--version'])).stdout.split('\n')[0],
    fio: (await run('fio', ['--version'])).stdout.trim(),
    nbdkit: (await run('nbdkit', ['--version'])).stdout.trim(),
    runtimeS: runtime,
    freshRuntimeS: freshRuntime,
    fresh: freshNames,
    warmupS: warmup,
    rampS: ramp,
    rounds,
    queues,
    queueSize,
    logicalBlockSize: 512,
    profile: profileDir !== null,
    nodeArgs,
    daemonArgs,
    baselineDaemonArgs,
    baseline: baselineDist,
  },
  cases: [],
};

const save = () => {
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, JSON.stringify(result, null, 2));
};

/** One recorded fio run of contender `k`, with the daemon's (and the NBD server's) CPU time and the guest's load. */
async function measure(entry, setup, k, w, round, phase, seconds, rampS) {
  const seg = await segmentHistogram();
  const b0 = blockStat(k.path);
  const cpu0 = processCpu(k.pid);
  const threads0 = threadCpu(k.pid);
  const srv0 = processCpu(setup.server?.pid);
  const g0 = guestCpu();
  const m = await fio(k.path, w, seconds, rampS);
  const g1 = guestCpu();
  // data segments per request (guest block layer, ramp included) and sectors per request
  m.segments = seg.stop ? seg.stop() : seg;
  const b1 = blockStat(k.path);
  const reqs = b1.reads - b0.reads + (b1.writes - b0.writes);
  m.sectorsPerRequest =
    reqs > 0 ? (b1.readSectors - b0.readSectors + (b1.writeSectors - b0.writeSectors)) / reqs : 0;
  m.daemonCpuS = processCpu(k.pid) - cpu0 + (processCpu(setup.server?.pid) - srv0);
  // where the daemon's CPU went, by thread (e.g. the serving thread against librbd's)
  m.daemonThreadCpuS = threadCpuDelta(threads0, threadCpu(k.pid));
  m.guestBusy = (g1.busy - g0.busy) / Math.max(1, g1.total - g0.total);
  entry.runs.push({ workload: w.id, round, contender: k.id, phase, ...m });
  log(
    `  ${w.id}${phase === 'fresh' ? ' (fresh daemon)' : ''} round ${round + 1}/${rounds} ${k.id}: ${Math.round(m.iops)} IOPS, ${(m.bwBytes / 1e6).toFixed(1)} MB/s, lat ${m.latMeanUs.toFixed(0)} us, daemon cpu ${m.daemonCpuS.toFixed(2)} s, guest busy ${(m.guestBusy * 100).toFixed(0)}%, segments ${segmentsShort(m.segments)}, threads ${threadsShort(m.daemonThreadCpuS)}`,
  );
}

/** "node 3.10 msgr-worker-* 0.40": the daemon's busiest thread groups of a run (CPU seconds). */
function threadsShort(t) {
  return (
    Object.entries(t)
      .sort((a, b) => b[1] - a[1])
      .slice(0, 4)
      .map(([k, v]) => `${k} ${v.toFixed(2)}`)
      .join(' ') || '-'
  );
}

/** "32:80% 1:20%": the commonest segment counts per request of a run. */
function segmentsShort(seg) {
  if (!seg || seg.error) return `? (${seg?.error ?? 'not measured'})`;
  const rows = Object.entries(seg.hist ?? {});
  const total = rows.reduce((a, [, v]) => a + v, 0);
  if (total === 0) return '-';
  return rows
    .sort((a, b) => b[1] - a[1])
    .slice(0, 3)
    .map(([k, v]) => `${k}:${Math.round((v / total) * 100)}%`)
    .join(' ');
}

let failed = false;
for (const c of CASES.filter((x) => caseNames.includes(x.id))) {
  log(`case ${c.id}: setting up`);
  const entry = { id: c.id, peer: c.peer, contenders: [], runs: [], error: null };
  result.cases.push(entry);
  let setup = null;
  const started = [];
  try {
    setup = await caseSetups[c.id]();
    if (baselineDist) {
      // the second contender becomes the baseline build on the same backend as the first
      const spec = setup.contenders[0].backendSpec;
      setup.contenders[1] = project(`bench-b-${c.id}`, spec, {
        id: 'baseline',
        label: `vduse-ts (${[path.basename(baselineDist), ...baselineDaemonArgs].join(' ')})`,
        cli: path.join(baselineDist, 'src/cli/main.js'),
        extraNodeArgs: [],
        extraArgs: baselineDaemonArgs,
      });
      entry.peer = 'baseline';
    }
    for (const k of setup.contenders) {
      const dev = await k.start();
      started.push(k);
      setScheduler(dev);
      entry.contenders.push({ id: k.id, label: k.label, device: dev, limits: deviceLimits(dev) });
      log(`  ${k.label}: ${dev}`);
    }
    // Fresh daemons first: what a restart after a crash or an upgrade sees in its first seconds. Each round
    // starts every contender anew and measures at once (no warm-up, no ramp), contenders alternating.
    for (const w of WORKLOADS.filter((x) => freshNames.includes(x.id))) {
      for (let r = 0; r < rounds; r++) {
        for (const k of setup.contenders) {
          await k.stop();
          const dev = await k.start();
          setScheduler(dev);
          await measure(entry, setup, k, w, r, 'fresh', freshRuntime, 0);
        }
      }
      save();
    }
    // Warm-up, not recorded: a JIT-compiled daemon reaches its steady state only after its hot path was
    // optimized (a long-running daemon is always warm); the same I/O is given to every contender.
    if (warmup > 0) {
      for (const k of setup.contenders) {
        for (const w of WARMUP) await fio(k.path, w, warmup, 0);
      }
      log(`  warmed up (${WARMUP.length} x ${warmup} s per contender)`);
    }
    for (const w of WORKLOADS.filter((x) => workloadNames.includes(x.id))) {
      for (let r = 0; r < rounds; r++) {
        for (const k of setup.contenders) await measure(entry, setup, k, w, r, 'warm', runtime, ramp);
      }
      save();
    }
  } catch (e) {
    failed = true;
    entry.error = e instanceof Error ? e.message : String(e);
    log(`case ${c.id} failed: ${entry.error}`);
  } finally {
    for (const k of started.reverse()) {
      try {
        await k.stop();
      } catch (e) {
        log(`stopping ${k.label}: ${e instanceof Error ? e.message : e}`);
      }
    }
    try {
      await setup?.teardown();
    } catch (e) {
      log(`teardown of ${c.id}: ${e instanceof Error ? e.message : e}`);
    }
  }
  save();
}
result.finishedAt = new Date().toISOString();
save();
log(`raw results: ${out}`);
process.exit(failed ? 1 : 0);
