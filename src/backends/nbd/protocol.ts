/**
 * NBD client protocol without I/O (the "sans-I/O" style): bytes from the server go in through `receive()`,
 * bytes for the server and events come out through the `NbdProtocolSink` given to the constructor.
 * The socket, TLS and timers belong to the caller (see client.ts).
 *
 * Covers the fixed newstyle handshake (optional STARTTLS, STRUCTURED_REPLY, GO with NBD_INFO_BLOCK_SIZE,
 * fallback to EXPORT_NAME) and the transmission phase (requests, simple replies, structured reply chunks).
 * Values are from the NBD protocol document (NetworkBlockDevice/nbd, doc/proto.md).
 */

import { messageOf } from '../../common/errors.js';
import { NBD_ERR, NbdError, NbdProtocolError } from './errors.js';

export { NbdProtocolError };

// ---------------------------------------------------------------------------------------------------------
// Magics

/** 'NBDMAGIC', first 8 bytes the server sends. */
export const NBD_INIT_MAGIC = 0x4e42444d41474943n;
/** 'IHAVEOPT', newstyle magic (server greeting) and option request magic (client). */
export const NBD_OPTS_MAGIC = 0x49484156454f5054n;
/** Oldstyle negotiation magic (cliserv_magic); not supported by this client. */
export const NBD_CLISERV_MAGIC = 0x00420281861253n;
/** Magic of every option reply in fixed newstyle negotiation. */
export const NBD_REP_MAGIC = 0x3e889045565a9n;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// Handshake flags (server, 16 bits) and client flags (32 bits).
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

// Transmission flags (16 bits).
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_RESIZE = 1 << 9;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

// Options.
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;

// Option reply types.
export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
const NBD_REP_FLAG_ERROR = 0x80000000;
export const NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR + 1;
export const NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR + 2;
export const NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR + 3;
export const NBD_REP_ERR_PLATFORM = NBD_REP_FLAG_ERROR + 4;
export const NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR + 5;
export const NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR + 6;
export const NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR + 7;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = NBD_REP_FLAG_ERROR + 8;
export const NBD_REP_ERR_TOO_BIG = NBD_REP_FLAG_ERROR + 9;

// NBD_REP_INFO information types.
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

// Commands.
export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;

// Command flags.
export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

// Structured reply flags and chunk types.
export const NBD_REPLY_FLAG_DONE = 1 << 0;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
const NBD_REPLY_TYPE_ERROR_BIT = 1 << 15;
export const NBD_REPLY_TYPE_ERROR = NBD_REPLY_TYPE_ERROR_BIT + 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = NBD_REPLY_TYPE_ERROR_BIT + 2;

// Error values.
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

const ERROR_NAMES: ReadonlyMap<number, string> = new Map([
  [NBD_EPERM, 'EPERM'],
  [NBD_EIO, 'EIO'],
  [NBD_ENOMEM, 'ENOMEM'],
  [NBD_EINVAL, 'EINVAL'],
  [NBD_ENOSPC, 'ENOSPC'],
  [NBD_EOVERFLOW, 'EOVERFLOW'],
  [NBD_ENOTSUP, 'ENOTSUP'],
  [NBD_ESHUTDOWN, 'ESHUTDOWN'],
]);

/** Name of an NBD error value ('EIO', ...); unknown values are reported as 'EINVAL' as the spec asks. */
export function nbdErrorName(value: number): string {
  return ERROR_NAMES.get(value) ?? 'EINVAL';
}

const REP_NAMES: ReadonlyMap<number, string> = new Map([
  [NBD_REP_ERR_UNSUP, 'NBD_REP_ERR_UNSUP'],
  [NBD_REP_ERR_POLICY, 'NBD_REP_ERR_POLICY'],
  [NBD_REP_ERR_INVALID, 'NBD_REP_ERR_INVALID'],
  [NBD_REP_ERR_PLATFORM, 'NBD_REP_ERR_PLATFORM'],
  [NBD_REP_ERR_TLS_REQD, 'NBD_REP_ERR_TLS_REQD'],
  [NBD_REP_ERR_UNKNOWN, 'NBD_REP_ERR_UNKNOWN'],
  [NBD_REP_ERR_SHUTDOWN, 'NBD_REP_ERR_SHUTDOWN'],
  [NBD_REP_ERR_BLOCK_SIZE_REQD, 'NBD_REP_ERR_BLOCK_SIZE_REQD'],
  [NBD_REP_ERR_TOO_BIG, 'NBD_REP_ERR_TOO_BIG'],
]);

/** Longest string the protocol allows (export names, error messages). */
export const NBD_MAX_STRING = 4096;
/** Largest option reply payload accepted (a string plus a little structure). */
const MAX_OPTION_REPLY = NBD_MAX_STRING + 64;
/** Largest structured error chunk payload accepted (error, message length, message, offset). */
const MAX_ERROR_CHUNK = 6 + 0xffff + 8;

// ---------------------------------------------------------------------------------------------------------
// Public types

/** What the server said about the export after the handshake. */
export interface NbdExportInfo {
  /** Export size in bytes. */
  size: number;
  /** Transmission flags (NBD_FLAG_*). */
  flags: number;
  /** Block size constraints (from NBD_INFO_BLOCK_SIZE, or defaults when not sent). */
  minBlockSize: number;
  preferredBlockSize: number;
  maxBlockSize: number;
  /** True if the server sent NBD_INFO_BLOCK_SIZE. */
  blockSizeAdvertised: boolean;
  /** Structured replies were negotiated. */
  structuredReplies: boolean;
  /** The handshake ended with NBD_OPT_EXPORT_NAME (old server without NBD_OPT_GO). */
  usedExportName: boolean;
  /** TLS was started with NBD_OPT_STARTTLS. */
  tls: boolean;
}

