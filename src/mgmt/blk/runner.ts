/**
 * BlkRunner: the life of one served virtio-blk VDUSE device, shared by `vduse blk` (one device) and
 * `vduse serve` (many devices in one daemon). The device-type-independent part (create or take over the VDUSE
 * device, attach, the ordered stop) is the DeviceRunner of ../runner.ts; this adds the block backend (opened
 * first, closed last), queue threads, the block device it waits for, and resize.
 */
import { existsSync, statSync, unlinkSync } from 'node:fs';

import type { BlockBackend } from '../../backends/backend.js';
import { FileBackend } from '../../backends/file-backend.js';
import { parseBackendSpec } from '../../backends/index.js';
import type { FileBackendSpec } from '../../backends/spec.js';
import { UsageError, messageOf } from '../../common/errors.js';
import { VirtioBlkDevice } from '../../devices/blk/device.js';
import type { Logger } from '../../common/logger.js';
import type { CountingBackend } from '../../backends/counting-backend.js';
import { findBlockDevice } from '../../transports/vdpa/sysfs.js';

import {
  BLK_THREAD_MODULE,
  servedBlkCounters,
  blkDeviceOptions,
  openBlkBackend,
  type BlkCounters,
  type BlkThreadOptions,
} from './thread-device.js';
import type { BlkDeviceConfig } from './options.js';
import { startBlkWarmup, stopAtFirstRequest } from './warmup.js';
import { MgmtError } from '../daemon/errors.js';
import { checkDaemonPath } from '../daemon/paths.js';
import {
  DeviceRunner,
  Teardown,
  type DeviceRunnerDeps,
  type DeviceRunnerEvents,
  type GuestNode,
  type RunnerState,
} from '../runner/device-runner.js';

export { Teardown, type StopMode } from '../runner/device-runner.js';
export { BLK_DEFAULTS, type BlkDeviceConfig, type BlkDriver } from './options.js';

export type BlkRunnerDeps = DeviceRunnerDeps;
export type BlkRunnerState = RunnerState;
export type BlkRunnerEvents = DeviceRunnerEvents;

/** The guest side of a virtio-blk device attached with virtio-vdpa: its block device. */
const BLK_GUEST: GuestNode = {
  find: (name) => findBlockDevice(name),
  devPath: (node) => `/dev/${node}`,
  missing: (name) => `no block device appeared for ${name} (is virtio_blk loaded? see dmesg)`,
  timeoutMs: 10000,
};

export class BlkRunner extends DeviceRunner<VirtioBlkDevice, BlkDeviceConfig> {
  /** The counting wrapper the device uses (backend counters). */
  readonly backend: CountingBackend;
  /** The backend as opened (FileBackend, MemoryBackend, ...). */
  readonly innerBackend: BlockBackend;

  private constructor(
    config: BlkDeviceConfig,
    parts: {
      backend: CountingBackend;
      inner: BlockBackend;
      device: VirtioBlkDevice;
      teardown: Teardown;
    },
  ) {
    super(config, parts.device, parts.teardown);
    this.backend = parts.backend;
    this.innerBackend = parts.inner;
  }

