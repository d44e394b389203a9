/**
 * `vduse serve`: one long-lived daemon holding any number of devices (declared in a config file and/or added at
 * run time over the management socket), with an optional Prometheus endpoint. See docs/operations.md.
 *
 * Start: config -> devices (each ready: block device present) -> management socket -> metrics listener ->
 * drop privileges (--user) -> pid file -> sd_notify READY=1. SIGHUP reloads the config file, SIGINT/SIGTERM
 * stop: socket closed, devices removed newest first (detach, close, destroy, close backend), pid file removed.
 */
import { readFileSync } from 'node:fs';
import type { Server } from 'node:http';

import { createApi, type DaemonInfo } from '../mgmt/api.js';
import {
  ConfigError,
  changedDeviceKeys,
  parseConfigText,
  parseListenAddress,
  type LogFormat,
  type ServeConfig,
} from '../mgmt/config.js';
import { createStructuredLogger, defaultLogFormat, type FieldLogger } from '../mgmt/daemon/log.js';
import { BlkDeviceManager } from '../mgmt/manager.js';
import { createMetricsRegistry, startMetricsServer } from '../mgmt/metrics.js';
import { removePidFile, sdNotify, writePidFile } from '../mgmt/daemon/notify.js';
import { dropPrivileges, lookupAccount, type Account } from '../mgmt/daemon/privileges.js';
import { checkDaemonPath } from '../mgmt/daemon/paths.js';
import { RpcThreadServer } from '../mgmt/daemon/rpc-thread.js';
import { MgmtError } from '../mgmt/daemon/errors.js';
import { HelperTransport } from '../mgmt/vdpa-helper.js';
import type { SysBinding } from '../sys/binding.js';
import { VdpaClient } from '../transports/vdpa/client.js';
import { messageOf, systemErrorMessage } from '../common/errors.js';
import { CliUsageError, parseFlags } from './args.js';
import { reportError } from './report.js';
import {
  CLIENT_COMMANDS,
  CLIENT_USAGE,
  defaultSocketPath,
  parseClientArgs,
  runClient,
  type ClientCommandName,
} from './client.js';

export interface ServeCommand {
  command: 'serve';
  config?: string;
  socket?: string;
  metrics?: string;
  pidfile?: string;
  user?: string;
  logFormat?: LogFormat;
  stateDir?: string;
  verbose: boolean;
}

export const SERVE_USAGE = `Usage: vduse serve [--config FILE] [--socket PATH] [--metrics ADDR:PORT] [--pidfile FILE]
                   [--user USER] [--log-format json|text] [--state-dir DIR] [-v]

Run a daemon that serves any number of virtio-blk and virtio-net devices: the ones declared in the config file
(YAML or JSON) at start, plus those added at run time with vduse add (JSON-RPC on the management socket).
A device entry takes the options of vduse blk as keys (name, backend, queues, ...), or, with type: net, those of
vduse net (name, tap, mac, mtu, queue-size, link, offloads, attach, driver); vduse link NAME up|down sets a net
device's link at run time.

Options:
  --config FILE          devices (and settings) to start with; SIGHUP re-reads it and adds new devices
  --socket PATH          management socket (default /run/vduse-ts/vduse.sock as root, else
                         $XDG_RUNTIME_DIR/vduse-ts/vduse.sock); mode 0600
  --metrics ADDR:PORT    serve Prometheus metrics on http://ADDR:PORT/metrics (ADDR default 127.0.0.1)
  --pidfile FILE         written once every configured device is ready (readiness)
  --user USER            drop to USER after the devices are up (then vduse add/del are refused)
  --log-format FORMAT    json (JSON lines) or text; default json under systemd (JOURNAL_STREAM) when stderr is
                         not a terminal, else text
  --state-dir DIR        crash-recovery state logs of the devices that set no state-dir of their own (default
                         /run/vduse-ts, or $XDG_RUNTIME_DIR/vduse-ts when not root)
  -v, --verbose          debug logs
  -h, --help             this help

Each block device also takes the crash-recovery keys of vduse blk (state-dir, reconnect, persist): after a crash
(SIGKILL, OOM), starting vduse serve again with the same config takes its devices over under running I/O.

Signals: SIGINT/SIGTERM stop (devices detached and destroyed, or kept for the next daemon with persist: true),
SIGHUP reloads the config file.
`;

