/**
 * The VDUSE uAPI (include/uapi/linux/vduse.h): constants, ioctl numbers, struct layouts and codecs. Covers API
 * version 0 (Linux 5.15+, umem ioctls 6.0+) and the API version 1 additions (Linux 7.0: vq groups and address
 * spaces). Layout tables follow the newest header; on older kernels the v1 fields are reserved bytes that must be
 * zero, which is what encoding 0 (or omitting them) gives.
 *
 * Number representation: feature words and capability flags are bigints. Addresses, IOVAs, sizes and offsets in
 * ioctl structs are numbers: decoding throws a RangeError when one is 2^53 or more, encoding rejects anything but
 * a non-negative safe integer. The IOVA range in an UPDATE_IOTLB request is a bigint, because the kernel sends
 * `last = 2^64 - 1` there.
 */
import { IO, IOR, IOW, IOWR } from './ioctl.js';
import { decodeStruct, defineStruct, encodeStruct, viewOf } from './layout.js';
import type { StructValue } from './layout.js';

export const VDUSE_BASE = 0x81;
export const VDUSE_API_VERSION = 0;
/** API version with vq groups and address spaces (Linux 7.0). */
export const VDUSE_API_VERSION_1 = 1;
export const VDUSE_NAME_MAX = 256;
export const VDUSE_ACCESS_RO = 0x1;
export const VDUSE_ACCESS_WO = 0x2;
export const VDUSE_ACCESS_RW = 0x3;
export const VDUSE_EVENTFD_DEASSIGN = -1;
export const VDUSE_IOVA_CAP_UMEM = 1 << 0;
export const VDUSE_REQ_RESULT_OK = 0x00;
export const VDUSE_REQ_RESULT_FAILED = 0x01;

// enum vduse_req_type
export const VDUSE_GET_VQ_STATE = 0;
export const VDUSE_SET_STATUS = 1;
export const VDUSE_UPDATE_IOTLB = 2;
/** API version 1 only. */
export const VDUSE_SET_VQ_GROUP_ASID = 3;

const U8 = 'u8';
const U16 = 'u16';
const U32 = 'u32';

/** struct vduse_dev_config: VDUSE_CREATE_DEV's argument; `config_size` bytes of config space follow at 336. */
export const vduse_dev_config = defineStruct({
  name: 'vduse_dev_config',
  size: 336,
  fields: {
    name: { offset: 0, size: 256, type: 'cstr' },
    vendor_id: { offset: 256, size: 4, type: U32 },
    device_id: { offset: 260, size: 4, type: U32 },
    features: { offset: 264, size: 8, type: 'u64' },
    vq_num: { offset: 272, size: 4, type: U32 },
    vq_align: { offset: 276, size: 4, type: U32 },
    /** API 1: number of vq groups (1..0xffff); must be 0 on API 0. */
    ngroups: { offset: 280, size: 4, type: U32 },
    /** API 1: number of address spaces (1..0xffff); must be 0 on API 0. */
    nas: { offset: 284, size: 4, type: U32 },
    reserved: { offset: 288, size: 44, type: 'zero' },
    config_size: { offset: 332, size: 4, type: U32 },
  },
});
export type VduseDevConfig = StructValue<typeof vduse_dev_config>;
/** offsetof(struct vduse_dev_config, config): where the config space bytes start. */
export const VDUSE_DEV_CONFIG_CONFIG_OFFSET = 336;

/** struct vduse_iotlb_entry: VDUSE_IOTLB_GET_FD's argument. `last` is inclusive. */
export const vduse_iotlb_entry = defineStruct({
  name: 'vduse_iotlb_entry',
  size: 32,
  fields: {
    offset: { offset: 0, size: 8, type: 'addr' },
    start: { offset: 8, size: 8, type: 'addr' },
    last: { offset: 16, size: 8, type: 'addr' },
    perm: { offset: 24, size: 1, type: U8 },
    pad: { offset: 25, size: 7, type: 'zero', c: null },
  },
});
export type VduseIotlbEntry = StructValue<typeof vduse_iotlb_entry>;

