/**
 * The client commands of `vduse serve`, over its management socket (JSON-RPC, see src/mgmt/api.ts):
 *   vduse add NAME --backend SPEC [blk options]    device.add
 *   vduse add NAME --type net --tap IF [net opts]  device.add of a net device
 *   vduse link NAME up|down                        device.link (a net device's link state)
 *   vduse del NAME [--force]                       device.remove
 *   vduse ls [--json]                              device.list
 *   vduse resize NAME SIZE                         device.resize
 *   vduse stats [NAME] [--watch] [--json]          device.stats
 * Each takes --socket PATH. Errors from the daemon are printed as one line (exit 1); usage errors (and the
 * daemon's invalid-params answers) exit 2.
 */
import { join } from 'node:path';

import { formatSize } from '../backends/size.js';
import { DEVICE_INTEGER_LIMITS, validateDeviceOptions } from '../mgmt/blk/options.js';
import { NET_INTEGER_LIMITS, validateNetOptions } from '../mgmt/net/options.js';
import type { DeviceInfo, DeviceStats } from '../mgmt/manager.js';
import { rpcCall } from '../mgmt/daemon/rpc.js';
import {
  CliUsageError,
  DEVICE_FLAGS,
  NET_FLAGS,
  deviceOptionsFromFlags,
  flagOf,
  netFlagOf,
  netOptionsFromFlags,
  parseFlags,
} from './args.js';
import { reportError } from './report.js';
import { formatTable, rates, renderAllTotals, renderRates } from './stats-watch.js';

export const CLIENT_COMMANDS = ['add', 'del', 'ls', 'resize', 'stats', 'link'] as const;
export type ClientCommandName = (typeof CLIENT_COMMANDS)[number];

/** /run/vduse-ts/vduse.sock for root, else $XDG_RUNTIME_DIR/vduse-ts/vduse.sock. */
export function defaultSocketPath(
  env: NodeJS.ProcessEnv = process.env,
  uid = process.getuid?.() ?? 0,
): string {
  if (uid === 0) return '/run/vduse-ts/vduse.sock';
  const runtime = env.XDG_RUNTIME_DIR;
  if (runtime === undefined || runtime === '') {
    throw new CliUsageError('XDG_RUNTIME_DIR is not set: give the management socket with --socket PATH');
  }
  return join(runtime, 'vduse-ts', 'vduse.sock');
}

export const CLIENT_USAGE = `Usage (talk to a running vduse serve):
  vduse add NAME --backend SPEC [--queues N] [--queue-size N] [--logical-block-size N] [--serial S]
                 [--readonly] [--packed] [--no-attach] [--driver virtio-vdpa|vhost-vdpa]
                 [--queue-threads N] [--poll-us N] [--state-dir DIR] [--reconnect auto|never|always]
                 [--persist]        (the options of vduse blk; vduse blk --help)
  vduse add NAME --type net --tap IFNAME [--mac MAC] [--mtu N] [--queue-size N] [--link up|down]
                 [--no-offloads] [--no-attach] [--driver virtio-vdpa|vhost-vdpa]
                                    a net device (the options of vduse net; vduse net --help)
  vduse link NAME up|down           set a net device's link state (the guest sees carrier on/off)
  vduse del NAME [--force]          safe by default: refuses while mounted, waits for requests in flight
  vduse ls [--json]                 the devices: state, block device, size, queues, backend
  vduse resize NAME SIZE            grow (or shrink) the backend and tell the driver (SIZE like 2G)
  vduse stats [NAME] [--watch [--interval SEC] [--count N]] [--json]
Common option: --socket PATH (default /run/vduse-ts/vduse.sock as root, else $XDG_RUNTIME_DIR/vduse-ts/vduse.sock)
`;

export interface ClientCommand {
  command: ClientCommandName;
  socket?: string;
  method: string;
  params: Record<string, unknown>;
  json: boolean;
  watch: boolean;
  intervalMs: number;
  count: number;
}

