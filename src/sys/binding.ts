/**
 * The one door between TypeScript and the kernel: every syscall the project makes goes through a
 * SysBinding. The real one is the N-API addon in native/ (loaded by ./native.ts); unit tests pass a
 * fake (src/testing/fake-binding.ts). Arguments are validated in TypeScript before they get here.
 *
 * Errors thrown by a binding are Node-style system errors: `code` ('ENOTTY'), `errno` (negative,
 * as libuv reports them) and `syscall` ('ioctl').
 */

/** mmap protection bits (asm-generic/mman-common.h). */
export const PROT_NONE = 0;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
/** mmap flags. */
export const MAP_SHARED = 1;
export const MAP_PRIVATE = 2;
/** eventfd(2) flags. */
export const EFD_SEMAPHORE = 1;
export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;
/** memfd_create(2) flags. */
export const MFD_CLOEXEC = 1;
export const MFD_ALLOW_SEALING = 2;
/** poll events understood by FdWatcher (uv_poll_event values). */
export const UV_READABLE = 1;
export const UV_WRITABLE = 2;
export const UV_DISCONNECT = 4;
export const UV_PRIORITIZED = 8;

/**
 * Called by an FdWatcher when the fd is ready. `status` is 0 or a negative errno (e.g. -EBADF);
 * `events` is the set of UV_* bits that are ready.
 */
export type FdWatcherCallback = (status: number, events: number) => void;

/** An fd watched on the event loop of the thread that created it (libuv uv_poll_t). */
export interface FdWatcher {
  /** Start (or change the events of) watching. */
  start(events: number): void;
  /** Stop watching; start() may be called again. */
  stop(): void;
  /** Stop for good and release the handle. The fd itself is not closed. */
  close(): void;
  /** Do not keep the event loop alive for this watcher. */
  unref(): void;
  /** Keep the event loop alive while watching (the default). */
  ref(): void;
}

/** Slots of KickLoop.stats. */
export const KICK_STAT_FAILED_IRQS = 0;
/** The (negative) errno of the last interrupt that could not be injected. */
export const KICK_STAT_LAST_ERRNO = 1;
/** Wake-ups that found at least one kick or, spinning, new work on a watched ring (one callback each). */
export const KICK_STAT_WAKEUPS = 2;
/** Spins over the watched rings (setPoll), those that found new work, and the time spent spinning (ns). */
export const KICK_STAT_POLLS = 3;
export const KICK_STAT_POLL_HITS = 4;
export const KICK_STAT_POLL_NS = 5;
/** Kicks for work that had been served already (found by a spin): read, with no callback. */
export const KICK_STAT_ABSORBED = 6;
export const KICK_STAT_COUNT = 7;

/** KickLoop.watch kinds: a split queue's avail ring (work when avail.idx != mark). */
export const WATCH_SPLIT = 0;
/**
 * A packed queue's descriptor ring: mark = (next avail position << 1) | avail wrap counter; work when that
 * descriptor is available for the wrap counter (virtio 1.1 2.8.1).
 */
export const WATCH_PACKED = 1;

/**
 * A queue thread's run-to-completion wait for kicks (native/vduse_native.cc, KickLoop): instead of a libuv
 * callback per ready kick fd, a prepare handle on the calling thread's loop waits on every queue's kick
 * eventfd and on libuv's own backend fd at once, for as long as libuv itself would block. Each wake-up drains
 * the ready kick eventfds, marks their queues in `kicked`, makes ONE callback (microtasks drain after it),
 * then injects the interrupts marked in `signals`. Interrupts marked outside the callback (completions of
 * thread-pool I/O, timers, immediates) are injected the next time the loop would block. Control returns to
 * libuv whenever its backend fd is ready or a timer, immediate or stop is due, so every other kind of
 * callback on the thread still runs.
 *
 * The typed arrays are made once and shared with native code: no allocation and no crossing per kick or
 * per interrupt.
 */
