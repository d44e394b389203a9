/**
 * VhostVdpaDriver: a userspace vhost-vdpa driver, i.e. the part of a VMM that drives /dev/vhost-vdpa-N, with the
 * MockDriver's ring code standing in for the guest. It exists to carry requests over the VM path of a VDUSE
 * device without a VM: the buffers live in this process's memfd (SharedGuestMemory), the device reaches them
 * through the IOTLB (vhost_msg_v2 writes), kicks and interrupts are eventfds.
 *
 * Every call that reaches a VDUSE device's daemon (SET_STATUS, IOTLB changes, GET_VRING_BASE) is synchronous:
 * the kernel waits for the daemon's answer. So this driver must never run on the daemon's own thread; run it in
 * another process (a test that spawns the daemon, a script).
 *
 * ```ts
 * const drv = VhostVdpaDriver.open('/dev/vhost-vdpa-0');
 * const features = drv.negotiate(wanted);              // reset, ACK, DRIVER, features, FEATURES_OK
 * drv.allocMemory(16 << 20);                           // memfd, mapped MAP_SHARED; IOTLB update (batched)
 * const [q0] = drv.setupQueues({ count: 1, size: 128, packed: false, eventIdx: true });
 * drv.driverOk();
 * // ... q0.driver.addChain(...); q0.notify(); ... q0.driver.usedEntries() ...
 * const bases = drv.stop();                            // GET_VRING_BASE per queue, then reset
 * drv.close();
 * ```
 */
import { closeSync, openSync } from 'node:fs';

import { VduseTsError } from '../../common/errors.js';
import {
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  UV_READABLE,
  type FdWatcher,
  type SysBinding,
} from '../../sys/binding.js';
import { loadNativeBinding } from '../../sys/native.js';
import { decodeStruct, encodeStruct, viewOf } from '../../uapi/layout.js';
import {
  VHOST_ACCESS_RW,
  VHOST_BACKEND_F_IOTLB_BATCH,
  VHOST_BACKEND_F_IOTLB_MSG_V2,
  VHOST_GET_BACKEND_FEATURES,
  VHOST_GET_FEATURES,
  VHOST_GET_VRING_BASE,
  VHOST_IOTLB_BATCH_BEGIN,
  VHOST_IOTLB_BATCH_END,
  VHOST_IOTLB_INVALIDATE,
  VHOST_IOTLB_UPDATE,
  VHOST_SET_BACKEND_FEATURES,
  VHOST_SET_FEATURES,
  VHOST_SET_OWNER,
  VHOST_SET_VRING_ADDR,
  VHOST_SET_VRING_BASE,
  VHOST_SET_VRING_CALL,
  VHOST_SET_VRING_KICK,
  VHOST_SET_VRING_NUM,
  VHOST_VDPA_CONFIG_BUF_OFFSET,
  VHOST_VDPA_GET_CONFIG,
  VHOST_VDPA_GET_CONFIG_SIZE,
  VHOST_VDPA_GET_DEVICE_ID,
  VHOST_VDPA_GET_IOVA_RANGE,
  VHOST_VDPA_GET_STATUS,
  VHOST_VDPA_GET_VQS_COUNT,
  VHOST_VDPA_GET_VRING_NUM,
  VHOST_VDPA_SET_CONFIG_CALL,
  VHOST_VDPA_SET_STATUS,
  VHOST_VDPA_SET_VRING_ENABLE,
  encodeVhostMsgV2,
  vhost_vdpa_config,
  vhost_vdpa_iova_range,
  vhost_vring_addr,
  vhost_vring_file,
  vhost_vring_state,
} from '../../uapi/vhost.js';
import {
  VIRTIO_CONFIG_S_ACKNOWLEDGE,
  VIRTIO_CONFIG_S_DRIVER,
  VIRTIO_CONFIG_S_DRIVER_OK,
  VIRTIO_CONFIG_S_FEATURES_OK,
  VIRTIO_F_ACCESS_PLATFORM,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
} from '../../uapi/virtio-config.js';
import { MockDriver } from '../mock-driver.js';
import { SharedGuestMemory, type MemoryHost } from './shared-memory.js';

