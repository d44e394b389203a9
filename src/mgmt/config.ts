/**
 * The `vduse serve` config file (JSON or YAML) and the device options shared with the device.add API call.
 * Pure: text in, a validated config or a ConfigError out; every message names the bad key as a path
 * ("config devices[1].queues: expected an integer 1..64, got \"x\"").
 *
 * Keys are the command-line option names of `vduse blk`: name, backend, queues, queue-size,
 * logical-block-size, serial, readonly, packed, attach (false = --no-attach), driver.
 */
import { parse as parseYaml } from 'yaml';

import { parseBackendSpec } from '../backends/spec.js';
import { BLK_DEFAULTS, type BlkDeviceConfig, type BlkDriver } from './blk-runner.js';

export class ConfigError extends Error {
  constructor(
    message: string,
    /** The path of the bad key ("devices[1].queues"), without the "config " prefix. */
    readonly path: string,
  ) {
    super(message);
    this.name = 'ConfigError';
  }
}

export type LogFormat = 'json' | 'text';

/** Daemon settings; each also has a command-line flag (the flag wins). */
export interface ServeSettings {
  socket?: string;
  /** ADDR:PORT of the metrics HTTP listener. */
  metrics?: string;
  pidfile?: string;
  user?: string;
  logFormat?: LogFormat;
}

export interface ServeConfig extends ServeSettings {
  devices: BlkDeviceConfig[];
}

const DEVICE_KEYS = [
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
] as const;

const TOP_KEYS = ['socket', 'metrics', 'pidfile', 'user', 'log-format', 'devices'] as const;

