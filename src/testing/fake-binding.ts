/**
 * FakeBinding: a SysBinding in plain JavaScript, for unit tests of code that talks to the kernel through a
 * SysBinding (transports, device hosts) without the native addon or a VDUSE-capable kernel.
 *
 * What it emulates:
 * - eventfds: a 64-bit counter with the kernel's rules (EFD_SEMAPHORE, EFD_NONBLOCK, EAGAIN on overflow);
 *   eventfdRead returns -1 when the counter is 0 on a non-blocking eventfd. read/write of 8 bytes work too.
 * - memfds: a file backed by a growable buffer. fallocate (mode 0 grows it, PUNCH_HOLE / ZERO_RANGE zero bytes),
 *   read/write (at a file position) and preadv2/pwritev2 (at an offset, at most IOV_MAX buffers) work. RWF_NOWAIT
 *   calls ask `onNowait` how much can be done without waiting, so tests can make them short, EAGAIN (-1) or refused. mmap maps a whole memfd (offset 0, length = its size) and returns
 *   the file's own ArrayBuffer, so every mapping of a memfd and memfdBytes() share memory, as MAP_SHARED
 *   mappings of one file do. munmap detaches that ArrayBuffer (views become empty) once every mapping of the
 *   memfd is unmapped; the file keeps its contents. MAP_PRIVATE mappings are copies.
 * - devices: openDevice(handlers) gives an fd whose read/write/ioctl go to the test's handlers; the test marks
 *   it readable with setReadable() so that watchers fire. Netlink sockets are devices too (onNetlinkSocket).
 * - FdWatchers: level-triggered like uv_poll (and, like libuv, only one started watcher per fd: EEXIST). While a watched fd is ready, the callback runs again and again,
 *   each time from its own setImmediate (so nextTick/microtasks drain between callbacks, as with the real
 *   binding). An active, ref'd watcher keeps the event loop alive only with `{ keepEventLoopAlive: true }`
 *   (a real one always does; in tests that would turn a failed assertion into a hung test file).
 * - KickLoops: model the native contract (src/sys/binding.ts): a wake-up (its own setImmediate, as soon as a
 *   watched kick eventfd is readable) first injects the interrupts already marked, drains every ready kick
 *   eventfd, marks its queue in `kicked`, makes ONE callback, then injects the interrupts marked in `signals`
 *   (through this binding's ioctl or eventfdWrite, so a test sees them as the device would). Interrupts marked
 *   outside a callback are injected by the next "prepare", a 1 ms timer while the loop is started (the real
 *   one runs before the thread would block), or flush(). Wake-ups and callbacks are counted in `stats`.
 * - ioctl: goes to the device's ioctl handler, else to `onIoctl`, which by default throws ENOTTY.
 *
 * Errors are system errors like the native ones (code, negative errno, syscall). A request the fake cannot
 * emulate (a blocking read that would hang, a partial mmap) throws a plain Error saying so.
 *
 * Fake fds start at 10000 so that they are not mistaken for real ones; close them with close(), not fs.
 */

import {
  EFD_NONBLOCK,
  EFD_SEMAPHORE,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  MAP_PRIVATE,
  MAP_SHARED,
  RWF_APPEND,
  RWF_DSYNC,
  RWF_HIPRI,
  RWF_NOWAIT,
  RWF_SYNC,
  UV_READABLE,
  UV_WRITABLE,
} from '../sys/binding.js';
import {
  KICK_STAT_ABSORBED,
  KICK_STAT_COUNT,
  KICK_STAT_FAILED_IRQS,
  KICK_STAT_LAST_ERRNO,
  KICK_STAT_POLL_HITS,
  KICK_STAT_POLLS,
  KICK_STAT_WAKEUPS,
  WATCH_PACKED,
  WATCH_SPLIT,
  type FdWatcher,
  type FdWatcherCallback,
  type KickLoop,
  type KickLoopCallback,
  type SysBinding,
} from '../sys/binding.js';
import { systemError } from '../sys/errors.js';

/** The handlers behind a fake device fd. A missing handler makes that call fail with EINVAL. */
export interface FakeDeviceHandlers {
  /** Fill `buffer`; return the byte count, or -1 for "would block". */
  read?(buffer: Uint8Array): number;
  /** Consume `buffer`; return the byte count, or -1 for "would block". */
  write?(buffer: Uint8Array): number;
  /** Handle an ioctl; return its result or throw a system error (see systemError()). */
  ioctl?(request: number, arg: Uint8Array | number): number;
}

