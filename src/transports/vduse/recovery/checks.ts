/**
 * What a take-over (reconnect) checks against the state log before it changes anything, and what the state log
 * records when a queue starts. Used by the control loop (../device.ts) at DRIVER_OK and at reconnect.
 */
import type { VirtioDevice } from '../../../devices/device.js';
import type { QueueState } from '../../engine/data-path.js';
import { VduseError } from '../errors.js';
import type { VqInfo } from '../ioctls.js';
import type { QueueLog, StateLog } from './state-log.js';

/**
 * The features a reconnecting device takes up: the driver's (VDUSE_DEV_GET_FEATURES), which must be the logged
 * ones (when any were logged) and acceptable to `device`. Throws ERR_VDUSE_RECONNECT.
 */
export function checkLoggedFeatures(log: StateLog, driverFeatures: bigint, device: VirtioDevice): bigint {
  const logged = log.features;
  if (logged !== 0n && driverFeatures !== logged) {
    throw new VduseError(
      'ERR_VDUSE_RECONNECT',
      `the driver's features 0x${driverFeatures.toString(16)} are not the logged 0x${logged.toString(16)}`,
    );
  }
  const unknown = driverFeatures & ~device.features;
  if (unknown !== 0n || !device.negotiate(driverFeatures)) {
    throw new VduseError(
      'ERR_VDUSE_RECONNECT',
      `the driver's features 0x${driverFeatures.toString(16)} are not acceptable to this device`,
    );
  }
  return driverFeatures;
}

/**
 * Every ready queue is where the state log has it (same size, format and ring addresses) and no other queue is
 * logged as live. Throws ERR_VDUSE_RECONNECT: a reconnect that does not fit is refused, never half-applied.
 */
export function checkLoggedQueues(log: StateLog, infos: readonly VqInfo[], packed: boolean): void {
  for (const info of infos) {
    const i = info.index;
    const ready = isReady(info);
    const q = log.queue(i);
    if (q.valid !== ready) {
      throw new VduseError(
        'ERR_VDUSE_RECONNECT',
        `queue ${i} is ${ready ? '' : 'not '}ready but the state log says otherwise`,
      );
    }
    const ring = q.ring;
    if (
      ready &&
      (ring.size !== info.num ||
        ring.packed !== packed ||
        ring.descAddr !== info.descAddr ||
        ring.driverAddr !== info.driverAddr ||
        ring.deviceAddr !== info.deviceAddr)
    ) {
      throw new VduseError(
        'ERR_VDUSE_RECONNECT',
        `queue ${i}: the rings are not where the state log has them`,
      );
    }
  }
}

/** A queue the driver enabled (VDUSE_VQ_GET_INFO ready, with a size). */
export function isReady(info: VqInfo): boolean {
  return info.ready && info.num !== 0;
}

/** Record in the state log where a queue starts (its rings and positions). */
export function recordQueueStart(queueLog: QueueLog, info: VqInfo, packed: boolean, state: QueueState): void {
  const pos = 'nextAvail' in state ? state.nextAvail : state.lastAvailIdx | (state.lastAvailCounter << 15);
  const used =
    'nextAvail' in state
      ? (state.nextUsed ?? state.nextAvail)
      : state.lastUsedIdx | (state.lastUsedCounter << 15);
  queueLog.start(
    {
      size: info.num,
      packed,
      descAddr: info.descAddr,
      driverAddr: info.driverAddr,
      deviceAddr: info.deviceAddr,
    },
    pos,
    used,
  );
}