/** A step of the vhost-vdpa protocol failed (the kernel refused, or the device did not keep a status). */
export class VhostVdpaError extends VduseTsError {
  constructor(message: string, options: { cause?: unknown; code?: string } = {}) {
    super(options.code ?? 'ERR_TESTING_VHOST_VDPA', message, options);
  }
}

/** The backend features this driver needs: IOTLB messages v2, batched. */
export const VHOST_VDPA_BACKEND_FEATURES =
  (1n << BigInt(VHOST_BACKEND_F_IOTLB_MSG_V2)) | (1n << BigInt(VHOST_BACKEND_F_IOTLB_BATCH));

/** The VHOST_SET_VRING_BASE value of a fresh queue: 0 (split), or both wrap counters 1 (packed). */
export function initialVringBase(packed: boolean): number {
  return packed ? 0x8000_8000 : 0;
}

export interface QueueSetup {
  /** Queues 0..count-1 are set up and enabled. */
  count: number;
  size: number;
  packed?: boolean;
  eventIdx?: boolean;
  indirect?: boolean;
  /** VHOST_SET_VRING_BASE per queue (default initialVringBase). */
  bases?: readonly number[];
  /**
   * The rings to use, one MockDriver per queue (a restart: the guest keeps its rings and positions); default:
   * new ones from the driver's memory.
   */
  drivers?: readonly MockDriver[];
  /** Override the ring addresses given to VHOST_SET_VRING_ADDR (fault injection). */
  addr?: (
    index: number,
    a: { desc: number; avail: number; used: number },
  ) => {
    desc: number;
    avail: number;
    used: number;
  };
}

/** One set-up queue: its rings (a MockDriver over the shared memory), kick and call eventfds. */
export class VhostQueue {
  #watcher: FdWatcher | null = null;

  constructor(
    readonly index: number,
    readonly driver: MockDriver,
    readonly kickFd: number,
    readonly callFd: number,
    private readonly binding: SysBinding,
    private readonly closeFd: (fd: number) => void = closeSync,
  ) {}

  /** Publish staged chains and kick the device if its suppression asks for it; true when kicked. */
  notify(): boolean {
    if (!this.driver.kick()) return false;
    this.binding.eventfdWrite(this.kickFd, 1);
    return true;
  }

  /** Kick regardless of suppression (after publish). */
  forceKick(): void {
    this.driver.publish();
    this.binding.eventfdWrite(this.kickFd, 1);
  }

  /** Read and clear the call eventfd; the number of interrupts since the last call (0 if none). */
  takeCalls(): number {
    const n = this.binding.eventfdRead(this.callFd);
    return n < 0 ? 0 : n;
  }

  /** Run `onCall` on the event loop whenever the device interrupts (the call eventfd is drained first). */
  watchCalls(onCall: () => void): void {
    this.#watcher?.close();
    this.#watcher = this.binding.createFdWatcher(this.callFd, (status) => {
      if (status < 0) return;
      this.takeCalls();
      onCall();
    });
    this.#watcher.start(UV_READABLE);
  }

  unwatch(): void {
    this.#watcher?.close();
    this.#watcher = null;
  }

  close(): void {
    this.unwatch();
    this.closeFd(this.kickFd);
    this.closeFd(this.callFd);
  }
}

export interface VhostVdpaOpenOptions {
  binding?: SysBinding;
  /**
   * How files are opened and closed and mappings found (default: fs and /proc/self/maps); unit tests pass a
   * FakeBinding's device fd and close().
   */
  host?: MemoryHost & { open(path: string): number };
}

