/**
 * The virtio-blk device of one queue thread (`vduse blk --queue-threads N`, see
 * src/transports/engine/threads/):
 * built in the thread from the same serializable options as the main thread's device, with its own backend
 * handle opened from the backend spec (a file: its own fd; nbd: its own connections; null: nothing to share).
 * Also the one place that turns a device's options into VirtioBlkOptions, so both threads' devices agree on
 * features and config space.
 */
import type { BlockBackend } from '../../backends/backend.js';
import { NullBackend } from '../../backends/null-backend.js';
import { openBackend, parseBackendSpec } from '../../backends/index.js';
import {
  VirtioBlkDevice,
  type BlkLatency,
  type BlkQueueStats,
  type BlkStats,
} from '../../devices/blk/device.js';
import type { VirtioBlkOptions } from '../../devices/blk/options.js';
import { CountingBackend, type BackendCounters } from '../../backends/counting-backend.js';
import type { SysBinding } from '../../sys/binding.js';
import type { Logger } from '../../common/logger.js';
import { EngineError } from '../../transports/engine/errors.js';
import type { CreateQueueThreadDevice, QueueThreadSpec } from '../../transports/engine/threads/protocol.js';
import type { BlkDeviceConfig } from './options.js';
import { ResizableNull } from '../../backends/resizable-null.js';
import { startBlkWarmup, stopAtFirstRequest } from './warmup.js';

/** What a queue thread needs to build the device: the device options, plain data. */
export type BlkThreadOptions = Pick<
  BlkDeviceConfig,
  | 'name'
  | 'backend'
  | 'queues'
  | 'queueSize'
  | 'logicalBlockSize'
  | 'serial'
  | 'readOnly'
  | 'packed'
  | 'pollUs'
>;

/** The module a queue thread imports (its URL, for QueueThreadSpec.module). */
export const BLK_THREAD_MODULE = new URL('./thread-device.js', import.meta.url).href;

/** What a blk queue thread exchanges with the main thread (checked on both sides at compile time). */
export interface BlkThreadTypes {
  options: BlkThreadOptions;
  snapshot: BlkCounters;
  calls: {
    /** Online resize to `bytes`; answers the new capacity in bytes. */
    resize: [bytes: number, capacity: number];
  };
}

/** The QueueThreadSpec of a blk device. */
export function blkThreadSpec(options: BlkThreadOptions): QueueThreadSpec<BlkThreadTypes> {
  return { module: BLK_THREAD_MODULE, options };
}

/** The counters of a blk device (one thread's, or merged). */
export interface BlkCounters {
  stats: BlkStats;
  queues: BlkQueueStats[];
  latency: BlkLatency;
  backend: BackendCounters;
  inFlight: number;
}

/** Open the backend a device's options name, wrapped for counting. */
export async function openBlkBackend(
  config: Pick<BlkDeviceConfig, 'backend' | 'readOnly'>,
  env: { binding: SysBinding; logger: Logger },
): Promise<{ inner: BlockBackend; backend: CountingBackend }> {
  const spec = parseBackendSpec(config.backend);
  // readOnly also opens the storage read-only, so nothing can write to it.
  const opened = config.readOnly && 'readOnly' in spec ? { ...spec, readOnly: true } : spec;
  const raw = await openBackend(opened, { binding: env.binding, log: (m: string) => env.logger.warn(m) });
  const inner = raw instanceof NullBackend ? new ResizableNull(raw) : raw;
  return { inner, backend: new CountingBackend(inner) };
}

/** The VirtioBlkDevice options for a device's config (the same on every thread). */
export function blkDeviceOptions(
  config: BlkThreadOptions,
  backend: BlockBackend,
  logger: Logger,
): VirtioBlkOptions {
  const options: VirtioBlkOptions & { pollUs?: number } = {
    backend,
    name: config.name,
    numQueues: config.queues,
    queueSize: config.queueSize,
    logicalBlockSize: config.logicalBlockSize,
    readOnly: config.readOnly,
    packed: config.packed,
    logger,
    ...(config.serial !== undefined ? { serial: config.serial } : {}),
    ...(config.pollUs !== undefined ? { pollUs: config.pollUs } : {}),
  };
  return options;
}

