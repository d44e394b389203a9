/**
 * The vdpa generic-netlink family, built in: attach a VDUSE device to the vdpa bus (VDPA_CMD_DEV_NEW), detach it
 * (DEV_DEL), and list devices and management devices (DEV_GET / MGMTDEV_GET dumps).
 *
 * Three layers:
 * - the codec (encodeGenlRequest, parseNetlinkMessages, collectReplies, decoders): plain code, unit-tested;
 * - VdpaNetlink: a synchronous client over a blocking netlink socket (SysBinding.netlinkSocket);
 * - VdpaClient (./vdpa-client.ts): the same calls made from a worker thread. DEV_NEW runs the driver probe inside
 *   the kernel's sendmsg, and the probe sends SET_STATUS messages to the daemon; DEV_DEL sends a reset. The main
 *   thread must keep answering them, so it never makes these calls itself.
 */
import { closeSync } from 'node:fs';
import { constants as osConstants } from 'node:os';

import type { SysBinding } from '../../sys/binding.js';
import {
  CTRL_ATTR_FAMILY_ID,
  CTRL_ATTR_FAMILY_NAME,
  CTRL_CMD_GETFAMILY,
  GENL_HDRLEN,
  GENL_ID_CTRL,
  NETLINK_GENERIC,
  NLMSG_DONE,
  NLMSG_ERROR,
  NLMSG_HDRLEN,
  NLMSG_NOOP,
  NLMSGERR_ATTR_MSG,
  NLM_F_ACK,
  NLM_F_ACK_TLVS,
  NLM_F_CAPPED,
  NLM_F_DUMP,
  NLM_F_REQUEST,
  concatBytes,
  nlaGetString,
  nlaGetU16,
  nlaGetU32,
  nlaGetU64,
  nlaPutString,
  nlmsgAlign,
  parseNlAttrs,
} from '../../uapi/netlink.js';
import {
  VDPA_ATTR_DEV_ID,
  VDPA_ATTR_DEV_MAX_VQS,
  VDPA_ATTR_DEV_MAX_VQ_SIZE,
  VDPA_ATTR_DEV_MIN_VQ_SIZE,
  VDPA_ATTR_DEV_NAME,
  VDPA_ATTR_DEV_VENDOR_ID,
  VDPA_ATTR_MGMTDEV_BUS_NAME,
  VDPA_ATTR_MGMTDEV_DEV_NAME,
  VDPA_ATTR_MGMTDEV_SUPPORTED_CLASSES,
  VDPA_CMD_DEV_DEL,
  VDPA_CMD_DEV_GET,
  VDPA_CMD_DEV_NEW,
  VDPA_CMD_MGMTDEV_GET,
  VDPA_GENL_NAME,
  VDPA_GENL_VERSION,
} from '../../uapi/vdpa.js';
import { systemError } from '../../sys/errors.js';
import { VdpaError } from './errors.js';

// --------------------------------------------------------------------------------------------------------------
// Codec

export interface GenlRequest {
  /** nlmsg_type: the family id (GENL_ID_CTRL for the controller). */
  family: number;
  cmd: number;
  version: number;
  /** NLM_F_* beyond NLM_F_REQUEST (which is always set). */
  flags: number;
  seq: number;
  /** Encoded attributes (nlaPut*). */
  attrs: readonly Uint8Array[];
}

/** nlmsghdr + genlmsghdr + attributes. nlmsg_pid is 0 (the kernel fills in the port). */
export function encodeGenlRequest(req: GenlRequest): Uint8Array {
  const body = concatBytes(req.attrs);
  const out = new Uint8Array(NLMSG_HDRLEN + GENL_HDRLEN + body.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, out.length, true);
  v.setUint16(4, req.family, true);
  v.setUint16(6, NLM_F_REQUEST | req.flags, true);
  v.setUint32(8, req.seq >>> 0, true);
  v.setUint32(12, 0, true);
  out[NLMSG_HDRLEN] = req.cmd;
  out[NLMSG_HDRLEN + 1] = req.version;
  out.set(body, NLMSG_HDRLEN + GENL_HDRLEN);
  return out;
}

export interface NetlinkMessage {
  type: number;
  flags: number;
  seq: number;
  pid: number;
  /** The bytes after the nlmsghdr (a view). */
  payload: Uint8Array;
}

