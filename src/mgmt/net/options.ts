/**
 * The options of one virtio-net device with a TAP backend, validated in one place for `vduse net` (command-line
 * text), a `type: net` entry of the `vduse serve` config file and device.add (JSON values). Pure: no I/O, nothing
 * heavy imported.
 */
import { VIRTQUEUE_MAX_SIZE } from '../../uapi/virtio-ring.js';
import {
  checkBoolean,
  checkDeviceName,
  checkInteger,
  checkWord,
  describeValue,
  optionError,
  type OptionReporter,
} from '../runner/options.js';
import type { DeviceRunnerConfig, VdpaDriverName } from '../runner/device-runner.js';

export type NetLinkState = 'up' | 'down';

/** What a net device is made of: the options of `vduse net`, of a `type: net` config entry and of device.add. */
export interface NetDeviceConfig extends DeviceRunnerConfig {
  type: 'net';
  name: string;
  /** The TAP interface: an existing persistent tap is attached, else one of that name is created. */
  tap: string;
  /** 'aa:bb:cc:dd:ee:ff'; absent: made from the name (stable across restarts). */
  mac?: string;
  mtu: number;
  queueSize: number;
  /** The link state at start. */
  link: NetLinkState;
  /** Pass checksum/segmentation offloads through the tap's vnet header. */
  offloads: boolean;
  attach: boolean;
  driver: VdpaDriverName;
}

export const NET_DEFAULTS = {
  mtu: 1500,
  queueSize: 256,
  link: 'up' as NetLinkState,
  offloads: true,
  attach: true,
  driver: 'virtio-vdpa' as VdpaDriverName,
  // A tap's frames cannot be handed over to a successor: a net device is neither taken over nor kept.
  reconnect: 'never' as const,
  persist: false,
};

/** Config keys and device.add params of a net device; `vduse net` flags are the same (attach = --no-attach). */
export const NET_DEVICE_KEYS = [
  'type',
  'name',
  'tap',
  'mac',
  'mtu',
  'queue-size',
  'link',
  'offloads',
  'attach',
  'driver',
] as const;

export type NetOptionKey = (typeof NET_DEVICE_KEYS)[number];

export const NET_INTEGER_LIMITS = {
  // ETH_MIN_MTU .. the largest MTU virtio-net's config field holds
  mtu: { min: 68, max: 65535, pow2: false },
  'queue-size': { min: 2, max: VIRTQUEUE_MAX_SIZE, pow2: true },
} as const;

const MAC_RE = /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/;
/** What a tap name may be: what the kernel takes for an interface (IFNAMSIZ - 1 bytes, no '/', ':' or spaces). */
const IFNAME_RE = /^[^/:\s]{1,15}$/;

/** A unicast, non-zero MAC as aa:bb:cc:dd:ee:ff; `why` says what is wrong, or null. */
export function macProblem(mac: string): string | null {
  if (!MAC_RE.test(mac)) return 'is not six hex pairs like 52:54:00:12:34:56';
  const first = parseInt(mac.slice(0, 2), 16);
  if ((first & 1) !== 0) return 'is a multicast address (the first byte must be even)';
  if (/^(00:){5}00$/.test(mac)) return 'is all zero';
  return null;
}

/** A link state word ('up', 'down'); anything else throws `r.error`. */
export function checkLinkState<K extends string>(value: unknown, key: K, r: OptionReporter<K>): NetLinkState {
  return checkWord(value, key, ['up', 'down'] as const, r);
}

/**
 * Validate one net device's options, keyed by NET_DEVICE_KEYS (unknown keys are the caller's business);
 * missing ones take NET_DEFAULTS. Throws `r.error(...)` for the first bad field.
 */
export function validateNetOptions(
  o: Readonly<Partial<Record<string, unknown>>>,
  r: OptionReporter<NetOptionKey>,
): NetDeviceConfig {
  if (o.type !== undefined && o.type !== 'net') {
    throw optionError(
      r,
      'type',
      `must be net, got "${String(o.type)}"`,
      `expected "net", got ${describeValue(o.type)}`,
    );
  }
  const name = checkDeviceName(o.name, 'name', r);
  const tap = o.tap;
  if (typeof tap !== 'string' || !IFNAME_RE.test(tap)) {
    throw tap === undefined
      ? optionError(r, 'tap', 'is required', 'expected a tap interface name, got nothing')
      : optionError(
          r,
          'tap',
          `"${String(tap)}" is not an interface name (1 to 15 bytes, no '/', ':' or spaces)`,
          `expected an interface name (1 to 15 bytes, no '/', ':' or spaces), got ${describeValue(tap)}`,
        );
  }
  if (Buffer.byteLength(tap) > 15) {
    throw optionError(
      r,
      'tap',
      `"${tap}" is longer than 15 bytes`,
      `${describeValue(tap)} is longer than 15 bytes`,
    );
  }
  const config: NetDeviceConfig = {
    type: 'net',
    name,
    tap,
    mtu: o.mtu === undefined ? NET_DEFAULTS.mtu : checkInteger(o.mtu, 'mtu', NET_INTEGER_LIMITS.mtu, r),
    queueSize:
      o['queue-size'] === undefined
        ? NET_DEFAULTS.queueSize
        : checkInteger(o['queue-size'], 'queue-size', NET_INTEGER_LIMITS['queue-size'], r),
    link: o.link === undefined ? NET_DEFAULTS.link : checkLinkState(o.link, 'link', r),
    offloads: checkBoolean(o.offloads, 'offloads', NET_DEFAULTS.offloads, r),
    attach: checkBoolean(o.attach, 'attach', NET_DEFAULTS.attach, r),
    driver: NET_DEFAULTS.driver,
    reconnect: NET_DEFAULTS.reconnect,
    persist: NET_DEFAULTS.persist,
  };
  if (o.mac !== undefined) {
    const mac = typeof o.mac === 'string' ? o.mac.replace(/-/g, ':').toLowerCase() : null;
    const problem = mac === null ? null : macProblem(mac);
    if (mac === null || problem !== null) {
      throw optionError(
        r,
        'mac',
        `"${String(o.mac)}" ${problem ?? ''}`,
        `expected a unicast MAC like "52:54:00:12:34:56", got ${describeValue(o.mac)}${problem !== null ? ` (it ${problem})` : ''}`,
      );
    }
    config.mac = mac;
  }
  if (o.driver !== undefined) {
    config.driver = checkWord(o.driver, 'driver', ['virtio-vdpa', 'vhost-vdpa'] as const, r);
    if (!config.attach) {
      throw optionError(
        r,
        'driver',
        `makes no sense with ${r.label('attach')}`,
        'makes no sense with attach: false',
      );
    }
  }
  return config;
}

/** The keys of a net device whose change needs the device re-created (all but none). */
export function changedNetKeys(a: NetDeviceConfig, b: NetDeviceConfig): string[] {
  const names: Partial<Record<keyof NetDeviceConfig, string>> = {
    name: 'name',
    tap: 'tap',
    mac: 'mac',
    mtu: 'mtu',
    queueSize: 'queue-size',
    link: 'link',
    offloads: 'offloads',
    attach: 'attach',
    driver: 'driver',
  };
  return (Object.keys(names) as (keyof NetDeviceConfig)[]).filter((k) => a[k] !== b[k]).map((k) => names[k]!);
}
