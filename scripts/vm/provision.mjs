// Provisioning of the vduse-ts test VM: host packages, Debian's 6.12 kernel and a busybox initramfs.
//
// provision() returns the paths of a cached kernel + initramfs. The cache entry is keyed by what it was built
// from (kernel package name and version, the /init script, the busybox-static version, the module list), so a
// warm call costs only the apt-cache lookup (well under a second). Installing missing packages needs root.
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const INIT_SCRIPT = path.join(HERE, 'init.sh');

/** Bump when the layout of a cache entry changes. */
const CACHE_FORMAT = 1;

/** Debian packages the VM and the e2e scenarios need on the host (the guest runs the host's root over 9p). */
export const HOST_PACKAGES = [
  'qemu-system-x86', // qemu-system-x86_64
  'qemu-system-common', // qemu-storage-daemon
  'qemu-utils', // qemu-img, qemu-nbd
  'busybox-static', // the initramfs userland
  'kmod', // depmod
  'xz-utils', // module decompression
  'cpio',
  'fio',
  'e2fsprogs', // mkfs.ext4
  'nbdkit', // NBD server for the nbd backend's tests (memory/file plugins, error/delay filters)
  'nbd-client',
  'openssl', // throwaway certificates for the NBD TLS tests
  'iproute2', // vdpa, ip
  'iputils-ping', // ping -M do (the net scenarios' MTU checks; busybox ping cannot forbid fragmenting)
  'util-linux', // losetup, blockdev
  // Ceph: a one-node cluster (monitor + OSD, no manager) for the rbd backend's tests, and librbd itself
  'ceph-mon',
  'ceph-osd',
  'ceph-common', // ceph, rbd, ceph-authtool, monmaptool
  'librbd1',
  'qemu-block-extra', // qemu-storage-daemon's rbd driver (the rbd benchmark's peer)
];

/**
 * Modules loaded at boot, before anything else runs. Dependencies come from the package's modules.dep;
 * listing one here only guarantees it is there. Modules the kernel has built in are skipped.
 */
export const BOOT_MODULES = [
  // 9p: host root, control and work shares
  'netfs',
  '9pnet',
  '9pnet_virtio',
  '9p',
  'virtio_blk',
  'virtio-rng',
  // vDPA / VDUSE
  'vhost_iotlb',
  'vdpa',
  'vduse',
  'virtio_vdpa',
  'vhost',
  'irqbypass',
  'vhost_vdpa',
  // for scenarios (modprobe finds nothing in the guest: the host root has no modules for this kernel)
  'crc16',
  'mbcache',
  'jbd2',
  'crc32c_generic',
  'ext4',
  'nbd',
  'loop',
  'configfs',
  'null_blk',
  'tun',
  'veth',
  'virtio_net', // the guest side of a VDUSE net device (virtio_vdpa + virtio_net)
];

/** insmod parameters. null_blk: scenarios create their devices through configfs. */
const MODULE_PARAMS = { null_blk: 'nr_devices=0' };

const KERNEL_PACKAGE_RE = /^linux-image-(6\.12[^-\s]*)-amd64-unsigned$/;

export class ProvisionError extends Error {
  /**
   * @param {string} message one line for the user
   * @param {{ unavailable?: boolean }} [opts] unavailable: the VM cannot be provisioned on this machine
   *   (missing packages without root, no apt, no network); otherwise it is a failure worth reporting
   */
  constructor(message, opts = {}) {
    super(message);
    this.name = 'ProvisionError';
    this.unavailable = opts.unavailable ?? false;
  }
}

/** The cache directory: $VDUSE_VM_CACHE, else $XDG_CACHE_HOME/vduse-ts/vm, else ~/.cache/vduse-ts/vm. */
export function cacheBase() {
  if (process.env.VDUSE_VM_CACHE) return path.resolve(process.env.VDUSE_VM_CACHE);
  const xdg = process.env.XDG_CACHE_HOME;
  const base = xdg && path.isAbsolute(xdg) ? xdg : path.join(os.homedir(), '.cache');
  return path.join(base, 'vduse-ts', 'vm');
}

const isRoot = () => process.getuid?.() === 0;

