// What the guest-side block benchmarks (bench/vm/guest.mjs for bench:vm, bench/vm/cpu-probe-guest.mjs for
// cpu-probe) share: running a command, fio's arguments and its JSON result, and starting the two daemons (ours,
// `vduse blk`, and qemu-storage-daemon's vduse-blk export) with the devices' common shape.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const read = (p) => {
  try {
    return fs.readFileSync(p, 'utf8');
  } catch {
    return null;
  }
};
const log = (m) => process.stderr.write(`[guest-lib] ${m}\n`);

/** Run `cmd args` to its end (killed after `timeoutMs`): { code, signal, stdout, stderr }; never rejects. */
export function run(cmd, args, { timeoutMs = 120_000, input } = {}) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    if (input !== undefined) child.stdin.end(input);
    const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => {
      clearTimeout(t);
      resolve({ code: -1, stdout, stderr: `${stderr}${e.message}` });
    });
    child.on('exit', (code, signal) => {
      clearTimeout(t);
      resolve({ code: code ?? -1, signal, stdout, stderr });
    });
  });
}

/** run(), throwing when the command fails. */
export async function runOk(cmd, args, opts) {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
  return r;
}

/**
 * fio's arguments for workload `w` ({ rw, bs, iodepth, numjobs }) on `devPath`: libaio, direct, time based over
 * `seconds` (+ `ramp`), random offsets without a map, JSON output. Several jobs are pinned one per vCPU.
 */
export function fioArgs(devPath, w, { seconds, ramp = 0, name = 'bench' }) {
  const numjobs = w.numjobs ?? 1;
  const args = [
    `--name=${name}`,
    `--filename=${devPath}`,
    '--direct=1',
    '--ioengine=libaio',
    `--rw=${w.rw}`,
    `--bs=${w.bs ?? '4k'}`,
    `--iodepth=${w.iodepth}`,
    `--numjobs=${numjobs}`,
    '--group_reporting',
    '--time_based',
    `--runtime=${seconds}`,
    ...(ramp > 0 ? [`--ramp_time=${ramp}`] : []),
    '--norandommap',
    '--randrepeat=0',
    '--output-format=json',
  ];
  if (numjobs > 1)
    args.push(`--cpus_allowed=0-${Math.min(numjobs, os.cpus().length) - 1}`, '--cpus_allowed_policy=split');
  return args;
}

/** Run fio (fioArgs) and return the measured side: IOPS, bandwidth, latency, I/O count, fio's own CPU. */
export async function fio(devPath, w, { seconds, ramp = 0, name } = {}) {
  const r = await runOk('fio', fioArgs(devPath, w, { seconds, ramp, name }), {
    timeoutMs: (seconds + ramp + 60) * 1000,
  });
  const job = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))).jobs[0];
  const side = w.rw.includes('read') ? job.read : job.write;
  return {
    iops: side.iops,
    bwBytes: side.bw_bytes,
    latMeanUs: side.clat_ns.mean / 1000,
    latP99Us: (side.clat_ns.percentile?.['99.000000'] ?? 0) / 1000,
    ios: side.total_ios,
    usrCpu: job.usr_cpu,
    sysCpu: job.sys_cpu,
  };
}

/**
 * Our daemon: `vduse blk --name NAME --backend BACKEND` with the devices' common shape, run by `node NODEARGS
 * CLI` (a build's src/cli/main.js). `VduseDaemon` is the e2e helper class of the build that drives it.
 * `profileDir`: node --cpu-prof into it. start() resolves the block device's path; pid/path are set on it.
 */