export function parseClientArgs(
  name: ClientCommandName,
  argv: readonly string[],
): ClientCommand | { command: 'help' } {
  const parsed = parseFlags(
    argv,
    {
      socket: { type: 'string' },
      json: { type: 'boolean' },
      force: { type: 'boolean' },
      watch: { type: 'boolean' },
      interval: { type: 'string' },
      count: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
      ...(name === 'add' ? { ...DEVICE_FLAGS, ...NET_FLAGS, type: { type: 'string' } } : {}),
    },
    true,
    `vduse ${name}: `,
  );
  const v = parsed.values as Record<string, string | boolean | undefined>;
  const pos = parsed.positionals;
  if (v.help) return { command: 'help' };
  const only = (allowed: string[]): void => {
    for (const key of ['force', 'watch', 'interval', 'count', 'json']) {
      if (v[key] !== undefined && !allowed.includes(key))
        throw new CliUsageError(`vduse ${name}: unknown option --${key}`);
    }
  };
  const positionals = (min: number, max: number, what: string): void => {
    if (pos.length < min)
      throw new CliUsageError(`vduse ${name}: missing ${what} (try vduse ${name} --help)`);
    if (pos.length > max) throw new CliUsageError(`vduse ${name}: unexpected argument "${pos[max]}"`);
  };
  const cmd: ClientCommand = {
    command: name,
    method: '',
    params: {},
    json: v.json === true,
    watch: v.watch === true,
    intervalMs: 1000,
    count: 0,
  };
  if (typeof v.socket === 'string') cmd.socket = v.socket;
  switch (name) {
    case 'add': {
      only(['json']);
      positionals(1, 1, 'NAME');
      if (v.type !== undefined && v.type !== 'blk' && v.type !== 'net') {
        throw new CliUsageError(`vduse add: --type must be blk or net, got "${String(v.type)}"`);
      }
      if (v.type === 'net') {
        cmd.method = 'device.add';
        cmd.params = netAddParams(pos[0]!, v);
        break;
      }
      for (const flag of Object.keys(NET_FLAGS)) {
        if (v[flag] !== undefined && !(flag in DEVICE_FLAGS))
          throw new CliUsageError(`vduse add: --${flag} is an option of a net device (--type net)`);
      }
      if (typeof v.backend !== 'string') throw new CliUsageError('vduse add: --backend is required');
      // Checked here like vduse blk checks it (same words, exit 2), then sent as given: the daemon checks
      // again (another client may send anything) and fills in its defaults for what was left out.
      const flags = { name: pos[0], ...deviceOptionsFromFlags(v) };
      validateDeviceOptions(flags, {
        style: 'flag',
        label: flagOf,
        error: (message) => new CliUsageError(`vduse add: ${message}`),
      });
      const p: Record<string, unknown> = { ...flags };
      for (const key of Object.keys(DEVICE_INTEGER_LIMITS)) {
        const text = p[key];
        if (typeof text === 'string') p[key] = Number(text);
      }
      cmd.method = 'device.add';
      cmd.params = p;
      break;
    }
    case 'link':
      only(['json']);
      positionals(2, 2, 'NAME and up|down');
      if (pos[1] !== 'up' && pos[1] !== 'down') {
        throw new CliUsageError(`vduse link: the state is up or down, got "${pos[1]}"`);
      }
      cmd.method = 'device.link';
      cmd.params = { name: pos[0], state: pos[1] };
      break;
    case 'del':
      only(['force', 'json']);
      positionals(1, 1, 'NAME');
      cmd.method = 'device.remove';
      cmd.params = { name: pos[0], ...(v.force === true ? { force: true } : {}) };
      break;
    case 'ls':
      only(['json']);
      positionals(0, 0, '');
      cmd.method = 'device.list';
      break;
    case 'resize':
      only(['json']);
      positionals(2, 2, 'NAME and SIZE');
      cmd.method = 'device.resize';
      cmd.params = { name: pos[0], size: /^\d+$/.test(pos[1]!) ? Number(pos[1]) : pos[1] };
      break;
    case 'stats': {
      only(['watch', 'interval', 'count', 'json']);
      positionals(0, 1, '');
      cmd.method = 'device.stats';
      if (pos[0] !== undefined) cmd.params = { name: pos[0] };
      if (typeof v.interval === 'string') {
        const s = Number(v.interval);
        if (!(s >= 0.1 && s <= 3600))
          throw new CliUsageError(`vduse stats: --interval must be 0.1..3600 seconds, got "${v.interval}"`);
        cmd.intervalMs = Math.round(s * 1000);
      }
      if (typeof v.count === 'string') {
        if (!/^\d+$/.test(v.count))
          throw new CliUsageError(`vduse stats: --count must be a whole number, got "${v.count}"`);
        cmd.count = Number(v.count);
      }
      if ((v.interval !== undefined || v.count !== undefined) && !cmd.watch) {
        throw new CliUsageError('vduse stats: --interval and --count go with --watch');
      }
      break;
    }
  }
  return cmd;
}

