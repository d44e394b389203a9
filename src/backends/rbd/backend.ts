/**
 * The Ceph RBD backend: an RBD image through librbd (loaded at run time, see ./native.ts).
 *
 * - Reads and writes go straight from and into the guest's buffers (rbd_aio_readv / rbd_aio_writev); flush,
 *   discard and write-zeroes are librbd's asynchronous calls. FUA is a write followed by a flush.
 * - Completions: librbd signals an eventfd (rbd_set_image_notification) that an fd watcher on this thread's event
 *   loop watches; the watcher reaps them (rbd_poll_io_events) and settles the requests. No JavaScript runs on
 *   librbd's threads. Each backend (each queue thread's, with --queue-threads) has its own connection and image
 *   handle.
 * - Connecting, opening, closing, refreshing the size and resizing block; they run on a thread of the native part,
 *   and connecting plus opening is bounded (connect-timeout).
 * - Faults: librbd retries on its own while an OSD or monitor restarts (requests wait); with `timeout` a request
 *   the cluster has not answered in that long fails (the guest sees an I/O error) and later ones go through again
 *   once the cluster is back. A failure librbd reports fails that request only.
 * - Online resize: the image's header is watched (rbd_update_watch); when its size changes the backend's size
 *   follows and onSizeChange listeners hear of it (the daemon then tells the driver).
 */
import { constants as osConstants } from 'node:os';

import { BackendError, type BackendCapabilities, type BlockBackend } from '../backend.js';
import { SECTOR_SIZE } from '../size.js';
import { UsageError, VduseTsError } from '../../common/errors.js';
import { UV_READABLE, type FdWatcher, type SysBinding } from '../../sys/binding.js';
import { loadNativeBinding } from '../../sys/native.js';
import { loadRbd, type NativeImage, type NativeOpenError, type NativeOpenOptions } from './native.js';

/** RBD_FEATURE_EXCLUSIVE_LOCK (librbd/features.h). */
export const RBD_FEATURE_EXCLUSIVE_LOCK = 1 << 2;
/** librbd skips discards smaller than rbd_discard_granularity_bytes (64 KiB by default): advertise that. */
const DISCARD_GRANULARITY = 64 * 1024;
const ZERO_CHUNK = 1024 * 1024;
/** Reaped completions per native call. */
const REAP_BATCH = 64;

/** A failure to reach the cluster or to load librbd (not a bad spec). */
export class RbdError extends VduseTsError {
  constructor(code: string, message: string, options: { cause?: unknown; errno?: string } = {}) {
    super(code, message, options);
  }
}

export interface RbdBackendOptions {
  pool: string;
  namespace?: string | undefined;
  image: string;
  snap?: string | undefined;
  conf?: string | undefined;
  id?: string | undefined;
  keyring?: string | undefined;
  /** Monitors, comma-separated (librados mon_host). */
  mon?: string | undefined;
  cache?: boolean | undefined;
  readOnly?: boolean;
  /** Seconds before a request the cluster does not answer fails with EIO; 0 (default): no limit. */
  timeout?: number;
  /** Seconds connecting and opening may take; default 30. */
  connectTimeout?: number;
  /** The fd watcher comes from here; default: the native addon. */
  binding?: SysBinding;
  log?: (message: string) => void;
  /** What to call the image in messages; default `rbd:POOL/IMAGE[@SNAP]`. */
  label?: string;
}

interface Pending {
  resolve: () => void;
  reject: (error: Error) => void;
}

const ERRNO_NAMES = new Map<number, string>(
  Object.entries(osConstants.errno).map(([name, value]) => [value, name] as [number, string]),
);

/** 'ETIMEDOUT' for 110 (or -110). */
export function errnoName(errno: number): string {
  return ERRNO_NAMES.get(Math.abs(errno)) ?? `errno ${Math.abs(errno)}`;
}

/** Keeps the event loop alive while `promise` is pending (the native part's threads do not). */
function keepAlive<T>(promise: Promise<T>): Promise<T> {
  const timer = setInterval(() => {}, 1 << 30);
  return promise.finally(() => clearInterval(timer));
}

function describe(options: RbdBackendOptions): string {
  const ns = options.namespace !== undefined ? `${options.namespace}/` : '';
  return `rbd:${options.pool}/${ns}${options.image}${options.snap !== undefined ? `@${options.snap}` : ''}`;
}

