/**
 * The `vduse serve` config file (JSON or YAML) and the device options shared with the device.add API call.
 * Pure: text in, a validated config or a ConfigError out; every message names the bad key as a path
 * ("config devices[1].queues: expected an integer 1..64, got \"x\"").
 *
 * Keys are the command-line option names of `vduse blk`: name, backend, queues, queue-size,
 * logical-block-size, serial, readonly, packed, attach (false = --no-attach), driver, queue-threads, poll-us,
 * state-dir, reconnect, persist; or, with `type: net`, those of `vduse net`: name, tap, mac, mtu, queue-size,
 * link, offloads (false = --no-offloads), attach, driver. `type` is blk when absent.
 */
import { parse as parseYaml } from 'yaml';

// The index registers every backend kind (nbd too), so a spec is checked against all of them.
import { parseBackendSpec } from '../backends/index.js';
import {
  DEVICE_KEYS,
  describeValue as show,
  validateDeviceName,
  validateDeviceOptions,
  type BlkDeviceConfig,
  type DeviceOptionReporter,
} from './blk/options.js';
import { ConfigError } from './daemon/errors.js';
import { NET_DEVICE_KEYS, changedNetKeys, validateNetOptions, type NetDeviceConfig } from './net/options.js';

export { ConfigError };

import type { LogFormat } from './daemon/log.js';
export type { LogFormat };

/** Daemon settings; each also has a command-line flag (the flag wins). */
export interface ServeSettings {
  socket?: string;
  /** ADDR:PORT of the metrics HTTP listener. */
  metrics?: string;
  pidfile?: string;
  user?: string;
  logFormat?: LogFormat;
  /** The state-dir of devices that do not set their own. */
  stateDir?: string;
}

/** A device of `vduse serve`: a block device (no `type`), or a net device (`type: 'net'`). */
export type DeviceConfig = BlkDeviceConfig | NetDeviceConfig;

export function isNetConfig(c: DeviceConfig): c is NetDeviceConfig {
  return (c as { type?: string }).type === 'net';
}

export interface ServeConfig extends ServeSettings {
  devices: DeviceConfig[];
}

const TOP_KEYS = ['socket', 'metrics', 'pidfile', 'user', 'log-format', 'state-dir', 'devices'] as const;

/** A likely intended key for a misspelled one (queueSize -> queue-size). */
function suggest(key: string, known: readonly string[]): string {
  const kebab = key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`).replace(/_/g, '-');
  const hit = known.find(
    (k) => k === kebab || k === key.toLowerCase() || k === kebab.replace('read-only', 'readonly'),
  );
  return hit !== undefined ? ` (did you mean "${hit}"?)` : ` (known keys: ${known.join(', ')})`;
}

/** Device option messages for a config file entry or device.add params: "config devices[1].queues: ...". */
function keyReporter(at: string): DeviceOptionReporter {
  return {
    style: 'key',
    label: (key) => `${at}.${key}`,
    error: (message, key) => new ConfigError(message, `${at}.${key}`),
    checkBackend: (spec) => void parseBackendSpec(spec),
  };
}

/** A device name given at `at` ("params.name"). */
export function checkName(value: unknown, at: string): string {
  return validateDeviceName(value, {
    style: 'key',
    label: () => at,
    error: (message) => new ConfigError(message, at),
  });
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
export function parseDeviceOptions(value: unknown, at: string): DeviceConfig {
  const o = object(value, at);
  const type = o.type ?? 'blk';
  if (type !== 'blk' && type !== 'net') {
    throw new ConfigError(`${at}.type: expected "blk" or "net", got ${show(type)}`, `${at}.type`);
  }
  const keys: readonly string[] = type === 'net' ? NET_DEVICE_KEYS : ['type', ...DEVICE_KEYS];
  for (const key of Object.keys(o)) {
    if (!keys.includes(key)) {
      throw new ConfigError(
        `${at}.${key}: unknown key${type === 'net' ? ' of a net device' : ''}${suggest(key, keys)}`,
        `${at}.${key}`,
      );
    }
  }
  if (type === 'net') {
    return validateNetOptions(o, {
      style: 'key',
      label: (key) => `${at}.${key}`,
      error: (message, key) => new ConfigError(message, `${at}.${key}`),
    });
  }
  const { type: _type, ...blk } = o;
  return validateDeviceOptions(blk, keyReporter(at));
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
  if (o['state-dir'] !== undefined) config.stateDir = string(o['state-dir'], `${at} state-dir`);
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
export function changedDeviceKeys(a: DeviceConfig, b: DeviceConfig): string[] {
  if (isNetConfig(a) || isNetConfig(b)) {
    return isNetConfig(a) && isNetConfig(b) ? changedNetKeys(a, b) : ['type'];
  }
  return changedBlkKeys(a, b);
}

function changedBlkKeys(a: BlkDeviceConfig, b: BlkDeviceConfig): string[] {
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
    queueThreads: 'queue-threads',
    pollUs: 'poll-us',
    stateDir: 'state-dir',
    reconnect: 'reconnect',
    persist: 'persist',
    vhostUser: 'vhost-user',
  };
  return (Object.keys(names) as (keyof BlkDeviceConfig)[]).filter((k) => a[k] !== b[k]).map((k) => names[k]);
}
