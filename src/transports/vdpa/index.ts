/** The vdpa bus: the netlink client (`vdpa dev add/del`), its worker, and the sysfs look-ups of bound devices. */
export { VdpaNetlink, type VdpaDeviceInfo, type VdpaMgmtdevInfo } from './netlink.js';
export { VdpaClient, WorkerTransport, InlineTransport, type VdpaTransport, type VdpaCall } from './client.js';
export { boundDriver, findBlockDevice, findVhostDevice, type SysfsPaths } from './sysfs.js';
export { VdpaError, type VdpaErrorCode } from './errors.js';
