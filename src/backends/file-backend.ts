/**
 * The file backend: a raw image file or a block device.
 *
 * Reads and writes are positional readv/writev straight from and into the guest's buffers (no copy). With
 * `direct` (O_DIRECT) the page cache is bypassed; a request whose buffers the kernel refuses as misaligned goes
 * through an aligned bounce buffer instead, and a request whose offset or length is not a multiple of the
 * direct-I/O alignment goes through a second, buffered descriptor of the same file (the kernel keeps the two
 * coherent). Flush is fdatasync. Discard punches a hole; write-zeroes uses FALLOC_FL_ZERO_RANGE (or a hole when
 * unmapping is allowed) and falls back to writing zeroes where the filesystem cannot.
 *
 * Where a read or write runs. Handing a request to libuv's thread pool and back costs two thread wake-ups, more
 * than copying 4 KiB, so a buffered request is first tried on the event-loop thread where it cannot wait for
 * storage, and only what is left goes to the pool (`nowait: false` turns this off):
 * - on memory-backed files (tmpfs, ramfs; with no swap configured) reads and writes never wait for storage:
 *   plain preadv2/pwritev2 on the loop thread, the pool only for the end of a shrunk file;
 * - elsewhere (ext4, block devices, ...) preadv2/pwritev2 with RWF_NOWAIT: page-cache hits complete on the loop
 *   thread, a miss (EAGAIN) or the part not in the cache goes to the pool. A filesystem that refuses RWF_NOWAIT
 *   for one direction (EOPNOTSUPP: on Linux 6.12 buffered writes on ext4, and everything on 9p) is not asked
 *   again; a run of misses makes the backend ask less often.
 * Requests over INLINE_MAX bytes and O_DIRECT requests (RWF_NOWAIT there would still wait for the device) always
 * go to the pool.
 *
 * Node runs readv/writev/fdatasync in the libuv thread pool, which has 4 threads unless UV_THREADPOOL_SIZE says
 * otherwise: at most that many requests reach the kernel at once. Raise it for deep queues on fast storage.
 * fallocate (discard, write-zeroes) is a synchronous call through the SysBinding.
 */
import { readFile, statfs } from 'node:fs/promises';
import fs from 'node:fs';
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  MAP_SHARED,
  MFD_CLOEXEC,
  PROT_READ,
  PROT_WRITE,
  RWF_NOWAIT,
  type SysBinding,
} from '../sys/binding.js';
import { loadNativeBinding } from '../sys/native.js';
import { BackendError, type BackendCapabilities, type BlockBackend } from './backend.js';
import { UsageError, messageOf } from '../common/errors.js';
import { SECTOR_SIZE, checkBackendSize, formatSize } from './size.js';

/** ioctl(BLKGETSIZE64): the size of a block device in bytes (u64). */
export const BLKGETSIZE64 = 0x80081272;
/** ioctl(BLKSSZGET): logical block size (int). */
export const BLKSSZGET = 0x1268;
/** ioctl(BLKPBSZGET): physical block size (unsigned int). */
export const BLKPBSZGET = 0x127b;
/** ioctl(BLKIOOPT): optimal I/O size in bytes (unsigned int). */
export const BLKIOOPT = 0x1279;

/** Most iovecs one readv/writev takes (IOV_MAX on Linux). */
const IOV_MAX = 1024;
/** Bounce buffers and the zero buffer are allocated in multiples of this. */
const BOUNCE_MIN = 64 * 1024;
const BOUNCE_POOL_LIMIT = 8;
const ZERO_BUFFER_SIZE = 1024 * 1024;
/** Largest range one fallocate call gets (the call blocks the event loop). */
const FALLOCATE_STEP = 1024 * 1024 * 1024;
/** Largest request tried on the event-loop thread; bigger ones go to the thread pool (the copy would hold the loop). */
export const INLINE_MAX = 256 * 1024;
/** statfs f_type of filesystems whose files live in memory (linux/magic.h). */
const TMPFS_MAGIC = 0x01021994;
const RAMFS_MAGIC = 0x858458f6;
/**
 * statfs f_type of pseudo filesystems whose files are not storage (their size in stat is 0 or made up, their
 * contents generated): procfs, sysfs, debugfs, tracefs, securityfs, cgroup, cgroup2, configfs, bpf, efivarfs,
 * pstore. Refused as images.
 */
const PSEUDO_FS: ReadonlyMap<number, string> = new Map([
  [0x9fa0, 'procfs'],
  [0x62656572, 'sysfs'],
  [0x64626720, 'debugfs'],
  [0x74726163, 'tracefs'],
  [0x73636673, 'securityfs'],
  [0x27e0eb, 'cgroup'],
  [0x63677270, 'cgroup2'],
  [0x62656570, 'configfs'],
  [0xcafe4a11, 'bpf'],
  [0xde5e81e4, 'efivarfs'],
  [0x6165676c, 'pstore'],
]);
/** After this many RWF_NOWAIT misses in a row, skip the attempt for a while (16, 32, ... 256 requests). */
const MISS_LIMIT = 16;
const MAX_BACKOFF = 256;
const RESOLVED: Promise<void> = Promise.resolve();

