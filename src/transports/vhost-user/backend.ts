/**
 * The vhost-user transport at run time: one VirtioDevice served to one VMM at a time over a Unix socket.
 *
 * It listens on a path (mode 0600; ../../sys/unix-socket.ts) or serves a connected fd (tests: one end of a
 * socketpair). While a VMM is connected the listening socket is not watched (the next VMM waits in the backlog);
 * after a disconnect the queues are stopped, every mapping and fd the VMM gave is dropped, the protocol state is
 * reset, and the next connection is accepted: the daemon never restarts for a VMM.
 *
 * Messages (./protocol.ts, sans-I/O) are handled one after the other; most are answered at once, GET_VRING_BASE
 * only once the ring's requests have completed (the data path is drained, then stopped). The data path is the
 * engine's QueueSet (../engine/queue-set.ts) over this transport's QueueTransport: the VMM's kick eventfds,
 * its call eventfds as the interrupt, RegionMemory as guest memory, the inflight region's queues as in-flight
 * logs. Whenever the set of servable rings changes (kick, enable, address, memory table), the data path is
 * restarted over the rings that can be served; with an inflight region it restarts in recovery mode, so that the
 * requests a dead daemon (or a drain that timed out) left in flight are resubmitted in order.
 *
 * Features: the device's bits minus ACCESS_PLATFORM (no IOTLB here: addresses are guest-physical) and
 * RING_PACKED (the inflight region is split-only), plus PROTOCOL_FEATURES. The device itself is unchanged: it
 * negotiates with ACCESS_PLATFORM added back, as under VDUSE.
 */
import { EventEmitter } from 'node:events';
import { closeSync, openSync, unlinkSync } from 'node:fs';

