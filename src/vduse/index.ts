/** The VDUSE transport: control device, device runtime, IOTLB memory, protocol and vdpa netlink. */
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
export { IotlbMemory, deviceFdSource, type IotlbSource } from './iotlb-memory.js';
export type { IotlbEntry, VqInfo } from './ioctls.js';
export { VduseProtocol, type ProtocolContext, type ProtocolEffect, type ProtocolResult } from './protocol.js';
export { VduseError, type VduseErrorCode } from './errors.js';
export { createLogger, nullLogger, type Logger, type LogLevel, type LoggerOptions } from './logger.js';
export { VdpaNetlink, type VdpaDeviceInfo, type VdpaMgmtdevInfo } from './vdpa-netlink.js';
export {
  VdpaClient,
  WorkerTransport,
  InlineTransport,
  type VdpaTransport,
  type VdpaCall,
} from './vdpa-client.js';