export interface FakeDeviceOptions {
  /** Initially readable (watchers fire). Default false. */
  readable?: boolean;
  /** Writable (UV_WRITABLE watchers fire). Default true. */
  writable?: boolean;
}

export interface FakeBindingOptions {
  /** Active, ref'd watchers keep the event loop alive, like real ones. Default false. */
  keepEventLoopAlive?: boolean;
}

/** The SysBinding methods whose calls FakeBinding counts. */
export type SysCallName = keyof SysBinding;

const EVENTFD_MAX = 0xffff_ffff_ffff_fffen;
const IOV_MAX = 1024;
const RWF_KNOWN = RWF_HIPRI | RWF_DSYNC | RWF_SYNC | RWF_NOWAIT | RWF_APPEND;
const FIRST_FD = 10000;

interface EventfdFile {
  kind: 'eventfd';
  counter: bigint;
  semaphore: boolean;
  nonBlocking: boolean;
}

interface Memfd {
  kind: 'memfd';
  name: string;
  /** The file contents; exactly `size` bytes. While mapped, this is the mapped ArrayBuffer. */
  data: ArrayBuffer;
  position: number;
  mappings: number;
}

interface DeviceFile {
  kind: 'device';
  handlers: FakeDeviceHandlers;
  readable: boolean;
  writable: boolean;
}

type FakeFile = EventfdFile | Memfd | DeviceFile;

/** Moves the contents of `buffer` into a new ArrayBuffer and detaches `buffer` (all its views go empty). */
function detach(buffer: ArrayBuffer): ArrayBuffer {
  const withTransfer = buffer as ArrayBuffer & { transfer?: () => ArrayBuffer };
  if (typeof withTransfer.transfer === 'function') return withTransfer.transfer();
  return structuredClone(buffer, { transfer: [buffer] });
}

function isDetached(buffer: ArrayBuffer): boolean {
  const withFlag = buffer as ArrayBuffer & { detached?: boolean };
  if (typeof withFlag.detached === 'boolean') return withFlag.detached;
  if (buffer.byteLength > 0) return false;
  try {
    new Uint8Array(buffer);
    return false;
  } catch {
    return true;
  }
}

class FakeFdWatcher implements FdWatcher {
  events = 0;
  active = false;
  closed = false;
  refed = true;
  private immediate: NodeJS.Immediate | undefined;

  constructor(
    private readonly owner: FakeBinding,
    readonly fd: number,
    private readonly callback: FdWatcherCallback,
  ) {}

  start(events: number): void {
    if (this.closed) throw new Error('FdWatcher is closed');
    this.events = events;
    this.active = true;
    this.owner.watcherChanged();
    this.arm();
  }

  stop(): void {
    this.active = false;
    this.disarm();
    this.owner.watcherChanged();
  }

  close(): void {
    this.stop();
    this.closed = true;
    this.owner.watcherChanged();
  }

  unref(): void {
    this.refed = false;
    this.immediate?.unref();
    this.owner.watcherChanged();
  }

  ref(): void {
    this.refed = true;
    this.immediate?.ref();
    this.owner.watcherChanged();
  }

  /** Schedule a callback if the fd is ready for one of our events. */
  arm(): void {
    if (!this.active || this.immediate !== undefined || this.ready() === 0) return;
    this.immediate = setImmediate(() => {
      this.immediate = undefined;
      const ready = this.active ? this.ready() : 0;
      if (ready === 0) return;
      try {
        this.callback(0, ready);
      } finally {
        this.arm(); // level-triggered: again while still ready
      }
    });
    if (!this.refed) this.immediate.unref();
  }

  private disarm(): void {
    if (this.immediate !== undefined) clearImmediate(this.immediate);
    this.immediate = undefined;
  }

  private ready(): number {
    return this.owner.readiness(this.fd) & this.events;
  }
}

/** FakeBinding's KickLoop (see createKickLoop); its ring watches and poll window are visible to tests. */
export class FakeKickLoop implements KickLoop {
  readonly kicked: Int32Array;
  readonly signals: Int32Array;
  readonly stats = new Float64Array(KICK_STAT_COUNT);
  readonly marks: Int32Array;
  /** The ring watches (watch()) and the poll window (setPoll()). */
  readonly watches: ({ view: Uint16Array; kind: number } | null)[];
  windowNs = 0;
  active = false;
  closed = false;
  refed = true;
  /** Kick fd per queue index (-1: none). */
  readonly kickFds: number[];
  readonly #irqs: { fd: number; request: number }[];
  #immediate: NodeJS.Immediate | undefined;
  #prepare: NodeJS.Timeout | undefined;