/** Error reported by the server for one request. */
export interface NbdReplyError {
  /** NBD error value (NBD_EIO, ...). */
  value: number;
  /** Name of the value ('EIO', ...). */
  name: string;
  /** Message from a structured error chunk, if any. */
  message: string;
  /** Offset from NBD_REPLY_TYPE_ERROR_OFFSET, if given. */
  offset?: number;
}

/** Receives the protocol's output. All calls are synchronous, from inside the protocol's methods. */
export interface NbdProtocolSink<R extends NbdRequest = NbdRequest> {
  /** Bytes to write to the connection, in order (views are not copied; keep them unchanged until sent). */
  send(chunks: readonly Uint8Array[]): void;
  /**
   * A transmission request: its 28-byte header, then for a write the payload views. `header` is scratch
   * memory, valid only during the call (copy it); `data` stays valid until the request is answered.
   * Optional: without it, requests go through `send()`.
   */
  sendRequest?(header: Uint8Array, data: readonly Uint8Array[] | undefined): void;
  /** The server accepted NBD_OPT_STARTTLS: start TLS on the connection, then call `tlsStarted()`. */
  startTls(): void;
  /** Handshake done; transmission phase entered. */
  ready(info: NbdExportInfo): void;
  /** A request is complete (`error` undefined: success); `request` is the object given to `request()`. */
  reply(cookie: number, error: NbdReplyError | undefined, request: R): void;
  /**
   * The connection is unusable (protocol violation, handshake refused, ...). Emitted once; after it the
   * protocol ignores input and accepts no requests. `fatal` means retrying the same server cannot help
   * (e.g. export unknown, TLS refused); false means a broken stream (reconnecting may help).
   */
  failed(error: NbdProtocolError): void;
}

export interface NbdHandshakeOptions {
  /** Export name (empty: the default export). */
  exportName: string;
  /** Require TLS: send NBD_OPT_STARTTLS first and fail if the server refuses. */
  tls?: boolean;
  /** Ask for structured replies (default true). */
  structuredReplies?: boolean;
}

/** One transmission request. */
export interface NbdRequest {
  type: number;
  flags?: number;
  offset: number;
  length: number;
  /** NBD_CMD_WRITE: payload views (total `length` bytes). */
  data?: readonly Uint8Array[];
  /** NBD_CMD_READ: destination views (total `length` bytes); the payload is written straight into them. */
  dest?: readonly Uint8Array[];
}

// ---------------------------------------------------------------------------------------------------------
// Internals

const enum Phase {
  Greeting,
  OptionReply,
  WaitTls,
  ExportNameReply,
  Transmission,
  Failed,
  Closed,
}

const enum Rx {
  /** Waiting for a reply header (simple or structured). */
  Header,
  /** Simple reply READ payload streaming into the destination views. */
  SimpleData,
  /** OFFSET_DATA: reading the 8-byte offset. */
  DataOffset,
  /** OFFSET_DATA: payload streaming into the destination views. */
  ChunkData,
  /** Fixed-size chunk payload (hole, errors) being gathered. */
  ChunkPayload,
}

/** A request slot; slots are reused (no allocation per request once the pool has grown). */
class InFlight<R extends NbdRequest> {
  /** Index in the slot table; the low 32 bits of the cookie are index + 1. */
  readonly index: number;
  /** Bumped on every reuse; the high bits of the cookie, so a stray reply to an old cookie is caught. */
  generation = 0;
  cookie = 0;
  live = false;
  /** Sending order (for `inFlightCookies()` and failing requests in order). */
  seq = 0;
  /** The caller's stamp given to `request()` (the client keeps its send time there). */
  stamp = 0;
  req: R | undefined = undefined;
  type = 0;
  offset = 0;
  length = 0;
  dest: readonly Uint8Array[] | undefined = undefined;
  /** Byte ranges relative to `offset` already described by content chunks, flat and sorted: start, end, ... */
  readonly covered: number[] = [];
  coveredBytes = 0;
  error: NbdReplyError | undefined = undefined;
  structuredSeen = false;

  constructor(index: number) {
    this.index = index;
  }
}

const TWO32 = 0x100000000;
/** Cookie generations stay below 2^21 so that every cookie is a safe integer. */
const GENERATION_MASK = 0x1fffff;
/** Upper bound on in-flight requests on one connection (a sanity limit, not a tuning knob). */
export const NBD_MAX_IN_FLIGHT = 65536;

function u64(view: DataView, at: number): number {
  const hi = view.getUint32(at);
  const lo = view.getUint32(at + 4);
  return hi * TWO32 + lo;
}

function putU64(view: DataView, at: number, value: number): void {
  view.setUint32(at, Math.floor(value / TWO32));
  view.setUint32(at + 4, value >>> 0);
}

/** Big-endian u32 at `at` (no DataView: the hot path parses headers in place). */
function rd32(b: Uint8Array, at: number): number {
  return ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
}

function rd16(b: Uint8Array, at: number): number {
  return (b[at]! << 8) | b[at + 1]!;
}

function wr32(b: Uint8Array, at: number, value: number): void {
  b[at] = value >>> 24;
  b[at + 1] = value >>> 16;
  b[at + 2] = value >>> 8;
  b[at + 3] = value;
}

const utf8 = new TextEncoder();
const utf8d = new TextDecoder('utf-8', { fatal: false });

/** Longest text from the server (an error message) kept in our messages and log lines. */
export const NBD_MAX_SERVER_TEXT = 200;