export function projectDaemon({
  VduseDaemon,
  cli,
  name,
  backend,
  queues,
  queueSize,
  id = 'project',
  label = 'vduse-ts',
  nodeArgs = [],
  args = [],
  env = {},
  profileDir = null,
  readyMs = 60_000,
  log = () => {},
}) {
  let d = null;
  return {
    id,
    label,
    backendSpec: backend,
    pid: 0,
    path: null,
    async start() {
      const daemonArgs = [
        '--name',
        name,
        '--backend',
        backend,
        '--queues',
        String(queues),
        '--queue-size',
        String(queueSize),
        '--logical-block-size',
        '512',
        ...args,
      ];
      const node = [...nodeArgs];
      if (profileDir) {
        // --cpu-prof is not allowed in NODE_OPTIONS: node gets it on its command line (written at exit)
        fs.mkdirSync(profileDir, { recursive: true });
        node.push(
          '--cpu-prof',
          `--cpu-prof-dir=${profileDir}`,
          `--cpu-prof-name=${name}-${Date.now()}.cpuprofile`,
        );
      }
      d = new VduseDaemon(
        spawn(process.execPath, [...node, cli, 'blk', ...daemonArgs], {
          stdio: ['ignore', 'pipe', 'pipe'],
          env: { ...process.env, ...env },
        }),
        daemonArgs,
      );
      await d.ready(readyMs);
      this.pid = d.child.pid;
      this.path = d.path;
      return d.path;
    },
    async stop() {
      if (!d) return;
      const e = await d.stop('SIGINT', 60_000);
      if (e.code !== 0) log(`vduse blk ${name} exited ${e.code ?? e.signal}: ${e.stderr.trim()}`);
      d = null;
    },
  };
}

/** qemu-storage-daemon's vduse-blk export of `blockdev` (the e2e `lib` of a build), with the common shape. */
export function qsdDaemon({ lib, name, blockdev, queues, queueSize }) {
  let q = null;
  return {
    id: 'qsd',
    label: 'qemu-storage-daemon',
    pid: 0,
    path: null,
    async start() {
      q = await lib.QemuStorageDaemon.start({
        name,
        blockdev,
        numQueues: queues,
        queueSize,
        exportOptions: { 'logical-block-size': 512 },
      });
      this.pid = q.pid;
      await lib.vdpaDevAdd(name);
      const dev = await lib.waitForBlockDevice(name);
      this.path = dev.path;
      return dev.path;
    },
    async stop() {
      if (!q) return;
      if (lib.vdpaDevExists(name)) await lib.vdpaDevDel(name);
      await q.stop();
      q = null;
    },
  };
}

// ------------------------------------------------------------------------------------ device and its requests

/** What the guest made of the device: its queue limits and the virtio features it negotiated. */
export function deviceLimits(devPath) {
  const name = path.basename(devPath);
  const q = `/sys/block/${name}/queue`;
  const limits = {};
  for (const f of [
    'max_segments',
    'max_segment_size',
    'max_sectors_kb',
    'max_hw_sectors_kb',
    'logical_block_size',
    'physical_block_size',
    'minimum_io_size',
    'optimal_io_size',
    'nr_requests',
    'max_discard_segments',
    'virt_boundary_mask',
    'dma_alignment',
  ]) {
    const v = read(`${q}/${f}`);
    if (v !== null) limits[f] = v.trim();
  }
  // /sys/block/vdX/device is the virtio device: its negotiated feature bits, as a string of 0/1 per bit
  const features = (read(`/sys/block/${name}/device/features`) ?? '').trim();
  const bits = [];
  for (let i = 0; i < features.length; i++) if (features[i] === '1') bits.push(i);
  limits.featureBits = bits.join(',');
  limits.mq = fs.existsSync(`/sys/block/${name}/mq`) ? fs.readdirSync(`/sys/block/${name}/mq`).length : 0;
  return limits;
}

/** /sys/block/X/stat: completed reads/writes, merges and sectors. */
export function blockStat(devPath) {
  const f = (read(`/sys/block/${path.basename(devPath)}/stat`) ?? '').trim().split(/\s+/).map(Number);
  return {
    reads: f[0],
    readMerges: f[1],
    readSectors: f[2],
    writes: f[4],
    writeMerges: f[5],
    writeSectors: f[6],
  };
}

