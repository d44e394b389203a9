/**
 * Create a VDUSE device, or take over one a previous daemon left behind (it crashed, was killed, or stopped with
 * persist), with the state log (./state-log.ts) that makes the take-over safe.
 *
 * Policy (`--reconnect`): 'auto' (default) reconnects when /dev/vduse/NAME exists and a state log is there,
 * else creates; 'never' fails when the device exists; 'always' fails when there is nothing to reconnect to.
 * A log that does not match the device being served (other features, queue count or size, config) is refused
 * with one line, before anything is changed.
 */
import { existsSync } from 'node:fs';
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';

import type { VirtioDevice } from '../../../devices/device.js';
import type { SysBinding } from '../../../sys/binding.js';
import { describeDevice, type VduseControl } from '../control.js';
import { VduseDevice, type ControlStats, type VduseDeviceOptions } from '../device.js';
import { VduseError } from '../errors.js';
import { nullLogger, type Logger } from '../../../common/logger.js';
import { StateLog, defaultStateDir, stateLogPath, type StateLogIdentity } from './state-log.js';

export type ReconnectPolicy = 'auto' | 'never' | 'always';

export interface CreateOrReconnectOptions {
  binding: SysBinding;
  control: VduseControl;
  name: string;
  device: VirtioDevice;
  logger?: Logger;
  /** Directory of the state logs; default defaultStateDir() (/run/vduse-ts, or $XDG_RUNTIME_DIR/vduse-ts). */
  stateDir?: string;
  reconnect?: ReconnectPolicy;
  /** Directory of the VDUSE char devices; default /dev/vduse. */
  devDir?: string;
  /** Serve the queues on worker threads (VduseDeviceOptions.queueThreads). */
  queueThreads?: VduseDeviceOptions['queueThreads'];
}

export interface ServedDevice {
  vduse: VduseDevice;
  /** null when the state directory could not be written (the device then cannot be taken over). */
  stateLog: StateLog | null;
  /** True when an existing device was taken over. */
  reconnected: boolean;
  /** The device is gone for good: VDUSE_DESTROY_DEV, then the state log is deleted. */
  destroy(): Promise<void>;
  /** The device stays for a successor: unmap the state log, keep the file. */
  keep(): void;
}

/** The identity a state log records for `device` served as `name`. */
export function logIdentity(name: string, device: VirtioDevice): StateLogIdentity {
  return {
    name,
    deviceId: device.deviceId,
    features: device.features,
    numQueues: device.numQueues,
    maxQueueSize: device.maxQueueSize,
    config: device.config(),
  };
}

