// `npm run test:e2e [-- FILTER...]`: runs every e2e scenario (the *.test.js files next to this one) inside ONE
// boot of the test VM, with node's test runner, one file at a time, as root.
//
// Outside CI, a machine that cannot run the VM (not root and packages missing, no qemu, no apt) gets one
// "skipped" line and exit 0. Under CI=true that is a failure. Knobs: VDUSE_E2E_TIMEOUT (seconds for the whole
// run, default 3600), plus everything scripts/vm/vm.mjs reads (VDUSE_VM_*).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { isCI } from './lib/env.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));

function packageRoot(start: string): string {
  let dir = start;
  for (;;) {
    try {
      const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: string };
      if (pkg.name === 'vduse-ts') return dir;
    } catch {
      // keep walking up
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`no vduse-ts package.json above ${start}`);
    dir = up;
  }
}

interface Outcome {
  code: number;
  lastLine: string;
}

/**
 * Runs node with `args` (the provisioning step). Its stderr is shown live, one line behind: the last line is held back and returned, so
 * the caller can print it, or replace it with a one-line verdict.
 */
function nodeHoldingLastLine(args: string[], cwd: string, captureStdout = false): Promise<Outcome> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, {
      cwd,
      stdio: ['ignore', captureStdout ? 'pipe' : 'inherit', 'pipe'],
    });
    let pending = '';
    let lastLine = '';
    child.stdout?.resume();
    child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      pending += d;
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) {
        if (lastLine) process.stderr.write(lastLine + '\n');
        lastLine = line;
      }
    });
    const done = (code: number, fallback = '') => {
      if (pending) {
        if (lastLine) process.stderr.write(lastLine + '\n');
        lastLine = pending;
      }
      resolve({ code, lastLine: lastLine || fallback });
    };
    child.on('error', (e) => done(1, e.message));
    child.on('close', (code, signal) => done(code ?? (signal ? 128 : 1)));
  });
}

async function main(): Promise<number> {
  const root = packageRoot(HERE);
  const vm = path.join(root, 'scripts', 'vm', 'vm.mjs');
  const filters = process.argv.slice(2);
  const files = fs
    .readdirSync(HERE)
    .filter((n) => n.endsWith('.test.js'))
    .filter((n) => filters.length === 0 || filters.some((f) => n.includes(f)))
    .sort()
    .map((n) => path.join(HERE, n));
  if (files.length === 0) {
    process.stderr.write(
      `e2e: no scenario files${filters.length ? ` matching ${filters.join(' ')}` : ''} in ${HERE}\n`,
    );
    return 1;
  }

  const t0 = Date.now();
  const prov = await nodeHoldingLastLine([vm, '--provision'], root, true);
  if (prov.code !== 0) {
    const why = prov.lastLine.replace(/^vm: /, '') || `vm.mjs --provision exited ${prov.code}`;
    if (prov.code === 2 && !isCI) {
      process.stdout.write(`e2e: skipped: the test VM is not available here: ${why}\n`);
      return 0;
    }
    process.stderr.write(`e2e: FAILED: cannot provision the test VM${isCI ? ' (CI)' : ''}: ${why}\n`);
    return 1;
  }
  if (prov.lastLine) process.stderr.write(prov.lastLine + '\n');
  const t1 = Date.now();

  const timeout = process.env.VDUSE_E2E_TIMEOUT ?? '3600';
  const testArgs = ['--test', '--test-concurrency=1', '--test-reporter=spec', ...files];
  process.stderr.write(`e2e: ${files.length} scenario file(s) in one VM boot (limit ${timeout} s)\n`);
  const r = await new Promise<number>((resolve) => {
    const child = spawn(
      process.execPath,
      [vm, '--verbose', `--timeout=${timeout}`, '--', process.execPath, ...testArgs],
      { cwd: root, stdio: 'inherit' },
    );
    child.on('error', (e) => {
      process.stderr.write(`e2e: cannot run ${vm}: ${e.message}\n`);
      resolve(1);
    });
    child.on('close', (code, signal) => resolve(code ?? (signal ? 128 : 1)));
  });
  const secs = (ms: number) => (ms / 1000).toFixed(1);
  process.stderr.write(
    `e2e: ${r === 0 ? 'passed' : `FAILED (exit ${r})`} in ${secs(Date.now() - t0)} s ` +
      `(provisioning check ${secs(t1 - t0)} s, VM run ${secs(Date.now() - t1)} s)\n`,
  );
  return r;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`e2e: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  },
);