export function parseServeArgs(argv: readonly string[]): ServeCommand | { command: 'help'; text: string } {
  const parsed = parseFlags(argv, {
    config: { type: 'string' },
    socket: { type: 'string' },
    metrics: { type: 'string' },
    pidfile: { type: 'string' },
    user: { type: 'string' },
    'log-format': { type: 'string' },
    'state-dir': { type: 'string' },
    verbose: { type: 'boolean', short: 'v' },
    help: { type: 'boolean', short: 'h' },
  });
  const v = parsed.values;
  if (v.help) return { command: 'help', text: SERVE_USAGE };
  const cmd: ServeCommand = { command: 'serve', verbose: v.verbose ?? false };
  if (v.config !== undefined) cmd.config = v.config;
  if (v.socket !== undefined) {
    if (v.socket === '') throw new CliUsageError('--socket must not be empty');
    cmd.socket = v.socket;
  }
  if (v.metrics !== undefined) {
    parseListenAddress(v.metrics, '--metrics');
    cmd.metrics = v.metrics;
  }
  if (v['state-dir'] !== undefined) {
    if (v['state-dir'] === '') throw new CliUsageError('--state-dir must not be empty');
    cmd.stateDir = v['state-dir'];
  }
  if (v.pidfile !== undefined) cmd.pidfile = v.pidfile;
  if (v.user !== undefined) cmd.user = v.user;
  const lf = v['log-format'];
  if (lf !== undefined) {
    if (lf !== 'json' && lf !== 'text')
      throw new CliUsageError(`--log-format must be json or text, got "${lf}"`);
    cmd.logFormat = lf;
  }
  return cmd;
}