  constructor(
    private readonly owner: FakeBinding,
    numQueues: number,
    private readonly injected: Float64Array,
    private readonly callback: KickLoopCallback,
    private readonly kicks: Float64Array = new Float64Array(numQueues),
  ) {
    this.kicked = new Int32Array(numQueues);
    this.signals = new Int32Array(numQueues);
    this.kickFds = new Array<number>(numQueues).fill(-1);
    this.marks = new Int32Array(numQueues).fill(-1);
    this.watches = new Array<{ view: Uint16Array; kind: number } | null>(numQueues).fill(null);
    this.#irqs = Array.from({ length: numQueues }, () => ({ fd: -1, request: 0 }));
  }

  addKick(index: number, fd: number): void {
    this.#check(index);
    if (this.closed) throw new Error('KickLoop is closed');
    if (this.kickFds[index]! >= 0) throw systemError('EEXIST', 'epoll_ctl');
    if (this.owner.fileKind(fd) === undefined) throw systemError('EBADF', 'epoll_ctl');
    if (this.owner.fileKind(fd) === 'memfd') throw systemError('EPERM', 'epoll_ctl');
    this.kickFds[index] = fd;
    this.arm();
  }

  removeKick(index: number): void {
    this.#check(index);
    this.kickFds[index] = -1;
    this.kicked[index] = 0;
    this.watches[index] = null;
  }

  watch(index: number, view: Uint16Array | null, kind: number): void {
    this.#check(index);
    if (view !== null && !(view instanceof Uint16Array))
      throw new TypeError('KickLoop.watch: view must be a Uint16Array');
    if (kind !== WATCH_SPLIT && kind !== WATCH_PACKED) throw new RangeError('KickLoop.watch: unknown kind');
    this.watches[index] = view === null ? null : { view, kind };
  }

  setPoll(windowNs: number): void {
    if (!Number.isInteger(windowNs) || windowNs < 0 || windowNs > 1e9)
      throw new RangeError('KickLoop.setPoll: window out of range');
    this.windowNs = windowNs;
  }

  /** Is queue i watched, known idle (marks) and live? */
  watched(i: number): boolean {
    const w = this.watches[i];
    return this.marks[i]! >= 0 && w != null && w.view.length >= 2 && this.kickFds[i]! >= 0;
  }

  /** New work on queue i's watched ring (the native loop's test, on the same words). */
  hasWork(i: number): boolean {
    if (!this.watched(i)) return false;
    const { view, kind } = this.watches[i]!;
    const mark = this.marks[i]!;
    if (kind === WATCH_SPLIT) return Atomics.load(view, 1) !== (mark & 0xffff);
    const word = (mark >>> 1) * 8 + 7;
    if (word >= view.length) return false;
    const flags = Atomics.load(view, word);
    const avail = (flags >>> 7) & 1;
    return avail === (mark & 1) && avail !== ((flags >>> 15) & 1);
  }

  setInterrupt(index: number, fd: number, request: number): void {
    this.#check(index);
    this.#flushOne(index);
    this.#irqs[index] = { fd, request };
  }

  flush(): void {
    for (let i = 0; i < this.signals.length; i++) this.#flushOne(i);
  }

