/**
 * Typed calls for the VDUSE ioctls, over a SysBinding and the struct codecs of src/uapi/vduse.ts. Each function
 * is one ioctl; errors are the binding's system errors (code/errno/syscall), unchanged.
 */
import type { SysBinding } from '../../sys/binding.js';
import {
  VDUSE_CREATE_DEV,
  VDUSE_DESTROY_DEV,
  VDUSE_DEV_GET_FEATURES,
  VDUSE_DEV_INJECT_CONFIG_IRQ,
  VDUSE_DEV_SET_CONFIG,
  VDUSE_IOTLB_GET_FD,
  VDUSE_SET_API_VERSION,
  VDUSE_VQ_GET_INFO,
  VDUSE_VQ_INJECT_IRQ,
  VDUSE_VQ_SETUP,
  VDUSE_VQ_SETUP_KICKFD,
  decodeU64,
  decodeVduseIotlbEntry,
  decodeVduseVqInfo,
  encodeU32,
  encodeU64,
  encodeVduseConfigData,
  encodeVduseDevConfig,
  encodeVduseIotlbEntry,
  encodeVduseName,
  encodeVduseVqConfig,
  encodeVduseVqEventfd,
  encodeVduseVqInfo,
} from '../../uapi/vduse.js';
import type { PackedQueueState, SplitQueueState } from '../../virtio/virtqueue.js';

import type { IotlbEntry } from '../../memory/iotlb-memory.js';
export type { IotlbEntry };

export function setApiVersion(binding: SysBinding, controlFd: number, version: number): void {
  binding.ioctl(controlFd, VDUSE_SET_API_VERSION, encodeU64(BigInt(version)));
}

export interface CreateDevArgs {
  name: string;
  vendorId: number;
  deviceId: number;
  features: bigint;
  vqNum: number;
  vqAlign: number;
  config: Uint8Array;
}

export function createDev(binding: SysBinding, controlFd: number, args: CreateDevArgs): void {
  const arg = encodeVduseDevConfig(
    {
      name: args.name,
      vendor_id: args.vendorId,
      device_id: args.deviceId,
      features: args.features,
      vq_num: args.vqNum,
      vq_align: args.vqAlign,
    },
    args.config,
  );
  binding.ioctl(controlFd, VDUSE_CREATE_DEV, arg);
}

export function destroyDev(binding: SysBinding, controlFd: number, name: string): void {
  binding.ioctl(controlFd, VDUSE_DESTROY_DEV, encodeVduseName(name));
}

/** VDUSE_IOTLB_GET_FD for [start, last]: the first overlapping entry and a new fd to mmap (the caller closes it). */
export function iotlbGetFd(
  binding: SysBinding,
  devFd: number,
  start: number,
  last: number,
): { entry: IotlbEntry; fd: number } {
  const arg = encodeVduseIotlbEntry({ start, last });
  const fd = binding.ioctl(devFd, VDUSE_IOTLB_GET_FD, arg);
  const e = decodeVduseIotlbEntry(arg);
  return { entry: { start: e.start, last: e.last, offset: e.offset, perm: e.perm }, fd };
}

export function devGetFeatures(binding: SysBinding, devFd: number): bigint {
  const arg = new Uint8Array(8);
  binding.ioctl(devFd, VDUSE_DEV_GET_FEATURES, arg);
  return decodeU64(arg);
}

export function devSetConfig(binding: SysBinding, devFd: number, offset: number, data: Uint8Array): void {
  binding.ioctl(devFd, VDUSE_DEV_SET_CONFIG, encodeVduseConfigData(offset, data));
}

export function devInjectConfigIrq(binding: SysBinding, devFd: number): void {
  binding.ioctl(devFd, VDUSE_DEV_INJECT_CONFIG_IRQ, 0);
}

export function vqSetup(binding: SysBinding, devFd: number, index: number, maxSize: number): void {
  binding.ioctl(devFd, VDUSE_VQ_SETUP, encodeVduseVqConfig({ index, max_size: maxSize }));
}

/** VDUSE_VQ_GET_INFO, with the driver-set start state in both forms (use the one matching the ring layout). */
export interface VqInfo {
  index: number;
  num: number;
  descAddr: number;
  driverAddr: number;
  deviceAddr: number;
  ready: boolean;
  split: SplitQueueState;
  packed: PackedQueueState;
}

export function vqGetInfo(binding: SysBinding, devFd: number, index: number): VqInfo {
  const arg = encodeVduseVqInfo({ index });
  binding.ioctl(devFd, VDUSE_VQ_GET_INFO, arg);
  const i = decodeVduseVqInfo(arg);
  return {
    index: i.index,
    num: i.num,
    descAddr: i.desc_addr,
    driverAddr: i.driver_addr,
    deviceAddr: i.device_addr,
    ready: i.ready !== 0,
    split: { nextAvail: i.avail_index },
    packed: {
      lastAvailCounter: i.last_avail_counter,
      lastAvailIdx: i.last_avail_idx,
      lastUsedCounter: i.last_used_counter,
      lastUsedIdx: i.last_used_idx,
    },
  };
}

/** Attach eventfd `fd` as queue `index`'s kick (fd -1 detaches). */
export function vqSetupKickfd(binding: SysBinding, devFd: number, index: number, fd: number): void {
  binding.ioctl(devFd, VDUSE_VQ_SETUP_KICKFD, encodeVduseVqEventfd({ index, fd }));
}

export function vqInjectIrq(binding: SysBinding, devFd: number, index: number): void {
  binding.ioctl(devFd, VDUSE_VQ_INJECT_IRQ, encodeU32(index));
}
