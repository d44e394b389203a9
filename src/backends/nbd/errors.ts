/**
 * The NBD backend's errors, in the project's error model (src/common/errors.ts): each is a BackendError (so a
 * failed request answers the guest IOERR like any backend failure) with a stable code 'ERR_NBD_*'.
 *
 * - NbdProtocolError: the server broke the protocol, or refused the handshake (export unknown, TLS required).
 * - NbdConnectionError: the connection failed or ended (socket error, timeout, closed by the server, or a
 *   protocol error, which is then its `cause` and lends it its code).
 * - NbdServerError: the server answered a request with an error; `errno` is the NBD error's name.
 *
 * `fatal` says whether connecting again to the same server cannot help (configuration, policy).
 */
import { errnoOf } from '../../common/errors.js';
import { BackendError } from '../backend.js';

export interface NbdErrorOptions {
  /** Reconnecting cannot help. */
  fatal?: boolean;
  code?: string;
  errno?: string;
  cause?: unknown;
}

/** The base of the NBD errors. */
export class NbdError extends BackendError {
  /** Retrying with a new connection cannot help (configuration or policy problem). */
  readonly fatal: boolean;

  constructor(defaultCode: string, message: string, options: NbdErrorOptions = {}) {
    super(message, {
      code: options.code ?? defaultCode,
      errno: options.errno ?? errnoOf(options.cause) ?? 'EIO',
      ...(options.cause !== undefined ? { cause: options.cause } : {}),
    });
    this.fatal = options.fatal ?? false;
  }
}

/** Stable codes of NbdProtocolError. */
export const NBD_ERR = {
  /** A malformed or unexpected message from the server (the default). */
  PROTOCOL: 'ERR_NBD_PROTOCOL',
  /** The peer is not an NBD server, or speaks only the oldstyle or plain newstyle handshake we cannot use. */
  NOT_SUPPORTED_SERVER: 'ERR_NBD_UNSUPPORTED_SERVER',
  /** TLS was asked for and refused, or the server requires TLS and the URI is not nbds://. */
  TLS: 'ERR_NBD_TLS',
  /** The export does not exist on the server, or the server refused it. */
  EXPORT: 'ERR_NBD_EXPORT',
  /** The server is shutting down (NBD_REP_ERR_SHUTDOWN). */
  SHUTDOWN: 'ERR_NBD_SHUTDOWN',
  /** Block size constraints that break the protocol's rules, or that this client cannot honour. */
  BLOCK_SIZE: 'ERR_NBD_BLOCK_SIZE',
  /** A server that came back with another size, read-only, tighter limits or without multi-conn. */
  EXPORT_CHANGED: 'ERR_NBD_EXPORT_CHANGED',
  /** More than the protocol's limits (a string, a chunk, requests in flight). */
  LIMIT: 'ERR_NBD_LIMIT',
  /** A request this client was asked to send is malformed (a bug in the caller, not the server's doing). */
  BAD_REQUEST: 'ERR_NBD_BAD_REQUEST',
} as const;

/** The server broke the protocol or refused the handshake. */
export class NbdProtocolError extends NbdError {
  constructor(message: string, fatalOrOptions: boolean | NbdErrorOptions = {}) {
    const options = typeof fatalOrOptions === 'boolean' ? { fatal: fatalOrOptions } : fatalOrOptions;
    super(NBD_ERR.PROTOCOL, message, options);
  }
}

/** Stable codes of NbdConnectionError (besides those of the NbdProtocolError it may carry as its cause). */
export const NBD_CONN_ERR = {
  /** The socket failed (`errno` says how: ECONNREFUSED, ECONNRESET, ...). */
  SOCKET: 'ERR_NBD_CONNECTION',
  /** The server closed the connection. */
  CLOSED: 'ERR_NBD_CLOSED',
  /** Connecting plus the handshake, or a request's reply, took longer than the timeout. */
  TIMEOUT: 'ERR_NBD_TIMEOUT',
} as const;

/** The connection failed or was closed; the request may or may not have been executed. */
export class NbdConnectionError extends NbdError {
  constructor(message: string, fatalOrOptions: boolean | NbdErrorOptions = {}) {
    const options = typeof fatalOrOptions === 'boolean' ? { fatal: fatalOrOptions } : fatalOrOptions;
    super(NBD_CONN_ERR.SOCKET, message, options);
  }
}

/** The server answered a request with an error: `errno` is its name ('EIO', 'ENOSPC', ...), `value` its number. */
export class NbdServerError extends NbdError {
  readonly value: number;
  readonly offset: number | undefined;
  constructor(error: { value: number; name: string; message: string; offset?: number | undefined }) {
    super('ERR_NBD_SERVER', error.message ? `${error.name}: ${error.message}` : error.name, {
      errno: error.name,
    });
    this.value = error.value;
    this.offset = error.offset;
  }
}