export class VhostVdpaDriver {
  readonly deviceId: number;
  readonly vqCount: number;
  /** Largest queue size the device takes (VHOST_VDPA_GET_VRING_NUM). */
  readonly maxQueueSize: number;
  readonly configSize: number;
  readonly backendFeatures: bigint;
  /** IOVAs the device accepts, inclusive. */
  readonly iovaRange: { first: bigint; last: bigint };
  /** Features offered by the device (VHOST_GET_FEATURES at open). */
  readonly deviceFeatures: bigint;
  /** What negotiate() settled on. */
  features = 0n;
  memory: SharedGuestMemory | null = null;
  queues: VhostQueue[] = [];
  #configCallFd = -1;
  #closed = false;

  readonly #host: (MemoryHost & { open(path: string): number }) | undefined;
  readonly #closeFd: (fd: number) => void;

  private constructor(
    readonly path: string,
    readonly fd: number,
    readonly binding: SysBinding,
    host: (MemoryHost & { open(path: string): number }) | undefined,
  ) {
    this.#host = host;
    this.#closeFd = host === undefined ? closeSync : (fd) => host.closeFd(fd);
    // open() already reset the device (SET_STATUS 0 to the daemon).
    this.#ioctl('VHOST_SET_OWNER', VHOST_SET_OWNER, 0);
    const offered = this.#getU64('VHOST_GET_BACKEND_FEATURES', VHOST_GET_BACKEND_FEATURES);
    if ((offered & VHOST_VDPA_BACKEND_FEATURES) !== VHOST_VDPA_BACKEND_FEATURES) {
      throw new VhostVdpaError(
        `${path} lacks IOTLB_MSG_V2 + IOTLB_BATCH (backend features 0x${offered.toString(16)})`,
      );
    }
    this.#setU64('VHOST_SET_BACKEND_FEATURES', VHOST_SET_BACKEND_FEATURES, VHOST_VDPA_BACKEND_FEATURES);
    this.backendFeatures = VHOST_VDPA_BACKEND_FEATURES;
    this.deviceId = this.#getU32('VHOST_VDPA_GET_DEVICE_ID', VHOST_VDPA_GET_DEVICE_ID);
    this.vqCount = this.#getU32('VHOST_VDPA_GET_VQS_COUNT', VHOST_VDPA_GET_VQS_COUNT);
    this.configSize = this.#getU32('VHOST_VDPA_GET_CONFIG_SIZE', VHOST_VDPA_GET_CONFIG_SIZE);
    const num = new Uint8Array(2);
    this.#ioctl('VHOST_VDPA_GET_VRING_NUM', VHOST_VDPA_GET_VRING_NUM, num);
    this.maxQueueSize = viewOf(num).getUint16(0, true);
    const range = new Uint8Array(vhost_vdpa_iova_range.size);
    this.#ioctl('VHOST_VDPA_GET_IOVA_RANGE', VHOST_VDPA_GET_IOVA_RANGE, range);
    this.iovaRange = decodeStruct(vhost_vdpa_iova_range, range);
    this.deviceFeatures = this.#getU64('VHOST_GET_FEATURES', VHOST_GET_FEATURES);
  }

  /** Open /dev/vhost-vdpa-N, take ownership and set the backend features. */
  static open(path: string, options: VhostVdpaOpenOptions = {}): VhostVdpaDriver {
    const binding = options.binding ?? loadNativeBinding();
    const host = options.host;
    const fd = host === undefined ? openSync(path, 'r+') : host.open(path);
    try {
      return new VhostVdpaDriver(path, fd, binding, host);
    } catch (e) {
      if (host === undefined) closeSync(fd);
      else host.closeFd(fd);
      throw e;
    }
  }

  // ---- status, features, config ----

  getStatus(): number {
    const b = new Uint8Array(1);
    this.#ioctl('VHOST_VDPA_GET_STATUS', VHOST_VDPA_GET_STATUS, b);
    return b[0] as number;
  }

  /** VHOST_VDPA_SET_STATUS, then the status as the device kept it (VDUSE keeps it only if the daemon agreed). */
  setStatus(status: number): number {
    this.#ioctl('VHOST_VDPA_SET_STATUS', VHOST_VDPA_SET_STATUS, Uint8Array.of(status & 0xff));
    return this.getStatus();
  }

