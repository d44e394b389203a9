#!/usr/bin/env node
// npm run bench:vhost-user -- [options]: our vhost-user-blk export (vduse blk --vhost-user) against
// qemu-storage-daemon's (--export type=vhost-user-blk), both serving the test VM's vhost-user-blk-pci devices
// from the host, on the same backends (null; a raw file on the host's tmpfs) and the same guest. fio runs in the
// guest; contenders alternate round by round, each round on freshly started daemons. One VM boot per
// accelerator. Prints a table and writes bench/results/vhost-user-<time>.{json,md} and vhost-user-latest.*.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const RESULTS = path.join(ROOT, 'bench/results');

const USAGE = `Usage: npm run bench:vhost-user -- [options]

Options (environment variable in brackets):
  --runtime S        seconds of each fio run (default 3) [VDUSE_BENCH_RUNTIME]
  --ramp S           fio ramp time in seconds (default 0.5)
  --rounds N         rounds, at least 1 (default 5) [VDUSE_BENCH_ROUNDS]
  --accel A          both (default: tcg,thread=single and tcg,thread=multi, one boot each), single, multi
                     [VDUSE_BENCH_ACCEL]
  --contenders A,B   the two servers compared, ours and/or qsd (default ours,qsd; qsd,qsd checks the harness:
                     its ratios should be ~1)
  --size MIB         device size in MiB (default 256)
  --dist DIR         build directory of the project (default dist)
  -h, --help         this text

Workloads: 4K randread QD1 and QD32, 128K sequential read QD8; fio libaio, direct=1, time based, 2 queues.`;

const WORKLOADS = [
  { id: 'randread-4k-qd1', title: '4K randread QD1', rw: 'randread', bs: '4k', iodepth: 1 },
  { id: 'randread-4k-qd32', title: '4K randread QD32', rw: 'randread', bs: '4k', iodepth: 32 },
  { id: 'read-128k-qd8', title: '128K seq read QD8', rw: 'read', bs: '128k', iodepth: 8 },
];
const BACKENDS = [
  { id: 'null', title: 'null' },
  { id: 'file', title: 'raw file on host tmpfs' },
];
const ACCELS = { single: 'tcg,thread=single', multi: 'tcg,thread=multi' };
const LABELS = { ours: 'vduse-ts', qsd: 'qemu-storage-daemon' };

function parseArgs(argv) {
  const env = process.env;
  const o = {
    runtime: env.VDUSE_BENCH_RUNTIME ?? '3',
    ramp: '0.5',
    rounds: env.VDUSE_BENCH_ROUNDS ?? '5',
    accel: env.VDUSE_BENCH_ACCEL ?? 'both',
    contenders: 'ours,qsd',
    size: '256',
    dist: 'dist',
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '-h' || a === '--help') {
      console.log(USAGE);
      process.exit(0);
    }
    const key =
      { '--runtime': 'runtime', '--ramp': 'ramp', '--rounds': 'rounds', '--accel': 'accel' }[a] ??
      { '--contenders': 'contenders', '--size': 'size', '--dist': 'dist' }[a];
    if (!key) throw new Error(`unknown option ${a} (see --help)`);
    const v = argv[++i];
    if (v === undefined) throw new Error(`${a} needs a value`);
    o[key] = v;
  }
  const num = (k, min) => {
    const v = Number(o[k]);
    if (!Number.isFinite(v) || v < min) throw new Error(`--${k} must be a number >= ${min}`);
    return v;
  };
  const accels =
    o.accel === 'both' ? [ACCELS.single, ACCELS.multi] : ACCELS[o.accel] ? [ACCELS[o.accel]] : null;
  if (!accels) throw new Error(`--accel: both, single or multi, not ${o.accel}`);
  const contenders = o.contenders.split(',');
  if (contenders.length !== 2 || contenders.some((c) => !LABELS[c]))
    throw new Error('--contenders: two of ours, qsd (e.g. ours,qsd)');
  return {
    runtime: num('runtime', 1),
    ramp: num('ramp', 0),
    rounds: Math.floor(num('rounds', 1)),
    sizeMiB: Math.floor(num('size', 16)),
    accels,
    contenders,
    dist: path.resolve(ROOT, o.dist),
  };
}

const median = (xs) => {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/** utime + stime of `pid` in seconds (Linux /proc), NaN when it is gone. */
function cpuSeconds(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return NaN;
  }
}

