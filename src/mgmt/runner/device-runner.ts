/**
 * DeviceRunner: the life of one served VDUSE device, whatever its type. BlkRunner (../blk/runner.ts) and
 * NetRunner (../net/runner.ts) extend it with what their type adds (the backend, the guest-side node it waits
 * for, resize or link state); `vduse blk`, `vduse net` and `vduse serve` all run devices through it.
 *
 * Order of things (and the reverse on the way out):
 *   [the subclass: open the backend, make the device] -> VDUSE_CREATE_DEV (or take over the device a previous
 *   daemon left) -> open /dev/vduse/NAME + serve -> vdpa DEV_NEW (worker thread) -> bind the bus driver and
 *   wait for the guest-side node (block device, net interface, /dev/vhost-vdpa-N) -> running.
 *   stop(): DEV_DEL (still serving: it resets the device) -> close the dev fd -> VDUSE_DESTROY_DEV ->
 *   close the control fd -> [the subclass's steps, e.g. close the backend].
 */
import { EventEmitter } from 'node:events';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import { messageOf } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import type { VirtioDevice } from '../../devices/device.js';
import type { SysBinding } from '../../sys/binding.js';
import { VduseControl } from '../../transports/vduse/control.js';
import type { VduseDevice, VduseDeviceOptions } from '../../transports/vduse/device.js';
import { createOrReconnect, type ReconnectPolicy } from '../../transports/vduse/recovery/reconnect.js';
import type { VdpaClient } from '../../transports/vdpa/client.js';
import {
  VDPA_BUS,
  boundDriver,
  findVhostDevice,
  rebindVdpaDevice,
  waitFor,
  waitForDevNode,
} from '../../transports/vdpa/sysfs.js';
import { MgmtError } from '../daemon/errors.js';
import { checkDaemonPath } from '../daemon/paths.js';

/** The vdpa bus driver a device is bound to once attached. */
export type VdpaDriverName = 'virtio-vdpa' | 'vhost-vdpa';

/** What every served device is configured with, whatever its type. */
export interface DeviceRunnerConfig {
  name: string;
  /** Attach to the vdpa bus (DEV_NEW) and wait for the guest-side node. */
  attach: boolean;
  driver: VdpaDriverName;
  /** Crash recovery: the directory of the state log NAME.state (absent: the default). */
  stateDir?: string;
  /** Crash recovery: take over a device left by a previous daemon ('auto'), never, or insist on it ('always'). */
  reconnect: ReconnectPolicy;
  /** Keep the device (attached, with its state log) when the daemon stops, for the next daemon to take over. */
  persist: boolean;
}

export interface DeviceRunnerDeps {
  binding: SysBinding;
  logger: Logger;
  /** The vdpa netlink client (shared by all devices of a daemon; its owner closes it). */
  vdpa: VdpaClient;
}

/**
 * How a stop ends: 'auto' honours the device's persist setting (kept for a successor when it is set), 'destroy'
 * detaches and destroys whatever it says (vduse del: the device is meant to go).
 */
export type StopMode = 'auto' | 'destroy';

export type RunnerState = 'starting' | 'running' | 'stopping' | 'stopped' | 'broken';

export interface DeviceRunnerEvents {
  /** The dev fd failed for good (a message timed out): the device cannot be served any more. */
  broken: [reason: Error];
}

/** How the guest side of a device attached with virtio-vdpa is found (the vhost-vdpa side is the same for all). */
export interface GuestNode {
  /** The node of vdpa device `name` once the virtio driver probed it ('vda', 'eth1'), or null. */
  find(name: string): string | null;
  /** The /dev path to wait for, or null when the node has none (a net interface): `node` is the path then. */
  devPath(node: string): string | null;
  /** What did not appear, for the error: "no block device appeared for NAME (...)". */
  missing(name: string): string;
  /** How long to wait for it (ms). */
  timeoutMs: number;
}

/** How a subclass serves its device: the device, and the queue threads when it has any. */
export interface ServeOptions {
  queueThreads?: VduseDeviceOptions['queueThreads'];
  guest: GuestNode;
}

interface CleanupStep {
  what: string;
  run: () => Promise<void> | void;
}

