/**
 * Command-line parsing for `vduse` (node:util parseArgs). Pure: argv in, a command description or a UsageError
 * out, so every bad argument is unit-tested.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';

import { UsageError, messageOf, type VduseTsErrorOptions } from '../common/errors.js';
import {
  validateDeviceOptions,
  type BlkDeviceConfig,
  type BlkDriver,
  type DeviceOptionKey,
} from '../mgmt/blk/options.js';
import { validateNetOptions, type NetDeviceConfig, type NetOptionKey } from '../mgmt/net/options.js';

/** A bad command line: one line, exit 2. */
export class CliUsageError extends UsageError {
  constructor(message: string, options: VduseTsErrorOptions = {}) {
    super(message, { ...options, code: 'ERR_CLI_USAGE' });
  }
}

export type Driver = BlkDriver;

/** `vduse blk`: the device's options (crash recovery included) plus what only the foreground command has. */
export interface BlkCommand extends BlkDeviceConfig {
  command: 'blk';
  verbose: boolean;
  /** Print request counters at exit and on SIGUSR1. */
  stats: boolean;
}

/** `vduse net`: the net device's options plus what only the foreground command has. */
export interface NetCommand extends NetDeviceConfig {
  command: 'net';
  verbose: boolean;
  /** Print packet counters at exit and on SIGUSR1. */
  stats: boolean;
}

export type Command =
  | BlkCommand
  | NetCommand
  | { command: 'help'; topic?: 'blk' | 'net' }
  | { command: 'version' }
  | { command: 'list' };

export const MAIN_USAGE = `Usage: vduse <command> [options]

Serve virtio devices from userspace through Linux VDUSE.

Commands:
  blk      create a virtio-blk device backed by a file, memory or NBD, and serve it
  net      create a virtio-net device whose frames go to and come from a TAP interface, and serve it
  list     list VDUSE devices and their vdpa attachment
  serve    run a daemon holding many devices, with a management socket and metrics (vduse serve --help)
  add, del, ls, resize, stats, link
           manage the devices of a running vduse serve (vduse add --help)

Options:
  -h, --help       show this help (vduse blk --help, vduse net --help for their options)
  -V, --version    print the version

Needs root (or CAP_SYS_ADMIN + CAP_NET_ADMIN), /dev/vduse/control (modprobe vduse) and, to get a /dev/vdX,
the virtio_vdpa module (or vhost_vdpa for a VM).
`;

export const NET_USAGE = `Usage: vduse net --name NAME --tap IFNAME [options]

Create VDUSE network device NAME whose frames go to and come from the TAP interface IFNAME, attach it to the
vdpa bus and serve it until SIGINT/SIGTERM. Prints one line when ready: the guest's interface name (virtio-vdpa,
e.g. eth1), or /dev/vhost-vdpa-N with --driver vhost-vdpa, or /dev/vduse/NAME with --no-attach. On exit it
detaches, destroys the device and closes the tap.

Options:
  --name NAME                VDUSE device name (/dev/vduse/NAME, vdpa device NAME)
  --tap IFNAME               the TAP interface (1..15 bytes): an existing persistent one (ip tuntap add IFNAME
                             mode tap) is attached, else one named IFNAME is created (gone at exit). It must not
                             be in use by another process
  --mac MAC                  the guest's MAC address, like 52:54:00:12:34:56 (unicast, not all zero; default:
                             a locally administered one made from NAME, the same at every start)
  --mtu N                    the MTU the driver is told (VIRTIO_NET_F_MTU), 68..65535 (default 1500); longer
                             frames from the guest are dropped
  --queue-size N             largest queue size, a power of two 2..32768 (default 256)
  --link up|down             the link state at start (default up); vduse serve changes it at run time
                             (vduse link NAME up|down)
  --no-offloads              no checksum/segmentation offloads (the tap is opened without IFF_VNET_HDR)
  --no-attach                create and serve, but do not attach to the vdpa bus (vdpa dev add name NAME mgmtdev vduse)
  --driver DRIVER            virtio-vdpa (default: an interface in this kernel) or vhost-vdpa (a /dev/vhost-vdpa-N
                             for a VM)
  --stats                    print packet counters (packets, bytes, drops, per direction) on SIGUSR1 and at exit
  -v, --verbose              log protocol events
  -h, --help                 this help

One queue pair, no control queue (the kernel refuses VIRTIO_NET_F_CTRL_VQ for VDUSE). Needs root (or
CAP_SYS_ADMIN + CAP_NET_ADMIN), /dev/vduse/control, /dev/net/tun, and virtio_vdpa + virtio_net (or vhost_vdpa).

Signals:
  SIGINT, SIGTERM            detach, destroy, close the tap and exit
  SIGUSR1                    print the packet counters (with --stats)
`;

