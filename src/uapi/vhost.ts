/**
 * The vhost uAPI as a vhost-vdpa driver (a VMM) uses it (include/uapi/linux/vhost.h, vhost_types.h): constants,
 * ioctl numbers, struct layouts and codecs. Only what /dev/vhost-vdpa-N takes is here: the generic vhost ioctls
 * (owner, features, vrings, backend features), the VHOST_VDPA_* ones, and the IOTLB messages written to the fd.
 *
 * Number representation as in ./vduse.ts: feature words are bigints; addresses, IOVAs and sizes are numbers
 * (decoding throws at 2^53 or more, encoding takes only non-negative safe integers). The IOVA range the kernel
 * reports is a bigint pair, because `last` is 2^64 - 1 on most devices.
 */
import { IO, IOR, IOW, IOWR } from './ioctl.js';
import { decodeStruct, defineStruct, encodeStruct } from './layout.js';
import type { StructValue } from './layout.js';

export const VHOST_VIRTIO = 0xaf;
/** vhost_vring_file.fd value that detaches the eventfd. */
export const VHOST_FILE_UNBIND = -1;

// struct vhost_iotlb_msg: perm and type.
export const VHOST_ACCESS_RO = 0x1;
export const VHOST_ACCESS_WO = 0x2;
export const VHOST_ACCESS_RW = 0x3;
export const VHOST_IOTLB_MISS = 1;
export const VHOST_IOTLB_UPDATE = 2;
export const VHOST_IOTLB_INVALIDATE = 3;
export const VHOST_IOTLB_ACCESS_FAIL = 4;
/** Start of a batch: the updates up to BATCH_END reach the device as one map (VDUSE: one UPDATE_IOTLB). */
export const VHOST_IOTLB_BATCH_BEGIN = 5;
export const VHOST_IOTLB_BATCH_END = 6;
// vhost_msg(_v2).type
export const VHOST_IOTLB_MSG = 0x1;
export const VHOST_IOTLB_MSG_V2 = 0x2;

// Backend feature BITS (VHOST_GET/SET_BACKEND_FEATURES take a u64 mask: 1n << bit).
export const VHOST_BACKEND_F_IOTLB_MSG_V2 = 0x1;
export const VHOST_BACKEND_F_IOTLB_BATCH = 0x2;
export const VHOST_BACKEND_F_IOTLB_ASID = 0x3;
export const VHOST_BACKEND_F_SUSPEND = 0x4;

/** vhost_vring_addr.flags bit: log writes to the used ring (not used by vhost-vdpa). */
export const VHOST_VRING_F_LOG = 0;

const U8 = 'u8';
const U32 = 'u32';

/** struct vhost_vring_state: {index, num}; num is the size, the base, or 1/0 for enable. */
export const vhost_vring_state = defineStruct({
  name: 'vhost_vring_state',
  size: 8,
  fields: {
    index: { offset: 0, size: 4, type: U32 },
    num: { offset: 4, size: 4, type: U32 },
  },
});
export type VhostVringState = StructValue<typeof vhost_vring_state>;

/** struct vhost_vring_file: {index, fd}; fd is signed (VHOST_FILE_UNBIND = -1). */
export const vhost_vring_file = defineStruct({
  name: 'vhost_vring_file',
  size: 8,
  fields: {
    index: { offset: 0, size: 4, type: U32 },
    fd: { offset: 4, size: 4, type: 'i32' },
  },
});
export type VhostVringFile = StructValue<typeof vhost_vring_file>;

/**
 * struct vhost_vring_addr. For vhost-vdpa the three addresses are IOVAs (what the device sees), not user
 * addresses, whatever the field names say. Note the C order: used before avail.
 */
export const vhost_vring_addr = defineStruct({
  name: 'vhost_vring_addr',
  size: 40,
  fields: {
    index: { offset: 0, size: 4, type: U32 },
    flags: { offset: 4, size: 4, type: U32 },
    desc_user_addr: { offset: 8, size: 8, type: 'addr' },
    used_user_addr: { offset: 16, size: 8, type: 'addr' },
    avail_user_addr: { offset: 24, size: 8, type: 'addr' },
    log_guest_addr: { offset: 32, size: 8, type: 'addr' },
  },
});
export type VhostVringAddr = StructValue<typeof vhost_vring_addr>;

/** struct vhost_iotlb_msg. */
export const vhost_iotlb_msg = defineStruct({
  name: 'vhost_iotlb_msg',
  size: 32,
  fields: {
    iova: { offset: 0, size: 8, type: 'addr' },
    size: { offset: 8, size: 8, type: 'addr' },
    uaddr: { offset: 16, size: 8, type: 'addr' },
    perm: { offset: 24, size: 1, type: U8 },
    type: { offset: 25, size: 1, type: U8 },
    pad: { offset: 26, size: 6, type: 'zero', c: null },
  },
});
export type VhostIotlbMsg = StructValue<typeof vhost_iotlb_msg>;

/**
 * struct vhost_msg_v2: what a vhost-vdpa driver write(2)s to the fd for an IOTLB change (once
 * VHOST_BACKEND_F_IOTLB_MSG_V2 is negotiated). The iotlb member is flattened; its `type` is `iotlb_type`.
 */
