/**
 * The device manager of `vduse serve`: a set of device runners by name (BlkRunner for block devices, NetRunner
 * for `type: net`). The API layer (./api.ts) and the metrics
 * (./metrics.ts) see it only through the DeviceManager interface, so both are tested with a fake.
 */
import { openSync, closeSync, constants as fsConstants } from 'node:fs';

import { BLK_LATENCY_BOUNDS_US } from '../devices/blk/device.js';
import type { SysBinding } from '../sys/binding.js';
import { messageOf } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { VdpaClient } from '../transports/vdpa/client.js';
import { BlkRunner, type BlkDeviceConfig, type BlkRunnerDeps, type BlkRunnerState } from './blk/runner.js';
import { isNetConfig, type DeviceConfig } from './config.js';
import { MgmtError } from './daemon/errors.js';
import { NetRunner, type NetDeviceConfig, type NetLinkState } from './net/runner.js';
import { VhostUserBlkRunner } from './blk/vhost-user-runner.js';

/** A served blk device: over VDUSE (BlkRunner) or as a vhost-user back-end (VhostUserBlkRunner). */
export type ServedBlk = BlkRunner | VhostUserBlkRunner;

/** A device the manager holds. */
export type ServedRunner = ServedBlk | NetRunner;

/** Start a block device over the transport its config asks for. */
export function startBlk(config: BlkDeviceConfig, deps: BlkRunnerDeps): Promise<ServedBlk> {
  return config.vhostUser !== undefined
    ? VhostUserBlkRunner.start(config, deps)
    : BlkRunner.start(config, deps);
}

/** The negotiated features and transport counters of either kind. */
function transportOf(runner: ServedBlk): Pick<VhostUserBlkRunner, 'features' | 'stats'> {
  return runner instanceof VhostUserBlkRunner ? runner : runner.vduse;
}

/** What a net device adds to its DeviceInfo. */
export interface NetInfo {
  tap: string;
  mac: string;
  mtu: number;
  link: NetLinkState;
  offloads: boolean;
}

/** Packets, bytes and drops one way. */
export interface NetDirectionStats {
  packets: number;
  bytes: number;
  drops: number;
}

export interface DeviceInfo {
  name: string;
  /** blk or net (absent in an older daemon's answer: blk). */
  type?: 'blk' | 'net';
  state: BlkRunnerState;
  /** /dev/vdX, /dev/vhost-vdpa-N or /dev/vduse/NAME. */
  path: string;
  backend: string;
  queues: number;
  queueSize: number;
  logicalBlockSize: number;
  readOnly: boolean;
  packed: boolean;
  attach: boolean;
  driver: string;
  serial?: string;
  /** Negotiated features (hex), "0x0" before the driver got that far. */
  features: string;
  /** Capacity in bytes (0 for a net device). */
  size: number;
  /** A net device's tap, MAC, MTU and link state. */
  net?: NetInfo;
}

export interface QueueStats {
  index: number;
  requests: number;
  bytesRead: number;
  bytesWritten: number;
  errors: number;
  inFlight: number;
  kicks: number;
  interrupts: number;
}

export interface DeviceStats {
  name: string;
  /** blk or net (absent in an older daemon's answer: blk). */
  type?: 'blk' | 'net';
  /** Requests completed (answered to the driver). */
  requests: number;
  reads: number;
  writes: number;
  flushes: number;
  discards: number;
  writeZeroes: number;
  bytesRead: number;
  bytesWritten: number;
  errors: { io: number; unsupported: number; driver: number; backend: number };
  inFlight: number;
  /** Request latency: upper bounds in µs, non-cumulative counts (one more: the overflow), count, sum. */
  latency: { boundsUs: readonly number[]; buckets: number[]; count: number; sumSeconds: number };
  queues: QueueStats[];
  configInterrupts: number;
  controlMessages: number;
  controlMessageMaxMs: number;
  /**
   * A net device's traffic: rx towards the guest (tap -> driver), tx from it. Its requests are the frames both
   * ways, bytesRead the bytes received by the driver, bytesWritten those it sent.
   */
  net?: { rx: NetDirectionStats; tx: NetDirectionStats; link: NetLinkState };
}

export interface RemoveOptions {
  /** Skip the safety checks (device in use, requests in flight). */
  force?: boolean;
}

export interface DeviceManager {
  add(config: DeviceConfig): Promise<DeviceInfo>;
  remove(name: string, options?: RemoveOptions): Promise<void>;
  list(): DeviceInfo[];
  stats(name?: string): DeviceStats[];
  resize(name: string, bytes: number): Promise<DeviceInfo>;
  /** Set a net device's link up or down (the driver sees the config change). */
  link(name: string, state: NetLinkState): DeviceInfo;
  /** The config a device was created with (for reloads). */
  configOf(name: string): DeviceConfig | undefined;
}

