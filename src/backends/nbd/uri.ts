/**
 * NBD backend specs: a URI in the usual NBD form, then options after commas.
 *
 *   nbd://HOST[:PORT]/EXPORT              plain TCP (port 10809 by default)
 *   nbds://HOST[:PORT]/EXPORT             TLS (NBD_OPT_STARTTLS)
 *   nbd+unix:///EXPORT?socket=PATH        Unix socket (nbds+unix for TLS over it)
 *
 * optionally prefixed by the backend kind (`nbd:nbd://...`) and followed by `,key=value` options, e.g.
 * `nbd:nbd://127.0.0.1:10809/disk,connections=2,timeout=30s,retry=60s`. As in every backend spec, a comma
 * inside the URI or a value is written twice (or %2C in the export name, which is percent-decoded); booleans
 * are on/off.
 */
import { specBoolean, specError, splitSpecOptions, type SpecText } from '../spec.js';
import type { NbdTarget } from './client.js';

export interface NbdSpecOptions {
  /** Where and what to connect to (TLS file paths are in `tlsFiles`, read when the backend opens). */
  target: NbdTarget;
  /** PEM files for TLS, by path. */
  tlsFiles: { ca?: string; cert?: string; key?: string };
  /** Connections to open when the server allows multi-conn (default 1). */
  connections: number;
  /** No reply within this many ms makes a connection count as dead; also bounds connect + handshake. 0: off. */
  timeoutMs: number;
  /** How long requests wait for a lost server to come back before they fail with EIO, in ms. */
  retryMs: number;
  /** Requests in flight per connection at most. */
  queueDepth: number;
  /** Open read-only even if the export is writable. */
  readOnly: boolean;
}

export const NBD_DEFAULT_PORT = 10809;
export const NBD_DEFAULT_TIMEOUT_MS = 30_000;
export const NBD_DEFAULT_RETRY_MS = 60_000;
export const NBD_DEFAULT_QUEUE_DEPTH = 64;
export const NBD_MAX_CONNECTIONS = 16;

export const NBD_SPEC_HELP = [
  'nbd://HOST[:PORT]/EXPORT | nbds://HOST[:PORT]/EXPORT | nbd+unix:///EXPORT?socket=PATH',
  '  options after commas: connections=N (1-16, used when the server allows multi-conn), timeout=30s',
  '  (reply timeout, 0 = none), retry=60s (how long to wait for a lost server), queue=64 (requests in',
  '  flight per connection), readonly=on; TLS: ca=FILE, cert=FILE, key=FILE, servername=NAME, insecure=on',
].join('\n');

/** Parses `500ms`, `30s`, `2m`, `1h` or a plain number of seconds; returns ms, or null. */
export function parseDuration(text: string): number | null {
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$/i.exec(text.trim());
  if (!m) return null;
  const unit = (m[2] ?? 's').toLowerCase();
  const factor = unit === 'ms' ? 1 : unit === 's' ? 1000 : unit === 'm' ? 60_000 : 3_600_000;
  const ms = Math.round(Number(m[1]) * factor);
  return Number.isSafeInteger(ms) ? ms : null;
}

function parseInt10(source: string, key: string, value: string, min: number, max: number): number {
  const n = /^\d+$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isInteger(n) || n < min || n > max) {
    throw specError(source, `option ${key} must be a whole number from ${min} to ${max}`);
  }
  return n;
}

function need(source: string, key: string, value: string | undefined): string {
  if (value === undefined || value === '' || value === 'on') {
    throw specError(source, `option ${key} needs a value (${key}=...)`);
  }
  return value;
}

const NBD_KEYS = [
  'connections',
  'timeout',
  'retry',
  'queue',
  'readonly',
  'ca',
  'cert',
  'key',
  'servername',
  'insecure',
  'socket',
];

/**
 * Parses an NBD spec string: `nbd://...`, `nbds://...`, `nbd+unix://...`, `nbds+unix://...`, or any of those
 * after the kind prefix `nbd:`, then `,key=value` options. Throws UsageError with a one-line message.
 */
export function parseNbdSpec(spec: string): NbdSpecOptions {
  const text = spec.trim();
  const colon = text.indexOf(':');
  if (colon <= 0) throw specError(spec, 'expected a URI like nbd://HOST:PORT/EXPORT');
  return nbdSpecFromText({
    source: spec,
    kind: text.slice(0, colon).toLowerCase(),
    rest: text.slice(colon + 1),
  });
}

