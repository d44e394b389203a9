/**
 * The VM path without a VM: `vduse blk --driver vhost-vdpa` in a child process, and this process playing the VMM
 * with the userspace vhost-vdpa driver of src/testing/vhost-vdpa (its memfd is the "guest RAM").
 */
import {
  VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_MQ,
  VIRTIO_BLK_F_SEG_MAX,
} from '../../../src/uapi/virtio-blk.js';
import { VIRTIO_F_RING_PACKED } from '../../../src/uapi/virtio-config.js';
import { VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../../../src/uapi/virtio-ring.js';
import { BlkClient, VhostVdpaDriver, type VhostQueue } from '../../../src/testing/vhost-vdpa/index.js';

export const bit = (n: number): bigint => 1n << BigInt(n);

export interface RingOptions {
  packed?: boolean;
  eventIdx?: boolean;
  indirect?: boolean;
  queues?: number;
  queueSize?: number;
  /** Bytes of guest memory (default 8 MiB). */
  memory?: number;
}

/** The blk and ring features to ask for. */
export function wantedFeatures(o: RingOptions): bigint {
  let f =
    bit(VIRTIO_BLK_F_SEG_MAX) | bit(VIRTIO_BLK_F_BLK_SIZE) | bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_BLK_F_MQ);
  if (o.packed) f |= bit(VIRTIO_F_RING_PACKED);
  if (o.eventIdx) f |= bit(VIRTIO_RING_F_EVENT_IDX);
  if (o.indirect) f |= bit(VIRTIO_RING_F_INDIRECT_DESC);
  return f;
}

export interface VmPath {
  drv: VhostVdpaDriver;
  queues: VhostQueue[];
  blk: BlkClient;
  features: bigint;
}

/**
 * Open the vhost-vdpa node, negotiate, create and map the memory, set up `queues` queues and DRIVER_OK: what a
 * VMM does before the guest's first request.
 */
export function startVmPath(node: string, o: RingOptions): VmPath {
  const drv = VhostVdpaDriver.open(node);
  try {
    const features = drv.negotiate(wantedFeatures(o));
    if (o.packed && !drv.has(VIRTIO_F_RING_PACKED)) throw new Error('the device did not offer RING_PACKED');
    drv.allocMemory(o.memory ?? 8 << 20);
    const queues = drv.setupQueues({
      count: o.queues ?? 1,
      size: o.queueSize ?? 128,
      packed: o.packed ?? false,
      eventIdx: o.eventIdx ?? false,
      indirect: o.indirect ?? false,
    });
    drv.driverOk();
    const blk = new BlkClient(queues, { indirect: o.indirect ?? false });
    return { drv, queues, blk, features };
  } catch (e) {
    drv.close();
    throw e;
  }
}

/** Capacity in bytes from the config space (virtio_blk_config.capacity, 512-byte sectors). */
export function capacityBytes(drv: VhostVdpaDriver): number {
  const c = drv.getConfig(0, 8);
  return Number(new DataView(c.buffer, c.byteOffset, 8).getBigUint64(0, true)) * 512;
}
