/**
 * The vhost-user protocol's wire format (QEMU docs/interop/vhost-user.rst): the 12-byte message header, the
 * request numbers both ways, the feature bits, the payload codecs and the split-ring inflight region layout.
 * Native byte order (little-endian on every host this runs on). Decoders check sizes and throw RangeError.
 */

export const VHOST_USER_HEADER_SIZE = 12;
/** The largest payload accepted (as rust-vmm's vhost crate; the largest real one is SET_MEM_TABLE, 264). */
export const VHOST_USER_MAX_PAYLOAD = 0x1000;
/** Regions SET_MEM_TABLE carries without CONFIGURE_MEM_SLOTS. */
export const VHOST_MEMORY_BASELINE_NREGIONS = 8;
/** The most config bytes GET_CONFIG / SET_CONFIG carry. */
export const VHOST_USER_CONFIG_SPACE_MAX = 256;

/** Header flags: the version (bits 0-1, always 1), a reply, a request for an ack. */
export const VHOST_USER_VERSION = 0x1;
export const VHOST_USER_VERSION_MASK = 0x3;
export const VHOST_USER_REPLY_MASK = 0x4;
export const VHOST_USER_NEED_REPLY_MASK = 0x8;

/** The feature bit (in GET/SET_FEATURES) that says protocol features exist. */
export const VHOST_USER_F_PROTOCOL_FEATURES = 30;

/** Front-end requests. */
export const VhostUserRequest = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  RESET_DEVICE: 34,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
} as const;

/** Back-end requests (on the channel SET_BACKEND_REQ_FD gives). */
export const VhostUserBackendRequest = {
  IOTLB_MSG: 1,
  CONFIG_CHANGE_MSG: 2,
  VRING_HOST_NOTIFIER_MSG: 3,
} as const;

/** The name of front-end request `n` for log lines ("SET_MEM_TABLE", or "request 99"). */
export function vhostUserRequestName(n: number): string {
  for (const [name, value] of Object.entries(VhostUserRequest)) if (value === n) return name;
  return `request ${n}`;
}

/** Protocol feature bits (GET/SET_PROTOCOL_FEATURES). */
export const VhostUserProtocolFeature = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  MTU: 4,
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  BACKEND_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
} as const;

/** SET_VRING_KICK/CALL/ERR payload: bits 0-7 the index, bit 8 "no fd". */
export const VHOST_USER_VRING_IDX_MASK = 0xff;
export const VHOST_USER_VRING_NOFD_MASK = 0x100;

export interface VhostUserHeader {
  request: number;
  flags: number;
  size: number;
}

export function encodeHeader(h: VhostUserHeader, out = new Uint8Array(VHOST_USER_HEADER_SIZE)): Uint8Array {
  const v = new DataView(out.buffer, out.byteOffset, VHOST_USER_HEADER_SIZE);
  v.setUint32(0, h.request, true);
  v.setUint32(4, h.flags, true);
  v.setUint32(8, h.size, true);
  return out;
}

export function decodeHeader(b: Uint8Array): VhostUserHeader {
  need(b, VHOST_USER_HEADER_SIZE, 'header');
  const v = view(b);
  return { request: v.getUint32(0, true), flags: v.getUint32(4, true), size: v.getUint32(8, true) };
}

/** A whole message: header + payload. */
export function encodeMessage(
  request: number,
  flags: number,
  payload: Uint8Array = new Uint8Array(0),
): Uint8Array {
  const out = new Uint8Array(VHOST_USER_HEADER_SIZE + payload.length);
  encodeHeader({ request, flags, size: payload.length }, out);
  out.set(payload, VHOST_USER_HEADER_SIZE);
  return out;
}

// ----- payloads -----

export function encodePayloadU64(value: bigint): Uint8Array {
  const out = new Uint8Array(8);
  view(out).setBigUint64(0, BigInt.asUintN(64, value), true);
  return out;
}

