#!/usr/bin/env node
// npm run vm -- [options] COMMAND [ARG...]: run COMMAND as root in a QEMU (TCG) guest with Debian's 6.12 kernel,
// VDUSE and vDPA loaded, the host root read-only over 9p and the project directory writable at the same path.
// See scripts/vm/README.md.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { provision, ProvisionError, cacheBase, which } from './provision.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));

export const EXIT_TIMEOUT = 124;
export const EXIT_VM_FAILED = 125;
const EXIT_USAGE = 2;

const GUEST_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** Seconds the host waits beyond the guest's own time limit (boot, watchdog dump) before killing QEMU. */
const HOST_BACKSTOP_EXTRA = 120;
/** Seconds the guest gets to power off after it wrote its exit code. */
const POWEROFF_GRACE = 5;

const USAGE = `Usage: npm run vm -- [options] [--] COMMAND [ARG...]

Boots Debian's 6.12 kernel (vduse, vdpa, virtio_vdpa, vhost_vdpa loaded) under qemu-system-x86_64 -accel tcg,
with the host root read-only over 9p, tmpfs on /tmp, /run, /var/tmp and /dev/shm, and this project's directory
writable at the same path. Runs COMMAND as root in the current directory (or the project root) and exits with
its exit code. Only CI and VDUSE_* environment variables are passed into the guest. No network.

Options:
  --timeout SECONDS  time limit of the run (default 1800, or VDUSE_VM_TIMEOUT); exit 124 when reached
  --mem MIB          guest memory in MiB (default 2048, or VDUSE_VM_MEM)
  --cpus N           guest CPUs (default 2, or VDUSE_VM_CPUS)
  --verbose          print boot and timing lines on stderr (or VDUSE_VM_VERBOSE=1)
  --accel A          QEMU -accel value (default tcg,thread=single, or VDUSE_VM_ACCEL)
  --shared-mem       guest RAM in a shared memfd (memory-backend-memfd,share=on), as vhost-user devices need
  --qemu-arg ARG     append ARG to QEMU's command line (repeatable), e.g. a -device or -chardev
  --provision        only install what is missing and build/cache kernel + initramfs, then print the cache dir
  -h, --help         this text

Exit codes: COMMAND's own; 124 time limit reached; 125 the VM failed (setup error, or the guest died twice);
2 usage error, or (with --provision) the VM cannot be provisioned on this machine.
Cache: $VDUSE_VM_CACHE, else $XDG_CACHE_HOME/vduse-ts/vm, else ~/.cache/vduse-ts/vm.
Guest kernel logs of failed runs: <project>/.cache/vm-logs/.`;

class UsageError extends Error {}

/** The nearest directory at or above `start` holding the package.json of vduse-ts, or null. */
export function packageRoot(start) {
  let dir = path.resolve(start);
  for (;;) {
    try {
      const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
      if (pkg.name === 'vduse-ts') return dir;
    } catch {
      // keep walking up
    }
    const up = path.dirname(dir);
    if (up === dir) return null;
    dir = up;
  }
}

const shq = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;
const qemuEscape = (s) => s.replace(/,/g, ',,');

/** CI and VDUSE_* variables of `env`, the only ones passed into the guest. */
export function guestEnv(env = process.env) {
  const out = {};
  for (const [k, v] of Object.entries(env)) {
    if (v !== undefined && (k === 'CI' || k.startsWith('VDUSE_')) && /^[A-Za-z_][A-Za-z0-9_]*$/.test(k))
      out[k] = v;
  }
  return out;
}