export interface KickLoop {
  /**
   * kicked[i] is 1 when queue i was kicked since the callback last cleared it, 2 when a spin found new work on
   * its ring (the callback clears it).
   */
  readonly kicked: Int32Array;
  /** Set signals[i] = 1 to have queue i's interrupt injected (once, however often it was set). */
  readonly signals: Int32Array;
  /** See KICK_STAT_*: failed injections (and the last errno), wake-ups, polling. Written by the loop only. */
  readonly stats: Float64Array;
  /**
   * marks[i]: where queue i's ring is idle, the device having served everything up to it (see WATCH_*), or -1
   * when that is not known (the loop then neither spins on the queue nor absorbs its kicks). Written by JS
   * (initially -1), read by the loop before each spin and each kick.
   */
  readonly marks: Int32Array;
  /** Wait for kicks of queue `index` on the eventfd `fd` (the loop reads it). EEXIST when it has one. */
  addKick(index: number, fd: number): void;
  /** Stop waiting for kicks of queue `index` (before its fd is closed); clears kicked[index]. */
  removeKick(index: number): void;
  /**
   * How queue `index`'s interrupt is injected: `request` 0 writes 1 to the eventfd `fd` (a vhost-user call fd),
   * else ioctl(fd, request, &u32 index) (VDUSE_VQ_INJECT_IRQ on the device fd). fd -1: none (a marked
   * interrupt is dropped). An interrupt still pending is injected first, with the old target.
   */
  setInterrupt(index: number, fd: number, request: number): void;
  /** Inject the marked interrupts now. */
  flush(): void;
  /**
   * The ring word that shows queue `index`'s new work without a kick: `view` is the split avail ring (u16
   * from its flags) or the packed descriptor ring (u16 from the first descriptor), `kind` WATCH_SPLIT or
   * WATCH_PACKED; null: none. With it (and marks[index] >= 0) a kick for work already served is absorbed,
   * and while setPoll's window is open the loop spins over the watched rings before it blocks. The loop
   * looks the view up again after any munmap (a detached view is no watch), so it never reads memory that is
   * gone; the caller sets the view again when the queue's ring is mapped anew. removeKick drops it too.
   */
  watch(index: number, view: Uint16Array | null, kind: number): void;
  /** Spin over the watched rings for up to `windowNs` before blocking (0: never, the default). */
  setPoll(windowNs: number): void;
  /** Start waiting (on the loop of the thread that created it). */
  start(): void;
  /** Stop waiting; start() may be called again. */
  stop(): void;
  /** Stop for good and release the handle (no fd is closed). */
  close(): void;
  /** Do not keep the event loop alive for this loop. */
  unref(): void;
  /** Keep the event loop alive while started (the default). */
  ref(): void;
}

/** Called by a KickLoop once per wake-up with kicks; the kicked queues are marked in KickLoop.kicked. */
export type KickLoopCallback = () => void;

