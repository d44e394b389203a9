/**
 * VirtioNetDevice: a virtio-net device (virtio spec §5.1) over a PacketBackend, one queue pair: receiveq 0,
 * transmitq 1 (no control queue: VDUSE refuses VIRTIO_NET_F_CTRL_VQ, and MQ needs one).
 *
 * Transmit: a kick drains the transmit ring with notifications off. Each chain is the 12-byte virtio_net_hdr_v1
 * followed by one Ethernet frame, in any split over descriptors. The device checks it (header present, frame
 * between 14 bytes and the MTU + 18 (64 KiB + 18 with TSO), offload flags only as negotiated) and hands the
 * backend views of the guest's descriptors, without a copy (the header too when the backend takes vnet headers).
 * A backend that cannot take a frame now (send() false) stops the drain: the chain is kept and sent first when
 * the backend says writable(), notifications stay off meanwhile, so the guest's ring fills and the guest stops.
 *
 * Receive: the device pops the driver's receive chains (only the writable part is used), keeps them in a small
 * FIFO of chains it holds (at most the queue size), and has the backend read one frame at a time straight into
 * them. Without MRG_RXBUF a frame goes into one chain; with it, into as many chains as needed, the count in the
 * first header's num_buffers. The header is the backend's (vnetHeader: the device clears what was not negotiated
 * and sets num_buffers) or written by the device (all zero but num_buffers). While the device holds no receive
 * buffer it turns the backend's receiving off (a TAP leaves frames in its kernel queue) and asks the driver for
 * kicks; the kick that brings buffers turns it on again. Each read gets room for the largest frame the device
 * accepts: the guest's buffers first, then a device-owned overflow area, so that a frame longer than the
 * buffers held is seen (not silently cut). With MRG_RXBUF such a frame waits in the overflow area until the
 * driver posts more buffers (one frame at most); without it, or when longer than the largest frame, it is
 * dropped and counted.
 *
 * Malformed chains (a transmit chain shorter than the header, a receive chain with readable descriptors or less
 * room than the header) are a driver error the device cannot answer in band: it stops both queues and asks the
 * transport for DEVICE_NEEDS_RESET (as QEMU does). Frames with bad lengths or flags are dropped and counted.
 *
 * Link state: setLinkUp() rewrites `status` in the config space and calls host.configChanged() (the transport
 * sends the config interrupt). While the link is down, received frames stay in the backend and transmitted ones
 * are dropped (counted).
 */
import type { PacketBackend, PacketOffloads } from '../../backends/packet/backend.js';
import { VduseTsError } from '../../common/errors.js';
import { VIRTIO_ID_NET } from '../../uapi/virtio-config.js';
import {
  VIRTIO_NET_HDR_F_DATA_VALID,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_GSO_ECN,
  VIRTIO_NET_HDR_GSO_NONE,
  VIRTIO_NET_HDR_GSO_TCPV4,
  VIRTIO_NET_HDR_GSO_TCPV6,
  VIRTIO_NET_HDR_V1_SIZE,
} from '../../uapi/virtio-net.js';
import { copyFromParts, copyToParts, sliceParts } from '../../virtio/chain.js';
import type { DescriptorChain, Virtqueue } from '../../virtio/virtqueue.js';
import type { DeviceContext, DeviceHost, VirtioDevice } from '../device.js';
import { encodeNetConfig } from './config.js';
import {
  negotiatedNetFeatures,
  netFeatureProblem,
  offeredNetFeatures,
  type NegotiatedNetFeatures,
} from './features.js';
import { formatMac, resolveNetOptions, type ResolvedNetOptions, type VirtioNetOptions } from './options.js';