/**
 * The ordered teardown of one device: the steps of start-up undone newest first, once. A second run() while
 * one is under way (two removes at once, vduse del then SIGTERM) does not start the steps again: it waits for
 * the first and gets its result (the first step's error, if one failed).
 */
export class Teardown {
  readonly #steps: CleanupStep[] = [];
  #running: Promise<void> | null = null;

  constructor(readonly log: Logger) {}

  add(what: string, run: () => Promise<void> | void): void {
    this.#steps.push({ what, run });
  }

  /** Started (and maybe finished) already. */
  get started(): boolean {
    return this.#running !== null;
  }

  run(): Promise<void> {
    this.#running ??= this.#unwind();
    return this.#running;
  }

  async #unwind(): Promise<void> {
    let failed: unknown = null;
    while (this.#steps.length > 0) {
      const step = this.#steps.pop()!;
      try {
        this.log.debug(`teardown: ${step.what}`);
        await step.run();
      } catch (err) {
        this.log.error(`${step.what}: ${messageOf(err)}`);
        failed ??= err;
      }
    }
    if (failed !== null) throw failed;
  }
}

/**
 * One served device. A subclass makes its device (and adds its own teardown steps first, e.g. close the
 * backend), constructs itself, then calls serve(); when serve() or anything after it fails, it calls abort().
 */
export class DeviceRunner<
  D extends VirtioDevice = VirtioDevice,
  C extends DeviceRunnerConfig = DeviceRunnerConfig,
