export {
  VirtioNetDevice,
  NetDeviceError,
  NET_RX_QUEUE,
  NET_TX_QUEUE,
  NET_HDR_SIZE,
  NET_MAX_GSO_FRAME,
  type NetStats,
} from './device.js';
export {
  resolveNetOptions,
  parseMac,
  formatMac,
  macFromName,
  NET_DEFAULT_MTU,
  NET_DEFAULT_QUEUE_SIZE,
  type VirtioNetOptions,
  type ResolvedNetOptions,
  type NetLogger,
} from './options.js';
export {
  offeredNetFeatures,
  netFeatureProblem,
  negotiatedNetFeatures,
  NET_REQUIRED_FEATURES,
} from './features.js';
export {
  encodeNetConfig,
  NET_CONFIG_SPACE_SIZE,
  NET_CONFIG_STATUS_OFFSET,
  NET_CONFIG_STATUS_SIZE,
} from './config.js';
