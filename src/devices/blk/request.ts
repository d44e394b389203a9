/**
 * One virtio-blk request (§5.2.6): parsing a descriptor chain into an operation, and every check the spec asks
 * of the device before storage is touched.
 *
 * A request is `struct virtio_blk_outhdr` (16 bytes, device-readable), then data (readable for OUT and the
 * discard/write-zeroes segment lists, writable for IN and GET_ID), then the status byte: the last byte of the
 * writable part. The driver may lay these out over descriptors in any way (§2.7.4.1): a header may share a
 * descriptor with data, so data views are sub-ranges (subarray, never a copy) of the chain's views.
 *
 * BlkRequest objects are reused: the device keeps a pool, so the hot path (IN, OUT, FLUSH) allocates nothing
 * but the views of the data area.
 */
import {
  VIRTIO_BLK_DISCARD_WRITE_ZEROES_SIZE,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_OUTHDR_SIZE,
  VIRTIO_BLK_SECTOR_SIZE,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_SECURE_ERASE,
  VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
  decodeVirtioBlkDiscardWriteZeroes,
  virtio_blk_outhdr,
} from '../../uapi/virtio-blk.js';
import { copyFromParts, copyToParts, sliceParts } from '../../virtio/chain.js';
import type { DescriptorChain, Virtqueue } from '../../virtio/virtqueue.js';
import { BlkError } from './errors.js';
import type { NegotiatedBlkFeatures } from './features.js';

/** parseBlkRequest's answer when the request needs the backend (else it returns a VIRTIO_BLK_S_* status). */
export const BLK_RUN = -1;
/** parseBlkRequest's answer when the chain has no writable byte for the status: it can only go back with len 0. */
export const BLK_NO_STATUS = -2;

const TYPE_OFFSET = virtio_blk_outhdr.fields.type.offset;
const SECTOR_OFFSET = virtio_blk_outhdr.fields.sector.offset;
/** A sector whose high word reaches this is beyond 2^53 bytes: out of range of any disk. */
const SECTOR_HI_LIMIT = 2 ** (53 - 9 - 32);

/** What a request is checked against; the device updates it on resize and activation. */
export interface BlkRequestLimits {
  capacityBytes: number;
  /** A power of two, 512..4096. */
  logicalBlockSize: number;
  readOnly: boolean;
  negotiated: NegotiatedBlkFeatures;
  segMax: number;
  maxDiscardSectors: number;
  maxDiscardSeg: number;
  maxWriteZeroesSectors: number;
  maxWriteZeroesSeg: number;
  maxSecureEraseSectors: number;
  maxSecureEraseSeg: number;
  /** write_zeroes_may_unmap: the UNMAP flag of a write-zeroes segment is honoured only then. */
  writeZeroesMayUnmap: boolean;
  /** GET_ID answer, 20 bytes. */
  serial: Uint8Array;
}

/** One byte range of a discard / write-zeroes / secure-erase request. */
export interface BlkRange {
  offset: number;
  length: number;
  unmap: boolean;
}

export class BlkRequest {
  chain: DescriptorChain | null = null;
  /** The queue it came from, and the device activation it belongs to (results of older ones are dropped). */
  queue: Virtqueue | null = null;
  generation = 0;
  /** performance.now() when it went to the backend (latency histogram). */
  startedAt = 0;
  /** VIRTIO_BLK_T_* from the header. */
  type = 0;
  /** Byte offset and length of an IN/OUT request. */
  offset = 0;
  length = 0;
  /** IN/OUT data: views of guest memory. */
  readonly data: Uint8Array[] = [];
  /** Discard / write-zeroes / secure-erase ranges. */
  readonly ranges: BlkRange[] = [];
  /** Used length when the request succeeds (data bytes written to the driver + the status byte). */
  usedOnSuccess = 1;
  /** What the driver got wrong (for the log); null when nothing. */
  problem: string | null = null;
  readonly header = new Uint8Array(VIRTIO_BLK_OUTHDR_SIZE);
  readonly headerView = new DataView(this.header.buffer);
  /** Bound once: passed to promise.then without a closure per request. */
  readonly onFulfilled: () => void;
  readonly onRejected: (error: unknown) => void;

  constructor(complete: (request: BlkRequest, error: unknown) => void) {
    this.onFulfilled = () => complete(this, null);
    this.onRejected = (error: unknown) =>
      complete(this, error ?? new BlkError('ERR_BLK_BACKEND', 'the backend failed without saying why'));
  }

