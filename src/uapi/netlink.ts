/**
 * Netlink and generic-netlink constants and header layouts (uapi linux/netlink.h, linux/genetlink.h), plus small
 * helpers to build and parse netlink attributes (nlattr TLVs). Building and sending whole messages is the
 * transport's job. All multi-byte values are host order, i.e. little-endian on the machines this project runs on.
 */
import { defineStruct, viewOf } from './layout.js';

export const NETLINK_GENERIC = 16;
/** Socket option level for netlink sockets (setsockopt). */
export const SOL_NETLINK = 270;
export const NETLINK_ADD_MEMBERSHIP = 1;
export const NETLINK_DROP_MEMBERSHIP = 2;
export const NETLINK_CAP_ACK = 10;
export const NETLINK_EXT_ACK = 11;
export const NETLINK_GET_STRICT_CHK = 12;

// nlmsg_flags
export const NLM_F_REQUEST = 0x01;
export const NLM_F_MULTI = 0x02;
export const NLM_F_ACK = 0x04;
export const NLM_F_ECHO = 0x08;
export const NLM_F_DUMP_INTR = 0x10;
export const NLM_F_DUMP_FILTERED = 0x20;
// Modifiers to GET requests
export const NLM_F_ROOT = 0x100;
export const NLM_F_MATCH = 0x200;
export const NLM_F_ATOMIC = 0x400;
export const NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH;
// Modifiers to NEW requests
export const NLM_F_REPLACE = 0x100;
export const NLM_F_EXCL = 0x200;
export const NLM_F_CREATE = 0x400;
export const NLM_F_APPEND = 0x800;
// Flags of ACK messages
export const NLM_F_CAPPED = 0x100;
export const NLM_F_ACK_TLVS = 0x200;

// Message types
export const NLMSG_NOOP = 0x1;
export const NLMSG_ERROR = 0x2;
export const NLMSG_DONE = 0x3;
export const NLMSG_OVERRUN = 0x4;
export const NLMSG_MIN_TYPE = 0x10;

export const NLMSG_ALIGNTO = 4;
export const NLMSG_HDRLEN = 16;
export const NLA_ALIGNTO = 4;
export const NLA_HDRLEN = 4;
export const NLA_F_NESTED = 1 << 15;
export const NLA_F_NET_BYTEORDER = 1 << 14;
/** `~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)`, a negative int exactly as in C; `type & NLA_TYPE_MASK` works. */
export const NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

// enum nlmsgerr_attrs (extended ACK TLVs after struct nlmsgerr)
export const NLMSGERR_ATTR_UNUSED = 0;
export const NLMSGERR_ATTR_MSG = 1;
export const NLMSGERR_ATTR_OFFS = 2;
export const NLMSGERR_ATTR_COOKIE = 3;
export const NLMSGERR_ATTR_POLICY = 4;

// Generic netlink
export const GENL_NAMSIZ = 16;
export const GENL_HDRLEN = 4;
export const GENL_MIN_ID = NLMSG_MIN_TYPE;
export const GENL_MAX_ID = 1023;
export const GENL_ID_CTRL = NLMSG_MIN_TYPE;
export const GENL_ADMIN_PERM = 0x01;
export const GENL_CMD_CAP_DO = 0x02;
export const GENL_CMD_CAP_DUMP = 0x04;
export const GENL_CMD_CAP_HASPOL = 0x08;
export const GENL_UNS_ADMIN_PERM = 0x10;

// Controller commands and attributes
export const CTRL_CMD_UNSPEC = 0;
export const CTRL_CMD_NEWFAMILY = 1;
export const CTRL_CMD_DELFAMILY = 2;
export const CTRL_CMD_GETFAMILY = 3;
export const CTRL_CMD_NEWOPS = 4;
export const CTRL_CMD_DELOPS = 5;
export const CTRL_CMD_GETOPS = 6;
export const CTRL_CMD_NEWMCAST_GRP = 7;
export const CTRL_CMD_DELMCAST_GRP = 8;
export const CTRL_CMD_GETMCAST_GRP = 9;
export const CTRL_CMD_GETPOLICY = 10;
export const CTRL_ATTR_UNSPEC = 0;
export const CTRL_ATTR_FAMILY_ID = 1; // u16
export const CTRL_ATTR_FAMILY_NAME = 2; // string
export const CTRL_ATTR_VERSION = 3; // u32
export const CTRL_ATTR_HDRSIZE = 4; // u32
export const CTRL_ATTR_MAXATTR = 5; // u32
export const CTRL_ATTR_OPS = 6; // nested
export const CTRL_ATTR_MCAST_GROUPS = 7; // nested
export const CTRL_ATTR_POLICY = 8;
export const CTRL_ATTR_OP_POLICY = 9;
export const CTRL_ATTR_OP = 10;
export const CTRL_ATTR_OP_UNSPEC = 0;
export const CTRL_ATTR_OP_ID = 1;
export const CTRL_ATTR_OP_FLAGS = 2;
export const CTRL_ATTR_MCAST_GRP_UNSPEC = 0;
export const CTRL_ATTR_MCAST_GRP_NAME = 1;
export const CTRL_ATTR_MCAST_GRP_ID = 2;