/** The counters of one device (plain copies, cloneable). */
export function blkCounters(device: VirtioBlkDevice, backend: CountingBackend): BlkCounters {
  return {
    stats: { ...device.stats },
    queues: device.queueStats.map((q) => ({ ...q })),
    latency: { ...device.latency, buckets: [...device.latency.buckets] },
    backend: { ...backend.counters },
    inFlight: device.inFlight,
  };
}

/** A served device's counters: the main thread's device, plus every queue thread's when it has queue threads. */
export function servedBlkCounters(
  device: VirtioBlkDevice,
  backend: CountingBackend,
  threads: { snapshot(): readonly unknown[] } | null,
): BlkCounters {
  const own = blkCounters(device, backend);
  if (threads === null) return own;
  const parts = threads.snapshot().filter((p): p is BlkCounters => p !== null && p !== undefined);
  return mergeBlkCounters([own, ...parts]);
}

/** Sum of counters (the main thread's device and every queue thread's). */
export function mergeBlkCounters(parts: readonly BlkCounters[]): BlkCounters {
  const first = parts[0];
  if (first === undefined) throw new RangeError('no counters to merge');
  const out: BlkCounters = {
    stats: { ...first.stats },
    queues: first.queues.map((q) => ({ ...q })),
    latency: { ...first.latency, buckets: [...first.latency.buckets] },
    backend: { ...first.backend },
    inFlight: first.inFlight,
  };
  const add = <T extends object>(into: T, from: T): void => {
    for (const k of Object.keys(from) as (keyof T)[]) {
      if (typeof from[k] === 'number') (into[k] as number) += from[k] as number;
    }
  };
  for (const p of parts.slice(1)) {
    add(out.stats, p.stats);
    add(out.backend, p.backend);
    p.queues.forEach((q, i) => {
      const into = out.queues[i];
      if (into !== undefined) add(into, q);
    });
    p.latency.buckets.forEach((n, i) => (out.latency.buckets[i] = (out.latency.buckets[i] ?? 0) + n));
    out.latency.count += p.latency.count;
    out.latency.sumSeconds += p.latency.sumSeconds;
    out.inFlight += p.inFlight;
  }
  return out;
}

/** QueueThreadSpec entry point: build this thread's device and backend handle. */
export const createQueueThreadDevice: CreateQueueThreadDevice<BlkThreadTypes> = async (config, env) => {
  // This thread serves queues: warm its hot path up meanwhile (throwaway objects, see ./warmup.ts).
  let served: VirtioBlkDevice | null = null;
  const warm = startBlkWarmup(config, env.logger, {
    stop: stopAtFirstRequest(() => served),
  });
  let backend: CountingBackend;
  try {
    ({ backend } = await openBlkBackend(config, env));
  } catch (err) {
    await warm;
    throw err;
  }
  let device: VirtioBlkDevice;
  try {
    device = new VirtioBlkDevice(blkDeviceOptions(config, backend, env.logger));
    served = device;
  } catch (err) {
    await warm;
    await backend.close();
    throw err;
  }
  const calls: {
    [K in keyof BlkThreadTypes['calls']]: (
      arg: BlkThreadTypes['calls'][K][0],
    ) => Promise<BlkThreadTypes['calls'][K][1]>;
  } = {
    resize: async (bytes) => {
      await device.resize(bytes);
      return device.capacityBytes;
    },
  };
  return {
    device,
    snapshot: () => blkCounters(device, backend),
    call: (name, arg) => {
      const call = calls[name] as ((a: typeof arg) => Promise<number>) | undefined;
      if (call === undefined) {
        return Promise.reject(new EngineError('ERR_ENGINE_CALL', `unknown call "${name}"`));
      }
      return call(arg);
    },
    close: async () => {
      await device.reset();
      await warm;
      await backend.close();
    },
  };
};
