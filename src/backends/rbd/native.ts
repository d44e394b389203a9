/**
 * The rbd backend's native part (native/rbd/vduse_rbd.cc, built into build/Release/vduse_rbd.node next to the
 * main addon): a thin layer over librbd's C API, which it loads with dlopen on first use so that neither building
 * nor running the rest of vduse-ts needs Ceph.
 */
import { createRequire } from 'node:module';
import { join } from 'node:path';

import { findPackageRoot } from '../../sys/native.js';
import { VduseTsError } from '../../common/errors.js';

const ADDON_PATH = 'build/Release/vduse_rbd.node';
/** The libraries, by soname; VDUSE_TS_LIBRADOS / VDUSE_TS_LIBRBD name others (a path, or another soname). */
export const LIBRADOS = 'librados.so.2';
export const LIBRBD = 'librbd.so.1';

/** One open image (the native RbdImage class). Submits return 0, or a negative errno when nothing was queued. */
export interface NativeImage {
  /** The eventfd librbd (and the update watch) signals; watch it for readability and call reap(). */
  readonly fd: number;
  /** Requests submitted and not yet reaped. */
  readonly inFlight: number;
  readv(id: number, offset: number, buffers: readonly Uint8Array[]): number;
  writev(id: number, offset: number, buffers: readonly Uint8Array[]): number;
  flush(id: number): number;
  discard(id: number, offset: number, length: number): number;
  /** -ENOTSUP when this librbd has no rbd_aio_write_zeroes. Without `unmap` the objects stay allocated. */
  writeZeroes(id: number, offset: number, length: number, unmap: boolean): number;
  /** Clears the eventfd; fills `out` with (id, result) pairs of finished requests; returns how many. */
  reap(out: Float64Array): number;
  /** Whether the update watch fired (the image header changed, e.g. a resize) since the last call. */
  takeUpdate(): boolean;
  /** The image size now (refreshes the header if needed; may wait for the cluster). */
  size(): Promise<number>;
  resize(bytes: number): Promise<void>;
  /** Unwatch, close the image, the pool and the connection; closes the eventfd. */
  close(): Promise<void>;
}

export interface NativeOpenOptions {
  pool: string;
  namespace?: string;
  image: string;
  snap?: string;
  readOnly: boolean;
  id?: string;
  conf?: string;
  keyring?: string;
  mon?: string;
  /** rados_conf_set() pairs applied after the conf file. */
  settings: [string, string][];
}

export interface NativeOpenResult {
  image: NativeImage;
  size: number;
  stripeUnit: number;
  features: number;
}

/** A failure of open(): `stage` says which step ('connect', 'pool', 'open', ...), `errno` the positive errno. */
export interface NativeOpenError extends Error {
  errno: number;
  stage: string;
}

export interface RbdAddon {
  load(librados: string, librbd: string): string | null;
  version(): string;
  hasWriteZeroes(): boolean;
  open(options: NativeOpenOptions): Promise<NativeOpenResult>;
}

let addon: RbdAddon | undefined;
let loadError: string | undefined;

/**
 * The addon with librados and librbd loaded. Throws a VduseTsError (ERR_RBD_LIBRARY) with one line saying what is missing (the addon
 * not built, or the Ceph libraries not installed). The result is remembered per thread.
 */
export function loadRbd(env: NodeJS.ProcessEnv = process.env): RbdAddon {
  if (addon !== undefined) return addon;
  if (loadError !== undefined) throw new VduseTsError('ERR_RBD_LIBRARY', loadError);
  const file = join(findPackageRoot(import.meta.url), ADDON_PATH);
  let candidate: RbdAddon;
  try {
    candidate = createRequire(import.meta.url)(file) as RbdAddon;
  } catch (error) {
    const reason = error instanceof Error ? error.message.split('\n')[0] : String(error);
    loadError = `cannot load the rbd addon ${file} (${reason}); run \`npm run build:native\``;
    throw new VduseTsError('ERR_RBD_LIBRARY', loadError, { cause: error });
  }
  if (typeof candidate.load !== 'function' || typeof candidate.open !== 'function') {
    loadError = `the rbd addon ${file} is out of date; run \`npm run build:native\``;
    throw new VduseTsError('ERR_RBD_LIBRARY', loadError);
  }
  const missing = candidate.load(env.VDUSE_TS_LIBRADOS || LIBRADOS, env.VDUSE_TS_LIBRBD || LIBRBD);
  if (missing !== null) {
    loadError = `${missing}: install Ceph's client libraries (Debian: apt-get install librbd1)`;
    throw new VduseTsError('ERR_RBD_LIBRARY', loadError);
  }
  addon = candidate;
  return addon;
}
