/**
 * NetRunner: the life of one served virtio-net VDUSE device with a TAP backend, shared by `vduse net` and
 * `vduse serve` (type: net). The VDUSE part (create, serve, attach, the ordered stop) is the DeviceRunner of
 * ../runner/device-runner.ts; this adds the tap (opened first, closed last), the guest's net interface it waits
 * for, the link state and the packet counters.
 */
import { existsSync } from 'node:fs';

import { TapBackend } from '../../backends/packet/tap.js';
import type { VduseTsError } from '../../common/errors.js';
import { errnoOf, messageOf } from '../../common/errors.js';
import { VirtioNetDevice, type NetStats } from '../../devices/net/index.js';
import { findNetInterface } from '../../transports/vdpa/sysfs.js';
import { MgmtError } from '../daemon/errors.js';
import { DeviceRunner, Teardown, type DeviceRunnerDeps, type GuestNode } from '../runner/device-runner.js';
import type { NetDeviceConfig, NetLinkState } from './options.js';

export { NET_DEFAULTS, type NetDeviceConfig, type NetLinkState } from './options.js';

/** The guest side of a virtio-net device attached with virtio-vdpa: its interface (no /dev node). */
const NET_GUEST: GuestNode = {
  find: (name) => findNetInterface(name),
  devPath: () => null,
  missing: (name) => `no network interface appeared for ${name} (is virtio_net loaded? see dmesg)`,
  timeoutMs: 10000,
};

/** Packets, bytes and drops one way. */
export interface NetDirection {
  packets: number;
  bytes: number;
  drops: number;
}

export interface NetCounters {
  /** Towards the guest (tap -> driver). */
  rx: NetDirection;
  /** From the guest (driver -> tap). */
  tx: NetDirection;
  driverErrors: number;
  backendErrors: number;
  /** Chains held that are work in progress. */
  inFlight: number;
}

export function netCounters(stats: Readonly<NetStats>, inFlight: number): NetCounters {
  return {
    rx: { packets: stats.rxPackets, bytes: stats.rxBytes, drops: stats.rxDropped },
    tx: { packets: stats.txPackets, bytes: stats.txBytes, drops: stats.txDropped },
    driverErrors: stats.driverErrors,
    backendErrors: stats.backendErrors,
    inFlight,
  };
}

/** One line of counters: "rx_packets=1 rx_bytes=60 rx_drops=0 tx_packets=...". */
export function formatNetCounters(c: NetCounters): string {
  const dir = (d: string, v: NetDirection): string =>
    `${d}_packets=${v.packets} ${d}_bytes=${v.bytes} ${d}_drops=${v.drops}`;
  return `${dir('rx', c.rx)} ${dir('tx', c.tx)} driver_errors=${c.driverErrors} backend_errors=${c.backendErrors}`;
}

/** The tap could not be used: one line saying why and what to do. */
export function tapOpenError(tap: string, err: unknown): VduseTsError {
  const errno = errnoOf(err);
  const why =
    errno === 'EBUSY'
      ? `tap ${tap} is in use by another process (a tap has one user at a time)`
      : errno === 'EINVAL'
        ? `${tap} exists and is not a tap made for this (a tun, another kind of interface, or one made without vnet_hdr when --no-offloads is not given)`
        : errno === 'EPERM' || errno === 'EACCES'
          ? `not permitted to open tap ${tap} (needs CAP_NET_ADMIN, or a tap made with ip tuntap add ... user $USER)`
          : `cannot open tap ${tap}: ${messageOf(err)}`;
  return new MgmtError('ERR_MGMT_TAP', why, { cause: err, ...(errno !== undefined ? { errno } : {}) });
}

export class NetRunner extends DeviceRunner<VirtioNetDevice, NetDeviceConfig> {
  readonly backend: TapBackend;

  private constructor(config: NetDeviceConfig, device: VirtioNetDevice, tap: TapBackend, teardown: Teardown) {
    super(config, device, teardown);
    this.backend = tap;
  }

  /**
   * Open the tap, create and serve the device and (unless attach is false) attach it; resolves once the guest's
   * interface (or the vhost-vdpa node) exists. On failure everything done so far is undone and the error thrown.
   */
  static async start(
    config: NetDeviceConfig,
    deps: DeviceRunnerDeps,
    options: { tunPath?: string } = {},
  ): Promise<NetRunner> {
    const { binding, logger: log } = deps;
    const teardown = new Teardown(log);
    let runner: NetRunner | null = null;
    try {
      const tunPath = options.tunPath ?? '/dev/net/tun';
      if (!existsSync(tunPath)) {
        throw new MgmtError('ERR_MGMT_TAP', `no ${tunPath}: load the tun module (modprobe tun)`, {
          errno: 'ENOENT',
        });
      }
      let tap: TapBackend;
      try {
        tap = TapBackend.open({ name: config.tap, vnetHeader: config.offloads, binding, path: tunPath });
      } catch (err) {
        throw tapOpenError(config.tap, err);
      }
      teardown.add(`close tap ${config.tap}`, () => tap.close());
      const device = new VirtioNetDevice({
        backend: tap,
        name: config.name,
        ...(config.mac !== undefined ? { mac: config.mac } : {}),
        mtu: config.mtu,
        queueSize: config.queueSize,
        offloads: config.offloads,
        linkUp: config.link === 'up',
        logger: { warn: (m) => log.warn(`${config.name}: ${m}`) },
      });
      runner = new NetRunner(config, device, tap, teardown);
      await runner.serve(deps, { guest: NET_GUEST });
      return runner;
    } catch (err) {
      if (runner !== null) await runner.abort();
      else await teardown.run().catch(() => undefined);
      throw err;
    }
  }

  get link(): NetLinkState {
    return this.device.linkUp ? 'up' : 'down';
  }

  /** Link up or down at run time: the config space STATUS changes and the driver gets a config interrupt. */
  setLink(state: NetLinkState): void {
    this.device.setLinkUp(state === 'up');
  }

  /** Frames the device is in the middle of (held receive buffers waiting for a frame do not count). */
  get inFlight(): number {
    return this.device.inFlight;
  }

  counters(): NetCounters {
    return netCounters(this.device.stats, this.device.inFlight);
  }

  formatCounters(): string {
    return formatNetCounters(this.counters());
  }
}

/** For the logs: what the runner serves ("tap vts0, mac 02:..., mtu 1500, link up"). */
export function describeNet(runner: NetRunner): string {
  return `tap ${runner.backend.name}, mac ${runner.device.mac}, mtu ${runner.config.mtu}, link ${runner.link}${runner.device.options.offloads ? ', offloads' : ''}`;
}