  /** Drop every reference into guest memory (before the object goes back to the pool). */
  clear(): void {
    this.chain = null;
    this.queue = null;
    // pop() rather than `length = 0`: setting an array's length is a runtime call, dearer than the pops.
    const data = this.data;
    while (data.length !== 0) data.pop();
    if (this.ranges.length !== 0) this.ranges.length = 0;
    this.problem = null;
  }
}

function refuse(request: BlkRequest, status: number, problem: string): number {
  request.problem = problem;
  return status;
}

/**
 * Parse and check `chain` into `request`. Returns BLK_RUN when the backend must be called, BLK_NO_STATUS for
 * a chain that has nowhere to put a status, or the status to answer at once (the answer's data, e.g. GET_ID,
 * is already written; request.usedOnSuccess says how much).
 */
export function parseBlkRequest(
  request: BlkRequest,
  chain: DescriptorChain,
  limits: BlkRequestLimits,
): number {
  request.chain = chain;
  request.usedOnSuccess = 1;
  if (chain.writableBytes === 0) return refuse(request, BLK_NO_STATUS, 'no writable status byte');
  if (chain.readableBytes < VIRTIO_BLK_OUTHDR_SIZE) {
    return refuse(request, VIRTIO_BLK_S_IOERR, `header of ${chain.readableBytes} bytes (needs 16)`);
  }
  copyFromParts(chain.readable, 0, request.header);
  const header = request.headerView;
  const type = header.getUint32(TYPE_OFFSET, true);
  request.type = type;
  switch (type) {
    case VIRTIO_BLK_T_IN:
    case VIRTIO_BLK_T_OUT:
      return parseReadWrite(request, chain, limits, type === VIRTIO_BLK_T_OUT);
    case VIRTIO_BLK_T_FLUSH:
      if (!limits.negotiated.flush)
        return refuse(request, VIRTIO_BLK_S_UNSUPP, 'FLUSH without VIRTIO_BLK_F_FLUSH');
      return BLK_RUN;
    case VIRTIO_BLK_T_GET_ID: {
      // The answer is 20 bytes; a shorter buffer gets what fits (the status byte stays last).
      const room = Math.min(VIRTIO_BLK_ID_BYTES, chain.writableBytes - 1);
      copyToParts(
        chain.writable,
        0,
        room === VIRTIO_BLK_ID_BYTES ? limits.serial : limits.serial.subarray(0, room),
      );
      request.usedOnSuccess = room + 1;
      return VIRTIO_BLK_S_OK;
    }
    case VIRTIO_BLK_T_DISCARD:
      if (!limits.negotiated.discard) return refuse(request, VIRTIO_BLK_S_UNSUPP, 'DISCARD not negotiated');
      return parseRanges(request, chain, limits, limits.maxDiscardSectors, limits.maxDiscardSeg);
    case VIRTIO_BLK_T_WRITE_ZEROES:
      if (!limits.negotiated.writeZeroes) {
        return refuse(request, VIRTIO_BLK_S_UNSUPP, 'WRITE_ZEROES not negotiated');
      }
      return parseRanges(request, chain, limits, limits.maxWriteZeroesSectors, limits.maxWriteZeroesSeg);
    case VIRTIO_BLK_T_SECURE_ERASE:
      if (!limits.negotiated.secureErase) {
        return refuse(request, VIRTIO_BLK_S_UNSUPP, 'SECURE_ERASE not negotiated');
      }
      return parseRanges(request, chain, limits, limits.maxSecureEraseSectors, limits.maxSecureEraseSeg);
    default:
      // GET_LIFETIME, zoned commands, legacy SCSI / barriers and anything unknown: a plain answer, not an error.
      return VIRTIO_BLK_S_UNSUPP;
  }
}

/** The header's sector as a byte offset, or -1 when it lies beyond 2^53 bytes. */
function headerOffset(request: BlkRequest): number {
  const header = request.headerView;
  const lo = header.getUint32(SECTOR_OFFSET, true);
  const hi = header.getUint32(SECTOR_OFFSET + 4, true);
  if (hi >= SECTOR_HI_LIMIT) return -1;
  return (hi * 0x1_0000_0000 + lo) * VIRTIO_BLK_SECTOR_SIZE;
}

