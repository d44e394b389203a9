/**
 * /dev/vduse/control: create and destroy VDUSE devices, and list the existing ones.
 */
import { closeSync, constants as fsConstants, existsSync, openSync, readdirSync } from 'node:fs';

import type { VirtioDevice } from '../../devices/device.js';
import type { SysBinding } from '../../sys/binding.js';
import { createDev, destroyDev, setApiVersion } from './ioctls.js';
import { VduseError, systemErrorMessage } from './errors.js';

export const VDUSE_CONTROL_PATH = '/dev/vduse/control';
/** What libvduse uses; at most PAGE_SIZE. */
export const DEFAULT_VQ_ALIGN = 4096;
/** VDUSE_NAME_MAX minus the NUL. */
export const VDUSE_NAME_MAX = 255;
/** VIRTIO_F_ACCESS_PLATFORM: required by VDUSE. */
const ACCESS_PLATFORM = 1n << 33n;

/** What VDUSE_CREATE_DEV needs. */
export interface DeviceDescription {
  name: string;
  deviceId: number;
  vendorId: number;
  features: bigint;
  numQueues: number;
  config: Uint8Array;
  /** Default 4096. */
  vqAlign?: number;
}

/** The description of a VirtioDevice under `name`. */
export function describeDevice(name: string, device: VirtioDevice): DeviceDescription {
  return {
    name,
    deviceId: device.deviceId,
    vendorId: device.vendorId,
    features: device.features,
    numQueues: device.numQueues,
    config: device.config(),
  };
}

/** A name the kernel accepts as /dev/vduse/NAME: non-empty, < 256 bytes, no '/', not "control". */
export function checkDeviceName(name: string): void {
  if (name.length === 0) throw new VduseError('ERR_VDUSE_NAME', 'device name is empty');
  if (Buffer.byteLength(name) > VDUSE_NAME_MAX) {
    throw new VduseError('ERR_VDUSE_NAME', `device name is longer than ${VDUSE_NAME_MAX} bytes`);
  }
  if (name.includes('/') || name.includes('\0') || name === '.' || name === '..' || name === 'control') {
    throw new VduseError('ERR_VDUSE_NAME', `invalid device name "${name}"`);
  }
}

export interface ControlOptions {
  /** Path of the control device; default /dev/vduse/control. */
  path?: string;
  /**
   * The API version to ask for. 0 (the default) works on every kernel. 1 (Linux 7.0+) is asked for only when a
   * device needs version-1 features; when the kernel refuses it (EINVAL), 0 is used.
   */
  apiVersion?: 0 | 1;
}

export class VduseControl {
  #closed = false;

  private constructor(
    readonly binding: SysBinding,
    readonly fd: number,
    /** The API version set on this fd. */
    readonly apiVersion: number,
    readonly path: string,
  ) {}

