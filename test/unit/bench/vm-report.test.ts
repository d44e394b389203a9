// bench:vm's host side (bench/vm/run.mjs): the report from a raw results file, and its usage errors.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { findPackageRoot } from '../../../src/sys/native.js';

const ROOT = findPackageRoot(path.dirname(fileURLToPath(import.meta.url)));
const RUN = path.join(ROOT, 'bench/vm/run.mjs');

/** Rounds of one workload: ours and the peer's IOPS per round. */
function runs(workload: string, ours: number[], peer: number[], peerId: string, phase?: 'warm' | 'fresh') {
  const one = (contender: string, iops: number, round: number) => ({
    workload,
    round,
    contender,
    ...(phase !== undefined ? { phase } : {}),
    iops,
    bwBytes: iops * 4096,
    latMeanUs: 100,
    latP99Us: 200,
    ios: 1000,
    daemonCpuS: 1,
    guestBusy: 0.5,
  });
  return ours.flatMap((iops, round) => [one('project', iops, round), one(peerId, peer[round]!, round)]);
}

function conditions(accel: string) {
  return {
    kernel: '6.12.0-test',
    cpus: 2,
    memMiB: 2000,
    node: 'v20',
    qsd: 'qsd 7.2',
    fio: 'fio-3.33',
    nbdkit: 'nbdkit 1.32',
    runtimeS: 5,
    freshRuntimeS: 10,
    fresh: ['randread-4k-qd1'],
    warmupS: 4,
    rampS: 1,
    rounds: 3,
    queues: 2,
    queueSize: 256,
    logicalBlockSize: 512,
    profile: false,
    nodeArgs: [],
    daemonArgs: [],
    baselineDaemonArgs: [],
    baseline: null,
    accel,
  };
}

const contenders = [
  { id: 'project', label: 'vduse-ts', device: '/dev/vda' },
  { id: 'qsd', label: 'qemu-storage-daemon', device: '/dev/vdb' },
];

/** Runs `--report` on `raw` and hands the printed table to `check`; the files it writes are removed again. */
function withReport(raw: { startedAt: string }, check: (stdout: string, written: string[]) => void): void {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-report-'));
  const file = path.join(dir, 'raw.json');
  fs.writeFileSync(file, JSON.stringify(raw));
  const stamp = raw.startedAt.replace(/[:.]/g, '-');
  const written = ['json', 'md', 'svg'].map((ext) => path.join(ROOT, 'bench/results', `vm-${stamp}.${ext}`));
  // the report also rewrites vm-latest.*: keep a user's latest results
  const latest = ['json', 'md', 'svg'].map((ext) => path.join(ROOT, 'bench/results', `vm-latest.${ext}`));
  const kept = latest.map((f) => (fs.existsSync(f) ? fs.readFileSync(f) : null));
  try {
    const r = run(['--report', file]);
    assert.equal(r.status, 0, r.stderr);
    check(r.stdout, written);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
    for (const f of written) fs.rmSync(f, { force: true });
    latest.forEach((f, i) => {
      const before = kept[i];
      if (before == null) fs.rmSync(f, { force: true });
      else fs.writeFileSync(f, before);
    });
  }
}

const rowOf = (stdout: string, title: string) =>
  stdout.split('\n').find((l) => l.includes(`| ${title} |`)) ?? '';

function run(args: string[]) {
  return spawnSync(process.execPath, [RUN, ...args], { cwd: ROOT, encoding: 'utf8' });
}