/**
 * How reads or writes are tried on the event-loop thread before the thread pool: not at all, with RWF_NOWAIT, or
 * plainly (memory-backed files, where nothing waits for storage).
 */
export type InlineMode = 'off' | 'nowait' | 'inline';

/** The event-loop path of one direction: its mode and the back-off after RWF_NOWAIT misses. */
interface InlinePath {
  mode: InlineMode;
  misses: number;
  skip: number;
  backoff: number;
}

/** Requests that were tried on the event-loop thread: done there, partly done there, or handed on at once. */
export interface InlineStats {
  /** Completed on the event-loop thread. */
  done: number;
  /** Partly done there; the rest went to the thread pool. */
  partial: number;
  /** Nothing done there (EAGAIN, a back-off, or refused): all of it went to the thread pool. */
  handedOn: number;
}

export interface FileBackendOptions {
  /** A regular file or a block device. */
  path: string;
  /** Open read-only. Without it, a file that cannot be opened for writing (EACCES, EROFS) is served read-only. */
  readOnly?: boolean;
  /** Open with O_DIRECT (bypass the page cache). */
  direct?: boolean;
  /**
   * Create the file with this size (bytes, a multiple of 512) when it does not exist. An existing file must
   * already have this size.
   */
  size?: number;
  /** Direct-I/O alignment in bytes (a power of two >= 512); by default the block device's logical block size or a probe. */
  directAlignment?: number;
  /**
   * Try buffered reads and writes on the event-loop thread first (RWF_NOWAIT, or plainly on tmpfs): see the top
   * of this file. Default true; false sends every read and write to the thread pool.
   */
  nowait?: boolean;
  /** Syscalls (preadv2/pwritev2, fallocate, ioctl, aligned memory). Default: the native addon, loaded on first use. */
  binding?: SysBinding;
  /** Where notes go (a fallback taken, a trailing partial sector ignored). Default: none. */
  log?: (message: string) => void;
}

/** Node's callback fs.readv/fs.writev as promises. */
function readvAt(fd: number, buffers: readonly Uint8Array[], position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.readv(fd, buffers, position, (error, bytes) => (error === null ? resolve(bytes) : reject(error)));
  });
}

function writevAt(fd: number, buffers: readonly Uint8Array[], position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.writev(fd, buffers, position, (error, bytes) => (error === null ? resolve(bytes) : reject(error)));
  });
}