async function benchOneAccel(lib, o, accel, dir) {
  const bytes = o.sizeMiB << 20;
  // one device per contender and backend: a vhost-user socket serves one VMM connection, and each server keeps
  // its own inflight region, so contenders never share a device
  const devices = [];
  let slot = 0x10;
  o.contenders.forEach((kind, ci) => {
    for (const b of BACKENDS) {
      const id = `vub-${ci}-${kind}-${b.id}`;
      const spec = { id, socket: path.join(dir, `${id}.sock`) };
      if (b.id === 'null') spec.nullBytes = bytes;
      else {
        spec.file = path.join('/dev/shm', `${id}-${process.pid}.img`);
        fs.writeFileSync(spec.file, '');
        fs.truncateSync(spec.file, bytes);
      }
      devices.push({ ci, kind, backend: b.id, spec, slot: slot++, server: lib.vhostUserServer(kind, spec) });
    }
  });
  try {
    // the file backends get real data (not holes), written once through the guest below
    await Promise.all(devices.map((d) => d.server.start()));
    const qemuArgs = devices.flatMap((d) => lib.vhostUserBlkQemuArgs(d.spec.id, d.spec.socket, d.slot, 2));
    const vm = await lib.HostVm.boot({ qemuArgs, accel, memMiB: 1024 });
    const runs = [];
    try {
      const kernel = (await vm.sh('uname -r')).trim();
      const fioVersion = (await vm.sh('fio --version')).trim();
      for (const d of devices) {
        const pci = `/sys/bus/pci/devices/0000:00:${d.slot.toString(16)}.0`;
        d.dev = `/dev/${(await vm.sh(`ls ${pci}/virtio*/block`)).trim()}`;
        await vm.sh(`echo none > /sys/block/${path.basename(d.dev)}/queue/scheduler`);
        if (d.backend === 'file')
          await vm.sh(
            `dd if=/dev/urandom of=${d.dev} bs=1M count=${o.sizeMiB} oflag=direct status=none`,
            300_000,
          );
      }
      for (let round = 0; round < o.rounds; round++) {
        const order = round % 2 === 0 ? [0, 1] : [1, 0];
        for (const ci of order) {
          for (const b of BACKENDS) {
            const d = devices.find((x) => x.ci === ci && x.backend === b.id);
            // a fresh daemon: stop, start with the same arguments; QEMU reconnects (reconnect=1)
            await d.server.stop();
            await d.server.start();
            await vm.sh(`dd if=${d.dev} of=/dev/null bs=4k count=1 iflag=direct status=none`, 60_000);
            for (const w of WORKLOADS) {
              const cpu0 = cpuSeconds(d.server.pid);
              const out = await vm.sh(
                [
                  'fio --name=b',
                  `--filename=${d.dev}`,
                  '--ioengine=libaio --direct=1 --time_based --output-format=json',
                  `--rw=${w.rw} --bs=${w.bs} --iodepth=${w.iodepth}`,
                  `--runtime=${o.runtime} --ramp_time=${o.ramp}`,
                ].join(' '),
                (o.runtime + o.ramp) * 1000 + 60_000,
              );
              const cpu = cpuSeconds(d.server.pid) - cpu0;
              const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0].read;
              const ios = job.total_ios ?? job.io_bytes / (w.bs === '4k' ? 4096 : 131072);
              runs.push({
                round,
                contender: ci,
                kind: d.kind,
                backend: b.id,
                workload: w.id,
                iops: job.iops,
                bwBytes: job.bw_bytes,
                latMeanUs: job.lat_ns.mean / 1000,
                daemonCpuUsPerIo: (cpu / Math.max(1, ios)) * 1e6,
              });
              process.stderr.write(
                `bench: ${accel} round ${round + 1}/${o.rounds} ${LABELS[d.kind]} ${b.id} ${w.id}: ${Math.round(job.iops)} IOPS\n`,
              );
            }
          }
        }
      }
      return { accel, kernel, fio: fioVersion, runs };
    } finally {
      await vm.shutdown();
    }
  } finally {
    await Promise.all(devices.map((d) => d.server.stop()));
    for (const d of devices) if (d.spec.file) fs.rmSync(d.spec.file, { force: true });
  }
}

export function summarize(result) {
  const rows = [];
  for (const b of BACKENDS) {
    for (const w of WORKLOADS) {
      const row = { backend: b, workload: w, byAccel: {} };
      for (const a of result.accels) {
        const pick = (ci) =>
          a.runs.filter((r) => r.backend === b.id && r.workload === w.id && r.contender === ci);
        const mine = pick(0);
        const peer = pick(1);
        const ratios = mine
          .map((m) => [m, peer.find((p) => p.round === m.round)])
          .filter(([, p]) => p && p.iops > 0)
          .map(([m, p]) => m.iops / p.iops);
        const value = (r) => (w.bs === '4k' ? r.iops : r.bwBytes / 1e6);
        row.byAccel[a.accel] = {
          a: median(mine.map(value)),
          b: median(peer.map(value)),
          cpuA: median(mine.map((r) => r.daemonCpuUsPerIo)),
          cpuB: median(peer.map((r) => r.daemonCpuUsPerIo)),
          ratio: median(ratios),
          min: ratios.length ? Math.min(...ratios) : NaN,
          max: ratios.length ? Math.max(...ratios) : NaN,
        };
      }
      rows.push(row);
    }
  }
  return rows;
}

const fmt = (v, d = 0) =>
  Number.isFinite(v)
    ? v.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d })
    : '–';

