/**
 * Guest memory as the device sees it: addresses (guest-physical or IOVA) translated to zero-copy views.
 *
 * Addresses are JavaScript numbers. A 64-bit address read from a ring is decoded as two u32 halves; an
 * address at or above 2^53 cannot be represented and is rejected by the decoder, so it never reaches here.
 */
import { VduseTsError, type VduseTsErrorOptions } from '../common/errors.js';

export const ACCESS_READ = 1;
export const ACCESS_WRITE = 2;
export const ACCESS_RW = 3;
/** ACCESS_READ: the device reads (the driver wrote); ACCESS_WRITE: the device writes. */
export type Access = 1 | 2 | 3;

/**
 * A guest address range that cannot be used as asked: not mapped, not permitted, across a region boundary, or
 * its mapping failed (`cause` then holds the system error and `errno` its name). Queues turn it into a
 * VirtqueueError of kind 'memory' or 'ring-layout'.
 */
export class GuestMemoryError extends VduseTsError {
  declare readonly code: 'ERR_GUEST_MEMORY';
  constructor(
    message: string,
    readonly addr: number,
    readonly len: number,
    options: VduseTsErrorOptions = {},
  ) {
    super('ERR_GUEST_MEMORY', message, options);
  }
}

/** What queues and devices use. Implementations: HeapMemory (./heap-memory.ts), IotlbMemory (src/vduse). */
export interface GuestMemory {
  /**
   * Bumped every time a mapping is dropped (IOTLB invalidation, reset). A view obtained under an older
   * generation may have been detached (it then reads as empty); holders of long-lived views (ring areas)
   * compare the generation once per batch and translate again when it changed.
   */
  readonly generation: number;
  /**
   * A view of [addr, addr + len) that lies inside one region and allows `access`. Throws GuestMemoryError when
   * any byte is unmapped, not permitted, or the range crosses a region boundary (use gather() for those).
   */
  view(addr: number, len: number, access: Access): Uint8Array;
  /**
   * Views covering [addr, addr + len), one per region crossed, appended to `out`. Throws GuestMemoryError when
   * any byte is unmapped or not permitted (nothing is appended then). `len` 0 appends nothing.
   */
  gather(addr: number, len: number, access: Access, out: Uint8Array[]): void;
}