export interface BlkManagerOptions {
  binding: SysBinding;
  logger: Logger;
  /** Per-device logger (e.g. with a device field). */
  deviceLogger?: (name: string) => Logger;
  vdpa: VdpaClient;
  /** How long a safe remove waits for requests in flight to finish. */
  drainTimeoutMs?: number;
  /** The state-dir of devices that do not set their own (vduse serve --state-dir). */
  stateDir?: string;
  /**
   * Called whenever what list() returns may have changed (a device added, removed, resized, broken, its
   * features negotiated or reset): vduse serve publishes the list to its RPC thread then.
   */
  onChange?: () => void;
  /** Starts a block device (default BlkRunner.start; tests pass a fake). */
  start?: (config: BlkDeviceConfig, deps: BlkRunnerDeps) => Promise<ServedBlk>;
  /** Starts a net device (default NetRunner.start; tests pass a fake). */
  startNet?: (config: NetDeviceConfig, deps: BlkRunnerDeps) => Promise<NetRunner>;
}

export class BlkDeviceManager implements DeviceManager {
  readonly #runners = new Map<string, ServedRunner>();
  /** Names being added (so two adds of one name cannot race). */
  readonly #adding = new Set<string>();
  /** Removals under way by name: a second remove of the same device waits for the first and gets its result. */
  readonly #removing = new Map<string, Promise<void>>();
  #frozen: string | null = null;
  readonly #o: BlkManagerOptions;

  constructor(options: BlkManagerOptions) {
    this.#o = options;
  }

  /** Refuse add/remove from now on with `why` (privileges dropped). */
  freeze(why: string): void {
    this.#frozen = why;
  }