/** struct vduse_iotlb_entry_v2 (API 1): VDUSE_IOTLB_GET_FD2's argument. */
export const vduse_iotlb_entry_v2 = defineStruct({
  name: 'vduse_iotlb_entry_v2',
  size: 88,
  fields: {
    offset: { offset: 0, size: 8, type: 'addr', c: 'v1.offset' },
    start: { offset: 8, size: 8, type: 'addr', c: 'v1.start' },
    last: { offset: 16, size: 8, type: 'addr', c: 'v1.last' },
    perm: { offset: 24, size: 1, type: U8, c: 'v1.perm' },
    pad: { offset: 25, size: 7, type: 'zero', c: null },
    asid: { offset: 32, size: 4, type: U32 },
    reserved: { offset: 36, size: 48, type: 'zero' },
    tail_pad: { offset: 84, size: 4, type: 'zero', c: null },
  },
});
export type VduseIotlbEntryV2 = StructValue<typeof vduse_iotlb_entry_v2>;

/** struct vduse_config_data: VDUSE_DEV_SET_CONFIG's argument; `length` bytes follow at 8. */
export const vduse_config_data = defineStruct({
  name: 'vduse_config_data',
  size: 8,
  fields: {
    offset: { offset: 0, size: 4, type: U32 },
    length: { offset: 4, size: 4, type: U32 },
  },
});
export type VduseConfigData = StructValue<typeof vduse_config_data>;
/** offsetof(struct vduse_config_data, buffer). */
export const VDUSE_CONFIG_DATA_BUFFER_OFFSET = 8;

/** struct vduse_vq_config: VDUSE_VQ_SETUP's argument. */
export const vduse_vq_config = defineStruct({
  name: 'vduse_vq_config',
  size: 32,
  fields: {
    index: { offset: 0, size: 4, type: U32 },
    max_size: { offset: 4, size: 2, type: U16 },
    reserved1: { offset: 6, size: 2, type: 'zero' },
    /** API 1: the vq's group (< ngroups); must be 0 on API 0. */
    group: { offset: 8, size: 4, type: U32 },
    reserved2: { offset: 12, size: 20, type: 'zero' },
  },
});
export type VduseVqConfig = StructValue<typeof vduse_vq_config>;

/** struct vduse_vq_state_split. */
export const vduse_vq_state_split = defineStruct({
  name: 'vduse_vq_state_split',
  size: 2,
  fields: { avail_index: { offset: 0, size: 2, type: U16 } },
});
export type VduseVqStateSplit = StructValue<typeof vduse_vq_state_split>;

/** struct vduse_vq_state_packed: counters are 0/1, indices 15-bit. */
export const vduse_vq_state_packed = defineStruct({
  name: 'vduse_vq_state_packed',
  size: 8,
  fields: {
    last_avail_counter: { offset: 0, size: 2, type: U16 },
    last_avail_idx: { offset: 2, size: 2, type: U16 },
    last_used_counter: { offset: 4, size: 2, type: U16 },
    last_used_idx: { offset: 6, size: 2, type: U16 },
  },
});
export type VduseVqStatePacked = StructValue<typeof vduse_vq_state_packed>;

/**
 * struct vduse_vq_info: VDUSE_VQ_GET_INFO's argument. The split/packed state union is flattened: `avail_index`
 * overlaps `last_avail_counter`; read the one that matches the negotiated ring layout.
 */
