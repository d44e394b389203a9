/**
 * Errors about what a user asked for (a bad backend spec, a bad option). The message is one line meant to be
 * printed as is; the CLI prints it without a stack trace.
 */
export class UsageError extends Error {
  readonly code = 'ERR_USAGE';
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}
