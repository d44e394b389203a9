/**
 * Test harness: a VirtioBlkDevice driven by MockDrivers (one per queue), plus request builders in the layouts a
 * driver may use, and backends for tests (delayed, checking).
 */
import type { BackendCapabilities, BackendResult, BlockBackend } from '../../../src/backends/backend.js';
import { VirtioBlkDevice } from '../../../src/devices/blk/device.js';
import type { VirtioBlkOptions } from '../../../src/devices/blk/options.js';
import type { DeviceHost } from '../../../src/devices/device.js';
import { MockDriver, type MockChain } from '../../../src/testing/mock-driver.js';
import { heapQueueLog, type QueueLog } from '../../../src/transports/vduse/recovery/state-log.js';
import {
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  encodeVirtioBlkDiscardWriteZeroes,
  encodeVirtioBlkOuthdr,
} from '../../../src/uapi/virtio-blk.js';
import { VIRTIO_F_RING_PACKED, bit } from '../../../src/uapi/virtio-config.js';
import { VRING_DESC_F_NEXT, VRING_DESC_F_WRITE } from '../../../src/uapi/virtio-ring.js';
import type { InflightRecorder, Virtqueue } from '../../../src/virtio/virtqueue.js';

/** How a request is laid out over descriptors. */
export type Layout =
  | 'separate' // header | data... | status (what Linux does)
  | 'merged' // header+data in one readable buffer; data+status in one writable buffer
  | 'fragmented' // the header over two descriptors, data in 512-byte pieces, status alone
  | 'indirect'; // like 'separate', in an indirect table

export interface RequestSpec {
  type: number;
  sector?: number | bigint;
  /** OUT data, or the raw payload after the header (discard segments...). */
  out?: Uint8Array;
  /** Bytes of writable data before the status byte (IN, GET_ID). */
  inLength?: number;
  layout?: Layout;
}

export interface Completion {
  id: number;
  len: number;
  /** The status byte (last byte of the writable part); -1 when the chain had none. */
  status: number;
  /** All writable bytes after completion (data then status). */
  writable: Uint8Array;
}

export interface HarnessOptions extends Partial<VirtioBlkOptions> {
  backend: BlockBackend;
  /** Features the driver accepts (default: all offered). */
  accept?: (offered: bigint) => bigint;
  memorySize?: number;
  /** Ring size the driver sets up (default: the device's maximum, at most 256). */
  ringSize?: number;
  /** An in-flight recorder per queue (the transport passes the queue's state log). */
  inflight?: (queue: number) => InflightRecorder;
}

export class BlkHarness {
  readonly device: VirtioBlkDevice;
  readonly drivers: MockDriver[];
  readonly queues: Virtqueue[];
  readonly features: bigint;
  configChanges = 0;
  /** Why the device needs a reset: host.needsReset() calls and ring errors (onError), as the transport sees them. */
  readonly resetReasons: Error[] = [];
  /** Chains in the order their used entries were read. */
  readonly completionOrder: MockChain[] = [];
  readonly #results = new Map<MockChain, Completion>();

  constructor(options: HarnessOptions) {
    const { accept, memorySize, ringSize, inflight, ...deviceOptions } = options;
    this.device = new VirtioBlkDevice(deviceOptions as VirtioBlkOptions);
    const host: DeviceHost = {
      configChanged: () => void this.configChanges++,
      needsReset: (reason) => void this.resetReasons.push(reason),
    };
    this.device.bind(host);
    this.features = accept ? accept(this.device.features) : this.device.features;
    if (!this.device.negotiate(this.features)) throw new Error('features refused');
    const packed = (this.features & bit(VIRTIO_F_RING_PACKED)) !== 0n;
    this.drivers = MockDriver.createQueues(this.device.numQueues, {
      size: ringSize ?? Math.min(this.device.maxQueueSize, 256),
      packed,
      eventIdx: (this.features & bit(29)) !== 0n,
      indirect: (this.features & bit(28)) !== 0n,
      memorySize: memorySize ?? 8 * 1024 * 1024,
    });
    // Like the transport: a ring error sets DEVICE_NEEDS_RESET.
    this.queues = this.drivers.map((d, i) =>
      d.createDeviceQueue({
        onError: (error) => void this.resetReasons.push(error),
        ...(inflight !== undefined ? { inflight: inflight(i) } : {}),
      }),
    );
    this.device.activate({ features: this.features, memory: this.drivers[0]!.memory, queues: this.queues });
  }

  /** Add a request to queue `q` and kick like a driver. */
  submit(q: number, spec: RequestSpec): MockChain {
    const chain = this.add(q, spec);
    this.kick(q);
    return chain;
  }