/**
 * A string from the server made safe for one log line: control characters (newlines, escape sequences) become
 * spaces, runs of blanks shrink to one, and it is cut at NBD_MAX_SERVER_TEXT characters (with "...").
 */
export function serverText(bytes: Uint8Array): string {
  const head = bytes.length > 4 * NBD_MAX_SERVER_TEXT ? bytes.subarray(0, 4 * NBD_MAX_SERVER_TEXT) : bytes;
  const text = utf8d
    .decode(head)
    // eslint-disable-next-line no-control-regex
    .replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]+/g, ' ')
    .replace(/\s+/g, ' ')
    .trim();
  const chars = [...text];
  if (chars.length <= NBD_MAX_SERVER_TEXT && head === bytes) return text;
  return `${chars.slice(0, NBD_MAX_SERVER_TEXT).join('').trimEnd()}...`;
}

/** Copies `src` into the concatenation of `views` starting at byte `pos`. Returns false if out of range. */
export function copyIntoViews(views: readonly Uint8Array[], pos: number, src: Uint8Array): boolean {
  let skip = pos;
  let done = 0;
  for (const v of views) {
    if (done === src.length) break;
    if (skip >= v.length) {
      skip -= v.length;
      continue;
    }
    const n = Math.min(v.length - skip, src.length - done);
    v.set(src.subarray(done, done + n), skip);
    done += n;
    skip = 0;
  }
  return done === src.length;
}

/** Copies `src[from, from + length)` into the concatenation of `views` starting at byte `pos`. */
function copyRangeIntoViews(
  views: readonly Uint8Array[],
  pos: number,
  src: Uint8Array,
  from: number,
  length: number,
): void {
  let skip = pos;
  let done = 0;
  for (let i = 0; i < views.length && done < length; i++) {
    const v = views[i]!;
    if (skip >= v.length) {
      skip -= v.length;
      continue;
    }
    const n = Math.min(v.length - skip, length - done);
    v.set(src.subarray(from + done, from + done + n), skip);
    done += n;
    skip = 0;
  }
}

/** Fills `length` bytes of the concatenation of `views` from `pos` with zeroes. */
export function zeroViews(views: readonly Uint8Array[], pos: number, length: number): void {
  let skip = pos;
  let left = length;
  for (const v of views) {
    if (left === 0) break;
    if (skip >= v.length) {
      skip -= v.length;
      continue;
    }
    const n = Math.min(v.length - skip, left);
    v.fill(0, skip, skip + n);
    left -= n;
    skip = 0;
  }
}

function totalLength(views: readonly Uint8Array[]): number {
  let n = 0;
  for (const v of views) n += v.length;
  return n;
}

// ---------------------------------------------------------------------------------------------------------
// The protocol

export class NbdClientProtocol<R extends NbdRequest = NbdRequest> {
  private phase = Phase.Greeting;
  /** Bytes received but not yet consumed (only partial headers/payloads are kept here). */
  private pending: Uint8Array = new Uint8Array(0);
  private readonly exportName: Uint8Array;
  private readonly wantTls: boolean;
  private readonly wantStructured: boolean;

  // Handshake state.
  private serverFlags = 0;
  private noZeroes = false;
  private currentOption = 0;
  private tlsDone = false;
  private structured = false;
  private info: Partial<NbdExportInfo> = {};

  // Transmission state.
  /** Request slots, indexed by cookie low word - 1; `free` holds the indices not in flight. */
  private readonly slots: Array<InFlight<R>> = [];
  private readonly free: number[] = [];
  private live = 0;
  private nextSeq = 0;
  /** Scratch for the header of the request being sent. */
  private readonly header = new Uint8Array(28);
  private rx = Rx.Header;
  /** Request whose payload is being received. */
  private cur: InFlight<R> | undefined;
  /** Structured chunk header fields of the chunk being received. */
  private chunkFlags = 0;
  private chunkType = 0;
  private chunkLength = 0;
  /** For streaming payloads: destination position (relative to request offset) and bytes left. */
  private dataPos = 0;
  private dataLeft = 0;

  constructor(
    private readonly sink: NbdProtocolSink<R>,
    options: NbdHandshakeOptions,
  ) {
    this.exportName = utf8.encode(options.exportName);
    if (this.exportName.length > NBD_MAX_STRING) {
      throw new NbdProtocolError(`export name longer than ${NBD_MAX_STRING} bytes`, {
        fatal: true,
        code: NBD_ERR.LIMIT,
      });
    }
    this.wantTls = options.tls ?? false;
    this.wantStructured = options.structuredReplies ?? true;
  }

  /** True once the transmission phase was entered and no failure happened. */
  get isReady(): boolean {
    return this.phase === Phase.Transmission;
  }

  get isFailed(): boolean {
    return this.phase === Phase.Failed;
  }

  /** Number of requests sent and not yet answered. */
  get inFlightCount(): number {
    return this.live;
  }

  /** Cookies of the requests sent and not yet answered, in sending order. */
  inFlightCookies(): number[] {
    return this.liveSlots().map((r) => r.cookie);
  }

  /**
   * Forgets the requests sent and not yet answered and returns them in sending order, for failing or resending
   * them elsewhere (the connection is gone; a reply to one of them would now be a protocol error).
   */
  takeInFlight(): R[] {
    const out: R[] = [];
    for (const slot of this.liveSlots()) {
      out.push(slot.req!);
      slot.live = false;
      slot.req = undefined;
      slot.dest = undefined;
      this.free.push(slot.index);
    }
    this.live = 0;
    this.cur = undefined;
    if (this.phase === Phase.Transmission) this.phase = Phase.Closed;
    return out;
  }