function readConfig(path: string): ServeConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read config ${path}: ${systemErrorMessage(err)}`, '', { cause: err });
  }
  const config = parseConfigText(text, path);
  return config;
}

export interface ServeEnvironment {
  /** Loaded lazily (a config error is reported before the native addon is needed). */
  binding: () => SysBinding;
  stopSignal: Promise<string>;
  onSignal(signal: 'SIGHUP', handler: () => void): void;
  version: string;
}

/** Runs the daemon until the stop signal. Throws UsageErrors (ConfigError, CliUsageError) for the user's mistakes. */
export async function runServe(cmd: ServeCommand, env: ServeEnvironment): Promise<void> {
  const fileConfig: ServeConfig = cmd.config !== undefined ? readConfig(cmd.config) : { devices: [] };
  const settings = {
    socket: cmd.socket ?? fileConfig.socket ?? defaultSocketPath(),
    metrics: cmd.metrics ?? fileConfig.metrics,
    pidfile: cmd.pidfile ?? fileConfig.pidfile,
    user: cmd.user ?? fileConfig.user,
    logFormat: cmd.logFormat ?? fileConfig.logFormat ?? defaultLogFormat(),
    stateDir: cmd.stateDir ?? fileConfig.stateDir,
  };
  // Paths first: one under /proc would make a recursive mkdir loop for ever.
  checkDaemonPath(settings.socket, cmd.socket !== undefined ? '--socket' : 'config socket');
  if (settings.stateDir !== undefined) {
    checkDaemonPath(settings.stateDir, cmd.stateDir !== undefined ? '--state-dir' : 'config state-dir');
  }
  for (const [i, d] of fileConfig.devices.entries()) {
    if (d.stateDir !== undefined) checkDaemonPath(d.stateDir, `config devices[${i}].state-dir`);
  }
  if (settings.pidfile !== undefined) {
    checkDaemonPath(settings.pidfile, cmd.pidfile !== undefined ? '--pidfile' : 'config pidfile');
  }
  const log: FieldLogger = createStructuredLogger({
    format: settings.logFormat,
    level: cmd.verbose ? 'debug' : 'info',
  });
  let account: Account | null = null;
  if (settings.user !== undefined) {
    account = lookupAccount(settings.user);
    if (process.getuid?.() !== 0) {
      throw new MgmtError('ERR_MGMT_PRIVILEGES', `--user ${settings.user}: only root can change user`);
    }
  }
  const metricsAddr = settings.metrics !== undefined ? parseListenAddress(settings.metrics, 'metrics') : null;

  const binding = env.binding();
  // With --user, the vdpa calls go through a helper that keeps root (DEV_DEL at shutdown needs CAP_NET_ADMIN).
  const vdpa = new VdpaClient(account !== null ? new HelperTransport() : undefined);
  const manager = new BlkDeviceManager({
    binding,
    logger: log,
    deviceLogger: (name) => log.child({ device: name }),
    vdpa,
    ...(settings.stateDir !== undefined ? { stateDir: settings.stateDir } : {}),
    onChange: () => rpc.publish('device.list', manager.list()),
  });
  const startedAt = Date.now();
  let privileged = true;
  const info = (): DaemonInfo => ({
    version: env.version,
    pid: process.pid,
    uptimeSeconds: Math.round((Date.now() - startedAt) / 1000),
    socket: settings.socket,
    metrics: settings.metrics ?? null,
    user: settings.user ?? null,
    privileged,
    devices: manager.list().length,
  });
  // The management socket has a thread of its own: device.list is answered there from the list published
  // at each change, whatever the data path on this thread is doing; other calls run here.
  const rpc = new RpcThreadServer(createApi(manager, info), { onProblem: (m) => log.warn(m) });
  rpc.publish('device.list', []);
  let metricsServer: Server | null = null;
  let pidWritten = false;
  const shutdown = async (): Promise<void> => {
    await rpc.close().catch(() => undefined);
    if (metricsServer !== null) await new Promise((r) => metricsServer!.close(r));
    metricsServer?.closeAllConnections();
    await manager.removeAll();
    await vdpa.close().catch((err: unknown) => log.error(`stop the vdpa client: ${messageOf(err)}`));
    if (pidWritten && settings.pidfile !== undefined) removePidFile(settings.pidfile);
  };

  try {
    for (const device of fileConfig.devices) await manager.add(device);
    await rpc.listen(settings.socket, cmd.socket !== undefined ? '--socket' : 'config socket');
    log.info(`management socket ${settings.socket}`);
    if (metricsAddr !== null) {
      metricsServer = await startMetricsServer(
        createMetricsRegistry(manager),
        metricsAddr.host,
        metricsAddr.port,
      );
      const a = metricsServer.address();
      log.info(
        `metrics on http://${typeof a === 'object' && a !== null ? `${a.address}:${a.port}` : settings.metrics}/metrics`,
      );
    }
    if (account !== null) {
      dropPrivileges(account);
      privileged = false;
      manager.freeze(
        `the daemon dropped its privileges (--user ${account.user}); add or remove devices in the config file and restart`,
      );
      log.info(`running as ${account.user} (uid ${account.uid}, gid ${account.gid})`);
    }
    if (settings.pidfile !== undefined) {
      writePidFile(settings.pidfile);
      pidWritten = true;
    }
    const n = manager.list().length;
    const notified = await sdNotify(['READY=1', `STATUS=serving ${n} device(s)`]);
    if (notified.result === 'failed') log.warn(`sd_notify READY=1 failed: ${notified.detail}`);
    log.info(`ready: ${n} device(s)`);
  } catch (err) {
    await shutdown();
    throw err;
  }

  env.onSignal('SIGHUP', () => {
    if (cmd.config === undefined) {
      log.info('SIGHUP: no config file to reload');
      return;
    }
    void reload(cmd.config, fileConfig, settings, manager, log);
  });

  const signal = await env.stopSignal;
  log.info(`${signal}: stopping`);
  await sdNotify(['STOPPING=1']);
  await shutdown();
  log.info('stopped');
}