/** Create NAME (with a fresh state log) or reconnect to it, per the policy. Throws a one-line VduseError. */
export async function createOrReconnect(options: CreateOrReconnectOptions): Promise<ServedDevice> {
  const { binding, control, name, device } = options;
  const log = options.logger ?? nullLogger;
  const policy = options.reconnect ?? 'auto';
  const stateDir = options.stateDir ?? defaultStateDir();
  const logPath = stateLogPath(stateDir, name);
  const devDir = options.devDir ?? '/dev/vduse';
  const identity = logIdentity(name, device);

  if (existsSync(`${devDir}/${name}`)) {
    if (policy === 'never') {
      throw new VduseError('ERR_VDUSE_EXISTS', `a VDUSE device named "${name}" already exists`);
    }
    if (!existsSync(logPath)) {
      throw new VduseError(
        'ERR_VDUSE_EXISTS',
        `a VDUSE device named "${name}" already exists and there is no state log (${logPath}) to reconnect with`,
      );
    }
    const stateLog = StateLog.open(binding, logPath);
    try {
      const why = stateLog.mismatch(identity);
      if (why !== null) {
        throw new VduseError(
          'ERR_VDUSE_RECONNECT',
          `cannot reconnect to "${name}": the state log ${logPath} does not match this device: ${why}`,
        );
      }
      let vduse: VduseDevice;
      try {
        vduse = VduseDevice.open({
          binding,
          name,
          device,
          logger: log,
          devDir,
          stateLog,
          reconnect: true,
          ...(options.queueThreads !== undefined ? { queueThreads: options.queueThreads } : {}),
        });
      } catch (err) {
        if (err instanceof VduseError && err.code === 'ERR_VDUSE_BUSY') {
          throw new VduseError(
            'ERR_VDUSE_EXISTS',
            `a VDUSE device named "${name}" already exists and another process is serving it`,
            err,
          );
        }
        if (err instanceof VduseError && err.code === 'ERR_VDUSE_RECONNECT') {
          throw new VduseError('ERR_VDUSE_RECONNECT', `cannot reconnect to "${name}": ${err.message}`, err);
        }
        throw err;
      }
      return served(control, name, vduse, stateLog, true, log);
    } catch (err) {
      stateLog.close();
      throw err;
    }
  }

  if (policy === 'always') {
    throw new VduseError('ERR_VDUSE_NOT_FOUND', `no VDUSE device named "${name}" to reconnect to`);
  }
  let stateLog: StateLog | null = null;
  try {
    stateLog = StateLog.create(binding, logPath, identity);
  } catch (err) {
    log.warn(`no state log (${logPath}: ${(err as Error).message}): a restart will not be able to take over`);
  }
  try {
    control.createDevice(describeDevice(name, device));
  } catch (err) {
    stateLog?.remove();
    throw err;
  }
  log.debug(`created VDUSE device ${name}`);
  try {
    const vduse = VduseDevice.open({
      binding,
      name,
      device,
      logger: log,
      devDir,
      ...(stateLog !== null ? { stateLog } : {}),
      ...(options.queueThreads !== undefined ? { queueThreads: options.queueThreads } : {}),
    });
    return served(control, name, vduse, stateLog, false, log);
  } catch (err) {
    // the caller destroys nothing it did not get: undo the creation here
    try {
      await control.destroyDevice(name);
      stateLog?.remove();
    } catch {
      stateLog?.close();
    }
    throw err;
  }
}

function served(
  control: VduseControl,
  name: string,
  vduse: VduseDevice,
  stateLog: StateLog | null,
  reconnected: boolean,
  log: Logger,
): ServedDevice {
  return {
    vduse,
    stateLog,
    reconnected,
    async destroy() {
      await control.destroyDevice(name);
      try {
        stateLog?.remove();
      } catch (err) {
        // e.g. privileges dropped since: the device is gone, a stale log is refused or replaced next time
        log.warn(`state log ${stateLog?.path ?? ''} not removed: ${(err as Error).message}`);
      }
    },
    keep() {
      stateLog?.close();
    },
  };
}

/** Resolution of the event-loop stall watch (ms). */
export const CONTROL_STALL_RESOLUTION_MS = 100;

/**
 * Watches how fast control messages can be answered: the device's own figure (from the fd turning readable to
 * the answer) plus the worst event-loop stall (how long a readable fd could wait before being looked at).
 */
export class ControlLatency {
  readonly #histogram: IntervalHistogram;

  constructor(readonly stats: () => ControlStats) {
    // 100 ms, not finer: the histogram's timer wakes the loop at this rate even when the device is idle (at
    // 10 ms it cost an idle daemon 6-7 % of a vCPU under emulation, measured); stalls that matter to control
    // messages (timeouts of seconds) are far longer.
    this.#histogram = monitorEventLoopDelay({ resolution: CONTROL_STALL_RESOLUTION_MS });
    this.#histogram.enable();
  }

  /** Worst event-loop stall seen, in ms. */
  get worstStallMs(): number {
    return this.#histogram.max / 1e6;
  }

  /** One line: "control: N message(s) answered, worst answer X ms, worst event-loop stall Y ms". */
  format(): string {
    const s = this.stats();
    return `control: ${s.messages} message(s) answered, worst answer ${s.worstAnswerMs.toFixed(1)} ms, worst event-loop stall ${this.worstStallMs.toFixed(1)} ms`;
  }

  stop(): void {
    this.#histogram.disable();
  }
}
