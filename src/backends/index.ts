export {
  BackendError,
  backendCodeFor,
  type BackendErrorOptions,
  type BlockBackend,
  type BackendCapabilities,
} from './backend.js';
export { NullBackend, type NullBackendOptions } from './null-backend.js';
export { MemoryBackend, type MemoryBackendOptions, DEFAULT_MEMORY_CHUNK_SIZE } from './memory-backend.js';
export { FileBackend, type FileBackendOptions } from './file-backend.js';
export { parseSize, formatSize, SECTOR_SIZE } from './size.js';
export * from './spec.js';
// Importing the NBD module registers the nbd, nbds, nbd+unix and nbds+unix backend kinds.
export * from './nbd/index.js';
// Importing the RBD module registers the rbd backend kind (librbd is loaded at the first open).
export * from './rbd/index.js';
// Packet backends (virtio-net): TAP, and a virtual wire for tests.
export * from './packet/index.js';