let reloading: Promise<void> = Promise.resolve();

/**
 * SIGHUP: devices new in the file are added; running ones are left alone (a changed key is reported, the device
 * keeps its old settings until it is removed and re-added); devices gone from the file are kept until
 * `vduse del`. Settings (socket, metrics, pidfile, user, log-format) need a restart.
 */
function reload(
  path: string,
  initial: ServeConfig,
  settings: Record<string, unknown>,
  manager: BlkDeviceManager,
  log: FieldLogger,
): Promise<void> {
  reloading = reloading.then(async () => {
    let next: ServeConfig;
    try {
      next = readConfig(path);
    } catch (err) {
      log.error(`reload: ${messageOf(err)}; nothing changed`);
      return;
    }
    for (const key of ['socket', 'metrics', 'pidfile', 'user', 'logFormat'] as const) {
      if (next[key] !== undefined && next[key] !== initial[key] && next[key] !== settings[key]) {
        log.warn(`reload: ${key === 'logFormat' ? 'log-format' : key} changed: needs a restart; ignored`);
      }
    }
    const added: string[] = [];
    for (const device of next.devices) {
      const running = manager.configOf(device.name);
      if (running !== undefined) {
        const changed = changedDeviceKeys(running, manager.resolve(device));
        if (changed.length > 0) {
          log.warn(
            `reload: device ${device.name}: ${changed.join(', ')} changed: needs the device re-created (vduse del ${device.name}, then reload); kept as it is`,
          );
        }
        continue;
      }
      try {
        await manager.add(device);
        added.push(device.name);
      } catch (err) {
        log.error(`reload: ${messageOf(err)}`);
      }
    }
    const declared = new Set(next.devices.map((d) => d.name));
    for (const d of manager.list()) {
      if (!declared.has(d.name))
        log.info(`reload: ${d.name} is not in the config file; kept until vduse del ${d.name}`);
    }
    log.info(`reload done: ${added.length > 0 ? `added ${added.join(', ')}` : 'nothing added'}`);
  });
  return reloading;
}

/**
 * The operator commands (serve, add, del, ls, resize, stats) for main.ts: the exit code, or null when `argv`
 * is not one of them.
 */
export async function runOpsCommand(
  argv: readonly string[],
  deps: { version: () => string; binding: () => SysBinding; stopSignal: () => Promise<string> },
): Promise<number | null> {
  const [first, ...rest] = argv;
  const isClient = (CLIENT_COMMANDS as readonly string[]).includes(first ?? '');
  if (first !== 'serve' && !isClient) return null;
  try {
    if (isClient) {
      let cmd;
      try {
        cmd = parseClientArgs(first as ClientCommandName, rest);
      } catch (err) {
        // its message starts with "vduse add: " already
        return reportError(err, null);
      }
      if (cmd.command === 'help') {
        process.stdout.write(CLIENT_USAGE);
        return 0;
      }
      return await runClient(cmd);
    }
    const cmd = parseServeArgs(rest);
    if (cmd.command === 'help') {
      process.stdout.write(cmd.text);
      return 0;
    }
    await runServe(cmd, {
      binding: deps.binding,
      stopSignal: deps.stopSignal(),
      onSignal: (signal, handler) => void process.on(signal, handler),
      version: deps.version(),
    });
    return 0;
  } catch (err) {
    // a bad command line or config file: exit 2; anything else thrown on purpose: exit 1; one line each
    return reportError(err);
  }
}
