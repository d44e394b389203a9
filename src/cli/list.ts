/** `vduse list`: the VDUSE devices of this machine, their vdpa driver and block device (or vhost node). */
import { existsSync } from 'node:fs';

import { listVduseDevices } from '../transports/vduse/control.js';
import { VduseError } from '../transports/vduse/errors.js';
import { boundDriver, findBlockDevice, findVhostDevice } from '../transports/vdpa/sysfs.js';

export interface ListPlaces {
  sysClassDir?: string;
  devDir?: string;
}

/**
 * One line per device: "NAME DRIVER|detached [/dev/NODE]". Throws ERR_VDUSE_UNAVAILABLE when this kernel has
 * no VDUSE (neither /sys/class/vduse nor /dev/vduse), rather than printing nothing as if there were no devices.
 */
export function listDevices(places: ListPlaces = {}): string[] {
  const sys = places.sysClassDir ?? '/sys/class/vduse';
  const dev = places.devDir ?? '/dev/vduse';
  if (!existsSync(sys) && !existsSync(dev)) {
    throw new VduseError(
      'ERR_VDUSE_UNAVAILABLE',
      `VDUSE is not available: neither ${sys} nor ${dev} exists (modprobe vduse; Linux 5.15+ with CONFIG_VDPA_USER)`,
    );
  }
  return listVduseDevices({ sysClassDir: sys, devDir: dev }).map((name) => {
    const driver = boundDriver(name);
    const node = findBlockDevice(name) ?? findVhostDevice(name);
    return `${name}${driver ? ` ${driver}` : ' detached'}${node ? ` /dev/${node}` : ''}`;
  });
}
