/**
 * vduse-ts: virtio devices in userspace on Linux VDUSE.
 *
 * Layers, bottom up: the SysBinding (native syscalls), guest memory, virtqueues, devices (virtio-blk) and their
 * block backends, and the VDUSE transport that serves a device to the kernel. Struct layouts of the kernel uAPI
 * are under the `uapi` namespace, test doubles (FakeBinding, MockDriver) under `testing`.
 */
export * from './sys/index.js';
export * from './memory/index.js';
export * from './virtio/index.js';
export * from './devices/index.js';
export * from './backends/index.js';
export * from './transports/vduse/index.js';
export * as uapi from './uapi/index.js';
export * as testing from './testing/index.js';