  get runners(): readonly ServedRunner[] {
    return [...this.#runners.values()];
  }

  /** A device's config with the daemon's defaults filled in (what add() starts, what configOf() returns). */
  resolve<C extends DeviceConfig>(config: C): C {
    if (config.stateDir !== undefined || this.#o.stateDir === undefined) return config;
    return { ...config, stateDir: this.#o.stateDir };
  }

  async add(given: DeviceConfig): Promise<DeviceInfo> {
    const config = this.resolve(given);
    if (this.#frozen !== null)
      throw new MgmtError('ERR_MGMT_NOT_PERMITTED', `cannot add ${config.name}: ${this.#frozen}`);
    if (this.#runners.has(config.name) || this.#adding.has(config.name)) {
      throw new MgmtError('ERR_MGMT_DEVICE_EXISTS', `device ${config.name} exists already`);
    }
    this.#adding.add(config.name);
    try {
      const log = this.#o.deviceLogger?.(config.name) ?? this.#o.logger;
      const deps = { binding: this.#o.binding, logger: log, vdpa: this.#o.vdpa };
      let runner: ServedRunner;
      if (isNetConfig(config)) {
        const start = this.#o.startNet ?? ((c, d) => NetRunner.start(c, d));
        runner = await start(config, deps);
      } else {
        const start = this.#o.start ?? startBlk;
        runner = await start(config, deps);
      }
      this.#runners.set(config.name, runner);
      runner.on('broken', (reason) => {
        log.error(
          `device ${config.name} is broken (${reason.message}); remove it with vduse del ${config.name}`,
        );
        this.#changed();
      });
      // the features in the list follow the driver
      if (runner instanceof VhostUserBlkRunner) {
        runner.transport.on('started', () => this.#changed());
        runner.transport.on('disconnected', () => this.#changed());
      } else {
        runner.vduse.on?.('driver-ok', () => this.#changed());
        runner.vduse.on?.('reset', () => this.#changed());
      }
      this.#changed();
      log.info(`device ${config.name} ready at ${runner.path}`);
      return infoOf(runner);
    } finally {
      this.#adding.delete(config.name);
    }
  }

  /**
   * Remove a device: the safety checks (unless force), then the ordered teardown, destroying the device even
   * when it is set to persist. One removal per device: a second call while one runs (two removes in one batch)
   * waits for it and gets its result.
   */
  remove(name: string, options: RemoveOptions = {}): Promise<void> {
    const running = this.#removing.get(name);
    if (running !== undefined) return running;
    const runner = this.#get(name);
    if (this.#frozen !== null) {
      return Promise.reject(
        new MgmtError('ERR_MGMT_NOT_PERMITTED', `cannot remove ${name}: ${this.#frozen}`),
      );
    }
    const removal = this.#remove(runner, options).finally(() => this.#removing.delete(name));
    this.#removing.set(name, removal);
    return removal;
  }

  async #remove(runner: ServedRunner, options: RemoveOptions): Promise<void> {
    const name = runner.name;
    if (!options.force && runner.state === 'running') {
      const path = runner.currentPath();
      if (path.startsWith('/dev/vd') && blockDeviceInUse(path)) {
        throw new MgmtError(
          'ERR_MGMT_DEVICE_BUSY',
          `device ${name} (${path}) is in use (mounted or held open exclusively); unmount it first or use force`,
        );
      }
      const drained = await waitIdle(runner, this.#o.drainTimeoutMs ?? 10_000);
      if (!drained) {
        throw new MgmtError(
          'ERR_MGMT_DEVICE_BUSY',
          `device ${name} still has ${runner.inFlight} request(s) in flight; retry or use force`,
        );
      }
    }
    // the daemon's shutdown may have started this teardown meanwhile: stop() then waits for it
    const stopped = runner.stop('destroy');
    this.#changed();
    try {
      await stopped;
    } finally {
      if (this.#runners.get(name) === runner) this.#runners.delete(name);
      this.#changed();
    }
    (this.#o.deviceLogger?.(name) ?? this.#o.logger).info(`device ${name} removed`);
  }

  list(): DeviceInfo[] {
    return this.runners.map(infoOf);
  }

  stats(name?: string): DeviceStats[] {
    const runners = name === undefined ? this.runners : [this.#get(name)];
    return runners.map(statsOf);
  }

  async resize(name: string, bytes: number): Promise<DeviceInfo> {
    const runner = this.#get(name);
    if (runner instanceof NetRunner) {
      throw new MgmtError(
        'ERR_MGMT_WRONG_TYPE',
        `${name} is a net device: only a block device can be resized`,
      );
    }
    await runner.resize(bytes);
    this.#changed();
    return infoOf(runner);
  }

  link(name: string, state: NetLinkState): DeviceInfo {
    const runner = this.#get(name);
    if (!(runner instanceof NetRunner)) {
      throw new MgmtError(
        'ERR_MGMT_WRONG_TYPE',
        `${name} is a block device: link up/down is for net devices`,
      );
    }
    if (runner.state !== 'running') {
      throw new MgmtError('ERR_MGMT_DEVICE_BUSY', `${name} is ${runner.state}: its link cannot be changed`);
    }
    if (runner.link !== state) {
      runner.setLink(state);
      (this.#o.deviceLogger?.(name) ?? this.#o.logger).info(`device ${name}: link ${state}`);
      this.#changed();
    }
    return infoOf(runner);
  }

  configOf(name: string): DeviceConfig | undefined {
    const r = this.#runners.get(name);
    return r === undefined ? undefined : { ...r.config };
  }

  /**
   * Stop every device, newest first (daemon shutdown): each is detached and destroyed, or kept for the next
   * daemon when it is set to persist. A device being removed meanwhile is not torn down twice: its teardown is
   * waited for. Failures are logged, not thrown.
   */
  async removeAll(): Promise<void> {
    for (const runner of [...this.runners].reverse()) {
      try {
        // a device whose removal is under way goes (persist or not): that was asked for
        await runner.stop(this.#removing.has(runner.name) ? 'destroy' : 'auto');
      } catch (err) {
        this.#o.logger.error(`stopping ${runner.name}: ${messageOf(err)}`);
      }
      if (this.#runners.get(runner.name) === runner) this.#runners.delete(runner.name);
      this.#changed();
    }
    await Promise.allSettled([...this.#removing.values()]);
  }

  #changed(): void {
    try {
      this.#o.onChange?.();
    } catch (err) {
      this.#o.logger.warn(`publishing the device list: ${messageOf(err)}`);
    }
  }

  #get(name: string): ServedRunner {
    const r = this.#runners.get(name);
    if (r === undefined) throw new MgmtError('ERR_MGMT_NO_SUCH_DEVICE', `no device named ${name}`);
    return r;
  }
}

/** O_EXCL on a block device fails with EBUSY while it is mounted or held exclusively. */
function blockDeviceInUse(path: string): boolean {
  try {
    closeSync(openSync(path, fsConstants.O_RDONLY | fsConstants.O_EXCL | fsConstants.O_NONBLOCK));
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EBUSY';
  }
}

async function waitIdle(runner: ServedRunner, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (runner.inFlight > 0) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 10));
  }
  return true;
}

export function infoOf(runner: ServedRunner): DeviceInfo {
  if (runner instanceof NetRunner) return netInfoOf(runner);
  const c = runner.config;
  const info: DeviceInfo = {
    name: c.name,
    type: 'blk',
    state: runner.state,
    path: runner.currentPath(),
    backend: c.backend,
    queues: c.queues,
    queueSize: c.queueSize,
    logicalBlockSize: c.logicalBlockSize,
    readOnly: c.readOnly,
    packed: c.packed,
    attach: c.attach,
    driver: c.vhostUser !== undefined ? 'vhost-user' : c.attach ? c.driver : 'none',
    features: `0x${transportOf(runner).features.toString(16)}`,
    size: runner.device.capacityBytes,
  };
  if (c.serial !== undefined) info.serial = c.serial;
  return info;
}

function netInfoOf(runner: NetRunner): DeviceInfo {
  const c = runner.config;
  return {
    name: c.name,
    type: 'net',
    state: runner.state,
    path: runner.currentPath(),
    backend: `tap:${c.tap}`,
    queues: 1,
    queueSize: c.queueSize,
    logicalBlockSize: 0,
    readOnly: false,
    packed: false,
    attach: c.attach,
    driver: c.attach ? c.driver : 'none',
    features: `0x${runner.vduse.features.toString(16)}`,
    size: 0,
    net: { tap: c.tap, mac: runner.device.mac, mtu: c.mtu, link: runner.link, offloads: c.offloads },
  };
}

export function statsOf(runner: ServedRunner): DeviceStats {
  if (runner instanceof NetRunner) return netStatsOf(runner);
  const c = runner.counters();
  const s = c.stats;
  const b = c.backend;
  const t = transportOf(runner).stats;
  const l = c.latency;
  return {
    name: runner.name,
    type: 'blk',
    requests: s.completed,
    reads: b.reads,
    writes: b.writes,
    flushes: b.flushes,
    discards: b.discards,
    writeZeroes: b.writeZeroes,
    bytesRead: s.bytesRead,
    bytesWritten: s.bytesWritten,
    errors: { io: s.ioErrors, unsupported: s.unsupported, driver: s.driverErrors, backend: s.backendErrors },
    inFlight: c.inFlight,
    latency: {
      boundsUs: BLK_LATENCY_BOUNDS_US,
      buckets: [...l.buckets],
      count: l.count,
      sumSeconds: l.sumSeconds,
    },
    queues: c.queues.map((q, index) => ({
      index,
      requests: q.completed,
      bytesRead: q.bytesRead,
      bytesWritten: q.bytesWritten,
      errors: q.errors,
      inFlight: q.inFlight,
      kicks: t.kicks[index] ?? 0,
      interrupts: t.interrupts[index] ?? 0,
    })),
    configInterrupts: t.configInterrupts,
    controlMessages: t.messages,
    controlMessageMaxMs: t.messageMaxMs,
  };
}

/** The transport's counters every device has: kicks and interrupts per queue, config interrupts, messages. */
function transportStats(runner: NetRunner) {
  const t = runner.vduse.stats;
  return {
    kicks: (i: number) => t.kicks[i] ?? 0,
    interrupts: (i: number) => t.interrupts[i] ?? 0,
    configInterrupts: t.configInterrupts,
    controlMessages: t.messages,
    controlMessageMaxMs: t.messageMaxMs,
  };
}

function netStatsOf(runner: NetRunner): DeviceStats {
  const c = runner.counters();
  const t = transportStats(runner);
  const queue = (index: number, d: NetDirectionStats, read: boolean) => ({
    index,
    requests: d.packets,
    bytesRead: read ? d.bytes : 0,
    bytesWritten: read ? 0 : d.bytes,
    errors: d.drops,
    inFlight: 0,
    kicks: t.kicks(index),
    interrupts: t.interrupts(index),
  });
  return {
    name: runner.name,
    type: 'net',
    requests: c.rx.packets + c.tx.packets,
    reads: 0,
    writes: 0,
    flushes: 0,
    discards: 0,
    writeZeroes: 0,
    bytesRead: c.rx.bytes,
    bytesWritten: c.tx.bytes,
    errors: { io: 0, unsupported: 0, driver: c.driverErrors, backend: c.backendErrors },
    inFlight: c.inFlight,
    latency: { boundsUs: [], buckets: [0], count: 0, sumSeconds: 0 },
    queues: [queue(0, c.rx, true), queue(1, c.tx, false)],
    configInterrupts: t.configInterrupts,
    controlMessages: t.controlMessages,
    controlMessageMaxMs: t.controlMessageMaxMs,
    net: { rx: c.rx, tx: c.tx, link: runner.link },
  };
}