  start(): void {
    if (this.closed) throw new Error('KickLoop is closed');
    this.active = true;
    this.#prepare ??= setInterval(() => {
      this.flush();
      this.#spin();
      this.arm();
    }, 1);
    this.#applyRef();
    this.owner.watcherChanged();
    this.arm();
  }

  stop(): void {
    this.active = false;
    if (this.#immediate !== undefined) clearImmediate(this.#immediate);
    if (this.#prepare !== undefined) clearInterval(this.#prepare);
    this.#immediate = undefined;
    this.#prepare = undefined;
    this.owner.watcherChanged();
  }

  close(): void {
    this.stop();
    this.closed = true;
    this.kickFds.fill(-1);
    this.owner.watcherChanged();
  }

  unref(): void {
    this.refed = false;
    this.#applyRef();
    this.owner.watcherChanged();
  }

  ref(): void {
    this.refed = true;
    this.#applyRef();
    this.owner.watcherChanged();
  }

  /** Schedule a wake-up if a watched kick fd is readable. */
  arm(): void {
    if (!this.active || this.#immediate !== undefined) return;
    if (!this.kickFds.some((fd) => fd >= 0 && (this.owner.readiness(fd) & UV_READABLE) !== 0)) return;
    this.#immediate = setImmediate(() => {
      this.#immediate = undefined;
      if (this.active) this.#wakeUp();
    });
    this.#applyRef();
  }

  /** The native loop's spin, once per prepare turn: with the window open, new work on a watched ring wakes up. */
  #spin(): void {
    if (!this.active || this.windowNs <= 0 || !this.kicked.some((_, i) => this.watched(i))) return;
    this.stats[KICK_STAT_POLLS]!++;
    let any = false;
    for (let i = 0; i < this.kicked.length; i++) {
      if (!this.hasWork(i)) continue;
      this.kicked[i] = 2;
      any = true;
    }
    if (!any) return;
    this.stats[KICK_STAT_POLL_HITS]!++;
    this.#call();
  }

  #wakeUp(): void {
    this.flush();
    let any = false;
    this.kickFds.forEach((fd, i) => {
      if (fd < 0 || (this.owner.readiness(fd) & UV_READABLE) === 0) return;
      if (this.owner.drainEventfd(fd)) {
        this.kicks[i]!++;
        if (this.watched(i) && !this.hasWork(i)) {
          this.stats[KICK_STAT_ABSORBED]!++;
          return;
        }
        this.kicked[i] = 1;
        any = true;
      }
    });
    if (!any) return;
    this.#call();
  }

  #call(): void {
    this.stats[KICK_STAT_WAKEUPS]!++;
    try {
      this.callback();
    } finally {
      if (this.active) {
        this.flush();
        this.arm(); // level-triggered: again while a kick fd is still readable
      }
    }
  }

  #flushOne(index: number): void {
    if (this.signals[index] === 0) return;
    this.signals[index] = 0;
    const { fd, request } = this.#irqs[index]!;
    if (fd < 0) return;
    try {
      if (request === 0) this.owner.eventfdWrite(fd, 1);
      else {
        const arg = new Uint8Array(4);
        new DataView(arg.buffer).setUint32(0, index, true);
        this.owner.ioctl(fd, request, arg);
      }
      this.injected[index]!++;
    } catch (err) {
      this.stats[KICK_STAT_FAILED_IRQS]!++;
      const errno = (err as { errno?: unknown }).errno;
      this.stats[KICK_STAT_LAST_ERRNO] = typeof errno === 'number' ? errno : 0;
    }
  }

  #applyRef(): void {
    // The prepare timer never keeps a test alive; a pending wake-up does while ref'd, as a kick would.
    this.#prepare?.unref();
    if (this.#immediate !== undefined) {
      if (this.refed) this.#immediate.ref();
      else this.#immediate.unref();
    }
  }

  #check(index: number): void {
    if (!Number.isInteger(index) || index < 0 || index >= this.kicked.length)
      throw new RangeError('KickLoop: queue index out of range');
  }
}

export class FakeBinding implements SysBinding {
  /** How often each SysBinding method was called. */
  readonly calls: Record<SysCallName, number> = {
    ioctl: 0,
    mmap: 0,
    munmap: 0,
    memfdCreate: 0,
    eventfd: 0,
    eventfdRead: 0,
    eventfdWrite: 0,
    createFdWatcher: 0,
    createKickLoop: 0,
    fence: 0,
    read: 0,
    write: 0,
    preadv2: 0,
    pwritev2: 0,
    fallocate: 0,
    netlinkSocket: 0,
    send: 0,
    recv: 0,
    unixListen: 0,
    unixConnect: 0,
    accept: 0,
    socketPair: 0,
    recvmsg: 0,
    sendmsg: 0,
  };

  /** ioctl on an fd without a device ioctl handler. Default: throw ENOTTY. */
  onIoctl: (fd: number, request: number, arg: Uint8Array | number) => number = () => {
    throw systemError('ENOTTY', 'ioctl');
  };

  /**
   * A preadv2/pwritev2 with RWF_NOWAIT of `length` bytes at `offset` (after the IOV_MAX cap): return how many
   * bytes it moves before it would have to wait. `length` (the default) does it all, fewer makes it short, 0 makes
   * it return -1 (EAGAIN). Throw a system error to fail the call, e.g. systemError('EOPNOTSUPP', 'pwritev2') as a
   * filesystem that cannot honour RWF_NOWAIT does.
   */
  onNowait: (fd: number, write: boolean, offset: number, length: number) => number = (
    _fd,
    _write,
    _offset,
    length,
  ) => length;

