export { VirtioBlkDevice, type BlkStats } from './device.js';
export { BlkError } from './errors.js';
export {
  resolveBlkOptions,
  encodeSerial,
  serialFromName,
  DEFAULT_QUEUE_SIZE,
  DEFAULT_MAX_RANGE_SECTORS,
  DEFAULT_MAX_RANGE_SEG,
  type VirtioBlkOptions,
  type ResolvedBlkOptions,
  type BlkGeometry,
  type BlkLogger,
} from './options.js';
export { offeredBlkFeatures, blkFeatureProblem, BLK_REQUIRED_FEATURES } from './features.js';
export { blkConfigFields, encodeBlkConfig, blkTopology, BLK_CONFIG_SPACE_SIZE } from './config.js';