export const vduse_vq_info = defineStruct({
  name: 'vduse_vq_info',
  size: 48,
  fields: {
    index: { offset: 0, size: 4, type: U32 },
    num: { offset: 4, size: 4, type: U32 },
    desc_addr: { offset: 8, size: 8, type: 'addr' },
    driver_addr: { offset: 16, size: 8, type: 'addr' },
    device_addr: { offset: 24, size: 8, type: 'addr' },
    avail_index: { offset: 32, size: 2, type: U16, c: 'split.avail_index' },
    last_avail_counter: { offset: 32, size: 2, type: U16, c: 'packed.last_avail_counter' },
    last_avail_idx: { offset: 34, size: 2, type: U16, c: 'packed.last_avail_idx' },
    last_used_counter: { offset: 36, size: 2, type: U16, c: 'packed.last_used_counter' },
    last_used_idx: { offset: 38, size: 2, type: U16, c: 'packed.last_used_idx' },
    ready: { offset: 40, size: 1, type: U8 },
    pad: { offset: 41, size: 7, type: 'zero', c: null },
  },
});
export type VduseVqInfo = StructValue<typeof vduse_vq_info>;

/** struct vduse_vq_eventfd: VDUSE_VQ_SETUP_KICKFD's argument; `fd` is signed (VDUSE_EVENTFD_DEASSIGN = -1). */
export const vduse_vq_eventfd = defineStruct({
  name: 'vduse_vq_eventfd',
  size: 8,
  fields: {
    index: { offset: 0, size: 4, type: U32 },
    fd: { offset: 4, size: 4, type: 'i32' },
  },
});
export type VduseVqEventfd = StructValue<typeof vduse_vq_eventfd>;

/** struct vduse_iova_umem: VDUSE_IOTLB_REG_UMEM / DEREG_UMEM's argument. */
export const vduse_iova_umem = defineStruct({
  name: 'vduse_iova_umem',
  size: 48,
  fields: {
    uaddr: { offset: 0, size: 8, type: 'addr' },
    iova: { offset: 8, size: 8, type: 'addr' },
    size: { offset: 16, size: 8, type: 'addr' },
    /** API 1 only; must be 0 on API 0. */
    asid: { offset: 24, size: 4, type: U32 },
    reserved: { offset: 28, size: 20, type: 'zero' },
  },
});
export type VduseIovaUmem = StructValue<typeof vduse_iova_umem>;

/** struct vduse_iova_info: VDUSE_IOTLB_GET_INFO's argument. */
export const vduse_iova_info = defineStruct({
  name: 'vduse_iova_info',
  size: 48,
  fields: {
    start: { offset: 0, size: 8, type: 'addr' },
    last: { offset: 8, size: 8, type: 'addr' },
    capability: { offset: 16, size: 8, type: 'u64' },
    /** API 1 only; must be 0 on API 0. */
    asid: { offset: 24, size: 4, type: U32 },
    reserved: { offset: 28, size: 20, type: 'zero' },
  },
});
export type VduseIovaInfo = StructValue<typeof vduse_iova_info>;

/** struct vduse_vq_state (in requests and responses). */
export const vduse_vq_state = defineStruct({
  name: 'vduse_vq_state',
  size: 12,
  fields: {
    index: { offset: 0, size: 4, type: U32 },
    avail_index: { offset: 4, size: 2, type: U16, c: 'split.avail_index' },
    last_avail_counter: { offset: 4, size: 2, type: U16, c: 'packed.last_avail_counter' },
    last_avail_idx: { offset: 6, size: 2, type: U16, c: 'packed.last_avail_idx' },
    last_used_counter: { offset: 8, size: 2, type: U16, c: 'packed.last_used_counter' },
    last_used_idx: { offset: 10, size: 2, type: U16, c: 'packed.last_used_idx' },
  },
});

/** struct vduse_dev_status. */
export const vduse_dev_status = defineStruct({
  name: 'vduse_dev_status',
  size: 1,
  fields: { status: { offset: 0, size: 1, type: U8 } },
});

/** struct vduse_iova_range ([start, last], inclusive; bigints: the kernel uses last = 2^64 - 1). */
export const vduse_iova_range = defineStruct({
  name: 'vduse_iova_range',
  size: 16,
  fields: {
    start: { offset: 0, size: 8, type: 'u64' },
    last: { offset: 8, size: 8, type: 'u64' },
  },
});