const TRACING = ['/sys/kernel/tracing', '/sys/kernel/debug/tracing'];

/** The tracefs directory with kprobe events (mounted when it is not yet), or undefined. */
async function tracefsDir() {
  const find = () => TRACING.find((d) => fs.existsSync(`${d}/kprobe_events`));
  const found = find();
  if (found) return found;
  await run('mount', ['-t', 'tracefs', 'nodev', '/sys/kernel/tracing']);
  return find();
}

/**
 * A histogram of data segments per block request over a run: a kretprobe on the block layer's request mapper
 * (`__blk_rq_map_sg`, which virtio-blk calls once per request; its return value is the number of scatterlist
 * entries) with a hist trigger keyed by the return value. start() returns null when tracing is not available.
 */
export async function segmentHistogram() {
  const dir = await tracefsDir();
  if (!dir) return { error: 'no tracefs' };
  for (const fn of ['__blk_rq_map_sg', 'blk_rq_map_sg']) {
    try {
      fs.appendFileSync(`${dir}/kprobe_events`, `r:vdprobe_segs ${fn} ret=$retval:s32\n`);
    } catch {
      continue;
    }
    const ev = `${dir}/events/kprobes/vdprobe_segs`;
    try {
      fs.writeFileSync(`${ev}/trigger`, 'hist:keys=ret:vals=hitcount:sort=ret');
      fs.writeFileSync(`${ev}/enable`, '1');
    } catch (e) {
      fs.appendFileSync(`${dir}/kprobe_events`, '-:vdprobe_segs\n');
      return { error: `hist trigger: ${e.message}` };
    }
    return {
      fn,
      stop() {
        const text = read(`${ev}/hist`) ?? '';
        const hist = {};
        for (const m of text.matchAll(/\{\s*ret:\s*(-?\d+)\s*\}\s*hitcount:\s*(\d+)/g))
          hist[m[1]] = Number(m[2]);
        try {
          fs.writeFileSync(`${ev}/enable`, '0');
          fs.writeFileSync(`${ev}/trigger`, '!hist:keys=ret:vals=hitcount:sort=ret');
          fs.appendFileSync(`${dir}/kprobe_events`, '-:vdprobe_segs\n');
        } catch (e) {
          log(`removing the kretprobe: ${e.message}`);
        }
        return { fn, hist };
      },
    };
  }
  return { error: 'no kretprobe on __blk_rq_map_sg / blk_rq_map_sg' };
}

/**
 * Whether consecutive data segments get adjacent bounce addresses: a kretprobe on VDUSE's dma map_page
 * (`vduse_dev_map_page`, once per segment; its return value is the IOVA) traced over a run, and the commonest
 * differences between consecutive IOVAs mapped on the same CPU (+4096 / -4096: adjacent pages). start() returns
 * { error } when it cannot be traced.
 */
export async function iovaTrace() {
  const dir = await tracefsDir();
  if (!dir) return { error: 'no tracefs' };
  const ev = `${dir}/events/kprobes/vdprobe_iova`;
  try {
    fs.appendFileSync(`${dir}/kprobe_events`, 'r:vdprobe_iova vduse_dev_map_page ret=$retval:x64\n');
    fs.writeFileSync(`${dir}/trace`, '');
    fs.writeFileSync(`${ev}/enable`, '1');
    // the ring buffer records only while tracing is on (the first probe run counted no event at all)
    fs.writeFileSync(`${dir}/tracing_on`, '1');
  } catch (e) {
    return { error: `kretprobe on vduse_dev_map_page: ${e.message}` };
  }
  return {
    stop() {
      try {
        fs.writeFileSync(`${ev}/enable`, '0');
      } catch {
        // reported below if the trace is empty
      }
      const text = read(`${dir}/trace`) ?? '';
      const on = (read(`${dir}/tracing_on`) ?? '?').trim();
      try {
        fs.writeFileSync(`${dir}/trace`, '');
        fs.appendFileSync(`${dir}/kprobe_events`, '-:vdprobe_iova\n');
      } catch (e) {
        log(`removing the kretprobe: ${e.message}`);
      }
      if (!/vdprobe_iova/.test(text)) return { error: `no event traced (tracing_on ${on})` };
      return iovaStats(text);
    },
  };
}