/** Splits a datagram into its netlink messages. Throws RangeError on a malformed length. */
export function parseNetlinkMessages(bytes: Uint8Array): NetlinkMessage[] {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: NetlinkMessage[] = [];
  let o = 0;
  while (bytes.length - o >= NLMSG_HDRLEN) {
    const len = v.getUint32(o, true);
    if (len < NLMSG_HDRLEN || o + len > bytes.length) {
      throw new RangeError(`malformed netlink message at offset ${o}: nlmsg_len ${len}`);
    }
    out.push({
      type: v.getUint16(o + 4, true),
      flags: v.getUint16(o + 6, true),
      seq: v.getUint32(o + 8, true),
      pid: v.getUint32(o + 12, true),
      payload: bytes.subarray(o + NLMSG_HDRLEN, o + len),
    });
    o += nlmsgAlign(len);
  }
  return out;
}

/** An NLMSG_ERROR payload: errno (positive; 0 = ACK) and the extended-ack message, if any. */
export function decodeNetlinkError(msg: NetlinkMessage): { errno: number; message?: string } {
  if (msg.payload.length < 4) throw new RangeError('NLMSG_ERROR too short');
  const v = new DataView(msg.payload.buffer, msg.payload.byteOffset, msg.payload.byteLength);
  const errno = -v.getInt32(0, true);
  if ((msg.flags & NLM_F_ACK_TLVS) === 0 || msg.payload.length < 4 + NLMSG_HDRLEN) return { errno };
  // The request's header (and, unless CAPPED, its payload) is echoed; extended-ack TLVs follow.
  const echoedLen = (msg.flags & NLM_F_CAPPED) !== 0 ? NLMSG_HDRLEN : v.getUint32(4, true);
  const tlvStart = 4 + nlmsgAlign(echoedLen);
  if (tlvStart >= msg.payload.length) return { errno };
  try {
    const attrs = parseNlAttrs(msg.payload, tlvStart);
    const text = attrs.get(NLMSGERR_ATTR_MSG);
    return text ? { errno, message: nlaGetString(text) } : { errno };
  } catch {
    return { errno };
  }
}

const ERRNO_NAMES = new Map<number, string>(
  Object.entries(osConstants.errno).map(([name, value]) => [value, name]),
);

/** errno number -> 'ENOENT' (or 'E<number>' when unknown). */
export function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `E${errno}`;
}

/**
 * The outcome of one request, fed datagram by datagram. A "do" request ends with the ACK (NLMSG_ERROR 0) or an
 * error; a dump ends with NLMSG_DONE. Messages of other sequence numbers are ignored.
 */
export class ReplyCollector {
  readonly replies: NetlinkMessage[] = [];
  done = false;
  error: { errno: number; message?: string } | null = null;

  constructor(
    readonly seq: number,
    readonly dump: boolean,
  ) {}

  /** Take one datagram; returns true when the request is finished. */
  feed(datagram: Uint8Array): boolean {
    for (const msg of parseNetlinkMessages(datagram)) {
      if (msg.seq !== this.seq || this.done) continue;
      if (msg.type === NLMSG_NOOP) continue;
      if (msg.type === NLMSG_ERROR) {
        const e = decodeNetlinkError(msg);
        if (e.errno !== 0) this.error = e;
        this.done = true;
      } else if (msg.type === NLMSG_DONE) {
        this.done = true;
      } else {
        this.replies.push(msg);
        // A "do" request with a reply and no ACK flag would end here; we always ask for the ACK.
      }
    }
    return this.done;
  }
}

/** Attributes of a generic-netlink reply (after its genlmsghdr). */
export function genlAttrs(msg: NetlinkMessage): Map<number, Uint8Array> {
  if (msg.payload.length < GENL_HDRLEN) throw new RangeError('generic netlink reply too short');
  return parseNlAttrs(msg.payload, GENL_HDRLEN);
}

/** CTRL_CMD_GETFAMILY for `name`. */
export function encodeGetFamily(name: string, seq: number): Uint8Array {
  return encodeGenlRequest({
    family: GENL_ID_CTRL,
    cmd: CTRL_CMD_GETFAMILY,
    version: 1,
    flags: NLM_F_ACK,
    seq,
    attrs: [nlaPutString(CTRL_ATTR_FAMILY_NAME, name)],
  });
}

/** The family id in a CTRL_CMD_NEWFAMILY reply. */
export function decodeFamilyId(msg: NetlinkMessage): number {
  const id = genlAttrs(msg).get(CTRL_ATTR_FAMILY_ID);
  if (!id) throw new RangeError('family reply without CTRL_ATTR_FAMILY_ID');
  return nlaGetU16(id);
}

/** VDPA_CMD_DEV_NEW: management device `mgmtdev` (no bus name: the vduse mgmtdev has none), device `name`. */
export function encodeDevNew(family: number, seq: number, name: string, mgmtdev = 'vduse'): Uint8Array {
  return encodeGenlRequest({
    family,
    cmd: VDPA_CMD_DEV_NEW,
    version: VDPA_GENL_VERSION,
    flags: NLM_F_ACK,
    seq,
    attrs: [nlaPutString(VDPA_ATTR_MGMTDEV_DEV_NAME, mgmtdev), nlaPutString(VDPA_ATTR_DEV_NAME, name)],
  });
}

