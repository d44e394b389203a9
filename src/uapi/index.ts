/** The uAPI module: kernel and virtio-spec constants, struct layouts and codecs. */
export * from './layout.js';
export * from './ioctl.js';
export * from './virtio-config.js';
export * from './virtio-ring.js';
export * from './virtio-blk.js';
export * from './virtio-net.js';
export * from './vduse.js';
export * from './vdpa.js';
export * from './netlink.js';
export * from './vhost.js';
export * from './vhost-user.js';