import type { DeviceHost, VirtioDevice } from '../../devices/device.js';
import { RegionMemory, closeRegionFds, type RegionSpec } from '../../memory/region-memory.js';
import { UV_DISCONNECT, UV_READABLE, type FdWatcher, type SysBinding } from '../../sys/binding.js';
import { listenUnix } from '../../sys/unix-socket.js';
import {
  VHOST_USER_HEADER_SIZE,
  VHOST_USER_MAX_PAYLOAD,
  VHOST_USER_VERSION,
  VhostUserBackendRequest,
  VhostUserProtocolFeature as PF,
  VhostUserRequest as R,
  encodeMessage,
} from '../../uapi/vhost-user.js';
import { VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_RING_PACKED, bit, hasFeature } from '../../uapi/virtio-config.js';
import { VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../../uapi/virtio-ring.js';
import { messageOf } from '../../common/errors.js';
import { nullLogger, type Logger } from '../../common/logger.js';
import type { DataPath, QueueSetup, QueueTransport } from '../engine/data-path.js';
import { QueueSet } from '../engine/queue-set.js';
import type { QueueThreadSpec, QueueThreadTypes } from '../engine/threads/protocol.js';
import { QueueThreads } from '../engine/threads/queue-threads.js';
import type { InflightPayload } from '../../uapi/vhost-user.js';
import { vhostUserThreadTransport, type VhostUserThreadState } from './queue-transport.js';
import { VhostUserError } from './errors.js';
import { InflightRegion } from './inflight.js';
import {
  MAX_MESSAGE_FDS,
  MessageReader,
  VhostUserProtocol,
  type RingState,
  type VhostUserContext,
  type VhostUserMessage,
} from './protocol.js';

export interface VhostUserBackendOptions {
  binding: SysBinding;
  device: VirtioDevice;
  logger?: Logger;
  /** How long GET_VRING_BASE (and a restart of the rings) waits for requests in flight. Default 10 s. */
  drainMs?: number;
  closeFd?: (fd: number) => void;
  /**
   * Serve the queues on worker threads (queue i on thread i % threads), each with its own device built from
   * `spec` (../engine/threads/). The main thread keeps the protocol and owns every fd the VMM gave.
   */
  queueThreads?: {
    threads: number;
    spec: QueueThreadSpec<QueueThreadTypes>;
    debug?: boolean;
    timeoutMs?: number;
  };
}

export interface VhostUserBackendEvents {
  connected: [];
  /** The VMM went away or was dropped (`reason`). */
  disconnected: [reason: string];
  /** The data path started over `rings`. */
  started: [rings: number[], resubmitted: number];
  'needs-reset': [reason: Error];
}

interface Connection {
  fd: number;
  watcher: FdWatcher;
  reader: MessageReader;
  queue: VhostUserMessage[];
  pumping: boolean;
  ringsChanged: boolean;
  closed: boolean;
}

const NO_FD = -1;

/** Requests that restart the rings when they come while the rings run. */
const RESTARTING = new Set<number>([R.SET_MEM_TABLE, R.GET_INFLIGHT_FD, R.SET_INFLIGHT_FD]);

export class VhostUserBackend extends EventEmitter<VhostUserBackendEvents> {
  readonly device: VirtioDevice;
  readonly memory: RegionMemory;
  readonly protocol: VhostUserProtocol;
  readonly dataPath: DataPath;
  /** The queue threads (options.queueThreads), or null when the queues are served on this thread. */
  readonly queueThreads: QueueThreads | null;
  readonly #inline: QueueSet | null;
  /** Connections served so far (accepted or attached). */
  connections = 0;
  /** CONFIG_CHANGE_MSG sent. */
  configNotifications = 0;
  /** Messages handled (every connection). */
  messages = 0;
  readonly #binding: SysBinding;
  readonly #log: Logger;
  readonly #closeFd: (fd: number) => void;
  readonly #drainMs: number;
  readonly #offered: bigint;
  readonly #recvBuf = new Uint8Array(VHOST_USER_HEADER_SIZE + VHOST_USER_MAX_PAYLOAD);
  #conn: Connection | null = null;
  #inflight: InflightRegion | null = null;
  /** With queue threads: the current table's regions (their fds stay open for the threads to map them). */
  #regions: RegionSpec[] = [];
  #tableVersion = 0;
  /** With queue threads: an fd of our own on the inflight region, for the threads to map it. */
  #inflightShare: { fd: number; payload: InflightPayload } | null = null;
  #inflightVersion = 0;
  #serving: number[] = [];
  /** What the served rings were started with (ringSignature of each). */
  #signature = '';
  #negotiated = 0n;
  #listenFd = NO_FD;
  #listenWatcher: FdWatcher | null = null;
  #path: string | null = null;
  #closed = false;

  constructor(options: VhostUserBackendOptions) {
    super();
    this.device = options.device;
    this.#binding = options.binding;
    this.#log = options.logger ?? nullLogger;
    this.#closeFd = options.closeFd ?? closeSync;
    this.#drainMs = options.drainMs ?? 10_000;
    this.#offered = this.device.features & ~(bit(VIRTIO_F_ACCESS_PLATFORM) | bit(VIRTIO_F_RING_PACKED));
    this.memory = new RegionMemory(this.#binding);
    const n = this.device.numQueues;
    const threads = options.queueThreads;
    this.protocol = new VhostUserProtocol(n, threads !== undefined);
    const transport: QueueTransport = {
      memory: this.memory,
      openKick: (i) => {
        const fd = this.protocol.rings[i]!.kickFd;
        if (fd === NO_FD) throw new VhostUserError('ERR_VHOST_USER_PROTOCOL', `ring ${i} has no kick fd`);
        return fd;
      },
      signal: (i) => {
        const fd = this.protocol.rings[i]?.callFd ?? NO_FD;
        if (fd !== NO_FD) this.#binding.eventfdWrite(fd, 1);
      },
      inflightLog: (i) => this.#inflight?.queues[i],
    };
    if (threads !== undefined) {
      this.#inline = null;
      try {
        this.queueThreads = new QueueThreads({
          spec: threads.spec,
          transport: vhostUserThreadTransport({ numQueues: n }),
          numQueues: n,
          threads: threads.threads,
          logger: this.#log,
          ...(threads.debug !== undefined ? { debug: threads.debug } : {}),
          ...(threads.timeoutMs !== undefined ? { timeoutMs: threads.timeoutMs } : {}),
          onNeedsReset: (reason) => this.#needsReset(reason),
        });
      } catch (err) {
        throw new VhostUserError('ERR_VHOST_USER_THREADS', messageOf(err), err);
      }
      this.dataPath = this.queueThreads;
    } else {
      this.queueThreads = null;
      this.#inline = new QueueSet({
        binding: this.#binding,
        device: this.device,
        transport,
        numQueues: n,
        logger: this.#log,
        // The kick fds are the VMM's, held by the protocol: it closes them, not the engine.
        closeFd: () => {},
        onNeedsReset: (reason) => this.#needsReset(reason),
      });
      this.dataPath = this.#inline;
    }
    const host: DeviceHost = {
      configChanged: () => this.#configChanged(),
      needsReset: (reason) => {
        if (this.#inline !== null) this.#inline.fail(reason);
        else this.#needsReset(reason);
      },
    };
    this.device.bind(host);
  }

  /** A VMM is connected. */
  get connected(): boolean {
    return this.#conn !== null;
  }

  /** The features the VMM's driver accepted (as the device sees them), 0 before SET_FEATURES. */
  get features(): bigint {
    return this.#negotiated;
  }

  /** The rings being served now. */
  get servingRings(): readonly number[] {
    return this.#serving;
  }

  /** Kicks per queue at [i], interrupts at [numQueues + i]. */
  get counters(): Float64Array {
    return this.dataPath.counters;
  }

  /**
   * Listen on `path` (see ../../sys/unix-socket.ts for what is refused). Throws VhostUserError
   * ERR_VHOST_USER_SOCKET with a one-line message.
   */
  listen(path: string): void {
    if (this.#listenFd !== NO_FD) throw new VhostUserError('ERR_VHOST_USER_SOCKET', 'already listening');
    try {
      this.#listenFd = listenUnix(this.#binding, path, { closeFd: this.#closeFd });
    } catch (err) {
      const why = messageOf(err);
      throw new VhostUserError(
        'ERR_VHOST_USER_SOCKET',
        why.startsWith(path) ? `cannot listen: ${why}` : `cannot listen on ${path}: ${why}`,
        err,
      );
    }
    this.#path = path;
    this.#listenWatcher = this.#binding.createFdWatcher(this.#listenFd, () => this.#onAcceptable());
    this.#listenWatcher.start(UV_READABLE);
  }

  /** Serve the VMM on the connected socket `fd` (non-blocking; this backend closes it). */
  attach(fd: number): void {
    if (this.#conn !== null || this.#closed) {
      this.#closeFd(fd);
      throw new VhostUserError('ERR_VHOST_USER_SOCKET', 'a VMM is already connected');
    }
    const conn: Connection = {
      fd,
      watcher: this.#binding.createFdWatcher(fd, (status) => this.#onReadable(conn, status)),
      reader: new MessageReader((f) => this.#closeQuietly(f)),
      queue: [],
      pumping: false,
      ringsChanged: false,
      closed: false,
    };
    this.#conn = conn;
    this.connections++;
    this.#listenWatcher?.stop();
    conn.watcher.start(UV_READABLE | UV_DISCONNECT);
    this.emit('connected');
  }

  /** Drop the VMM (if any) and wait for its last requests. */
  async disconnect(reason = 'disconnected by the daemon'): Promise<void> {
    if (this.#conn !== null) this.#drop(this.#conn, reason, 'info');
    await this.#inline?.settled;
  }

  /** Stop for good: drop the VMM, stop listening, remove the socket, wait for the last requests and mappings. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#conn !== null) this.#drop(this.#conn, 'the daemon is stopping', 'info');
    this.#listenWatcher?.close();
    this.#listenWatcher = null;
    if (this.#listenFd !== NO_FD) this.#closeQuietly(this.#listenFd);
    this.#listenFd = NO_FD;
    if (this.#path !== null) {
      try {
        unlinkSync(this.#path);
      } catch {
        // already gone
      }
    }
    await this.dataPath.close();
  }

  // ----- the connection -----

  #onAcceptable(): void {
    if (this.#conn !== null || this.#closed) {
      this.#listenWatcher?.stop();
      return;
    }
    let fd: number;
    try {
      fd = this.#binding.accept(this.#listenFd);
    } catch (err) {
      this.#log.warn(`vhost-user: accept on ${this.#path}: ${messageOf(err)}`);
      return;
    }
    if (fd < 0) return;
    this.#log.info(`vhost-user: a VMM connected on ${this.#path}`);
    this.attach(fd);
  }

  #onReadable(conn: Connection, status: number): void {
    if (conn.closed) return;
    if (status < 0) return this.#drop(conn, `socket error (errno ${-status})`, 'warn');
    for (;;) {
      let got: { bytes: number; fds: number[] } | -1;
      try {
        got = this.#binding.recvmsg(conn.fd, this.#recvBuf.subarray(0, conn.reader.wanted), MAX_MESSAGE_FDS);
      } catch (err) {
        return this.#drop(conn, `receiving a message: ${messageOf(err)}`, 'warn');
      }
      if (got === -1) break;
      if (got.bytes === 0) {
        got.fds.forEach((fd) => this.#closeQuietly(fd));
        return this.#drop(conn, 'the VMM closed the connection', 'info');
      }
      let messages: VhostUserMessage[];
      try {
        messages = conn.reader.feed(this.#recvBuf.subarray(0, got.bytes), got.fds);
      } catch (err) {
        return this.#drop(conn, `bad message: ${messageOf(err)}`, 'warn');
      }
      conn.queue.push(...messages);
    }
    if (!conn.pumping && conn.queue.length > 0) void this.#pump(conn);
  }

  async #pump(conn: Connection): Promise<void> {
    conn.pumping = true;
    try {
      while (!conn.closed) {
        const msg = conn.queue.shift();
        if (msg === undefined) {
          if (!conn.ringsChanged) break;
          // The rest of a burst (a VMM enables its rings one message after the other) first: one restart, not one per ring.
          await new Promise((resolve) => setImmediate(resolve));
          if (conn.queue.length > 0) continue;
          conn.ringsChanged = false;
          await this.#reconcile(conn);
          continue;
        }
        await this.#handle(conn, msg);
      }
    } catch (err) {
      this.#drop(conn, `internal error: ${messageOf(err)}`, 'error');
    } finally {
      conn.pumping = false;
    }
  }

  async #handle(conn: Connection, msg: VhostUserMessage): Promise<void> {
    this.messages++;
    // A new memory table or inflight region while the rings run (memory hot-plug): let the requests in flight
    // complete first, so that none is cut off by the restart over the new table.
    if (this.dataPath.running && RESTARTING.has(msg.header.request)) {
      await this.#drainAndStop(conn);
      if (conn.closed) {
        msg.fds.forEach((fd) => this.#closeQuietly(fd));
        return;
      }
    }
    const result = this.protocol.handle(msg, this.#context());
    if (result.disconnect !== undefined) {
      for (const fd of result.replyFds) this.#closeQuietly(fd);
      return this.#drop(conn, result.disconnect, 'warn');
    }
    if (result.reply !== null) {
      const sent = this.#send(conn, result.reply, result.replyFds);
      for (const fd of result.replyFds) this.#closeQuietly(fd);
      if (!sent) return;
    }
    for (const effect of result.effects) {
      if (conn.closed) return;
      switch (effect.kind) {
        case 'rings-changed':
          conn.ringsChanged = true;
          break;
        case 'reset':
          this.#stopDataPath(true);
          this.#dropInflight();
          this.#closeRetiredKicks();
          break;
        case 'stop-ring': {
          if (this.#serving.includes(effect.index)) await this.#drainAndStop(conn);
          if (conn.closed) return;
          const reply = this.protocol.vringBaseReply(effect.index, this.protocol.rings[effect.index]!.base);
          this.#closeRetiredKicks();
          if (!this.#send(conn, reply, [])) return;
          conn.ringsChanged = true;
          break;
        }
      }
    }
  }

  #context(): VhostUserContext {
    const device = this.device;
    return {
      deviceFeatures: this.#offered,
      numQueues: device.numQueues,
      maxQueueSize: device.maxQueueSize,
      config: () => device.config(),
      negotiate: (features) => {
        const asDevice = features | (device.features & bit(VIRTIO_F_ACCESS_PLATFORM));
        if (!device.negotiate(asDevice)) return false;
        this.#negotiated = asDevice;
        return true;
      },
      setMemTable: (regions) => {
        // A new table while serving: the rings are restarted over it (their addresses are translated again).
        if (this.dataPath.running) this.#stopDataPath(false);
        // The protocol closes the VMM's fds after this message.
        this.memory.setTable(regions);
        if (this.queueThreads === null) return;
        // The threads map the regions at their next start, by fd: fds of our own on them, open until the next table.
        const own: RegionSpec[] = [];
        try {
          for (const r of regions) own.push({ ...r, fd: reopenFd(r.fd) });
        } catch (err) {
          closeRegionFds(own, (fd) => this.#closeQuietly(fd));
          this.memory.clear();
          throw err;
        }
        this.#dropRegionFds();
        this.#regions = own;
        this.#tableVersion++;
      },
      getInflight: (numQueues, queueSize) => {
        const made = InflightRegion.create(this.#binding, numQueues, queueSize);
        try {
          this.#replaceInflight(made.region, made.fd, made.payload);
        } catch (err) {
          made.region.close();
          this.#closeQuietly(made.fd);
          throw err;
        }
        return { fd: made.fd, payload: made.payload };
      },
      setInflight: (fd, payload) => {
        const region = InflightRegion.open(this.#binding, fd, payload, device.numQueues);
        try {
          this.#replaceInflight(region, fd, payload);
        } catch (err) {
          region.close();
          throw err;
        }
      },
      closeFd: (fd) => this.#closeQuietly(fd),
      log: (message) => this.#log.warn(`vhost-user: ${message}`),
    };
  }

  #replaceInflight(region: InflightRegion, fd: number, payload: InflightPayload): void {
    // The queue threads map the region themselves: an fd of our own on it (the VMM's is closed after the reply).
    const share = this.queueThreads !== null ? { fd: reopenFd(fd), payload } : null;
    if (this.dataPath.running) this.#stopDataPath(false);
    this.#dropInflight();
    this.#inflight = region;
    this.#inflightShare = share;
    this.#inflightVersion++;
  }

  /** Close the inflight region (the queues were stopped). */
  #dropInflight(): void {
    this.#inflight?.close();
    this.#inflight = null;
    if (this.#inflightShare !== null) this.#closeQuietly(this.#inflightShare.fd);
    this.#inflightShare = null;
  }

  /** Close the fds of the table the threads mapped last (they were stopped, their mappings stay). */
  #dropRegionFds(): void {
    closeRegionFds(this.#regions, (fd) => this.#closeQuietly(fd));
    this.#regions = [];
  }

  /** What the queue threads need for a start (null without threads). */
  #threadState(): VhostUserThreadState | null {
    if (this.queueThreads === null) return null;
    return {
      tableVersion: this.#tableVersion,
      regions: this.#regions,
      kick: this.protocol.rings.map((r) => r.kickFd),
      call: this.protocol.rings.map((r) => r.callFd),
      inflightVersion: this.#inflightVersion,
      inflight: this.#inflightShare,
    };
  }

  /** Serve the rings that can be served now (restarting the data path when the set changed). */
  async #reconcile(conn: Connection): Promise<void> {
    const p = this.protocol;
    const want = p.featuresSet && this.memory.mappedRegions > 0 ? p.readyRings() : [];
    // A ring given a new kick fd, size or address while served is restarted too (the engine watches the old fd).
    const threaded = this.queueThreads !== null;
    const signature = want.map((i) => ringSignature(p.rings[i]!, threaded)).join(';');
    if (
      sameRings(want, this.#serving) &&
      this.dataPath.running === want.length > 0 &&
      signature === this.#signature
    )
      return;
    if (this.dataPath.running) await this.#drainAndStop(conn);
    this.#closeRetiredKicks();
    if (conn.closed || want.length === 0) return;
    const setups: QueueSetup[] = [];
    for (const i of want) {
      const r = p.rings[i]!;
      const a = r.addr!;
      try {
        setups.push({
          index: i,
          size: r.num,
          descAddr: this.memory.userToGuest(Number(a.desc), 16 * r.num),
          driverAddr: this.memory.userToGuest(Number(a.avail), 6 + 2 * r.num),
          deviceAddr: this.memory.userToGuest(Number(a.used), 6 + 8 * r.num),
          state: { nextAvail: r.base, nextUsed: r.base },
        });
      } catch (err) {
        return this.#drop(conn, `ring ${i}: ${messageOf(err)}`, 'warn');
      }
    }
    const features = this.#negotiated;
    const transportState = this.#threadState();
    try {
      const resubmitted = this.dataPath.start({
        features,
        packed: false,
        eventIdx: hasFeature(features, VIRTIO_RING_F_EVENT_IDX),
        indirect: hasFeature(features, VIRTIO_RING_F_INDIRECT_DESC),
        queues: setups,
        recover: this.#inflight !== null,
        ...(transportState !== null ? { transportState } : {}),
      });
      this.#serving = want;
      this.#signature = signature;
      if (resubmitted > 0) this.#log.info(`vhost-user: ${resubmitted} requests in flight resubmitted`);
      this.emit('started', want, resubmitted);
    } catch (err) {
      this.#drop(conn, `cannot start the rings: ${messageOf(err)}`, 'warn');
    }
  }

  /** Let the requests in flight complete (up to drainMs), then stop; the rings' bases are where they stopped. */
  async #drainAndStop(conn: Connection): Promise<void> {
    await this.dataPath.drain(this.#drainMs);
    const inFlight = this.#inline?.inFlight ?? 0;
    if (inFlight > 0)
      this.#log.warn(`vhost-user: ${inFlight} requests still in flight after ${this.#drainMs} ms`);
    if (!conn.closed) this.#stopDataPath(false);
  }

  #stopDataPath(reset: boolean): void {
    if (reset && this.queueThreads !== null) {
      // the threads' own mappings retire in stop(true); the table is gone: its fds are closed after the stop
      try {
        this.#applyStop(true);
      } finally {
        this.memory.clear();
        this.#dropRegionFds();
      }
      return;
    }
    if (!this.dataPath.running) {
      if (reset) this.memory.clear();
      this.#serving = [];
      this.#signature = '';
      return;
    }
    this.#applyStop(reset);
  }

  #applyStop(reset: boolean): void {
    this.#serving = [];
    this.#signature = '';
    if (!this.dataPath.running && !reset) return;
    for (const [i, state] of this.dataPath.stop(reset)) {
      if ('nextAvail' in state) this.protocol.rings[i]!.base = state.nextAvail;
    }
  }

  #send(conn: Connection, bytes: Uint8Array, fds: readonly number[]): boolean {
    let n: number;
    try {
      n = this.#binding.sendmsg(conn.fd, bytes, fds);
    } catch (err) {
      this.#drop(conn, `sending a reply: ${messageOf(err)}`, 'warn');
      return false;
    }
    if (n !== bytes.length) {
      this.#drop(conn, 'the VMM does not read its socket (reply not sent)', 'warn');
      return false;
    }
    return true;
  }

  #drop(conn: Connection, reason: string, level: 'info' | 'warn' | 'error'): void {
    if (conn.closed) return;
    conn.closed = true;
    this.#log[level](`vhost-user: ${reason}${level === 'info' ? '' : '; disconnecting the VMM'}`);
    conn.watcher.close();
    this.#stopDataPath(true);
    this.#dropInflight();
    this.#closeRetiredKicks();
    this.protocol.closeAll((fd) => this.#closeQuietly(fd));
    conn.reader.discard();
    for (const m of conn.queue) m.fds.forEach((fd) => this.#closeQuietly(fd));
    conn.queue = [];
    this.#closeQuietly(conn.fd);
    this.#negotiated = 0n;
    if (this.#conn === conn) this.#conn = null;
    if (!this.#closed && this.#listenWatcher !== null) {
      this.#listenWatcher.start(UV_READABLE);
      // a VMM may already wait in the backlog
      setImmediate(() => this.#onAcceptable());
    }
    this.emit('disconnected', reason);
  }

  #closeRetiredKicks(): void {
    for (const fd of this.protocol.takeRetiredFds()) this.#closeQuietly(fd);
  }

  #configChanged(): void {
    const conn = this.#conn;
    const p = this.protocol;
    if (conn === null || p.backendFd === NO_FD || !p.has(PF.BACKEND_REQ) || !p.has(PF.CONFIG)) return;
    try {
      const msg = encodeMessage(VhostUserBackendRequest.CONFIG_CHANGE_MSG, VHOST_USER_VERSION);
      if (this.#binding.sendmsg(p.backendFd, msg, []) !== msg.length) throw new Error('short write');
      this.configNotifications++;
    } catch (err) {
      this.#log.warn(`vhost-user: CONFIG_CHANGE_MSG not sent: ${messageOf(err)}`);
    }
  }

  #needsReset(reason: Error): void {
    this.#log.warn(`vhost-user: the device needs a reset: ${reason.message}`);
    for (const i of this.#serving) {
      const fd = this.protocol.rings[i]!.errFd;
      if (fd === NO_FD) continue;
      try {
        this.#binding.eventfdWrite(fd, 1);
      } catch {
        // the VMM closed it
      }
    }
    this.emit('needs-reset', reason);
  }

  #closeQuietly(fd: number): void {
    try {
      this.#closeFd(fd);
    } catch {
      // already gone
    }
  }
}

/** A new fd of our own on the file (memfd, shared memory file) that `fd` refers to. */
function reopenFd(fd: number): number {
  return openSync(`/proc/self/fd/${fd}`, 'r+');
}

function ringSignature(r: RingState, withCall: boolean): string {
  const a = r.addr;
  return `${r.kickFd}/${r.num}/${a?.desc}/${a?.avail}/${a?.used}${withCall ? `/${r.callFd}` : ''}`;
}

function sameRings(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}
