/**
 * Logs of `vduse serve`: JSON lines ({"level","time","msg", ...fields}) for journald and log shippers, or
 * human-readable lines on a terminal. Implements the project's Logger, plus child(fields) for per-device fields.
 */
import type { LogLevel, Logger } from '../../common/logger.js';

/** `json`: one JSON object per line; `text`: human-readable lines. */
export type LogFormat = 'json' | 'text';

export interface FieldLogger extends Logger {
  /** A logger adding `fields` to every line. */
  child(fields: Record<string, string | number>): FieldLogger;
}

const RANK: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };

export interface StructuredLoggerOptions {
  format: LogFormat;
  level?: LogLevel;
  write?: (line: string) => void;
  now?: () => Date;
}

/**
 * The format when none was asked for: JSON when stderr is not a terminal and goes to the journal
 * (JOURNAL_STREAM set by systemd), else text.
 */
export function defaultLogFormat(
  env: NodeJS.ProcessEnv = process.env,
  isTTY = process.stderr.isTTY === true,
): LogFormat {
  return !isTTY && env.JOURNAL_STREAM !== undefined && env.JOURNAL_STREAM !== '' ? 'json' : 'text';
}

export function createStructuredLogger(
  options: StructuredLoggerOptions,
  fields: Record<string, string | number> = {},
): FieldLogger {
  const max = RANK[options.level ?? 'info'];
  const write = options.write ?? ((line: string) => void process.stderr.write(line));
  const now = options.now ?? (() => new Date());
  const at =
    (level: LogLevel) =>
    (message: string): void => {
      if (RANK[level] > max) return;
      if (options.format === 'json') {
        write(`${JSON.stringify({ level, time: now().toISOString(), msg: message, ...fields })}\n`);
      } else {
        const device = fields.device !== undefined ? `[${fields.device}] ` : '';
        write(`vduse: ${level === 'info' ? '' : `${level}: `}${device}${message}\n`);
      }
    };
  return {
    error: at('error'),
    warn: at('warn'),
    info: at('info'),
    debug: at('debug'),
    child: (more) => createStructuredLogger(options, { ...fields, ...more }),
  };
}