/** struct nlmsghdr, 16 bytes. */
export const nlmsghdr = defineStruct({
  name: 'nlmsghdr',
  size: 16,
  fields: {
    nlmsg_len: { offset: 0, size: 4, type: 'u32' },
    nlmsg_type: { offset: 4, size: 2, type: 'u16' },
    nlmsg_flags: { offset: 6, size: 2, type: 'u16' },
    nlmsg_seq: { offset: 8, size: 4, type: 'u32' },
    nlmsg_pid: { offset: 12, size: 4, type: 'u32' },
  },
});

/** struct genlmsghdr, 4 bytes. */
export const genlmsghdr = defineStruct({
  name: 'genlmsghdr',
  size: 4,
  fields: {
    cmd: { offset: 0, size: 1, type: 'u8' },
    version: { offset: 1, size: 1, type: 'u8' },
    reserved: { offset: 2, size: 2, type: 'zero' },
  },
});

/** struct nlattr, 4 bytes; `nla_len` counts the header but not the padding. */
export const nlattr = defineStruct({
  name: 'nlattr',
  size: 4,
  fields: {
    nla_len: { offset: 0, size: 2, type: 'u16' },
    nla_type: { offset: 2, size: 2, type: 'u16' },
  },
});

/** struct nlmsgerr: the payload of NLMSG_ERROR (error 0 = ACK; otherwise a negative errno). */
export const nlmsgerr = defineStruct({
  name: 'nlmsgerr',
  size: 20,
  fields: {
    error: { offset: 0, size: 4, type: 'i32' },
    'msg.nlmsg_len': { offset: 4, size: 4, type: 'u32' },
    'msg.nlmsg_type': { offset: 8, size: 2, type: 'u16' },
    'msg.nlmsg_flags': { offset: 10, size: 2, type: 'u16' },
    'msg.nlmsg_seq': { offset: 12, size: 4, type: 'u32' },
    'msg.nlmsg_pid': { offset: 16, size: 4, type: 'u32' },
  },
});

// ---------------------------------------------------------------------------------------------------------------
// nlattr helpers

/** `NLA_ALIGN(len)`: `len` rounded up to a multiple of 4. */
export function nlaAlign(len: number): number {
  return (len + NLA_ALIGNTO - 1) & ~(NLA_ALIGNTO - 1);
}

/** `NLMSG_ALIGN(len)`. */
export function nlmsgAlign(len: number): number {
  return (len + NLMSG_ALIGNTO - 1) & ~(NLMSG_ALIGNTO - 1);
}

/** One attribute (header + payload + zero padding to 4 bytes). `type` may carry NLA_F_NESTED. */
export function nlaPut(type: number, payload: Uint8Array): Uint8Array {
  const len = NLA_HDRLEN + payload.length;
  if (len > 0xffff) throw new RangeError(`netlink attribute ${type} too long (${payload.length} bytes)`);
  if (!Number.isInteger(type) || type < 0 || type > 0xffff)
    throw new RangeError(`bad attribute type ${type}`);
  const out = new Uint8Array(nlaAlign(len));
  const v = viewOf(out);
  v.setUint16(0, len, true);
  v.setUint16(2, type, true);
  out.set(payload, NLA_HDRLEN);
  return out;
}

function fixed(size: number, write: (v: DataView) => void): Uint8Array {
  const b = new Uint8Array(size);
  write(viewOf(b));
  return b;
}

export const nlaPutU8 = (type: number, value: number): Uint8Array =>
  nlaPut(
    type,
    fixed(1, (v) => v.setUint8(0, value)),
  );
export const nlaPutU16 = (type: number, value: number): Uint8Array =>
  nlaPut(
    type,
    fixed(2, (v) => v.setUint16(0, value, true)),
  );
