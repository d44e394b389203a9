export * from './guest-memory.js';
export { HeapMemory, type AccessRecord, type HeapRegion, type HeapRegionOptions } from './heap-memory.js';
export { IotlbMemory, type IotlbEntry, type IotlbSource } from './iotlb-memory.js';
export {
  RegionMemory,
  RegionTableError,
  REGION_MAX_SIZE,
  closeRegionFds,
  type RegionSpec,
} from './region-memory.js';
