/**
 * virtio-blk (uapi linux/virtio_blk.h; virtio spec v1.2 §5.2, zoned parts from spec v1.3 / Linux 6.12). Feature
 * constants are bit NUMBERS. All structs are little-endian.
 *
 * Values the guest controls (request header, discard segments) decode `sector` as a bigint so decoding never
 * throws; range-check it against the capacity before turning it into a byte offset.
 */
import { decodeStruct, defineStruct, encodeStruct } from './layout.js';
import type { StructValue } from './layout.js';

// Feature bit numbers (§5.2.3).
export const VIRTIO_BLK_F_BARRIER = 0; // legacy
export const VIRTIO_BLK_F_SIZE_MAX = 1;
export const VIRTIO_BLK_F_SEG_MAX = 2;
export const VIRTIO_BLK_F_GEOMETRY = 4;
export const VIRTIO_BLK_F_RO = 5;
export const VIRTIO_BLK_F_BLK_SIZE = 6;
export const VIRTIO_BLK_F_SCSI = 7; // legacy
export const VIRTIO_BLK_F_FLUSH = 9;
/** Legacy name of VIRTIO_BLK_F_FLUSH. */
export const VIRTIO_BLK_F_WCE = VIRTIO_BLK_F_FLUSH;
export const VIRTIO_BLK_F_TOPOLOGY = 10;
/** Forbidden by VDUSE (config space is read-only to the driver). */
export const VIRTIO_BLK_F_CONFIG_WCE = 11;
export const VIRTIO_BLK_F_MQ = 12;
export const VIRTIO_BLK_F_DISCARD = 13;
export const VIRTIO_BLK_F_WRITE_ZEROES = 14;
/** Spec only; not in the Linux uapi header and not used by the Linux driver. */
export const VIRTIO_BLK_F_LIFETIME = 15;
export const VIRTIO_BLK_F_SECURE_ERASE = 16;
export const VIRTIO_BLK_F_ZONED = 17;

// Request types (§5.2.6).
export const VIRTIO_BLK_T_IN = 0;
export const VIRTIO_BLK_T_OUT = 1;
export const VIRTIO_BLK_T_SCSI_CMD = 2; // legacy
export const VIRTIO_BLK_T_FLUSH = 4;
export const VIRTIO_BLK_T_GET_ID = 8;
export const VIRTIO_BLK_T_GET_LIFETIME = 10;
export const VIRTIO_BLK_T_DISCARD = 11;
export const VIRTIO_BLK_T_WRITE_ZEROES = 13;
export const VIRTIO_BLK_T_SECURE_ERASE = 14;
export const VIRTIO_BLK_T_ZONE_APPEND = 15;
export const VIRTIO_BLK_T_ZONE_REPORT = 16;
export const VIRTIO_BLK_T_ZONE_OPEN = 18;
export const VIRTIO_BLK_T_ZONE_CLOSE = 20;
export const VIRTIO_BLK_T_ZONE_FINISH = 22;
export const VIRTIO_BLK_T_ZONE_RESET = 24;
export const VIRTIO_BLK_T_ZONE_RESET_ALL = 26;
/** Legacy barrier flag OR-ed into `type`. */
export const VIRTIO_BLK_T_BARRIER = 0x80000000;

// Status byte values.
export const VIRTIO_BLK_S_OK = 0;
export const VIRTIO_BLK_S_IOERR = 1;
export const VIRTIO_BLK_S_UNSUPP = 2;
export const VIRTIO_BLK_S_ZONE_INVALID_CMD = 3;
export const VIRTIO_BLK_S_ZONE_UNALIGNED_WP = 4;
export const VIRTIO_BLK_S_ZONE_OPEN_RESOURCE = 5;
export const VIRTIO_BLK_S_ZONE_ACTIVE_RESOURCE = 6;

// Zoned models (config `model`).
export const VIRTIO_BLK_Z_NONE = 0;
export const VIRTIO_BLK_Z_HM = 1;
export const VIRTIO_BLK_Z_HA = 2;

/** Length of the GET_ID answer: NUL-padded ASCII, no NUL when all 20 bytes are used. */
export const VIRTIO_BLK_ID_BYTES = 20;
/** `flags` bit of a write-zeroes segment: the device may deallocate. */
export const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;
/** Protocol sector size: `sector`, `capacity` and segment lengths are in these units whatever blk_size says. */
export const VIRTIO_BLK_SECTOR_SIZE = 512;
export const VIRTIO_BLK_SECTOR_SHIFT = 9;

/**
 * struct virtio_blk_config (§5.2.4), 96 bytes including the spec v1.3 zoned tail (Linux 6.1's packed struct is
 * the first 72 bytes). Keys are the kernel member names; `c` gives the nested C designator.
 */
