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

/** Three rounds of one workload: ours and the peer's IOPS per round. */
function runs(workload: string, ours: number[], peer: number[], peerId: string) {
  return ours.flatMap((iops, round) => [
    {
      workload,
      round,
      contender: 'project',
      iops,
      bwBytes: iops * 4096,
      latMeanUs: 100,
      latP99Us: 200,
      ios: 1,
      daemonCpuS: 1,
      guestBusy: 0.5,
    },
    {
      workload,
      round,
      contender: peerId,
      iops: peer[round]!,
      bwBytes: peer[round]! * 4096,
      latMeanUs: 100,
      latP99Us: 200,
      ios: 1,
      daemonCpuS: 1,
      guestBusy: 0.5,
    },
  ]);
}

function run(args: string[]) {
  return spawnSync(process.execPath, [RUN, ...args], { cwd: ROOT, encoding: 'utf8' });
}

describe('bench:vm report', () => {
  it('gives the median of the per-round ratios, checks each row against its target, names our options', () => {
    const startedAt = `2000-01-01T00:00:${String(process.pid % 60).padStart(2, '0')}.000Z`;
    const raw = {
      startedAt,
      finishedAt: startedAt,
      conditions: {
        kernel: '6.12.0-test',
        cpus: 2,
        memMiB: 2000,
        node: 'v20',
        qsd: 'qsd 7.2',
        fio: 'fio-3.33',
        nbdkit: 'nbdkit 1.32',
        runtimeS: 5,
        warmupS: 4,
        rampS: 1,
        rounds: 3,
        queues: 2,
        queueSize: 256,
        logicalBlockSize: 512,
        profile: false,
        nodeArgs: [],
        daemonArgs: ['--queue-threads', '2'],
        baselineDaemonArgs: [],
        baseline: null,
        accel: 'tcg,thread=multi',
      },
      cases: [
        {
          id: 'null',
          peer: 'qsd',
          contenders: [
            { id: 'project', label: 'vduse-ts', device: '/dev/vda' },
            { id: 'qsd', label: 'qemu-storage-daemon', device: '/dev/vdb' },
          ],
          runs: [
            // ratios 0.5, 0.25, 0.75: median 0.50, below 1.0
            ...runs('randread-4k-qd1', [500, 250, 750], [1000, 1000, 1000], 'qsd'),
            // ratios 1.2, 1.4, 1.35: median 1.35, above the 2-job row's 1.3
            ...runs('randread-4k-qd32-2j', [1200, 1400, 1350], [1000, 1000, 1000], 'qsd'),
          ],
          error: null,
        },
      ],
    };
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-report-'));
    const file = path.join(dir, 'raw.json');
    fs.writeFileSync(file, JSON.stringify(raw));
    const stamp = startedAt.replace(/[:.]/g, '-');
    const written = ['json', 'md', 'svg'].map((ext) =>
      path.join(ROOT, 'bench/results', `vm-${stamp}.${ext}`),
    );
    // the report also rewrites vm-latest.*: keep a user's latest results
    const latest = ['json', 'md', 'svg'].map((ext) => path.join(ROOT, 'bench/results', `vm-latest.${ext}`));
    const kept = latest.map((f) => (fs.existsSync(f) ? fs.readFileSync(f) : null));
    try {
      const r = run(['--report', file]);
      assert.equal(r.status, 0, r.stderr);
      const row = (title: string) => r.stdout.split('\n').find((l) => l.includes(`| ${title} |`)) ?? '';
      assert.match(row('4K randread QD1'), /\*\*0\.50\*\* ✗ \| 0\.50 0\.25 0\.75 \| 1\.0 \|/);
      assert.match(row('4K randread 2 jobs x QD32'), /\*\*1\.35\*\* ✓ \| 1\.20 1\.40 1\.35 \| 1\.3 \|/);
      assert.match(r.stdout, /QEMU tcg,thread=multi/);
      assert.match(r.stdout, /ours run with `--queue-threads 2`/);
      for (const f of written) assert.ok(fs.existsSync(f), `${f} written`);
      assert.match(fs.readFileSync(written[2]!, 'utf8'), /^<svg[\s\S]*<\/svg>\s*$/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
      for (const f of written) fs.rmSync(f, { force: true });
      latest.forEach((f, i) => {
        const before = kept[i];
        if (before == null) fs.rmSync(f, { force: true });
        else fs.writeFileSync(f, before);
      });
    }
  });

  it('refuses a bad option in one line, exit 2', () => {
    const r = run(['--rounds', '0']);
    assert.equal(r.status, 2);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /^bench:vm: --rounds/);
  });
});
