export type { VirtioDevice, DeviceHost, DeviceContext } from './device.js';
export * from './blk/index.js';
export * from './net/index.js';
