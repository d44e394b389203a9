/**
 * VhostUserFrontend: a small userspace VMM for tests of a vhost-user back-end. It speaks the front-end side of
 * the protocol over a Unix socket (a socketpair end, or a path), keeps "guest RAM" in a memfd it shares with
 * SET_MEM_TABLE (SharedGuestMemory from ../vhost-vdpa: guest-physical addresses for descriptors, this process's
 * user addresses for the rings, as QEMU does), sets up split rings with the MockDriver, gives kick and call
 * eventfds, and hands back VhostQueues that BlkClient (../vhost-vdpa/blk.ts) sends virtio-blk requests over.
 *
 * ```ts
 * const [ours, theirs] = binding.socketPair();
 * backend.attach(theirs);
 * const vmm = new VhostUserFrontend(binding, ours);
 * await vmm.negotiate();
 * await vmm.setMemory(new SharedGuestMemory(binding, { size: 8 << 20, iova: 0x100000 }));
 * const queues = await vmm.setupQueues({ count: 2, size: 128 });
 * const blk = new BlkClient(queues);
 * await blk.write(0, data);
 * ```
 */
import { closeSync } from 'node:fs';

import { VduseTsError } from '../../common/errors.js';
import {
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  UV_READABLE,
  type FdWatcher,
  type SysBinding,
} from '../../sys/binding.js';
import { MessageReader, type VhostUserMessage } from '../../transports/vhost-user/protocol.js';
import {
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_USER_HEADER_SIZE,
  VHOST_USER_MAX_PAYLOAD,
  VHOST_USER_NEED_REPLY_MASK,
  VHOST_USER_VERSION,
  VhostUserProtocolFeature as PF,
  VhostUserRequest as R,
  decodeConfig,
  decodeInflight,
  decodePayloadU64,
  decodeVringState,
  encodeConfig,
  encodeInflight,
  encodeMemoryTable,
  encodeMessage,
  encodePayloadU64,
  encodeVringAddr,
  encodeVringState,
  type InflightPayload,
} from '../../uapi/vhost-user.js';
import { MockDriver } from '../mock-driver.js';
import { VhostQueue } from '../vhost-vdpa/driver.js';
import type { SharedGuestMemory } from '../vhost-vdpa/shared-memory.js';

export class VhostUserFrontendError extends VduseTsError {
  constructor(message: string) {
    super('ERR_TESTING_VHOST_USER', message);
  }
}

export interface FrontendQueueSetup {
  count: number;
  size: number;
  /** Default: whether EVENT_IDX (bit 29) was negotiated. */
  eventIdx?: boolean;
  indirect?: boolean;
  /** SET_VRING_BASE per ring (default 0). */
  bases?: readonly number[];
  /** The rings to use (a restart: the guest keeps its rings); default new ones in the memory. */
  drivers?: readonly MockDriver[];
  /** Override the user addresses sent with SET_VRING_ADDR (fault injection). */
  addr?: (
    index: number,
    a: { desc: number; avail: number; used: number },
  ) => { desc: number; avail: number; used: number };
}

/** What a VMM typically asks for (QEMU 7.2's vhost-user-blk). */
export const FRONTEND_PROTOCOL_FEATURES =
  (1n << BigInt(PF.MQ)) |
  (1n << BigInt(PF.REPLY_ACK)) |
  (1n << BigInt(PF.BACKEND_REQ)) |
  (1n << BigInt(PF.CONFIG)) |
  (1n << BigInt(PF.INFLIGHT_SHMFD));

