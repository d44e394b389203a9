/**
 * The virtio-net config space (§5.1.4): mac, status (link), max_virtqueue_pairs (1: no MQ without a control
 * queue), mtu. The whole 24-byte struct is exposed (speed and duplex say "unknown"; SPEED_DUPLEX is not offered)
 * so that a VMM reading the size its feature table computes (QEMU over vhost-vdpa) is never refused.
 */
import {
  VIRTIO_NET_CONFIG_SIZE,
  VIRTIO_NET_S_LINK_UP,
  encodeVirtioNetConfig,
} from '../../uapi/virtio-net.js';

export const NET_CONFIG_SPACE_SIZE = VIRTIO_NET_CONFIG_SIZE;
/** Offset and size of `status` in the config space (what a transport rewrites on a link change). */
export const NET_CONFIG_STATUS_OFFSET = 6;
export const NET_CONFIG_STATUS_SIZE = 2;
/** ethtool SPEED_UNKNOWN / DUPLEX_UNKNOWN. */
const SPEED_UNKNOWN = 0xffffffff;
const DUPLEX_UNKNOWN = 0xff;

export function encodeNetConfig(mac: Uint8Array, linkUp: boolean, mtu: number): Uint8Array {
  return encodeVirtioNetConfig(
    {
      mac,
      status: linkUp ? VIRTIO_NET_S_LINK_UP : 0,
      max_virtqueue_pairs: 1,
      mtu,
      speed: SPEED_UNKNOWN,
      duplex: DUPLEX_UNKNOWN,
    },
    NET_CONFIG_SPACE_SIZE,
  );
}
