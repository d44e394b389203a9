/**
 * Where a VDUSE device shows up once attached: the block device of the virtio_vdpa + virtio_blk stack, or the
 * vhost-vdpa char device; and the sysfs writes that move a vdpa device to another bus driver.
 *
 * sysfs writes that unbind or bind a driver run the driver's remove/probe synchronously, and those send VDUSE
 * messages to this very process; they are made with fs.promises (libuv's thread pool), so the event loop keeps
 * answering meanwhile.
 */
import { existsSync, readdirSync, readlinkSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { VdpaError } from './errors.js';

export const VDPA_BUS = '/sys/bus/vdpa';

export interface SysfsPaths {
  /** Default /sys/bus/vdpa. */
  vdpaBus?: string;
  /** Default /dev. */
  dev?: string;
}

function bus(paths: SysfsPaths): string {
  return paths.vdpaBus ?? VDPA_BUS;
}

/** The bus driver a vdpa device is bound to ('virtio_vdpa', 'vhost_vdpa'), or null. */
export function boundDriver(name: string, paths: SysfsPaths = {}): string | null {
  try {
    return basename(readlinkSync(join(bus(paths), 'devices', name, 'driver')));
  } catch {
    return null;
  }
}

/** The first entry of …/devices/NAME/virtioN/`kind` (a virtio driver's node: 'block', 'net'), or null. */
function findVirtioChild(name: string, kind: string, paths: SysfsPaths): string | null {
  const dir = join(bus(paths), 'devices', name);
  let entries: string[];
  try {
    entries = readdirSync(dir);
  } catch {
    return null;
  }
  for (const e of entries.filter((x) => /^virtio\d+$/.test(x)).sort()) {
    try {
      const nodes = readdirSync(join(dir, e, kind));
      if (nodes[0] !== undefined) return nodes[0];
    } catch {
      // no such dir (yet)
    }
  }
  return null;
}

/** The block device name ('vda') of vdpa device `name` (…/devices/NAME/virtio*\/block/*), or null. */
export function findBlockDevice(name: string, paths: SysfsPaths = {}): string | null {
  return findVirtioChild(name, 'block', paths);
}

/** The network interface name ('eth1') of vdpa device `name` (…/devices/NAME/virtio*\/net/*), or null. */
export function findNetInterface(name: string, paths: SysfsPaths = {}): string | null {
  return findVirtioChild(name, 'net', paths);
}

/** The vhost-vdpa char device name ('vhost-vdpa-0') of vdpa device `name`, or null. */
export function findVhostDevice(name: string, paths: SysfsPaths = {}): string | null {
  try {
    const hit = readdirSync(join(bus(paths), 'devices', name)).find((x) => /^vhost-vdpa-\d+$/.test(x));
    return hit ?? null;
  } catch {
    return null;
  }
}

/** Poll `probe` until it returns non-null or `timeoutMs` passes. */
export async function waitFor<T>(
  probe: () => T | null,
  timeoutMs: number,
  intervalMs = 20,
): Promise<T | null> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = probe();
    if (v !== null) return v;
    if (Date.now() >= deadline) return null;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** The /dev path of a device node name, once the node exists (devtmpfs/udev create it). */
export async function waitForDevNode(
  node: string,
  timeoutMs: number,
  paths: SysfsPaths = {},
): Promise<string | null> {
  const path = join(paths.dev ?? '/dev', node);
  return waitFor(() => (existsSync(path) ? path : null), timeoutMs);
}

/**
 * Move vdpa device `name` to bus driver `driver` (e.g. 'vhost_vdpa'): set driver_override, unbind from the
 * current driver, bind to the new one. No-op when already bound there.
 */
export async function rebindVdpaDevice(name: string, driver: string, paths: SysfsPaths = {}): Promise<void> {
  const b = bus(paths);
  if (boundDriver(name, paths) === driver) return;
  if (!existsSync(join(b, 'drivers', driver))) {
    throw new VdpaError(
      'ERR_VDPA_DRIVER',
      `vdpa bus driver ${driver} is not available: load its module (modprobe ${driver.replace(/-/g, '_')})`,
    );
  }
  const override = join(b, 'devices', name, 'driver_override');
  if (existsSync(override)) await writeFile(override, driver);
  const current = boundDriver(name, paths);
  if (current !== null) await writeFile(join(b, 'drivers', current, 'unbind'), name);
  await writeFile(join(b, 'drivers', driver, 'bind'), name);
}