/** Finds an executable in PATH plus the sbin directories (a user's PATH often lacks them). */
export function which(cmd) {
  const dirs = (process.env.PATH ?? '')
    .split(':')
    .concat(['/usr/local/sbin', '/usr/sbin', '/sbin', '/usr/bin', '/bin']);
  for (const dir of dirs) {
    if (!dir) continue;
    const p = path.join(dir, cmd);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // next
    }
  }
  return null;
}

/** Runs a command, returns stdout; throws ProvisionError with the command's stderr on failure. */
function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 256 << 20, ...opts });
  if (r.error) throw new ProvisionError(`cannot run ${cmd}: ${r.error.message}`);
  if (r.status !== 0) {
    const tail = (r.stderr || r.stdout || '').trim().split('\n').slice(-5).join(' | ');
    throw new ProvisionError(`${cmd} ${args.join(' ')} failed (exit ${r.status}): ${tail}`, opts.errorOpts);
  }
  return r.stdout;
}

function sha256(data) {
  return createHash('sha256').update(data).digest('hex');
}

/** Packages of HOST_PACKAGES that are not installed. */
export function missingPackages(pkgs = HOST_PACKAGES) {
  if (!which('dpkg-query')) return [...pkgs];
  const r = spawnSync('dpkg-query', ['-W', '-f=${Package}\t${db:Status-Abbrev}\n', ...pkgs], {
    encoding: 'utf8',
  });
  const installed = new Set();
  for (const line of (r.stdout ?? '').split('\n')) {
    const [name, status] = line.split('\t');
    if (name && status?.startsWith('ii')) installed.add(name.replace(/:.*$/, ''));
  }
  return pkgs.filter((p) => !installed.has(p));
}

