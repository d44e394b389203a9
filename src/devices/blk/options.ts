/**
 * Options of a virtio-blk device, and their checked, defaulted form. Everything the config space, the feature
 * set and request validation need is decided here once, at construction.
 */
import type { BlockBackend } from '../../backends/backend.js';
import { VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_SECTOR_SIZE } from '../../uapi/virtio-blk.js';
import { VIRTQUEUE_MAX_SIZE } from '../../uapi/virtio-ring.js';
import { integerIn as integerInRange } from '../options.js';
import { blkOptionError } from './errors.js';

/** Disk geometry (legacy CHS), offered with VIRTIO_BLK_F_GEOMETRY only when given. */
export interface BlkGeometry {
  cylinders: number;
  heads: number;
  sectors: number;
}

/** Where the device reports what a driver got wrong or a backend failed (e.g. a Logger). */
export interface BlkLogger {
  warn(message: string): void;
}

export interface VirtioBlkOptions {
  backend: BlockBackend;
  /** Request queues (default 1). More than one offers VIRTIO_BLK_F_MQ. */
  numQueues?: number;
  /** Largest queue size accepted: a power of two from 2 to 32768 (default 256). */
  queueSize?: number;
  /** Logical block size in bytes: a power of two from 512 to 4096 (default 512). */
  logicalBlockSize?: number;
  /** GET_ID answer: at most 20 printable ASCII characters. Default: derived from `name`, else empty. */
  serial?: string;
  /** Device name; the default serial is made from it. */
  name?: string;
  /** Refuse writes (VIRTIO_BLK_F_RO). Forced when the backend is read-only. */
  readOnly?: boolean;
  /** Offer VIRTIO_F_RING_PACKED (default false). */
  packed?: boolean;
  /** Offer VIRTIO_F_RING_EVENT_IDX (default true). */
  eventIdx?: boolean;
  /** Offer VIRTIO_F_RING_INDIRECT_DESC (default true). */
  indirect?: boolean;
  /** Most data segments per request (VIRTIO_BLK_F_SEG_MAX; default queueSize - 2, at least 1). */
  segMax?: number;
  /** Most bytes per data segment; VIRTIO_BLK_F_SIZE_MAX is offered only when this is given. */
  sizeMax?: number;
  /** Offer VIRTIO_BLK_F_DISCARD (default: when the backend can discard). */
  discard?: boolean;
  /** Offer VIRTIO_BLK_F_WRITE_ZEROES (default: when the backend says it can). */
  writeZeroes?: boolean;
  /** Limits of one discard request, in 512-byte sectors and segments (default 4194303 and 32). */
  maxDiscardSectors?: number;
  maxDiscardSeg?: number;
  /** Limits of one write-zeroes request (default 4194303 sectors and 32 segments). */
  maxWriteZeroesSectors?: number;
  maxWriteZeroesSeg?: number;
  /** Limits of one secure-erase request (default 4194303 sectors and 32 segments). */
  maxSecureEraseSectors?: number;
  maxSecureEraseSeg?: number;
  geometry?: BlkGeometry;
  /** virtio vendor id (default 0). */
  vendorId?: number;
  /** Receives one line per driver error or backend failure (rate-limited). Default: none. */
  logger?: BlkLogger;
  /**
   * Ring polling. Unset (the default): the queue-serving engine polls where it measures faster (adaptive, see
   * src/transports/engine/poll-control.ts; VDUSE only). 0: no polling at all. N (at most 10000): the device
   * polls itself: after a queue runs empty, keep its notifications off and look at the ring again for up to N
   * µs before sleeping on the kick (the window adapts: it shrinks while polling finds nothing and grows again
   * when requests come soon after the last ones). Saves the wake-up per request at low queue depth and costs
   * CPU while polling.
   */
  pollUs?: number;
  /**
   * For tests only: the device's clock in milliseconds (poll windows, adaptive polling, request latency).
   * Default: performance.now(). A test passes a clock it moves itself, so that windows do not depend on how
   * fast a loaded machine runs the test.
   */
  now?: () => number;
}

/** The largest single discard / write-zeroes a request may carry by default (as QEMU: just under 2 GiB). */
export const DEFAULT_MAX_RANGE_SECTORS = 0x3fffff;
export const DEFAULT_MAX_RANGE_SEG = 32;
export const DEFAULT_QUEUE_SIZE = 256;
/** Longest ring polling window accepted (microseconds). */
export const MAX_POLL_US = 10000;
const U32_MAX = 0xffffffff;

