/**
 * A virtio-net device on two mock-driver queues (rx 0, tx 1) over one guest memory, with a recording host and
 * helpers to post receive buffers, transmit frames and wait for the device.
 */
import type { DeviceHost } from '../../../src/devices/device.js';
import { VirtioNetDevice, type VirtioNetOptions } from '../../../src/devices/net/index.js';
import { MockDriver, type UsedEntry } from '../../../src/testing/mock-driver.js';
import { encodeVirtioNetHdr, type VirtioNetHdr } from '../../../src/uapi/virtio-net.js';
import type { Virtqueue } from '../../../src/virtio/virtqueue.js';

export class RecordingHost implements DeviceHost {
  configChanges = 0;
  resets: Error[] = [];
  configChanged(): void {
    this.configChanges++;
  }
  needsReset(reason: Error): void {
    this.resets.push(reason);
  }
}

export interface NetHarnessOptions {
  size?: number;
  packed?: boolean;
  /** Feature bits to accept (default: everything offered). */
  features?: (offered: bigint) => bigint;
}

export class NetHarness {
  readonly device: VirtioNetDevice;
  readonly host = new RecordingHost();
  readonly rx: MockDriver;
  readonly tx: MockDriver;
  readonly queues: Virtqueue[];
  readonly features: bigint;
  readonly warnings: string[] = [];

  constructor(options: Omit<VirtioNetOptions, 'logger'>, harness: NetHarnessOptions = {}) {
    this.device = new VirtioNetDevice({ ...options, logger: { warn: (m) => this.warnings.push(m) } });
    const [rx, tx] = MockDriver.createQueues(2, {
      size: harness.size ?? 64,
      packed: harness.packed ?? false,
      eventIdx: true,
      indirect: true,
      memorySize: 16 * 1024 * 1024,
    });
    this.rx = rx!;
    this.tx = tx!;
    this.queues = [this.rx.createDeviceQueue(), this.tx.createDeviceQueue()];
    this.features = harness.features?.(this.device.features) ?? this.device.features;
    this.device.bind(this.host);
    if (!this.device.negotiate(this.features)) throw new Error('features refused');
  }

  activate(): void {
    this.device.activate({ features: this.features, memory: this.rx.memory, queues: this.queues });
  }

  /** Post `count` receive chains of `size` writable bytes (or the given pieces) and kick if the device asks. */
  postRx(count: number, size: number | number[]): void {
    for (let i = 0; i < count; i++) this.rx.addChain({ writable: Array.isArray(size) ? size : [size] });
    if (this.rx.kick()) this.device.queueNotify(0);
  }

  /** Transmit `frame` behind `hdr`, split into pieces of at most `piece` bytes (default one buffer). */
  transmit(frame: Uint8Array, hdr: Partial<VirtioNetHdr> = {}, piece = 0): void {
    const bytes = new Uint8Array(12 + frame.length);
    encodeVirtioNetHdr(hdr, bytes);
    bytes.set(frame, 12);
    this.transmitRaw(bytes, piece);
  }

  transmitRaw(bytes: Uint8Array, piece = 0): void {
    const readable: Uint8Array[] = [];
    if (piece <= 0) readable.push(bytes);
    else for (let o = 0; o < bytes.length; o += piece) readable.push(bytes.slice(o, o + piece));
    this.tx.addChain({ readable });
    if (this.tx.kick()) this.device.queueNotify(1);
  }

  /** Transmit a chain of exactly these readable buffers. */
  transmitParts(readable: Uint8Array[]): void {
    this.tx.addChain({ readable });
    if (this.tx.kick()) this.device.queueNotify(1);
  }

  rxUsed(): UsedEntry[] {
    return this.rx.usedEntries();
  }

  txUsed(): UsedEntry[] {
    return this.tx.usedEntries();
  }
}

/** Let pending setImmediate callbacks (backend notifications, budget continuations) run. */
export async function settle(turns = 5): Promise<void> {
  for (let i = 0; i < turns; i++) await new Promise((r) => setImmediate(r));
}

/** An Ethernet frame of `length` bytes: dst, src, ethertype 0x88b5 (local experimental), then a pattern. */
export function frame(length: number, seed = 1): Uint8Array {
  const f = new Uint8Array(length);
  f.set([0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x88, 0xb5].slice(0, length), 0);
  for (let i = 14; i < length; i++) f[i] = (i * 7 + seed * 13) & 0xff;
  return f;
}