export function decodePayloadU64(b: Uint8Array): bigint {
  need(b, 8, 'u64 payload');
  return view(b).getBigUint64(0, true);
}

/** SET_VRING_NUM / SET_VRING_BASE / GET_VRING_BASE / SET_VRING_ENABLE. */
export interface VringState {
  index: number;
  num: number;
}

export function encodeVringState(s: VringState): Uint8Array {
  const out = new Uint8Array(8);
  const v = view(out);
  v.setUint32(0, s.index, true);
  v.setUint32(4, s.num, true);
  return out;
}

export function decodeVringState(b: Uint8Array): VringState {
  need(b, 8, 'vring state');
  const v = view(b);
  return { index: v.getUint32(0, true), num: v.getUint32(4, true) };
}

/** SET_VRING_ADDR: the VMM's user addresses of the ring parts (not guest-physical). */
export interface VringAddr {
  index: number;
  flags: number;
  desc: bigint;
  used: bigint;
  avail: bigint;
  log: bigint;
}
export const VHOST_VRING_ADDR_SIZE = 40;

export function encodeVringAddr(a: VringAddr): Uint8Array {
  const out = new Uint8Array(VHOST_VRING_ADDR_SIZE);
  const v = view(out);
  v.setUint32(0, a.index, true);
  v.setUint32(4, a.flags, true);
  v.setBigUint64(8, a.desc, true);
  v.setBigUint64(16, a.used, true);
  v.setBigUint64(24, a.avail, true);
  v.setBigUint64(32, a.log, true);
  return out;
}

export function decodeVringAddr(b: Uint8Array): VringAddr {
  need(b, VHOST_VRING_ADDR_SIZE, 'vring address');
  const v = view(b);
  return {
    index: v.getUint32(0, true),
    flags: v.getUint32(4, true),
    desc: v.getBigUint64(8, true),
    used: v.getBigUint64(16, true),
    avail: v.getBigUint64(24, true),
    log: v.getBigUint64(32, true),
  };
}

/** One SET_MEM_TABLE region (32 bytes). */
export interface MemoryRegionDesc {
  guestPhysAddr: bigint;
  memorySize: bigint;
  userspaceAddr: bigint;
  mmapOffset: bigint;
}
export const VHOST_MEMORY_REGION_SIZE = 32;

export function encodeMemoryTable(regions: readonly MemoryRegionDesc[]): Uint8Array {
  const out = new Uint8Array(8 + regions.length * VHOST_MEMORY_REGION_SIZE);
  const v = view(out);
  v.setUint32(0, regions.length, true);
  regions.forEach((r, i) => {
    const at = 8 + i * VHOST_MEMORY_REGION_SIZE;
    v.setBigUint64(at, r.guestPhysAddr, true);
    v.setBigUint64(at + 8, r.memorySize, true);
    v.setBigUint64(at + 16, r.userspaceAddr, true);
    v.setBigUint64(at + 24, r.mmapOffset, true);
  });
  return out;
}

/** Throws RangeError for more than `max` regions or a payload too short for the count. */
export function decodeMemoryTable(b: Uint8Array, max = VHOST_MEMORY_BASELINE_NREGIONS): MemoryRegionDesc[] {
  need(b, 8, 'memory table');
  const v = view(b);
  const n = v.getUint32(0, true);
  if (n > max) throw new RangeError(`memory table of ${n} regions (at most ${max})`);
  need(b, 8 + n * VHOST_MEMORY_REGION_SIZE, `memory table of ${n} regions`);
  const regions: MemoryRegionDesc[] = [];
  for (let i = 0; i < n; i++) {
    const at = 8 + i * VHOST_MEMORY_REGION_SIZE;
    regions.push({
      guestPhysAddr: v.getBigUint64(at, true),
      memorySize: v.getBigUint64(at + 8, true),
      userspaceAddr: v.getBigUint64(at + 16, true),
      mmapOffset: v.getBigUint64(at + 24, true),
    });
  }
  return regions;
}