  /** The smallest stamp given to `request()` among the requests in flight (undefined: none in flight). */
  oldestStamp(): number | undefined {
    let min: number | undefined;
    for (const r of this.slots) if (r.live && (min === undefined || r.stamp < min)) min = r.stamp;
    return min;
  }

  private liveSlots(): Array<InFlight<R>> {
    return this.slots.filter((r) => r.live).sort((a, b) => a.seq - b.seq);
  }

  /**
   * Feed bytes received from the server: `data[0, length)` (default: all of it). The bytes are consumed
   * before this returns (payloads are copied into the requests' destination views), so the caller may
   * reuse its buffer.
   */
  receive(data: Uint8Array, length = data.length): void {
    if (this.stopped()) return;
    let buf = data;
    let end = length;
    if (this.pending.length > 0) {
      const joined = new Uint8Array(this.pending.length + length);
      joined.set(this.pending, 0);
      joined.set(length === data.length ? data : data.subarray(0, length), this.pending.length);
      buf = joined;
      end = joined.length;
      this.pending = new Uint8Array(0);
    } else if (end !== buf.length && this.phase !== Phase.Transmission) {
      // The handshake parsers look at buf.length; it is not the hot path.
      buf = buf.subarray(0, end);
    }
    let pos = 0;
    try {
      while (pos < end) {
        let used: number;
        if (this.phase === Phase.Transmission) used = this.onTransmission(buf, pos, end);
        else if (this.stopped()) break;
        else used = this.step(buf, pos);
        if (used === 0) break;
        pos += used;
      }
    } catch (err) {
      this.fail(err instanceof NbdProtocolError ? err : new NbdProtocolError(messageOf(err), { cause: err }));
      return;
    }
    if (pos < end && !this.stopped()) {
      // Keep a copy: the caller may reuse its buffer (and Buffer's slice() would not copy).
      this.pending = new Uint8Array(buf.subarray(pos, end));
    }
  }

  /** The connection ended (EOF or error) before the protocol was done with it. */
  connectionClosed(): void {
    if (this.phase === Phase.Failed || this.phase === Phase.Closed) return;
    if (this.phase === Phase.Transmission && this.live === 0 && this.pending.length === 0) {
      this.phase = Phase.Closed;
      return;
    }
    this.fail(
      new NbdProtocolError(
        this.phase === Phase.Transmission
          ? 'connection closed by the server with requests in flight'
          : 'connection closed by the server during the handshake',
      ),
    );
  }

  /** The I/O layer finished the TLS handshake after `startTls()`. */
  tlsStarted(): void {
    if (this.phase !== Phase.WaitTls)
      throw new NbdError(NBD_ERR.BAD_REQUEST, 'tlsStarted() without a pending STARTTLS');
    this.tlsDone = true;
    this.phase = Phase.OptionReply;
    this.afterTls();
  }

  /**
   * Sends a request; returns its cookie. The reply arrives through `sink.reply(cookie, error, req)`; `req`
   * (and its `dest`/`data` views) must stay unchanged until then. `stamp` is kept for `oldestStamp()`.
   * Throws if the connection is not in the transmission phase or the request is malformed.
   */
  request(req: R, stamp = 0): number {
    if (this.phase !== Phase.Transmission)
      throw new NbdError(NBD_ERR.BAD_REQUEST, 'NBD connection is not ready');
    const type = req.type;
    const offset = req.offset;
    const length = req.length;
    if (type === NBD_CMD_DISC) throw new NbdError(NBD_ERR.BAD_REQUEST, 'use disconnect() for NBD_CMD_DISC');
    if (!Number.isSafeInteger(offset) || offset < 0) throw new NbdError(NBD_ERR.BAD_REQUEST, 'bad offset');
    if (!Number.isInteger(length) || length < 0 || length >= TWO32) {
      throw new NbdError(NBD_ERR.BAD_REQUEST, 'bad length');
    }
    if (type === NBD_CMD_WRITE) {
      if (!req.data || totalLength(req.data) !== length)
        throw new NbdError(NBD_ERR.BAD_REQUEST, 'write data length mismatch');
    } else if (type === NBD_CMD_READ) {
      if (!req.dest || totalLength(req.dest) !== length)
        throw new NbdError(NBD_ERR.BAD_REQUEST, 'read buffer length mismatch');
    }
    let slot: InFlight<R>;
    const index = this.free.pop();
    if (index !== undefined) {
      slot = this.slots[index]!;
    } else {
      if (this.slots.length >= NBD_MAX_IN_FLIGHT)
        throw new NbdError(NBD_ERR.LIMIT, 'too many NBD requests in flight');
      slot = new InFlight<R>(this.slots.length);
      this.slots.push(slot);
    }
    slot.generation = (slot.generation + 1) & GENERATION_MASK;
    const cookie = slot.generation * TWO32 + slot.index + 1;
    slot.cookie = cookie;
    slot.live = true;
    slot.seq = this.nextSeq++;
    slot.stamp = stamp;
    slot.req = req;
    slot.type = type;
    slot.offset = offset;
    slot.length = length;
    slot.dest = type === NBD_CMD_READ ? req.dest : undefined;
    slot.covered.length = 0;
    slot.coveredBytes = 0;
    slot.error = undefined;
    slot.structuredSeen = false;
    this.live++;
    const h = this.header;
    wr32(h, 0, NBD_REQUEST_MAGIC);
    const flags = req.flags ?? 0;
    h[4] = flags >>> 8;
    h[5] = flags;
    h[6] = type >>> 8;
    h[7] = type;
    wr32(h, 8, slot.generation);
    wr32(h, 12, slot.index + 1);
    wr32(h, 16, Math.floor(offset / TWO32));
    wr32(h, 20, offset >>> 0);
    wr32(h, 24, length);
    const data = type === NBD_CMD_WRITE && length > 0 ? req.data : undefined;
    if (this.sink.sendRequest !== undefined) {
      this.sink.sendRequest(h, data);
    } else {
      this.sink.send(data !== undefined ? [h.slice(), ...data] : [h.slice()]);
    }
    return cookie;
  }