/** struct vduse_iova_range_v2 (API 1). */
export const vduse_iova_range_v2 = defineStruct({
  name: 'vduse_iova_range_v2',
  size: 24,
  fields: {
    start: { offset: 0, size: 8, type: 'u64' },
    last: { offset: 8, size: 8, type: 'u64' },
    asid: { offset: 16, size: 4, type: U32 },
    pad: { offset: 20, size: 4, type: 'zero', c: null },
  },
});

/** struct vduse_vq_group_asid (API 1). */
export const vduse_vq_group_asid = defineStruct({
  name: 'vduse_vq_group_asid',
  size: 8,
  fields: {
    group: { offset: 0, size: 4, type: U32 },
    asid: { offset: 4, size: 4, type: U32 },
  },
});

/**
 * struct vduse_dev_request: what read(2) on /dev/vduse/$NAME returns. The union members are listed with their C
 * designators as keys; use decodeVduseRequest() rather than decodeStruct() on it.
 */
export const vduse_dev_request = defineStruct({
  name: 'vduse_dev_request',
  size: 152,
  fields: {
    type: { offset: 0, size: 4, type: U32 },
    request_id: { offset: 4, size: 4, type: U32 },
    reserved: { offset: 8, size: 16, type: 'zero' },
    'vq_state.index': { offset: 24, size: 4, type: U32 },
    'vq_state.split.avail_index': { offset: 28, size: 2, type: U16 },
    'vq_state.packed.last_avail_counter': { offset: 28, size: 2, type: U16 },
    'vq_state.packed.last_avail_idx': { offset: 30, size: 2, type: U16 },
    'vq_state.packed.last_used_counter': { offset: 32, size: 2, type: U16 },
    'vq_state.packed.last_used_idx': { offset: 34, size: 2, type: U16 },
    's.status': { offset: 24, size: 1, type: U8 },
    'iova.start': { offset: 24, size: 8, type: 'u64' },
    'iova.last': { offset: 32, size: 8, type: 'u64' },
    'iova_v2.start': { offset: 24, size: 8, type: 'u64' },
    'iova_v2.last': { offset: 32, size: 8, type: 'u64' },
    'iova_v2.asid': { offset: 40, size: 4, type: U32 },
    'vq_group_asid.group': { offset: 24, size: 4, type: U32 },
    'vq_group_asid.asid': { offset: 28, size: 4, type: U32 },
    padding: { offset: 24, size: 128, type: 'zero' },
  },
});

/** struct vduse_dev_response: what write(2) takes. `reserved` must be zero or the write fails with EINVAL. */
export const vduse_dev_response = defineStruct({
  name: 'vduse_dev_response',
  size: 152,
  fields: {
    request_id: { offset: 0, size: 4, type: U32 },
    result: { offset: 4, size: 4, type: U32 },
    reserved: { offset: 8, size: 16, type: 'zero' },
    'vq_state.index': { offset: 24, size: 4, type: U32 },
    'vq_state.split.avail_index': { offset: 28, size: 2, type: U16 },
    'vq_state.packed.last_avail_counter': { offset: 28, size: 2, type: U16 },
    'vq_state.packed.last_avail_idx': { offset: 30, size: 2, type: U16 },
    'vq_state.packed.last_used_counter': { offset: 32, size: 2, type: U16 },
    'vq_state.packed.last_used_idx': { offset: 34, size: 2, type: U16 },
    padding: { offset: 24, size: 128, type: 'zero' },
  },
});

/** Size of one message read from / written to the device fd. */
export const VDUSE_MSG_SIZE = 152;

