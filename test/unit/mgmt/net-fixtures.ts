// What a net device looks like in device.list (a fixture for the client and metrics tests).
import type { DeviceInfo } from '../../../src/mgmt/manager.js';

export function netDeviceInfo(
  name: string,
  o: { tap: string; link: 'up' | 'down'; path?: string; features?: string },
): DeviceInfo {
  return {
    name,
    type: 'net',
    state: 'running',
    path: o.path ?? 'eth1',
    backend: `tap:${o.tap}`,
    queues: 1,
    queueSize: 256,
    logicalBlockSize: 0,
    readOnly: false,
    packed: false,
    attach: true,
    driver: 'virtio-vdpa',
    features: o.features ?? '0x0',
    size: 0,
    net: { tap: o.tap, mac: '02:00:00:00:00:01', mtu: 1500, link: o.link, offloads: true },
  };
}