/** Differences between consecutive traced IOVAs per CPU: { maps, pairs, diffs: [[diff, count] ...] }. */
export function iovaStats(text) {
  const last = new Map();
  const diffs = new Map();
  let maps = 0;
  let pairs = 0;
  for (const m of text.matchAll(/\[(\d+)\][^\n]*?vdprobe_iova:[^\n]*?ret=0x([0-9a-f]+)/g)) {
    const cpu = m[1];
    const iova = parseInt(m[2], 16);
    maps++;
    const prev = last.get(cpu);
    last.set(cpu, iova);
    if (prev === undefined) continue;
    pairs++;
    const d = iova - prev;
    diffs.set(d, (diffs.get(d) ?? 0) + 1);
  }
  const top = [...diffs.entries()].sort((a, b) => b[1] - a[1]).slice(0, 6);
  return { maps, pairs, diffs: top };
}

/** Clock ticks per second of /proc's utime and stime. */
export const CLK_TCK = 100;

/** Per thread of `pid`: comm, utime/stime (s), schedstat run time and wait (s), timeslices, context switches. */
export function threadStats(pid) {
  const outT = {};
  let tids = [];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return outT;
  }
  for (const tid of tids) {
    const base = `/proc/${pid}/task/${tid}`;
    const stat = read(`${base}/stat`);
    if (stat === null) continue;
    const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const sched = (read(`${base}/schedstat`) ?? '0 0 0').trim().split(/\s+/).map(Number);
    const status = read(`${base}/status`) ?? '';
    const num = (re) => Number(re.exec(status)?.[1] ?? 0);
    outT[tid] = {
      comm,
      utime: Number(f[11]) / CLK_TCK,
      stime: Number(f[12]) / CLK_TCK,
      runS: sched[0] / 1e9,
      waitS: sched[1] / 1e9,
      slices: sched[2],
      vcsw: num(/voluntary_ctxt_switches:\s+(\d+)/),
      nvcsw: num(/nonvoluntary_ctxt_switches:\s+(\d+)/),
      cpu: Number(f[36]),
    };
  }
  return outT;
}

/**
 * A one-node Ceph cluster (test/unit/rbd/cluster.ts, bluestore) with one image `rbd/bench` of `bytes`, every
 * object written once so that reads measure data and not absent objects, then read once. Both contenders open
 * that image: ours through `spec`, qemu-storage-daemon through `blockdev`. stop() ends the cluster.
 */
export async function startRbdBench(dist, bytes) {
  const { CephCluster, cephMissing } = await import(
    pathToFileURL(path.join(dist, 'test/unit/rbd/cluster.js')).href
  );
  const absent = cephMissing();
  if (absent !== null) throw new Error(`the rbd case needs Ceph (${absent} is missing)`);
  const cluster = await CephCluster.start({ store: 'bluestore' });
  try {
    await cluster.rbd('create', '--size', String(bytes >> 20), 'rbd/bench');
    // write every object once, then read it once: the first contender would otherwise meet a colder OSD
    for (const type of ['write', 'read'])
      await cluster.rbd(
        'bench',
        '--io-type',
        type,
        '--io-size',
        '4M',
        '--io-total',
        String(bytes),
        'rbd/bench',
      );
  } catch (e) {
    await cluster.stop();
    throw e;
  }
  return {
    spec: `rbd:rbd/bench,conf=${cluster.conf}`,
    blockdev: { driver: 'rbd', 'node-name': 'r0', pool: 'rbd', image: 'bench', conf: cluster.conf },
    stop: () => cluster.stop(),
  };
}