// ioctl numbers. Control fd (/dev/vduse/control):
export const VDUSE_GET_API_VERSION = IOR(VDUSE_BASE, 0x00, 8);
export const VDUSE_SET_API_VERSION = IOW(VDUSE_BASE, 0x01, 8);
export const VDUSE_CREATE_DEV = IOW(VDUSE_BASE, 0x02, vduse_dev_config.size);
/** The argument is always a 256-byte, NUL-padded name buffer (see encodeVduseName). */
export const VDUSE_DESTROY_DEV = IOW(VDUSE_BASE, 0x03, VDUSE_NAME_MAX);
// Device fd (/dev/vduse/$NAME):
export const VDUSE_IOTLB_GET_FD = IOWR(VDUSE_BASE, 0x10, vduse_iotlb_entry.size);
export const VDUSE_DEV_GET_FEATURES = IOR(VDUSE_BASE, 0x11, 8);
export const VDUSE_DEV_SET_CONFIG = IOW(VDUSE_BASE, 0x12, vduse_config_data.size);
export const VDUSE_DEV_INJECT_CONFIG_IRQ = IO(VDUSE_BASE, 0x13);
export const VDUSE_VQ_SETUP = IOW(VDUSE_BASE, 0x14, vduse_vq_config.size);
export const VDUSE_VQ_GET_INFO = IOWR(VDUSE_BASE, 0x15, vduse_vq_info.size);
export const VDUSE_VQ_SETUP_KICKFD = IOW(VDUSE_BASE, 0x16, vduse_vq_eventfd.size);
/** The argument is a u32 vq index. */
export const VDUSE_VQ_INJECT_IRQ = IOW(VDUSE_BASE, 0x17, 4);
export const VDUSE_IOTLB_REG_UMEM = IOW(VDUSE_BASE, 0x18, vduse_iova_umem.size);
export const VDUSE_IOTLB_DEREG_UMEM = IOW(VDUSE_BASE, 0x19, vduse_iova_umem.size);
export const VDUSE_IOTLB_GET_INFO = IOWR(VDUSE_BASE, 0x1a, vduse_iova_info.size);
/** API 1 only (Linux 7.0). */
export const VDUSE_IOTLB_GET_FD2 = IOWR(VDUSE_BASE, 0x1b, vduse_iotlb_entry_v2.size);

// ---------------------------------------------------------------------------------------------------------------
// Codecs

/**
 * Encodes VDUSE_CREATE_DEV's argument: the 336-byte struct followed by the config space. `config_size` is taken
 * from `config.length`. The name must be 1..255 bytes (UTF-8) with no NUL.
 */
export function encodeVduseDevConfig(
  cfg: Omit<VduseDevConfig, 'config_size' | 'ngroups' | 'nas'> & { ngroups?: number; nas?: number },
  config: Uint8Array,
): Uint8Array {
  if (cfg.name.length === 0) throw new RangeError('VDUSE device name must not be empty');
  const out = new Uint8Array(VDUSE_DEV_CONFIG_CONFIG_OFFSET + config.length);
  encodeStruct(vduse_dev_config, { ...cfg, config_size: config.length }, out);
  out.set(config, VDUSE_DEV_CONFIG_CONFIG_OFFSET);
  return out;
}

/** Decodes VDUSE_CREATE_DEV's argument (for mocks and tests): the struct and its trailing config space. */
export function decodeVduseDevConfig(bytes: Uint8Array): { cfg: VduseDevConfig; config: Uint8Array } {
  const cfg = decodeStruct(vduse_dev_config, bytes);
  const end = VDUSE_DEV_CONFIG_CONFIG_OFFSET + cfg.config_size;
  if (bytes.length < end)
    throw new RangeError(`config space truncated: need ${end} bytes, got ${bytes.length}`);
  return { cfg, config: bytes.slice(VDUSE_DEV_CONFIG_CONFIG_OFFSET, end) };
}