export const virtio_blk_config = defineStruct({
  name: 'virtio_blk_config',
  size: 96,
  fields: {
    capacity: { offset: 0, size: 8, type: 'u64' },
    size_max: { offset: 8, size: 4, type: 'u32' },
    seg_max: { offset: 12, size: 4, type: 'u32' },
    cylinders: { offset: 16, size: 2, type: 'u16', c: 'geometry.cylinders' },
    heads: { offset: 18, size: 1, type: 'u8', c: 'geometry.heads' },
    sectors: { offset: 19, size: 1, type: 'u8', c: 'geometry.sectors' },
    blk_size: { offset: 20, size: 4, type: 'u32' },
    physical_block_exp: { offset: 24, size: 1, type: 'u8' },
    alignment_offset: { offset: 25, size: 1, type: 'u8' },
    min_io_size: { offset: 26, size: 2, type: 'u16' },
    opt_io_size: { offset: 28, size: 4, type: 'u32' },
    wce: { offset: 32, size: 1, type: 'u8' },
    unused: { offset: 33, size: 1, type: 'zero' },
    num_queues: { offset: 34, size: 2, type: 'u16' },
    max_discard_sectors: { offset: 36, size: 4, type: 'u32' },
    max_discard_seg: { offset: 40, size: 4, type: 'u32' },
    discard_sector_alignment: { offset: 44, size: 4, type: 'u32' },
    max_write_zeroes_sectors: { offset: 48, size: 4, type: 'u32' },
    max_write_zeroes_seg: { offset: 52, size: 4, type: 'u32' },
    write_zeroes_may_unmap: { offset: 56, size: 1, type: 'u8' },
    unused1: { offset: 57, size: 3, type: 'zero' },
    max_secure_erase_sectors: { offset: 60, size: 4, type: 'u32' },
    max_secure_erase_seg: { offset: 64, size: 4, type: 'u32' },
    secure_erase_sector_alignment: { offset: 68, size: 4, type: 'u32' },
    zone_sectors: { offset: 72, size: 4, type: 'u32', c: 'zoned.zone_sectors' },
    max_open_zones: { offset: 76, size: 4, type: 'u32', c: 'zoned.max_open_zones' },
    max_active_zones: { offset: 80, size: 4, type: 'u32', c: 'zoned.max_active_zones' },
    max_append_sectors: { offset: 84, size: 4, type: 'u32', c: 'zoned.max_append_sectors' },
    write_granularity: { offset: 88, size: 4, type: 'u32', c: 'zoned.write_granularity' },
    model: { offset: 92, size: 1, type: 'u8', c: 'zoned.model' },
    unused2: { offset: 93, size: 3, type: 'zero', c: 'zoned.unused2' },
  },
});
export type VirtioBlkConfig = StructValue<typeof virtio_blk_config>;
/** Size of the full config space (with the zoned tail). */
export const VIRTIO_BLK_CONFIG_SIZE = 96;
/** Size of the config space without the zoned tail (Linux 6.1 `sizeof(struct virtio_blk_config)`). */
export const VIRTIO_BLK_CONFIG_SIZE_NO_ZONED = 72;

/**
 * Encodes the config space. Omitted fields are zero; unused bytes are zero. `size` (default 96) truncates the
 * result, e.g. to 72 for a device that does not offer ZONED.
 */
export function encodeVirtioBlkConfig(
  config: Partial<VirtioBlkConfig>,
  size: number = VIRTIO_BLK_CONFIG_SIZE,
): Uint8Array {
  if (!Number.isInteger(size) || size < 0 || size > VIRTIO_BLK_CONFIG_SIZE) {
    throw new RangeError(`virtio-blk config size must be in [0, ${VIRTIO_BLK_CONFIG_SIZE}], got ${size}`);
  }
  return encodeStruct(virtio_blk_config, config).slice(0, size);
}

/** Decodes a config space; a shorter buffer (e.g. 72 bytes) reads as zero past its end. */
export function decodeVirtioBlkConfig(bytes: Uint8Array): VirtioBlkConfig {
  const full = new Uint8Array(VIRTIO_BLK_CONFIG_SIZE);
  full.set(bytes.subarray(0, VIRTIO_BLK_CONFIG_SIZE));
  return decodeStruct(virtio_blk_config, full);
}

/** struct virtio_blk_outhdr: the 16-byte device-readable request header (§5.2.6). */
export const virtio_blk_outhdr = defineStruct({
  name: 'virtio_blk_outhdr',
  size: 16,
  fields: {
    type: { offset: 0, size: 4, type: 'u32' },
    ioprio: { offset: 4, size: 4, type: 'u32' },
    sector: { offset: 8, size: 8, type: 'u64' },
  },
});
export type VirtioBlkOuthdr = StructValue<typeof virtio_blk_outhdr>;
export const VIRTIO_BLK_OUTHDR_SIZE = 16;

export function decodeVirtioBlkOuthdr(bytes: Uint8Array, offset = 0): VirtioBlkOuthdr {
  return decodeStruct(virtio_blk_outhdr, bytes, offset);
}

export function encodeVirtioBlkOuthdr(hdr: Partial<VirtioBlkOuthdr>): Uint8Array {
  return encodeStruct(virtio_blk_outhdr, hdr);
}

/** struct virtio_blk_discard_write_zeroes: one discard / write-zeroes / secure-erase segment, 16 bytes. */
export const virtio_blk_discard_write_zeroes = defineStruct({
  name: 'virtio_blk_discard_write_zeroes',
  size: 16,
  fields: {
    sector: { offset: 0, size: 8, type: 'u64' },
    num_sectors: { offset: 8, size: 4, type: 'u32' },
    flags: { offset: 12, size: 4, type: 'u32' },
  },
});
export type VirtioBlkDiscardWriteZeroes = StructValue<typeof virtio_blk_discard_write_zeroes>;
export const VIRTIO_BLK_DISCARD_WRITE_ZEROES_SIZE = 16;

export function decodeVirtioBlkDiscardWriteZeroes(
  bytes: Uint8Array,
  offset = 0,
): VirtioBlkDiscardWriteZeroes {
  return decodeStruct(virtio_blk_discard_write_zeroes, bytes, offset);
}

export function encodeVirtioBlkDiscardWriteZeroes(seg: Partial<VirtioBlkDiscardWriteZeroes>): Uint8Array {
  return encodeStruct(virtio_blk_discard_write_zeroes, seg);
}
