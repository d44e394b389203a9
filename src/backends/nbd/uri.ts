/**
 * NBD backend specs: a URI in the usual NBD form, then options after commas.
 *
 *   nbd://HOST[:PORT]/EXPORT              plain TCP (port 10809 by default)
 *   nbds://HOST[:PORT]/EXPORT             TLS (NBD_OPT_STARTTLS)
 *   nbd+unix:///EXPORT?socket=PATH        Unix socket (nbds+unix for TLS over it)
 *
 * optionally prefixed by the backend kind (`nbd:nbd://...`) and followed by `,key=value` options, e.g.
 * `nbd:nbd://127.0.0.1:10809/disk,connections=2,timeout=30s,retry=60s`. A comma in an export name is written
 * %2C (the export is percent-decoded).
 */
import { UsageError } from '../errors.js';
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
  '  flight per connection), readonly; TLS: ca=FILE, cert=FILE, key=FILE, servername=NAME, insecure',
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

function parseBool(key: string, value: string | undefined): boolean {
  if (value === undefined || /^(1|true|yes|on)$/i.test(value)) return true;
  if (/^(0|false|no|off)$/i.test(value)) return false;
  throw new UsageError(`nbd: option ${key}=${value} is not a boolean (use ${key} or ${key}=false)`);
}

function parseInt10(key: string, value: string | undefined, min: number, max: number): number {
  const n = value !== undefined && /^\d+$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new UsageError(`nbd: option ${key} must be a whole number from ${min} to ${max}`);
  }
  return n;
}

function need(key: string, value: string | undefined): string {
  if (value === undefined || value === '')
    throw new UsageError(`nbd: option ${key} needs a value (${key}=...)`);
  return value;
}

/**
 * Parses an NBD spec (with or without the `nbd:` kind prefix). Throws UsageError with a one-line message for
 * anything wrong.
 */
export function parseNbdSpec(spec: string): NbdSpecOptions {
  let text = spec.trim();
  if (/^nbd:(nbds?(\+unix)?):/i.test(text)) text = text.slice(4);
  else if (/^nbd:\/\//i.test(text)) {
    // already a plain nbd:// URI
  } else if (/^nbd:/i.test(text)) {
    throw new UsageError(`nbd: expected a URI like nbd://HOST:PORT/EXPORT, got '${spec}'`);
  }
  const parts = text.split(',');
  const uriText = parts[0] ?? '';
  const schemeMatch = /^(nbds?(?:\+unix)?):\/\//i.exec(uriText);
  if (!schemeMatch) {
    throw new UsageError(
      `nbd: expected a URI like nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH, got '${uriText}'`,
    );
  }
  const scheme = schemeMatch[1]!.toLowerCase();
  let url: URL;
  try {
    url = new URL(uriText);
  } catch {
    throw new UsageError(`nbd: '${uriText}' is not a valid URI`);
  }
  let exportName: string;
  try {
    exportName = decodeURIComponent(url.pathname.replace(/^\//, ''));
  } catch {
    throw new UsageError(`nbd: bad percent-encoding in the export name of '${uriText}'`);
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
    if (k === 'tls-certificates' || k === 'tls-psk-file' || k === 'tls-username') {
      throw new UsageError(`nbd: URI query '${k}' is not supported; use the ca=, cert=, key= options`);
    }
    throw new UsageError(`nbd: unknown URI query parameter '${k}'`);
  }

  for (const raw of parts.slice(1)) {
    if (raw === '') continue;
    const eq = raw.indexOf('=');
    const key = (eq < 0 ? raw : raw.slice(0, eq)).trim().toLowerCase();
    const value = eq < 0 ? undefined : raw.slice(eq + 1).trim();
    switch (key) {
      case 'connections':
        options.connections = parseInt10(key, value, 1, NBD_MAX_CONNECTIONS);
        break;
      case 'queue':
        options.queueDepth = parseInt10(key, value, 1, 4096);
        break;
      case 'timeout':
      case 'retry': {
        const ms = parseDuration(need(key, value));
        if (ms === null)
          throw new UsageError(`nbd: option ${key}=${value} is not a duration (e.g. 500ms, 30s, 2m)`);
        if (key === 'timeout') options.timeoutMs = ms;
        else options.retryMs = ms;
        break;
      }
      case 'readonly':
      case 'ro':
        options.readOnly = parseBool(key, value);
        break;
      case 'ca':
      case 'cert':
      case 'key':
        options.tlsFiles[key] = need(key, value);
        break;
      case 'servername':
        tlsOpts.servername = need(key, value);
        break;
      case 'insecure':
        tlsOpts.insecure = parseBool(key, value);
        break;
      case 'socket':
        socketPath = need(key, value);
        break;
      default:
        throw new UsageError(
          `nbd: unknown option '${key}' (known: connections, timeout, retry, queue, readonly, ca, cert, key, servername, insecure, socket)`,
        );
    }
  }

  const usesTlsOptions =
    Object.keys(options.tlsFiles).length > 0 ||
    tlsOpts.servername !== undefined ||
    tlsOpts.insecure !== undefined;
  if (usesTlsOptions && !useTls) {
    throw new UsageError('nbd: TLS options (ca, cert, key, servername, insecure) need an nbds:// URI');
  }
  if ((options.tlsFiles.cert === undefined) !== (options.tlsFiles.key === undefined)) {
    throw new UsageError('nbd: cert= and key= go together');
  }

  if (unix) {
    if (url.host !== '')
      throw new UsageError(`nbd: ${scheme}:// URIs have no host: use ${scheme}:///EXPORT?socket=PATH`);
    if (socketPath === undefined || socketPath === '') {
      throw new UsageError(`nbd: ${scheme}:// needs a socket path (?socket=PATH)`);
    }
    target.socketPath = socketPath;
  } else {
    if (socketPath !== undefined) throw new UsageError('nbd: socket= is only for nbd+unix:// URIs');
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    if (host === '') throw new UsageError(`nbd: '${uriText}' has no host`);
    target.host = host;
    target.port = url.port === '' ? NBD_DEFAULT_PORT : Number(url.port);
  }
  if (useTls) target.tls = tlsOpts;
  return options;
}
