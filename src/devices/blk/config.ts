/**
 * The virtio-blk config space (§5.2.4): which fields are filled, from the options and the backend. Fields of
 * features not offered stay zero. The encoding itself is the uapi codec's.
 */
import type { BackendCapabilities } from '../../backends/backend.js';
import {
  VIRTIO_BLK_CONFIG_SIZE_NO_ZONED,
  VIRTIO_BLK_SECTOR_SIZE,
  encodeVirtioBlkConfig,
  type VirtioBlkConfig,
} from '../../uapi/virtio-blk.js';
import type { ResolvedBlkOptions } from './options.js';

/**
 * Bytes of config space the device exposes: up to and including the secure-erase fields (72). The zoned tail is
 * left out since ZONED is not offered.
 */
export const BLK_CONFIG_SPACE_SIZE = VIRTIO_BLK_CONFIG_SIZE_NO_ZONED;

/** Topology fields (VIRTIO_BLK_F_TOPOLOGY) from the backend's I/O sizes, in logical blocks. */
export function blkTopology(
  caps: BackendCapabilities,
  logicalBlockSize: number,
): Pick<VirtioBlkConfig, 'physical_block_exp' | 'alignment_offset' | 'min_io_size' | 'opt_io_size'> {
  const physical = Math.max(caps.minIoSize, logicalBlockSize);
  const ratio = Math.floor(physical / logicalBlockSize);
  return {
    // log2(logical blocks per physical block); min_io_size is not always a power of two, so round down.
    physical_block_exp: Math.min(Math.floor(Math.log2(ratio)), 0xff),
    alignment_offset: 0,
    min_io_size: Math.min(ratio, 0xffff),
    opt_io_size: Math.min(Math.floor(caps.optIoSize / logicalBlockSize), 0xffffffff),
  };
}

/**
 * The config fields for a device of `capacityBytes`. `capacity` is in 512-byte sectors, whatever the logical
 * block size; it is rounded down to whole logical blocks.
 */
export function blkConfigFields(
  options: ResolvedBlkOptions,
  capacityBytes: number,
): Partial<VirtioBlkConfig> {
  const caps = options.backend.capabilities;
  const lbs = options.logicalBlockSize;
  const config: Partial<VirtioBlkConfig> = {
    capacity: BigInt(Math.floor(capacityBytes / lbs) * (lbs / VIRTIO_BLK_SECTOR_SIZE)),
    seg_max: options.segMax,
    blk_size: lbs,
    ...blkTopology(caps, lbs),
  };
  if (options.sizeMax > 0) config.size_max = options.sizeMax;
  if (options.geometry !== null) {
    config.cylinders = options.geometry.cylinders;
    config.heads = options.geometry.heads;
    config.sectors = options.geometry.sectors;
  }
  if (options.numQueues > 1) config.num_queues = options.numQueues;
  // discard_sector_alignment / secure_erase_sector_alignment are in 512-byte sectors, at least one logical block.
  const alignment = Math.max(caps.discardAlignment, lbs) / VIRTIO_BLK_SECTOR_SIZE;
  if (options.discard) {
    config.max_discard_sectors = options.maxDiscardSectors;
    config.max_discard_seg = options.maxDiscardSeg;
    config.discard_sector_alignment = Math.min(Math.ceil(alignment), 0xffffffff);
  }
  if (options.writeZeroes) {
    config.max_write_zeroes_sectors = options.maxWriteZeroesSectors;
    config.max_write_zeroes_seg = options.maxWriteZeroesSeg;
    config.write_zeroes_may_unmap = options.writeZeroesMayUnmap ? 1 : 0;
  }
  if (options.secureErase) {
    config.max_secure_erase_sectors = options.maxSecureEraseSectors;
    config.max_secure_erase_seg = options.maxSecureEraseSeg;
    config.secure_erase_sector_alignment = Math.min(Math.ceil(alignment), 0xffffffff);
  }
  return config;
}

/** The config space bytes (72) for a device of `capacityBytes`. */
export function encodeBlkConfig(options: ResolvedBlkOptions, capacityBytes: number): Uint8Array {
  return encodeVirtioBlkConfig(blkConfigFields(options, capacityBytes), BLK_CONFIG_SPACE_SIZE);
}