export const nlaPutU32 = (type: number, value: number): Uint8Array =>
  nlaPut(
    type,
    fixed(4, (v) => v.setUint32(0, value, true)),
  );
export const nlaPutU64 = (type: number, value: bigint): Uint8Array =>
  nlaPut(
    type,
    fixed(8, (v) => v.setBigUint64(0, BigInt.asUintN(64, value), true)),
  );
/** A string attribute WITH its terminating NUL (the kernel reads most strings as C strings). */
export const nlaPutString = (type: number, value: string): Uint8Array => {
  const s = new TextEncoder().encode(value);
  if (s.includes(0)) throw new RangeError(`netlink string attribute ${type} contains a NUL`);
  const b = new Uint8Array(s.length + 1);
  b.set(s);
  return nlaPut(type, b);
};
export const nlaPutBinary = (type: number, value: Uint8Array): Uint8Array => nlaPut(type, value);
/** A nested attribute holding the given (already encoded) attributes. */
export const nlaPutNested = (type: number, attrs: readonly Uint8Array[]): Uint8Array =>
  nlaPut(type | NLA_F_NESTED, concatBytes(attrs));

/** Concatenates byte arrays (e.g. encoded attributes). */
export function concatBytes(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** One parsed attribute: `type` without the NESTED/NET_BYTEORDER flags, `data` a view (no copy). */
export interface NlAttr {
  type: number;
  nested: boolean;
  data: Uint8Array;
}

/**
 * Parses the attribute stream in `bytes[start, end)`. Throws RangeError on a malformed stream (an attribute
 * shorter than its header or running past `end`). Trailing bytes shorter than a header are ignored, like the
 * kernel's nla_for_each_attr.
 */
export function parseNlAttrList(bytes: Uint8Array, start = 0, end = bytes.length): NlAttr[] {
  const v = viewOf(bytes);
  const out: NlAttr[] = [];
  let o = start;
  while (end - o >= NLA_HDRLEN) {
    const len = v.getUint16(o, true);
    const rawType = v.getUint16(o + 2, true);
    if (len < NLA_HDRLEN || o + len > end) {
      throw new RangeError(`malformed netlink attribute at offset ${o}: nla_len ${len}`);
    }
    out.push({
      type: rawType & NLA_TYPE_MASK,
      nested: (rawType & NLA_F_NESTED) !== 0,
      data: bytes.subarray(o + NLA_HDRLEN, o + len),
    });
    o += nlaAlign(len);
  }
  return out;
}

/** Parses attributes into a map by type (the last one wins if a type repeats). */
export function parseNlAttrs(bytes: Uint8Array, start = 0, end = bytes.length): Map<number, Uint8Array> {
  const m = new Map<number, Uint8Array>();
  for (const a of parseNlAttrList(bytes, start, end)) m.set(a.type, a.data);
  return m;
}

/**
 * Parses the attributes of one generic-netlink message starting at `offset` in `bytes` (nlmsghdr, genlmsghdr,
 * attributes), bounded by its nlmsg_len.
 */
export function parseGenlMessageAttrs(bytes: Uint8Array, offset = 0): Map<number, Uint8Array> {
  if (bytes.length - offset < NLMSG_HDRLEN + GENL_HDRLEN) throw new RangeError('netlink message too short');
  const len = viewOf(bytes).getUint32(offset, true);
  if (len < NLMSG_HDRLEN + GENL_HDRLEN || offset + len > bytes.length) {
    throw new RangeError(`bad nlmsg_len ${len}`);
  }
  return parseNlAttrs(bytes, offset + NLMSG_HDRLEN + GENL_HDRLEN, offset + len);
}

function need(data: Uint8Array, n: number, what: string): DataView {
  if (data.length < n) throw new RangeError(`netlink ${what} attribute needs ${n} bytes, got ${data.length}`);
  return viewOf(data);
}

export const nlaGetU8 = (data: Uint8Array): number => need(data, 1, 'u8').getUint8(0);
export const nlaGetU16 = (data: Uint8Array): number => need(data, 2, 'u16').getUint16(0, true);
export const nlaGetU32 = (data: Uint8Array): number => need(data, 4, 'u32').getUint32(0, true);
export const nlaGetU64 = (data: Uint8Array): bigint => need(data, 8, 'u64').getBigUint64(0, true);
/** A string attribute, up to its first NUL (or the whole payload if there is none). */
export function nlaGetString(data: Uint8Array): string {
  const end = data.indexOf(0);
  return new TextDecoder().decode(end < 0 ? data : data.subarray(0, end));
}