  /** Opens a netlink socket: return the handlers of the fake socket. Default: throw EPROTONOSUPPORT. */
  onNetlinkSocket: (protocol: number, nonBlocking: boolean) => FakeDeviceHandlers = () => {
    throw systemError('EPROTONOSUPPORT', 'socket');
  };

  private readonly files = new Map<number, FakeFile>();
  private readonly watchers = new Set<FakeFdWatcher>();
  private readonly kickLoops = new Set<FakeKickLoop>();

  /** The KickLoops made so far and not closed (oldest first). */
  kickLoopList(): FakeKickLoop[] {
    return [...this.kickLoops].filter((l) => !l.closed);
  }
  private readonly mapped = new Map<ArrayBuffer, Memfd>();
  private nextFd = FIRST_FD;
  private keepAlive: NodeJS.Timeout | undefined;
  private readonly keepEventLoopAlive: boolean;

  constructor(options: FakeBindingOptions = {}) {
    this.keepEventLoopAlive = options.keepEventLoopAlive ?? false;
  }

  // ----- test controls -----

  /** A fake device fd served by `handlers`. */
  openDevice(handlers: FakeDeviceHandlers, options: FakeDeviceOptions = {}): number {
    return this.add({
      kind: 'device',
      handlers,
      readable: options.readable ?? false,
      writable: options.writable ?? true,
    });
  }

  /** Mark a device readable (its UV_READABLE watchers fire until it is marked unreadable) or not. */
  setReadable(fd: number, readable = true): void {
    const file = this.file(fd, 'read');
    if (file.kind !== 'device') throw new Error(`FakeBinding: fd ${fd} is not a device`);
    file.readable = readable;
    this.wake(fd);
  }

  /** Close a fake fd. Watchers on it stop firing. Throws EBADF for an fd that is not open. */
  close(fd: number): void {
    this.file(fd, 'close');
    this.files.delete(fd);
  }

  isOpen(fd: number): boolean {
    return this.files.has(fd);
  }

  /** The open fake fds. */
  openFds(): number[] {
    return [...this.files.keys()];
  }

  /** An eventfd's counter, without reading it. */
  eventfdCounter(fd: number): number {
    const file = this.file(fd, 'read');
    if (file.kind !== 'eventfd') throw new Error(`FakeBinding: fd ${fd} is not an eventfd`);
    return Number(file.counter);
  }

  /** A memfd's contents (a live view while it is mapped; after a resize, get a new one). */
  memfdBytes(fd: number): Uint8Array {
    return new Uint8Array(this.memfd(fd, 'read').data);
  }

  /** Watchers that are started and not stopped or closed. */
  activeWatchers(): number {
    let count = 0;
    for (const watcher of this.watchers) if (watcher.active) count++;
    return count;
  }

  // ----- SysBinding -----

  ioctl(fd: number, request: number, arg: Uint8Array | number): number {
    this.calls.ioctl++;
    const file = this.file(fd, 'ioctl');
    const unsigned = request < 0 ? request >>> 0 : request;
    if (file.kind === 'device' && file.handlers.ioctl) return file.handlers.ioctl(unsigned, arg);
    return this.onIoctl(fd, unsigned, arg);
  }

  mmap(fd: number, length: number, prot: number, flags: number, offset: number): ArrayBuffer {
    this.calls.mmap++;
    const file = this.file(fd, 'mmap');
    if (file.kind !== 'memfd') throw systemError('ENODEV', 'mmap');
    if ((flags & (MAP_SHARED | MAP_PRIVATE)) === 0 || length === 0) throw systemError('EINVAL', 'mmap');
    if (offset !== 0 || length !== file.data.byteLength) {
      throw new Error(
        `FakeBinding.mmap maps whole memfds only (offset 0, length ${file.data.byteLength}; got offset ${offset}, length ${length})`,
      );
    }
    if ((flags & MAP_SHARED) === 0) return file.data.slice(0);
    file.mappings++;
    this.mapped.set(file.data, file);
    return file.data;
  }

  munmap(buffer: ArrayBuffer): void {
    this.calls.munmap++;
    const file = this.mapped.get(buffer);
    if (file === undefined) {
      if (isDetached(buffer)) return;
      throw new TypeError('munmap: not an ArrayBuffer returned by mmap');
    }
    if (--file.mappings > 0) return;
    this.mapped.delete(buffer);
    file.data = detach(buffer);
  }