  /** Reset the device (status 0; the daemon stops its data path). */
  reset(): void {
    this.setStatus(0);
  }

  /**
   * Reset, ACKNOWLEDGE, DRIVER, then features = offered & wanted (VERSION_1 and ACCESS_PLATFORM always), and
   * FEATURES_OK, checked. Returns the negotiated features.
   */
  negotiate(wanted: bigint): bigint {
    const must = (1n << BigInt(VIRTIO_F_VERSION_1)) | (1n << BigInt(VIRTIO_F_ACCESS_PLATFORM));
    if ((this.deviceFeatures & must) !== must) {
      throw new VhostVdpaError(
        `device offers 0x${this.deviceFeatures.toString(16)}: no VERSION_1 + ACCESS_PLATFORM`,
      );
    }
    this.reset();
    this.setStatus(VIRTIO_CONFIG_S_ACKNOWLEDGE);
    this.setStatus(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
    const features = this.deviceFeatures & (wanted | must);
    this.#setU64('VHOST_SET_FEATURES', VHOST_SET_FEATURES, features);
    const s = this.setStatus(
      VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
    );
    if ((s & VIRTIO_CONFIG_S_FEATURES_OK) === 0) {
      throw new VhostVdpaError(`the device did not accept features 0x${features.toString(16)}`);
    }
    this.features = features;
    return features;
  }

  has(bit: number): boolean {
    return (this.features & (1n << BigInt(bit))) !== 0n;
  }

  /** VHOST_VDPA_GET_CONFIG of [off, off + len). */
  getConfig(off = 0, len = this.configSize): Uint8Array {
    const b = new Uint8Array(VHOST_VDPA_CONFIG_BUF_OFFSET + len);
    encodeStruct(vhost_vdpa_config, { off, len }, b);
    this.#ioctl('VHOST_VDPA_GET_CONFIG', VHOST_VDPA_GET_CONFIG, b);
    return b.slice(VHOST_VDPA_CONFIG_BUF_OFFSET);
  }

  /** An eventfd signalled on every config interrupt (VHOST_VDPA_SET_CONFIG_CALL); created once. */
  configCall(): number {
    if (this.#configCallFd < 0) {
      const fd = this.binding.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      const b = new Uint8Array(4);
      viewOf(b).setInt32(0, fd, true);
      try {
        this.#ioctl('VHOST_VDPA_SET_CONFIG_CALL', VHOST_VDPA_SET_CONFIG_CALL, b);
      } catch (e) {
        this.#closeFd(fd);
        throw e;
      }
      this.#configCallFd = fd;
    }
    return this.#configCallFd;
  }

  // ---- IOTLB ----

  /** Write one IOTLB message (VDUSE: an UPDATE/INVALIDATE outside a batch, or BATCH_END, reaches the daemon). */
  iotlbMessage(iotlbType: number, iova = 0, size = 0, uaddr = 0, perm = 0): void {
    const msg = encodeVhostMsgV2({ asid: 0, iova, size, uaddr, perm, iotlb_type: iotlbType });
    let n: number;
    try {
      n = this.binding.write(this.fd, msg);
    } catch (e) {
      throw new VhostVdpaError(
        `IOTLB message type ${iotlbType} [0x${iova.toString(16)}, +${size}): ${String(e)}`,
        {
          cause: e,
        },
      );
    }
    if (n !== msg.length) throw new VhostVdpaError(`IOTLB message: short write (${n} of ${msg.length})`);
  }

  iotlbUpdate(iova: number, size: number, uaddr: number, perm = VHOST_ACCESS_RW): void {
    this.iotlbMessage(VHOST_IOTLB_UPDATE, iova, size, uaddr, perm);
  }

  iotlbInvalidate(iova: number, size: number): void {
    this.iotlbMessage(VHOST_IOTLB_INVALIDATE, iova, size);
  }

  /** Run `fn` (IOTLB updates/invalidations) inside BATCH_BEGIN / BATCH_END: one UPDATE_IOTLB for the daemon. */
  iotlbBatch(fn: () => void): void {
    this.iotlbMessage(VHOST_IOTLB_BATCH_BEGIN);
    try {
      fn();
    } finally {
      this.iotlbMessage(VHOST_IOTLB_BATCH_END);
    }
  }

  /**
   * Create the guest memory: `size` bytes of memfd at IOVA `iova` (default 1 GiB, inside the device's range),
   * and map all of it (or only [mapOffset, mapOffset + mapSize), for fault injection) in one batch.
   */
  allocMemory(
    size: number,
    options: { iova?: number; mapOffset?: number; mapSize?: number } = {},
  ): SharedGuestMemory {
    if (this.memory !== null) throw new VhostVdpaError('memory is already allocated');
    const iova = options.iova ?? 0x4000_0000;
    if (BigInt(iova) < this.iovaRange.first || BigInt(iova + size - 1) > this.iovaRange.last) {
      throw new VhostVdpaError(
        `IOVA range [0x${iova.toString(16)}, +${size}) is outside the device's ` +
          `[0x${this.iovaRange.first.toString(16)}, 0x${this.iovaRange.last.toString(16)}]`,
      );
    }
    const mem = new SharedGuestMemory(this.binding, {
      size,
      iova,
      ...(this.#host !== undefined ? { host: this.#host } : {}),
    });
    this.memory = mem;
    const off = options.mapOffset ?? 0;
    const len = options.mapSize ?? mem.size - off;
    this.iotlbBatch(() => this.iotlbUpdate(iova + off, len, mem.uaddrOf(iova + off)));
    return mem;
  }

  /** (Re)map the whole memory at its IOVA, in one batch: invalidate first when `invalidate`. */
  mapMemory(invalidate = false): void {
    const mem = this.#mem();
    this.iotlbBatch(() => {
      if (invalidate) this.iotlbInvalidate(mem.iova, mem.size);
      this.iotlbUpdate(mem.iova, mem.size, mem.uaddrOf(mem.iova));
    });
  }

  // ---- queues ----

  /** Queue sizes, ring addresses, bases, kick/call eventfds and enable for queues 0..count-1. */
  setupQueues(setup: QueueSetup): VhostQueue[] {
    const mem = this.#mem();
    const packed = setup.packed ?? this.has(VIRTIO_F_RING_PACKED);
    if (setup.count < 1 || setup.count > this.vqCount) {
      throw new VhostVdpaError(`${setup.count} queues asked, the device has ${this.vqCount}`);
    }
    for (const q of this.queues) q.close();
    this.queues = [];
    for (let i = 0; i < setup.count; i++) {
      const drv =
        setup.drivers?.[i] ??
        new MockDriver({
          size: setup.size,
          packed,
          eventIdx: setup.eventIdx ?? false,
          indirect: setup.indirect ?? false,
          index: i,
          allocator: mem.allocator,
        });
      const c = drv.config;
      this.#setState('VHOST_SET_VRING_NUM', VHOST_SET_VRING_NUM, i, drv.size);
      let a = { desc: c.descAddr, avail: c.driverAddr, used: c.deviceAddr };
      if (setup.addr !== undefined) a = setup.addr(i, a);
      this.#ioctl(
        'VHOST_SET_VRING_ADDR',
        VHOST_SET_VRING_ADDR,
        encodeStruct(vhost_vring_addr, {
          index: i,
          flags: 0,
          desc_user_addr: a.desc,
          used_user_addr: a.used,
          avail_user_addr: a.avail,
          log_guest_addr: 0,
        }),
      );
      this.#setState(
        'VHOST_SET_VRING_BASE',
        VHOST_SET_VRING_BASE,
        i,
        setup.bases?.[i] ?? initialVringBase(packed),
      );
      const kick = this.binding.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      const call = this.binding.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      const q = new VhostQueue(i, drv, kick, call, this.binding, this.#closeFd);
      this.queues.push(q);
      this.#ioctl(
        'VHOST_SET_VRING_KICK',
        VHOST_SET_VRING_KICK,
        encodeStruct(vhost_vring_file, { index: i, fd: kick }),
      );
      this.#ioctl(
        'VHOST_SET_VRING_CALL',
        VHOST_SET_VRING_CALL,
        encodeStruct(vhost_vring_file, { index: i, fd: call }),
      );
      this.#setState('VHOST_VDPA_SET_VRING_ENABLE', VHOST_VDPA_SET_VRING_ENABLE, i, 1);
    }
    return this.queues;
  }

  /** Set DRIVER_OK; returns the status the device kept. Throws when it did not keep DRIVER_OK (unless `check` false). */
  driverOk(check = true): number {
    const s = this.setStatus(
      VIRTIO_CONFIG_S_ACKNOWLEDGE |
        VIRTIO_CONFIG_S_DRIVER |
        VIRTIO_CONFIG_S_FEATURES_OK |
        VIRTIO_CONFIG_S_DRIVER_OK,
    );
    if (check && (s & VIRTIO_CONFIG_S_DRIVER_OK) === 0) {
      throw new VhostVdpaError(`the device did not keep DRIVER_OK (status 0x${s.toString(16)})`, {
        code: 'ERR_TESTING_VHOST_VDPA_DRIVER_OK',
      });
    }
    return s;
  }

  /** VHOST_GET_VRING_BASE (VDUSE: GET_VQ_STATE to the daemon). Split: avail index; packed: avail | used << 16. */
  getVringBase(index: number): number {
    const b = encodeStruct(vhost_vring_state, { index, num: 0 });
    this.#ioctl('VHOST_GET_VRING_BASE', VHOST_GET_VRING_BASE, b);
    return decodeStruct(vhost_vring_state, b).num;
  }

  /** Stop as a VMM does: GET_VRING_BASE of every queue, then reset. Returns the bases. */
  stop(): number[] {
    const bases = this.queues.map((q) => this.getVringBase(q.index));
    this.reset();
    return bases;
  }

  /** Close everything (closing the fd resets the device). The memory is unmapped too unless `keepMemory`. */
  close(keepMemory = false): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const q of this.queues) q.close();
    this.queues = [];
    this.#closeFd(this.fd);
    if (this.#configCallFd >= 0) this.#closeFd(this.#configCallFd);
    if (!keepMemory) this.memory?.close();
  }

  /** Adopt memory from an earlier driver (a restart): remember it and map it. */
  adoptMemory(mem: SharedGuestMemory): void {
    if (this.memory !== null) throw new VhostVdpaError('memory is already allocated');
    this.memory = mem;
    this.mapMemory();
  }

  // ---- internals ----

  #mem(): SharedGuestMemory {
    if (this.memory === null) throw new VhostVdpaError('no memory: call allocMemory() first');
    return this.memory;
  }

  #ioctl(name: string, request: number, arg: Uint8Array | number): number {
    try {
      return this.binding.ioctl(this.fd, request, arg);
    } catch (e) {
      const errno = (e as { code?: string }).code;
      throw new VhostVdpaError(`${name} on ${this.path}: ${errno ?? String(e)}`, { cause: e });
    }
  }

  #setState(name: string, request: number, index: number, num: number): void {
    this.#ioctl(name, request, encodeStruct(vhost_vring_state, { index, num }));
  }

  #getU32(name: string, request: number): number {
    const b = new Uint8Array(4);
    this.#ioctl(name, request, b);
    return viewOf(b).getUint32(0, true);
  }

  #getU64(name: string, request: number): bigint {
    const b = new Uint8Array(8);
    this.#ioctl(name, request, b);
    return viewOf(b).getBigUint64(0, true);
  }

  #setU64(name: string, request: number, value: bigint): void {
    const b = new Uint8Array(8);
    viewOf(b).setBigUint64(0, value, true);
    this.#ioctl(name, request, b);
  }
}
