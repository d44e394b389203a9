/**
 * BlkRunner: the life of one served virtio-blk VDUSE device, shared by `vduse blk` (one device) and
 * `vduse serve` (many devices in one daemon).
 *
 * Order of things (and the reverse on the way out):
 *   open backend -> VDUSE_CREATE_DEV -> open /dev/vduse/NAME + serve -> vdpa DEV_NEW (worker thread) ->
 *   wait for the block device (or vhost-vdpa node) -> ready.
 *   stop(): DEV_DEL (still serving: it resets the device) -> close the dev fd -> VDUSE_DESTROY_DEV ->
 *   close the control fd -> close the backend.
 */
import { EventEmitter } from 'node:events';
import { existsSync, statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';

import type { BlockBackend } from '../../backends/backend.js';
import { FileBackend } from '../../backends/file-backend.js';
import { parseBackendSpec } from '../../backends/index.js';
import type { FileBackendSpec } from '../../backends/spec.js';
import { UsageError, messageOf } from '../../common/errors.js';
import { VirtioBlkDevice } from '../../devices/blk/device.js';
import type { SysBinding } from '../../sys/binding.js';
import { VduseControl } from '../../transports/vduse/control.js';
import type { VduseDevice } from '../../transports/vduse/device.js';
import { createOrReconnect } from '../../transports/vduse/recovery/reconnect.js';
import type { Logger } from '../../common/logger.js';
import type { VdpaClient } from '../../transports/vdpa/client.js';
import type { CountingBackend } from '../../backends/counting-backend.js';
import {
  VDPA_BUS,
  boundDriver,
  findBlockDevice,
  findVhostDevice,
  rebindVdpaDevice,
  waitFor,
  waitForDevNode,
} from '../../transports/vdpa/sysfs.js';

import {
  BLK_THREAD_MODULE,
  blkCounters,
  blkDeviceOptions,
  mergeBlkCounters,
  openBlkBackend,
  type BlkCounters,
  type BlkThreadOptions,
} from './thread-device.js';
import type { BlkDeviceConfig } from './options.js';
import { MgmtError } from '../daemon/errors.js';
import { checkDaemonPath } from '../daemon/paths.js';

export { BLK_DEFAULTS, type BlkDeviceConfig, type BlkDriver } from './options.js';

export interface BlkRunnerDeps {
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

export type BlkRunnerState = 'starting' | 'running' | 'stopping' | 'stopped' | 'broken';

export interface BlkRunnerEvents {
  /** The dev fd failed for good (a message timed out): the device cannot be served any more. */
  broken: [reason: Error];
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

export class BlkRunner extends EventEmitter<BlkRunnerEvents> {
  readonly config: Readonly<BlkDeviceConfig>;
  /** The counting wrapper the device uses (backend counters). */
  readonly backend: CountingBackend;
  /** The backend as opened (FileBackend, MemoryBackend, ...). */
  readonly innerBackend: BlockBackend;
  readonly device: VirtioBlkDevice;
  readonly vduse: VduseDevice;
  readonly startedAt = Date.now();
  #state: BlkRunnerState = 'starting';
  #path: string;
  readonly #teardown: Teardown;
  /** Set by stop('destroy'): the persist setting is overridden, the device goes. */
  #destroy = false;

  private constructor(
    config: BlkDeviceConfig,
    parts: {
      backend: CountingBackend;
      inner: BlockBackend;
      device: VirtioBlkDevice;
      vduse: VduseDevice;
      teardown: Teardown;
    },
  ) {
    super();
    this.config = Object.freeze({ ...config });
    this.backend = parts.backend;
    this.innerBackend = parts.inner;
    this.device = parts.device;
    this.vduse = parts.vduse;
    this.#teardown = parts.teardown;
    this.#path = `/dev/vduse/${config.name}`;
  }

  /**
   * Create, serve and (unless attach is false) attach the device; resolves once the block device (or
   * vhost-vdpa node) exists. On failure everything done so far is undone and the error is thrown.
   */
  static async start(config: BlkDeviceConfig, deps: BlkRunnerDeps): Promise<BlkRunner> {
    const { binding, logger: log, vdpa } = deps;
    const teardown = new Teardown(log);
    let runner: BlkRunner | null = null;
    let started = false;
    let createdFile: string | null = null;
    try {
      const threads = config.queueThreads > 1 ? config.queueThreads : 0;
      const spec = parseBackendSpec(config.backend);
      if (threads > 0 && spec.kind === 'memory') {
        throw new UsageError(
          'queue threads cannot serve a memory backend (its data lives in one thread); use a file on tmpfs instead',
          { code: 'ERR_MGMT_THREADS_MEMORY' },
        );
      }
      if (config.stateDir !== undefined) checkDaemonPath(config.stateDir, 'state-dir');
      // file:PATH,size=N creates PATH when it is missing: a failed start removes what it created
      if (spec.kind === 'file') {
        const file = spec as FileBackendSpec;
        if (file.size !== undefined && !existsSync(file.path)) createdFile = file.path;
      }
      const { inner, backend } = await openBlkBackend(config, { binding, logger: log });
      teardown.add('close the backend', () => backend.close());

      const threadOptions: BlkThreadOptions = {
        name: config.name,
        backend: config.backend,
        queues: config.queues,
        queueSize: config.queueSize,
        logicalBlockSize: config.logicalBlockSize,
        readOnly: config.readOnly,
        packed: config.packed,
        ...(config.serial !== undefined ? { serial: config.serial } : {}),
        ...(config.pollUs !== undefined ? { pollUs: config.pollUs } : {}),
      };
      const device = new VirtioBlkDevice(blkDeviceOptions(threadOptions, backend, log));

      const control = VduseControl.open(binding);
      teardown.add('close the control device', () => control.close());
      // Create, or take over a device a previous daemon left (crash recovery). With persist, a stop once running
      // leaves the device and its state log for a successor: no detach, no destroy.
      const served = await createOrReconnect({
        binding,
        control,
        name: config.name,
        device,
        logger: log,
        reconnect: config.reconnect,
        ...(config.stateDir !== undefined ? { stateDir: config.stateDir } : {}),
        ...(threads > 0
          ? {
              queueThreads: {
                threads,
                spec: { module: BLK_THREAD_MODULE, options: threadOptions },
                debug: true,
              },
            }
          : {}),
      });
      const keep = (): boolean => started && runner !== null && runner.persists;
      teardown.add(`destroy VDUSE device ${config.name}`, () => (keep() ? served.keep() : served.destroy()));
      const vduse = served.vduse;
      teardown.add(`close /dev/vduse/${config.name}`, () =>
        keep() ? vduse.closeForRestart() : vduse.close(),
      );
      runner = new BlkRunner(config, { backend, inner, device, vduse, teardown });
      const self = runner;
      vduse.on('broken', (reason) => {
        if (self.#state === 'stopping' || self.#state === 'stopped') return;
        self.#state = 'broken';
        self.emit('broken', reason);
      });

      const attached = (): boolean => existsSync(join(VDPA_BUS, 'devices', config.name));
      if (config.attach) {
        // a device taken over is still attached
        if (!(served.reconnected && attached())) await vdpa.addDevice(config.name);
        teardown.add(`detach ${config.name} from the vdpa bus`, () =>
          keep() ? undefined : vdpa.deleteDevice(config.name),
        );
        runner.#path = await attachedPath(config, log);
      } else {
        // Attached by someone else (vdpa dev add) meanwhile: detach it on the way out, or it cannot be destroyed.
        teardown.add(`detach ${config.name} from the vdpa bus if attached`, async () => {
          if (!keep() && attached()) await vdpa.deleteDevice(config.name);
        });
      }
      if (runner.#state === 'starting') runner.#state = 'running';
      // A backend that learns of size changes itself (rbd: `rbd resize` by anyone) resizes the device to them.
      const sized = inner as { onSizeChange?: (listener: (size: number) => void) => () => void };
      if (typeof sized.onSizeChange === 'function') {
        const lbs = config.logicalBlockSize;
        const off = sized.onSizeChange((size) => {
          if (self.#state !== 'running') return;
          self.resize(size - (size % lbs)).then(
            (bytes) => log.info(`${config.name}: the backend was resized; now ${describeSize(bytes)}`),
            (err: unknown) =>
              log.error(`${config.name}: resize to the backend's size failed: ${(err as Error).message}`),
          );
        });
        teardown.add('stop following the backend size', off);
      }
      started = true;
      return runner;
    } catch (err) {
      await teardown.run().catch(() => undefined);
      if (runner !== null) runner.#state = 'stopped';
      if (createdFile !== null) removeCreatedFile(createdFile, log);
      throw err;
    }
  }

  get name(): string {
    return this.config.name;
  }

  get state(): BlkRunnerState {
    return this.#state;
  }

  /** /dev/vdX, /dev/vhost-vdpa-N, or /dev/vduse/NAME when not attached. */
  get path(): string {
    return this.#path;
  }

  /** The block device or vhost node as it is now (an outside `vdpa dev add` may have attached it). */
  currentPath(): string {
    if (this.config.attach) return this.#path;
    const node = findBlockDevice(this.config.name) ?? findVhostDevice(this.config.name);
    return node !== null ? `/dev/${node}` : this.#path;
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

  /**
   * Online resize. With `bytes`, the backend is set to that size (memory/null: the new size; a writable file:
   * truncated); without, the size is re-read from a file backend (grown outside, e.g. truncate -s). The driver
   * is told the new capacity. Returns the new capacity in bytes.
   */
  async resize(bytes?: number): Promise<number> {
    const lbs = this.device.options.logicalBlockSize;
    let target: number;
    if (bytes === undefined) {
      const inner = this.innerBackend;
      if (!(inner instanceof FileBackend) || inner.kind !== 'file') {
        throw new MgmtError(
          'ERR_MGMT_RESIZE_NO_FILE',
          `${this.name}: only a file backend (a regular file) can be re-read; give a size`,
        );
      }
      const size = statSync(inner.path).size;
      target = size - (size % lbs);
    } else {
      if (!Number.isSafeInteger(bytes) || bytes <= 0 || bytes % lbs !== 0) {
        throw new MgmtError(
          'ERR_MGMT_RESIZE',
          `${this.name}: new size ${bytes} is not a positive multiple of the logical block size ${lbs}`,
        );
      }
      if (this.config.readOnly && bytes !== this.device.capacityBytes) {
        throw new MgmtError('ERR_MGMT_RESIZE', `${this.name}: a read-only device cannot be resized`);
      }
      target = bytes;
    }
    if (target !== this.device.capacityBytes) {
      // The queue threads' devices check requests against the capacity: they learn it before the driver does.
      await this.vduse.queueThreads?.call('resize', target);
      await this.device.resize(target);
    }
    return target;
  }

  /** Requests in the backend now (on every thread). */
  get inFlight(): number {
    return this.vduse.queueThreads === null ? this.device.inFlight : this.counters().inFlight;
  }

  /** The device's counters: this thread's device, plus every queue thread's. */
  counters(): BlkCounters {
    const own = blkCounters(this.device, this.backend);
    const threads = this.vduse.queueThreads;
    if (threads === null) return own;
    const parts = threads.snapshot().filter((p): p is BlkCounters => p !== null);
    return mergeBlkCounters([own, ...parts]);
  }

  /** One line of backend counters: "reads=1 writes=2 flushes=0 ...". */
  formatCounters(): string {
    return Object.entries(this.counters().backend)
      .map(([k, v]) => `${k}=${v}`)
      .join(' ');
  }
}

/** Remove a backing file this start-up created (file:PATH,size=N) and could not use. */
function removeCreatedFile(path: string, log: Logger): void {
  try {
    unlinkSync(path);
    log.debug(`removed ${path}, created by the failed start`);
  } catch (err) {
    log.warn(`${path} was created by the failed start and could not be removed: ${messageOf(err)}`);
  }
}

async function attachedPath(config: BlkDeviceConfig, log: Logger): Promise<string> {
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
  const block = await waitFor(() => findBlockDevice(config.name), 10000);
  if (block === null) {
    throw new MgmtError(
      'ERR_MGMT_ATTACH',
      `no block device appeared for ${config.name} (is virtio_blk loaded? see dmesg)`,
    );
  }
  return (await waitForDevNode(block, 5000)) ?? `/dev/${block}`;
}

/** "64 MiB" for exact multiples, else bytes. */
export function describeSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1 && v % 1024 === 0) {
    v /= 1024;
    i++;
  }
  return `${v} ${units[i]}`;
}