export const NET_RX_QUEUE = 0;
export const NET_TX_QUEUE = 1;
/** Bytes of struct virtio_net_hdr_v1 in front of every frame (VERSION_1). */
export const NET_HDR_SIZE = VIRTIO_NET_HDR_V1_SIZE;
export const ETH_HLEN = 14;
/** Room for one VLAN tag on top of the MTU. */
export const VLAN_HLEN = 4;
/** Largest frame with segmentation offload: a 64 KiB IP packet, Ethernet and VLAN headers. */
export const NET_MAX_GSO_FRAME = 65535 + ETH_HLEN + VLAN_HLEN;
/** Frames moved per queue before the event loop gets a turn (other queues, other devices, timers). */
const BUDGET = 128;
const LOG_LIMIT = 20;

/** Counters since the device was created (frame bytes, without the virtio header). */
export interface NetStats {
  rxPackets: number;
  rxBytes: number;
  /** Frames read from the backend and not delivered (too long for the buffers, bad header). */
  rxDropped: number;
  txPackets: number;
  txBytes: number;
  /** Guest frames not sent (link down, bad length or flags, refused by the backend). */
  txDropped: number;
  /** Malformed chains and frames from the driver (a subset of the drops, plus chains that caused a reset). */
  driverErrors: number;
  /** Backend calls that failed. */
  backendErrors: number;
}

/** A malformed ring the device cannot answer in band (reported through host.needsReset). */
export class NetDeviceError extends VduseTsError {
  constructor(
    message: string,
    readonly queue: number,
  ) {
    super('ERR_NET_DRIVER', message);
  }
}

export class VirtioNetDevice implements VirtioDevice {
  readonly deviceId = VIRTIO_ID_NET;
  readonly vendorId: number;
  readonly numQueues = 2;
  readonly maxQueueSize: number;
  readonly features: bigint;
  readonly backend: PacketBackend;
  readonly options: ResolvedNetOptions;
  readonly stats: NetStats = {
    rxPackets: 0,
    rxBytes: 0,
    rxDropped: 0,
    txPackets: 0,
    txBytes: 0,
    txDropped: 0,
    driverErrors: 0,
    backendErrors: 0,
  };