  /** Sends NBD_CMD_DISC; afterwards nothing more may be sent. */
  disconnect(): void {
    if (this.phase !== Phase.Transmission) return;
    this.sink.send([encodeRequestHeader(0, NBD_CMD_DISC, 0, 0, 0)]);
    this.phase = Phase.Closed;
  }

  // ---------------------------------------------------------------------------------------------------
  // Handshake

  private stopped(): boolean {
    return this.phase === Phase.Failed || this.phase === Phase.Closed;
  }

  private fail(error: NbdProtocolError): void {
    if (this.phase === Phase.Failed || this.phase === Phase.Closed) return;
    this.phase = Phase.Failed;
    this.pending = new Uint8Array(0);
    this.cur = undefined;
    this.sink.failed(error);
  }

  /** Consumes one unit from buf at pos; returns bytes used (0: need more data). */
  private step(buf: Uint8Array, pos: number): number {
    switch (this.phase) {
      case Phase.Greeting:
        return this.onGreeting(buf, pos);
      case Phase.OptionReply:
        return this.onOptionReply(buf, pos);
      case Phase.ExportNameReply:
        return this.onExportNameReply(buf, pos);
      case Phase.Transmission:
        return this.onTransmission(buf, pos, buf.length);
      case Phase.WaitTls:
        throw new NbdProtocolError('server sent data before the TLS handshake');
      default:
        return buf.length - pos;
    }
  }

  private onGreeting(buf: Uint8Array, pos: number): number {
    if (buf.length - pos < 16) return 0;
    const v = new DataView(buf.buffer, buf.byteOffset + pos);
    if (v.getBigUint64(0) !== NBD_INIT_MAGIC)
      throw new NbdProtocolError('not an NBD server (bad magic)', {
        fatal: true,
        code: NBD_ERR.NOT_SUPPORTED_SERVER,
      });
    const second = v.getBigUint64(8);
    if (second === NBD_CLISERV_MAGIC) {
      throw new NbdProtocolError('server uses oldstyle negotiation, which is not supported', {
        fatal: true,
        code: NBD_ERR.NOT_SUPPORTED_SERVER,
      });
    }
    if (second !== NBD_OPTS_MAGIC)
      throw new NbdProtocolError('not an NBD server (bad IHAVEOPT magic)', {
        fatal: true,
        code: NBD_ERR.NOT_SUPPORTED_SERVER,
      });
    if (buf.length - pos < 18) return 0;
    this.serverFlags = v.getUint16(16);
    const fixed = (this.serverFlags & NBD_FLAG_FIXED_NEWSTYLE) !== 0;
    this.noZeroes = (this.serverFlags & NBD_FLAG_NO_ZEROES) !== 0;
    let clientFlags = 0;
    if (fixed) clientFlags |= NBD_FLAG_C_FIXED_NEWSTYLE;
    if (this.noZeroes) clientFlags |= NBD_FLAG_C_NO_ZEROES;
    const out = new Uint8Array(4);
    new DataView(out.buffer).setUint32(0, clientFlags);
    this.sink.send([out]);
    if (!fixed) {
      if (this.wantTls)
        throw new NbdProtocolError('server does not support fixed newstyle, so no TLS', {
          fatal: true,
          code: NBD_ERR.TLS,
        });
      this.sendExportName();
    } else if (this.wantTls) {
      this.sendOption(NBD_OPT_STARTTLS, new Uint8Array(0));
    } else {
      this.afterTls();
    }
    return 18;
  }

  private afterTls(): void {
    if (this.wantStructured) this.sendOption(NBD_OPT_STRUCTURED_REPLY, new Uint8Array(0));
    else this.sendGo();
  }

  private sendOption(option: number, data: Uint8Array): void {
    const header = new Uint8Array(16);
    const v = new DataView(header.buffer);
    v.setBigUint64(0, NBD_OPTS_MAGIC);
    v.setUint32(8, option);
    v.setUint32(12, data.length);
    this.currentOption = option;
    this.phase = option === NBD_OPT_EXPORT_NAME ? Phase.ExportNameReply : Phase.OptionReply;
    this.sink.send(data.length > 0 ? [header, data] : [header]);
  }

  private sendGo(): void {
    const name = this.exportName;
    const data = new Uint8Array(4 + name.length + 2 + 2);
    const v = new DataView(data.buffer);
    v.setUint32(0, name.length);
    data.set(name, 4);
    v.setUint16(4 + name.length, 1);
    v.setUint16(6 + name.length, NBD_INFO_BLOCK_SIZE);
    this.info = {};
    this.sendOption(NBD_OPT_GO, data);
  }

  private sendExportName(): void {
    this.info = {};
    this.sendOption(NBD_OPT_EXPORT_NAME, this.exportName);
  }

  private onOptionReply(buf: Uint8Array, pos: number): number {
    if (buf.length - pos < 20) return 0;
    const v = new DataView(buf.buffer, buf.byteOffset + pos);
    if (v.getBigUint64(0) !== NBD_REP_MAGIC) throw new NbdProtocolError('bad option reply magic');
    const option = v.getUint32(8);
    const type = v.getUint32(12);
    const length = v.getUint32(16);
    if (option !== this.currentOption) {
      throw new NbdProtocolError(`option reply for option ${option}, expected ${this.currentOption}`);
    }
    if (length > MAX_OPTION_REPLY)
      throw new NbdProtocolError(`option reply too long (${length} bytes)`, { code: NBD_ERR.LIMIT });
    if (buf.length - pos < 20 + length) return 0;
    const payload = buf.subarray(pos + 20, pos + 20 + length);
    this.handleOptionReply(type, payload);
    return 20 + length;
  }

