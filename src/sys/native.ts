/**
 * Loads the native addon (native/vduse_native.cc, built into build/Release/vduse_native.node by
 * `npm install` or `npm run build:native`) and presents it as a SysBinding.
 */

import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import {
  KICK_STAT_COUNT,
  type FdWatcher,
  type FdWatcherCallback,
  type KickLoop,
  type KickLoopCallback,
  type SysBinding,
} from './binding.js';
import { VduseTsError } from '../common/errors.js';

const PACKAGE_NAME = 'vduse-ts';
const ADDON_PATH = 'build/Release/vduse_native.node';
const BUILD_COMMAND = 'npm run build:native';

/** What the .node file exports (native/vduse_native.cc). */
interface NativeAddon extends Omit<SysBinding, 'createFdWatcher' | 'createKickLoop'> {
  FdWatcher: new (fd: number, callback: FdWatcherCallback) => FdWatcher;
  KickLoop: new (
    callback: KickLoopCallback,
    kicked: Int32Array,
    signals: Int32Array,
    injected: Float64Array,
    stats: Float64Array,
    marks: Int32Array,
    kicks?: Float64Array,
  ) => Omit<KickLoop, 'kicked' | 'signals' | 'stats' | 'marks'>;
}

const FUNCTIONS = [
  'ioctl',
  'mmap',
  'munmap',
  'memfdCreate',
  'eventfd',
  'eventfdRead',
  'eventfdWrite',
  'fence',
  'read',
  'write',
  'preadv2',
  'pwritev2',
  'fallocate',
  'netlinkSocket',
  'send',
  'recv',
  'unixListen',
  'unixConnect',
  'accept',
  'socketPair',
  'recvmsg',
  'sendmsg',
  'FdWatcher',
  'KickLoop',
] as const;

/** The directory of the package.json named "vduse-ts" at or above `start` (a file URL or path). */
export function findPackageRoot(start: string | URL = import.meta.url): string {
  let dir = dirname(start instanceof URL || start.startsWith('file:') ? fileURLToPath(start) : start);
  for (;;) {
    const manifest = join(dir, 'package.json');
    if (existsSync(manifest)) {
      try {
        if ((JSON.parse(readFileSync(manifest, 'utf8')) as { name?: unknown }).name === PACKAGE_NAME)
          return dir;
      } catch {
        // not valid JSON: keep walking up
      }
    }
    const parent = dirname(dir);
    if (parent === dir)
      throw new VduseTsError(
        'ERR_NATIVE_ADDON',
        `${PACKAGE_NAME}: cannot find the package root above ${String(start)}`,
      );
    dir = parent;
  }
}

let cached: SysBinding | undefined;

/**
 * The real SysBinding, backed by the native addon. Loaded once per thread and cached. Throws a VduseTsError
 * (ERR_NATIVE_ADDON) naming the build command when the addon is missing, fails to load, or is older than this code.
 */
export function loadNativeBinding(): SysBinding {
  if (cached !== undefined) return cached;
  const root = findPackageRoot();
  const file = join(root, ADDON_PATH);
  let addon: NativeAddon;
  try {
    addon = createRequire(import.meta.url)(file) as NativeAddon;
  } catch (error) {
    const reason = error instanceof Error ? error.message.split('\n')[0] : String(error);
    throw new VduseTsError(
      'ERR_NATIVE_ADDON',
      `${PACKAGE_NAME}: cannot load the native addon ${file} (${reason}); run \`${BUILD_COMMAND}\``,
      { cause: error },
    );
  }
  const missing = FUNCTIONS.filter((name) => typeof addon[name] !== 'function');
  if (missing.length > 0) {
    throw new VduseTsError(
      'ERR_NATIVE_ADDON',
      `${PACKAGE_NAME}: the native addon ${file} is out of date (no ${missing.join(', ')}); run \`${BUILD_COMMAND}\``,
    );
  }
  const NativeFdWatcher = addon.FdWatcher;
  const NativeKickLoop = addon.KickLoop;
  cached = {
    ioctl: addon.ioctl,
    mmap: addon.mmap,
    munmap: addon.munmap,
    memfdCreate: addon.memfdCreate,
    eventfd: addon.eventfd,
    eventfdRead: addon.eventfdRead,
    eventfdWrite: addon.eventfdWrite,
    createFdWatcher: (fd, callback) => new NativeFdWatcher(fd, callback),
    createKickLoop: (numQueues, injected, callback, kicks) => {
      const kicked = new Int32Array(numQueues);
      const signals = new Int32Array(numQueues);
      const stats = new Float64Array(KICK_STAT_COUNT);
      const marks = new Int32Array(numQueues).fill(-1);
      // The native object holds the arrays; JS reads them through the same views.
      return Object.assign(new NativeKickLoop(callback, kicked, signals, injected, stats, marks, kicks), {
        kicked,
        signals,
        stats,
        marks,
      });
    },
    fence: addon.fence,
    read: addon.read,
    write: addon.write,
    preadv2: addon.preadv2,
    pwritev2: addon.pwritev2,
    fallocate: addon.fallocate,
    netlinkSocket: addon.netlinkSocket,
    send: addon.send,
    recv: addon.recv,
    unixListen: addon.unixListen,
    unixConnect: addon.unixConnect,
    accept: addon.accept,
    socketPair: addon.socketPair,
    recvmsg: addon.recvmsg,
    sendmsg: addon.sendmsg,
  };
  return cached;
}