  memfdCreate(name: string, _flags: number): number {
    this.calls.memfdCreate++;
    return this.add({ kind: 'memfd', name, data: new ArrayBuffer(0), position: 0, mappings: 0 });
  }

  eventfd(initval: number, flags: number): number {
    this.calls.eventfd++;
    return this.add({
      kind: 'eventfd',
      counter: BigInt(initval),
      semaphore: (flags & EFD_SEMAPHORE) !== 0,
      nonBlocking: (flags & EFD_NONBLOCK) !== 0,
    });
  }

  eventfdRead(fd: number): number {
    this.calls.eventfdRead++;
    const value = this.readCounter(fd);
    return value < 0n ? -1 : Number(value);
  }

  eventfdWrite(fd: number, value: number): void {
    this.calls.eventfdWrite++;
    this.addCounter(fd, BigInt(value));
  }

  createFdWatcher(fd: number, callback: FdWatcherCallback): FdWatcher {
    this.calls.createFdWatcher++;
    const file = this.file(fd, 'uv_poll_init');
    // epoll refuses regular files, as uv_poll_init does for a real memfd.
    if (file.kind === 'memfd') throw systemError('EPERM', 'uv_poll_init');
    // libuv allows one started poll handle per fd and loop.
    for (const other of this.watchers)
      if (other.fd === fd && other.active) throw systemError('EEXIST', 'uv_poll_init');
    const watcher = new FakeFdWatcher(this, fd, callback);
    this.watchers.add(watcher);
    return watcher;
  }

  createKickLoop(
    numQueues: number,
    injected: Float64Array,
    callback: KickLoopCallback,
    kicks?: Float64Array,
  ): KickLoop {
    this.calls.createKickLoop++;
    if (injected.length !== numQueues || (kicks !== undefined && kicks.length !== numQueues))
      throw new RangeError('KickLoop: arrays of different lengths');
    const loop = new FakeKickLoop(this, numQueues, injected, callback, kicks);
    this.kickLoops.add(loop);
    return loop;
  }

  /** KickLoops that are started and not stopped or closed. */
  activeKickLoops(): number {
    let count = 0;
    for (const loop of this.kickLoops) if (loop.active) count++;
    return count;
  }

  fence(): void {
    this.calls.fence++;
  }

  read(fd: number, buffer: Uint8Array): number {
    this.calls.read++;
    const file = this.file(fd, 'read');
    switch (file.kind) {
      case 'eventfd': {
        if (buffer.byteLength < 8) throw systemError('EINVAL', 'read');
        const value = this.readCounter(fd);
        if (value < 0n) return -1;
        new DataView(buffer.buffer, buffer.byteOffset, 8).setBigUint64(0, value, true);
        return 8;
      }
      case 'memfd': {
        const bytes = new Uint8Array(file.data);
        const n = Math.max(0, Math.min(buffer.byteLength, bytes.byteLength - file.position));
        buffer.set(bytes.subarray(file.position, file.position + n));
        file.position += n;
        return n;
      }
      case 'device':
        if (!file.handlers.read) throw systemError('EINVAL', 'read');
        return file.handlers.read(buffer);
    }
  }

  write(fd: number, buffer: Uint8Array): number {
    this.calls.write++;
    const file = this.file(fd, 'write');
    switch (file.kind) {
      case 'eventfd':
        if (buffer.byteLength < 8) throw systemError('EINVAL', 'write');
        this.addCounter(fd, new DataView(buffer.buffer, buffer.byteOffset, 8).getBigUint64(0, true));
        return 8;
      case 'memfd': {
        this.resize(file, Math.max(file.data.byteLength, file.position + buffer.byteLength));
        new Uint8Array(file.data).set(buffer, file.position);
        file.position += buffer.byteLength;
        return buffer.byteLength;
      }
      case 'device':
        if (!file.handlers.write) throw systemError('EINVAL', 'write');
        return file.handlers.write(buffer);
    }
  }

  preadv2(fd: number, buffers: readonly Uint8Array[], offset: number, flags: number): number {
    this.calls.preadv2++;
    return this.vectoredIo(false, fd, buffers, offset, flags);
  }

  pwritev2(fd: number, buffers: readonly Uint8Array[], offset: number, flags: number): number {
    this.calls.pwritev2++;
    return this.vectoredIo(true, fd, buffers, offset, flags);
  }

