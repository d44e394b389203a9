/**
 * virtio device ids, device status bits and transport feature bits (uapi linux/virtio_ids.h,
 * linux/virtio_config.h; virtio spec v1.2 §2.1, §2.2, §5, §6). Feature constants are bit NUMBERS; use bit() to
 * turn one into a mask in a 64-bit feature word.
 */

// Device ids (virtio spec §5).
export const VIRTIO_ID_NET = 1;
export const VIRTIO_ID_BLOCK = 2;
export const VIRTIO_ID_CONSOLE = 3;
export const VIRTIO_ID_RNG = 4;
export const VIRTIO_ID_BALLOON = 5;
export const VIRTIO_ID_SCSI = 8;
export const VIRTIO_ID_9P = 9;
export const VIRTIO_ID_GPU = 16;
export const VIRTIO_ID_INPUT = 18;
export const VIRTIO_ID_VSOCK = 19;
export const VIRTIO_ID_CRYPTO = 20;
export const VIRTIO_ID_IOMMU = 23;
export const VIRTIO_ID_MEM = 24;
export const VIRTIO_ID_SOUND = 25;
export const VIRTIO_ID_FS = 26;
export const VIRTIO_ID_PMEM = 27;

// Device status bits (§2.1).
export const VIRTIO_CONFIG_S_ACKNOWLEDGE = 1;
export const VIRTIO_CONFIG_S_DRIVER = 2;
export const VIRTIO_CONFIG_S_DRIVER_OK = 4;
export const VIRTIO_CONFIG_S_FEATURES_OK = 8;
export const VIRTIO_CONFIG_S_NEEDS_RESET = 0x40;
export const VIRTIO_CONFIG_S_FAILED = 0x80;

// Transport feature bit numbers (§6). The kernel's transport range is [START, END).
export const VIRTIO_TRANSPORT_F_START = 28;
export const VIRTIO_TRANSPORT_F_END = 41;
export const VIRTIO_F_NOTIFY_ON_EMPTY = 24;
export const VIRTIO_F_ANY_LAYOUT = 27;
export const VIRTIO_F_VERSION_1 = 32;
export const VIRTIO_F_ACCESS_PLATFORM = 33;
/** Old kernel name of VIRTIO_F_ACCESS_PLATFORM. */
export const VIRTIO_F_IOMMU_PLATFORM = VIRTIO_F_ACCESS_PLATFORM;
export const VIRTIO_F_RING_PACKED = 34;
export const VIRTIO_F_IN_ORDER = 35;
export const VIRTIO_F_ORDER_PLATFORM = 36;
export const VIRTIO_F_SR_IOV = 37;
export const VIRTIO_F_NOTIFICATION_DATA = 38;
export const VIRTIO_F_NOTIF_CONFIG_DATA = 39;
export const VIRTIO_F_RING_RESET = 40;

/** The mask of feature bit `n` (0..63) in a 64-bit feature word: `1n << BigInt(n)`. */
export function bit(n: number): bigint {
  if (!Number.isInteger(n) || n < 0 || n > 63)
    throw new RangeError(`feature bit must be in [0, 63], got ${n}`);
  return 1n << BigInt(n);
}

/** Whether feature bit `n` is set in `features`. */
export function hasFeature(features: bigint, n: number): boolean {
  return (features & bit(n)) !== 0n;
}