  private handleOptionReply(type: number, payload: Uint8Array): void {
    const isError = type >= NBD_REP_FLAG_ERROR;
    const detail = (): string => {
      const name = REP_NAMES.get(type) ?? `error 0x${type.toString(16)}`;
      const text = payload.length > 0 ? `: ${serverText(payload)}` : '';
      return `${name}${text}`;
    };
    switch (this.currentOption) {
      case NBD_OPT_STARTTLS:
        if (type === NBD_REP_ACK) {
          if (payload.length !== 0) throw new NbdProtocolError('STARTTLS acknowledgement with data');
          this.phase = Phase.WaitTls;
          this.sink.startTls();
          return;
        }
        if (isError)
          throw new NbdProtocolError(`server refused TLS (${detail()})`, { fatal: true, code: NBD_ERR.TLS });
        throw new NbdProtocolError(`unexpected reply ${type} to NBD_OPT_STARTTLS`);
      case NBD_OPT_STRUCTURED_REPLY:
        if (type === NBD_REP_ACK) {
          if (payload.length !== 0) throw new NbdProtocolError('STRUCTURED_REPLY acknowledgement with data');
          this.structured = true;
        } else if (type === NBD_REP_ERR_TLS_REQD) {
          throw new NbdProtocolError('server requires TLS (use an nbds:// URI)', {
            fatal: true,
            code: NBD_ERR.TLS,
          });
        } else if (type === NBD_REP_ERR_SHUTDOWN) {
          throw new NbdProtocolError('server is shutting down', { code: NBD_ERR.SHUTDOWN });
        } else if (isError) {
          this.structured = false;
        } else {
          throw new NbdProtocolError(`unexpected reply ${type} to NBD_OPT_STRUCTURED_REPLY`);
        }
        this.sendGo();
        return;
      case NBD_OPT_GO:
        this.handleGoReply(type, payload, isError, detail);
        return;
      default:
        throw new NbdProtocolError(`reply to an option that was not sent`);
    }
  }

  private handleGoReply(type: number, payload: Uint8Array, isError: boolean, detail: () => string): void {
    if (type === NBD_REP_INFO) {
      if (payload.length < 2) throw new NbdProtocolError('NBD_REP_INFO too short');
      const v = new DataView(payload.buffer, payload.byteOffset, payload.length);
      const infoType = v.getUint16(0);
      if (infoType === NBD_INFO_EXPORT) {
        if (payload.length !== 12) throw new NbdProtocolError('NBD_INFO_EXPORT with wrong length');
        this.info.size = u64(v, 2);
        this.info.flags = v.getUint16(10);
      } else if (infoType === NBD_INFO_BLOCK_SIZE) {
        if (payload.length !== 14) throw new NbdProtocolError('NBD_INFO_BLOCK_SIZE with wrong length');
        this.info.minBlockSize = v.getUint32(2);
        this.info.preferredBlockSize = v.getUint32(6);
        this.info.maxBlockSize = v.getUint32(10);
        this.info.blockSizeAdvertised = true;
      }
      // Other information types are ignored, as the spec requires.
      return;
    }
    if (type === NBD_REP_ACK) {
      if (this.info.size === undefined || this.info.flags === undefined) {
        throw new NbdProtocolError('server accepted NBD_OPT_GO without sending NBD_INFO_EXPORT');
      }
      this.enterTransmission(false);
      return;
    }
    if (type === NBD_REP_ERR_UNSUP) {
      this.sendExportName();
      return;
    }
    if (type === NBD_REP_ERR_TLS_REQD) {
      throw new NbdProtocolError('server requires TLS (use an nbds:// URI)', {
        fatal: true,
        code: NBD_ERR.TLS,
      });
    }
    if (type === NBD_REP_ERR_UNKNOWN) {
      throw new NbdProtocolError(`export not found on the server (${detail()})`, {
        fatal: true,
        code: NBD_ERR.EXPORT,
      });
    }
    if (type === NBD_REP_ERR_SHUTDOWN)
      throw new NbdProtocolError('server is shutting down', { code: NBD_ERR.SHUTDOWN });
    if (isError)
      throw new NbdProtocolError(`server refused the export (${detail()})`, {
        fatal: true,
        code: NBD_ERR.EXPORT,
      });
    throw new NbdProtocolError(`unexpected reply ${type} to NBD_OPT_GO`);
  }

  private onExportNameReply(buf: Uint8Array, pos: number): number {
    const need = this.noZeroes ? 10 : 134;
    if (buf.length - pos < need) return 0;
    const v = new DataView(buf.buffer, buf.byteOffset + pos);
    this.info.size = u64(v, 0);
    this.info.flags = v.getUint16(8);
    this.enterTransmission(true);
    return need;
  }