/** The 256-byte NUL-padded name buffer VDUSE_DESTROY_DEV copies (1..255 bytes, no NUL). */
export function encodeVduseName(name: string): Uint8Array {
  const b = new TextEncoder().encode(name);
  if (b.length === 0 || b.length >= VDUSE_NAME_MAX || b.includes(0)) {
    throw new RangeError(`VDUSE device name must be 1..${VDUSE_NAME_MAX - 1} bytes with no NUL`);
  }
  const out = new Uint8Array(VDUSE_NAME_MAX);
  out.set(b);
  return out;
}

/** Encodes VDUSE_DEV_SET_CONFIG's argument: the 8-byte header followed by `data`, to go at config `offset`. */
export function encodeVduseConfigData(offset: number, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(VDUSE_CONFIG_DATA_BUFFER_OFFSET + data.length);
  encodeStruct(vduse_config_data, { offset, length: data.length }, out);
  out.set(data, VDUSE_CONFIG_DATA_BUFFER_OFFSET);
  return out;
}

export const encodeVduseIotlbEntry = (v: Partial<VduseIotlbEntry>): Uint8Array =>
  encodeStruct(vduse_iotlb_entry, v);
export const decodeVduseIotlbEntry = (b: Uint8Array): VduseIotlbEntry => decodeStruct(vduse_iotlb_entry, b);
export const encodeVduseIotlbEntryV2 = (v: Partial<VduseIotlbEntryV2>): Uint8Array =>
  encodeStruct(vduse_iotlb_entry_v2, v);
export const decodeVduseIotlbEntryV2 = (b: Uint8Array): VduseIotlbEntryV2 =>
  decodeStruct(vduse_iotlb_entry_v2, b);
export const encodeVduseVqConfig = (v: Partial<VduseVqConfig>): Uint8Array =>
  encodeStruct(vduse_vq_config, v);
export const decodeVduseVqConfig = (b: Uint8Array): VduseVqConfig => decodeStruct(vduse_vq_config, b);
export const encodeVduseVqInfo = (v: Partial<VduseVqInfo>): Uint8Array => encodeStruct(vduse_vq_info, v);
export const decodeVduseVqInfo = (b: Uint8Array): VduseVqInfo => decodeStruct(vduse_vq_info, b);
export const encodeVduseVqEventfd = (v: Partial<VduseVqEventfd>): Uint8Array =>
  encodeStruct(vduse_vq_eventfd, v);
export const decodeVduseVqEventfd = (b: Uint8Array): VduseVqEventfd => decodeStruct(vduse_vq_eventfd, b);
export const encodeVduseIovaUmem = (v: Partial<VduseIovaUmem>): Uint8Array =>
  encodeStruct(vduse_iova_umem, v);
export const decodeVduseIovaUmem = (b: Uint8Array): VduseIovaUmem => decodeStruct(vduse_iova_umem, b);
export const encodeVduseIovaInfo = (v: Partial<VduseIovaInfo>): Uint8Array =>
  encodeStruct(vduse_iova_info, v);
export const decodeVduseIovaInfo = (b: Uint8Array): VduseIovaInfo => decodeStruct(vduse_iova_info, b);

/** A u64 ioctl argument (GET/SET_API_VERSION, DEV_GET_FEATURES). */
export function encodeU64(value: bigint): Uint8Array {
  const out = new Uint8Array(8);
  viewOf(out).setBigUint64(0, BigInt.asUintN(64, value), true);
  return out;
}

export function decodeU64(bytes: Uint8Array): bigint {
  return viewOf(bytes).getBigUint64(0, true);
}

/** A u32 ioctl argument (VQ_INJECT_IRQ). */
export function encodeU32(value: number): Uint8Array {
  const out = new Uint8Array(4);
  viewOf(out).setUint32(0, value, true);
  return out;
}

// Requests and responses -----------------------------------------------------------------------------------------

interface RequestBase {
  /** The raw enum vduse_req_type value. */
  type: number;
  request_id: number;
}