export function markdown(result) {
  const { contenders, accels } = result;
  const [A, B] = contenders.map(
    (c, i) => `${LABELS[c]}${contenders[0] === contenders[1] ? ` #${i + 1}` : ''}`,
  );
  const rows = summarize(result);
  const first = accels[0];
  const lines = [
    `## vhost-user-blk: ${A} vs ${B} (${result.startedAt.slice(0, 16)}Z)`,
    '',
    `Commit ${result.commit}. Guest: Linux ${first?.kernel}, 2 vCPUs, 1024 MiB (shared memfd), QEMU 7.2 vhost-user-blk-pci (2 queues) under ${accels.map((a) => `\`${a.accel}\``).join(' and ')} (one boot each); ${first?.fio}. Servers on the host, one device per server and backend (${result.sizeMiB} MiB: null; a raw file in /dev/shm filled with random data). fio libaio, direct=1, scheduler none, time based ${result.runtimeS} s (+${result.rampS} s ramp), ${result.rounds} round(s), contenders alternating, both daemons restarted every round, default options.`,
    '',
  ];
  const head = ['backend', 'workload'];
  const align = ['---', '---'];
  for (const a of accels) {
    const n = /thread=(\w+)/.exec(a.accel)?.[1] ?? a.accel;
    head.push(`${A} / ${B} (${n} TCG)`, `ratio ${n}: median [min–max]`, `daemon CPU µs/IO (${n})`);
    align.push('---:', '---:', '---:');
  }
  lines.push(`| ${head.join(' | ')} |`, `|${align.join('|')}|`);
  for (const r of rows) {
    const unit = r.workload.bs === '4k' ? 'IOPS' : 'MB/s';
    const d = unit === 'MB/s' ? 1 : 0;
    const cells = [r.backend.title, r.workload.title];
    for (const a of accels) {
      const st = r.byAccel[a.accel];
      cells.push(
        `${fmt(st.a, d)} / ${fmt(st.b, d)} ${unit}`,
        `**${fmt(st.ratio, 2)}** [${fmt(st.min, 2)}–${fmt(st.max, 2)}]`,
        `${fmt(st.cpuA, 1)} / ${fmt(st.cpuB, 1)}`,
      );
    }
    lines.push(`| ${cells.join(' | ')} |`);
  }
  for (const e of result.errors ?? []) lines.push('', `- ${e}`);
  lines.push(
    '',
    `Ratio = ${A} / ${B} (IOPS), per round, median over rounds, [lowest–highest round]. Daemon CPU: user+system time of the server process during the fio run over the I/Os done. Under TCG the guest's CPU is emulated, so the numbers compare the two servers, not real hardware.`,
  );
  return lines.join('\n') + '\n';
}

function commitOf() {
  const git = (...args) => spawnSync('git', args, { cwd: ROOT, encoding: 'utf8' });
  const head = git('rev-parse', '--short', 'HEAD');
  if (head.status !== 0) return 'unknown';
  const dirty = git('status', '--porcelain', '--', '.', ':!bench/results').stdout.trim() !== '';
  return `${head.stdout.trim()}${dirty ? '-dirty' : ''}`;
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const lib = await import(pathToFileURL(path.join(o.dist, 'test/e2e/lib/index.js')).href);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vduse-bench-vu-'));
  const result = {
    format: 1,
    startedAt: new Date().toISOString(),
    commit: commitOf(),
    contenders: o.contenders,
    runtimeS: o.runtime,
    rampS: o.ramp,
    rounds: o.rounds,
    sizeMiB: o.sizeMiB,
    accels: [],
    errors: [],
  };
  try {
    for (const accel of o.accels) {
      try {
        result.accels.push(await benchOneAccel(lib, o, accel, dir));
      } catch (e) {
        result.errors.push(
          `${accel}: ${e instanceof Error ? e.message.split('\n').slice(0, 6).join(' | ') : e}`,
        );
        process.stderr.write(`bench: ${accel} failed: ${e instanceof Error ? e.message : e}\n`);
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  result.finishedAt = new Date().toISOString();
  if (result.accels.length === 0) {
    process.stderr.write('bench:vhost-user: no accelerator produced results\n');
    return 1;
  }
  const md = markdown(result);
  process.stdout.write('\n' + md);
  fs.mkdirSync(RESULTS, { recursive: true });
  const stamp = result.startedAt.replace(/[:.]/g, '-');
  for (const base of [`vhost-user-${stamp}`, 'vhost-user-latest']) {
    fs.writeFileSync(path.join(RESULTS, `${base}.json`), JSON.stringify(result, null, 2) + '\n');
    fs.writeFileSync(path.join(RESULTS, `${base}.md`), md);
  }
  process.stderr.write(`bench: results in bench/results/vhost-user-${stamp}.{json,md}\n`);
  return result.errors.length ? 1 : 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(fs.realpathSync(process.argv[1])).href) {
  main().then(
    (c) => (process.exitCode = c),
    (e) => {
      process.stderr.write(`bench:vhost-user: ${e instanceof Error ? e.message : e}\n`);
      process.exitCode = 1;
    },
  );
}
