/**
 * Example: a complete custom PacketBackend, to copy when you connect a virtio-net device to your own frame
 * transport (a userspace switch, a tunnel, an emulated network).
 *
 * A tiny host living inside the daemon: it owns one IPv4 address and answers ARP requests and ICMP echo
 * requests (ping) for it; every other frame is counted and ignored. Behind a VirtioNetDevice:
 *
 *   import { VirtioNetDevice } from 'vduse-ts/dist/src/devices/index.js';
 *   const backend = new PingResponder({ ip: '10.0.0.1' });
 *   const device = new VirtioNetDevice({ backend, name: 'demo' });
 *   // serve `device` through the VDUSE transport; in the guest: ip addr add 10.0.0.2/24 dev eth0; ping 10.0.0.1
 *
 * What the device expects of a backend (src/backends/packet/backend.ts): send() gets one frame as views of guest
 * memory, valid only during the call (so replies are built in buffers of our own); returning false means "not
 * now" and obliges us to call writable() later. receive() writes one frame into the buffers it is given and
 * returns the frame's full length, or -1 when there is none; readable() says there is one, but only while the
 * device has asked for it with setReceiving(true) (it holds guest receive buffers). No queue grows without bound:
 * replies wait in an outbox of `outbox` frames, and a request that finds it full is refused (send() false) until
 * the guest has taken a reply.
 */
import type { PacketBackend, PacketBackendEvents, PacketOffloads } from '../src/backends/packet/backend.js';

export interface PingResponderOptions {
  /** The IPv4 address to answer for, dotted. */
  ip: string;
  /** Its MAC (default 02:00:00:00:00:01). */
  mac?: string;
  /** Replies waiting for the guest at most (default 16). */
  outbox?: number;
}

const ETH_P_ARP = 0x0806;
const ETH_P_IP = 0x0800;

export class PingResponder implements PacketBackend {
  readonly description: string;
  readonly vnetHeader = false;
  readonly offloads: Readonly<PacketOffloads> = { csum: false, tso4: false, tso6: false, ecn: false };
  /** Frames seen and answered, for tests and metrics. */
  readonly counters = { arp: 0, echo: 0, ignored: 0 };
  readonly #ip: Uint8Array;
  readonly #mac: Uint8Array;
  readonly #outbox: Uint8Array[] = [];
  readonly #capacity: number;
  #events: PacketBackendEvents | null = null;
  #receiving = false;
  #blocked = false;

  constructor(options: PingResponderOptions) {
    this.#ip = Uint8Array.from(options.ip.split('.'), Number);
    this.#mac = Uint8Array.from((options.mac ?? '02:00:00:00:00:01').split(':'), (h) => parseInt(h, 16));
    this.#capacity = options.outbox ?? 16;
    this.description = `ping-responder:${options.ip}`;
  }

  attach(events: PacketBackendEvents): void {
    this.#events = events;
  }

  setReceiving(on: boolean): void {
    this.#receiving = on;
    if (on && this.#outbox.length > 0) setImmediate(() => this.#receiving && this.#events?.readable());
  }

  receive(buffers: readonly Uint8Array[]): number {
    const frame = this.#outbox.shift();
    if (frame === undefined) return -1;
    let off = 0;
    for (const b of buffers) {
      if (off >= frame.length) break;
      const n = Math.min(b.length, frame.length - off);
      b.set(frame.subarray(off, off + n));
      off += n;
    }
    if (this.#blocked) {
      this.#blocked = false;
      setImmediate(() => this.#events?.writable());
    }
    return frame.length;
  }

  send(frame: readonly Uint8Array[]): boolean {
    if (this.#outbox.length >= this.#capacity) {
      this.#blocked = true;
      return false;
    }
    const f = frame.length === 1 ? frame[0]! : concat(frame);
    const reply = this.#answer(f);
    if (reply === null) {
      this.counters.ignored++;
      return true;
    }
    this.#outbox.push(reply);
    if (this.#receiving) setImmediate(() => this.#receiving && this.#events?.readable());
    return true;
  }

  async close(): Promise<void> {
    this.#outbox.length = 0;
    this.#events = null;
  }

  /** The reply to one frame, or null. Every length is checked: the guest may send anything. */
  #answer(f: Uint8Array): Uint8Array | null {
    if (f.length < 14) return null;
    const type = (f[12]! << 8) | f[13]!;
    if (type === ETH_P_ARP && f.length >= 42 && f[21] === 1 && equal(f.subarray(38, 42), this.#ip)) {
      const r = f.slice(0, 42);
      r.set(f.subarray(6, 12), 0); // to the asker
      r.set(this.#mac, 6);
      r[21] = 2; // reply
      r.set(this.#mac, 22); // sender: us
      r.set(this.#ip, 28);
      r.set(f.subarray(22, 32), 32); // target: the asker's MAC and IP
      this.counters.arp++;
      return r;
    }
    if (type !== ETH_P_IP || f.length < 34 || (f[14]! & 0xf0) !== 0x40) return null;
    const ihl = (f[14]! & 0x0f) * 4;
    const total = (f[16]! << 8) | f[17]!;
    if (ihl < 20 || total < ihl + 8 || 14 + total > f.length) return null;
    if (f[23] !== 1 || !equal(f.subarray(30, 34), this.#ip) || f[14 + ihl] !== 8) return null;
    const r = f.slice(0, 14 + total);
    r.set(f.subarray(6, 12), 0);
    r.set(this.#mac, 6);
    r.set(f.subarray(30, 34), 26); // source: us
    r.set(f.subarray(26, 30), 30); // destination: the pinger
    r[14 + ihl] = 0; // echo reply
    // ICMP checksum: type 8 -> 0 changes one 16-bit word by 0x0800 (RFC 1624 incremental update).
    const c = ((r[16 + ihl]! << 8) | r[17 + ihl]!) + 0x0800;
    const folded = (c & 0xffff) + (c >>> 16);
    r[16 + ihl] = folded >>> 8;
    r[17 + ihl] = folded & 0xff;
    this.counters.echo++;
    return r;
  }
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}
