/**
 * Options of a virtio-net device, and their checked, defaulted form: decided once, at construction.
 */
import type { PacketBackend } from '../../backends/packet/backend.js';
import { VIRTQUEUE_MAX_SIZE } from '../../uapi/virtio-ring.js';
import { UsageError } from '../../common/errors.js';
import { integerIn as integerInRange } from '../options.js';

/** Where the device reports what a driver got wrong or a backend failed (e.g. a Logger). */
export interface NetLogger {
  warn(message: string): void;
}

export interface VirtioNetOptions {
  backend: PacketBackend;
  /** MAC address 'aa:bb:cc:dd:ee:ff' (or 6 bytes): unicast, not all zero. Default: made from `name`, else random. */
  mac?: string | Uint8Array;
  /** Device name; the default MAC is made from it (stable across restarts). */
  name?: string;
  /** MTU the driver is told (VIRTIO_NET_F_MTU), 68..65535 (default 1500). Larger frames from the guest are dropped. */
  mtu?: number;
  /** Largest queue size accepted: a power of two from 2 to 32768 (default 256). */
  queueSize?: number;
  /** Offer VIRTIO_NET_F_MRG_RXBUF: a received frame may span several receive buffers (default true). */
  mergeableRxBuffers?: boolean;
  /** Offer the checksum/segmentation offloads the backend supports (default true; needs a vnetHeader backend). */
  offloads?: boolean;
  /** Offer VIRTIO_F_RING_PACKED (default false). */
  packed?: boolean;
  /** Offer VIRTIO_F_RING_EVENT_IDX (default true). */
  eventIdx?: boolean;
  /** Offer VIRTIO_F_RING_INDIRECT_DESC (default true). */
  indirect?: boolean;
  /** The link at start (default up). */
  linkUp?: boolean;
  /** virtio vendor id (default 0). */
  vendorId?: number;
  /** Receives one line per driver error or backend failure (rate-limited). Default: none. */
  logger?: NetLogger;
}

export const NET_DEFAULT_QUEUE_SIZE = 256;
export const NET_DEFAULT_MTU = 1500;
/** Smallest MTU Linux accepts from VIRTIO_NET_F_MTU (ETH_MIN_MTU). */
export const NET_MIN_MTU = 68;
export const NET_MAX_MTU = 65535;

export interface ResolvedNetOptions {
  readonly backend: PacketBackend;
  readonly mac: Uint8Array;
  readonly mtu: number;
  readonly queueSize: number;
  readonly mergeableRxBuffers: boolean;
  readonly offloads: boolean;
  readonly packed: boolean;
  readonly eventIdx: boolean;
  readonly indirect: boolean;
  readonly linkUp: boolean;
  readonly vendorId: number;
  readonly logger: NetLogger | null;
}

/** Parse 'aa:bb:cc:dd:ee:ff' (or '-' separated). Throws a UsageError (ERR_NET_OPTION) for anything else, a multicast or zero MAC. */
export function parseMac(mac: string | Uint8Array): Uint8Array {
  let bytes: Uint8Array;
  if (typeof mac === 'string') {
    if (!/^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$/.test(mac)) {
      throw netOptionError(`MAC '${mac}' is not six hex pairs like 52:54:00:12:34:56`);
    }
    bytes = Uint8Array.from(mac.split(/[:-]/), (h) => parseInt(h, 16));
  } else {
    if (mac.length !== 6) throw netOptionError(`a MAC is 6 bytes, got ${mac.length}`);
    bytes = Uint8Array.from(mac);
  }
  if ((bytes[0]! & 1) !== 0) throw netOptionError(`MAC ${formatMac(bytes)} is a multicast address`);
  if (bytes.every((b) => b === 0)) throw netOptionError('MAC 00:00:00:00:00:00 is not an address');
  return bytes;
}

export function formatMac(mac: Uint8Array): string {
  return Array.from(mac, (b) => b.toString(16).padStart(2, '0')).join(':');
}

/**
 * A locally administered unicast MAC made from `name` (FNV-1a): the same name gives the same MAC, so a device
 * re-created under its name keeps its address (and the guest its DHCP lease). Without a name: random.
 */
export function macFromName(name: string | undefined): Uint8Array {
  const mac = new Uint8Array(6);
  if (name === undefined) {
    crypto.getRandomValues(mac);
  } else {
    let h = 0x811c9dc5;
    const bytes = new TextEncoder().encode(name);
    for (let round = 0; round < 2; round++) {
      for (const b of bytes) h = Math.imul(h ^ b, 0x01000193) >>> 0;
      mac[round * 3] = h >>> 24;
      mac[round * 3 + 1] = (h >>> 16) & 0xff;
      mac[round * 3 + 2] = (h >>> 8) & 0xff;
      h = Math.imul(h ^ 0x5a, 0x01000193) >>> 0;
    }
  }
  mac[0] = (mac[0]! & 0xfc) | 0x02; // locally administered, unicast
  return mac;
}

/** An integer option of the net device in [min, max] (see ../options.ts). */
function integerIn(
  name: string,
  value: number | undefined,
  fallback: number,
  min: number,
  max: number,
): number {
  return integerInRange(name, value, fallback, min, max, netOptionError);
}

/** An option of the device that cannot be used (one line, 'virtio-net: ...'; exit 2 in the CLI). */
export function netOptionError(message: string): UsageError {
  return new UsageError(`virtio-net: ${message}`, { code: 'ERR_NET_OPTION' });
}

export function resolveNetOptions(options: VirtioNetOptions): ResolvedNetOptions {
  const queueSize = options.queueSize ?? NET_DEFAULT_QUEUE_SIZE;
  if (
    !Number.isInteger(queueSize) ||
    queueSize < 2 ||
    queueSize > VIRTQUEUE_MAX_SIZE ||
    (queueSize & (queueSize - 1)) !== 0
  ) {
    throw netOptionError(
      `queueSize must be a power of two from 2 to ${VIRTQUEUE_MAX_SIZE}, got ${queueSize}`,
    );
  }
  return {
    backend: options.backend,
    mac: options.mac !== undefined ? parseMac(options.mac) : macFromName(options.name),
    mtu: integerIn('mtu', options.mtu, NET_DEFAULT_MTU, NET_MIN_MTU, NET_MAX_MTU),
    queueSize,
    mergeableRxBuffers: options.mergeableRxBuffers ?? true,
    offloads: (options.offloads ?? true) && options.backend.vnetHeader,
    packed: options.packed ?? false,
    eventIdx: options.eventIdx ?? true,
    indirect: options.indirect ?? true,
    linkUp: options.linkUp ?? true,
    vendorId: integerIn('vendorId', options.vendorId, 0, 0, 0xffffffff),
    logger: options.logger ?? null,
  };
}