export interface ResolvedBlkOptions {
  readonly backend: BlockBackend;
  readonly numQueues: number;
  readonly queueSize: number;
  readonly logicalBlockSize: number;
  /** The GET_ID answer: exactly 20 bytes, NUL-padded. */
  readonly serial: Uint8Array;
  readonly readOnly: boolean;
  readonly packed: boolean;
  readonly eventIdx: boolean;
  readonly indirect: boolean;
  readonly segMax: number;
  /** 0: SIZE_MAX not offered. */
  readonly sizeMax: number;
  readonly flush: boolean;
  readonly discard: boolean;
  readonly writeZeroes: boolean;
  readonly writeZeroesMayUnmap: boolean;
  readonly secureErase: boolean;
  readonly maxDiscardSectors: number;
  readonly maxDiscardSeg: number;
  readonly maxWriteZeroesSectors: number;
  readonly maxWriteZeroesSeg: number;
  readonly maxSecureEraseSectors: number;
  readonly maxSecureEraseSeg: number;
  readonly geometry: BlkGeometry | null;
  readonly vendorId: number;
  readonly logger: BlkLogger | null;
  /** 0: no polling. */
  readonly pollUs: number;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

/** An integer option of the blk device in [min, max] (see ../options.ts). */
function integerIn(
  name: string,
  value: number | undefined,
  fallback: number,
  min: number,
  max: number,
): number {
  return integerInRange(name, value, fallback, min, max, blkOptionError);
}

/** The GET_ID bytes for `serial`: at most 20 printable ASCII characters, NUL-padded to 20. */
export function encodeSerial(serial: string): Uint8Array {
  if (serial.length > VIRTIO_BLK_ID_BYTES || !/^[\x20-\x7e]*$/.test(serial)) {
    throw blkOptionError(
      `serial '${serial}' must be at most ${VIRTIO_BLK_ID_BYTES} printable ASCII characters`,
    );
  }
  const bytes = new Uint8Array(VIRTIO_BLK_ID_BYTES);
  for (let i = 0; i < serial.length; i++) bytes[i] = serial.charCodeAt(i);
  return bytes;
}

/** A serial made from a device name: its first 20 characters, anything outside printable ASCII as '_'. */
export function serialFromName(name: string): string {
  return name.replace(/[^\x20-\x7e]/g, '_').slice(0, VIRTIO_BLK_ID_BYTES);
}

export function resolveBlkOptions(options: VirtioBlkOptions): ResolvedBlkOptions {
  const { backend } = options;
  const caps = backend.capabilities;
  const numQueues = integerIn('numQueues', options.numQueues, 1, 1, 0xffff);
  const queueSize = options.queueSize ?? DEFAULT_QUEUE_SIZE;
  if (!isPowerOfTwo(queueSize) || queueSize < 2 || queueSize > VIRTQUEUE_MAX_SIZE) {
    throw blkOptionError(
      `queueSize must be a power of two from 2 to ${VIRTQUEUE_MAX_SIZE}, got ${queueSize}`,
    );
  }
  const logicalBlockSize = options.logicalBlockSize ?? VIRTIO_BLK_SECTOR_SIZE;
  if (!isPowerOfTwo(logicalBlockSize) || logicalBlockSize < 512 || logicalBlockSize > 4096) {
    throw blkOptionError(`logicalBlockSize must be 512, 1024, 2048 or 4096, got ${logicalBlockSize}`);
  }
  const serial = encodeSerial(
    options.serial ?? (options.name !== undefined ? serialFromName(options.name) : ''),
  );
  const secureErase = caps.secureErase && typeof backend.secureErase === 'function';
  const discard = options.discard ?? caps.discard;
  if (discard && !caps.discard) throw blkOptionError('discard asked for, but the backend cannot discard');
  const geometry = options.geometry ?? null;
  if (geometry !== null) {
    integerIn('geometry.cylinders', geometry.cylinders, 0, 0, 0xffff);
    integerIn('geometry.heads', geometry.heads, 0, 0, 0xff);
    integerIn('geometry.sectors', geometry.sectors, 0, 0, 0xff);
  }
  return {
    backend,
    numQueues,
    queueSize,
    logicalBlockSize,
    serial,
    readOnly: (options.readOnly ?? false) || backend.readOnly,
    packed: options.packed ?? false,
    eventIdx: options.eventIdx ?? true,
    indirect: options.indirect ?? true,
    segMax: integerIn('segMax', options.segMax, Math.max(1, queueSize - 2), 1, U32_MAX),
    sizeMax: integerIn('sizeMax', options.sizeMax, 0, 512, U32_MAX),
    flush: caps.flush,
    discard,
    // Write-zeroes is always possible (the backend can write zeroes); the capability says it is cheap.
    writeZeroes: options.writeZeroes ?? caps.writeZeroes,
    writeZeroesMayUnmap: caps.writeZeroesUnmap,
    secureErase,
    maxDiscardSectors: integerIn(
      'maxDiscardSectors',
      options.maxDiscardSectors,
      DEFAULT_MAX_RANGE_SECTORS,
      1,
      U32_MAX,
    ),
    maxDiscardSeg: integerIn('maxDiscardSeg', options.maxDiscardSeg, DEFAULT_MAX_RANGE_SEG, 1, U32_MAX),
    maxWriteZeroesSectors: integerIn(
      'maxWriteZeroesSectors',
      options.maxWriteZeroesSectors,
      DEFAULT_MAX_RANGE_SECTORS,
      1,
      U32_MAX,
    ),
    maxWriteZeroesSeg: integerIn(
      'maxWriteZeroesSeg',
      options.maxWriteZeroesSeg,
      DEFAULT_MAX_RANGE_SEG,
      1,
      U32_MAX,
    ),
    maxSecureEraseSectors: integerIn(
      'maxSecureEraseSectors',
      options.maxSecureEraseSectors,
      DEFAULT_MAX_RANGE_SECTORS,
      1,
      U32_MAX,
    ),
    maxSecureEraseSeg: integerIn(
      'maxSecureEraseSeg',
      options.maxSecureEraseSeg,
      DEFAULT_MAX_RANGE_SEG,
      1,
      U32_MAX,
    ),
    geometry,
    vendorId: integerIn('vendorId', options.vendorId, 0, 0, U32_MAX),
    logger: options.logger ?? null,
    pollUs: integerIn('pollUs', options.pollUs, 0, 0, MAX_POLL_US),
  };
}