  #host: DeviceHost | null = null;
  #config: Uint8Array;
  #linkUp: boolean;
  #backendFailed = false;
  #negotiated: NegotiatedNetFeatures = negotiatedNetFeatures(0n);
  #active = false;
  /** Bumped by activate(): a deferred call of an older activation does nothing. */
  #activation = 0;
  /** A malformed chain stopped the data path until reset. */
  #broken = false;
  #rxq: Virtqueue | null = null;
  #txq: Virtqueue | null = null;
  /** Guest buffer bytes a received frame may take at most (header included), and the frame bytes sent at most. */
  #rxMax = 0;
  #txMax = 0;
  /** Receive chains popped and not used yet, oldest first, and their writable bytes. */
  #stash: DescriptorChain[] = [];
  #stashBytes = 0;
  /** Device-owned room after the guest's buffers: rxMax + 1 bytes (one more than the largest frame). */
  #overflow = new Uint8Array(0);
  /** A frame partly in the overflow area (MRG_RXBUF), waiting for more buffers: its size and where it spilled. */
  #pending: { total: number; spilledAt: number } | null = null;
  #rxScheduled: NodeJS.Immediate | null = null;
  #txScheduled: NodeJS.Immediate | null = null;
  #rxRunning = false;
  #txRunning = false;
  /** The backend refused a frame for now: this chain goes first on writable(). */
  #txHeld: DescriptorChain | null = null;
  #txBlocked = false;
  #receiving = false;
  /** Guest buffer bytes the last receiveOne() offered before the overflow area. */
  #roomInGuest = 0;
  readonly #hdr = new Uint8Array(NET_HDR_SIZE);
  readonly #hdrView = new DataView(this.#hdr.buffer);
  readonly #parts: Uint8Array[] = [];
  #logged = 0;
  readonly #runRx = (): void => {
    this.#rxScheduled = null;
    this.#rxRun();
  };
  readonly #runTx = (): void => {
    this.#txScheduled = null;
    this.#txRun();
  };

  constructor(options: VirtioNetOptions) {
    this.options = resolveNetOptions(options);
    const o = this.options;
    this.backend = o.backend;
    this.vendorId = o.vendorId;
    this.maxQueueSize = o.queueSize;
    this.features = offeredNetFeatures(o);
    this.#linkUp = o.linkUp;
    this.#config = encodeNetConfig(o.mac, this.#linkUp, o.mtu);
    this.backend.attach({
      readable: () => this.#rxRun(),
      writable: () => {
        this.#txBlocked = false;
        this.#txRun();
      },
      failed: (error) => this.#onBackendFailed(error),
    });
  }

  get mac(): string {
    return formatMac(this.options.mac);
  }

  get linkUp(): boolean {
    return this.#linkUp;
  }

  /** Receive chains the device holds now (popped, not yet filled). */
  get heldRxBuffers(): number {
    return this.#stash.length;
  }

  /**
   * Receive buffers held waiting for a frame: idle, a drain does not wait for them (VirtioDevice.idleChains).
   * Those holding part of a frame (MRG_RXBUF, waiting for more buffers) are work in progress.
   */
  idleChains(index: number): number {
    return index === NET_RX_QUEUE && this.#pending === null ? this.#stash.length : 0;
  }

  /** Chains held that are work in progress (a transmit the backend refused for now, a half-received frame). */
  get inFlight(): number {
    const rx = this.#rxq?.inFlight ?? 0;
    const tx = this.#txq?.inFlight ?? 0;
    return Math.max(0, rx - this.idleChains(NET_RX_QUEUE)) + tx;
  }

  config(): Uint8Array {
    return this.#config;
  }

  bind(host: DeviceHost): void {
    this.#host = host;
  }

  negotiate(features: bigint): boolean {
    const problem = netFeatureProblem(this.features, features);
    if (problem !== null) {
      this.#log(`features refused: ${problem}`);
      return false;
    }
    this.#negotiated = negotiatedNetFeatures(features);
    return true;
  }

  activate(context: DeviceContext): void {
    const n = negotiatedNetFeatures(context.features);
    this.#negotiated = n;
    this.#rxq = context.queues[NET_RX_QUEUE] ?? null;
    this.#txq = context.queues[NET_TX_QUEUE] ?? null;
    this.#active = true;
    this.#activation++;
    this.#broken = false;
    this.#logged = 0;
    const mtuFrame = this.options.mtu + ETH_HLEN + VLAN_HLEN;
    const guestGso = n.guestTso4 || n.guestTso6;
    this.#rxMax = NET_HDR_SIZE + (guestGso ? Math.max(NET_MAX_GSO_FRAME, mtuFrame) : mtuFrame);
    this.#txMax = n.hostTso4 || n.hostTso6 ? Math.max(NET_MAX_GSO_FRAME, mtuFrame) : mtuFrame;
    if (this.#overflow.length !== this.#rxMax + 1) this.#overflow = new Uint8Array(this.#rxMax + 1);
    if (this.backend.vnetHeader && this.backend.setOffloads !== undefined) {
      const offloads: PacketOffloads = {
        csum: n.guestCsum,
        tso4: n.guestTso4,
        tso6: n.guestTso6,
        ecn: n.guestEcn,
      };
      const activation = this.#activation;
      // Until this runs the backend produces plain frames (or drops are counted), which every driver takes.
      this.#deferControl(() => {
        if (!this.#active || this.#activation !== activation) return;
        try {
          this.backend.setOffloads?.(offloads);
        } catch (error) {
          this.stats.backendErrors++;
          this.#log(`the backend cannot enable receive offloads: ${describe(error)}`);
        }
      });
    }
    // Buffers made available before DRIVER_OK get no kick of their own.
    this.#rxRun();
    this.#txRun();
  }

  queueNotify(index: number): void {
    if (!this.#active) return;
    if (index === NET_RX_QUEUE) this.#rxRun();
    else if (index === NET_TX_QUEUE) this.#txRun();
  }

  reset(): Promise<void> {
    this.#active = false;
    this.#rxq = this.#txq = null;
    this.#stash = [];
    this.#stashBytes = 0;
    this.#pending = null;
    this.#txHeld = null;
    this.#txBlocked = false;
    if (this.#rxScheduled !== null) clearImmediate(this.#rxScheduled);
    if (this.#txScheduled !== null) clearImmediate(this.#txScheduled);
    this.#rxScheduled = this.#txScheduled = null;
    this.#setReceiving(false);
    return Promise.resolve();
  }

  /** Link up or down: the config space's status changes and the driver gets a config change notification. */
  setLinkUp(up: boolean): void {
    if (up === this.#linkUp) return;
    this.#linkUp = up;
    this.#config = encodeNetConfig(this.options.mac, up, this.options.mtu);
    this.#deferControl(() => {
      if (this.#linkUp !== up) return; // changed again meanwhile: that call follows
      try {
        this.backend.setLinkUp?.(up);
      } catch (error) {
        this.#log(`the backend could not follow the link state: ${describe(error)}`);
      }
    });
    this.#host?.configChanged();
    if (up) this.#rxRun();
    else this.#setReceiving(false);
  }

  // ---------------------------------------------------------------------------------------------------------
  // Receive

  #setReceiving(on: boolean): void {
    if (on === this.#receiving) return;
    this.#receiving = on;
    try {
      this.backend.setReceiving(on);
    } catch (error) {
      this.#onBackendFailed(error instanceof Error ? error : new Error(String(error)));
    }
  }

  #rxRun(): void {
    const q = this.#rxq;
    if (!this.#active || this.#broken || q === null || this.#rxRunning) return;
    if (!this.#linkUp || this.#backendFailed) {
      this.#setReceiving(false);
      return;
    }
    this.#rxRunning = true;
    let used = 0;
    // Kicks are wanted only when the device runs out of buffers (#waitForBuffers).
    q.disableNotification();
    try {
      for (let frames = 0; ;) {
        if (this.#broken || !this.#active) break;
        if (frames >= BUDGET) {
          this.#rxScheduled ??= setImmediate(this.#runRx);
          break;
        }
        if (this.#pending !== null) {
          if (!this.#fillStash(q, this.#pending.total)) {
            if (this.#broken) break;
            if (this.#stash.length >= q.size) {
              // The device holds every buffer the ring can have: no more can come, the frame never fits.
              this.#pending = null;
              this.#rxDrop(`a frame larger than the whole receive ring (${this.#stashBytes} bytes)`);
              continue;
            }
            if (this.#waitForBuffers(q)) continue;
            break;
          }
          used += this.#finishPending();
          frames++;
          continue;
        }
        if (!this.#fillStash(q, this.#negotiated.mergeableRxBuffers ? this.#rxMax : 1)) {
          if (this.#broken) break;
          if (this.#stash.length === 0) {
            if (this.#waitForBuffers(q)) continue;
            break;
          }
        }
        const n = this.#receiveOne();
        if (n < 0) {
          // Nothing waiting: the backend says when there is (its fd watcher looks for readable).
          this.#setReceiving(true);
          break;
        }
        frames++;
        used += this.#deliver(n);
        if (this.#backendFailed) break;
      }
    } finally {
      this.#rxRunning = false;
    }
    if (used > 0 && this.#rxq === q) q.publish();
  }

  /** No buffers for the next frame: stop reading, ask for a kick. True when buffers arrived meanwhile. */
  #waitForBuffers(q: Virtqueue): boolean {
    this.#setReceiving(false);
    if (q.enableNotification()) {
      q.disableNotification();
      return true;
    }
    return false;
  }

  /**
   * Pop receive chains until the held ones hold `bytes` (or one chain, without MRG_RXBUF). False when the ring ran
   * dry first, or a chain was malformed (then #broken is set).
   */
  #fillStash(q: Virtqueue, bytes: number): boolean {
    const mergeable = this.#negotiated.mergeableRxBuffers;
    while (mergeable ? this.#stashBytes < bytes : this.#stash.length === 0) {
      const chain = q.pop();
      if (chain === null) return false;
      if (chain.readableBytes !== 0 || chain.writableBytes < NET_HDR_SIZE) {
        this.#fail(
          NET_RX_QUEUE,
          chain.readableBytes !== 0
            ? `receive chain ${chain.id} has device-readable descriptors`
            : `receive chain ${chain.id} has ${chain.writableBytes} writable bytes, less than the ${NET_HDR_SIZE}-byte header`,
        );
        return false;
      }
      this.#stash.push(chain);
      this.#stashBytes += chain.writableBytes;
    }
    return true;
  }

  /** Have the backend read one frame into the held buffers (+ overflow). Returns its length or -1. */
  #receiveOne(): number {
    const mergeable = this.#negotiated.mergeableRxBuffers;
    const skip = this.backend.vnetHeader ? 0 : NET_HDR_SIZE;
    const parts = this.#parts;
    parts.length = 0;
    const first = this.#stash[0]!;
    sliceParts(first.writable, skip, first.writableBytes - skip, parts);
    let room = first.writableBytes;
    if (mergeable) {
      for (let i = 1; i < this.#stash.length && room < this.#rxMax; i++) {
        const chain = this.#stash[i]!;
        for (const p of chain.writable) parts.push(p);
        room += chain.writableBytes;
      }
    }
    // One byte more than the largest frame: a longer frame shows as longer, whatever the backend does with it.
    const extra = this.#rxMax + 1 - room;
    if (extra > 0) parts.push(this.#overflow.subarray(0, extra));
    this.#roomInGuest = room;
    let n: number;
    try {
      n = this.backend.receive(parts);
    } catch (error) {
      this.stats.backendErrors++;
      this.#onBackendFailed(error instanceof Error ? error : new Error(String(error)));
      n = -1;
    }
    parts.length = 0;
    return n < 0 ? -1 : n + skip;
  }

  /** A frame of `total` bytes (header included) was read. Returns the chains given back. */
  #deliver(total: number): number {
    const room = this.#roomInGuest;
    if (total > this.#rxMax) return this.#rxDrop(`a frame of more than ${this.#rxMax - NET_HDR_SIZE} bytes`);
    if (total < NET_HDR_SIZE + ETH_HLEN) return this.#rxDrop(`a frame of ${total - NET_HDR_SIZE} bytes`);
    if (total > room) {
      if (!this.#negotiated.mergeableRxBuffers) {
        this.stats.rxDropped++;
        this.#log(
          `queue ${NET_RX_QUEUE}: a frame of ${total - NET_HDR_SIZE} bytes does not fit the receive buffer of ${room - NET_HDR_SIZE}`,
        );
        return 0;
      }
      // Partly in the overflow area: finished when the driver posts more buffers.
      this.#pending = { total, spilledAt: room };
      const q = this.#rxq!;
      if (this.#fillStash(q, total)) return this.#finishPending();
      return 0;
    }
    return this.#complete(total);
  }

  #rxDrop(what: string): number {
    this.stats.rxDropped++;
    this.#log(`queue ${NET_RX_QUEUE}: ${what} from ${this.backend.description} dropped`);
    return 0;
  }

  /** The held chains now cover the pending frame: copy the overflowed bytes in and complete it. */
  #finishPending(): number {
    const { total, spilledAt } = this.#pending!;
    this.#pending = null;
    let at = 0;
    let copied = 0;
    const tail = this.#overflow.subarray(0, total - spilledAt);
    for (const chain of this.#stash) {
      const end = at + chain.writableBytes;
      if (end > spilledAt && copied < tail.length) {
        const offset = Math.max(0, spilledAt - at);
        copied += copyToParts(chain.writable, offset, tail.subarray(copied));
      }
      at = end;
      if (at >= total) break;
    }
    return this.#complete(total);
  }

  /** Fix the header of a frame of `total` bytes that is in the held chains, and give those chains back. */
  #complete(total: number): number {
    const first = this.#stash[0]!;
    const hdr = this.#hdr;
    const n = this.#negotiated;
    if (this.backend.vnetHeader) {
      copyFromParts(first.writable, 0, hdr);
      let flags = hdr[0]!;
      const gso = hdr[1]!;
      const gsoType = gso & ~VIRTIO_NET_HDR_GSO_ECN;
      const gsoOk =
        gso === VIRTIO_NET_HDR_GSO_NONE ||
        (((gsoType === VIRTIO_NET_HDR_GSO_TCPV4 && n.guestTso4) ||
          (gsoType === VIRTIO_NET_HDR_GSO_TCPV6 && n.guestTso6)) &&
          ((gso & VIRTIO_NET_HDR_GSO_ECN) === 0 || n.guestEcn));
      if (!gsoOk || ((flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0 && !n.guestCsum)) {
        return this.#rxDrop(`a frame with offloads the driver did not accept (flags ${flags}, gso ${gso})`);
      }
      // §5.1.6.3.1: no frame over the MTU without gso (GSO_NONE, or ECN alone), whatever the buffers could take.
      if (
        gsoType === VIRTIO_NET_HDR_GSO_NONE &&
        total - NET_HDR_SIZE > this.options.mtu + ETH_HLEN + VLAN_HLEN
      ) {
        return this.#rxDrop(
          `a frame of ${total - NET_HDR_SIZE} bytes without gso, longer than the MTU allows,`,
        );
      }
      // §5.1.6.4.1: without GUEST_CSUM the flags are zero.
      if (!n.guestCsum) flags &= ~VIRTIO_NET_HDR_F_DATA_VALID;
      hdr[0] = flags;
    } else {
      hdr.fill(0);
    }
    const q = this.#rxq!;
    let left = total;
    let count = 0;
    while (left > 0) {
      const chain = this.#stash[count]!;
      count++;
      left -= Math.min(chain.writableBytes, left);
    }
    this.#hdrView.setUint16(10, count, true);
    copyToParts(first.writable, 0, hdr);
    left = total;
    for (let i = 0; i < count; i++) {
      const chain = this.#stash[i]!;
      const len = Math.min(chain.writableBytes, left);
      left -= len;
      this.#stashBytes -= chain.writableBytes;
      q.addUsed(chain, len);
    }
    this.#stash.splice(0, count);
    this.stats.rxPackets++;
    this.stats.rxBytes += total - NET_HDR_SIZE;
    return count;
  }

  // ---------------------------------------------------------------------------------------------------------
  // Transmit

  #txRun(): void {
    const q = this.#txq;
    if (!this.#active || this.#broken || q === null || this.#txBlocked || this.#txRunning) return;
    this.#txRunning = true;
    let used = 0;
    try {
      let frames = 0;
      outer: for (;;) {
        q.disableNotification();
        let chain: DescriptorChain | null;
        while ((chain = this.#txHeld ?? q.pop()) !== null) {
          this.#txHeld = null;
          if (!this.#transmit(q, chain)) {
            // The backend is full: keep the frame, leave notifications off, wait for writable().
            this.#txHeld = chain;
            this.#txBlocked = true;
            break outer;
          }
          if (this.#broken) break outer;
          used++;
          if (++frames >= BUDGET) {
            this.#txScheduled ??= setImmediate(this.#runTx);
            break outer;
          }
        }
        if (!q.enableNotification()) break;
      }
    } finally {
      this.#txRunning = false;
    }
    if (used > 0 && this.#txq === q) q.publish();
  }

  /** Send (or drop) one chain. False when the backend cannot take it now (the chain is not given back). */
  #transmit(q: Virtqueue, chain: DescriptorChain): boolean {
    const bytes = chain.readableBytes;
    if (bytes < NET_HDR_SIZE) {
      this.#fail(
        NET_TX_QUEUE,
        `transmit chain ${chain.id} has ${bytes} readable bytes, less than the ${NET_HDR_SIZE}-byte header`,
      );
      return true;
    }
    const frameLen = bytes - NET_HDR_SIZE;
    const hdr = this.#hdr;
    copyFromParts(chain.readable, 0, hdr);
    const problem = this.#txProblem(hdr, frameLen);
    if (problem !== null || !this.#linkUp || this.#backendFailed) {
      this.stats.txDropped++;
      if (problem !== null) {
        this.stats.driverErrors++;
        this.#log(`queue ${NET_TX_QUEUE}: chain ${chain.id}: ${problem}: dropped`);
      }
      q.addUsed(chain, 0);
      return true;
    }
    const parts = this.#parts;
    parts.length = 0;
    const frame = this.backend.vnetHeader
      ? chain.readable
      : sliceParts(chain.readable, NET_HDR_SIZE, frameLen, parts);
    let sent: boolean;
    try {
      sent = this.backend.send(frame);
    } catch (error) {
      parts.length = 0;
      this.stats.txDropped++;
      this.stats.backendErrors++;
      this.#log(
        `queue ${NET_TX_QUEUE}: ${this.backend.description} refused a frame of ${frameLen} bytes: ${describe(error)}`,
      );
      q.addUsed(chain, 0);
      return true;
    }
    parts.length = 0;
    if (!sent) return false;
    this.stats.txPackets++;
    this.stats.txBytes += frameLen;
    q.addUsed(chain, 0);
    return true;
  }

  /** What is wrong with a transmitted frame, or null. */
  #txProblem(hdr: Uint8Array, frameLen: number): string | null {
    if (frameLen < ETH_HLEN) return `a frame of ${frameLen} bytes is shorter than an Ethernet header`;
    if (frameLen > this.#txMax) return `a frame of ${frameLen} bytes is longer than ${this.#txMax}`;
    const n = this.#negotiated;
    const flags = hdr[0]!;
    const gso = hdr[1]!;
    if ((flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0 && !n.hostCsum)
      return 'checksum offload was not negotiated';
    if (gso !== VIRTIO_NET_HDR_GSO_NONE) {
      const type = gso & ~VIRTIO_NET_HDR_GSO_ECN;
      if (
        !(type === VIRTIO_NET_HDR_GSO_TCPV4 && n.hostTso4) &&
        !(type === VIRTIO_NET_HDR_GSO_TCPV6 && n.hostTso6)
      ) {
        return `gso type ${gso} was not negotiated`;
      }
      if ((gso & VIRTIO_NET_HDR_GSO_ECN) !== 0 && !n.hostEcn) return 'gso with ECN was not negotiated';
      if ((flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) === 0) return 'a gso frame without NEEDS_CSUM';
    } else if (frameLen > this.options.mtu + ETH_HLEN + VLAN_HLEN) {
      return `a frame of ${frameLen} bytes without gso is longer than the MTU allows`;
    }
    return null;
  }

  // ---------------------------------------------------------------------------------------------------------

  /**
   * Run a backend control call (a TAP's TUNSETOFFLOAD and TUNSETCARRIER take the kernel's rtnl lock) from the
   * event loop, never inside activate() or setLinkUp(): activate() runs while the transport answers the
   * driver's DRIVER_OK, and Linux's virtio_net waits for that answer holding rtnl; a synchronous call would
   * deadlock until VDUSE's message timeout breaks the device.
   */
  #deferControl(call: () => void): void {
    setImmediate(call);
  }

  /** A malformed chain: stop both queues and ask for a reset. */
  #fail(queue: number, message: string): void {
    this.stats.driverErrors++;
    this.#broken = true;
    this.#setReceiving(false);
    this.#log(`queue ${queue}: ${message}; the device needs a reset`);
    this.#host?.needsReset(new NetDeviceError(`virtio-net queue ${queue}: ${message}`, queue));
  }

  #onBackendFailed(error: Error): void {
    if (this.#backendFailed) return;
    this.#backendFailed = true;
    this.#log(`${this.backend.description} failed: ${describe(error)}; the link is down`);
    this.#receiving = false;
    this.setLinkUp(false);
  }

  #log(message: string): void {
    const logger = this.options.logger;
    if (logger === null || this.#logged >= LOG_LIMIT) return;
    this.#logged++;
    logger.warn(
      `virtio-net: ${message}${this.#logged === LOG_LIMIT ? ' (further messages suppressed)' : ''}`,
    );
  }
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
