/**
 * virtio-net feature negotiation (§5.1.3 plus the transport bits of §6): what the device offers and which
 * driver answers it accepts. Never offered: CTRL_VQ and everything that needs it (CTRL_RX, CTRL_VLAN, MQ,
 * GUEST_ANNOUNCE, CTRL_MAC_ADDR, CTRL_GUEST_OFFLOADS, RSS): VDUSE refuses a control queue. Nor UFO/USO, HASH_REPORT,
 * RSC_EXT, SPEED_DUPLEX, STANDBY.
 */
import {
  VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_GUEST_CSUM,
  VIRTIO_NET_F_GUEST_ECN,
  VIRTIO_NET_F_GUEST_TSO4,
  VIRTIO_NET_F_GUEST_TSO6,
  VIRTIO_NET_F_HOST_ECN,
  VIRTIO_NET_F_HOST_TSO4,
  VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_MTU,
  VIRTIO_NET_F_STATUS,
} from '../../uapi/virtio-net.js';
import {
  VIRTIO_F_ACCESS_PLATFORM,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
  bit,
} from '../../uapi/virtio-config.js';
import { VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../../uapi/virtio-ring.js';
import type { ResolvedNetOptions } from './options.js';

/** Bits every accepted feature set must hold: VERSION_1 (the 12-byte header) and ACCESS_PLATFORM (VDUSE). */
export const NET_REQUIRED_FEATURES = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_ACCESS_PLATFORM);

export function offeredNetFeatures(options: ResolvedNetOptions): bigint {
  let f = NET_REQUIRED_FEATURES | bit(VIRTIO_NET_F_MAC) | bit(VIRTIO_NET_F_STATUS) | bit(VIRTIO_NET_F_MTU);
  if (options.mergeableRxBuffers) f |= bit(VIRTIO_NET_F_MRG_RXBUF);
  if (options.eventIdx) f |= bit(VIRTIO_RING_F_EVENT_IDX);
  if (options.indirect) f |= bit(VIRTIO_RING_F_INDIRECT_DESC);
  if (options.packed) f |= bit(VIRTIO_F_RING_PACKED);
  const o = options.backend.offloads;
  if (options.offloads && o.csum) {
    // Transmit (HOST_*: the guest hands over partial checksums / large segments) and receive (GUEST_*) alike.
    f |= bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_GUEST_CSUM);
    if (o.tso4) f |= bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_GUEST_TSO4);
    if (o.tso6) f |= bit(VIRTIO_NET_F_HOST_TSO6) | bit(VIRTIO_NET_F_GUEST_TSO6);
    if (o.ecn && (o.tso4 || o.tso6)) f |= bit(VIRTIO_NET_F_HOST_ECN) | bit(VIRTIO_NET_F_GUEST_ECN);
  }
  return f;
}

/** Feature dependencies of §5.1.3.1: [bit, what it needs (any of)]. */
const DEPENDENCIES: readonly [number, readonly number[]][] = [
  [VIRTIO_NET_F_GUEST_TSO4, [VIRTIO_NET_F_GUEST_CSUM]],
  [VIRTIO_NET_F_GUEST_TSO6, [VIRTIO_NET_F_GUEST_CSUM]],
  [VIRTIO_NET_F_GUEST_ECN, [VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6]],
  [VIRTIO_NET_F_HOST_TSO4, [VIRTIO_NET_F_CSUM]],
  [VIRTIO_NET_F_HOST_TSO6, [VIRTIO_NET_F_CSUM]],
  [VIRTIO_NET_F_HOST_ECN, [VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6]],
];

/** Why the driver's `features` cannot be accepted against `offered`, or null when they can. */
export function netFeatureProblem(offered: bigint, features: bigint): string | null {
  const extra = features & ~offered;
  if (extra !== 0n) return `the driver accepted features that were not offered (0x${extra.toString(16)})`;
  const missing = NET_REQUIRED_FEATURES & ~features;
  if (missing !== 0n) return `the driver did not accept the required features (0x${missing.toString(16)})`;
  for (const [b, needs] of DEPENDENCIES) {
    if ((features & bit(b)) !== 0n && !needs.some((n) => (features & bit(n)) !== 0n)) {
      return `feature bit ${b} was accepted without bit ${needs.join(' or ')}, which it depends on`;
    }
  }
  return null;
}

/** The negotiated features the data path looks at. */
export interface NegotiatedNetFeatures {
  mergeableRxBuffers: boolean;
  /** Transmit: the guest may send partial checksums / TSO frames. */
  hostCsum: boolean;
  hostTso4: boolean;
  hostTso6: boolean;
  hostEcn: boolean;
  /** Receive: the guest takes partial checksums / TSO frames. */
  guestCsum: boolean;
  guestTso4: boolean;
  guestTso6: boolean;
  guestEcn: boolean;
}

export function negotiatedNetFeatures(features: bigint): NegotiatedNetFeatures {
  const has = (n: number): boolean => (features & bit(n)) !== 0n;
  return {
    mergeableRxBuffers: has(VIRTIO_NET_F_MRG_RXBUF),
    hostCsum: has(VIRTIO_NET_F_CSUM),
    hostTso4: has(VIRTIO_NET_F_HOST_TSO4),
    hostTso6: has(VIRTIO_NET_F_HOST_TSO6),
    hostEcn: has(VIRTIO_NET_F_HOST_ECN),
    guestCsum: has(VIRTIO_NET_F_GUEST_CSUM),
    guestTso4: has(VIRTIO_NET_F_GUEST_TSO4),
    guestTso6: has(VIRTIO_NET_F_GUEST_TSO6),
    guestEcn: has(VIRTIO_NET_F_GUEST_ECN),
  };
}
