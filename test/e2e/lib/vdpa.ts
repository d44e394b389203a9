/**
 * vDPA devices and the block devices they expose, found through sysfs (never by guessing /dev names).
 *
 * Device management goes through iproute2's `vdpa` tool here; the project's own netlink client can replace
 * {@link vdpaDevAdd}/{@link vdpaDevDel} later without changing the sysfs helpers.
 */
import fs from 'node:fs';
import path from 'node:path';
import { execOk, type ExecOptions } from './exec.js';
import { waitFor, type WaitOptions } from './wait.js';

/** Where the vdpa bus lists its devices (one directory per device name). */
export const VDPA_DEVICES_DIR = '/sys/bus/vdpa/devices';

export interface BlockDevice {
  /** Kernel name, e.g. "vdb". */
  name: string;
  /** Device node, e.g. "/dev/vdb". */
  path: string;
  /** Capacity in bytes (/sys/block/NAME/size × 512). */
  sizeBytes: number;
  /** Logical block size in bytes (/sys/block/NAME/queue/logical_block_size). */
  logicalBlockSize: number;
  /** Whether the device is read-only (/sys/block/NAME/ro). */
  readOnly: boolean;
}

/** `vdpa dev add name NAME mgmtdev MGMTDEV` (default mgmtdev "vduse"). */
export async function vdpaDevAdd(name: string, mgmtdev = 'vduse', opts: ExecOptions = {}): Promise<void> {
  await execOk('vdpa', ['dev', 'add', 'name', name, 'mgmtdev', mgmtdev], opts);
}

/** `vdpa dev del NAME`. */
export async function vdpaDevDel(name: string, opts: ExecOptions = {}): Promise<void> {
  await execOk('vdpa', ['dev', 'del', name], opts);
}

/** `vdpa -j dev show NAME`, parsed: the object describing NAME (type, mgmtdev, max_vqs, ...). */
export async function vdpaDevShow(name: string, opts: ExecOptions = {}): Promise<Record<string, unknown>> {
  const r = await execOk('vdpa', ['-j', 'dev', 'show', name], opts);
  const parsed = JSON.parse(r.stdout) as { dev?: Record<string, Record<string, unknown>> };
  const dev = parsed.dev?.[name];
  if (!dev) throw new Error(`vdpa dev show ${name}: no such device in ${r.stdout.trim()}`);
  return dev;
}

/** Whether the vdpa bus has a device called `name`. */
export function vdpaDevExists(name: string): boolean {
  return fs.existsSync(path.join(VDPA_DEVICES_DIR, name));
}

/** Whether `/dev/vduse/NAME` (the VDUSE device a daemon created) exists. */
export function vduseDevExists(name: string): boolean {
  return fs.existsSync(path.join('/dev/vduse', name));
}

/** The driver a vdpa device is bound to ("virtio_vdpa", "vhost_vdpa") or null. */
export function vdpaDriver(name: string): string | null {
  try {
    return path.basename(fs.readlinkSync(path.join(VDPA_DEVICES_DIR, name, 'driver')));
  } catch {
    return null;
  }
}

const readSysfs = (p: string) => fs.readFileSync(p, 'utf8').trim();

/** Size, block size and read-only flag of block device `name` (e.g. "vdb") from /sys/block. */
export function blockDeviceInfo(name: string): BlockDevice {
  const sys = path.join('/sys/block', name);
  return {
    name,
    path: path.join('/dev', name),
    sizeBytes: Number(readSysfs(path.join(sys, 'size'))) * 512,
    logicalBlockSize: Number(readSysfs(path.join(sys, 'queue', 'logical_block_size'))),
    readOnly: readSysfs(path.join(sys, 'ro')) === '1',
  };
}

/**
 * The block device the vdpa device `vdpaName` exposes through virtio_vdpa + virtio_blk, from
 * /sys/bus/vdpa/devices/NAME/virtio*\/block/*, or null when there is none (yet). Throws when there are several.
 */
export function findBlockDevice(vdpaName: string): BlockDevice | null {
  const dir = path.join(VDPA_DEVICES_DIR, vdpaName);
  let entries: string[];
  try {
    entries = fs.readdirSync(dir).filter((n) => /^virtio\d+$/.test(n));
  } catch {
    return null;
  }
  const names: string[] = [];
  for (const v of entries) {
    try {
      names.push(...fs.readdirSync(path.join(dir, v, 'block')));
    } catch {
      // this virtio device has no disk (yet)
    }
  }
  if (names.length > 1)
    throw new Error(`vdpa device ${vdpaName} has several block devices: ${names.join(' ')}`);
  return names[0] === undefined ? null : blockDeviceInfo(names[0]);
}

/** Waits until {@link findBlockDevice} finds the disk and its /dev node exists. */
export function waitForBlockDevice(vdpaName: string, opts: WaitOptions = {}): Promise<BlockDevice> {
  return waitFor(
    `a block device under ${VDPA_DEVICES_DIR}/${vdpaName}`,
    () => {
      const dev = findBlockDevice(vdpaName);
      return dev && fs.existsSync(dev.path) ? dev : null;
    },
    opts,
  );
}

/** Waits until the vdpa device is gone from the bus and, if given, block device `blockName` from /sys/block. */
export async function waitForVdpaDevGone(
  vdpaName: string,
  blockName?: string,
  opts: WaitOptions = {},
): Promise<void> {
  await waitFor(`vdpa device ${vdpaName} to leave the bus`, () => !vdpaDevExists(vdpaName), opts);
  if (blockName !== undefined) {
    await waitFor(
      `/sys/block/${blockName} to go away`,
      () => !fs.existsSync(`/sys/block/${blockName}`),
      opts,
    );
  }
}

/** Waits until /dev/vduse/NAME is gone (the daemon destroyed its VDUSE device). */
export function waitForVduseDevGone(name: string, opts: WaitOptions = {}): Promise<true> {
  return waitFor(`/dev/vduse/${name} to go away`, () => !vduseDevExists(name), opts);
}