function parseReadWrite(
  request: BlkRequest,
  chain: DescriptorChain,
  limits: BlkRequestLimits,
  write: boolean,
): number {
  if (write && limits.readOnly) return refuse(request, VIRTIO_BLK_S_IOERR, 'write to a read-only device');
  const offset = headerOffset(request);
  // IN: data is the writable part but its last byte; OUT: the readable part after the header.
  const length = write ? chain.readableBytes - VIRTIO_BLK_OUTHDR_SIZE : chain.writableBytes - 1;
  const lbs = limits.logicalBlockSize;
  // lbs is a power of two (resolveBlkOptions checks it): the low bits tell the remainder, and `&` on an integer
  // below 2^53 is exact (ToInt32 keeps it modulo 2^32), where `%` on a double is a call into the runtime.
  const mask = lbs - 1;
  if (offset < 0 || (offset & mask) !== 0) {
    return refuse(
      request,
      VIRTIO_BLK_S_IOERR,
      `sector not aligned to the ${lbs}-byte logical block or too large`,
    );
  }
  if ((length & mask) !== 0) {
    return refuse(request, VIRTIO_BLK_S_IOERR, `data length ${length} is not a multiple of ${lbs}`);
  }
  if (offset + length > limits.capacityBytes) {
    return refuse(request, VIRTIO_BLK_S_IOERR, `bytes [${offset}, ${offset + length}) beyond the capacity`);
  }
  request.offset = offset;
  request.length = length;
  if (length === 0) return VIRTIO_BLK_S_OK;
  if (write) sliceParts(chain.readable, VIRTIO_BLK_OUTHDR_SIZE, length, request.data);
  else sliceParts(chain.writable, 0, length, request.data);
  if (request.data.length > limits.segMax) {
    return refuse(
      request,
      VIRTIO_BLK_S_IOERR,
      `${request.data.length} data segments (seg_max ${limits.segMax})`,
    );
  }
  if (!write) request.usedOnSuccess = length + 1;
  return BLK_RUN;
}

function parseRanges(
  request: BlkRequest,
  chain: DescriptorChain,
  limits: BlkRequestLimits,
  maxSectors: number,
  maxSegments: number,
): number {
  const type = request.type;
  if (limits.readOnly)
    return refuse(request, VIRTIO_BLK_S_IOERR, `request type ${type} on a read-only device`);
  const payload = chain.readableBytes - VIRTIO_BLK_OUTHDR_SIZE;
  if (payload === 0 || payload % VIRTIO_BLK_DISCARD_WRITE_ZEROES_SIZE !== 0) {
    return refuse(request, VIRTIO_BLK_S_IOERR, `segment list of ${payload} bytes (not a multiple of 16)`);
  }
  const count = payload / VIRTIO_BLK_DISCARD_WRITE_ZEROES_SIZE;
  if (count > maxSegments) {
    return refuse(request, VIRTIO_BLK_S_UNSUPP, `${count} segments (the limit is ${maxSegments})`);
  }
  const segments = new Uint8Array(payload);
  copyFromParts(chain.readable, VIRTIO_BLK_OUTHDR_SIZE, segments);
  const allowedFlags = type === VIRTIO_BLK_T_WRITE_ZEROES ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0;
  const lbs = limits.logicalBlockSize;
  for (let i = 0; i < count; i++) {
    const segment = decodeVirtioBlkDiscardWriteZeroes(segments, i * VIRTIO_BLK_DISCARD_WRITE_ZEROES_SIZE);
    if ((segment.flags & ~allowedFlags) !== 0) {
      // Unknown flags, or UNMAP on a discard / secure erase (§5.2.6.2): UNSUPP.
      return refuse(
        request,
        VIRTIO_BLK_S_UNSUPP,
        `segment flags 0x${segment.flags.toString(16)} not supported`,
      );
    }
    if (segment.num_sectors > maxSectors) {
      return refuse(
        request,
        VIRTIO_BLK_S_IOERR,
        `segment of ${segment.num_sectors} sectors (limit ${maxSectors})`,
      );
    }
    const sectors = segment.sector + BigInt(segment.num_sectors);
    const capacitySectors = BigInt(limits.capacityBytes / VIRTIO_BLK_SECTOR_SIZE);
    if (sectors > capacitySectors) {
      return refuse(request, VIRTIO_BLK_S_IOERR, `segment at sector ${segment.sector} beyond the capacity`);
    }
    const offset = Number(segment.sector) * VIRTIO_BLK_SECTOR_SIZE;
    const length = segment.num_sectors * VIRTIO_BLK_SECTOR_SIZE;
    if (offset % lbs !== 0 || length % lbs !== 0) {
      return refuse(request, VIRTIO_BLK_S_IOERR, `segment not aligned to the ${lbs}-byte logical block`);
    }
    const unmap = (segment.flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0 && limits.writeZeroesMayUnmap;
    request.ranges.push({ offset, length, unmap });
  }
  return BLK_RUN;
}
