/** What every layer may use: the error model and the logger. */
export {
  VduseTsError,
  UsageError,
  isVduseTsError,
  errnoOf,
  messageOf,
  type VduseTsErrorOptions,
} from './errors.js';
export { createLogger, nullLogger, type Logger, type LogLevel, type LoggerOptions } from './logger.js';