describe('bench:vm report', () => {
  it('per accelerator: the median of the per-round ratios with their spread, each checked against the target', () => {
    const startedAt = `2000-01-01T00:00:${String(process.pid % 60).padStart(2, '0')}.000Z`;
    const raw = {
      format: 2,
      startedAt,
      finishedAt: startedAt,
      commit: 'abc1234',
      accels: [
        {
          accel: 'tcg,thread=single',
          raw: {
            startedAt,
            conditions: conditions('tcg,thread=single'),
            cases: [
              {
                id: 'null',
                peer: 'qsd',
                contenders,
                error: null,
                runs: [
                  // ratios 0.5, 0.25, 0.75: median 0.50, below 1.0
                  ...runs('randread-4k-qd1', [500, 250, 750], [1000, 1000, 1000], 'qsd', 'warm'),
                  // fresh: ours 400 (median) over warm 500 = 0.80, just on the 0.8 target
                  ...runs('randread-4k-qd1', [400, 300, 450], [1000, 1000, 1000], 'qsd', 'fresh'),
                  // ratios 1.2, 1.4, 1.35: median 1.35, above the 2-job row's 1.3
                  ...runs('randread-4k-qd32-2j', [1200, 1400, 1350], [1000, 1000, 1000], 'qsd', 'warm'),
                ],
              },
            ],
          },
        },
        {
          accel: 'tcg,thread=multi',
          raw: {
            startedAt,
            conditions: conditions('tcg,thread=multi'),
            cases: [
              {
                id: 'null',
                peer: 'qsd',
                contenders,
                error: null,
                runs: [
                  // ratios 1.1, 1.0, 1.2: median 1.10 (but the single row misses: the row misses)
                  ...runs('randread-4k-qd1', [1100, 1000, 1200], [1000, 1000, 1000], 'qsd', 'warm'),
                  // fresh: 550 over 1100 = 0.50, below 0.8
                  ...runs('randread-4k-qd1', [550, 500, 600], [1000, 1000, 1000], 'qsd', 'fresh'),
                  // ratios 1.0, 1.2, 1.25: median 1.20, below 1.3
                  ...runs('randread-4k-qd32-2j', [1000, 1200, 1250], [1000, 1000, 1000], 'qsd', 'warm'),
                ],
              },
            ],
          },
        },
      ],
    };
    withReport(raw, (stdout, written) => {
      assert.match(stdout, /Commit abc1234\./);
      assert.match(stdout, /`tcg,thread=single` and `tcg,thread=multi`/);
      assert.match(stdout, /both daemons run with their defaults/);
      const qd1 = rowOf(stdout, '4K randread QD1');
      assert.match(
        qd1,
        /\| 1\.0 \| 500 \/ 1,000 IOPS \| \*\*0\.50\*\* ✗ \[0\.25–0\.75\] \| 1,000\.0 \/ 1,000\.0 \|/,
      );
      assert.match(qd1, /\| 1,100 \/ 1,000 IOPS \| \*\*1\.10\*\* ✓ \[1\.00–1\.20\] \|/);
      const fresh = rowOf(stdout, '4K randread QD1, fresh daemon');
      assert.match(fresh, /\| 0\.8 \| 400 \/ 1,000 IOPS \| \*\*0\.40\*\* \[0\.30–0\.45\] \|/);
      assert.match(fresh, /\| 0\.80 ✓ \/ 0\.50 ✗ \|$/);
      const twoJobs = rowOf(stdout, '4K randread 2 jobs x QD32');
      assert.match(twoJobs, /\*\*1\.35\*\* ✓ \[1\.20–1\.40\]/);
      assert.match(twoJobs, /\*\*1\.20\*\* ✗ \[1\.00–1\.25\]/);
      for (const f of written) assert.ok(fs.existsSync(f), `${f} written`);
      const json = JSON.parse(fs.readFileSync(written[0]!, 'utf8')) as { summary: { met: boolean | null }[] };
      assert.deepEqual(
        json.summary.map((r) => r.met),
        [false, false, false],
      );
      assert.match(fs.readFileSync(written[2]!, 'utf8'), /^<svg[\s\S]*single TCG[\s\S]*<\/svg>\s*$/);
    });
  });

  it('reads a raw file of the older one-accelerator format', () => {
    const startedAt = `2000-01-01T00:01:${String(process.pid % 60).padStart(2, '0')}.000Z`;
    const raw = {
      startedAt,
      finishedAt: startedAt,
      conditions: {
        ...conditions('tcg,thread=multi'),
        daemonArgs: ['--queue-threads', '2'],
        fresh: undefined,
      },
      cases: [
        {
          id: 'null',
          peer: 'qsd',
          contenders,
          error: null,
          runs: runs('randread-4k-qd1', [1200, 1300, 1100], [1000, 1000, 1000], 'qsd'),
        },
      ],
    };
    withReport(raw, (stdout) => {
      assert.match(stdout, /ours run with `--queue-threads 2`/);
      assert.match(rowOf(stdout, '4K randread QD1'), /\*\*1\.20\*\* ✓ \[1\.10–1\.30\]/);
      assert.equal(rowOf(stdout, '4K randread QD1, fresh daemon'), '');
    });
  });

  it('refuses an unknown accelerator in one line, exit 2', () => {
    const r = run(['--accel', 'kvm;rm -rf']);
    assert.equal(r.status, 2);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /^bench:vm: --accel/);
  });

  it('refuses a bad option in one line, exit 2', () => {
    const r = run(['--rounds', '0']);
    assert.equal(r.status, 2);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /^bench:vm: --rounds/);
  });
});
