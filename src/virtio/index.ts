export * from './virtqueue.js';
export { SplitQueue } from './split-queue.js';
export { PackedQueue } from './packed-queue.js';
export { createVirtqueue } from './create-virtqueue.js';
export {
  CHAIN_MAX_BYTES,
  INDIRECT_MAX_DESCRIPTORS,
  copyFromParts,
  copyToParts,
  readFromChain,
  sliceParts,
  writeStatus,
  writeToChain,
} from './chain.js';
