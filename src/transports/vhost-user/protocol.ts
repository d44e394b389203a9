/**
 * The vhost-user back-end protocol as plain code (sans-I/O): bytes and fds in (MessageReader), decoded messages
 * turned into replies and effects (VhostUserProtocol.handle), no socket and no data path here. The runtime
 * (./backend.ts) reads the socket, feeds it, carries the effects out (start or stop the queues, map memory)
 * and sends the replies, in order.
 *
 * Every message from the VMM is hostile input: a bad size, an unknown request, too many fds, an index past the
 * queues or a ring larger than the device's maximum, a table of overlapping regions: handle() returns
 * `disconnect` with a one-line reason (the runtime logs it and drops the connection; nothing was applied).
 *
 * Fds: every fd a message carries is either kept (kick/call/err eventfds, the backend channel: the protocol owns
 * them until replaced, reset or closeAll) or closed before handle() returns (region and inflight fds, once
 * mapped by the context; extra fds).
 */
import {
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_USER_HEADER_SIZE,
  VHOST_USER_MAX_PAYLOAD,
  VHOST_USER_NEED_REPLY_MASK,
  VHOST_USER_REPLY_MASK,
  VHOST_USER_VERSION,
  VHOST_USER_VERSION_MASK,
  VHOST_USER_VRING_IDX_MASK,
  VHOST_USER_VRING_NOFD_MASK,
  VHOST_MEMORY_BASELINE_NREGIONS,
  VhostUserProtocolFeature as PF,
  VhostUserRequest as R,
  decodeConfig,
  decodeHeader,
  decodeInflight,
  decodeMemoryTable,
  decodePayloadU64,
  decodeVringAddr,
  decodeVringState,
  encodeConfig,
  encodeHeader,
  encodeInflight,
  encodePayloadU64,
  encodeVringState,
  vhostUserRequestName,
  type InflightPayload,
  type VhostUserHeader,
  type VringAddr,
} from '../../uapi/vhost-user.js';
import type { RegionSpec } from '../../memory/region-memory.js';

/** The most fds one message may carry (SET_MEM_TABLE: one per region). */
export const MAX_MESSAGE_FDS = VHOST_MEMORY_BASELINE_NREGIONS;

/** Protocol features this back-end offers. */
export const OFFERED_PROTOCOL_FEATURES =
  (1n << BigInt(PF.MQ)) |
  (1n << BigInt(PF.REPLY_ACK)) |
  (1n << BigInt(PF.BACKEND_REQ)) |
  (1n << BigInt(PF.CONFIG)) |
  (1n << BigInt(PF.INFLIGHT_SHMFD));

const PROTOCOL_FEATURES_BIT = 1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES);

export interface VhostUserMessage {
  header: VhostUserHeader;
  payload: Uint8Array;
  fds: number[];
}

/**
 * Splits a byte stream with fds into messages. feed() takes what one recvmsg returned; fds belong to the message
 * whose bytes they came with. A stream socket returns the fds of a sendmsg together with the last bytes of the
 * read that reaches them, so a read must not cross a message boundary: read `wanted` bytes at a time (the rest
 * of the header, then the rest of the payload) and the fds of a read always belong to the message in progress. Returns the complete messages, or throws RangeError (a bad header or size, too
 * many fds: the connection cannot go on; the fds held so far are handed to `closeFd`).
 */
export class MessageReader {
  #buf = new Uint8Array(0);
  #fds: number[] = [];

  constructor(readonly closeFd: (fd: number) => void) {}