/** VDUSE_GET_VQ_STATE: answer with the vq's state in the response. */
export interface VduseGetVqStateRequest extends RequestBase {
  kind: 'get_vq_state';
  index: number;
}
/** VDUSE_SET_STATUS: `status` is the full new status byte (0 = reset). */
export interface VduseSetStatusRequest extends RequestBase {
  kind: 'set_status';
  status: number;
}
/** VDUSE_UPDATE_IOTLB: drop cached mappings overlapping [start, last]; `asid` is 0 on API-0 devices. */
export interface VduseUpdateIotlbRequest extends RequestBase {
  kind: 'update_iotlb';
  start: bigint;
  last: bigint;
  asid: number;
}
/** VDUSE_SET_VQ_GROUP_ASID (API 1). */
export interface VduseSetVqGroupAsidRequest extends RequestBase {
  kind: 'set_vq_group_asid';
  group: number;
  asid: number;
}
/** A type this module does not know: reply VDUSE_REQ_RESULT_FAILED. `payload` is the 128-byte union. */
export interface VduseUnknownRequest extends RequestBase {
  kind: 'unknown';
  payload: Uint8Array;
}
export type VduseDevRequest =
  | VduseGetVqStateRequest
  | VduseSetStatusRequest
  | VduseUpdateIotlbRequest
  | VduseSetVqGroupAsidRequest
  | VduseUnknownRequest;

const REQ = vduse_dev_request.fields;
const RESP = vduse_dev_response.fields;

/** Decodes one 152-byte message read from the device fd. Throws RangeError if `bytes` is shorter than 152. */
export function decodeVduseRequest(bytes: Uint8Array): VduseDevRequest {
  if (bytes.length < VDUSE_MSG_SIZE) {
    throw new RangeError(`VDUSE request must be ${VDUSE_MSG_SIZE} bytes, got ${bytes.length}`);
  }
  const v = viewOf(bytes);
  const type = v.getUint32(REQ.type.offset, true);
  const request_id = v.getUint32(REQ.request_id.offset, true);
  switch (type) {
    case VDUSE_GET_VQ_STATE:
      return {
        kind: 'get_vq_state',
        type,
        request_id,
        index: v.getUint32(REQ['vq_state.index'].offset, true),
      };
    case VDUSE_SET_STATUS:
      return { kind: 'set_status', type, request_id, status: v.getUint8(REQ['s.status'].offset) };
    case VDUSE_UPDATE_IOTLB:
      return {
        kind: 'update_iotlb',
        type,
        request_id,
        start: v.getBigUint64(REQ['iova_v2.start'].offset, true),
        last: v.getBigUint64(REQ['iova_v2.last'].offset, true),
        asid: v.getUint32(REQ['iova_v2.asid'].offset, true),
      };
    case VDUSE_SET_VQ_GROUP_ASID:
      return {
        kind: 'set_vq_group_asid',
        type,
        request_id,
        group: v.getUint32(REQ['vq_group_asid.group'].offset, true),
        asid: v.getUint32(REQ['vq_group_asid.asid'].offset, true),
      };
    default: {
      const p = REQ.padding;
      return { kind: 'unknown', type, request_id, payload: bytes.slice(p.offset, p.offset + p.size) };
    }
  }
}

/** Encodes a request as the kernel would (for mock transports and tests). Unused bytes are zero. */
export function encodeVduseRequest(req: VduseDevRequest): Uint8Array {
  const out = new Uint8Array(VDUSE_MSG_SIZE);
  const v = viewOf(out);
  v.setUint32(REQ.type.offset, req.type, true);
  v.setUint32(REQ.request_id.offset, req.request_id, true);
  switch (req.kind) {
    case 'get_vq_state':
      v.setUint32(REQ['vq_state.index'].offset, req.index, true);
      break;
    case 'set_status':
      v.setUint8(REQ['s.status'].offset, req.status);
      break;
    case 'update_iotlb':
      v.setBigUint64(REQ['iova_v2.start'].offset, req.start, true);
      v.setBigUint64(REQ['iova_v2.last'].offset, req.last, true);
      v.setUint32(REQ['iova_v2.asid'].offset, req.asid, true);
      break;
    case 'set_vq_group_asid':
      v.setUint32(REQ['vq_group_asid.group'].offset, req.group, true);
      v.setUint32(REQ['vq_group_asid.asid'].offset, req.asid, true);
      break;
    case 'unknown':
      out.set(req.payload.subarray(0, REQ.padding.size), REQ.padding.offset);
      break;
  }
  return out;
}

