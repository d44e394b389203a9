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
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';

import type { BlockBackend } from '../../backends/backend.js';
import { FileBackend } from '../../backends/file-backend.js';
import { parseBackendSpec } from '../../backends/index.js';
import { VirtioBlkDevice } from '../../devices/blk/device.js';
import type { SysBinding } from '../../sys/binding.js';
import { VduseControl } from '../../transports/vduse/control.js';
import type { VduseDevice } from '../../transports/vduse/device.js';
import { createOrReconnect, type ReconnectPolicy } from '../../transports/vduse/recovery/reconnect.js';
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

export { BLK_DEFAULTS, type BlkDeviceConfig, type BlkDriver } from './options.js';

export interface BlkRunnerDeps {
  binding: SysBinding;
  logger: Logger;
  /** The vdpa netlink client (shared by all devices of a daemon; its owner closes it). */
  vdpa: VdpaClient;
  /** Crash recovery (src/vduse/reconnect.ts): state log directory, take-over policy, keep the device at stop. */
  recovery?: { stateDir?: string; reconnect?: ReconnectPolicy; persist?: boolean };
}

export type BlkRunnerState = 'starting' | 'running' | 'stopping' | 'stopped' | 'broken';

export interface BlkRunnerEvents {
  /** The dev fd failed for good (a message timed out): the device cannot be served any more. */
  broken: [reason: Error];
}

interface CleanupStep {
  what: string;
  run: () => Promise<void> | void;
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
  readonly #cleanup: CleanupStep[];
  readonly #log: Logger;

  private constructor(
    config: BlkDeviceConfig,
    parts: {
      backend: CountingBackend;
      inner: BlockBackend;
      device: VirtioBlkDevice;
      vduse: VduseDevice;
      cleanup: CleanupStep[];
      log: Logger;
    },
  ) {
    super();
    this.config = Object.freeze({ ...config });
    this.backend = parts.backend;
    this.innerBackend = parts.inner;
    this.device = parts.device;
    this.vduse = parts.vduse;
    this.#cleanup = parts.cleanup;
    this.#log = parts.log;
    this.#path = `/dev/vduse/${config.name}`;
  }

  /**
   * Create, serve and (unless attach is false) attach the device; resolves once the block device (or
   * vhost-vdpa node) exists. On failure everything done so far is undone and the error is thrown.
   */
  static async start(config: BlkDeviceConfig, deps: BlkRunnerDeps): Promise<BlkRunner> {
    const { binding, logger: log, vdpa } = deps;
    const cleanup: CleanupStep[] = [];
    let runner: BlkRunner | null = null;
    let started = false;
    try {
      const threads = config.queueThreads > 1 ? config.queueThreads : 0;
      if (threads > 0 && parseBackendSpec(config.backend).kind === 'memory') {
        throw new Error(
          'queue threads cannot serve a memory backend (its data lives in one thread); use a file on tmpfs instead',
        );
      }
      const { inner, backend } = await openBlkBackend(config, { binding, logger: log });
      cleanup.push({ what: 'close the backend', run: () => backend.close() });

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
      cleanup.push({ what: 'close the control device', run: () => control.close() });
      // Create, or take over a device a previous daemon left (crash recovery). With persist, a stop once running
      // leaves the device and its state log for a successor: no detach, no destroy.
      const served = await createOrReconnect({
        binding,
        control,
        name: config.name,
        device,
        logger: log,
        ...deps.recovery,
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
      const keep = (): boolean => deps.recovery?.persist === true && started;
      cleanup.push({
        what: `destroy VDUSE device ${config.name}`,
        run: () => (keep() ? served.keep() : served.destroy()),
      });
      const vduse = served.vduse;
      cleanup.push({
        what: `close /dev/vduse/${config.name}`,
        run: () => (keep() ? vduse.closeForRestart() : vduse.close()),
      });
      runner = new BlkRunner(config, { backend, inner, device, vduse, cleanup, log });
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
        cleanup.push({
          what: `detach ${config.name} from the vdpa bus`,
          run: () => (keep() ? undefined : vdpa.deleteDevice(config.name)),
        });
        runner.#path = await attachedPath(config, log);
      } else {
        // Attached by someone else (vdpa dev add) meanwhile: detach it on the way out, or it cannot be destroyed.
        cleanup.push({
          what: `detach ${config.name} from the vdpa bus if attached`,
          run: async () => {
            if (!keep() && attached()) await vdpa.deleteDevice(config.name);
          },
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
        cleanup.push({ what: 'stop following the backend size', run: off });
      }
      started = true;
      return runner;
    } catch (err) {
      await unwind(cleanup, log).catch(() => undefined);
      if (runner !== null) runner.#state = 'stopped';
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
   * requests still in the backend, so no I/O is cut short. Safe to call twice.
   */
  async stop(): Promise<void> {
    if (this.#state === 'stopped') return;
    this.#state = 'stopping';
    try {
      await unwind(this.#cleanup, this.#log);
    } finally {
      this.#state = 'stopped';
    }
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
        throw new Error(`${this.name}: only a file backend (a regular file) can be re-read; give a size`);
      }
      const size = statSync(inner.path).size;
      target = size - (size % lbs);
    } else {
      if (!Number.isSafeInteger(bytes) || bytes <= 0 || bytes % lbs !== 0) {
        throw new RangeError(
          `${this.name}: new size ${bytes} is not a positive multiple of the logical block size ${lbs}`,
        );
      }
      if (this.config.readOnly && bytes !== this.device.capacityBytes) {
        throw new Error(`${this.name}: a read-only device cannot be resized`);
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

async function unwind(cleanup: CleanupStep[], log: Logger): Promise<void> {
  let failed: unknown = null;
  while (cleanup.length > 0) {
    const step = cleanup.pop()!;
    try {
      log.debug(`teardown: ${step.what}`);
      await step.run();
    } catch (err) {
      log.error(`${step.what}: ${(err as Error).message}`);
      failed ??= err;
    }
  }
  if (failed !== null) throw failed;
}

async function attachedPath(config: BlkDeviceConfig, log: Logger): Promise<string> {
  if (config.driver === 'vhost-vdpa') {
    if (boundDriver(config.name) !== 'vhost_vdpa') await rebindVdpaDevice(config.name, 'vhost_vdpa');
    const node = await waitFor(() => findVhostDevice(config.name), 5000);
    if (node === null)
      throw new Error(`vdpa device ${config.name} has no vhost-vdpa char device (is vhost_vdpa loaded?)`);
    return (await waitForDevNode(node, 5000)) ?? `/dev/${node}`;
  }
  const driver = boundDriver(config.name);
  if (driver !== 'virtio_vdpa') {
    if (driver === null) log.debug(`${config.name} is not bound to a bus driver yet`);
    await rebindVdpaDevice(config.name, 'virtio_vdpa');
  }
  const block = await waitFor(() => findBlockDevice(config.name), 10000);
  if (block === null) {
    throw new Error(`no block device appeared for ${config.name} (is virtio_blk loaded? see dmesg)`);
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
