/**
 * How the `vduse` command reports a failure: a VduseTsError (anything thrown on purpose) is one line on stderr,
 * exit 2 for a UsageError (what was asked cannot be done as asked) and 1 for any other; anything else is a bug
 * and is printed with its stack, exit 1.
 */
import { UsageError, VduseTsError } from '../common/errors.js';

export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

/**
 * Print `err` (prefixed "vduse: ", or "vduse add: " for a client command; null: the message names its
 * command already) and return the exit code.
 */
export function reportError(
  err: unknown,
  prefix: string | null = 'vduse',
  options: { verbose?: boolean; write?: (text: string) => void } = {},
): number {
  const write = options.write ?? ((text: string) => void process.stderr.write(text));
  if (err instanceof VduseTsError) {
    write(prefix === null ? `${err.message}\n` : `${prefix}: ${err.message}\n`);
    if (options.verbose && err.stack) write(`${err.stack}\n`);
    return err instanceof UsageError ? EXIT_USAGE : EXIT_FAILURE;
  }
  const text = err instanceof Error ? (err.stack ?? err.message) : String(err);
  write(`${prefix ?? 'vduse'}: internal error: ${text}\n`);
  return EXIT_FAILURE;
}