export class VhostUserFrontend {
  readonly binding: SysBinding;
  readonly fd: number;
  deviceFeatures = 0n;
  features = 0n;
  protocolFeatures = 0n;
  queueNum = 1;
  memory: SharedGuestMemory | null = null;
  queues: VhostQueue[] = [];
  /** CONFIG_CHANGE_MSG received on the backend channel. */
  configChanges = 0;
  /** The back-end closed the connection. */
  closedByPeer = false;
  readonly #watcher: FdWatcher;
  readonly #reader: MessageReader;
  readonly #buf = new Uint8Array(VHOST_USER_HEADER_SIZE + VHOST_USER_MAX_PAYLOAD);
  readonly #closeFd: (fd: number) => void;
  #waiters: { resolve: (m: VhostUserMessage) => void; reject: (e: Error) => void }[] = [];
  #replies: VhostUserMessage[] = [];
  #backend: { ours: number; watcher: FdWatcher } | null = null;
  #closed = false;

  constructor(binding: SysBinding, fd: number, closeFd: (fd: number) => void = closeSync) {
    this.binding = binding;
    this.fd = fd;
    this.#closeFd = closeFd;
    this.#reader = new MessageReader(closeFd);
    this.#watcher = binding.createFdWatcher(fd, () => this.#onReadable());
    this.#watcher.start(UV_READABLE);
  }

  /** Connect to a back-end listening on `path`. */
  static connect(binding: SysBinding, path: string): VhostUserFrontend {
    return new VhostUserFrontend(binding, binding.unixConnect(path));
  }

  has(feature: number): boolean {
    return (this.protocolFeatures & (1n << BigInt(feature))) !== 0n;
  }

  /** Send a message (no wait). */
  send(
    request: number,
    payload: Uint8Array = new Uint8Array(0),
    fds: readonly number[] = [],
    flags = VHOST_USER_VERSION,
  ): void {
    this.sendRaw(encodeMessage(request, flags, payload), fds);
  }

  /** Send raw bytes (hostile tests). */
  sendRaw(bytes: Uint8Array, fds: readonly number[] = []): void {
    const n = this.binding.sendmsg(this.fd, bytes, fds);
    if (n !== bytes.length) throw new VhostUserFrontendError(`short send (${n} of ${bytes.length})`);
  }

  /** Send and wait for the reply. */
  async call(
    request: number,
    payload?: Uint8Array,
    fds?: readonly number[],
    flags = VHOST_USER_VERSION,
  ): Promise<VhostUserMessage> {
    this.send(request, payload, fds, flags);
    const reply = await this.nextReply();
    if (reply.header.request !== request)
      throw new VhostUserFrontendError(`reply to request ${reply.header.request}, expected ${request}`);
    return reply;
  }

  /** Send with NEED_REPLY when REPLY_ACK was negotiated and check the ack (0 = success). */
  async acked(request: number, payload?: Uint8Array, fds?: readonly number[]): Promise<bigint> {
    if (!this.has(PF.REPLY_ACK)) {
      this.send(request, payload, fds);
      return 0n;
    }
    const reply = await this.call(request, payload, fds, VHOST_USER_VERSION | VHOST_USER_NEED_REPLY_MASK);
    return decodePayloadU64(reply.payload);
  }