  /** Add a request without kicking. */
  add(q: number, spec: RequestSpec): MockChain {
    const driver = this.drivers[q]!;
    const header = encodeVirtioBlkOuthdr({ type: spec.type, ioprio: 0, sector: BigInt(spec.sector ?? 0) });
    const out = spec.out ?? new Uint8Array(0);
    const inLength = spec.inLength ?? 0;
    const layout = spec.layout ?? 'separate';
    const readable: Uint8Array[] = [];
    const writable: (Uint8Array | number)[] = [];
    switch (layout) {
      case 'separate':
      case 'indirect':
        readable.push(header);
        if (out.length > 0) readable.push(out);
        if (inLength > 0) writable.push(inLength);
        writable.push(1);
        break;
      case 'merged': {
        const both = new Uint8Array(16 + out.length);
        both.set(header);
        both.set(out, 16);
        readable.push(both);
        writable.push(inLength + 1);
        break;
      }
      case 'fragmented':
        readable.push(header.subarray(0, 7), header.subarray(7));
        for (let at = 0; at < out.length; at += 512)
          readable.push(out.subarray(at, Math.min(at + 512, out.length)));
        for (let at = 0; at < inLength; at += 512) writable.push(Math.min(512, inLength - at));
        writable.push(1);
        break;
    }
    return driver.addChain({ readable, writable, indirect: layout === 'indirect' });
  }

  kick(q: number): void {
    if (this.drivers[q]!.kick()) this.device.queueNotify(q);
  }

  /** Gather every used entry the device published so far. */
  collect(): void {
    for (const driver of this.drivers) {
      for (const entry of driver.usedEntries()) {
        const chain = entry.chain!;
        this.completionOrder.push(chain);
        const total = chain.writable.reduce((sum, b) => sum + b.len, 0);
        const writable = new Uint8Array(total);
        let at = 0;
        for (const b of chain.writable) {
          writable.set(driver.read(b.addr, b.len), at);
          at += b.len;
        }
        this.#results.set(chain, {
          id: entry.id,
          len: entry.len,
          status: total > 0 ? writable[total - 1]! : -1,
          writable,
        });
      }
    }
  }

  /** Wait until `chain` comes back (the device publishes on setImmediate). */
  async wait(chain: MockChain, timeoutMs = 5000): Promise<Completion> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      this.collect();
      const result = this.#results.get(chain);
      if (result !== undefined) {
        this.#results.delete(chain);
        return result;
      }
      if (Date.now() > deadline) throw new Error(`request ${chain.id} did not complete in ${timeoutMs} ms`);
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  async run(q: number, spec: RequestSpec): Promise<Completion> {
    return this.wait(this.submit(q, spec));
  }

  /** Write `data` at `sector` and check it went OK. */
  async write(sector: number, data: Uint8Array, q = 0): Promise<Completion> {
    return this.run(q, { type: VIRTIO_BLK_T_OUT, sector, out: data });
  }

  /** Read `length` bytes at `sector`; returns the data (status must be OK). */
  async read(sector: number, length: number, q = 0): Promise<Uint8Array> {
    const done = await this.run(q, { type: VIRTIO_BLK_T_IN, sector, inLength: length });
    if (done.status !== 0) throw new Error(`read at sector ${sector} gave status ${done.status}`);
    return done.writable.subarray(0, length);
  }

  /** Let pending immediates and microtasks run. */
  static async idle(turns = 3): Promise<void> {
    for (let i = 0; i < turns; i++) await new Promise((resolve) => setImmediate(resolve));
  }
}

/** The state log of one queue, sized like the transport sizes it: by the device's maximum queue size. */
export function queueLog(maxQueueSize: number): QueueLog {
  return heapQueueLog('blk-test', maxQueueSize);
}

/** Packed: put a 512-byte read (header, data, status) in the ring with buffer id `id`, as a driver could. */
export function pushPackedRequest(drv: MockDriver, id: number, sector = 0): void {
  const header = drv.alloc(16);
  drv.write(header, encodeVirtioBlkOuthdr({ type: VIRTIO_BLK_T_IN, ioprio: 0, sector: BigInt(sector) }));
  drv.pushRaw([
    { addr: header, len: 16, flags: VRING_DESC_F_NEXT, id },
    { addr: drv.alloc(512), len: 512, flags: VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, id },
    { addr: drv.alloc(1), len: 1, flags: VRING_DESC_F_WRITE, id },
  ]);
}

/** A discard / write-zeroes / secure-erase segment list. */
export function segments(
  ...list: { sector: number | bigint; sectors: number; flags?: number }[]
): Uint8Array {
  const out = new Uint8Array(16 * list.length);
  list.forEach((s, i) => {
    out.set(
      encodeVirtioBlkDiscardWriteZeroes({
        sector: BigInt(s.sector),
        num_sectors: s.sectors,
        flags: s.flags ?? 0,
      }),
      16 * i,
    );
  });
  return out;
}

