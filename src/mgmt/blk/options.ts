/**
 * The options of one virtio-blk device, validated in one place for `vduse blk` (command-line text), the
 * `vduse serve` config file and the device.add API call (JSON values). The rules, limits and defaults live
 * here; the caller says how a field is named in messages ("--queue-size", "config devices[1].queue-size")
 * and which error to throw. Pure: no I/O, nothing heavy imported (the CLI loads it for every `vduse blk`).
 */
import { availableParallelism } from 'node:os';

import {
  checkBoolean,
  checkDeviceName,
  checkInteger,
  describeValue,
  optionError,
  type OptionReporter,
} from '../runner/options.js';

export type BlkDriver = 'virtio-vdpa' | 'vhost-vdpa';

/** When to take over a device a previous daemon left (src/transports/vduse/recovery/reconnect.ts). */
export type BlkReconnectPolicy = 'auto' | 'never' | 'always';

/** What a device is made of: the options of `vduse blk`, of a config file entry and of device.add. */
export interface BlkDeviceConfig {
  name: string;
  /** Backend spec (file:PATH, memory:SIZE, null:SIZE, nbd...). */
  backend: string;
  queues: number;
  queueSize: number;
  logicalBlockSize: number;
  serial?: string;
  readOnly: boolean;
  packed: boolean;
  /** Attach to the vdpa bus (DEV_NEW) and wait for the block device. */
  attach: boolean;
  driver: BlkDriver;
  /**
   * Worker threads serving the queues (queue i on thread i % N); 0 or 1: every queue on the main thread.
   * At most `queues`. Default: defaultQueueThreads() (min(queues, cores); inline for a memory backend).
   */
  queueThreads: number;
  /** Poll the rings this many microseconds before sleeping on a kick (0: never; absent: the device default). */
  pollUs?: number;
  /** Crash recovery: the directory of the state log NAME.state (absent: /run/vduse-ts, or $XDG_RUNTIME_DIR/vduse-ts). */
  stateDir?: string;
  /** Crash recovery: take over a device left by a previous daemon ('auto'), never, or insist on it ('always'). */
  reconnect: BlkReconnectPolicy;
  /** Keep the device (attached, with its state log) when the daemon stops, for the next daemon to take over. */
  persist: boolean;
  /** Serve the device as a vhost-user-blk back-end on this Unix socket path instead of creating a VDUSE device. */
  vhostUser?: string;
}

export const BLK_DEFAULTS = {
  queues: 1,
  queueSize: 256,
  logicalBlockSize: 512,
  readOnly: false,
  packed: false,
  attach: true,
  driver: 'virtio-vdpa' as BlkDriver,
  /** Inline serving: what defaultQueueThreads() gives for a memory backend or one core. */
  queueThreads: 1,
  reconnect: 'auto' as BlkReconnectPolicy,
  persist: false,
};

/**
 * The queue threads of a device that names none (issue #16 item 5): one per queue, at most one per core beyond
 * the first (os.availableParallelism() - 1: the main thread and the workload need a core too), so that a
 * multi-queue device uses a machine's spare cores; 1 (inline, on the main thread) for a memory backend, which
 * cannot be served by threads (an explicit --queue-threads with one is refused), for one queue and for a
 * machine of 1 or 2 cores. Measured on 2 cores (docs/performance.md): threads lost everywhere except 2 busy
 * queues on 2 free host threads (2 jobs 1.15-1.25x; QD1/QD32 0.93-0.98x; one host thread: 2 jobs 0.74-0.81x).
 */
export function defaultQueueThreads(
  queues: number,
  backend: string,
  cores: number = availableParallelism(),
): number {
  if (backend.startsWith('memory:')) return BLK_DEFAULTS.queueThreads;
  return Math.max(1, Math.min(queues, Math.floor(cores) - 1));
}