  /** The next reply, or a rejection when the back-end disconnects. */
  nextReply(): Promise<VhostUserMessage> {
    const queued = this.#replies.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    if (this.closedByPeer)
      return Promise.reject(new VhostUserFrontendError('the back-end closed the connection'));
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  /** Resolves when the back-end has closed the connection. */
  async waitClosed(ms = 5000): Promise<void> {
    const deadline = Date.now() + ms;
    while (!this.closedByPeer) {
      if (Date.now() > deadline) throw new VhostUserFrontendError('the back-end did not disconnect');
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  /** GET_FEATURES, GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, SET_OWNER, SET_FEATURES (as QEMU does them). */
  async negotiate(options: { protocolFeatures?: bigint; features?: bigint } = {}): Promise<void> {
    this.deviceFeatures = decodePayloadU64((await this.call(R.GET_FEATURES)).payload);
    if ((this.deviceFeatures & (1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES))) === 0n)
      throw new VhostUserFrontendError('the back-end offers no PROTOCOL_FEATURES');
    const offered = decodePayloadU64((await this.call(R.GET_PROTOCOL_FEATURES)).payload);
    this.protocolFeatures = offered & (options.protocolFeatures ?? FRONTEND_PROTOCOL_FEATURES);
    this.send(R.SET_PROTOCOL_FEATURES, encodePayloadU64(this.protocolFeatures));
    if (this.has(PF.MQ)) this.queueNum = Number(decodePayloadU64((await this.call(R.GET_QUEUE_NUM)).payload));
    this.send(R.SET_OWNER);
    this.features = this.deviceFeatures & (options.features ?? this.deviceFeatures);
    const ack = await this.acked(R.SET_FEATURES, encodePayloadU64(this.features));
    if (ack !== 0n) throw new VhostUserFrontendError(`SET_FEATURES refused (${ack})`);
  }

  /** GET_CONFIG of `size` bytes at `offset`. */
  async getConfig(offset: number, size: number): Promise<Uint8Array> {
    const reply = await this.call(
      R.GET_CONFIG,
      encodeConfig({ offset, size, flags: 0, data: new Uint8Array(size) }),
    );
    return decodeConfig(reply.payload).data;
  }

  /** SET_MEM_TABLE with one region: the whole shared memory (guest-physical at its iova). */
  async setMemory(memory: SharedGuestMemory): Promise<bigint> {
    this.memory = memory;
    const m = memory.mapping;
    const table = encodeMemoryTable([
      {
        guestPhysAddr: BigInt(memory.iova),
        memorySize: BigInt(memory.size),
        userspaceAddr: BigInt(m.uaddr),
        mmapOffset: 0n,
      },
    ]);
    return this.acked(R.SET_MEM_TABLE, table, [m.fd]);
  }

  /** GET_INFLIGHT_FD: the back-end's region (fd and its payload; the fd is the caller's). */
  async getInflight(numQueues: number, queueSize: number): Promise<{ fd: number; payload: InflightPayload }> {
    const reply = await this.call(
      R.GET_INFLIGHT_FD,
      encodeInflight({ mmapSize: 0n, mmapOffset: 0n, numQueues, queueSize }),
    );
    const fd = reply.fds[0];
    if (fd === undefined) throw new VhostUserFrontendError('GET_INFLIGHT_FD came without an fd');
    return { fd, payload: decodeInflight(reply.payload) };
  }

  /** SET_INFLIGHT_FD (after a reconnect: the region the previous back-end filled). */
  setInflight(fd: number, payload: InflightPayload): Promise<bigint> {
    return this.acked(R.SET_INFLIGHT_FD, encodeInflight(payload), [fd]);
  }

  /** SET_BACKEND_REQ_FD: a socketpair whose other end receives the back-end's requests (CONFIG_CHANGE_MSG). */
  async openBackendChannel(): Promise<bigint> {
    const [ours, theirs] = this.binding.socketPair();
    const reader = new MessageReader(this.#closeFd);
    const buf = new Uint8Array(VHOST_USER_HEADER_SIZE + VHOST_USER_MAX_PAYLOAD);
    const watcher = this.binding.createFdWatcher(ours, () => {
      for (;;) {
        const got = this.binding.recvmsg(ours, buf.subarray(0, reader.wanted), 8);
        if (got === -1 || got.bytes === 0) return;
        for (const m of reader.feed(buf.subarray(0, got.bytes), got.fds)) {
          if (m.header.request === 2) this.configChanges++;
          m.fds.forEach((fd) => this.#closeFd(fd));
        }
      }
    });
    watcher.start(UV_READABLE);
    this.#backend = { ours, watcher };
    try {
      return await this.acked(R.SET_BACKEND_REQ_FD, new Uint8Array(0), [theirs]);
    } finally {
      this.#closeFd(theirs);
    }
  }

  /** Per ring: NUM, BASE, ADDR (user addresses), KICK, CALL, then ENABLE each. */
  async setupQueues(setup: FrontendQueueSetup): Promise<VhostQueue[]> {
    const mem = this.memory;
    if (mem === null) throw new VhostUserFrontendError('setMemory first');
    for (const q of this.queues) q.close();
    this.queues = [];
    for (let i = 0; i < setup.count; i++) {
      const drv =
        setup.drivers?.[i] ??
        new MockDriver({
          size: setup.size,
          eventIdx: setup.eventIdx ?? (this.features & (1n << 29n)) !== 0n,
          indirect: setup.indirect ?? false,
          index: i,
          allocator: mem.allocator,
        });
      const c = drv.config;
      this.send(R.SET_VRING_NUM, encodeVringState({ index: i, num: drv.size }));
      this.send(R.SET_VRING_BASE, encodeVringState({ index: i, num: setup.bases?.[i] ?? 0 }));
      let a = {
        desc: mem.uaddrOf(c.descAddr),
        avail: mem.uaddrOf(c.driverAddr),
        used: mem.uaddrOf(c.deviceAddr),
      };
      if (setup.addr !== undefined) a = setup.addr(i, a);
      this.send(
        R.SET_VRING_ADDR,
        encodeVringAddr({
          index: i,
          flags: 0,
          desc: BigInt(a.desc),
          used: BigInt(a.used),
          avail: BigInt(a.avail),
          log: 0n,
        }),
      );
      const kick = this.binding.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      const call = this.binding.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      this.queues.push(new VhostQueue(i, drv, kick, call, this.binding, this.#closeFd));
      this.send(R.SET_VRING_KICK, encodePayloadU64(BigInt(i)), [kick]);
      this.send(R.SET_VRING_CALL, encodePayloadU64(BigInt(i)), [call]);
    }
    for (let i = 0; i < setup.count; i++) {
      const ack = await this.acked(R.SET_VRING_ENABLE, encodeVringState({ index: i, num: 1 }));
      if (ack !== 0n) throw new VhostUserFrontendError(`SET_VRING_ENABLE ${i} refused`);
    }
    return this.queues;
  }

  /** GET_VRING_BASE: stops ring `index`; its avail index. */
  async getVringBase(index: number): Promise<number> {
    const reply = await this.call(R.GET_VRING_BASE, encodeVringState({ index, num: 0 }));
    return decodeVringState(reply.payload).num;
  }

  /** Stop every ring (as a VMM does at vhost stop); the bases. */
  async stop(): Promise<number[]> {
    const bases: number[] = [];
    for (const q of this.queues) bases.push(await this.getVringBase(q.index));
    return bases;
  }

  /** Close the connection (the eventfds and the backend channel too; the guest memory is the caller's). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#watcher.close();
    for (const q of this.queues) q.close();
    this.queues = [];
    if (this.#backend !== null) {
      this.#backend.watcher.close();
      this.#closeFd(this.#backend.ours);
    }
    this.#reader.discard();
    this.#closeFd(this.fd);
    this.#fail(new VhostUserFrontendError('the front-end closed'));
  }

  #onReadable(): void {
    for (;;) {
      let got: { bytes: number; fds: number[] } | -1;
      try {
        got = this.binding.recvmsg(this.fd, this.#buf.subarray(0, this.#reader.wanted), 8);
      } catch (err) {
        this.#fail(err as Error);
        return;
      }
      if (got === -1) return;
      if (got.bytes === 0) {
        this.closedByPeer = true;
        this.#watcher.stop();
        this.#fail(new VhostUserFrontendError('the back-end closed the connection'));
        return;
      }
      for (const m of this.#reader.feed(this.#buf.subarray(0, got.bytes), got.fds)) {
        const w = this.#waiters.shift();
        if (w !== undefined) w.resolve(m);
        else this.#replies.push(m);
      }
    }
  }

  #fail(err: Error): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w.reject(err);
  }
}
