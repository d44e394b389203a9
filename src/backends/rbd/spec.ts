/**
 * The rbd backend spec:
 *
 *   rbd:POOL[/NAMESPACE]/IMAGE[@SNAP][,conf=PATH][,id=USER][,keyring=PATH][,mon=HOST:PORT[;HOST:PORT...]]
 *       [,cache=on|off][,readonly=on][,timeout=SECONDS][,connect-timeout=SECONDS]
 *
 * conf: a ceph.conf (default: librados' own search: $CEPH_CONF, /etc/ceph/ceph.conf, ...); id: the cephx user
 * without "client." (default admin); keyring: its keyring; mon: the monitors, instead of or over the conf file's
 * (';' between them); cache: librbd's cache (rbd_cache; default as configured, which is on with writeback once a
 * flush is seen); readonly: open the image read-only (a snapshot always is); timeout: fail a request with EIO
 * when the cluster has not answered it in this long (rados_osd_op_timeout; default 0, wait for as long as it
 * takes); connect-timeout: how long connecting and opening may take (default 30).
 */
import type { BackendSpec, SpecText } from '../spec.js';
import { specBoolean, specError, splitSpecOptions } from '../spec.js';

export interface RbdBackendSpec extends BackendSpec {
  readonly kind: 'rbd';
  readonly pool: string;
  readonly namespace: string | undefined;
  readonly image: string;
  readonly snap: string | undefined;
  readonly conf: string | undefined;
  /** cephx user without the "client." prefix. */
  readonly id: string | undefined;
  readonly keyring: string | undefined;
  /** Monitor addresses as librados' mon_host wants them (comma-separated). */
  readonly mon: string | undefined;
  /** librbd's cache on or off; undefined: as the configuration says. */
  readonly cache: boolean | undefined;
  readonly readOnly: boolean;
  /** Seconds a request may wait for the cluster before it fails with EIO; 0: no limit. */
  readonly timeout: number;
  /** Seconds connecting and opening the image may take. */
  readonly connectTimeout: number;
}

export const RBD_HELP =
  'rbd:POOL[/NAMESPACE]/IMAGE[@SNAP][,conf=PATH][,id=USER][,keyring=PATH][,mon=HOST:PORT[;HOST:PORT]]' +
  '[,cache=on|off][,readonly=on][,timeout=SECONDS][,connect-timeout=SECONDS]  a Ceph RBD image through librbd';

const OPTIONS = ['conf', 'id', 'keyring', 'mon', 'cache', 'readonly', 'timeout', 'connect-timeout'];
const NAME_RE = /^[^/@\s]+$/;
/** HOST:PORT, [v6]:PORT, or a bare host (librados adds the default ports). */
const MON_RE = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$/;

function seconds(
  source: string,
  key: string,
  text: string | undefined,
  fallback: number,
  min: number,
): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (text.trim() === '' || !Number.isFinite(value) || value < min || value > 86400) {
    throw specError(source, `option ${key}=${text} is not a number of seconds from ${min} to 86400`);
  }
  return value;
}

export function parseRbdSpec(text: SpecText): RbdBackendSpec {
  const { source } = text;
  const { argument, keys } = splitSpecOptions(text, OPTIONS, 'POOL/IMAGE');
  let path = argument;
  let snap: string | undefined;
  const at = path.indexOf('@');
  if (at >= 0) {
    snap = path.slice(at + 1);
    path = path.slice(0, at);
    if (!NAME_RE.test(snap)) throw specError(source, `bad snapshot name '${snap}'`);
  }
  const parts = path.split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => !NAME_RE.test(p))) {
    throw specError(source, `expected POOL/IMAGE or POOL/NAMESPACE/IMAGE, not '${path}'`);
  }
  const pool = parts[0]!;
  const namespace = parts.length === 3 ? parts[1]! : undefined;
  const image = parts[parts.length - 1]!;
  let mon: string | undefined;
  const monText = keys.get('mon');
  if (monText !== undefined) {
    const list = monText.split(';').map((m) => m.trim());
    for (const m of list) {
      if (!MON_RE.test(m))
        throw specError(source, `bad monitor address '${m}' (use HOST:PORT, ';' between them)`);
    }
    mon = list.join(',');
  }
  let id = keys.get('id');
  if (id !== undefined) {
    if (id.startsWith('client.')) id = id.slice('client.'.length);
    if (!/^[A-Za-z0-9_.-]+$/.test(id)) throw specError(source, `bad user name '${keys.get('id')}'`);
  }
  for (const key of ['conf', 'keyring']) {
    const value = keys.get(key);
    if (value !== undefined && value === '') throw specError(source, `option ${key}= needs a path`);
  }
  return {
    kind: 'rbd',
    source,
    pool,
    namespace,
    image,
    snap,
    conf: keys.get('conf'),
    id,
    keyring: keys.get('keyring'),
    mon,
    cache: keys.has('cache') ? specBoolean(source, keys, 'cache', true) : undefined,
    readOnly: specBoolean(source, keys, 'readonly', false) || snap !== undefined,
    timeout: seconds(source, 'timeout', keys.get('timeout'), 0, 0),
    connectTimeout: seconds(source, 'connect-timeout', keys.get('connect-timeout'), 30, 1),
  };
}