/** The registry's parse step: `text.kind` is nbd, nbds, nbd+unix or nbds+unix; `text.rest` follows the colon. */
export function nbdSpecFromText(text: SpecText): NbdSpecOptions {
  const source = text.source;
  const { argument, keys } = splitSpecOptions(text, NBD_KEYS, 'URI');
  let uriText: string;
  if (argument.startsWith('//') && /^nbds?(\+unix)?$/.test(text.kind)) uriText = `${text.kind}:${argument}`;
  else if (text.kind === 'nbd' && /^nbds?(\+unix)?:\/\//i.test(argument)) uriText = argument;
  else
    throw specError(source, 'expected a URI like nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH');

  const scheme = uriText.slice(0, uriText.indexOf(':')).toLowerCase();
  let url: URL;
  try {
    url = new URL(uriText);
  } catch {
    throw specError(source, `'${uriText}' is not a valid URI`);
  }
  let exportName: string;
  try {
    exportName = decodeURIComponent(url.pathname.replace(/^\//, ''));
  } catch {
    throw specError(source, 'bad percent-encoding in the export name');
  }
  const useTls = scheme.startsWith('nbds');
  const unix = scheme.endsWith('+unix');
  const target: NbdTarget = { exportName };
  const options: NbdSpecOptions = {
    target,
    tlsFiles: {},
    connections: 1,
    timeoutMs: NBD_DEFAULT_TIMEOUT_MS,
    retryMs: NBD_DEFAULT_RETRY_MS,
    queueDepth: NBD_DEFAULT_QUEUE_DEPTH,
    readOnly: false,
  };
  const tlsOpts: NonNullable<NbdTarget['tls']> = {};
  let socketPath = url.searchParams.get('socket') ?? undefined;
  for (const k of url.searchParams.keys()) {
    if (k === 'socket') continue;
    if (k.startsWith('tls-')) {
      throw specError(source, `URI query '${k}' is not supported; use the ca=, cert=, key= options`);
    }
    throw specError(source, `unknown URI query parameter '${k}'`);
  }

  const get = (key: string): string | undefined => keys.get(key);
  const connections = get('connections');
  if (connections !== undefined) {
    options.connections = parseInt10(source, 'connections', connections, 1, NBD_MAX_CONNECTIONS);
  }
  const queue = get('queue');
  if (queue !== undefined) options.queueDepth = parseInt10(source, 'queue', queue, 1, 4096);
  for (const key of ['timeout', 'retry'] as const) {
    const value = get(key);
    if (value === undefined) continue;
    const ms = parseDuration(need(source, key, value));
    if (ms === null)
      throw specError(source, `option ${key}=${value} is not a duration (e.g. 500ms, 30s, 2m)`);
    if (key === 'timeout') options.timeoutMs = ms;
    else options.retryMs = ms;
  }
  options.readOnly = specBoolean(source, keys, 'readonly', false);
  for (const key of ['ca', 'cert', 'key'] as const) {
    const value = get(key);
    if (value !== undefined) options.tlsFiles[key] = need(source, key, value);
  }
  const servername = get('servername');
  if (servername !== undefined) tlsOpts.servername = need(source, 'servername', servername);
  if (keys.has('insecure')) tlsOpts.insecure = specBoolean(source, keys, 'insecure', false);
  const socketOption = get('socket');
  if (socketOption !== undefined) {
    if (socketPath !== undefined) throw specError(source, 'socket given twice (URI and option)');
    socketPath = need(source, 'socket', socketOption);
  }

  const usesTlsOptions =
    Object.keys(options.tlsFiles).length > 0 ||
    tlsOpts.servername !== undefined ||
    tlsOpts.insecure !== undefined;
  if (usesTlsOptions && !useTls) {
    throw specError(source, 'TLS options (ca, cert, key, servername, insecure) need an nbds:// URI');
  }
  if ((options.tlsFiles.cert === undefined) !== (options.tlsFiles.key === undefined)) {
    throw specError(source, 'cert= and key= go together');
  }

  if (unix) {
    if (url.host !== '')
      throw specError(source, `${scheme}:// URIs have no host: use ${scheme}:///EXPORT?socket=PATH`);
    if (socketPath === undefined || socketPath === '') {
      throw specError(source, `${scheme}:// needs a socket path (?socket=PATH)`);
    }
    target.socketPath = socketPath;
  } else {
    if (socketPath !== undefined) throw specError(source, 'socket= is only for nbd+unix:// URIs');
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    if (host === '') throw specError(source, `'${uriText}' has no host`);
    target.host = host;
    target.port = url.port === '' ? NBD_DEFAULT_PORT : Number(url.port);
  }
  if (useTls) target.tls = tlsOpts;
  return options;
}