export interface SysBinding {
  /** ioctl(2). `request` is an unsigned long (values >= 2^31 are fine); `arg` is an in/out buffer or an integer. Returns the ioctl's non-negative result. */
  ioctl(fd: number, request: number, arg: Uint8Array | number): number;
  /** mmap(2) of `length` bytes at file `offset`; returns a zero-copy ArrayBuffer over the mapping. */
  mmap(fd: number, length: number, prot: number, flags: number, offset: number): ArrayBuffer;
  /** Detach every view of `buffer`, then munmap it. Calling it twice, or after the GC finalizer, is a no-op. */
  munmap(buffer: ArrayBuffer): void;
  /** memfd_create(2); returns the fd. */
  memfdCreate(name: string, flags: number): number;
  /** eventfd(2); returns the fd. */
  eventfd(initval: number, flags: number): number;
  /** Read an eventfd's counter. Returns -1 when it would block (EAGAIN on a non-blocking fd), else the counter (as a number, exact up to 2^53). */
  eventfdRead(fd: number): number;
  /** Add `value` to an eventfd's counter. */
  eventfdWrite(fd: number, value: number): void;
  /** A libuv poll watcher on `fd`, on the calling thread's loop. */
  createFdWatcher(fd: number, callback: FdWatcherCallback): FdWatcher;
  /**
   * A KickLoop for queues 0..numQueues-1 on the calling thread's loop. `injected[i]` (a Float64Array of
   * numQueues slots, e.g. a view of shared counters) is incremented for every interrupt of queue i injected,
   * `kicks[i]` (the same kind, optional) for every kick of queue i it reads, absorbed ones included.
   */
  createKickLoop(
    numQueues: number,
    injected: Float64Array,
    callback: KickLoopCallback,
    kicks?: Float64Array,
  ): KickLoop;
  /** A full memory fence (atomic_thread_fence(seq_cst)). */
  fence(): void;
  /** read(2) into `buffer`. Returns the byte count, or -1 when it would block (EAGAIN). */
  read(fd: number, buffer: Uint8Array): number;
  /** write(2) of `buffer`. Returns the byte count, or -1 when it would block (EAGAIN). */
  write(fd: number, buffer: Uint8Array): number;
  /**
   * preadv2(2): read into `buffers` in order from file `offset` (-1: from the file position, which moves), with
   * RWF_* `flags`, on the calling thread. At most IOV_MAX (1024) buffers are used per call; a caller with more
   * sees a short count and goes on with the rest. Returns the byte count (short at the end of the file, or when
   * RWF_NOWAIT could do only part of it), or -1 when the call would block (EAGAIN: with RWF_NOWAIT, data not in
   * the page cache). A flag the file's filesystem cannot honour fails with EOPNOTSUPP (code 'ENOTSUP').
   */
  preadv2(fd: number, buffers: readonly Uint8Array[], offset: number, flags: number): number;
  /** pwritev2(2): write `buffers` in order at `offset`; as preadv2 otherwise (-1 when it would block). */
  pwritev2(fd: number, buffers: readonly Uint8Array[], offset: number, flags: number): number;
  /** fallocate(2) (FALLOC_FL_* mode bits). Throws ENOTSUP/EOPNOTSUPP where the filesystem cannot. */
  fallocate(fd: number, mode: number, offset: number, length: number): void;
  /**
   * socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol) bound to an automatic port id. `nonBlocking` adds
   * SOCK_NONBLOCK. Returns the fd; messages sent on it go to the kernel.
   */
  netlinkSocket(protocol: number, nonBlocking: boolean): number;
  /** send(2) on a socket. Returns the byte count, or -1 when it would block. */
  send(fd: number, buffer: Uint8Array): number;
  /** recv(2) on a socket. Returns the byte count (0 at end), or -1 when it would block. */
  recv(fd: number, buffer: Uint8Array): number;
  /**
   * A non-blocking CLOEXEC Unix stream socket bound at `path`, chmod'ed to `mode` before listen(2) (nobody can
   * connect while it has the umask's mode). The path must not exist (EADDRINUSE otherwise; see
   * ./unix-socket.ts for the checks around it). Returns the listening fd.
   */
  unixListen(path: string, backlog: number, mode: number): number;
  /** A Unix stream socket connected to `path` (then non-blocking, CLOEXEC). */
  unixConnect(path: string): number;
  /** accept4(2) with SOCK_NONBLOCK | SOCK_CLOEXEC: the new fd, or -1 when no connection is waiting. */
  accept(fd: number): number;
  /** socketpair(AF_UNIX, SOCK_STREAM) non-blocking and CLOEXEC: two connected fds. */
  socketPair(): [number, number];
  /**
   * recvmsg(2) into `buffer` with at most `maxFds` (<= MAX_PASSED_FDS) fds as SCM_RIGHTS (received CLOEXEC).
   * Returns the byte count (0 at end) and the fds, or -1 when it would block. More fds than `maxFds`
   * (MSG_CTRUNC) closes the ones that arrived and throws EMSGSIZE.
   */
  recvmsg(fd: number, buffer: Uint8Array, maxFds: number): { bytes: number; fds: number[] } | -1;
  /** sendmsg(2) of `buffer` with `fds` (<= MAX_PASSED_FDS) as SCM_RIGHTS, MSG_NOSIGNAL. Bytes sent, or -1 when it would block. */
  sendmsg(fd: number, buffer: Uint8Array, fds: readonly number[]): number;
}

/** The most fds recvmsg/sendmsg pass in one message. */
export const MAX_PASSED_FDS = 32;

/** preadv2/pwritev2 flags (RWF_* in linux/fs.h). */
/** Poll for completion (polled block-device I/O with O_DIRECT). */
export const RWF_HIPRI = 0x01;
/** This write is durable when the call returns (as O_DSYNC for one call). */
export const RWF_DSYNC = 0x02;
/** As RWF_DSYNC, with the metadata too (O_SYNC). */
export const RWF_SYNC = 0x04;
/** Fail with EAGAIN (the binding returns -1) rather than wait, e.g. for data not in the page cache. */
export const RWF_NOWAIT = 0x08;
/** Append to the end of the file (the offset is ignored). */
export const RWF_APPEND = 0x10;

/** fallocate(2) mode bits (linux/falloc.h). */
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;