function listenOnce(sockPath, dest) {
  const server = net.createServer();
  const closed = new Promise((resolve) => {
    server.once('connection', (sock) => {
      server.close();
      sock.on('data', (d) => {
        if (!dest.write(d)) {
          sock.pause();
          dest.once('drain', () => sock.resume());
        }
      });
      sock.on('error', () => {});
      sock.on('close', resolve);
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(sockPath, () => resolve({ server, closed }));
  });
}

const readIf = (p) => {
  try {
    return fs.readFileSync(p, 'utf8');
  } catch {
    return null;
  }
};

/** One boot. Returns { code, kind: 'exit'|'timeout'|'setup'|'died'|'interrupted', message?, logs }. */
async function bootOnce(entry, o) {
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vduse-vm-'));
  const ctl = path.join(runDir, 'ctl');
  fs.mkdirSync(ctl);
  const consoleLog = path.join(runDir, 'console.log');
  fs.writeFileSync(path.join(ctl, 'params'), `VM_TIMEOUT=${o.timeoutSec}\nVM_WORK=${shq(o.workDir ?? '')}\n`);
  const envWords = Object.entries({ HOME: '/tmp/home', PATH: GUEST_PATH, ...o.env }).map(([k, v]) =>
    shq(`${k}=${v}`),
  );
  fs.writeFileSync(
    path.join(ctl, 'cmd'),
    [
      'mkdir -p /tmp/home',
      `cd ${shq(o.cwd)} || exit ${EXIT_VM_FAILED}`,
      `exec /usr/bin/env -i ${envWords.join(' ')} ${o.command.map(shq).join(' ')}`,
      '',
    ].join('\n'),
  );

  const out = await listenOnce(path.join(runDir, 'out.sock'), o.stdout);
  const err = await listenOnce(path.join(runDir, 'err.sock'), o.stderr);
  const fsdev = (id, p, extra) =>
    ['-fsdev', `local,id=${id},path=${qemuEscape(p)},security_model=none${extra}`].concat([
      '-device',
      `virtio-9p-pci,fsdev=${id},mount_tag=${id}`,
    ]);
  // Shared guest RAM (a memfd mapped MAP_SHARED by QEMU) is what a vhost-user backend needs to reach it.
  const memory = o.sharedMemory
    ? [
        '-m',
        String(o.memMiB),
        '-object',
        `memory-backend-memfd,id=vm-mem,size=${o.memMiB}M,share=on`,
        '-numa',
        'node,memdev=vm-mem',
      ]
    : ['-m', String(o.memMiB)];
  const args = [
    '-accel',
    o.accel,
    '-machine',
    'q35',
    '-cpu',
    'max',
    ...memory,
    '-smp',
    String(o.cpus),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
    '-nic',
    'none',
    '-serial',
    `file:${qemuEscape(consoleLog)}`,
    '-kernel',
    entry.kernel,
    '-initrd',
    entry.initrd,
    '-append',
    'console=ttyS0 quiet panic=-1 mitigations=off',
    ...fsdev('hostroot', '/', ',readonly=on,multidevs=remap'),
    ...fsdev('vmctl', ctl, ''),
    ...(o.workDir ? fsdev('work', o.workDir, ',multidevs=remap') : []),
    '-device',
    'virtio-rng-pci',
    '-device',
    'virtio-serial-pci,id=vser0',
    '-chardev',
    `socket,id=vmout,path=${qemuEscape(path.join(runDir, 'out.sock'))}`,
    '-device',
    'virtserialport,bus=vser0.0,chardev=vmout,name=vm.stdout',
    '-chardev',
    `socket,id=vmerr,path=${qemuEscape(path.join(runDir, 'err.sock'))}`,
    '-device',
    'virtserialport,bus=vser0.0,chardev=vmerr,name=vm.stderr',
    ...o.qemuArgs,
  ];
  if (o.verbose) o.log(`qemu ${args.join(' ')}`);
  const qemu = spawn(o.qemu, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let qemuOutput = '';
  qemu.stdout.on('data', (d) => (qemuOutput += d));
  qemu.stderr.on('data', (d) => (qemuOutput += d));

  let hostTimeout = false;
  let interrupted = false;
  let graceTimer = null;
  const kill = () => {
    if (qemu.exitCode === null && qemu.signalCode === null) qemu.kill('SIGKILL');
  };
  const backstop = setTimeout(
    () => {
      hostTimeout = true;
      kill();
    },
    (o.timeoutSec + HOST_BACKSTOP_EXTRA) * 1000,
  );
  // Once the guest has written its result, a stuck poweroff (e.g. a device waiting for a dead daemon) is cut short.
  const poll = setInterval(() => {
    if (
      graceTimer === null &&
      (fs.existsSync(path.join(ctl, 'rc')) || fs.existsSync(path.join(ctl, 'timed-out')))
    ) {
      graceTimer = setTimeout(kill, POWEROFF_GRACE * 1000);
    }
  }, 250);
  const onSignal = () => {
    interrupted = true;
    kill();
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  if (o.signal?.aborted) onSignal();
  o.signal?.addEventListener('abort', onSignal);
  // never leave a guest running behind a runner that died
  process.once('exit', kill);
  // the reader of our output went away (e.g. `| head`): stop the guest, exit like a shell would on SIGPIPE
  let brokenPipe = false;
  const onOutputError = () => {
    brokenPipe = true;
    kill();
  };
  o.stdout.on('error', onOutputError);
  o.stderr.on('error', onOutputError);

  const exit = await new Promise((resolve) => {
    qemu.once('error', (e) => resolve({ error: e }));
    qemu.once('exit', (code, signal) => resolve({ code, signal }));
  });
  clearTimeout(backstop);
  clearInterval(poll);
  if (graceTimer) clearTimeout(graceTimer);
  process.removeListener('SIGINT', onSignal);
  process.removeListener('SIGTERM', onSignal);
  o.signal?.removeEventListener('abort', onSignal);
  process.removeListener('exit', kill);
  o.stdout.removeListener('error', onOutputError);
  o.stderr.removeListener('error', onOutputError);
  const settle = new Promise((r) => setTimeout(r, 2000));
  await Promise.race([Promise.all([out.closed, err.closed]), settle]);
  out.server.close();
  err.server.close();

  const logs = {
    dmesg: readIf(path.join(ctl, 'dmesg.txt')),
    console: readIf(consoleLog),
    qemu: qemuOutput,
  };
  const rcText = readIf(path.join(ctl, 'rc'));
  const timedOut = readIf(path.join(ctl, 'timed-out'));
  const setupError = readIf(path.join(ctl, 'setup-error'));
  fs.rmSync(runDir, { recursive: true, force: true });

  if (interrupted) return { code: 130, kind: 'interrupted', message: 'interrupted', logs };
  if (brokenPipe) return { code: 141, kind: 'interrupted', logs };
  if (timedOut !== null || hostTimeout) {
    const how = timedOut !== null ? 'the guest was reset' : 'the guest did not react, QEMU was killed';
    return {
      code: EXIT_TIMEOUT,
      kind: 'timeout',
      message: `time limit of ${o.timeoutSec} s reached; ${how} (raise it with --timeout or VDUSE_VM_TIMEOUT)`,
      logs,
    };
  }
  if (rcText !== null && /^\d+\s*$/.test(rcText)) return { code: Number(rcText), kind: 'exit', logs };
  if (setupError !== null) {
    return { code: EXIT_VM_FAILED, kind: 'setup', message: `guest setup failed: ${setupError.trim()}`, logs };
  }
  const panic = /(Kernel panic[^\n]*|BUG: [^\n]*|Oops[^\n]*)/.exec(logs.console ?? '')?.[1]?.trim();
  const how = exit.error
    ? `cannot start ${o.qemu}: ${exit.error.message}`
    : `the guest died without a result (QEMU ${exit.signal ?? `exit status ${exit.code}`}` +
      `${panic ? `; console: ${panic}` : ''})`;
  const detail = qemuOutput.trim().split('\n').slice(-3).join(' | ');
  return { code: EXIT_VM_FAILED, kind: 'died', message: detail ? `${how}: ${detail}` : how, logs };
}

/** Saves the guest's logs under `dirs[0]` (or the next writable one); returns the file, or null. */
function saveLogs(dirs, kind, logs) {
  for (const dir of dirs) {
    try {
      return saveLogsIn(dir, kind, logs);
    } catch {
      // not writable: try the next
    }
  }
  return null;
}

function saveLogsIn(logDir, kind, logs) {
  fs.mkdirSync(logDir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const file = path.join(logDir, `${stamp}-${kind}.log`);
  const parts = [];
  if (logs.dmesg) parts.push('=== guest dmesg ===', logs.dmesg);
  parts.push('=== serial console (ttyS0, kernel loglevel quiet) ===', logs.console ?? '(none)');
  if (logs.qemu) parts.push('=== qemu output ===', logs.qemu);
  fs.writeFileSync(file, parts.join('\n') + '\n');
  // keep the 20 newest
  const old = fs
    .readdirSync(logDir)
    .filter((n) => n.endsWith('.log'))
    .sort()
    .reverse()
    .slice(20);
  for (const n of old) fs.rmSync(path.join(logDir, n), { force: true });
  return file;
}

/**
 * Runs `command` in a fresh guest and resolves to its exit code (see USAGE for the codes).
 * Beyond the defaults: `accel` (the -accel value; default VDUSE_VM_ACCEL or tcg,thread=single), `sharedMemory`
 * (guest RAM from a memfd shared with other processes, as vhost-user needs: memory-backend-memfd,share=on plus
 * -numa node,memdev), and `qemuArgs` (appended to QEMU's command line: extra devices and chardevs; the
 * virtio-serial bus is `vser0.0`); `signal` (an AbortSignal: aborting it kills QEMU, the run resolves 130).
 * @param {{ command: string[], timeoutSec?: number, memMiB?: number, cpus?: number, workDir?: string | null,
 *   cwd?: string, env?: Record<string, string>, stdout?: NodeJS.WritableStream,
 *   stderr?: NodeJS.WritableStream, verbose?: boolean, log?: (msg: string) => void, accel?: string,
 *   sharedMemory?: boolean, qemuArgs?: string[], signal?: AbortSignal }} opts
 */
export async function runInVm(opts) {
  const log = opts.log ?? ((m) => process.stderr.write(`vm: ${m}\n`));
  const workDir = opts.workDir === undefined ? packageRoot(process.cwd()) : opts.workDir;
  const cwdIn = path.resolve(opts.cwd ?? process.cwd());
  const cwd = workDir && !(cwdIn + '/').startsWith(workDir + '/') ? workDir : cwdIn;
  const o = {
    command: opts.command,
    timeoutSec: opts.timeoutSec ?? 1800,
    memMiB: opts.memMiB ?? 2048,
    cpus: opts.cpus ?? 2,
    workDir: workDir === '/' ? null : workDir,
    cwd,
    env: opts.env ?? guestEnv(),
    stdout: opts.stdout ?? process.stdout,
    stderr: opts.stderr ?? process.stderr,
    qemu: which('qemu-system-x86_64') ?? 'qemu-system-x86_64',
    accel: opts.accel || process.env.VDUSE_VM_ACCEL || 'tcg,thread=single',
    sharedMemory: opts.sharedMemory === true,
    qemuArgs: opts.qemuArgs ?? [],
    signal: opts.signal,
    verbose: opts.verbose === true,
    log,
  };
  let entry;
  try {
    entry = await provision({ log });
  } catch (e) {
    if (e instanceof ProvisionError) {
      log(`cannot provision the VM: ${e.message}`);
      return EXIT_VM_FAILED;
    }
    throw e;
  }
  const t0 = Date.now();
  if (opts.verbose) {
    log(
      `booting ${entry.kver} (${o.cpus} cpus, ${o.memMiB} MiB, limit ${o.timeoutSec} s): ${o.command.join(' ')}`,
    );
  }
  const logDirs = [
    ...(workDir ? [path.join(workDir, '.cache', 'vm-logs')] : []),
    path.join(cacheBase(), 'logs'),
    path.join(os.tmpdir(), 'vduse-vm-logs'),
  ];
  let r = await bootOnce(entry, o);
  if (r.kind === 'died' && !o.signal?.aborted) {
    const file = saveLogs(logDirs, r.kind, r.logs);
    log(`${r.message}; retrying once (guest log: ${file ?? 'not saved'})`);
    r = await bootOnce(entry, o);
  }
  const secs = ((Date.now() - t0) / 1000).toFixed(1);
  if (r.message) log(r.message);
  if (r.code !== 0 && r.kind !== 'interrupted') {
    const file = saveLogs(logDirs, r.kind, r.logs);
    log(
      `exit ${r.code} after ${secs} s; guest kernel log ${file ? `saved to ${file}` : 'could not be saved'}`,
    );
  } else if (opts.verbose) {
    log(`exit ${r.code} after ${secs} s`);
  }
  return r.code;
}

function parseArgs(argv) {
  const env = process.env;
  const num = (name, v, min) => {
    if (v === undefined || !/^\d+$/.test(v) || Number(v) < min) {
      throw new UsageError(
        `${name} needs an integer >= ${min}, got ${v === undefined ? 'nothing' : `'${v}'`}`,
      );
    }
    return Number(v);
  };
  const o = {
    timeoutSec: num('VDUSE_VM_TIMEOUT', env.VDUSE_VM_TIMEOUT ?? '1800', 1),
    memMiB: num('VDUSE_VM_MEM', env.VDUSE_VM_MEM ?? '2048', 128),
    cpus: num('VDUSE_VM_CPUS', env.VDUSE_VM_CPUS ?? '2', 1),
    verbose: env.VDUSE_VM_VERBOSE === '1',
    provisionOnly: false,
    help: false,
    command: [],
    accel: undefined,
    sharedMemory: false,
    qemuArgs: [],
  };
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') {
      i++;
      break;
    }
    if (!a.startsWith('-')) break;
    const [flag, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a];
    const value = () => (inline !== undefined ? inline : argv[++i]);
    const text = (name) => {
      const v = value();
      if (v === undefined || v === '') throw new UsageError(`${name} needs a value`);
      return v;
    };
    if (flag === '--timeout') o.timeoutSec = num('--timeout', value(), 1);
    else if (flag === '--mem') o.memMiB = num('--mem', value(), 128);
    else if (flag === '--cpus') o.cpus = num('--cpus', value(), 1);
    else if (flag === '--verbose') o.verbose = true;
    else if (flag === '--accel') o.accel = text('--accel');
    else if (flag === '--shared-mem') o.sharedMemory = true;
    else if (flag === '--qemu-arg') o.qemuArgs.push(text('--qemu-arg'));
    else if (flag === '--provision') o.provisionOnly = true;
    else if (flag === '-h' || flag === '--help') o.help = true;
    else throw new UsageError(`unknown option ${a} (see --help)`);
  }
  o.command = argv.slice(i);
  if (!o.help && !o.provisionOnly && o.command.length === 0)
    throw new UsageError('no COMMAND given (see --help)');
  return o;
}

async function main() {
  let o;
  try {
    o = parseArgs(process.argv.slice(2));
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`vm: ${e.message}\n`);
      return EXIT_USAGE;
    }
    throw e;
  }
  if (o.help) {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  const log = (m) => process.stderr.write(`vm: ${m}\n`);
  if (o.provisionOnly) {
    try {
      const entry = await provision({ log });
      process.stdout.write(`${entry.dir}\n`);
      if (o.verbose) log(`${entry.package} ${entry.version} (${entry.cached ? 'cached' : 'built now'})`);
      return 0;
    } catch (e) {
      if (e instanceof ProvisionError) {
        log(e.message);
        return e.unavailable ? EXIT_USAGE : 1;
      }
      throw e;
    }
  }
  return runInVm({ ...o, log });
}

if (process.argv[1] && import.meta.url === pathToFileURL(fs.realpathSync(process.argv[1])).href) {
  main().then(
    (code) => {
      process.exitCode = code;
    },
    (e) => {
      process.stderr.write(`vm: internal error: ${e?.stack ?? e}\n`);
      process.exitCode = EXIT_VM_FAILED;
    },
  );
}

export { HERE as VM_SCRIPT_DIR };
