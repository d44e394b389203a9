/**
 * A pair of connected packet backends (a virtual wire, like a veth pair): what one end sends, the other end
 * receives. For tests, and to connect two devices in one process. Each direction holds at most `capacity`
 * frames; a send to a full direction returns false and the sender's writable() follows when the receiver takes
 * one, so a slow receiver slows the sender down instead of losing frames. Frames are copied once, at send().
 *
 * An end can also be driven by hand (no device attached): send() injects a frame, receive() takes the next one.
 */
import { BackendError } from '../backend.js';
import { NO_OFFLOADS, type PacketBackend, type PacketBackendEvents, type PacketOffloads } from './backend.js';

export interface PacketPairOptions {
  /** Frames carry a virtio_net_hdr_v1 both ways (default false). */
  vnetHeader?: boolean;
  /** Offloads both ends advertise (with vnetHeader; default none). */
  offloads?: Partial<PacketOffloads>;
  /** Frames each direction holds before send() returns false (default 64). */
  capacity?: number;
}

/** One end of a PacketPair. */
export class PairEndpoint implements PacketBackend {
  readonly description: string;
  readonly vnetHeader: boolean;
  readonly offloads: Readonly<PacketOffloads>;
  /** Receive offloads the attached device enabled (setOffloads), for tests to look at. */
  enabledOffloads: Readonly<PacketOffloads> = NO_OFFLOADS;
  /** Last setLinkUp() value (null: never called). */
  linkUp: boolean | null = null;
  /** Frames this end sent / received. */
  sentFrames = 0;
  receivedFrames = 0;

  /** @internal */ peer: PairEndpoint | null = null;
  /** Frames waiting for this end to receive them. */
  readonly #inbox: Uint8Array[] = [];
  readonly #capacity: number;
  #events: PacketBackendEvents | null = null;
  #receiving = false;
  /** This end's send() returned false: tell it when the peer makes room. */
  #senderBlocked = false;
  #closed = false;
  #notifyPending = false;

  constructor(description: string, options: PacketPairOptions) {
    this.description = description;
    this.vnetHeader = options.vnetHeader ?? false;
    this.offloads = Object.freeze({ ...NO_OFFLOADS, ...(this.vnetHeader ? options.offloads : {}) });
    const capacity = options.capacity ?? 64;
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`packet pair: capacity must be a positive integer, got ${capacity}`);
    }
    this.#capacity = capacity;
  }

  /** Frames waiting to be received at this end. */
  get pending(): number {
    return this.#inbox.length;
  }

  /** Is a device asking for readable() callbacks now? */
  get receiving(): boolean {
    return this.#receiving;
  }

  attach(events: PacketBackendEvents): void {
    this.#events = events;
  }

  setReceiving(on: boolean): void {
    this.#receiving = on;
    if (on && this.#inbox.length > 0) this.#notifyReadable();
  }

  receive(buffers: readonly Uint8Array[]): number {
    if (this.#closed) throw new BackendError(`${this.description}: closed`, 'EBADF');
    const frame = this.#inbox.shift();
    if (frame === undefined) return -1;
    let off = 0;
    for (let i = 0; i < buffers.length && off < frame.length; i++) {
      const b = buffers[i]!;
      const n = Math.min(b.length, frame.length - off);
      b.set(frame.subarray(off, off + n));
      off += n;
    }
    this.receivedFrames++;
    // Room again in this direction: the peer's blocked send may go on.
    const peer = this.peer;
    if (peer !== null && peer.#senderBlocked) {
      peer.#senderBlocked = false;
      peer.#notifyWritable();
    }
    return frame.length;
  }

  send(frame: readonly Uint8Array[]): boolean {
    if (this.#closed) throw new BackendError(`${this.description}: closed`, 'EBADF');
    const peer = this.peer;
    if (peer === null || peer.#closed)
      throw new BackendError(`${this.description}: the peer is gone`, 'EPIPE');
    if (peer.#inbox.length >= peer.#capacity) {
      this.#senderBlocked = true;
      return false;
    }
    let length = 0;
    for (const b of frame) length += b.length;
    const copy = new Uint8Array(length);
    let off = 0;
    for (const b of frame) {
      copy.set(b, off);
      off += b.length;
    }
    peer.#inbox.push(copy);
    this.sentFrames++;
    if (peer.#receiving) peer.#notifyReadable();
    return true;
  }

  /** Convenience for tests: send one contiguous frame. */
  inject(frame: Uint8Array): boolean {
    return this.send([frame]);
  }

  /** Convenience for tests: take the next frame (a copy), or null. */
  take(maxLength = 65536 + 64): Uint8Array | null {
    const buffer = new Uint8Array(maxLength);
    const n = this.receive([buffer]);
    return n < 0 ? null : buffer.slice(0, Math.min(n, maxLength));
  }

  setOffloads(offloads: Readonly<PacketOffloads>): void {
    this.enabledOffloads = Object.freeze({ ...offloads });
  }

  setLinkUp(up: boolean): void {
    this.linkUp = up;
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#receiving = false;
    this.#inbox.length = 0;
    this.#events = null;
  }

  // Callbacks run from the event loop, never inside the caller's send()/receive() (no re-entrance).
  #notifyReadable(): void {
    if (this.#notifyPending) return;
    this.#notifyPending = true;
    setImmediate(() => {
      this.#notifyPending = false;
      if (this.#receiving && this.#inbox.length > 0) this.#events?.readable();
    });
  }

  #notifyWritable(): void {
    setImmediate(() => this.#events?.writable());
  }
}

/** Two connected ends: frames sent at one are received at the other. */
export function createPacketPair(options: PacketPairOptions = {}): [PairEndpoint, PairEndpoint] {
  const a = new PairEndpoint('pair:a', options);
  const b = new PairEndpoint('pair:b', options);
  a.peer = b;
  b.peer = a;
  return [a, b];
}

/** One end whose frames come back to it (a loopback cable). */
export function createLoopback(options: PacketPairOptions = {}): PairEndpoint {
  const end = new PairEndpoint('loopback', options);
  end.peer = end;
  return end;
}