  /** Open the control device and set the API version explicitly. */
  static open(binding: SysBinding, options: ControlOptions = {}): VduseControl {
    const path = options.path ?? VDUSE_CONTROL_PATH;
    let fd: number;
    try {
      fd = openSync(path, fsConstants.O_RDWR);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') {
        throw new VduseError(
          'ERR_VDUSE_UNAVAILABLE',
          `${path} does not exist: load the vduse module (modprobe vduse; Linux 5.15+ with CONFIG_VDPA_USER)`,
          err,
        );
      }
      if (code === 'EACCES' || code === 'EPERM') {
        throw new VduseError(
          'ERR_VDUSE_PERMISSION',
          `cannot open ${path}: permission denied (run as root)`,
          err,
        );
      }
      throw new VduseError('ERR_VDUSE_UNAVAILABLE', `cannot open ${path}: ${systemErrorMessage(err)}`, err);
    }
    try {
      let version = 0;
      if (options.apiVersion === 1) {
        try {
          setApiVersion(binding, fd, 1);
          version = 1;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
        }
      }
      if (version === 0) setApiVersion(binding, fd, 0);
      return new VduseControl(binding, fd, version, path);
    } catch (err) {
      closeSync(fd);
      throw new VduseError(
        'ERR_VDUSE_API',
        `cannot set the VDUSE API version: ${systemErrorMessage(err)}`,
        err,
      );
    }
  }

  /** VDUSE_CREATE_DEV. Errors: EEXIST (name taken), EPERM (net needs CAP_NET_ADMIN), EINVAL (refused config). */
  createDevice(desc: DeviceDescription): void {
    this.#check();
    checkDeviceName(desc.name);
    if ((desc.features & ACCESS_PLATFORM) === 0n) {
      throw new VduseError('ERR_VDUSE_CONFIG', 'VDUSE devices must offer VIRTIO_F_ACCESS_PLATFORM (bit 33)');
    }
    if (desc.config.length > 4096) {
      throw new VduseError('ERR_VDUSE_CONFIG', `config space of ${desc.config.length} bytes is above 4096`);
    }
    if (!Number.isInteger(desc.numQueues) || desc.numQueues < 1 || desc.numQueues > 0xffff) {
      throw new VduseError('ERR_VDUSE_CONFIG', `queue count ${desc.numQueues} is outside 1..65535`);
    }
    try {
      createDev(this.binding, this.fd, {
        name: desc.name,
        vendorId: desc.vendorId,
        deviceId: desc.deviceId,
        features: desc.features,
        vqNum: desc.numQueues,
        vqAlign: desc.vqAlign ?? DEFAULT_VQ_ALIGN,
        config: desc.config,
      });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') {
        throw new VduseError('ERR_VDUSE_EXISTS', `a VDUSE device named "${desc.name}" already exists`, err);
      }
      if (code === 'EPERM' || code === 'EACCES') {
        throw new VduseError(
          'ERR_VDUSE_PERMISSION',
          `creating VDUSE device "${desc.name}" is not permitted (${code})`,
          err,
        );
      }
      if (code === 'EINVAL') {
        throw new VduseError(
          'ERR_VDUSE_CONFIG',
          `the kernel refused the configuration of "${desc.name}" (EINVAL: device id ${desc.deviceId} not allowed, or bad features/config)`,
          err,
        );
      }
      throw new VduseError(
        'ERR_VDUSE_CREATE',
        `cannot create "${desc.name}": ${systemErrorMessage(err)}`,
        err,
      );
    }
  }

  /**
   * VDUSE_DESTROY_DEV. EBUSY means the device is still attached to the vdpa bus or its dev fd is open; right after
   * a detach the kernel may still hold it for a moment, so EBUSY is retried for up to `busyRetryMs` (default 2 s).
   */
  async destroyDevice(name: string, options: { busyRetryMs?: number } = {}): Promise<void> {
    this.#check();
    checkDeviceName(name);
    const deadline = Date.now() + (options.busyRetryMs ?? 2000);
    for (;;) {
      try {
        destroyDev(this.binding, this.fd, name);
        return;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'EBUSY') {
          if (Date.now() < deadline) {
            await new Promise((resolve) => setTimeout(resolve, 50));
            continue;
          }
          throw new VduseError(
            'ERR_VDUSE_BUSY',
            `VDUSE device "${name}" is busy: still attached to the vdpa bus (vdpa dev del ${name}) or its /dev/vduse/${name} is open`,
            err,
          );
        }
        if (code === 'EINVAL') {
          throw new VduseError('ERR_VDUSE_NOT_FOUND', `no VDUSE device named "${name}"`, err);
        }
        throw new VduseError(
          'ERR_VDUSE_DESTROY',
          `cannot destroy "${name}": ${systemErrorMessage(err)}`,
          err,
        );
      }
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeSync(this.fd);
  }

  #check(): void {
    if (this.#closed) throw new VduseError('ERR_VDUSE_CLOSED', 'the VDUSE control fd is closed');
  }
}

/** Names of the existing VDUSE devices (from /sys/class/vduse, else /dev/vduse). */
export function listVduseDevices(options: { sysClassDir?: string; devDir?: string } = {}): string[] {
  const sys = options.sysClassDir ?? '/sys/class/vduse';
  const dev = options.devDir ?? '/dev/vduse';
  for (const dir of [sys, dev]) {
    if (!existsSync(dir)) continue;
    try {
      return readdirSync(dir)
        .filter((n) => n !== 'control')
        .sort();
    } catch {
      // try the next place
    }
  }
  return [];
}
