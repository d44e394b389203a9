/**
 * A tiny leveled logger: one concise line per event on stderr (or any sink). Levels: error < warn < info < debug.
 */

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';

export interface Logger {
  error(message: string): void;
  warn(message: string): void;
  info(message: string): void;
  debug(message: string): void;
}

const RANK: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };

export interface LoggerOptions {
  level?: LogLevel;
  /** Prefix of every line (e.g. the program name). */
  prefix?: string;
  /** Where lines go; default process.stderr. */
  write?: (line: string) => void;
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const max = RANK[options.level ?? 'info'];
  const prefix = options.prefix ? `${options.prefix}: ` : '';
  const write = options.write ?? ((line: string) => void process.stderr.write(line));
  const at =
    (level: LogLevel) =>
    (message: string): void => {
      if (RANK[level] <= max) write(`${prefix}${level === 'info' ? '' : `${level}: `}${message}\n`);
    };
  return { error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug') };
}

/** Discards everything. */
export const nullLogger: Logger = {
  error() {},
  warn() {},
  info() {},
  debug() {},
};