  private enterTransmission(usedExportName: boolean): void {
    const flags = this.info.flags ?? 0;
    if ((flags & NBD_FLAG_HAS_FLAGS) === 0) {
      throw new NbdProtocolError('transmission flags without NBD_FLAG_HAS_FLAGS');
    }
    const size = this.info.size ?? 0;
    if (!Number.isSafeInteger(size))
      throw new NbdProtocolError('export size too large', { fatal: true, code: NBD_ERR.LIMIT });
    let min = this.info.minBlockSize ?? 1;
    let pref = this.info.preferredBlockSize ?? 4096;
    let max = this.info.maxBlockSize ?? 0xffffffff;
    if (this.info.blockSizeAdvertised) {
      const pow2 = (x: number): boolean => x > 0 && (x & (x - 1)) === 0;
      if (!pow2(min) || min > 65536) throw new NbdProtocolError(`bad minimum block size ${min}`);
      if (!pow2(pref) || pref < min) pref = Math.max(min, 4096);
      if (max !== 0xffffffff && (max < min || max % min !== 0)) {
        throw new NbdProtocolError(`bad maximum block size ${max}`);
      }
    } else {
      min = 1;
      pref = 4096;
      max = 0xffffffff;
    }
    const info: NbdExportInfo = {
      size,
      flags,
      minBlockSize: min,
      preferredBlockSize: pref,
      maxBlockSize: max,
      blockSizeAdvertised: this.info.blockSizeAdvertised ?? false,
      structuredReplies: this.structured,
      usedExportName,
      tls: this.tlsDone,
    };
    this.phase = Phase.Transmission;
    this.rx = Rx.Header;
    this.sink.ready(info);
  }

  // ---------------------------------------------------------------------------------------------------
  // Transmission

  private onTransmission(buf: Uint8Array, pos: number, end: number): number {
    switch (this.rx) {
      case Rx.Header:
        return this.onReplyHeader(buf, pos, end);
      case Rx.SimpleData:
      case Rx.ChunkData:
        return this.onStreamData(buf, pos, end);
      case Rx.DataOffset:
        return this.onDataOffset(buf, pos, end);
      case Rx.ChunkPayload:
        return this.onChunkPayload(buf, pos, end);
    }
  }

  private lookup(buf: Uint8Array, at: number): InFlight<R> {
    const hi = rd32(buf, at);
    const lo = rd32(buf, at + 4);
    const slot = lo >= 1 && lo <= this.slots.length ? this.slots[lo - 1] : undefined;
    if (slot === undefined || !slot.live || slot.generation !== hi) {
      throw new NbdProtocolError(
        `reply with unknown cookie 0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')}`,
      );
    }
    return slot;
  }

  private onReplyHeader(buf: Uint8Array, pos: number, end: number): number {
    if (end - pos < 4) return 0;
    const magic = rd32(buf, pos);
    if (magic === NBD_STRUCTURED_REPLY_MAGIC) {
      if (!this.structured) throw new NbdProtocolError('structured reply without negotiation');
      if (end - pos < 20) return 0;
      const flags = rd16(buf, pos + 4);
      const type = rd16(buf, pos + 6);
      const req = this.lookup(buf, pos + 8);
      const length = rd32(buf, pos + 16);
      req.structuredSeen = true;
      this.cur = req;
      this.chunkFlags = flags;
      this.chunkType = type;
      this.chunkLength = length;
      this.startChunk(req, type, flags, length);
      return 20;
    }
    if (magic === NBD_SIMPLE_REPLY_MAGIC) {
      if (end - pos < 16) return 0;
      const error = rd32(buf, pos + 4);
      const req = this.lookup(buf, pos + 8);
      if (req.structuredSeen) throw new NbdProtocolError('simple reply to a request with structured chunks');
      if (error !== 0) {
        this.complete(req, { value: error, name: nbdErrorName(error), message: '' });
        return 16;
      }
      if (req.type === NBD_CMD_READ) {
        if (this.structured)
          throw new NbdProtocolError('simple reply with data to a read (structured replies)');
        if (req.length === 0) {
          this.complete(req, undefined);
          return 16;
        }
        this.cur = req;
        this.rx = Rx.SimpleData;
        this.dataPos = 0;
        this.dataLeft = req.length;
        return 16;
      }
      this.complete(req, undefined);
      return 16;
    }
    throw new NbdProtocolError(`bad reply magic 0x${magic.toString(16).padStart(8, '0')}`);
  }

  private startChunk(req: InFlight<R>, type: number, flags: number, length: number): void {
    const done = (flags & NBD_REPLY_FLAG_DONE) !== 0;
    switch (type) {
      case NBD_REPLY_TYPE_NONE:
        if (length !== 0) throw new NbdProtocolError('NBD_REPLY_TYPE_NONE with a payload');
        if (!done) throw new NbdProtocolError('NBD_REPLY_TYPE_NONE without NBD_REPLY_FLAG_DONE');
        this.finishChunk(req, true);
        return;
      case NBD_REPLY_TYPE_OFFSET_DATA:
        if (req.type !== NBD_CMD_READ)
          throw new NbdProtocolError('data chunk in reply to a non-read request');
        if (length < 9) throw new NbdProtocolError(`OFFSET_DATA chunk too short (${length})`);
        if (length - 8 > req.length) throw new NbdProtocolError('OFFSET_DATA chunk longer than the request');
        this.rx = Rx.DataOffset;
        return;
      case NBD_REPLY_TYPE_OFFSET_HOLE:
        if (req.type !== NBD_CMD_READ)
          throw new NbdProtocolError('hole chunk in reply to a non-read request');
        if (length !== 12) throw new NbdProtocolError(`OFFSET_HOLE chunk with length ${length}`);
        this.rx = Rx.ChunkPayload;
        return;
      default:
        if ((type & NBD_REPLY_TYPE_ERROR_BIT) !== 0) {
          const min = type === NBD_REPLY_TYPE_ERROR_OFFSET ? 14 : 6;
          if (length < min) throw new NbdProtocolError(`error chunk too short (${length})`);
          if (length > MAX_ERROR_CHUNK)
            throw new NbdProtocolError(`error chunk too long (${length})`, { code: NBD_ERR.LIMIT });
          this.rx = Rx.ChunkPayload;
          return;
        }
        throw new NbdProtocolError(`unknown structured reply chunk type ${type}`);
    }
  }