/** The parseArgs flags of a net device's options, shared by `vduse net` and `vduse add --type net`. */
export const NET_FLAGS = {
  tap: { type: 'string' },
  mac: { type: 'string' },
  mtu: { type: 'string' },
  'queue-size': { type: 'string' },
  link: { type: 'string' },
  'no-offloads': { type: 'boolean' },
  'no-attach': { type: 'boolean' },
  driver: { type: 'string' },
} as const;

type NetFlagValues = { [K in keyof typeof NET_FLAGS]?: string | boolean | undefined };

/** The net device options (NET_DEVICE_KEYS) given by NET_FLAGS values; absent flags are left out. */
export function netOptionsFromFlags(v: NetFlagValues): Partial<Record<NetOptionKey, string | boolean>> {
  const o: Partial<Record<NetOptionKey, string | boolean>> = {};
  for (const flag of Object.keys(NET_FLAGS) as (keyof typeof NET_FLAGS)[]) {
    const value = v[flag];
    if (value === undefined) continue;
    if (flag === 'no-attach') {
      if (value === true) o.attach = false;
    } else if (flag === 'no-offloads') {
      if (value === true) o.offloads = false;
    } else {
      o[flag] = value;
    }
  }
  return o;
}

/** The flag a net option comes from (attach: --no-attach, offloads: --no-offloads). */
export const netFlagOf = (key: NetOptionKey): string =>
  key === 'attach' ? '--no-attach' : key === 'offloads' ? '--no-offloads' : `--${key}`;

/** `vduse net ARGS`. */
function parseNetCommand(rest: readonly string[]): Command {
  const parsed = parseFlags(rest, {
    name: { type: 'string' },
    ...NET_FLAGS,
    stats: { type: 'boolean' },
    verbose: { type: 'boolean', short: 'v' },
    help: { type: 'boolean', short: 'h' },
  });
  const v = parsed.values;
  if (v.help) return { command: 'help', topic: 'net' };
  if (v.name === undefined) throw new CliUsageError('--name is required (try vduse net --help)');
  if (v.tap === undefined) throw new CliUsageError('--tap is required (try vduse net --help)');
  const device = validateNetOptions(
    { name: v.name, ...netOptionsFromFlags(v) },
    { style: 'flag', label: netFlagOf, error: (message) => new CliUsageError(message) },
  );
  return { command: 'net', ...device, verbose: v.verbose ?? false, stats: v.stats ?? false };
}