  /**
   * Create, serve and (unless attach is false) attach the device; resolves once the block device (or
   * vhost-vdpa node) exists. On failure everything done so far is undone and the error is thrown.
   */
  static async start(config: BlkDeviceConfig, deps: BlkRunnerDeps): Promise<BlkRunner> {
    const { binding, logger: log } = deps;
    const teardown = new Teardown(log);
    let runner: BlkRunner | null = null;
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
      // Served on this thread: warm the hot path up meanwhile (throwaway objects, see ./warmup.ts).
      let served: VirtioBlkDevice | null = null;
      if (threads === 0) {
        const warm = startBlkWarmup(blkThreadOptions(config), log, {
          stop: stopAtFirstRequest(() => served),
        });
        teardown.add('finish the warm-up', () => warm.then(() => undefined));
      }
      const { inner, backend } = await openBlkBackend(config, { binding, logger: log });
      teardown.add('close the backend', () => backend.close());

      const threadOptions = blkThreadOptions(config);
      const device = new VirtioBlkDevice(blkDeviceOptions(threadOptions, backend, log));
      served = device;
      runner = new BlkRunner(config, { backend, inner, device, teardown });
      await runner.serve(deps, {
        guest: BLK_GUEST,
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
      const self = runner;
      followBackendSize(
        inner,
        config,
        log,
        (size) => (self.state === 'running' ? self.resize(size) : null),
        (what, run) => self.onStop(what, run),
      );
      return runner;
    } catch (err) {
      if (runner !== null) await runner.abort();
      else await teardown.run().catch(() => undefined);
      if (createdFile !== null) removeCreatedFile(createdFile, log);
      throw err;
    }
  }

  /**
   * Online resize. With `bytes`, the backend is set to that size (memory/null: the new size; a writable file:
   * truncated); without, the size is re-read from a file backend (grown outside, e.g. truncate -s). The driver
   * is told the new capacity. Returns the new capacity in bytes.
   */
  async resize(bytes?: number): Promise<number> {
    return resizeServedBlk(this, this.vduse.queueThreads, bytes);
  }

  /** Requests in the backend now (on every thread). */
  get inFlight(): number {
    return this.vduse.queueThreads === null ? this.device.inFlight : this.counters().inFlight;
  }

  /** The device's counters: this thread's device, plus every queue thread's. */
  counters(): BlkCounters {
    return servedBlkCounters(this.device, this.backend, this.vduse.queueThreads);
  }

  /** One line of backend counters: "reads=1 writes=2 flushes=0 ...". */
  formatCounters(): string {
    return formatBackendCounters(this.counters());
  }
}

/** The device options a blk device (and each of its queue threads) is built from. */
export function blkThreadOptions(config: BlkDeviceConfig): BlkThreadOptions {
  return {
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
}

/**
 * A backend that learns of size changes itself (rbd: `rbd resize` by anyone) resizes the device to them:
 * `resize` is called with the new size in whole logical blocks (null: not now); `onStop` registers the unsubscribe.
 */
export function followBackendSize(
  inner: BlockBackend,
  config: BlkDeviceConfig,
  log: Logger,
  resize: (bytes: number) => Promise<number> | null,
  onStop: (what: string, run: () => void) => void,
): void {
  const sized = inner as { onSizeChange?: (listener: (size: number) => void) => () => void };
  if (typeof sized.onSizeChange !== 'function') return;
  const lbs = config.logicalBlockSize;
  const off = sized.onSizeChange((size) => {
    resize(size - (size % lbs))?.then(
      (bytes) => log.info(`${config.name}: the backend was resized; now ${describeSize(bytes)}`),
      (err: unknown) =>
        log.error(`${config.name}: resize to the backend's size failed: ${(err as Error).message}`),
    );
  });
  onStop('stop following the backend size', off);
}

/**
 * Online resize of a served blk device (VDUSE or vhost-user) to resizeTarget(): the queue threads' devices check
 * requests against the capacity, so they learn it before the driver does. Returns the new capacity in bytes.
 */
export async function resizeServedBlk(
  runner: {
    name: string;
    device: VirtioBlkDevice;
    innerBackend: BlockBackend;
    config: { readOnly: boolean };
  },
  threads: { call(name: 'resize', target: number): Promise<unknown> } | null,
  bytes?: number,
): Promise<number> {
  const target = resizeTarget(runner.name, runner.device, runner.innerBackend, runner.config.readOnly, bytes);
  if (target !== runner.device.capacityBytes) {
    await threads?.call('resize', target);
    await runner.device.resize(target);
  }
  return target;
}

/**
 * The capacity an online resize goes to: `bytes` (checked), or without it the size of a file backend re-read.
 * Throws MgmtError ERR_MGMT_RESIZE / ERR_MGMT_RESIZE_NO_FILE.
 */
export function resizeTarget(
  name: string,
  device: VirtioBlkDevice,
  inner: BlockBackend,
  readOnly: boolean,
  bytes?: number,
): number {
  const lbs = device.options.logicalBlockSize;
  if (bytes === undefined) {
    if (!(inner instanceof FileBackend) || inner.kind !== 'file') {
      throw new MgmtError(
        'ERR_MGMT_RESIZE_NO_FILE',
        `${name}: only a file backend (a regular file) can be re-read; give a size`,
      );
    }
    const size = statSync(inner.path).size;
    return size - (size % lbs);
  }
  if (!Number.isSafeInteger(bytes) || bytes <= 0 || bytes % lbs !== 0) {
    throw new MgmtError(
      'ERR_MGMT_RESIZE',
      `${name}: new size ${bytes} is not a positive multiple of the logical block size ${lbs}`,
    );
  }
  if (readOnly && bytes !== device.capacityBytes) {
    throw new MgmtError('ERR_MGMT_RESIZE', `${name}: a read-only device cannot be resized`);
  }
  return bytes;
}

/** One line of backend counters: "reads=1 writes=2 flushes=0 ...". */
export function formatBackendCounters(c: BlkCounters): string {
  return Object.entries(c.backend)
    .map(([k, v]) => `${k}=${v}`)
    .join(' ');
}

/** Remove a backing file this start-up created (file:PATH,size=N) and could not use. */
export function removeCreatedFile(path: string, log: Logger): void {
  try {
    unlinkSync(path);
    log.debug(`removed ${path}, created by the failed start`);
  } catch (err) {
    log.warn(`${path} was created by the failed start and could not be removed: ${messageOf(err)}`);
  }
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