/** The keys of a device's options: config file keys, device.add params, `vduse blk` flags (attach = --no-attach). */
export const DEVICE_KEYS = [
  'name',
  'backend',
  'queues',
  'queue-size',
  'logical-block-size',
  'serial',
  'readonly',
  'packed',
  'attach',
  'driver',
  'queue-threads',
  'poll-us',
  'state-dir',
  'reconnect',
  'persist',
  'vhost-user',
] as const;

export type DeviceOptionKey = (typeof DEVICE_KEYS)[number];

/** The numeric options: range and whether it must be a power of two. */
export const DEVICE_INTEGER_LIMITS = {
  queues: { min: 1, max: 64, pow2: false },
  'queue-size': { min: 2, max: 32768, pow2: true },
  'logical-block-size': { min: 512, max: 4096, pow2: true },
  'queue-threads': { min: 0, max: 64, pow2: false },
  'poll-us': { min: 0, max: 10_000, pow2: false },
} as const;

export const SERIAL_MAX = 20;

export interface DeviceOptionReporter extends OptionReporter<DeviceOptionKey> {
  /** An extra check of the backend spec; its error message is reported under the backend label. */
  checkBackend?: (spec: string) => void;
}

export { describeValue };

function fail(r: DeviceOptionReporter, key: DeviceOptionKey, flagText: string, keyText: string): Error {
  return optionError(r, key, flagText, keyText);
}

/** Letters, digits, '.', '_', '-'; up to 255 bytes; not "control" (the VDUSE control node). */
export function validateDeviceName(value: unknown, r: DeviceOptionReporter): string {
  return checkDeviceName(value, 'name', r);
}

function integer(value: unknown, key: keyof typeof DEVICE_INTEGER_LIMITS, r: DeviceOptionReporter): number {
  return checkInteger(value, key, DEVICE_INTEGER_LIMITS[key], r);
}

function boolean(value: unknown, key: DeviceOptionKey, fallback: boolean, r: DeviceOptionReporter): boolean {
  return checkBoolean(value, key, fallback, r);
}

/**
 * Validate one device's options, keyed by DEVICE_KEYS (unknown keys are the caller's business); missing ones
 * take BLK_DEFAULTS. Throws `r.error(...)` for the first bad field.
 */
