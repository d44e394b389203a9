/** The VDUSE transport: control device, device runtime, IOTLB look-ups, protocol. */
export {
  VduseControl,
  describeDevice,
  checkDeviceName,
  listVduseDevices,
  VDUSE_CONTROL_PATH,
  DEFAULT_VQ_ALIGN,
  type DeviceDescription,
  type ControlOptions,
} from './control.js';
export {
  VduseDevice,
  type VduseDeviceOptions,
  type VduseDeviceEvents,
  type VduseDeviceStats,
  type ControlStats,
} from './device.js';
export { StateLog, type StateLogIdentity } from './recovery/state-log.js';
export { createOrReconnect, type ReconnectPolicy, type ServedDevice } from './recovery/reconnect.js';
// What VduseDeviceOptions.queueThreads takes: a typed spec of the device module each queue thread loads.
export type {
  QueueThreadSpec,
  QueueThreadTypes,
  QueueThreadDevice,
  CreateQueueThreadDevice,
} from '../engine/threads/protocol.js';
export type { DataPath } from '../engine/data-path.js';
export { QueueThreadError, EngineError, type EngineErrorCode } from '../engine/errors.js';
export { deviceFdSource } from './iotlb-source.js';
export { VduseError, type VduseErrorCode } from './errors.js';