function errorCode(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** The filesystem or device cannot do this fallocate mode (EOPNOTSUPP; libuv names it ENOTSUP). */
function isNotSupported(error: unknown): boolean {
  const code = errorCode(error);
  return code === 'ENOTSUP' || code === 'EOPNOTSUPP' || (error as { errno?: unknown } | null)?.errno === -95;
}

function totalLength(buffers: readonly Uint8Array[]): number {
  let total = 0;
  for (const buffer of buffers) total += buffer.length;
  return total;
}

/** `buffers` without their first `skip` bytes (fewer than their total). */
function skipBytes(buffers: readonly Uint8Array[], skip: number): Uint8Array[] {
  let index = 0;
  while (skip >= buffers[index]!.length) skip -= buffers[index++]!.length;
  const rest = buffers.slice(index);
  rest[0] = rest[0]!.subarray(skip);
  return rest;
}

/**
 * Transfer all of `buffers` at `position`, looping over short transfers and IOV_MAX. A read that meets the end
 * of the file (the file shrank behind our back) leaves zeroes in the rest.
 */
async function transferAll(write: boolean, fd: number, position: number, buffers: readonly Uint8Array[]) {
  let pending: readonly Uint8Array[] = buffers;
  while (pending.length > 0) {
    const batch = pending.length > IOV_MAX ? pending.slice(0, IOV_MAX) : pending;
    const wanted = totalLength(batch);
    const done = write ? await writevAt(fd, batch, position) : await readvAt(fd, batch, position);
    if (done === wanted) {
      pending = batch === pending ? [] : pending.slice(batch.length);
      position += done;
      continue;
    }
    if (done === 0) {
      if (write) throw new BackendError('writev wrote nothing', 'EIO');
      for (const buffer of pending) buffer.fill(0);
      return;
    }
    // Short transfer: skip the bytes done and go on with the rest.
    position += done;
    pending = skipBytes(pending, done);
  }
}

/** The part of a request still to do. */
interface Remainder {
  position: number;
  buffers: readonly Uint8Array[];
}

/** The name of the pseudo filesystem (procfs, sysfs, ...) `fd` is on, or undefined. */
async function pseudoFilesystem(fd: number): Promise<string | undefined> {
  try {
    return PSEUDO_FS.get((await statfs(`/proc/self/fd/${fd}`)).type);
  } catch {
    return undefined;
  }
}

/** Whether files on the filesystem of `fd` live in memory (tmpfs, ramfs) and no swap could move them to disk. */
async function memoryBacked(fd: number): Promise<boolean> {
  try {
    const type = (await statfs(`/proc/self/fd/${fd}`)).type;
    if (type !== TMPFS_MAGIC && type !== RAMFS_MAGIC) return false;
    // /proc/swaps: a header line, then one line per active swap area.
    const swaps = (await readFile('/proc/swaps', 'utf8')).trim().split('\n');
    return swaps.length === 1;
  } catch {
    return false;
  }
}

type FileKind = 'file' | 'block-device';

export class FileBackend implements BlockBackend {
  readonly path: string;
  readonly kind: FileKind;
  /**
   * The file did not exist and open() created it (`size`). A caller whose start-up fails after open() should
   * close the backend and remove the file again (open() itself removes it when it fails).
   */
  readonly created: boolean;
  readonly readOnly: boolean;
  readonly direct: boolean;
  /** Offsets, lengths and buffers of O_DIRECT requests are multiples of this (1 without direct). */
  readonly directAlignment: number;
  readonly capabilities: BackendCapabilities;
  /** How O_DIRECT requests went: straight from guest memory, through a bounce buffer, or buffered. */
  readonly directStats = { direct: 0, bounced: 0, buffered: 0 };
  /** How buffered reads and writes tried on the event-loop thread went. */
  readonly inlineStats: InlineStats = { done: 0, partial: 0, handedOn: 0 };
  readonly #reads: InlinePath;
  readonly #writes: InlinePath;
  #size: number;
  readonly #fd: number;
  /** A second descriptor without O_DIRECT, for requests not aligned for direct I/O (opened on first need). */
  #bufferedFd: Promise<number> | null = null;
  #binding: SysBinding | null | undefined;
  readonly #log: (message: string) => void;
  /** Memory the kernel refused for O_DIRECT (EINVAL): go through a bounce buffer for these at once. */
  readonly #unalignedMemory = new WeakSet<ArrayBufferLike>();
  readonly #bouncePool: Uint8Array[] = [];
  /** Every mapping made for aligned memory, unmapped at close. */
  readonly #mappings: ArrayBuffer[] = [];
  #zeroBuffer: Uint8Array | null = null;
  #punchHole = true;
  #zeroRange = true;
  #closed = false;

  private constructor(init: {
    path: string;
    kind: FileKind;
    created: boolean;
    fd: number;
    size: number;
    readOnly: boolean;
    direct: boolean;
    directAlignment: number;
    capabilities: BackendCapabilities;
    binding: SysBinding | undefined;
    log: (message: string) => void;
    readMode: InlineMode;
    writeMode: InlineMode;
  }) {
    this.path = init.path;
    this.kind = init.kind;
    this.created = init.created;
    this.#fd = init.fd;
    this.#size = init.size;
    this.readOnly = init.readOnly;
    this.direct = init.direct;
    this.directAlignment = init.directAlignment;
    this.capabilities = init.capabilities;
    this.#binding = init.binding;
    this.#log = init.log;
    this.#reads = { mode: init.readMode, misses: 0, skip: 0, backoff: MISS_LIMIT };
    this.#writes = { mode: init.writeMode, misses: 0, skip: 0, backoff: MISS_LIMIT };
  }

  /** Open (or create) the file. Errors a user can fix are UsageErrors with a one-line message. */
  static async open(options: FileBackendOptions): Promise<FileBackend> {
    const { path } = options;
    const log = options.log ?? (() => {});
    const direct = options.direct ?? false;
    if (options.size !== undefined) checkBackendSize(options.size, `file ${path}`);
    if (options.directAlignment !== undefined) {
      const a = options.directAlignment;
      if (!Number.isInteger(a) || a < SECTOR_SIZE || (a & (a - 1)) !== 0) {
        throw new RangeError(`file ${path}: direct-I/O alignment ${a} is not a power of two >= 512`);
      }
    }
    const directFlag = direct ? fs.constants.O_DIRECT : 0;
    let readOnly = options.readOnly ?? false;
    let created = false;
    let fallbackNote: string | undefined;
    let fd: number;
    try {
      fd = await openFile(path, (readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR) | directFlag);
    } catch (error) {
      const code = errorCode(error);
      if (code === 'ENOENT' && options.size !== undefined && !readOnly) {
        const { O_RDWR, O_CREAT, O_EXCL } = fs.constants;
        fd = await openFile(path, O_RDWR | O_CREAT | O_EXCL | directFlag).catch((e: unknown) => {
          throw openError(path, e, direct);
        });
        created = true;
      } else if (!readOnly && (code === 'EACCES' || code === 'EROFS' || code === 'EPERM')) {
        fd = await openFile(path, fs.constants.O_RDONLY | directFlag).catch((e: unknown) => {
          throw openError(path, e, direct);
        });
        readOnly = true;
        // Noted once the file proved usable (a refused file is one line, not a note and a refusal).
        fallbackNote = `file ${path}: cannot open it for writing (${code}); serving it read-only`;
      } else {
        throw openError(path, error, direct);
      }
    }
    try {
      const backend = await FileBackend.#setUp(fd, { ...options, readOnly, direct, log }, created);
      if (fallbackNote !== undefined) log(fallbackNote);
      return backend;
    } catch (error) {
      await new Promise<void>((resolve) => fs.close(fd, () => resolve()));
      if (created) await fs.promises.unlink(path).catch(() => {});
      throw error;
    }
  }

  static async #setUp(
    fd: number,
    options: FileBackendOptions & { readOnly: boolean; direct: boolean; log: (message: string) => void },
    created: boolean,
  ): Promise<FileBackend> {
    const { path, log } = options;
    const stat = await fstat(fd);
    let binding = options.binding;
    const sys = (): SysBinding => (binding ??= loadNativeBinding());
    let kind: FileKind;
    let size: number;
    let logicalBlockSize = SECTOR_SIZE;
    let physicalBlockSize = SECTOR_SIZE;
    let optIoSize = 0;
    if (stat.isBlockDevice()) {
      kind = 'block-device';
      const arg = new Uint8Array(8);
      try {
        sys().ioctl(fd, BLKGETSIZE64, arg);
      } catch (error) {
        throw new UsageError(`file ${path}: cannot get the block device size: ${messageOf(error)}`, {
          cause: error,
        });
      }
      size = Number(new DataView(arg.buffer).getBigUint64(0, true));
      logicalBlockSize = ioctlU32(sys(), fd, BLKSSZGET) ?? SECTOR_SIZE;
      physicalBlockSize = ioctlU32(sys(), fd, BLKPBSZGET) ?? logicalBlockSize;
      optIoSize = ioctlU32(sys(), fd, BLKIOOPT) ?? 0;
      if (options.size !== undefined && options.size !== size) {
        throw new UsageError(
          `file ${path}: a block device of ${formatSize(size)} cannot take size=${formatSize(options.size)}`,
        );
      }
    } else if (stat.isFile()) {
      kind = 'file';
      size = stat.size;
      const pseudo = await pseudoFilesystem(fd);
      if (pseudo !== undefined) {
        throw new UsageError(
          `file ${path}: is on ${pseudo}, not a disk image (its size and contents are made up)`,
          {
            code: 'ERR_BACKEND_NOT_STORAGE',
          },
        );
      }
      if (created) {
        size = options.size ?? 0;
        await ftruncate(fd, size);
      } else if (options.size !== undefined && options.size !== size) {
        throw new UsageError(
          `file ${path}: it exists with ${size} bytes, not size=${options.size} (drop size= to use it as it is)`,
        );
      }
    } else {
      throw new UsageError(`file ${path}: not a regular file or a block device`, {
        code: 'ERR_BACKEND_NOT_STORAGE',
      });
    }
    if (size < SECTOR_SIZE) {
      // Nothing to serve, like null:0 (a device of 0 sectors).
      const bytes = size === 0 ? '0 bytes' : `${size} bytes, less than one 512-byte sector`;
      const hint = kind === 'file' ? `; give it a size first, e.g. truncate -s 1G ${path}` : '';
      throw new UsageError(`file ${path}: is empty (${bytes})${hint}`, { code: 'ERR_BACKEND_EMPTY' });
    }
    if (size % SECTOR_SIZE !== 0) {
      const used = size - (size % SECTOR_SIZE);
      log(
        `file ${path}: its size ${size} is not a multiple of 512; the last ${size - used} bytes are not used`,
      );
      size = used;
    }

    let directAlignment = 1;
    if (options.direct) {
      if (options.directAlignment !== undefined) directAlignment = options.directAlignment;
      else if (kind === 'block-device') directAlignment = Math.max(logicalBlockSize, SECTOR_SIZE);
      else {
        binding ??= tryLoad() ?? undefined;
        directAlignment = await probeDirectAlignment(fd, size, binding ?? null);
      }
    }
    let readMode: InlineMode = 'off';
    if (options.nowait !== false && !options.direct) {
      binding ??= tryLoad() ?? undefined;
      if (binding !== undefined && canVectorIo(binding, fd)) {
        readMode = kind === 'file' && (await memoryBacked(fd)) ? 'inline' : 'nowait';
      }
    }
    const writeMode = options.readOnly ? 'off' : readMode;
    const minIoSize = Math.max(options.direct ? directAlignment : SECTOR_SIZE, physicalBlockSize);
    const capabilities: BackendCapabilities = {
      flush: true,
      discard: true,
      writeZeroes: true,
      writeZeroesUnmap: true,
      secureErase: false,
      minIoSize,
      optIoSize: optIoSize % minIoSize === 0 ? optIoSize : 0,
      discardAlignment: kind === 'file' ? Math.max(stat.blksize, SECTOR_SIZE) : physicalBlockSize,
    };
    return new FileBackend({
      path,
      kind,
      created,
      fd,
      size,
      readOnly: options.readOnly,
      direct: options.direct,
      directAlignment,
      capabilities,
      binding,
      log,
      readMode,
      writeMode,
    });
  }

  get size(): number {
    return this.#size;
  }

  /** How reads and writes are tried on the event-loop thread now (a refused RWF_NOWAIT turns a direction off). */
  get inlineModes(): { read: InlineMode; write: InlineMode } {
    return { read: this.#reads.mode, write: this.#writes.mode };
  }

  read(offset: number, buffers: readonly Uint8Array[]): Promise<void> {
    if (this.#closed) return Promise.reject(this.#closedError());
    if (this.direct) return this.#directTransfer(false, offset, buffers);
    if (this.#reads.mode === 'off') return transferAll(false, this.#fd, offset, buffers);
    let rest: Remainder | null;
    try {
      rest = this.#inline(this.#reads, false, offset, buffers);
    } catch (error) {
      return Promise.reject(error as Error);
    }
    return rest === null ? RESOLVED : transferAll(false, this.#fd, rest.position, rest.buffers);
  }

  write(offset: number, buffers: readonly Uint8Array[], options?: { fua?: boolean }): Promise<void> {
    try {
      this.#checkWritable();
      const fua = options?.fua === true;
      if (this.direct || this.#writes.mode === 'off') return this.#writeInPool(offset, buffers, fua);
      const rest = this.#inline(this.#writes, true, offset, buffers);
      if (rest === null) return fua ? this.#fdatasync() : RESOLVED;
      return this.#writeInPool(rest.position, rest.buffers, fua);
    } catch (error) {
      return Promise.reject(error as Error);
    }
  }

  async #writeInPool(offset: number, buffers: readonly Uint8Array[], fua: boolean): Promise<void> {
    if (this.direct) await this.#directTransfer(true, offset, buffers);
    else await transferAll(true, this.#fd, offset, buffers);
    if (fua) await this.#fdatasync();
  }

  /**
   * Do as much of a buffered request as can be done on this thread without waiting for storage. Returns null
   * when it is all done, else what is left for the thread pool. Throws only in 'inline' mode, for a real failure
   * (in 'nowait' mode the thread pool retries and reports it).
   */
  #inline(
    path: InlinePath,
    write: boolean,
    offset: number,
    buffers: readonly Uint8Array[],
  ): Remainder | null {
    if (path.skip > 0) {
      path.skip--;
      this.inlineStats.handedOn++;
      return { position: offset, buffers };
    }
    const binding = this.#binding!;
    const flags = path.mode === 'nowait' ? RWF_NOWAIT : 0;
    let position = offset;
    let pending = buffers;
    for (;;) {
      const count = Math.min(pending.length, IOV_MAX);
      let wanted = 0;
      for (let i = 0; i < count; i++) wanted += pending[i]!.length;
      if (position === offset && wanted > INLINE_MAX) break;
      let done: number;
      try {
        done = write
          ? binding.pwritev2(this.#fd, pending, position, flags)
          : binding.preadv2(this.#fd, pending, position, flags);
      } catch (error) {
        if (flags === 0) throw error;
        // EOPNOTSUPP: this filesystem cannot do RWF_NOWAIT in this direction; stop asking.
        const code = errorCode(error);
        if (isNotSupported(error) || code === 'EINVAL' || code === 'ENOSYS') path.mode = 'off';
        break;
      }
      if (done === wanted) {
        if (count === pending.length) {
          path.misses = 0;
          path.backoff = MISS_LIMIT;
          this.inlineStats.done++;
          return null;
        }
        pending = pending.slice(count);
        position += done;
        continue;
      }
      if (done < 0 && position === offset && ++path.misses >= MISS_LIMIT) {
        // Misses in a row (data not in the page cache): try again only after a while.
        path.skip = path.backoff;
        path.backoff = Math.min(path.backoff * 2, MAX_BACKOFF);
      }
      // Would block (-1), or nothing more here (0: the end of the file, which the pool path handles).
      if (done <= 0) break;
      // Short: RWF_NOWAIT found only part of it in the cache; plainly, the end of the file comes next.
      path.misses = 0;
      path.backoff = MISS_LIMIT;
      position += done;
      pending = skipBytes(pending, done);
      if (flags !== 0) break;
    }
    if (position === offset) this.inlineStats.handedOn++;
    else this.inlineStats.partial++;
    return { position, buffers: pending };
  }

  flush(): Promise<void> {
    if (this.#closed) return Promise.reject(this.#closedError());
    return this.#fdatasync();
  }

  /** Punch a hole. Where the filesystem cannot, discard does nothing (it is a hint). */
  async discard(offset: number, length: number): Promise<void> {
    this.#checkWritable();
    if (length === 0 || !this.#punchHole) return;
    const binding = this.#sys();
    if (binding === null) return;
    await this.#fallocate(binding, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
    if (!this.#punchHole)
      this.#log(`file ${this.path}: the filesystem cannot punch holes; discard does nothing`);
  }

  /** Zero a range: a hole when `unmap` allows it, else FALLOC_FL_ZERO_RANGE, else written zeroes. */
  async writeZeroes(offset: number, length: number, options?: { unmap?: boolean }): Promise<void> {
    this.#checkWritable();
    const end = offset + length;
    const binding = this.#sys();
    if (binding !== null && options?.unmap === true && this.#punchHole) {
      offset += await this.#fallocate(
        binding,
        FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
        offset,
        end - offset,
      );
    }
    if (binding !== null && this.#zeroRange && offset < end) {
      offset += await this.#fallocate(
        binding,
        FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
        offset,
        end - offset,
      );
    }
    if (offset < end) await this.#writeZeroBuffers(offset, end - offset);
  }

  /**
   * Resize to `size` (a multiple of 512). A writable regular file is truncated (grown or shrunk). A read-only
   * file or a block device cannot be changed from here, but may have been changed behind our back: then `size`
   * must be what it holds now (rounded down to 512), and the backend takes that size.
   */
  async resize(size: number): Promise<void> {
    this.#checkOpen();
    checkBackendSize(size, `file ${this.path}`);
    if (this.kind === 'file' && !this.readOnly) {
      await ftruncate(this.#fd, size);
      this.#size = size;
      return;
    }
    const current = await this.#currentSize();
    if (current !== size) {
      const what = this.kind === 'file' ? 'a read-only file' : 'a block device';
      throw new BackendError(
        `file ${this.path}: ${what} cannot be resized from here (it holds ${current} bytes, not ${size})`,
        'ENOTSUP',
      );
    }
    this.#size = size;
  }

  /** What the file or device holds now, rounded down to 512 bytes. */
  async #currentSize(): Promise<number> {
    let bytes: number;
    if (this.kind === 'file') {
      bytes = (await fstat(this.#fd)).size;
    } else {
      const binding = this.#sys();
      if (binding === null) return this.#size;
      const arg = new Uint8Array(8);
      binding.ioctl(this.#fd, BLKGETSIZE64, arg);
      bytes = Number(new DataView(arg.buffer).getBigUint64(0, true));
    }
    return bytes - (bytes % SECTOR_SIZE);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const fds = [this.#fd];
    if (this.#bufferedFd !== null) fds.push(await this.#bufferedFd.catch(() => -1));
    for (const fd of fds) {
      if (fd >= 0) await new Promise<void>((resolve) => fs.close(fd, () => resolve()));
    }
    const binding = this.#binding;
    if (binding != null) for (const mapping of this.#mappings) binding.munmap(mapping);
    this.#mappings.length = 0;
    this.#bouncePool.length = 0;
    this.#zeroBuffer = null;
  }

  #closedError(): BackendError {
    return new BackendError(`file ${this.path}: the backend is closed`, 'EBADF');
  }

  /** For async methods: throws (a rejection there) when closed. */
  #checkOpen(): void {
    if (this.#closed) throw this.#closedError();
  }

  #checkWritable(): void {
    this.#checkOpen();
    if (this.readOnly) throw new BackendError(`file ${this.path}: read-only`, 'EROFS');
  }

  /** The binding, loaded on first use; null (with a note) when it cannot be loaded. */
  #sys(): SysBinding | null {
    if (this.#binding === undefined) {
      try {
        this.#binding = loadNativeBinding();
      } catch (error) {
        this.#binding = null;
        this.#log(`file ${this.path}: no native binding (${(error as Error).message}); discard does nothing`);
      }
    }
    return this.#binding;
  }

  #fdatasync(): Promise<void> {
    return new Promise((resolve, reject) =>
      fs.fdatasync(this.#fd, (error) => (error === null ? resolve() : reject(error))),
    );
  }

  /**
   * fallocate(mode) over [offset, offset + length), in steps so that the event loop (the call is synchronous)
   * is not held for long. Returns the bytes done: less than `length` when this mode cannot do (the rest of) it
   * here, and the caller falls back. Other errors throw.
   */
  async #fallocate(binding: SysBinding, mode: number, offset: number, length: number): Promise<number> {
    let done = 0;
    while (done < length) {
      const count = Math.min(FALLOCATE_STEP, length - done);
      try {
        binding.fallocate(this.#fd, mode, offset + done, count);
      } catch (error) {
        if (isNotSupported(error)) {
          if (mode & FALLOC_FL_PUNCH_HOLE) {
            this.#punchHole = false;
            this.#log(`file ${this.path}: the filesystem cannot punch holes; discard does nothing`);
          } else {
            this.#zeroRange = false;
            this.#log(`file ${this.path}: the filesystem cannot zero ranges; write-zeroes writes zeroes`);
          }
          return done;
        }
        // EINVAL: the range is not aligned for the device; the caller falls back.
        if (errorCode(error) === 'EINVAL') return done;
        throw error;
      }
      done += count;
      if (done < length) await new Promise((resolve) => setImmediate(resolve));
    }
    return done;
  }

  async #writeZeroBuffers(offset: number, length: number): Promise<void> {
    const zeroes = (this.#zeroBuffer ??= this.direct
      ? this.#allocAligned(ZERO_BUFFER_SIZE)
      : new Uint8Array(ZERO_BUFFER_SIZE));
    for (let done = 0; done < length;) {
      const count = Math.min(zeroes.length, length - done);
      const view = zeroes.subarray(0, count);
      if (this.direct) await this.#directTransfer(true, offset + done, [view]);
      else await transferAll(true, this.#fd, offset + done, [view]);
      done += count;
    }
  }

  async #directTransfer(write: boolean, offset: number, buffers: readonly Uint8Array[]): Promise<void> {
    const alignment = this.directAlignment;
    const mask = alignment - 1;
    let total = 0;
    let memoryAligned = true;
    for (const buffer of buffers) {
      total += buffer.length;
      if (((buffer.byteOffset | buffer.length) & mask) !== 0 || this.#unalignedMemory.has(buffer.buffer)) {
        memoryAligned = false;
      }
    }
    if (((offset % alignment) | (total % alignment)) !== 0) {
      // Not on direct-I/O boundaries: the buffered descriptor serves it (no read-modify-write races here).
      this.directStats.buffered++;
      return transferAll(write, await this.#buffered(), offset, buffers);
    }
    if (memoryAligned) {
      try {
        await transferAll(write, this.#fd, offset, buffers);
        this.directStats.direct++;
        return;
      } catch (error) {
        if (errorCode(error) !== 'EINVAL') throw error;
        // The views are aligned relative to their buffer but the buffer itself is not: bounce from now on.
        for (const buffer of buffers) this.#unalignedMemory.add(buffer.buffer);
      }
    }
    this.directStats.bounced++;
    const bounce = this.#takeBounce(total);
    try {
      const view = bounce.subarray(0, total);
      if (write) {
        let at = 0;
        for (const buffer of buffers) {
          view.set(buffer, at);
          at += buffer.length;
        }
        await transferAll(true, this.#fd, offset, [view]);
      } else {
        await transferAll(false, this.#fd, offset, [view]);
        let at = 0;
        for (const buffer of buffers) {
          buffer.set(view.subarray(at, at + buffer.length));
          at += buffer.length;
        }
      }
    } finally {
      this.#giveBounce(bounce);
    }
  }

  #buffered(): Promise<number> {
    const flags = this.readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR;
    return (this.#bufferedFd ??= openFile(`/proc/self/fd/${this.#fd}`, flags));
  }

  #takeBounce(size: number): Uint8Array {
    for (let i = 0; i < this.#bouncePool.length; i++) {
      const candidate = this.#bouncePool[i]!;
      if (candidate.length >= size) {
        this.#bouncePool.splice(i, 1);
        return candidate;
      }
    }
    let rounded = BOUNCE_MIN;
    while (rounded < size) rounded *= 2;
    return this.#allocAligned(rounded);
  }

  #giveBounce(bounce: Uint8Array): void {
    if (this.#closed) return;
    if (this.#bouncePool.length < BOUNCE_POOL_LIMIT) {
      this.#bouncePool.push(bounce);
    } else {
      // Keep the largest ones: drop the smallest if this one is bigger.
      let smallest = 0;
      for (let i = 1; i < this.#bouncePool.length; i++) {
        if (this.#bouncePool[i]!.length < this.#bouncePool[smallest]!.length) smallest = i;
      }
      const dropped =
        bounce.length > this.#bouncePool[smallest]!.length ? this.#bouncePool[smallest]! : bounce;
      if (dropped !== bounce) this.#bouncePool[smallest] = bounce;
      this.#unmap(dropped);
    }
  }

  /**
   * Page-aligned memory: a shared mapping of a memfd. JavaScript heap memory has no alignment guarantee; without
   * the binding a heap buffer is used (and the kernel may refuse it for O_DIRECT).
   */
  #allocAligned(size: number): Uint8Array {
    const binding = this.#sys();
    const mapping = binding === null ? null : mapAligned(binding, size);
    if (mapping === null) return new Uint8Array(size);
    this.#mappings.push(mapping);
    return new Uint8Array(mapping);
  }

  #unmap(bounce: Uint8Array): void {
    const index = this.#mappings.indexOf(bounce.buffer as ArrayBuffer);
    if (index < 0) return;
    this.#mappings.splice(index, 1);
    this.#binding?.munmap(bounce.buffer as ArrayBuffer);
  }
}

function openFile(path: string, flags: number): Promise<number> {
  return new Promise((resolve, reject) =>
    fs.open(path, flags, 0o644, (error, fd) => (error === null ? resolve(fd) : reject(error))),
  );
}

function fstat(fd: number): Promise<fs.Stats> {
  return new Promise((resolve, reject) =>
    fs.fstat(fd, (error, stats) => (error === null ? resolve(stats) : reject(error))),
  );
}

function ftruncate(fd: number, size: number): Promise<void> {
  return new Promise((resolve, reject) =>
    fs.ftruncate(fd, size, (error) => (error === null ? resolve() : reject(error))),
  );
}

function ioctlU32(binding: SysBinding, fd: number, request: number): number | null {
  const arg = new Uint8Array(4);
  try {
    binding.ioctl(fd, request, arg);
  } catch {
    return null;
  }
  const value = new DataView(arg.buffer).getUint32(0, true);
  return value > 0 ? value : null;
}

function openError(path: string, error: unknown, direct: boolean): UsageError {
  const options = { code: 'ERR_BACKEND_OPEN', cause: error };
  switch (errorCode(error)) {
    case 'ENOENT':
      return new UsageError(`file ${path}: no such file (add size=SIZE to create it)`, options);
    case 'EISDIR':
      return new UsageError(`file ${path}: is a directory`, options);
    case 'EACCES':
    case 'EPERM':
      return new UsageError(`file ${path}: permission denied`, options);
    case 'EINVAL':
      if (direct) {
        return new UsageError(
          `file ${path}: the filesystem does not support O_DIRECT (drop direct=on)`,
          options,
        );
      }
      break;
    case 'EBUSY':
      return new UsageError(`file ${path}: the device is busy (in use or mounted)`, options);
  }
  return new UsageError(`file ${path}: ${messageOf(error)}`, options);
}

/**
 * Whether `binding` does preadv2 on `fd` (an empty read: it checks the fd, not the flags). False for a binding
 * without it or one that does not know this fd (a fake).
 */
function canVectorIo(binding: SysBinding, fd: number): boolean {
  try {
    return typeof binding.preadv2 === 'function' && binding.preadv2(fd, [], 0, 0) === 0;
  } catch {
    return false;
  }
}

/** The native binding, or null when it cannot be loaded. */
function tryLoad(): SysBinding | null {
  try {
    return loadNativeBinding();
  } catch {
    return null;
  }
}

/** `size` bytes of page-aligned memory (a shared mapping of a memfd), or null when the binding cannot. */
function mapAligned(binding: SysBinding, size: number): ArrayBuffer | null {
  try {
    const memfd = binding.memfdCreate('vduse-ts-bounce', MFD_CLOEXEC);
    try {
      fs.ftruncateSync(memfd, size);
      return binding.mmap(memfd, size, PROT_READ | PROT_WRITE, MAP_SHARED, 0);
    } finally {
      fs.closeSync(memfd);
    }
  } catch {
    return null;
  }
}

/**
 * The offset/length granularity O_DIRECT needs on this file: a 512-byte read at offset 512 into page-aligned
 * memory tells 512 from 4096. 4096 (always safe) when the file is too small to tell or there is no aligned memory.
 */
async function probeDirectAlignment(fd: number, size: number, binding: SysBinding | null): Promise<number> {
  if (size < 4096 || binding === null) return 4096;
  const mapping = mapAligned(binding, 4096);
  if (mapping === null) return 4096;
  try {
    await readvAt(fd, [new Uint8Array(mapping, 0, SECTOR_SIZE)], SECTOR_SIZE);
    return SECTOR_SIZE;
  } catch {
    return 4096;
  } finally {
    binding.munmap(mapping);
  }
}