> extends EventEmitter<DeviceRunnerEvents> {
  readonly config: Readonly<C>;
  readonly device: D;
  readonly startedAt = Date.now();
  readonly log: Logger;
  #vduse: VduseDevice | null = null;
  #state: RunnerState = 'starting';
  #path: string;
  /** serve() finished: from now on a stop may keep the device for a successor (persist). */
  #served = false;
  /** How the guest-side node is found (set by serve()). */
  #guest: GuestNode | null = null;
  readonly #teardown: Teardown;
  /** Set by stop('destroy'): the persist setting is overridden, the device goes. */
  #destroy = false;

  protected constructor(config: C, device: D, teardown: Teardown) {
    super();
    this.config = Object.freeze({ ...config });
    this.device = device;
    this.#teardown = teardown;
    this.log = teardown.log;
    this.#path = `/dev/vduse/${config.name}`;
  }

  /**
   * Create (or take over) the VDUSE device, serve it and (unless attach is false) attach it to the vdpa bus;
   * resolves once the guest-side node exists. On failure the caller runs abort().
   */
  protected async serve(deps: DeviceRunnerDeps, options: ServeOptions): Promise<void> {
    const { binding, logger: log, vdpa } = deps;
    const config = this.config;
    const teardown = this.#teardown;
    if (config.stateDir !== undefined) checkDaemonPath(config.stateDir, 'state-dir');
    const control = VduseControl.open(binding);
    teardown.add('close the control device', () => control.close());
    // Create, or take over a device a previous daemon left (crash recovery). With persist, a stop once running
    // leaves the device and its state log for a successor: no detach, no destroy.
    const served = await createOrReconnect({
      binding,
      control,
      name: config.name,
      device: this.device,
      logger: log,
      reconnect: config.reconnect,
      ...(config.stateDir !== undefined ? { stateDir: config.stateDir } : {}),
      ...(options.queueThreads !== undefined ? { queueThreads: options.queueThreads } : {}),
    });
    const keep = (): boolean => this.#served && this.persists;
    teardown.add(`destroy VDUSE device ${config.name}`, () => (keep() ? served.keep() : served.destroy()));
    const vduse = served.vduse;
    this.#vduse = vduse;
    teardown.add(`close /dev/vduse/${config.name}`, () => (keep() ? vduse.closeForRestart() : vduse.close()));
    vduse.on('broken', (reason) => {
      if (this.#state === 'stopping' || this.#state === 'stopped') return;
      this.#state = 'broken';
      this.emit('broken', reason);
    });

    const attached = (): boolean => existsSync(join(VDPA_BUS, 'devices', config.name));
    if (config.attach) {
      // a device taken over is still attached
      if (!(served.reconnected && attached())) await vdpa.addDevice(config.name);
      teardown.add(`detach ${config.name} from the vdpa bus`, () =>
        keep() ? undefined : vdpa.deleteDevice(config.name),
      );
      this.#path = await attachedPath(config, options.guest, log);
    } else {
      // Attached by someone else (vdpa dev add) meanwhile: detach it on the way out, or it cannot be destroyed.
      teardown.add(`detach ${config.name} from the vdpa bus if attached`, async () => {
        if (!keep() && attached()) await vdpa.deleteDevice(config.name);
      });
    }
    this.#guest = options.guest;
    if (this.#state === 'starting') this.#state = 'running';
    this.#served = true;
  }

  /** Undo a failed start (everything added to the teardown so far); never throws. */
  protected async abort(): Promise<void> {
    await this.#teardown.run().catch(() => undefined);
    this.#state = 'stopped';
  }

  /** Add a step to the teardown (run before the ones added earlier). */
  protected onStop(what: string, run: () => Promise<void> | void): void {
    this.#teardown.add(what, run);
  }

  /** The served VDUSE device (set by serve()). */
  get vduse(): VduseDevice {
    if (this.#vduse === null) throw new MgmtError('ERR_MGMT_NOT_STARTED', `${this.name} is not served yet`);
    return this.#vduse;
  }

  get name(): string {
    return this.config.name;
  }

  get state(): RunnerState {
    return this.#state;
  }

  /** The guest-side node (/dev/vdX, an interface name, /dev/vhost-vdpa-N), or /dev/vduse/NAME when not attached. */
  get path(): string {
    return this.#path;
  }

  /** The guest-side node as it is now (an outside `vdpa dev add` may have attached it). */
  currentPath(): string {
    if (this.config.attach || this.#guest === null) return this.#path;
    const node = this.#guest.find(this.config.name);
    if (node !== null) return this.#guest.devPath(node) ?? node;
    const vhost = findVhostDevice(this.config.name);
    return vhost !== null ? `/dev/${vhost}` : this.#path;
  }

  /**
   * Ordered teardown. Detaching (DEV_DEL) makes the driver finish and reset the device, and closing waits for
   * requests still in the backend, so no I/O is cut short. It runs once: a second call while it runs waits
   * for it and gets its result. `mode` 'destroy' overrides persist (the device goes whatever its setting);
   * it has effect only on the call that starts the teardown.
   */
  stop(mode: StopMode = 'auto'): Promise<void> {
    if (!this.#teardown.started) {
      if (mode === 'destroy') this.#destroy = true;
      this.#state = 'stopping';
    }
    return this.#teardown.run().finally(() => {
      this.#state = 'stopped';
    });
  }

  /** The device is kept for a successor at stop (persist), unless stop('destroy'). */
  get persists(): boolean {
    return this.config.persist && !this.#destroy;
  }
}

/** Bind the attached device to its bus driver and wait for its guest-side node; returns the node's path. */
async function attachedPath(config: DeviceRunnerConfig, guest: GuestNode, log: Logger): Promise<string> {
  if (config.driver === 'vhost-vdpa') {
    if (boundDriver(config.name) !== 'vhost_vdpa') await rebindVdpaDevice(config.name, 'vhost_vdpa');
    const node = await waitFor(() => findVhostDevice(config.name), 5000);
    if (node === null)
      throw new MgmtError(
        'ERR_MGMT_ATTACH',
        `vdpa device ${config.name} has no vhost-vdpa char device (is vhost_vdpa loaded?)`,
      );
    return (await waitForDevNode(node, 5000)) ?? `/dev/${node}`;
  }
  const driver = boundDriver(config.name);
  if (driver !== 'virtio_vdpa') {
    if (driver === null) log.debug(`${config.name} is not bound to a bus driver yet`);
    await rebindVdpaDevice(config.name, 'virtio_vdpa');
  }
  const node = await waitFor(() => guest.find(config.name), guest.timeoutMs);
  if (node === null) throw new MgmtError('ERR_MGMT_ATTACH', guest.missing(config.name));
  const dev = guest.devPath(node);
  if (dev === null) return node;
  return (await waitForDevNode(node, 5000)) ?? dev;
}