  fallocate(fd: number, mode: number, offset: number, length: number): void {
    this.calls.fallocate++;
    const file = this.file(fd, 'fallocate');
    if (file.kind !== 'memfd') throw systemError('ENODEV', 'fallocate');
    if (offset < 0 || length <= 0) throw systemError('EINVAL', 'fallocate');
    const keepSize = (mode & FALLOC_FL_KEEP_SIZE) !== 0;
    if ((mode & FALLOC_FL_PUNCH_HOLE) !== 0 && !keepSize) throw systemError('ENOTSUP', 'fallocate');
    if (!keepSize) this.resize(file, Math.max(file.data.byteLength, offset + length));
    if ((mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) !== 0) {
      new Uint8Array(file.data).fill(0, offset, Math.min(offset + length, file.data.byteLength));
    }
  }

  netlinkSocket(protocol: number, nonBlocking: boolean): number {
    this.calls.netlinkSocket++;
    const handlers = this.onNetlinkSocket(protocol, nonBlocking);
    return this.add({ kind: 'device', handlers, readable: false, writable: true });
  }

  send(fd: number, buffer: Uint8Array): number {
    this.calls.send++;
    const file = this.file(fd, 'send');
    if (file.kind !== 'device') throw systemError('ENOTSOCK', 'send');
    if (!file.handlers.write) throw systemError('EINVAL', 'send');
    return file.handlers.write(buffer);
  }

  recv(fd: number, buffer: Uint8Array): number {
    this.calls.recv++;
    const file = this.file(fd, 'recv');
    if (file.kind !== 'device') throw systemError('ENOTSOCK', 'recv');
    if (!file.handlers.read) throw systemError('EINVAL', 'recv');
    return file.handlers.read(buffer);
  }

  // Unix sockets with fd passing are not emulated: the vhost-user tests use the real addon over a socketpair.
  // Each refuses with EOPNOTSUPP, so code under test reports it like any failed syscall.

  unixListen(_path: string, _backlog: number, _mode: number): number {
    this.calls.unixListen++;
    throw systemError('EOPNOTSUPP', 'bind');
  }

  unixConnect(_path: string): number {
    this.calls.unixConnect++;
    throw systemError('EOPNOTSUPP', 'connect');
  }

  accept(_fd: number): number {
    this.calls.accept++;
    throw systemError('EOPNOTSUPP', 'accept4');
  }

  socketPair(): [number, number] {
    this.calls.socketPair++;
    throw systemError('EOPNOTSUPP', 'socketpair');
  }

  recvmsg(_fd: number, _buffer: Uint8Array, _maxFds: number): { bytes: number; fds: number[] } | -1 {
    this.calls.recvmsg++;
    throw systemError('EOPNOTSUPP', 'recvmsg');
  }

  sendmsg(_fd: number, _buffer: Uint8Array, _fds: readonly number[]): number {
    this.calls.sendmsg++;
    throw systemError('EOPNOTSUPP', 'sendmsg');
  }

  // ----- internals (used by FakeFdWatcher) -----

  /** The UV_* events `fd` is ready for. */
  readiness(fd: number): number {
    const file = this.files.get(fd);
    if (file === undefined) return 0;
    switch (file.kind) {
      case 'eventfd':
        return (file.counter > 0n ? UV_READABLE : 0) | (file.counter < EVENTFD_MAX ? UV_WRITABLE : 0);
      case 'memfd':
        return UV_READABLE | UV_WRITABLE;
      case 'device':
        return (file.readable ? UV_READABLE : 0) | (file.writable ? UV_WRITABLE : 0);
    }
  }

  /** The kind of file `fd` is, or undefined when it is not open. */
  fileKind(fd: number): FakeFile['kind'] | undefined {
    return this.files.get(fd)?.kind;
  }

  /** Read (drain) an eventfd as a KickLoop does, without counting an eventfdRead: true when it had a count. */
  drainEventfd(fd: number): boolean {
    return this.readCounter(fd) >= 0n;
  }

  /** A watcher was started, stopped, closed, ref'd or unref'd: forget closed ones, keep the loop alive. */
  watcherChanged(): void {
    let keepAlive = false;
    for (const loop of this.kickLoops) {
      if (loop.closed) this.kickLoops.delete(loop);
      else if (loop.active && loop.refed && this.keepEventLoopAlive) keepAlive = true;
    }
    for (const watcher of this.watchers) {
      if (watcher.closed) this.watchers.delete(watcher);
      else if (watcher.active && watcher.refed && this.keepEventLoopAlive) keepAlive = true;
    }
    if (keepAlive && this.keepAlive === undefined) {
      this.keepAlive = setInterval(() => {}, 0x7fff_ffff);
    } else if (!keepAlive && this.keepAlive !== undefined) {
      clearInterval(this.keepAlive);
      this.keepAlive = undefined;
    }
  }