/** device.add params of `vduse add NAME --type net ...`, checked like vduse net checks them. */
function netAddParams(
  name: string,
  v: Record<string, string | boolean | undefined>,
): Record<string, unknown> {
  for (const flag of Object.keys(DEVICE_FLAGS)) {
    if (v[flag] !== undefined && !(flag in NET_FLAGS))
      throw new CliUsageError(`vduse add: --${flag} is not an option of a net device`);
  }
  if (typeof v.tap !== 'string') throw new CliUsageError('vduse add: --tap is required for a net device');
  const flags = { type: 'net', name, ...netOptionsFromFlags(v) };
  validateNetOptions(flags, {
    style: 'flag',
    label: netFlagOf,
    error: (message) => new CliUsageError(`vduse add: ${message}`),
  });
  const p: Record<string, unknown> = { ...flags };
  for (const key of Object.keys(NET_INTEGER_LIMITS)) {
    const text = p[key];
    if (typeof text === 'string') p[key] = Number(text);
  }
  return p;
}

export function formatDeviceTable(devices: readonly DeviceInfo[]): string {
  if (devices.length === 0) return 'no devices\n';
  return formatTable(
    ['NAME', 'STATE', 'DEVICE', 'SIZE', 'QUEUES', 'FEATURES', 'BACKEND'],
    devices.map((d) => [
      d.name,
      d.state,
      d.path,
      d.type === 'net' ? '-' : formatSize(d.size),
      `${d.queues}x${d.queueSize}`,
      d.features,
      d.net !== undefined
        ? `${d.backend} (${d.net.mac}, mtu ${d.net.mtu}, link ${d.net.link})`
        : d.backend + (d.readOnly ? ' (ro)' : ''),
    ]),
  );
}

/** Run a client command; resolves with the exit code. */
export async function runClient(
  cmd: ClientCommand,
  out: (text: string) => void = (t) => void process.stdout.write(t),
): Promise<number> {
  const socket = cmd.socket ?? defaultSocketPath();
  const call = (): Promise<unknown> => rpcCall(socket, cmd.method, cmd.params);
  try {
    if (cmd.command === 'stats' && cmd.watch) return await watch(cmd, call, out);
    const result = await call();
    if (cmd.json) {
      out(`${JSON.stringify(result, null, 2)}\n`);
      return 0;
    }
    switch (cmd.command) {
      case 'add': {
        const d = result as DeviceInfo;
        out(`${d.path}\n`);
        break;
      }
      case 'del':
        break;
      case 'ls':
        out(formatDeviceTable(result as DeviceInfo[]));
        break;
      case 'resize': {
        const d = result as DeviceInfo;
        out(`${d.name}: ${formatSize(d.size)}\n`);
        break;
      }
      case 'link': {
        const d = result as DeviceInfo;
        out(`${d.name}: link ${d.net?.link ?? '?'}\n`);
        break;
      }
      case 'stats':
        out(renderAllTotals(result as DeviceStats[]));
        break;
    }
    return 0;
  } catch (err) {
    // a daemon error is one line, exit 1; invalid params (a UsageError) exit 2
    return reportError(err, `vduse ${cmd.command}`);
  }
}

async function watch(
  cmd: ClientCommand,
  call: () => Promise<unknown>,
  out: (text: string) => void,
): Promise<number> {
  const tty = process.stdout.isTTY === true;
  let stop = false;
  const onInt = (): void => void (stop = true);
  process.once('SIGINT', onInt);
  try {
    let prev = (await call()) as DeviceStats[];
    let prevAt = performance.now();
    for (let n = 0; !stop && (cmd.count === 0 || n < cmd.count); n++) {
      await new Promise((r) => setTimeout(r, cmd.intervalMs));
      if (stop) break;
      const cur = (await call()) as DeviceStats[];
      const now = performance.now();
      const rows = rates(prev, cur, (now - prevAt) / 1000);
      if (cmd.json) out(`${JSON.stringify(rows)}\n`);
      else out(`${tty ? '\x1b[H\x1b[2J' : ''}${renderRates(rows)}${tty ? '' : '\n'}`);
      prev = cur;
      prevAt = now;
    }
    return 0;
  } finally {
    process.off('SIGINT', onInt);
  }
}