export const BLK_USAGE = `Usage: vduse blk --name NAME --backend SPEC [options]

Create VDUSE block device NAME, attach it to the vdpa bus and serve it until SIGINT/SIGTERM. Prints one line
when ready: the block device (/dev/vdX), or /dev/vhost-vdpa-N with --driver vhost-vdpa, or /dev/vduse/NAME with
--no-attach. On exit it detaches, destroys the device and closes the backend.

Options:
  --name NAME                VDUSE device name (/dev/vduse/NAME, vdpa device NAME)
  --backend SPEC             the storage (see Backends below; SIZE like 64M, 2G)
  --queues N                 request queues, 1..64 (default 1); served concurrently on one thread, or
                             spread over worker threads with --queue-threads
  --queue-threads N          serve the queues on N worker threads (queue i on thread i % N), each with its own
                             guest memory mappings, kick watchers and backend handle, so that a multi-queue
                             device uses several cores; 2..queues, or 0 (or 1): all on the main thread.
                             Default: min(queues, cores - 1), the cores being os.availableParallelism(), so 0 on
                             1 or 2 cores; 0 with a memory backend (threads cannot serve one; N > 1 is refused)
  --poll-us N                ring polling, 0..10000. Default: adaptive: the data path spins over idle rings
                             for up to 1 ms before it sleeps while that measures faster (re-checked every
                             few seconds: on at low queue depth, off where the spin takes a CPU the guest
                             needs). 0: never poll. N: always poll each ring N microseconds after it runs
                             empty (the device's own polling); saves a wake-up per request, costs CPU
  --queue-size N             largest queue size, a power of two 2..32768 (default 256)
  --logical-block-size N     512, 1024, 2048 or 4096 (default 512)
  --serial S                 serial number (GET_ID, /sys/block/vdX/serial), up to 20 characters
  --readonly                 read-only device (VIRTIO_BLK_F_RO)
  --packed                   offer packed virtqueues (VIRTIO_F_RING_PACKED)
  --no-attach                create and serve, but do not attach to the vdpa bus (vdpa dev add name NAME mgmtdev vduse)
  --driver DRIVER            virtio-vdpa (default: a /dev/vdX in this kernel) or vhost-vdpa (a /dev/vhost-vdpa-N for a VM)
  --stats                    print request counters (reads, writes, flushes, discards, ...) on SIGUSR1 and at exit
  --state-dir DIR            where the crash-recovery state log NAME.state lives (default /run/vduse-ts, or
                             $XDG_RUNTIME_DIR/vduse-ts when not root)
  --reconnect POLICY         auto (default): if NAME exists and has a state log (the daemon died, or stopped with
                             --persist), take it over: in-flight requests are resubmitted, the guest sees a delay;
                             never: fail if NAME exists; always: fail if there is nothing to take over
  --persist                  on SIGINT/SIGTERM keep the device (no detach, no destroy) for the next daemon
  --vhost-user PATH          serve the disk as a vhost-user-blk back-end on the Unix socket PATH (mode 0600,
                             removed at exit) for a VMM (QEMU -chardev socket,path=PATH,reconnect=1 -device
                             vhost-user-blk-pci,chardev=...), instead of creating a VDUSE device: no /dev/vduse
                             needed; prints PATH when listening. Not with --driver, --no-attach, --state-dir,
                             --reconnect, --persist or --packed (--queue-threads works as with VDUSE)
  -v, --verbose              log protocol events
  -h, --help                 this help

Signals:
  SIGINT, SIGTERM            detach, destroy and exit (with --persist: finish in-flight requests and exit,
                             leaving the device and its state log to the next vduse blk --name NAME)
  SIGHUP                     re-read the backend size and tell the driver (online resize: grow the backing file
                             with truncate -s, then kill -HUP)
  SIGUSR1                    print the request counters (with --stats)

Backends:
`;

/** The parseArgs flags of a device's options, shared by `vduse blk` and `vduse add`. */
export const DEVICE_FLAGS = {
  backend: { type: 'string' },
  queues: { type: 'string' },
  'queue-size': { type: 'string' },
  'logical-block-size': { type: 'string' },
  serial: { type: 'string' },
  readonly: { type: 'boolean' },
  packed: { type: 'boolean' },
  'no-attach': { type: 'boolean' },
  driver: { type: 'string' },
  'queue-threads': { type: 'string' },
  'poll-us': { type: 'string' },
  'state-dir': { type: 'string' },
  reconnect: { type: 'string' },
  persist: { type: 'boolean' },
  'vhost-user': { type: 'string' },
} as const;

type DeviceFlagValues = { [K in keyof typeof DEVICE_FLAGS]?: string | boolean | undefined };

/** The device options (DEVICE_KEYS) given by DEVICE_FLAGS values; absent flags are left out. */
export function deviceOptionsFromFlags(
  v: DeviceFlagValues,
): Partial<Record<DeviceOptionKey, string | boolean>> {
  const o: Partial<Record<DeviceOptionKey, string | boolean>> = {};
  for (const flag of Object.keys(DEVICE_FLAGS) as (keyof typeof DEVICE_FLAGS)[]) {
    const value = v[flag];
    if (flag === 'no-attach') {
      if (value === true) o.attach = false;
    } else if (value !== undefined) {
      o[flag] = value;
    }
  }
  return o;
}

