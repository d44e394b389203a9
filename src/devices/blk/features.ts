/**
 * virtio-blk feature negotiation: what the device offers (§5.2.3 plus the transport bits of §6) and which
 * driver answers it accepts.
 */
import {
  VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_GEOMETRY,
  VIRTIO_BLK_F_MQ,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_SECURE_ERASE,
  VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_F_SIZE_MAX,
  VIRTIO_BLK_F_TOPOLOGY,
  VIRTIO_BLK_F_WRITE_ZEROES,
} from '../../uapi/virtio-blk.js';
import {
  VIRTIO_F_ACCESS_PLATFORM,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
  bit,
} from '../../uapi/virtio-config.js';
import { VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../../uapi/virtio-ring.js';
import type { ResolvedBlkOptions } from './options.js';

/** Bits every accepted feature set must hold: VERSION_1 (a modern driver) and ACCESS_PLATFORM (VDUSE). */
export const BLK_REQUIRED_FEATURES = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_ACCESS_PLATFORM);

/**
 * The feature bits the device offers. VIRTIO_BLK_F_CONFIG_WCE is never offered (VDUSE refuses it: the config
 * space is read-only to the driver), nor LIFETIME or ZONED (not implemented).
 */
export function offeredBlkFeatures(options: ResolvedBlkOptions): bigint {
  let features = BLK_REQUIRED_FEATURES | bit(VIRTIO_BLK_F_BLK_SIZE) | bit(VIRTIO_BLK_F_TOPOLOGY);
  features |= bit(VIRTIO_BLK_F_SEG_MAX);
  if (options.sizeMax > 0) features |= bit(VIRTIO_BLK_F_SIZE_MAX);
  if (options.geometry !== null) features |= bit(VIRTIO_BLK_F_GEOMETRY);
  if (options.readOnly) features |= bit(VIRTIO_BLK_F_RO);
  if (options.flush) features |= bit(VIRTIO_BLK_F_FLUSH);
  if (options.numQueues > 1) features |= bit(VIRTIO_BLK_F_MQ);
  if (options.discard) features |= bit(VIRTIO_BLK_F_DISCARD);
  if (options.writeZeroes) features |= bit(VIRTIO_BLK_F_WRITE_ZEROES);
  if (options.secureErase) features |= bit(VIRTIO_BLK_F_SECURE_ERASE);
  if (options.eventIdx) features |= bit(VIRTIO_RING_F_EVENT_IDX);
  if (options.indirect) features |= bit(VIRTIO_RING_F_INDIRECT_DESC);
  if (options.packed) features |= bit(VIRTIO_F_RING_PACKED);
  return features;
}

/**
 * Why the driver's feature set `features` cannot be accepted against `offered`, or null when it can: it must
 * be a subset of the offer and hold VERSION_1 and ACCESS_PLATFORM.
 */
export function blkFeatureProblem(offered: bigint, features: bigint): string | null {
  const extra = features & ~offered;
  if (extra !== 0n) return `the driver accepted features that were not offered (0x${extra.toString(16)})`;
  const missing = BLK_REQUIRED_FEATURES & ~features;
  if (missing !== 0n) return `the driver did not accept the required features (0x${missing.toString(16)})`;
  return null;
}

/** The negotiated features the request path looks at, as booleans. */
export interface NegotiatedBlkFeatures {
  flush: boolean;
  discard: boolean;
  writeZeroes: boolean;
  secureErase: boolean;
}

export function negotiatedBlkFeatures(features: bigint): NegotiatedBlkFeatures {
  const has = (n: number): boolean => (features & bit(n)) !== 0n;
  return {
    flush: has(VIRTIO_BLK_F_FLUSH),
    discard: has(VIRTIO_BLK_F_DISCARD),
    writeZeroes: has(VIRTIO_BLK_F_WRITE_ZEROES),
    secureErase: has(VIRTIO_BLK_F_SECURE_ERASE),
  };
}