export function validateDeviceOptions(
  o: Readonly<Partial<Record<string, unknown>>>,
  r: DeviceOptionReporter,
): BlkDeviceConfig {
  const name = validateDeviceName(o.name, r);
  const backend = o.backend;
  // Command-line text is any string (the backend is opened later); a config value must not be empty.
  if (typeof backend !== 'string' || (r.style === 'key' && backend === '')) {
    throw fail(r, 'backend', 'is required', `expected a non-empty string, got ${describeValue(backend)}`);
  }
  if (r.checkBackend) {
    try {
      r.checkBackend(backend);
    } catch (err) {
      throw r.error(`${r.label('backend')}: ${(err as Error).message}`, 'backend');
    }
  }
  const config: BlkDeviceConfig = {
    name,
    backend,
    queues: o.queues === undefined ? BLK_DEFAULTS.queues : integer(o.queues, 'queues', r),
    queueSize:
      o['queue-size'] === undefined ? BLK_DEFAULTS.queueSize : integer(o['queue-size'], 'queue-size', r),
    logicalBlockSize:
      o['logical-block-size'] === undefined
        ? BLK_DEFAULTS.logicalBlockSize
        : integer(o['logical-block-size'], 'logical-block-size', r),
    readOnly: boolean(o.readonly, 'readonly', BLK_DEFAULTS.readOnly, r),
    packed: boolean(o.packed, 'packed', BLK_DEFAULTS.packed, r),
    attach: boolean(o.attach, 'attach', BLK_DEFAULTS.attach, r),
    driver: BLK_DEFAULTS.driver,
    queueThreads: 0, // resolved below, once queues and backend are known
    reconnect: BLK_DEFAULTS.reconnect,
    persist: boolean(o.persist, 'persist', BLK_DEFAULTS.persist, r),
  };
  if (o.reconnect !== undefined) {
    if (o.reconnect !== 'auto' && o.reconnect !== 'never' && o.reconnect !== 'always') {
      throw fail(
        r,
        'reconnect',
        `must be auto, never or always, got "${String(o.reconnect)}"`,
        `expected "auto", "never" or "always", got ${describeValue(o.reconnect)}`,
      );
    }
    config.reconnect = o.reconnect;
  }
  config.queueThreads =
    o['queue-threads'] === undefined
      ? defaultQueueThreads(config.queues, backend)
      : integer(o['queue-threads'], 'queue-threads', r);
  if (o['state-dir'] !== undefined) {
    const dir = o['state-dir'];
    if (typeof dir !== 'string' || dir === '') {
      throw fail(r, 'state-dir', 'must not be empty', `expected a directory, got ${describeValue(dir)}`);
    }
    config.stateDir = dir;
  }
  if (config.queueThreads > 1 && backend.startsWith('memory:')) {
    throw fail(
      r,
      'queue-threads',
      'cannot serve a memory backend (its data lives in one thread); use a file on tmpfs instead',
      'queue threads cannot serve a memory backend (its data lives in one thread); use a file on tmpfs instead',
    );
  }
  if (config.queueThreads > config.queues) {
    const n = config.queueThreads;
    throw fail(
      r,
      'queue-threads',
      `${n} is more than ${r.label('queues')} ${config.queues} (each thread serves at least one queue)`,
      `${n} is more than the ${config.queues} queue(s) (each thread serves at least one queue)`,
    );
  }
  if (o['poll-us'] !== undefined) config.pollUs = integer(o['poll-us'], 'poll-us', r);
  if (o.serial !== undefined) {
    if (typeof o.serial !== 'string' || o.serial.length > SERIAL_MAX || !/^[\x20-\x7e]*$/.test(o.serial)) {
      throw fail(
        r,
        'serial',
        `must be at most ${SERIAL_MAX} printable ASCII characters`,
        `expected at most ${SERIAL_MAX} printable ASCII characters, got ${describeValue(o.serial)}`,
      );
    }
    config.serial = o.serial;
  }
  if (o.driver !== undefined) {
    if (o.driver !== 'virtio-vdpa' && o.driver !== 'vhost-vdpa') {
      throw fail(
        r,
        'driver',
        `must be virtio-vdpa or vhost-vdpa, got "${String(o.driver)}"`,
        `expected "virtio-vdpa" or "vhost-vdpa", got ${describeValue(o.driver)}`,
      );
    }
    if (!config.attach) {
      throw fail(
        r,
        'driver',
        `makes no sense with ${r.label('attach')}`,
        'makes no sense with attach: false',
      );
    }
    config.driver = o.driver;
  }
  if (o['vhost-user'] !== undefined) checkVhostUser(o, config, r);
  return config;
}

/** Options that only mean something for a VDUSE device (refused with vhost-user). */
const VDUSE_ONLY: readonly DeviceOptionKey[] = [
  'driver',
  'attach',
  'state-dir',
  'reconnect',
  'persist',
  'packed',
];

/** A vhost-user device: a socket path, none of the VDUSE-only options, no queue threads (yet). */
function checkVhostUser(
  o: Readonly<Partial<Record<string, unknown>>>,
  config: BlkDeviceConfig,
  r: DeviceOptionReporter,
): void {
  const path = o['vhost-user'];
  if (typeof path !== 'string' || path === '') {
    throw fail(
      r,
      'vhost-user',
      'must be a socket path',
      `expected a socket path, got ${describeValue(path)}`,
    );
  }
  const label = r.label('vhost-user');
  for (const key of VDUSE_ONLY) {
    if (
      o[key] === undefined ||
      (key === 'attach' && o[key] === true) ||
      (key !== 'attach' && o[key] === false)
    )
      continue;
    throw fail(
      r,
      key,
      `is a VDUSE option; it makes no sense with ${label}`,
      `is a VDUSE option; it makes no sense with vhost-user`,
    );
  }
  config.vhostUser = path;
}
