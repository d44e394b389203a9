/**
 * The one error model of vduse-ts (in the manner of undici's errors): every error the project throws on purpose
 * is a VduseTsError with a stable string `code` ('ERR_<LAYER>_<WHAT>'), a message of one line meant for people,
 * the system error's name in `errno` when a system call failed ('EBUSY'), and the underlying error as `cause`.
 *
 * Layers subclass it (GuestMemoryError, VirtqueueError, BackendError, NbdError, VduseError, QueueThreadError,
 * ConfigError, RpcError, ...). Code decides on `code` (or the class), never on the message text. JSON-RPC error
 * numbers exist only at the RPC edge (src/mgmt/daemon/rpc.ts).
 *
 * UsageError is the subclass for what a person asked for that cannot be done as asked (a bad flag value, a bad
 * backend spec): the CLI prints its message alone and exits 2. Any other VduseTsError is one line and exit 1;
 * anything else is a bug and is printed with its stack.
 */

export interface VduseTsErrorOptions {
  cause?: unknown;
  /** The system error's name ('EBUSY') when this comes from a failed system call; default: taken from `cause`. */
  errno?: string;
}

export class VduseTsError extends Error {
  /** Stable identity of the failure: 'ERR_<LAYER>_<WHAT>'. */
  readonly code: string;
  /** The failed system call's errno name ('EBUSY'), when there was one. */
  readonly errno: string | undefined;

  constructor(code: string, message: string, options: VduseTsErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.errno = options.errno ?? errnoOf(options.cause);
  }
}

/** A request a person made that cannot be carried out as asked; the CLI prints it as one line and exits 2. */
export class UsageError extends VduseTsError {
  constructor(message: string, options: VduseTsErrorOptions & { code?: string } = {}) {
    super(options.code ?? 'ERR_USAGE', message, options);
  }
}

/** True for a VduseTsError, and, when `code` is given, one with that code. */
export function isVduseTsError(err: unknown, code?: string): err is VduseTsError {
  return err instanceof VduseTsError && (code === undefined || err.code === code);
}

/** The errno name ('ENOENT') of a Node system error (or one of ours that carries it), else undefined. */
export function errnoOf(err: unknown): string | undefined {
  if (err instanceof VduseTsError) return err.errno;
  const code = (err as { code?: unknown } | null | undefined)?.code;
  return typeof code === 'string' && /^E[A-Z0-9]+$/.test(code) ? code : undefined;
}

/** The message of anything thrown. */
export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** "EEXIST" style text for a system error ("EEXIST: file already exists" when the message adds to it), or its message. */
export function systemErrorMessage(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e.code === 'string' && /^E[A-Z0-9]+$/.test(e.code)) {
    const text = e.message && !e.message.startsWith(e.code) ? `: ${e.message}` : '';
    return `${e.code}${text}`;
  }
  return messageOf(err);
}
