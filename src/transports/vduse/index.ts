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
export { VduseDevice, type VduseDeviceOptions, type VduseDeviceEvents } from './device.js';
export { deviceFdSource } from './iotlb-source.js';
export type { VqInfo } from './ioctls.js';
export { VduseProtocol, type ProtocolContext, type ProtocolEffect, type ProtocolResult } from './protocol.js';
export { VduseError, type VduseErrorCode } from './errors.js';