/** The error for a failed open: one line that says which step failed and what to check. */
function openError(label: string, options: RbdBackendOptions, error: NativeOpenError): Error {
  const errno = errnoName(error.errno);
  const text = error.message.replace(/^[^:]*: /, '');
  const where =
    options.mon ?? (options.conf !== undefined ? `the monitors in ${options.conf}` : 'the monitors');
  switch (error.stage) {
    case 'conf':
      return new UsageError(`${label}: cannot read the configuration ${options.conf}: ${text}`, { errno });
    case 'keyring':
    case 'mon':
      return new UsageError(`${label}: bad ${error.stage} option: ${text}`, { errno });
    case 'connect':
      if (error.errno === osConstants.errno.ETIMEDOUT) {
        return new RbdError(
          'ERR_RBD_CONNECT',
          `${label}: cannot reach the Ceph cluster (${where}) within ${options.connectTimeout ?? 30} s`,
          { errno },
        );
      }
      if (error.errno === osConstants.errno.ENOENT) {
        return new UsageError(
          `${label}: no monitors to connect to and no ceph.conf found (give conf=PATH or mon=HOST:PORT)`,
          { errno },
        );
      }
      if (error.errno === osConstants.errno.EACCES || error.errno === osConstants.errno.EPERM) {
        return new UsageError(
          `${label}: the cluster refused user ${options.id ?? 'admin'} (cephx: check id= and keyring=)`,
          { errno },
        );
      }
      return new RbdError(
        'ERR_RBD_CONNECT',
        `${label}: cannot connect to the Ceph cluster (${where}): ${text}`,
        {
          errno,
        },
      );
    case 'pool':
      if (error.errno === osConstants.errno.ENOENT) {
        return new UsageError(`${label}: no pool '${options.pool}' in the cluster`, { errno });
      }
      break;
    case 'open':
      if (error.errno === osConstants.errno.ENOENT) {
        const what =
          options.snap !== undefined
            ? `image '${options.image}' or snapshot '${options.snap}'`
            : `image '${options.image}'`;
        return new UsageError(`${label}: no ${what} in pool '${options.pool}'`, { errno });
      }
      if (error.errno === osConstants.errno.EACCES || error.errno === osConstants.errno.EPERM) {
        return new UsageError(`${label}: user ${options.id ?? 'admin'} may not open the image (cephx caps)`, {
          errno,
        });
      }
      break;
  }
  return new RbdError('ERR_RBD_OPEN', `${label}: ${error.stage} failed: ${text}`, { errno });
}

export class RbdBackend implements BlockBackend {
  readonly readOnly: boolean;
  readonly capabilities: BackendCapabilities;
  /** `rbd:POOL/IMAGE[@SNAP]`. */
  readonly label: string;
  /** Image features (RBD_FEATURE_* bits). */
  readonly features: number;
  readonly #image: NativeImage;
  readonly #watcher: FdWatcher;
  readonly #log: (message: string) => void;
  readonly #hasWriteZeroes: boolean;
  readonly #slots: (Pending | undefined)[] = [];
  readonly #free: number[] = [];
  readonly #out = new Float64Array(REAP_BATCH * 2);
  readonly #sizeListeners = new Set<(size: number) => void>();
  #size: number;
  #inFlight = 0;
  #closed = false;
  #refreshing = false;
  #refreshAgain = false;
  #zeroes: Uint8Array | null = null;

  private constructor(init: {
    image: NativeImage;
    size: number;
    readOnly: boolean;
    label: string;
    features: number;
    stripeUnit: number;
    hasWriteZeroes: boolean;
    binding: SysBinding;
    log: (message: string) => void;
  }) {
    this.#image = init.image;
    this.#size = init.size - (init.size % SECTOR_SIZE);
    this.readOnly = init.readOnly;
    this.label = init.label;
    this.features = init.features;
    this.#log = init.log;
    this.#hasWriteZeroes = init.hasWriteZeroes;
    const su = init.stripeUnit;
    this.capabilities = {
      flush: true,
      discard: true,
      writeZeroes: init.hasWriteZeroes,
      writeZeroesUnmap: init.hasWriteZeroes,
      secureErase: false,
      minIoSize: SECTOR_SIZE,
      optIoSize: su > 0 && su % SECTOR_SIZE === 0 && su <= 2 ** 30 ? su : 0,
      discardAlignment: DISCARD_GRANULARITY,
    };
    this.#watcher = init.binding.createFdWatcher(init.image.fd, () => this.#onReadable());
    this.#watcher.start(UV_READABLE);
  }