/** A likely intended key for a misspelled one (queueSize -> queue-size). */
function suggest(key: string, known: readonly string[]): string {
  const kebab = key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`).replace(/_/g, '-');
  const hit = known.find(
    (k) => k === kebab || k === key.toLowerCase() || k === kebab.replace('read-only', 'readonly'),
  );
  return hit !== undefined ? ` (did you mean "${hit}"?)` : ` (known keys: ${known.join(', ')})`;
}

function show(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (typeof value === 'string') return JSON.stringify(value);
  if (Array.isArray(value)) return 'a list';
  if (value === null) return 'null';
  if (typeof value === 'object') return 'an object';
  return String(value);
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

export function checkName(value: unknown, at: string): string {
  if (typeof value !== 'string')
    throw new ConfigError(`${at}: expected a device name, got ${show(value)}`, at);
  if (!NAME_RE.test(value) || Buffer.byteLength(value) > 255 || value === 'control') {
    throw new ConfigError(
      `${at}: "${value}" is not a valid device name (letters, digits, '.', '_', '-'; up to 255 bytes; not "control")`,
      at,
    );
  }
  return value;
}

function integer(value: unknown, at: string, min: number, max: number, pow2 = false): number {
  const ok = typeof value === 'number' && Number.isInteger(value) && value >= min && value <= max;
  if (!ok || (pow2 && (value & (value - 1)) !== 0)) {
    throw new ConfigError(
      `${at}: expected ${pow2 ? 'a power of two' : 'an integer'} ${min}..${max}, got ${show(value)}`,
      at,
    );
  }
  return value;
}

function boolean(value: unknown, at: string): boolean {
  if (typeof value !== 'boolean')
    throw new ConfigError(`${at}: expected true or false, got ${show(value)}`, at);
  return value;
}

function string(value: unknown, at: string): string {
  if (typeof value !== 'string' || value === '')
    throw new ConfigError(`${at}: expected a non-empty string, got ${show(value)}`, at);
  return value;
}

function object(value: unknown, at: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new ConfigError(`${at}: expected an object (key: value), got ${show(value)}`, at);
  }
  return value as Record<string, unknown>;
}

/**
 * Validate one device's options (a config file entry or device.add params). `at` prefixes every message
 * ("config devices[0]", "params").
 */
export function parseDeviceOptions(value: unknown, at: string): BlkDeviceConfig {
  const o = object(value, at);
  for (const key of Object.keys(o)) {
    if (!(DEVICE_KEYS as readonly string[]).includes(key)) {
      throw new ConfigError(`${at}.${key}: unknown key${suggest(key, DEVICE_KEYS)}`, `${at}.${key}`);
    }
  }
  const name = checkName(o.name, `${at}.name`);
  const backend = string(o.backend, `${at}.backend`);
  try {
    parseBackendSpec(backend);
  } catch (err) {
    throw new ConfigError(`${at}.backend: ${(err as Error).message}`, `${at}.backend`);
  }
  const config: BlkDeviceConfig = {
    name,
    backend,
    queues: o.queues === undefined ? BLK_DEFAULTS.queues : integer(o.queues, `${at}.queues`, 1, 64),
    queueSize:
      o['queue-size'] === undefined
        ? BLK_DEFAULTS.queueSize
        : integer(o['queue-size'], `${at}.queue-size`, 2, 32768, true),
    logicalBlockSize:
      o['logical-block-size'] === undefined
        ? BLK_DEFAULTS.logicalBlockSize
        : integer(o['logical-block-size'], `${at}.logical-block-size`, 512, 4096, true),
    readOnly: o.readonly === undefined ? BLK_DEFAULTS.readOnly : boolean(o.readonly, `${at}.readonly`),
    packed: o.packed === undefined ? BLK_DEFAULTS.packed : boolean(o.packed, `${at}.packed`),
    attach: o.attach === undefined ? BLK_DEFAULTS.attach : boolean(o.attach, `${at}.attach`),
    driver: BLK_DEFAULTS.driver,
  };
  if (o.serial !== undefined) {
    if (typeof o.serial !== 'string' || o.serial.length > 20 || !/^[\x20-\x7e]*$/.test(o.serial)) {
      throw new ConfigError(
        `${at}.serial: expected at most 20 printable ASCII characters, got ${show(o.serial)}`,
        `${at}.serial`,
      );
    }
    config.serial = o.serial;
  }
  if (o.driver !== undefined) {
    if (o.driver !== 'virtio-vdpa' && o.driver !== 'vhost-vdpa') {
      throw new ConfigError(
        `${at}.driver: expected "virtio-vdpa" or "vhost-vdpa", got ${show(o.driver)}`,
        `${at}.driver`,
      );
    }
    if (!config.attach) {
      throw new ConfigError(`${at}.driver: makes no sense with attach: false`, `${at}.driver`);
    }
    config.driver = o.driver as BlkDriver;
  }
  return config;
}

/** ADDR:PORT, [v6]:PORT or PORT (127.0.0.1). */
export function parseListenAddress(text: string, at: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d+)$/.exec(text) ?? /^()()(\d+)$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new ConfigError(`${at}: expected ADDR:PORT (like 127.0.0.1:9470), got ${show(text)}`, at);
  }
  const host = m[1] || m[2] || '127.0.0.1';
  return { host, port };
}

/** Validate a parsed config document. */
export function validateConfig(doc: unknown): ServeConfig {
  const at = 'config';
  if (doc === null || doc === undefined) return { devices: [] };
  const o = object(doc, at);
  for (const key of Object.keys(o)) {
    if (!(TOP_KEYS as readonly string[]).includes(key)) {
      throw new ConfigError(`${at} ${key}: unknown key${suggest(key, TOP_KEYS)}`, key);
    }
  }
  const config: ServeConfig = { devices: [] };
  if (o.socket !== undefined) config.socket = string(o.socket, `${at} socket`);
  if (o.metrics !== undefined) {
    config.metrics = string(o.metrics, `${at} metrics`);
    parseListenAddress(config.metrics, `${at} metrics`);
  }
  if (o.pidfile !== undefined) config.pidfile = string(o.pidfile, `${at} pidfile`);
  if (o.user !== undefined) config.user = string(o.user, `${at} user`);
  if (o['log-format'] !== undefined) {
    if (o['log-format'] !== 'json' && o['log-format'] !== 'text') {
      throw new ConfigError(
        `${at} log-format: expected "json" or "text", got ${show(o['log-format'])}`,
        'log-format',
      );
    }
    config.logFormat = o['log-format'];
  }
  if (o.devices !== undefined) {
    if (!Array.isArray(o.devices)) {
      throw new ConfigError(`${at} devices: expected a list of devices, got ${show(o.devices)}`, 'devices');
    }
    const seen = new Set<string>();
    o.devices.forEach((entry: unknown, i: number) => {
      const device = parseDeviceOptions(entry, `${at} devices[${i}]`);
      if (seen.has(device.name)) {
        throw new ConfigError(
          `${at} devices[${i}].name: "${device.name}" is declared twice`,
          `devices[${i}].name`,
        );
      }
      seen.add(device.name);
      config.devices.push(device);
    });
  }
  return config;
}

/** Parse config text: JSON when the file name ends in .json (or the text starts with "{"), else YAML. */
export function parseConfigText(text: string, fileName = ''): ServeConfig {
  let doc: unknown;
  const json =
    fileName.endsWith('.json') || (!fileName.match(/\.ya?ml$/) && text.trimStart().startsWith('{'));
  try {
    doc = json ? JSON.parse(text) : parseYaml(text, { prettyErrors: false });
  } catch (err) {
    const first = ((err as Error).message.split('\n')[0] ?? '').trim();
    throw new ConfigError(`config: not valid ${json ? 'JSON' : 'YAML'}: ${first}`, '');
  }
  return validateConfig(doc);
}

/** The keys of a device whose change needs the device re-created (all of them except none). */
export function changedDeviceKeys(a: BlkDeviceConfig, b: BlkDeviceConfig): string[] {
  const names: Record<keyof BlkDeviceConfig, string> = {
    name: 'name',
    backend: 'backend',
    queues: 'queues',
    queueSize: 'queue-size',
    logicalBlockSize: 'logical-block-size',
    serial: 'serial',
    readOnly: 'readonly',
    packed: 'packed',
    attach: 'attach',
    driver: 'driver',
  };
  return (Object.keys(names) as (keyof BlkDeviceConfig)[]).filter((k) => a[k] !== b[k]).map((k) => names[k]);
}