export const vhost_msg_v2 = defineStruct({
  name: 'vhost_msg_v2',
  size: 72,
  fields: {
    type: { offset: 0, size: 4, type: U32 },
    asid: { offset: 4, size: 4, type: U32 },
    iova: { offset: 8, size: 8, type: 'addr', c: 'iotlb.iova' },
    size: { offset: 16, size: 8, type: 'addr', c: 'iotlb.size' },
    uaddr: { offset: 24, size: 8, type: 'addr', c: 'iotlb.uaddr' },
    perm: { offset: 32, size: 1, type: U8, c: 'iotlb.perm' },
    iotlb_type: { offset: 33, size: 1, type: U8, c: 'iotlb.type' },
    padding: { offset: 8, size: 64, type: 'zero' },
  },
});
export type VhostMsgV2 = StructValue<typeof vhost_msg_v2>;

/** struct vhost_vdpa_config: VHOST_VDPA_GET/SET_CONFIG's argument; `len` bytes of config follow at 8. */
export const vhost_vdpa_config = defineStruct({
  name: 'vhost_vdpa_config',
  size: 8,
  fields: {
    off: { offset: 0, size: 4, type: U32 },
    len: { offset: 4, size: 4, type: U32 },
  },
});
export type VhostVdpaConfig = StructValue<typeof vhost_vdpa_config>;
/** offsetof(struct vhost_vdpa_config, buf). */
export const VHOST_VDPA_CONFIG_BUF_OFFSET = 8;

/** struct vhost_vdpa_iova_range: the IOVAs the device accepts, [first, last] inclusive. */
export const vhost_vdpa_iova_range = defineStruct({
  name: 'vhost_vdpa_iova_range',
  size: 16,
  fields: {
    first: { offset: 0, size: 8, type: 'u64' },
    last: { offset: 8, size: 8, type: 'u64' },
  },
});
export type VhostVdpaIovaRange = StructValue<typeof vhost_vdpa_iova_range>;

// ioctl numbers (all on /dev/vhost-vdpa-N).
export const VHOST_GET_FEATURES = IOR(VHOST_VIRTIO, 0x00, 8);
export const VHOST_SET_FEATURES = IOW(VHOST_VIRTIO, 0x00, 8);
export const VHOST_SET_OWNER = IO(VHOST_VIRTIO, 0x01);
export const VHOST_RESET_OWNER = IO(VHOST_VIRTIO, 0x02);
export const VHOST_SET_VRING_NUM = IOW(VHOST_VIRTIO, 0x10, vhost_vring_state.size);
export const VHOST_SET_VRING_ADDR = IOW(VHOST_VIRTIO, 0x11, vhost_vring_addr.size);
export const VHOST_SET_VRING_BASE = IOW(VHOST_VIRTIO, 0x12, vhost_vring_state.size);
/** VDUSE: the kernel asks the daemon (GET_VQ_STATE) and waits. */
export const VHOST_GET_VRING_BASE = IOWR(VHOST_VIRTIO, 0x12, vhost_vring_state.size);
export const VHOST_SET_VRING_KICK = IOW(VHOST_VIRTIO, 0x20, vhost_vring_file.size);
export const VHOST_SET_VRING_CALL = IOW(VHOST_VIRTIO, 0x21, vhost_vring_file.size);
export const VHOST_SET_BACKEND_FEATURES = IOW(VHOST_VIRTIO, 0x25, 8);
export const VHOST_GET_BACKEND_FEATURES = IOR(VHOST_VIRTIO, 0x26, 8);
export const VHOST_VDPA_GET_DEVICE_ID = IOR(VHOST_VIRTIO, 0x70, 4);
export const VHOST_VDPA_GET_STATUS = IOR(VHOST_VIRTIO, 0x71, 1);
/** VDUSE: the kernel sends the daemon SET_STATUS and keeps the status only if it answers OK. */
export const VHOST_VDPA_SET_STATUS = IOW(VHOST_VIRTIO, 0x72, 1);
export const VHOST_VDPA_GET_CONFIG = IOR(VHOST_VIRTIO, 0x73, vhost_vdpa_config.size);
export const VHOST_VDPA_SET_CONFIG = IOW(VHOST_VIRTIO, 0x74, vhost_vdpa_config.size);
export const VHOST_VDPA_SET_VRING_ENABLE = IOW(VHOST_VIRTIO, 0x75, vhost_vring_state.size);
export const VHOST_VDPA_GET_VRING_NUM = IOR(VHOST_VIRTIO, 0x76, 2);
export const VHOST_VDPA_SET_CONFIG_CALL = IOW(VHOST_VIRTIO, 0x77, 4);
export const VHOST_VDPA_GET_IOVA_RANGE = IOR(VHOST_VIRTIO, 0x78, vhost_vdpa_iova_range.size);
export const VHOST_VDPA_GET_CONFIG_SIZE = IOR(VHOST_VIRTIO, 0x79, 4);
export const VHOST_VDPA_GET_VQS_COUNT = IOR(VHOST_VIRTIO, 0x80, 4);

/** Encode one IOTLB message (struct vhost_msg_v2, 72 bytes) for write(2) on the vhost-vdpa fd. */
export function encodeVhostMsgV2(msg: Partial<Omit<VhostMsgV2, 'type'>>): Uint8Array {
  return encodeStruct(vhost_msg_v2, { ...msg, type: VHOST_IOTLB_MSG_V2 });
}

/** Decode a struct vhost_msg_v2 (e.g. in a test, or a fake device). */
export function decodeVhostMsgV2(bytes: Uint8Array): VhostMsgV2 {
  return decodeStruct(vhost_msg_v2, bytes);
}