/** The vq state a GET_VQ_STATE reply carries: `split` or `packed`, matching the negotiated ring layout. */
export interface VduseVqStateReply {
  index: number;
  split?: VduseVqStateSplit;
  packed?: VduseVqStatePacked;
}

export interface VduseDevResponse {
  request_id: number;
  /** VDUSE_REQ_RESULT_OK or VDUSE_REQ_RESULT_FAILED. */
  result: number;
  vq_state?: VduseVqStateReply;
}

/** Encodes a 152-byte response for write(2). Reserved and unused bytes are zero. */
export function encodeVduseResponse(resp: VduseDevResponse): Uint8Array {
  const out = new Uint8Array(VDUSE_MSG_SIZE);
  const v = viewOf(out);
  v.setUint32(RESP.request_id.offset, resp.request_id, true);
  v.setUint32(RESP.result.offset, resp.result, true);
  const s = resp.vq_state;
  if (s !== undefined) {
    if (s.split !== undefined && s.packed !== undefined) {
      throw new RangeError('a vq state is either split or packed, not both');
    }
    v.setUint32(RESP['vq_state.index'].offset, s.index, true);
    if (s.split !== undefined) {
      v.setUint16(RESP['vq_state.split.avail_index'].offset, s.split.avail_index, true);
    }
    if (s.packed !== undefined) {
      const p = s.packed;
      v.setUint16(RESP['vq_state.packed.last_avail_counter'].offset, p.last_avail_counter, true);
      v.setUint16(RESP['vq_state.packed.last_avail_idx'].offset, p.last_avail_idx, true);
      v.setUint16(RESP['vq_state.packed.last_used_counter'].offset, p.last_used_counter, true);
      v.setUint16(RESP['vq_state.packed.last_used_idx'].offset, p.last_used_idx, true);
    }
  }
  return out;
}

/**
 * Decodes a response (for mock transports and tests). The vq state is returned both ways (split and packed
 * views of the same bytes); the reader knows which one applies. Throws RangeError if reserved bytes are not zero,
 * as the kernel rejects such a write.
 */
export function decodeVduseResponse(bytes: Uint8Array): Required<VduseDevResponse> {
  if (bytes.length < VDUSE_MSG_SIZE) {
    throw new RangeError(`VDUSE response must be ${VDUSE_MSG_SIZE} bytes, got ${bytes.length}`);
  }
  const r = RESP.reserved;
  if (bytes.subarray(r.offset, r.offset + r.size).some((b) => b !== 0)) {
    throw new RangeError('VDUSE response reserved bytes are not zero');
  }
  const v = viewOf(bytes);
  const u16 = (k: keyof typeof RESP): number => v.getUint16(RESP[k].offset, true);
  return {
    request_id: v.getUint32(RESP.request_id.offset, true),
    result: v.getUint32(RESP.result.offset, true),
    vq_state: {
      index: v.getUint32(RESP['vq_state.index'].offset, true),
      split: { avail_index: u16('vq_state.split.avail_index') },
      packed: {
        last_avail_counter: u16('vq_state.packed.last_avail_counter'),
        last_avail_idx: u16('vq_state.packed.last_avail_idx'),
        last_used_counter: u16('vq_state.packed.last_used_counter'),
        last_used_idx: u16('vq_state.packed.last_used_idx'),
      },
    },
  };
}