/** The flag a device option comes from (attach: --no-attach). */
export const flagOf = (key: DeviceOptionKey): string => (key === 'attach' ? '--no-attach' : `--${key}`);

/** Parse `argv` (without node and the script). */
export function parseCommandLine(argv: readonly string[]): Command {
  const [first, ...rest] = argv;
  if (first === undefined) throw new CliUsageError('missing command (try vduse --help)');
  if (first === '-h' || first === '--help' || first === 'help') return { command: 'help' };
  if (first === '-V' || first === '--version') return { command: 'version' };
  if (first === 'list') {
    if (rest.length > 0) {
      if (rest.includes('-h') || rest.includes('--help')) return { command: 'help' };
      throw new CliUsageError(`vduse list takes no arguments, got "${rest[0]}"`);
    }
    return { command: 'list' };
  }
  if (first === 'net') return parseNetCommand(rest);
  if (first !== 'blk') {
    throw new CliUsageError(
      first.startsWith('-')
        ? `unknown option "${first}" (try vduse --help)`
        : `unknown command "${first}" (try vduse --help)`,
    );
  }
  const parsed = parseFlags(rest, {
    name: { type: 'string' },
    ...DEVICE_FLAGS,
    stats: { type: 'boolean' },
    verbose: { type: 'boolean', short: 'v' },
    help: { type: 'boolean', short: 'h' },
  });
  const v = parsed.values;
  if (v.help) return { command: 'help', topic: 'blk' };
  if (v.name === undefined) throw new CliUsageError('--name is required (try vduse blk --help)');
  if (v.backend === undefined) throw new CliUsageError('--backend is required (try vduse blk --help)');
  const device = validateDeviceOptions(
    { name: v.name, ...deviceOptionsFromFlags(v) },
    { style: 'flag', label: flagOf, error: (message) => new CliUsageError(message) },
  );
  return {
    command: 'blk',
    ...device,
    verbose: v.verbose ?? false,
    stats: v.stats ?? false,
  };
}

type FlagSpec = ParseArgsConfig['options'] & object;
type FlagValues<T extends FlagSpec> = ReturnType<typeof parseArgs<{ options: T; strict: true }>>['values'];

/**
 * parseArgs (strict) that also refuses an option given twice ("--name a --name b" would otherwise silently be
 * b). A parse error is a CliUsageError of one line, prefixed with `prefix` ("vduse add: ") when given.
 */
export function parseFlags<T extends FlagSpec>(
  args: readonly string[],
  options: T,
  allowPositionals = false,
  prefix = '',
): { values: FlagValues<T>; positionals: string[] } {
  let parsed;
  try {
    parsed = parseArgs({ args: [...args], strict: true, allowPositionals, options, tokens: true });
  } catch (err) {
    throw new CliUsageError(`${prefix}${cleanParseError(messageOf(err))}`, { cause: err });
  }
  const seen = new Set<string>();
  for (const token of parsed.tokens) {
    if (token.kind !== 'option') continue;
    if (seen.has(token.name)) {
      throw new CliUsageError(`${prefix}--${token.name} is given twice (give it once)`);
    }
    seen.add(token.name);
  }
  return { values: parsed.values as FlagValues<T>, positionals: parsed.positionals };
}

/**
 * A parseArgs error as one line: its first sentence without the "To specify a positional argument..." tail; an
 * "argument is ambiguous" error (a value that starts with a dash, like --queues -1) says how to pass it.
 */
export function cleanParseError(message: string): string {
  const line = message.split('\n')[0] ?? message;
  const first = (line.split('. To specify')[0] ?? line).replace(/\.$/, '');
  const ambiguous = /^Option '(--[^']+)' argument is ambiguous$/.exec(first);
  return ambiguous ? `${first}: write ${ambiguous[1]}=VALUE for a value that starts with '-'` : first;
}