  /** Connect, open the image and start watching for completions. Errors are one line (UsageError or RbdError). */
  static async open(options: RbdBackendOptions): Promise<RbdBackend> {
    const label = options.label ?? describe(options);
    let addon;
    try {
      addon = loadRbd();
    } catch (error) {
      throw new RbdError('ERR_RBD_LIBRARY', `${label}: ${(error as Error).message}`, { cause: error });
    }
    const binding = options.binding ?? loadNativeBinding();
    const readOnly = options.readOnly === true || options.snap !== undefined;
    const connectTimeout = options.connectTimeout ?? 30;
    const settings: [string, string][] = [
      ['client_mount_timeout', String(connectTimeout)],
      ['rados_mon_op_timeout', String(connectTimeout)],
    ];
    if ((options.timeout ?? 0) > 0) settings.push(['rados_osd_op_timeout', String(options.timeout)]);
    if (options.cache !== undefined) settings.push(['rbd_cache', options.cache ? 'true' : 'false']);
    const request: NativeOpenOptions = {
      pool: options.pool,
      image: options.image,
      readOnly,
      settings,
      ...(options.namespace !== undefined ? { namespace: options.namespace } : {}),
      ...(options.snap !== undefined ? { snap: options.snap } : {}),
      ...(options.id !== undefined ? { id: options.id } : {}),
      ...(options.conf !== undefined ? { conf: options.conf } : {}),
      ...(options.keyring !== undefined ? { keyring: options.keyring } : {}),
      ...(options.mon !== undefined ? { mon: options.mon } : {}),
    };
    const opening = addon.open(request);
    // Bounded: the monitors' connect is bounded by client_mount_timeout, but an OSD that is down would hold
    // rbd_open without a limit. Past the bound, stop waiting; an open that finishes later is closed at once.
    let timer: NodeJS.Timeout | undefined;
    let timedOut = false;
    const bound = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => {
          timedOut = true;
          reject(
            new RbdError(
              'ERR_RBD_CONNECT',
              `${label}: the Ceph cluster did not open the image within ${connectTimeout} s ` +
                `(monitors or OSDs down?)`,
              { errno: 'ETIMEDOUT' },
            ),
          );
        },
        connectTimeout * 1000 + 2000,
      );
    });
    let result;
    try {
      result = await Promise.race([opening, bound]);
    } catch (error) {
      if (timedOut) {
        opening.then(
          (late) => void late.image.close().catch(() => {}),
          () => {},
        );
        throw error;
      }
      const e = error as NativeOpenError;
      if (typeof e.errno === 'number' && typeof e.stage === 'string') throw openError(label, options, e);
      throw error;
    } finally {
      clearTimeout(timer);
    }
    try {
      return new RbdBackend({
        image: result.image,
        size: result.size,
        readOnly,
        label,
        features: result.features,
        stripeUnit: result.stripeUnit,
        hasWriteZeroes: addon.hasWriteZeroes(),
        binding,
        log: options.log ?? (() => {}),
      });
    } catch (error) {
      await result.image.close().catch(() => {});
      throw error;
    }
  }

  get size(): number {
    return this.#size;
  }

  /** Requests in librbd now. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /**
   * Call `listener` with the new size (bytes, a multiple of 512) when the image's size changes (rbd resize by
   * anyone). Returns the function that removes it.
   */
  onSizeChange(listener: (size: number) => void): () => void {
    this.#sizeListeners.add(listener);
    return () => this.#sizeListeners.delete(listener);
  }

  read(offset: number, buffers: readonly Uint8Array[]): Promise<void> {
    return this.#submit((id) => this.#image.readv(id, offset, buffers));
  }

  write(offset: number, buffers: readonly Uint8Array[], options?: { fua?: boolean }): Promise<void> {
    const done = this.#submit((id) => this.#image.writev(id, offset, buffers));
    return options?.fua === true ? done.then(() => this.flush()) : done;
  }

  flush(): Promise<void> {
    return this.#submit((id) => this.#image.flush(id));
  }

  discard(offset: number, length: number): Promise<void> {
    return this.#submit((id) => this.#image.discard(id, offset, length));
  }

  /** With `unmap` whole objects in the range may be deallocated; without, zeroes are written and kept. */
  writeZeroes(offset: number, length: number, options?: { unmap?: boolean }): Promise<void> {
    const unmap = options?.unmap === true;
    if (this.#hasWriteZeroes) return this.#submit((id) => this.#image.writeZeroes(id, offset, length, unmap));
    return this.#writeZeroBuffers(offset, length);
  }

  /**
   * Set the image to `bytes` (rbd_resize), unless it already has that size (it was resized from outside: then
   * this only takes the new size).
   */
  async resize(bytes: number): Promise<void> {
    if (this.#closed) throw this.#closedError();
    const current = await keepAlive(this.#image.size());
    if (current !== bytes) {
      if (this.readOnly) {
        throw new BackendError(`${this.label}: the image is read-only and holds ${current} bytes`, 'EROFS');
      }
      await keepAlive(this.#image.resize(bytes)).catch((error: unknown) => {
        throw this.#failure(error, 'resize');
      });
    }
    this.#size = bytes - (bytes % SECTOR_SIZE);
  }

  /** Stop watching and close the image; requests still in flight are waited for by librbd. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#watcher.close();
    await keepAlive(this.#image.close());
    // Anything never reaped (none once the device has been reset) fails.
    for (let id = 0; id < this.#slots.length; id++) {
      const pending = this.#slots[id];
      if (pending !== undefined) {
        this.#slots[id] = undefined;
        pending.reject(this.#closedError());
      }
    }
  }

  #submit(start: (id: number) => number): Promise<void> {
    if (this.#closed) return Promise.reject(this.#closedError());
    return new Promise<void>((resolve, reject) => {
      const id = this.#free.pop() ?? this.#slots.length;
      let rc: number;
      try {
        rc = start(id);
      } catch (error) {
        this.#free.push(id);
        reject(new BackendError(`${this.label}: ${(error as Error).message}`, 'EIO'));
        return;
      }
      if (rc < 0) {
        this.#free.push(id);
        reject(this.#requestError(rc));
        return;
      }
      this.#slots[id] = { resolve, reject };
      this.#inFlight++;
    });
  }

  #onReadable(): void {
    if (this.#closed) return;
    const out = this.#out;
    let n: number;
    do {
      n = this.#image.reap(out);
      for (let i = 0; i < n; i++) {
        const id = out[2 * i]!;
        const result = out[2 * i + 1]!;
        const pending = this.#slots[id];
        if (pending === undefined) continue;
        this.#slots[id] = undefined;
        this.#free.push(id);
        this.#inFlight--;
        if (result >= 0) pending.resolve();
        else pending.reject(this.#requestError(result));
      }
    } while (n === REAP_BATCH);
    if (this.#image.takeUpdate()) this.#refreshSize();
  }

  /** The header changed: read the size (off the event loop) and tell the listeners when it is new. */
  #refreshSize(): void {
    if (this.#refreshing) {
      this.#refreshAgain = true;
      return;
    }
    this.#refreshing = true;
    keepAlive(this.#image.size())
      .then(
        (bytes) => {
          const size = bytes - (bytes % SECTOR_SIZE);
          if (size === this.#size || this.#closed) return;
          this.#log(`${this.label}: the image now holds ${bytes} bytes (was ${this.#size})`);
          this.#size = size;
          for (const listener of this.#sizeListeners) {
            try {
              listener(size);
            } catch (error) {
              this.#log(`${this.label}: a size listener failed: ${(error as Error).message}`);
            }
          }
        },
        (error: unknown) => {
          if (!this.#closed)
            this.#log(`${this.label}: cannot read the new size: ${(error as Error).message}`);
        },
      )
      .finally(() => {
        this.#refreshing = false;
        if (this.#refreshAgain && !this.#closed) {
          this.#refreshAgain = false;
          this.#refreshSize();
        }
      });
  }

  async #writeZeroBuffers(offset: number, length: number): Promise<void> {
    const zeroes = (this.#zeroes ??= new Uint8Array(ZERO_CHUNK));
    for (let done = 0; done < length;) {
      const count = Math.min(zeroes.length, length - done);
      await this.write(offset + done, [zeroes.subarray(0, count)]);
      done += count;
    }
  }

  /** librbd's answer kept as the errno (EINVAL, ETIMEDOUT, ...); the code follows it (ERR_BACKEND_UNSUPPORTED, IO, ...). */
  #requestError(rc: number): BackendError {
    const name = errnoName(rc);
    return new BackendError(`${this.label}: librbd: ${name}`, name);
  }

  #failure(error: unknown, what: string): BackendError {
    const errno = (error as { errno?: unknown }).errno;
    const name = typeof errno === 'number' ? errnoName(errno) : (error as Error).message;
    return new BackendError(`${this.label}: ${what} failed: ${name}`, 'EIO');
  }

  #closedError(): BackendError {
    return new BackendError(`${this.label}: the backend is closed`, 'EIO');
  }
}