  private onDataOffset(buf: Uint8Array, pos: number, end: number): number {
    if (end - pos < 8) return 0;
    const req = this.cur!;
    const offset = rd32(buf, pos) * TWO32 + rd32(buf, pos + 4);
    const dataLength = this.chunkLength - 8;
    const rel = offset - req.offset;
    this.claimRange(req, rel, dataLength);
    this.dataPos = rel;
    this.dataLeft = dataLength;
    this.rx = Rx.ChunkData;
    return 8;
  }

  /** Checks a content chunk range [rel, rel+len) against the request and earlier chunks, and records it. */
  private claimRange(req: InFlight<R>, rel: number, len: number): void {
    if (rel < 0 || len <= 0 || rel + len > req.length) {
      throw new NbdProtocolError('chunk outside the range of the request');
    }
    // `covered` is kept sorted by start (the ranges are disjoint): a binary search finds the neighbours, so a
    // reply of many chunks in any order costs O(n log n) comparisons, not O(n^2).
    const covered = req.covered;
    const n = covered.length >> 1;
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (covered[2 * mid]! <= rel) lo = mid + 1;
      else hi = mid;
    }
    // lo: the first range starting after rel. The one before must end by rel, that one start at rel + len or later.
    if ((lo > 0 && covered[2 * lo - 1]! > rel) || (lo < n && covered[2 * lo]! < rel + len)) {
      throw new NbdProtocolError('chunk overlaps an earlier chunk');
    }
    if (n >= 4096) throw new NbdProtocolError('too many chunks in one reply', { code: NBD_ERR.LIMIT });
    if (lo === n) covered.push(rel, rel + len);
    else covered.splice(2 * lo, 0, rel, rel + len);
    req.coveredBytes += len;
  }

  private onStreamData(buf: Uint8Array, pos: number, end: number): number {
    const req = this.cur!;
    const n = Math.min(this.dataLeft, end - pos);
    // Destination views were checked to add up to req.length; ranges were checked against it too.
    copyRangeIntoViews(req.dest!, this.dataPos, buf, pos, n);
    this.dataPos += n;
    this.dataLeft -= n;
    if (this.dataLeft === 0) {
      if (this.rx === Rx.SimpleData) {
        this.rx = Rx.Header;
        this.cur = undefined;
        this.complete(req, undefined);
      } else {
        this.finishChunk(req, (this.chunkFlags & NBD_REPLY_FLAG_DONE) !== 0);
      }
    }
    return n;
  }

  private onChunkPayload(buf: Uint8Array, pos: number, end: number): number {
    const length = this.chunkLength;
    if (end - pos < length) return 0;
    const req = this.cur!;
    const type = this.chunkType;
    if (type === NBD_REPLY_TYPE_OFFSET_HOLE) {
      const offset = rd32(buf, pos) * TWO32 + rd32(buf, pos + 4);
      const size = rd32(buf, pos + 8);
      if (size === 0) throw new NbdProtocolError('OFFSET_HOLE chunk with zero size');
      const rel = offset - req.offset;
      this.claimRange(req, rel, size);
      zeroViews(req.dest!, rel, size);
    } else {
      const value = rd32(buf, pos);
      const msgLen = rd16(buf, pos + 4);
      const fixedTail = type === NBD_REPLY_TYPE_ERROR_OFFSET ? 8 : 0;
      if (msgLen > length - 6 - fixedTail) {
        throw new NbdProtocolError('error chunk message length does not fit the chunk');
      }
      if (value === 0) throw new NbdProtocolError('error chunk with error value 0');
      const message = serverText(buf.subarray(pos + 6, pos + 6 + msgLen));
      const error: NbdReplyError = { value, name: nbdErrorName(value), message };
      if (type === NBD_REPLY_TYPE_ERROR_OFFSET) {
        const at = pos + 6 + msgLen;
        const offset = rd32(buf, at) * TWO32 + rd32(buf, at + 4);
        if (offset < req.offset || offset >= req.offset + Math.max(req.length, 1)) {
          throw new NbdProtocolError('error offset outside the range of the request');
        }
        error.offset = offset;
      }
      if (!req.error) req.error = error;
    }
    this.finishChunk(req, (this.chunkFlags & NBD_REPLY_FLAG_DONE) !== 0);
    return length;
  }

  private finishChunk(req: InFlight<R>, done: boolean): void {
    this.rx = Rx.Header;
    this.cur = undefined;
    if (!done) return;
    if (!req.error && req.type === NBD_CMD_READ && req.coveredBytes !== req.length) {
      throw new NbdProtocolError('read reply finished without data for the whole range');
    }
    this.complete(req, req.error);
  }

  private complete(slot: InFlight<R>, error: NbdReplyError | undefined): void {
    const req = slot.req!;
    const cookie = slot.cookie;
    slot.live = false;
    slot.req = undefined;
    slot.dest = undefined;
    slot.error = undefined;
    this.live--;
    this.free.push(slot.index);
    this.sink.reply(cookie, error, req);
  }
}

/** Encodes a 28-byte request header. */
export function encodeRequestHeader(
  flags: number,
  type: number,
  cookie: number,
  offset: number,
  length: number,
): Uint8Array {
  const out = new Uint8Array(28);
  const v = new DataView(out.buffer);
  v.setUint32(0, NBD_REQUEST_MAGIC);
  v.setUint16(4, flags);
  v.setUint16(6, type);
  putU64(v, 8, cookie);
  putU64(v, 16, offset);
  v.setUint32(24, length);
  return out;
}
