// `npm run test:e2e [-- FILTER...]`: runs every e2e scenario (the *.test.js files next to this one) inside ONE
// boot of the test VM, with node's test runner, one file at a time, as root. The host-side scenarios
// (*.host.test.js: they boot the VM themselves, with a VMM's devices attached to servers on the host) run on the
// host with node's test runner, beside that VM run (at the same time, by default) or after it.
//
// Outside CI, a machine that cannot run the VM (not root and packages missing, no qemu, no apt) gets one
// "skipped" line and exit 0. Under CI=true that is a failure. Knobs: VDUSE_E2E_TIMEOUT (seconds for the whole
// run, default 3600), VDUSE_E2E_HOST=parallel|serial (how the host-side files run beside the guest run;
// default parallel: on the 2-core machine the qsd guest file plus the vhost-user-qsd host file took 42 s side by
// side against 63 s one after the other), plus everything scripts/vm/vm.mjs reads (VDUSE_VM_*).
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
  const all = fs
    .readdirSync(HERE)
    .filter((n) => n.endsWith('.test.js'))
    .filter((n) => filters.length === 0 || filters.some((f) => n.includes(f)))
    .sort()
    .map((n) => path.join(HERE, n));
  const hostFiles = all.filter((f) => f.endsWith('.host.test.js'));
  const files = all.filter((f) => !f.endsWith('.host.test.js'));
  const mode = process.env.VDUSE_E2E_HOST ?? 'parallel';
  if (mode !== 'parallel' && mode !== 'serial') {
    process.stderr.write(`e2e: VDUSE_E2E_HOST must be parallel or serial, got '${mode}'\n`);
    return 2;
  }
  if (all.length === 0) {
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
  const secs = (ms: number) => (ms / 1000).toFixed(1);
  const testArgs = (list: string[]) => ['--test', '--test-concurrency=1', '--test-reporter=spec', ...list];
  const guestRun = async (): Promise<number> => {
    if (files.length === 0) return 0;
    process.stderr.write(`e2e: ${files.length} scenario file(s) in one VM boot (limit ${timeout} s)\n`);
    const g0 = Date.now();
    const r = await run(
      [vm, '--verbose', `--timeout=${timeout}`, '--', process.execPath, ...testArgs(files)],
      root,
      null,
    );
    process.stderr.write(
      `e2e: guest scenarios ${r === 0 ? 'passed' : `FAILED (exit ${r})`} in ${secs(Date.now() - g0)} s\n`,
    );
    return r;
  };
  // Run beside the guest VM, the host-side files' output is held back and printed in one piece when they end,
  // so that the two reports do not interleave.
  const hostRun = async (buffered: boolean): Promise<number> => {
    if (hostFiles.length === 0) return 0;
    process.stderr.write(
      `e2e: ${hostFiles.length} host-side scenario file(s) on the host${buffered ? ' (report held until they end)' : ''}\n`,
    );
    const h0 = Date.now();
    const out: Buffer[] | null = buffered ? [] : null;
    const r = await run(testArgs(hostFiles), root, out, Number(timeout) * 1000);
    if (out) process.stdout.write(Buffer.concat(out));
    process.stderr.write(
      `e2e: host-side scenarios ${r === 0 ? 'passed' : `FAILED (exit ${r})`} in ${secs(Date.now() - h0)} s\n`,
    );
    return r;
  };
  const results =
    mode === 'parallel' && files.length > 0 && hostFiles.length > 0
      ? await Promise.all([guestRun(), hostRun(true)])
      : [await guestRun(), await hostRun(false)];
  const r = results.find((c) => c !== 0) ?? 0;
  process.stderr.write(
    `e2e: ${r === 0 ? 'passed' : `FAILED (exit ${r})`} in ${secs(Date.now() - t0)} s ` +
      `(provisioning check ${secs(t1 - t0)} s, scenarios ${secs(Date.now() - t1)} s, host-side ${mode})\n`,
  );
  return r;
}

/**
 * Runs node with `args` in `cwd`; its output goes to ours, or (both streams) into `capture`. Resolves with its
 * exit code; after `limitMs` it is killed (SIGTERM: the test runner and the VMs it boots stop).
 */
function run(args: string[], cwd: string, capture: Buffer[] | null, limitMs = 0): Promise<number> {
  return new Promise<number>((resolve) => {
    const child = spawn(process.execPath, args, {
      cwd,
      stdio: capture ? ['ignore', 'pipe', 'pipe'] : 'inherit',
    });
    child.stdout?.on('data', (d: Buffer) => capture?.push(d));
    child.stderr?.on('data', (d: Buffer) => capture?.push(d));
    const timer = limitMs > 0 ? setTimeout(() => child.kill('SIGTERM'), limitMs) : undefined;
    child.on('error', (e) => {
      process.stderr.write(`e2e: cannot run ${args[0]}: ${e.message}\n`);
      resolve(1);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve(code ?? (signal ? 128 : 1));
    });
  });
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