export function encodeDevDel(family: number, seq: number, name: string): Uint8Array {
  return encodeGenlRequest({
    family,
    cmd: VDPA_CMD_DEV_DEL,
    version: VDPA_GENL_VERSION,
    flags: NLM_F_ACK,
    seq,
    attrs: [nlaPutString(VDPA_ATTR_DEV_NAME, name)],
  });
}

export function encodeDevGetDump(family: number, seq: number): Uint8Array {
  return encodeGenlRequest({
    family,
    cmd: VDPA_CMD_DEV_GET,
    version: VDPA_GENL_VERSION,
    flags: NLM_F_DUMP | NLM_F_ACK,
    seq,
    attrs: [],
  });
}

export function encodeMgmtdevGetDump(family: number, seq: number): Uint8Array {
  return encodeGenlRequest({
    family,
    cmd: VDPA_CMD_MGMTDEV_GET,
    version: VDPA_GENL_VERSION,
    flags: NLM_F_DUMP | NLM_F_ACK,
    seq,
    attrs: [],
  });
}

/** One vdpa device, as DEV_GET reports it. */
export interface VdpaDeviceInfo {
  name: string;
  /** The management device ("vduse" for ours). */
  mgmtdev: string;
  deviceId?: number;
  vendorId?: number;
  maxVqs?: number;
  maxVqSize?: number;
  minVqSize?: number;
}

export function decodeDevice(msg: NetlinkMessage): VdpaDeviceInfo {
  const a = genlAttrs(msg);
  const str = (t: number): string => {
    const d = a.get(t);
    return d ? nlaGetString(d) : '';
  };
  const num = (t: number, get: (d: Uint8Array) => number): number | undefined => {
    const d = a.get(t);
    return d ? get(d) : undefined;
  };
  const info: VdpaDeviceInfo = { name: str(VDPA_ATTR_DEV_NAME), mgmtdev: str(VDPA_ATTR_MGMTDEV_DEV_NAME) };
  const set = <K extends keyof VdpaDeviceInfo>(k: K, v: VdpaDeviceInfo[K] | undefined): void => {
    if (v !== undefined) info[k] = v;
  };
  set('deviceId', num(VDPA_ATTR_DEV_ID, nlaGetU32));
  set('vendorId', num(VDPA_ATTR_DEV_VENDOR_ID, nlaGetU32));
  set('maxVqs', num(VDPA_ATTR_DEV_MAX_VQS, nlaGetU32));
  set('maxVqSize', num(VDPA_ATTR_DEV_MAX_VQ_SIZE, nlaGetU16));
  set('minVqSize', num(VDPA_ATTR_DEV_MIN_VQ_SIZE, nlaGetU16));
  return info;
}

export interface VdpaMgmtdevInfo {
  name: string;
  /** Bus name for bus-based management devices (absent for vduse). */
  busName?: string;
  /** Bit n set: virtio device id n can be created. */
  supportedClasses: bigint;
}

export function decodeMgmtdev(msg: NetlinkMessage): VdpaMgmtdevInfo {
  const a = genlAttrs(msg);
  const name = a.get(VDPA_ATTR_MGMTDEV_DEV_NAME);
  const bus = a.get(VDPA_ATTR_MGMTDEV_BUS_NAME);
  const classes = a.get(VDPA_ATTR_MGMTDEV_SUPPORTED_CLASSES);
  const info: VdpaMgmtdevInfo = {
    name: name ? nlaGetString(name) : '',
    supportedClasses: classes ? nlaGetU64(classes) : 0n,
  };
  if (bus) info.busName = nlaGetString(bus);
  return info;
}

export type VdpaOperation = 'resolve' | 'add' | 'delete' | 'list' | 'list-mgmtdev';