/** GET_CONFIG / SET_CONFIG: offset, size, flags, then `size` config bytes. */
export interface ConfigPayload {
  offset: number;
  size: number;
  flags: number;
  data: Uint8Array;
}

export function encodeConfig(c: ConfigPayload): Uint8Array {
  const out = new Uint8Array(12 + c.size);
  const v = view(out);
  v.setUint32(0, c.offset, true);
  v.setUint32(4, c.size, true);
  v.setUint32(8, c.flags, true);
  out.set(c.data.subarray(0, c.size), 12);
  return out;
}

/** Throws RangeError for a size over VHOST_USER_CONFIG_SPACE_MAX or past the payload. */
export function decodeConfig(b: Uint8Array): ConfigPayload {
  need(b, 12, 'config');
  const v = view(b);
  const offset = v.getUint32(0, true);
  const size = v.getUint32(4, true);
  if (size > VHOST_USER_CONFIG_SPACE_MAX)
    throw new RangeError(`config size ${size} (at most ${VHOST_USER_CONFIG_SPACE_MAX})`);
  need(b, 12 + size, `config of ${size} bytes`);
  return { offset, size, flags: v.getUint32(8, true), data: b.slice(12, 12 + size) };
}

/** GET_INFLIGHT_FD / SET_INFLIGHT_FD (24 bytes with the struct's tail padding). */
export interface InflightPayload {
  mmapSize: bigint;
  mmapOffset: bigint;
  numQueues: number;
  queueSize: number;
}
export const VHOST_USER_INFLIGHT_SIZE = 24;

export function encodeInflight(p: InflightPayload): Uint8Array {
  const out = new Uint8Array(VHOST_USER_INFLIGHT_SIZE);
  const v = view(out);
  v.setBigUint64(0, p.mmapSize, true);
  v.setBigUint64(8, p.mmapOffset, true);
  v.setUint16(16, p.numQueues, true);
  v.setUint16(18, p.queueSize, true);
  return out;
}

export function decodeInflight(b: Uint8Array): InflightPayload {
  need(b, 20, 'inflight');
  const v = view(b);
  return {
    mmapSize: v.getBigUint64(0, true),
    mmapOffset: v.getBigUint64(8, true),
    numQueues: v.getUint16(16, true),
    queueSize: v.getUint16(18, true),
  };
}

// ----- the split inflight region (INFLIGHT_SHMFD) -----

/**
 * Per queue, at queue * inflightQueueStride(queueSize):
 *   @0 u64 features  @8 u16 version  @10 u16 desc_num  @12 u16 last_batch_head  @14 u16 used_idx
 *   @16 desc[desc_num], 16 bytes each: @0 u8 inflight, @1 u8 padding[5], @6 u16 next, @8 u64 counter.
 */
export const INFLIGHT_QUEUE_HEADER = 16;
export const INFLIGHT_DESC_SIZE = 16;
export const INFLIGHT_VERSION = 1;
export const INFLIGHT_ALIGN = 64;
/** Field offsets in a queue's header and in a descriptor state. */
export const INFLIGHT_Q_FEATURES = 0;
export const INFLIGHT_Q_VERSION = 8;
export const INFLIGHT_Q_DESC_NUM = 10;
export const INFLIGHT_Q_LAST_BATCH_HEAD = 12;
export const INFLIGHT_Q_USED_IDX = 14;
export const INFLIGHT_D_INFLIGHT = 0;
export const INFLIGHT_D_NEXT = 6;
export const INFLIGHT_D_COUNTER = 8;

/** Bytes one queue takes in the region (aligned to 64). */
export function inflightQueueStride(queueSize: number): number {
  const raw = INFLIGHT_QUEUE_HEADER + INFLIGHT_DESC_SIZE * queueSize;
  return Math.ceil(raw / INFLIGHT_ALIGN) * INFLIGHT_ALIGN;
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function need(b: Uint8Array, n: number, what: string): void {
  if (b.length < n) throw new RangeError(`${what}: ${b.length} bytes, needs ${n}`);
}
