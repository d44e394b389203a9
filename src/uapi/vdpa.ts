/**
 * The vdpa generic-netlink family (uapi linux/vdpa.h). Attribute numbers 0..20 are the same in every kernel.
 * From 21 on, Linux 6.1 and 6.2+ diverge: the main exports are the 6.2+ (6.12) names; 6.1's only attribute past
 * 20 is VDPA_ATTR_6_1_VDPA_DEV_SUPPORTED_FEATURES (21), and 6.1's VDPA_ATTR_MAX is 22. Decode DEV_CONFIG_GET
 * replies by kernel version.
 */

export const VDPA_GENL_NAME = 'vdpa';
export const VDPA_GENL_VERSION = 0x1;

// enum vdpa_command
export const VDPA_CMD_UNSPEC = 0;
/** Reply type of MGMTDEV_GET. */
export const VDPA_CMD_MGMTDEV_NEW = 1;
export const VDPA_CMD_MGMTDEV_GET = 2;
export const VDPA_CMD_DEV_NEW = 3;
export const VDPA_CMD_DEV_DEL = 4;
export const VDPA_CMD_DEV_GET = 5;
export const VDPA_CMD_DEV_CONFIG_GET = 6;
export const VDPA_CMD_DEV_VSTATS_GET = 7;
/** Not in 6.1; present in 6.12. */
export const VDPA_CMD_DEV_ATTR_SET = 8;

// enum vdpa_attr, common part
export const VDPA_ATTR_UNSPEC = 0;
export const VDPA_ATTR_PAD = VDPA_ATTR_UNSPEC;
export const VDPA_ATTR_MGMTDEV_BUS_NAME = 1; // string
export const VDPA_ATTR_MGMTDEV_DEV_NAME = 2; // string
export const VDPA_ATTR_MGMTDEV_SUPPORTED_CLASSES = 3; // u64, bit = virtio device id
export const VDPA_ATTR_DEV_NAME = 4; // string
export const VDPA_ATTR_DEV_ID = 5; // u32
export const VDPA_ATTR_DEV_VENDOR_ID = 6; // u32
export const VDPA_ATTR_DEV_MAX_VQS = 7; // u32
export const VDPA_ATTR_DEV_MAX_VQ_SIZE = 8; // u16
export const VDPA_ATTR_DEV_MIN_VQ_SIZE = 9; // u16
export const VDPA_ATTR_DEV_NET_CFG_MACADDR = 10; // binary
export const VDPA_ATTR_DEV_NET_STATUS = 11; // u8
export const VDPA_ATTR_DEV_NET_CFG_MAX_VQP = 12; // u16
export const VDPA_ATTR_DEV_NET_CFG_MTU = 13; // u16
export const VDPA_ATTR_DEV_NEGOTIATED_FEATURES = 14; // u64
export const VDPA_ATTR_DEV_MGMTDEV_MAX_VQS = 15; // u32
export const VDPA_ATTR_DEV_SUPPORTED_FEATURES = 16; // u64
export const VDPA_ATTR_DEV_QUEUE_INDEX = 17; // u32
export const VDPA_ATTR_DEV_VENDOR_ATTR_NAME = 18; // string
export const VDPA_ATTR_DEV_VENDOR_ATTR_VALUE = 19; // u64
export const VDPA_ATTR_DEV_FEATURES = 20; // u64

// enum vdpa_attr, 6.2+ (6.12) part
export const VDPA_ATTR_DEV_BLK_CFG_CAPACITY = 21; // u64
export const VDPA_ATTR_DEV_BLK_CFG_SIZE_MAX = 22; // u32
export const VDPA_ATTR_DEV_BLK_CFG_BLK_SIZE = 23; // u32
export const VDPA_ATTR_DEV_BLK_CFG_SEG_MAX = 24; // u32
export const VDPA_ATTR_DEV_BLK_CFG_NUM_QUEUES = 25; // u16
export const VDPA_ATTR_DEV_BLK_CFG_PHY_BLK_EXP = 26; // u8
export const VDPA_ATTR_DEV_BLK_CFG_ALIGN_OFFSET = 27; // u8
export const VDPA_ATTR_DEV_BLK_CFG_MIN_IO_SIZE = 28; // u16
export const VDPA_ATTR_DEV_BLK_CFG_OPT_IO_SIZE = 29; // u32
export const VDPA_ATTR_DEV_BLK_CFG_MAX_DISCARD_SEC = 30; // u32
export const VDPA_ATTR_DEV_BLK_CFG_MAX_DISCARD_SEG = 31; // u32
export const VDPA_ATTR_DEV_BLK_CFG_DISCARD_SEC_ALIGN = 32; // u32
export const VDPA_ATTR_DEV_BLK_CFG_MAX_WRITE_ZEROES_SEC = 33; // u32
export const VDPA_ATTR_DEV_BLK_CFG_MAX_WRITE_ZEROES_SEG = 34; // u32
export const VDPA_ATTR_DEV_BLK_READ_ONLY = 35; // u8
export const VDPA_ATTR_DEV_BLK_FLUSH = 36; // u8
export const VDPA_ATTR_MAX = 37;

// enum vdpa_attr, Linux 6.1 (removed in 6.2 by "vdpa: merge functionally duplicated dev_features attributes")
/** 6.1's `VDPA_ATTR_VDPA_DEV_SUPPORTED_FEATURES` (u64); on 6.2+ number 21 is DEV_BLK_CFG_CAPACITY. */
export const VDPA_ATTR_6_1_VDPA_DEV_SUPPORTED_FEATURES = 21;
/** 6.1's `VDPA_ATTR_MAX`. */
export const VDPA_ATTR_6_1_MAX = 22;