/** A netlink error as a Node-style system error with a message naming what failed and what to do. */
export function vdpaError(
  op: VdpaOperation,
  name: string | undefined,
  errno: number,
  extack?: string,
): Error {
  const code = errnoName(errno);
  const what =
    op === 'add'
      ? `attaching "${name}" to the vdpa bus`
      : op === 'delete'
        ? `detaching "${name}" from the vdpa bus`
        : op === 'resolve'
          ? 'looking up the vdpa netlink family'
          : op === 'list'
            ? 'listing vdpa devices'
            : 'listing vdpa management devices';
  let hint = '';
  if (code === 'EPERM' || code === 'EACCES')
    hint = 'not permitted (needs CAP_NET_ADMIN in the initial network namespace)';
  else if (op === 'add' && code === 'EEXIST') hint = `"${name}" is already attached`;
  else if (op === 'add' && code === 'ENODEV') hint = 'no "vduse" management device: load the vduse module';
  else if (op === 'add' && code === 'EINVAL')
    hint = `no VDUSE device "${name}", or one of its queues was not set up`;
  else if (op === 'delete' && code === 'ENODEV') hint = `no vdpa device "${name}"`;
  else if (op === 'resolve' && code === 'ENOENT')
    hint = 'vdpa netlink family not found: load the vdpa and vduse modules';
  const detail = [hint, extack].filter((s) => s).join('; ');
  const message = `${what} failed: ${code}${detail ? ` (${detail})` : ''}`;
  let err: NodeJS.ErrnoException;
  if (ERRNO_NAMES.has(errno)) {
    err = systemError(code, 'netlink');
    err.message = message;
  } else {
    err = Object.assign(new Error(message), { code, errno: -errno, syscall: 'netlink' });
  }
  return err;
}

// --------------------------------------------------------------------------------------------------------------
// Synchronous client (blocking socket). Only ever call it from a thread that does not serve a VDUSE device.

const RECV_SIZE = 64 * 1024;

export class VdpaNetlink {
  #seq = Math.floor(Math.random() * 0x7fffffff);
  #closed = false;
  readonly #buffer = new Uint8Array(RECV_SIZE);

  private constructor(
    readonly binding: SysBinding,
    readonly fd: number,
    /** The "vdpa" family id. */
    readonly family: number,
  ) {}

  /** Open a blocking NETLINK_GENERIC socket and resolve the "vdpa" family. */
  static open(binding: SysBinding): VdpaNetlink {
    const fd = binding.netlinkSocket(NETLINK_GENERIC, false);
    const probe = new VdpaNetlink(binding, fd, 0);
    try {
      const [reply] = probe.#request(
        'resolve',
        undefined,
        (seq) => encodeGetFamily(VDPA_GENL_NAME, seq),
        false,
      );
      if (!reply) throw new VdpaError('ERR_VDPA_PROTOCOL', 'no reply to the vdpa family lookup');
      return new VdpaNetlink(binding, fd, decodeFamilyId(reply));
    } catch (err) {
      probe.close();
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new VdpaError(
          'ERR_VDPA_FAMILY',
          'vdpa netlink family not found: load the vdpa and vduse modules (modprobe vduse virtio_vdpa)',
          { cause: err },
        );
      }
      throw err;
    }
  }

  /** VDPA_CMD_DEV_NEW: attach VDUSE device `name`. Blocks until the bus driver's probe is done. */
  addDevice(name: string, mgmtdev = 'vduse'): void {
    this.#request('add', name, (seq) => encodeDevNew(this.family, seq, name, mgmtdev), false);
  }

  /** VDPA_CMD_DEV_DEL: detach `name`. Blocks until the driver is unbound (the device got its reset). */
  deleteDevice(name: string): void {
    this.#request('delete', name, (seq) => encodeDevDel(this.family, seq, name), false);
  }

  listDevices(): VdpaDeviceInfo[] {
    return this.#request('list', undefined, (seq) => encodeDevGetDump(this.family, seq), true).map(
      decodeDevice,
    );
  }

  listMgmtDevices(): VdpaMgmtdevInfo[] {
    return this.#request(
      'list-mgmtdev',
      undefined,
      (seq) => encodeMgmtdevGetDump(this.family, seq),
      true,
    ).map(decodeMgmtdev);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeFd(this.fd);
  }

  #request(
    op: VdpaOperation,
    name: string | undefined,
    encode: (seq: number) => Uint8Array,
    dump: boolean,
  ): NetlinkMessage[] {
    if (this.#closed) throw new VdpaError('ERR_VDPA', 'the vdpa netlink socket is closed');
    const seq = (this.#seq = (this.#seq + 1) >>> 0);
    const message = encode(seq);
    const sent = this.binding.send(this.fd, message);
    if (sent !== message.length)
      throw new VdpaError('ERR_VDPA_PROTOCOL', `short netlink send (${sent} bytes)`);
    const collector = new ReplyCollector(seq, dump);
    for (;;) {
      const n = this.binding.recv(this.fd, this.#buffer);
      if (n <= 0) throw new VdpaError('ERR_VDPA_PROTOCOL', 'netlink socket closed while waiting for a reply');
      if (collector.feed(this.#buffer.slice(0, n))) break; // a copy: replies outlive the buffer
    }
    if (collector.error) throw vdpaError(op, name, collector.error.errno, collector.error.message);
    return collector.replies;
  }
}

function closeFd(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // already closed
  }
}