let aptUpdated = false;
function aptUpdate(log) {
  if (aptUpdated) return;
  log('apt-get update');
  run('apt-get', ['-q', 'update'], { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  aptUpdated = true;
}

/** Installs missing host packages (root only); without root, fails with one line naming them. */
export function ensureHostPackages(log = () => {}) {
  const missing = missingPackages();
  if (missing.length === 0) return;
  const hint = `apt-get install --no-install-recommends ${missing.join(' ')}`;
  if (!isRoot()) {
    throw new ProvisionError(`missing Debian packages: ${missing.join(' ')}; install them as root: ${hint}`, {
      unavailable: true,
    });
  }
  if (!which('apt-get')) {
    throw new ProvisionError(`missing packages ${missing.join(' ')} and no apt-get on this machine`, {
      unavailable: true,
    });
  }
  aptUpdate(log);
  log(`installing ${missing.join(' ')}`);
  run('apt-get', ['-q', '-y', 'install', '--no-install-recommends', ...missing], {
    env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    errorOpts: { unavailable: true },
  });
  const still = missingPackages();
  if (still.length) throw new ProvisionError(`still missing after apt-get install: ${still.join(' ')}`);
}

/** Debian version comparison through dpkg (a > b). */
function debVersionGreater(a, b) {
  return spawnSync('dpkg', ['--compare-versions', a, 'gt', b]).status === 0;
}

/**
 * The newest linux-image-6.12*-amd64-unsigned package apt can install, found by pattern.
 * @returns {{ name: string, version: string, abi: string } | null}
 */
export function findKernelPackage() {
  if (!which('apt-cache')) return null;
  const names = spawnSync('apt-cache', ['pkgnames', 'linux-image-6.12'], { encoding: 'utf8' })
    .stdout.split('\n')
    .filter((n) => KERNEL_PACKAGE_RE.test(n));
  if (names.length === 0) return null;
  const policy = spawnSync('apt-cache', ['policy', ...names], { encoding: 'utf8' }).stdout;
  let best = null;
  let current = null;
  for (const line of policy.split('\n')) {
    const head = /^(\S+):$/.exec(line);
    if (head) {
      current = head[1];
      continue;
    }
    const cand = /^\s+Candidate:\s+(\S+)/.exec(line);
    if (cand && current && cand[1] !== '(none)') {
      if (!best || debVersionGreater(cand[1], best.version)) {
        best = { name: current, version: cand[1], abi: KERNEL_PACKAGE_RE.exec(current)[1] };
      }
    }
  }
  return best;
}

/** Changes whenever apt's view of available packages may have changed (apt-get update, sources, pins). */
function aptStateStamp() {
  const paths = ['/var/lib/apt/lists', '/etc/apt', '/etc/apt/sources.list', '/etc/apt/sources.list.d'];
  paths.push('/etc/apt/preferences.d', '/etc/apt/apt.conf.d', '/var/lib/dpkg/status');
  return paths
    .map((p) => {
      try {
        const st = fs.statSync(p);
        return `${p}:${st.ino}:${st.mtimeMs}`;
      } catch {
        return `${p}:-`;
      }
    })
    .join('|');
}

/** {@link findKernelPackage}, remembered in the cache dir until apt's state changes (apt-cache needs ~1.5 s). */
function findKernelPackageMemo(base) {
  const memo = path.join(base, 'apt-lookup.json');
  const stamp = aptStateStamp();
  try {
    const m = JSON.parse(fs.readFileSync(memo, 'utf8'));
    if (m.stamp === stamp && m.pkg) return m.pkg;
  } catch {
    // no memo yet
  }
  const pkg = findKernelPackage();
  if (pkg) {
    try {
      fs.mkdirSync(base, { recursive: true });
      fs.writeFileSync(memo, JSON.stringify({ stamp, pkg }) + '\n');
    } catch {
      // a read-only cache only costs time
    }
  }
  return pkg;
}

/** The key parts that do not depend on the kernel package. */
function localKey() {
  const busybox = spawnSync('dpkg-query', ['-W', '-f=${Version}', 'busybox-static'], {
    encoding: 'utf8',
  }).stdout;
  return {
    format: CACHE_FORMAT,
    init: sha256(fs.readFileSync(INIT_SCRIPT)),
    busybox: busybox.trim(),
    modules: BOOT_MODULES,
    params: MODULE_PARAMS,
  };
}

function readEntry(dir) {
  try {
    const meta = JSON.parse(fs.readFileSync(path.join(dir, 'meta.json'), 'utf8'));
    const kernel = path.join(dir, 'vmlinuz');
    const initrd = path.join(dir, 'initramfs.cpio.gz');
    if (!fs.existsSync(kernel) || !fs.existsSync(initrd)) return null;
    return { dir, kernel, initrd, ...meta };
  } catch {
    return null;
  }
}

function listEntries(base) {
  let names = [];
  try {
    names = fs.readdirSync(base);
  } catch {
    return [];
  }
  return names
    .map((n) => readEntry(path.join(base, n)))
    .filter((e) => e !== null)
    .sort((a, b) => (b.builtAt ?? '').localeCompare(a.builtAt ?? ''));
}

/**
 * Makes sure host packages, kernel and initramfs are there and returns the cache entry.
 * @param {{ log?: (msg: string) => void }} [opts]
 * @returns {Promise<{ dir: string, kernel: string, initrd: string, kver: string, package: string,
 *   version: string, modules: string[], cached: boolean }>}
 */
export async function provision(opts = {}) {
  const log = opts.log ?? (() => {});
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    throw new ProvisionError(
      `the test VM needs Linux on x86_64 (this is ${process.platform}/${process.arch})`,
      {
        unavailable: true,
      },
    );
  }
  ensureHostPackages(log);
  const base = cacheBase();
  const local = localKey();
  const localHash = sha256(JSON.stringify(local));

  let pkg = findKernelPackageMemo(base);
  if (!pkg && isRoot() && which('apt-get')) {
    aptUpdate(log);
    pkg = findKernelPackageMemo(base);
  }
  if (!pkg) {
    // Offline or no apt lists: a cached kernel built with the same init/busybox/modules still serves.
    const fallback = listEntries(base).find((e) => e.localHash === localHash);
    if (fallback) {
      log(
        `apt offers no linux-image-6.12*-amd64-unsigned; using the cached ${fallback.package} ${fallback.version}`,
      );
      return { ...fallback, cached: true };
    }
    throw new ProvisionError(
      'apt offers no linux-image-6.12*-amd64-unsigned package; add bookworm-security to the apt sources ' +
        '(deb http://deb.debian.org/debian-security bookworm-security main) and run apt-get update',
      { unavailable: true },
    );
  }

  const key = sha256(JSON.stringify({ ...local, package: pkg.name, version: pkg.version }));
  const dir = path.join(base, `${pkg.abi}-amd64-${key.slice(0, 12)}`);
  const hit = readEntry(dir);
  if (hit) return { ...hit, cached: true };

  const t0 = Date.now();
  let work;
  try {
    fs.mkdirSync(base, { recursive: true });
    work = fs.mkdtempSync(path.join(base, '.build-'));
  } catch (e) {
    throw new ProvisionError(
      `cannot write the cache directory ${base} (${e.code ?? e.message}); set VDUSE_VM_CACHE`,
      {
        unavailable: true,
      },
    );
  }
  try {
    log(`downloading ${pkg.name} ${pkg.version}`);
    run('apt-get', ['-q', 'download', `${pkg.name}=${pkg.version}`], {
      cwd: work,
      errorOpts: { unavailable: true },
    });
    const deb = fs.readdirSync(work).find((n) => n.endsWith('.deb'));
    if (!deb) throw new ProvisionError(`apt-get download left no .deb in ${work}`);
    const root = path.join(work, 'root');
    log('unpacking the kernel package');
    run('dpkg-deb', ['-x', path.join(work, deb), root]);
    fs.rmSync(path.join(work, deb));

    let modBase = path.join(root, 'lib', 'modules');
    if (!fs.existsSync(modBase)) modBase = path.join(root, 'usr', 'lib', 'modules');
    const kvers = fs.readdirSync(modBase);
    if (kvers.length !== 1)
      throw new ProvisionError(`expected one kernel in ${pkg.name}, found: ${kvers.join(' ')}`);
    const kver = kvers[0];
    const vmlinuz = path.join(root, 'boot', `vmlinuz-${kver}`);
    if (!fs.existsSync(vmlinuz)) throw new ProvisionError(`${pkg.name} has no boot/vmlinuz-${kver}`);

    log(`resolving module dependencies (depmod ${kver})`);
    const depmod = which('depmod');
    if (!depmod) throw new ProvisionError('depmod not found (package kmod)', { unavailable: true });
    run(depmod, ['-b', path.dirname(path.dirname(modBase)), kver]);
    const modDir = path.join(modBase, kver);
    const order = resolveModules(modDir, BOOT_MODULES);

    const entries = [];
    const dirEntry = (name) => entries.push({ name, mode: 0o040755 });
    for (const d of ['bin', 'dev', 'proc', 'sys', 'ctl', 'newroot', 'tmp', 'lib', 'lib/modules']) dirEntry(d);
    entries.push({ name: 'dev/console', mode: 0o020600, rdevMajor: 5, rdevMinor: 1 });
    entries.push({ name: 'init', mode: 0o100755, data: fs.readFileSync(INIT_SCRIPT) });
    entries.push({ name: 'bin/busybox', mode: 0o100755, data: fs.readFileSync('/bin/busybox') });
    const loadOrder = [];
    for (const m of order) {
      const file = path.basename(m.file).replace(/\.(xz|zst|gz)$/, '');
      entries.push({
        name: `lib/modules/${file}`,
        mode: 0o100644,
        data: decompress(path.join(modDir, m.file)),
      });
      const params = MODULE_PARAMS[m.name];
      loadOrder.push(params ? `${file} ${params}` : file);
    }
    entries.push({
      name: 'lib/modules/load-order',
      mode: 0o100644,
      data: Buffer.from(loadOrder.join('\n') + '\n'),
    });

    const out = path.join(work, 'out');
    fs.mkdirSync(out);
    fs.copyFileSync(vmlinuz, path.join(out, 'vmlinuz'));
    fs.writeFileSync(path.join(out, 'initramfs.cpio.gz'), zlib.gzipSync(cpioNewc(entries), { level: 6 }));
    const meta = {
      package: pkg.name,
      version: pkg.version,
      kver,
      modules: loadOrder,
      localHash,
      key,
      builtAt: new Date().toISOString(),
    };
    fs.writeFileSync(path.join(out, 'meta.json'), JSON.stringify(meta, null, 2) + '\n');
    try {
      fs.renameSync(out, dir);
    } catch (e) {
      if (!readEntry(dir)) throw e; // else: built concurrently by another run, use theirs
    }
    log(`kernel ${kver} and initramfs cached in ${dir} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
  pruneCache(base, dir);
  const entry = readEntry(dir);
  if (!entry) throw new ProvisionError(`cache entry ${dir} is incomplete`);
  return { ...entry, cached: false };
}

/** Keeps the current entry and the two newest others. */
function pruneCache(base, keep) {
  const others = listEntries(base).filter((e) => e.dir !== keep);
  for (const e of others.slice(2)) fs.rmSync(e.dir, { recursive: true, force: true });
}

const normName = (n) => n.replace(/-/g, '_');
const modName = (file) => normName(path.basename(file).replace(/\.ko(\.(xz|zst|gz))?$/, ''));

/**
 * Load order for `wanted` from modules.dep: every module after all of its dependencies.
 * @returns {{ name: string, file: string }[]} file relative to the module directory
 */
export function resolveModules(modDir, wanted) {
  const deps = new Map(); // name -> { file, deps: string[] }
  for (const line of fs.readFileSync(path.join(modDir, 'modules.dep'), 'utf8').split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const file = line.slice(0, colon);
    const list = line
      .slice(colon + 1)
      .trim()
      .split(/\s+/)
      .filter(Boolean);
    deps.set(modName(file), { file, deps: list.map(modName) });
  }
  const builtin = new Set();
  try {
    for (const l of fs.readFileSync(path.join(modDir, 'modules.builtin'), 'utf8').split('\n')) {
      if (l) builtin.add(modName(l));
    }
  } catch {
    // no modules.builtin: nothing is built in
  }
  const order = [];
  const done = new Set();
  const visit = (name, chain) => {
    if (done.has(name) || builtin.has(name)) return;
    const m = deps.get(name);
    if (!m) throw new ProvisionError(`kernel module ${name} is neither in modules.dep nor built in`);
    if (chain.includes(name))
      throw new ProvisionError(`module dependency cycle: ${[...chain, name].join(' -> ')}`);
    for (const d of m.deps) visit(d, [...chain, name]);
    done.add(name);
    order.push({ name, file: m.file });
  };
  for (const w of wanted) visit(normName(w), []);
  return order;
}

function decompress(file) {
  if (file.endsWith('.xz')) return execFileSync('xz', ['-dc', file], { maxBuffer: 256 << 20 });
  if (file.endsWith('.zst')) return execFileSync('zstd', ['-dcq', file], { maxBuffer: 256 << 20 });
  if (file.endsWith('.gz')) return zlib.gunzipSync(fs.readFileSync(file));
  return fs.readFileSync(file);
}

/**
 * A cpio archive in the kernel's "newc" format, all entries owned by root (no root needed to build it).
 * @param {{ name: string, mode: number, data?: Buffer, rdevMajor?: number, rdevMinor?: number }[]} entries
 */
export function cpioNewc(entries) {
  const parts = [];
  let ino = 1;
  const pad4 = (n) => (4 - (n % 4)) % 4;
  const hex = (n) => n.toString(16).padStart(8, '0');
  const add = (name, mode, data, major = 0, minor = 0) => {
    const nameBuf = Buffer.from(name + '\0');
    const fields = [ino++, mode, 0, 0, 1, 0, data.length, 0, 0, major, minor, nameBuf.length, 0];
    const header = Buffer.from('070701' + fields.map(hex).join(''), 'ascii');
    parts.push(header, nameBuf, Buffer.alloc(pad4(header.length + nameBuf.length)));
    parts.push(data, Buffer.alloc(pad4(data.length)));
  };
  for (const e of entries) add(e.name, e.mode, e.data ?? Buffer.alloc(0), e.rdevMajor, e.rdevMinor);
  add('TRAILER!!!', 0, Buffer.alloc(0));
  return Buffer.concat(parts);
}