  private add(file: FakeFile): number {
    const fd = this.nextFd++;
    this.files.set(fd, file);
    return fd;
  }

  private file(fd: number, syscall: string): FakeFile {
    const file = this.files.get(fd);
    if (file === undefined) throw systemError('EBADF', syscall);
    return file;
  }

  private memfd(fd: number, syscall: string): Memfd {
    const file = this.file(fd, syscall);
    if (file.kind !== 'memfd') throw new Error(`FakeBinding: fd ${fd} is not a memfd`);
    return file;
  }

  private eventfdFile(fd: number, syscall: string): EventfdFile {
    const file = this.file(fd, syscall);
    if (file.kind !== 'eventfd') throw systemError('EINVAL', syscall);
    return file;
  }

  /** Take the counter (or 1 in semaphore mode); -1n when it would block. */
  private readCounter(fd: number): bigint {
    const file = this.eventfdFile(fd, 'read');
    if (file.counter === 0n) {
      if (file.nonBlocking) return -1n;
      throw new Error(`FakeBinding: a blocking read of eventfd ${fd} with counter 0 would hang`);
    }
    const value = file.semaphore ? 1n : file.counter;
    file.counter -= value;
    this.wake(fd);
    return value;
  }

  private addCounter(fd: number, value: bigint): void {
    const file = this.eventfdFile(fd, 'write');
    if (value < 0n || value > EVENTFD_MAX) throw systemError('EINVAL', 'write');
    if (file.counter + value > EVENTFD_MAX) {
      if (file.nonBlocking) throw systemError('EAGAIN', 'write');
      throw new Error(`FakeBinding: a blocking write to eventfd ${fd} would hang (counter overflow)`);
    }
    file.counter += value;
    this.wake(fd);
  }

  private resize(file: Memfd, size: number): void {
    if (size === file.data.byteLength) return;
    if (file.mappings > 0)
      throw new Error(`FakeBinding: cannot resize memfd "${file.name}" while it is mapped`);
    const data = new ArrayBuffer(size);
    new Uint8Array(data).set(new Uint8Array(file.data, 0, Math.min(size, file.data.byteLength)));
    file.data = data;
  }

  /** preadv2/pwritev2 on a memfd. */
  private vectoredIo(
    write: boolean,
    fd: number,
    buffers: readonly Uint8Array[],
    offset: number,
    flags: number,
  ): number {
    const syscall = write ? 'pwritev2' : 'preadv2';
    const file = this.file(fd, syscall);
    if (file.kind !== 'memfd') throw systemError('ESPIPE', syscall);
    if ((flags & ~RWF_KNOWN) !== 0) throw systemError('ENOTSUP', syscall); // EOPNOTSUPP, as libuv names it
    if (offset < -1) throw systemError('EINVAL', syscall);
    const usePosition = offset === -1;
    let at = usePosition ? file.position : offset;
    if (write && (flags & RWF_APPEND) !== 0) at = file.data.byteLength;
    const used = buffers.length > IOV_MAX ? buffers.slice(0, IOV_MAX) : buffers;
    let length = 0;
    for (const buffer of used) length += buffer.byteLength;
    if (!write) length = Math.max(0, Math.min(length, file.data.byteLength - at));
    if ((flags & RWF_NOWAIT) !== 0 && length > 0) {
      const allowed = this.onNowait(fd, write, at, length);
      if (allowed <= 0) return -1;
      length = Math.min(length, allowed);
    }
    if (write) this.resize(file, Math.max(file.data.byteLength, at + length));
    const bytes = new Uint8Array(file.data);
    let done = 0;
    for (const buffer of used) {
      if (done === length) break;
      const n = Math.min(buffer.byteLength, length - done);
      if (write) bytes.set(buffer.subarray(0, n), at + done);
      else buffer.set(bytes.subarray(at + done, at + done + n));
      done += n;
    }
    if (usePosition) file.position = at + done;
    return done;
  }

  /** Let the watchers of `fd` fire if it became ready. */
  private wake(fd: number): void {
    for (const watcher of this.watchers) if (watcher.fd === fd) watcher.arm();
    for (const loop of this.kickLoops) if (loop.kickFds.includes(fd)) loop.arm();
  }
}
