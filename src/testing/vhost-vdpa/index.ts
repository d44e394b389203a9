export {
  VHOST_VDPA_BACKEND_FEATURES,
  VhostQueue,
  VhostVdpaDriver,
  VhostVdpaError,
  initialVringBase,
  type QueueSetup,
  type VhostVdpaOpenOptions,
} from './driver.js';
export {
  SharedGuestMemory,
  findMapping,
  mapSharedMemfd,
  unmapShared,
  type MemoryHost,
  type SharedGuestMemoryOptions,
  type SharedMapping,
} from './shared-memory.js';
export {
  BlkClient,
  BlkRequestError,
  blkHeader,
  withTimeout,
  type BlkResult,
  type SubmitOptions,
} from './blk.js';