/** Deterministic bytes for a test pattern. */
export function pattern(length: number, seed = 1): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed * 2654435761;
  for (let i = 0; i < length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

/** A backend call as a test backend records it. */
export interface BackendCall {
  op: 'read' | 'write' | 'flush' | 'discard' | 'writeZeroes' | 'secureErase' | 'resize';
  offset: number;
  length: number;
  unmap?: boolean;
}

/**
 * Wraps a backend: records calls, checks every access is inside [0, size) and aligned to `alignment`, and can
 * hold calls back (delay(ms) per call, or gate() until release()).
 */
export class TestBackend implements BlockBackend {
  readonly calls: BackendCall[] = [];
  readonly violations: string[] = [];
  /** Milliseconds to wait before each call completes (a function gets the call). */
  delay: ((call: BackendCall) => number) | null = null;
  /** Make the next calls fail with this error. */
  failWith: Error | null = null;
  /** With holdEach, every call waits here until its release() is called (in any order). */
  holdEach = false;
  readonly held: { call: BackendCall; release: () => void }[] = [];
  #gate: Promise<void> | null = null;
  #open: (() => void) | null = null;
  running = 0;

  readonly #capabilities: BackendCapabilities;

  constructor(
    readonly inner: BlockBackend,
    options: { alignment?: number; capabilities?: Partial<BackendCapabilities> } = {},
  ) {
    this.alignment = options.alignment ?? 512;
    this.#capabilities = { ...inner.capabilities, ...options.capabilities };
  }

  readonly alignment: number;

  get size(): number {
    return this.inner.size;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  get capabilities(): BackendCapabilities {
    return this.#capabilities;
  }

  /** Hold every call until release(). */
  gate(): void {
    this.#gate = new Promise((resolve) => (this.#open = resolve));
  }

  release(): void {
    this.#open?.();
    this.#gate = null;
    this.#open = null;
  }

  read(offset: number, buffers: readonly Uint8Array[]): Promise<void> {
    return this.#call({ op: 'read', offset, length: total(buffers) }, () => this.inner.read(offset, buffers));
  }
  write(offset: number, buffers: readonly Uint8Array[], options?: { fua?: boolean }): Promise<void> {
    return this.#call({ op: 'write', offset, length: total(buffers) }, () =>
      this.inner.write(offset, buffers, options),
    );
  }
  flush(): Promise<void> {
    return this.#call({ op: 'flush', offset: 0, length: 0 }, () => this.inner.flush());
  }
  discard(offset: number, length: number): Promise<void> {
    return this.#call({ op: 'discard', offset, length }, () => this.inner.discard(offset, length));
  }
  writeZeroes(offset: number, length: number, options?: { unmap?: boolean }): Promise<void> {
    return this.#call({ op: 'writeZeroes', offset, length, unmap: options?.unmap ?? false }, () =>
      this.inner.writeZeroes(offset, length, options),
    );
  }
  secureErase(offset: number, length: number): Promise<void> {
    return this.#call({ op: 'secureErase', offset, length }, () => this.inner.secureErase!(offset, length));
  }
  resize(size: number): Promise<void> {
    return this.#call({ op: 'resize', offset: size, length: 0 }, () => this.inner.resize!(size));
  }
  close(): Promise<void> {
    return this.inner.close();
  }

  async #call(call: BackendCall, run: () => BackendResult): Promise<void> {
    this.calls.push(call);
    if (call.op !== 'flush' && call.op !== 'resize') {
      if (call.offset < 0 || call.length < 0 || call.offset + call.length > this.inner.size) {
        this.violations.push(
          `${call.op} [${call.offset}, ${call.offset + call.length}) outside [0, ${this.size})`,
        );
      }
      if (call.offset % this.alignment !== 0 || call.length % this.alignment !== 0) {
        this.violations.push(
          `${call.op} at ${call.offset} length ${call.length} not aligned to ${this.alignment}`,
        );
      }
      if (this.readOnly && call.op !== 'read') this.violations.push(`${call.op} on a read-only backend`);
    }
    this.running++;
    try {
      if (this.#gate !== null) await this.#gate;
      if (this.holdEach) await new Promise<void>((release) => this.held.push({ call, release }));
      const ms = this.delay?.(call) ?? 0;
      if (ms > 0) await new Promise((resolve) => setTimeout(resolve, ms));
      if (this.failWith !== null) throw this.failWith;
      await run();
    } finally {
      this.running--;
    }
  }
}

function total(buffers: readonly Uint8Array[]): number {
  let sum = 0;
  for (const b of buffers) sum += b.length;
  return sum;
}
