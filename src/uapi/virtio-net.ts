/**
 * virtio-net (uapi linux/virtio_net.h; virtio spec v1.2 §5.1): feature bit NUMBERS, config space layout and the
 * per-buffer header layout. Constants and layouts only.
 */
import { decodeStruct, defineStruct, encodeStruct, type StructValue } from './layout.js';

export const VIRTIO_NET_F_CSUM = 0;
export const VIRTIO_NET_F_GUEST_CSUM = 1;
export const VIRTIO_NET_F_CTRL_GUEST_OFFLOADS = 2;
export const VIRTIO_NET_F_MTU = 3;
export const VIRTIO_NET_F_MAC = 5;
export const VIRTIO_NET_F_GUEST_TSO4 = 7;
export const VIRTIO_NET_F_GUEST_TSO6 = 8;
export const VIRTIO_NET_F_GUEST_ECN = 9;
export const VIRTIO_NET_F_GUEST_UFO = 10;
export const VIRTIO_NET_F_HOST_TSO4 = 11;
export const VIRTIO_NET_F_HOST_TSO6 = 12;
export const VIRTIO_NET_F_HOST_ECN = 13;
export const VIRTIO_NET_F_HOST_UFO = 14;
export const VIRTIO_NET_F_MRG_RXBUF = 15;
export const VIRTIO_NET_F_STATUS = 16;
/** Rejected by VDUSE in every kernel so far. */
export const VIRTIO_NET_F_CTRL_VQ = 17;
export const VIRTIO_NET_F_CTRL_RX = 18;
export const VIRTIO_NET_F_CTRL_VLAN = 19;
export const VIRTIO_NET_F_GUEST_ANNOUNCE = 21;
export const VIRTIO_NET_F_MQ = 22;
export const VIRTIO_NET_F_CTRL_MAC_ADDR = 23;
export const VIRTIO_NET_F_HOST_USO = 56;
export const VIRTIO_NET_F_HASH_REPORT = 57;
export const VIRTIO_NET_F_GUEST_HDRLEN = 59;
export const VIRTIO_NET_F_RSS = 60;
export const VIRTIO_NET_F_RSC_EXT = 61;
export const VIRTIO_NET_F_STANDBY = 62;
export const VIRTIO_NET_F_SPEED_DUPLEX = 63;

// Config `status` bits.
export const VIRTIO_NET_S_LINK_UP = 1;
export const VIRTIO_NET_S_ANNOUNCE = 2;

// virtio_net_hdr flags and gso types.
export const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
export const VIRTIO_NET_HDR_F_DATA_VALID = 2;
export const VIRTIO_NET_HDR_F_RSC_INFO = 4;
export const VIRTIO_NET_HDR_GSO_NONE = 0;
export const VIRTIO_NET_HDR_GSO_TCPV4 = 1;
export const VIRTIO_NET_HDR_GSO_UDP = 3;
export const VIRTIO_NET_HDR_GSO_TCPV6 = 4;
export const VIRTIO_NET_HDR_GSO_UDP_L4 = 5;
export const VIRTIO_NET_HDR_GSO_ECN = 0x80;

// Control virtqueue (§5.1.6.5).
export const VIRTIO_NET_OK = 0;
export const VIRTIO_NET_ERR = 1;
export const VIRTIO_NET_CTRL_RX = 0;
export const VIRTIO_NET_CTRL_MAC = 1;
export const VIRTIO_NET_CTRL_VLAN = 2;
export const VIRTIO_NET_CTRL_ANNOUNCE = 3;
export const VIRTIO_NET_CTRL_MQ = 4;
export const VIRTIO_NET_CTRL_GUEST_OFFLOADS = 5;

/** struct virtio_net_config (§5.1.4), 24 bytes. */
export const virtio_net_config = defineStruct({
  name: 'virtio_net_config',
  size: 24,
  fields: {
    mac: { offset: 0, size: 6, type: 'bytes' },
    status: { offset: 6, size: 2, type: 'u16' },
    max_virtqueue_pairs: { offset: 8, size: 2, type: 'u16' },
    mtu: { offset: 10, size: 2, type: 'u16' },
    speed: { offset: 12, size: 4, type: 'u32' },
    duplex: { offset: 16, size: 1, type: 'u8' },
    rss_max_key_size: { offset: 17, size: 1, type: 'u8' },
    rss_max_indirection_table_length: { offset: 18, size: 2, type: 'u16' },
    supported_hash_types: { offset: 20, size: 4, type: 'u32' },
  },
});
export const VIRTIO_NET_CONFIG_SIZE = 24;

/** struct virtio_net_hdr_v1: the 12-byte header in front of every packet once VERSION_1 is negotiated. */
export const virtio_net_hdr_v1 = defineStruct({
  name: 'virtio_net_hdr_v1',
  size: 12,
  fields: {
    flags: { offset: 0, size: 1, type: 'u8' },
    gso_type: { offset: 1, size: 1, type: 'u8' },
    hdr_len: { offset: 2, size: 2, type: 'u16' },
    gso_size: { offset: 4, size: 2, type: 'u16' },
    csum_start: { offset: 6, size: 2, type: 'u16' },
    csum_offset: { offset: 8, size: 2, type: 'u16' },
    num_buffers: { offset: 10, size: 2, type: 'u16' },
  },
});
export const VIRTIO_NET_HDR_V1_SIZE = 12;
/** Size of struct virtio_net_hdr_v1_hash (with HASH_REPORT). */
export const VIRTIO_NET_HDR_V1_HASH_SIZE = 20;

export type VirtioNetConfig = StructValue<typeof virtio_net_config>;
export type VirtioNetHdr = StructValue<typeof virtio_net_hdr_v1>;

/** Encodes a config space (missing fields zero), cut to `size` bytes (default the whole 24). */
export function encodeVirtioNetConfig(
  config: Partial<VirtioNetConfig>,
  size: number = VIRTIO_NET_CONFIG_SIZE,
): Uint8Array {
  if (!Number.isInteger(size) || size < 0 || size > VIRTIO_NET_CONFIG_SIZE) {
    throw new RangeError(`virtio-net config size must be in [0, ${VIRTIO_NET_CONFIG_SIZE}], got ${size}`);
  }
  return encodeStruct(virtio_net_config, config).slice(0, size);
}

/** Decodes a config space; a shorter buffer reads as zero past its end. */
export function decodeVirtioNetConfig(bytes: Uint8Array): VirtioNetConfig {
  const full = new Uint8Array(VIRTIO_NET_CONFIG_SIZE);
  full.set(bytes.subarray(0, VIRTIO_NET_CONFIG_SIZE));
  return decodeStruct(virtio_net_config, full);
}

export function encodeVirtioNetHdr(hdr: Partial<VirtioNetHdr>, target?: Uint8Array, offset = 0): Uint8Array {
  return encodeStruct(virtio_net_hdr_v1, hdr, target, offset);
}

export function decodeVirtioNetHdr(bytes: Uint8Array, offset = 0): VirtioNetHdr {
  return decodeStruct(virtio_net_hdr_v1, bytes, offset);
}
