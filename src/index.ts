/**
 * vduse-ts: virtio devices in userspace on Linux VDUSE.
 *
 * Layers, bottom up: the error model and logger, the SysBinding (native syscalls), guest memory, virtqueues,
 * devices (virtio-blk) and their block backends, the VDUSE transport that serves a device to the kernel, the
 * vdpa bus client that attaches it, the vhost-user back-end that serves a device to a VMM (docs/architecture.md).
 * Struct layouts of the kernel uAPI are under the `uapi` namespace, test doubles (FakeBinding, MockDriver, the
 * vhost-vdpa driver and vhost-user front-end) under `testing`. The queue engine's internals, the
 * transport's sans-I/O protocol and the daemon (mgmt, cli) are not part of the library surface.
 */
export * from './common/index.js';
export * from './sys/index.js';
export * from './memory/index.js';
export * from './virtio/index.js';
export * from './devices/index.js';
export * from './backends/index.js';
export * from './transports/vduse/index.js';
export * from './transports/vdpa/index.js';
export {
  VhostUserBackend,
  VhostUserError,
  type VhostUserBackendOptions,
  type VhostUserBackendEvents,
  type VhostUserErrorCode,
} from './transports/vhost-user/index.js';
export * as uapi from './uapi/index.js';
export * as testing from './testing/index.js';