  /** How many bytes the next read may take (up to the end of the message in progress). */
  get wanted(): number {
    if (this.#buf.length < VHOST_USER_HEADER_SIZE) return VHOST_USER_HEADER_SIZE - this.#buf.length;
    return VHOST_USER_HEADER_SIZE + decodeHeader(this.#buf).size - this.#buf.length;
  }

  feed(bytes: Uint8Array, fds: readonly number[]): VhostUserMessage[] {
    this.#fds.push(...fds);
    const joined = new Uint8Array(this.#buf.length + bytes.length);
    joined.set(this.#buf);
    joined.set(bytes, this.#buf.length);
    this.#buf = joined;
    const out: VhostUserMessage[] = [];
    try {
      for (;;) {
        if (this.#fds.length > MAX_MESSAGE_FDS)
          throw new RangeError(`a message carries ${this.#fds.length} fds (at most ${MAX_MESSAGE_FDS})`);
        if (this.#buf.length < VHOST_USER_HEADER_SIZE) break;
        const header = decodeHeader(this.#buf);
        if ((header.flags & VHOST_USER_VERSION_MASK) !== VHOST_USER_VERSION)
          throw new RangeError(`message version ${header.flags & VHOST_USER_VERSION_MASK} (expected 1)`);
        if (header.size > VHOST_USER_MAX_PAYLOAD)
          throw new RangeError(
            `${vhostUserRequestName(header.request)}: payload of ${header.size} bytes (at most ${VHOST_USER_MAX_PAYLOAD})`,
          );
        const end = VHOST_USER_HEADER_SIZE + header.size;
        if (this.#buf.length < end) break;
        out.push({ header, payload: this.#buf.slice(VHOST_USER_HEADER_SIZE, end), fds: this.#fds });
        this.#fds = [];
        this.#buf = this.#buf.slice(end);
      }
    } catch (err) {
      for (const m of out) m.fds.forEach((fd) => this.closeFd(fd));
      this.discard();
      throw err;
    }
    return out;
  }

  /** Close the fds of a partial message (the connection ends). */
  discard(): void {
    for (const fd of this.#fds) this.closeFd(fd);
    this.#fds = [];
    this.#buf = new Uint8Array(0);
  }
}

/** The VMM's view of one ring, as the messages set it. */
export interface RingState {
  num: number;
  addr: VringAddr | null;
  base: number;
  kickFd: number;
  callFd: number;
  errFd: number;
  enabled: boolean;
}

export type VhostUserEffect =
  /** The rings that can be served may have changed: (re)start the data path over them. */
  | { kind: 'rings-changed' }
  /** GET_VRING_BASE: stop serving ring `index` (let its requests complete first), then reply with its base. */
  | { kind: 'stop-ring'; index: number }
  /** RESET_OWNER / RESET_DEVICE: stop serving, forget the memory table and the inflight region. */
  | { kind: 'reset' };

export interface VhostUserResult {
  /** The reply to send now (header included), or null (none, or the stop-ring effect builds it). */
  reply: Uint8Array | null;
  replyFds: number[];
  effects: VhostUserEffect[];
  /** Drop the connection: why (one line). */
  disconnect?: string;
}

/** What handle() needs from the runtime (the device, memory, inflight). Throws are refusals of that message. */
export interface VhostUserContext {
  /** The device's features as the VMM is offered them (PROTOCOL_FEATURES is added here). */
  readonly deviceFeatures: bigint;
  readonly numQueues: number;
  readonly maxQueueSize: number;
  config(): Uint8Array;
  /** SET_FEATURES: false refuses them. */
  negotiate(features: bigint): boolean;
  /** SET_MEM_TABLE: check and map (throw to refuse: the connection is dropped). The fds are closed after. */
  setMemTable(regions: RegionSpec[]): void;
  /** GET_INFLIGHT_FD: create a region; the fd is sent and closed after. */
  getInflight(numQueues: number, queueSize: number): { fd: number; payload: InflightPayload };
  /** SET_INFLIGHT_FD: map it (the fd is closed after). */
  setInflight(fd: number, payload: InflightPayload): void;
  closeFd(fd: number): void;
  log(message: string): void;
}

const NO_FD = -1;

export class VhostUserProtocol {
  features = 0n;
  protocolFeatures = 0n;
  featuresSet = false;
  owner = false;
  /** The back-end request channel (SET_BACKEND_REQ_FD), or -1. */
  backendFd = NO_FD;
  readonly rings: RingState[];

  /**
   * With `deferCallFds` (the rings are served on queue threads, which hold the call fds by number), a replaced
   * call or err fd waits in takeRetiredFds() like a kick fd, and a new call fd restarts the rings.
   */
  constructor(
    readonly numQueues: number,
    readonly deferCallFds = false,
  ) {
    this.rings = Array.from({ length: numQueues }, () => freshRing());
  }

  has(feature: number): boolean {
    return (this.protocolFeatures & (1n << BigInt(feature))) !== 0n;
  }

  /** Rings that can be served: kicked, sized, addressed, enabled (or no protocol features: enabled by a kick). */
  readyRings(): number[] {
    const ready: number[] = [];
    const gated = (this.features & PROTOCOL_FEATURES_BIT) !== 0n;
    this.rings.forEach((r, i) => {
      if (r.kickFd !== NO_FD && r.num > 0 && r.addr !== null && (r.enabled || !gated)) ready.push(i);
    });
    return ready;
  }

  /** The reply to GET_VRING_BASE of ring `index` once it is stopped at avail index `base`. */
  vringBaseReply(index: number, base: number): Uint8Array {
    const ring = this.rings[index]!;
    ring.base = base;
    // Stopped: the ring needs a new kick fd to run again (as libvhost-user does).
    this.#replaceFd(ring, 'kickFd', NO_FD);
    return reply(R.GET_VRING_BASE, encodeVringState({ index, num: base }));
  }

  /** Forget everything the connection set up and close the fds held (disconnect, RESET_OWNER). */
  closeAll(closeFd: (fd: number) => void): void {
    for (const r of this.rings) {
      for (const fd of [r.kickFd, r.callFd, r.errFd]) if (fd !== NO_FD) closeQuietly(closeFd, fd);
      Object.assign(r, freshRing());
    }
    if (this.backendFd !== NO_FD) closeQuietly(closeFd, this.backendFd);
    this.backendFd = NO_FD;
    this.features = 0n;
    this.protocolFeatures = 0n;
    this.featuresSet = false;
    this.owner = false;
  }

  handle(msg: VhostUserMessage, ctx: VhostUserContext): VhostUserResult {
    const result: VhostUserResult = { reply: null, replyFds: [], effects: [] };
    const kept = new Set<number>();
    try {
      const ack = this.#dispatch(msg, ctx, result, kept);
      if (
        result.disconnect === undefined &&
        result.reply === null &&
        ack !== 'has-reply' &&
        (msg.header.flags & VHOST_USER_NEED_REPLY_MASK) !== 0 &&
        this.has(PF.REPLY_ACK)
      ) {
        result.reply = reply(msg.header.request, encodePayloadU64(ack === 'ok' ? 0n : 1n));
      }
    } catch (err) {
      result.disconnect = `${vhostUserRequestName(msg.header.request)}: ${(err as Error).message}`;
      result.effects = [];
      result.reply = null;
    }
    for (const fd of msg.fds) if (!kept.has(fd)) closeQuietly(ctx.closeFd, fd);
    return result;
  }

  /** Returns how the message went for REPLY_ACK ('has-reply': it answers itself). Throws to disconnect. */
  #dispatch(
    msg: VhostUserMessage,
    ctx: VhostUserContext,
    result: VhostUserResult,
    kept: Set<number>,
  ): 'ok' | 'failed' | 'has-reply' {
    const { header, payload, fds } = msg;
    const noFds = (): void => {
      if (fds.length > 0) throw new Error(`${fds.length} unexpected fds`);
    };
    switch (header.request) {
      case R.GET_FEATURES:
        noFds();
        result.reply = reply(R.GET_FEATURES, encodePayloadU64(ctx.deviceFeatures | PROTOCOL_FEATURES_BIT));
        return 'has-reply';
      case R.SET_FEATURES: {
        noFds();
        const features = decodePayloadU64(payload);
        const offered = ctx.deviceFeatures | PROTOCOL_FEATURES_BIT;
        if ((features & ~offered) !== 0n)
          throw new Error(`features 0x${(features & ~offered).toString(16)} were not offered`);
        if (!ctx.negotiate(features & ~PROTOCOL_FEATURES_BIT))
          throw new Error(`the device refuses features 0x${features.toString(16)}`);
        this.features = features;
        this.featuresSet = true;
        result.effects.push({ kind: 'rings-changed' });
        return 'ok';
      }
      case R.SET_OWNER:
        noFds();
        this.owner = true;
        return 'ok';
      case R.RESET_OWNER:
      case R.RESET_DEVICE:
        noFds();
        result.effects.push({ kind: 'reset' });
        return 'ok';
      case R.GET_PROTOCOL_FEATURES:
        noFds();
        result.reply = reply(R.GET_PROTOCOL_FEATURES, encodePayloadU64(OFFERED_PROTOCOL_FEATURES));
        return 'has-reply';
      case R.SET_PROTOCOL_FEATURES: {
        noFds();
        const wanted = decodePayloadU64(payload);
        const extra = wanted & ~OFFERED_PROTOCOL_FEATURES;
        if (extra !== 0n) throw new Error(`protocol features 0x${extra.toString(16)} were not offered`);
        this.protocolFeatures = wanted;
        return 'ok';
      }
      case R.GET_QUEUE_NUM:
        noFds();
        result.reply = reply(R.GET_QUEUE_NUM, encodePayloadU64(BigInt(ctx.numQueues)));
        return 'has-reply';
      case R.SET_MEM_TABLE: {
        const table = decodeMemoryTable(payload);
        if (fds.length !== table.length) throw new Error(`${table.length} regions with ${fds.length} fds`);
        const specs: RegionSpec[] = table.map((r, i) => ({
          guestPhysAddr: safe(r.guestPhysAddr, 'guest address'),
          size: safe(r.memorySize, 'region size'),
          userAddr: safe(r.userspaceAddr, 'user address'),
          mmapOffset: safe(r.mmapOffset, 'mmap offset'),
          fd: fds[i]!,
        }));
        ctx.setMemTable(specs);
        result.effects.push({ kind: 'rings-changed' });
        return 'ok';
      }
      case R.SET_VRING_NUM: {
        noFds();
        const s = decodeVringState(payload);
        const ring = this.#ring(s.index);
        if (s.num === 0 || s.num > ctx.maxQueueSize || (s.num & (s.num - 1)) !== 0)
          throw new Error(`ring ${s.index} size ${s.num} (a power of two up to ${ctx.maxQueueSize})`);
        ring.num = s.num;
        return 'ok';
      }
      case R.SET_VRING_ADDR: {
        noFds();
        const a = decodeVringAddr(payload);
        const ring = this.#ring(a.index);
        for (const v of [a.desc, a.avail, a.used])
          if (v > BigInt(Number.MAX_SAFE_INTEGER))
            throw new Error(`ring ${a.index} address 0x${v.toString(16)} is too large`);
        ring.addr = a;
        result.effects.push({ kind: 'rings-changed' });
        return 'ok';
      }
      case R.SET_VRING_BASE: {
        noFds();
        const s = decodeVringState(payload);
        const ring = this.#ring(s.index);
        if (s.num > 0xffff) throw new Error(`ring ${s.index} base ${s.num} is not a u16`);
        ring.base = s.num;
        return 'ok';
      }
      case R.GET_VRING_BASE: {
        noFds();
        const s = decodeVringState(payload);
        this.#ring(s.index);
        result.effects.push({ kind: 'stop-ring', index: s.index });
        return 'has-reply';
      }
      case R.SET_VRING_KICK:
      case R.SET_VRING_CALL:
      case R.SET_VRING_ERR: {
        const v = decodePayloadU64(payload);
        const index = Number(v & BigInt(VHOST_USER_VRING_IDX_MASK));
        if (v >> 9n !== 0n) throw new Error(`payload 0x${v.toString(16)} has unknown bits`);
        const ring = this.#ring(index);
        const noFd = (v & BigInt(VHOST_USER_VRING_NOFD_MASK)) !== 0n;
        if (noFd ? fds.length !== 0 : fds.length !== 1)
          throw new Error(`ring ${index}: ${fds.length} fds (${noFd ? 'none' : 'one'} expected)`);
        const fd = noFd ? NO_FD : fds[0]!;
        if (header.request === R.SET_VRING_KICK && noFd)
          throw new Error(`ring ${index}: polling without a kick fd is not supported`);
        const slot =
          header.request === R.SET_VRING_KICK
            ? 'kickFd'
            : header.request === R.SET_VRING_CALL
              ? 'callFd'
              : 'errFd';
        this.#replaceFd(ring, slot, fd, this.deferCallFds ? undefined : ctx.closeFd);
        if (fd !== NO_FD) kept.add(fd);
        if (slot === 'kickFd' || (slot === 'callFd' && this.deferCallFds))
          result.effects.push({ kind: 'rings-changed' });
        return 'ok';
      }
      case R.SET_VRING_ENABLE: {
        noFds();
        const s = decodeVringState(payload);
        const ring = this.#ring(s.index);
        if (s.num > 1) throw new Error(`ring ${s.index} enable ${s.num}`);
        ring.enabled = s.num === 1;
        result.effects.push({ kind: 'rings-changed' });
        return 'ok';
      }
      case R.SET_BACKEND_REQ_FD: {
        if (!this.has(PF.BACKEND_REQ)) throw new Error('BACKEND_REQ was not negotiated');
        if (fds.length !== 1) throw new Error(`${fds.length} fds (one expected)`);
        if (this.backendFd !== NO_FD) closeQuietly(ctx.closeFd, this.backendFd);
        this.backendFd = fds[0]!;
        kept.add(this.backendFd);
        return 'ok';
      }
      case R.GET_CONFIG: {
        noFds();
        const c = decodeConfig(payload);
        const config = ctx.config();
        const data = new Uint8Array(c.size);
        if (c.offset < config.length)
          data.set(config.subarray(c.offset, Math.min(config.length, c.offset + c.size)));
        result.reply = reply(R.GET_CONFIG, encodeConfig({ ...c, data }));
        return 'has-reply';
      }
      case R.SET_CONFIG: {
        noFds();
        const c = decodeConfig(payload);
        // virtio-blk offers nothing writable (no CONFIG_WCE): refuse, the connection goes on.
        ctx.log(`SET_CONFIG of ${c.size} bytes at ${c.offset} refused: the config space is read-only`);
        return 'failed';
      }
      case R.GET_INFLIGHT_FD: {
        noFds();
        if (!this.has(PF.INFLIGHT_SHMFD)) throw new Error('INFLIGHT_SHMFD was not negotiated');
        const p = decodeInflight(payload);
        if (p.numQueues > ctx.numQueues || p.queueSize > ctx.maxQueueSize)
          throw new Error(
            `inflight region for ${p.numQueues} queues of ${p.queueSize} (the device has ${ctx.numQueues} of ${ctx.maxQueueSize})`,
          );
        const made = ctx.getInflight(p.numQueues, p.queueSize);
        result.reply = reply(R.GET_INFLIGHT_FD, encodeInflight(made.payload));
        result.replyFds = [made.fd];
        return 'has-reply';
      }
      case R.SET_INFLIGHT_FD: {
        if (!this.has(PF.INFLIGHT_SHMFD)) throw new Error('INFLIGHT_SHMFD was not negotiated');
        if (fds.length !== 1) throw new Error(`${fds.length} fds (one expected)`);
        ctx.setInflight(fds[0]!, decodeInflight(payload));
        return 'ok';
      }
      default:
        throw new Error('not supported');
    }
  }

  #ring(index: number): RingState {
    if (!Number.isInteger(index) || index >= this.numQueues)
      throw new Error(`ring ${index} is past the device's ${this.numQueues} queues`);
    return this.rings[index]!;
  }

  /**
   * Put `fd` in `slot`. An old call/err fd is closed at once (signals look the fd up each time); an old kick fd
   * may still be watched by the data path, so it waits in takeRetiredFds() for the runtime.
   */
  #replaceFd(
    ring: RingState,
    slot: 'kickFd' | 'callFd' | 'errFd',
    fd: number,
    closeFd?: (fd: number) => void,
  ): void {
    const old = ring[slot];
    ring[slot] = fd;
    if (old === NO_FD || old === fd) return;
    if (slot === 'kickFd' || closeFd === undefined) this.#retiredKicks.push(old);
    else closeQuietly(closeFd, old);
  }

  readonly #retiredKicks: number[] = [];

  /** Kick fds replaced or of stopped rings: the runtime closes them once the data path no longer watches them. */
  takeRetiredFds(): number[] {
    return this.#retiredKicks.splice(0);
  }
}

function freshRing(): RingState {
  return { num: 0, addr: null, base: 0, kickFd: NO_FD, callFd: NO_FD, errFd: NO_FD, enabled: false };
}

function reply(request: number, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(VHOST_USER_HEADER_SIZE + payload.length);
  encodeHeader({ request, flags: VHOST_USER_VERSION | VHOST_USER_REPLY_MASK, size: payload.length }, out);
  out.set(payload, VHOST_USER_HEADER_SIZE);
  return out;
}

function safe(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`${what} 0x${v.toString(16)} is too large`);
  return Number(v);
}

function closeQuietly(closeFd: (fd: number) => void, fd: number): void {
  try {
    closeFd(fd);
  } catch {
    // already gone
  }
}
