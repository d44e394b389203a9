/** Errors of the queue-serving engine and its queue threads. */
import { VduseTsError, type VduseTsErrorOptions } from '../../common/errors.js';

export type EngineErrorCode =
  /** The in-flight log cannot be replayed onto the ring (crash recovery). */
  | 'ERR_ENGINE_RECOVER'
  /** A queue thread's device refused the features the main thread's device accepted. */
  | 'ERR_ENGINE_FEATURES'
  /** Too many dropped guest-memory regions wait for requests that still hold them. */
  | 'ERR_ENGINE_RETIRED'
  /** A device call (QueueThreadDevice.call) the device does not have. */
  | 'ERR_ENGINE_CALL';

export class EngineError extends VduseTsError {
  declare readonly code: EngineErrorCode;
  constructor(code: EngineErrorCode, message: string, options: VduseTsErrorOptions = {}) {
    super(code, message, options);
  }
}

/**
 * A queue thread could not start, carry out a command in time, or failed. When the thread's own code threw a
 * VduseTsError, its code is `remoteCode` (the error itself cannot cross the thread boundary).
 */
export class QueueThreadError extends VduseTsError {
  declare readonly code: 'ERR_QUEUE_THREAD';
  readonly remoteCode: string | undefined;
  constructor(message: string, options: VduseTsErrorOptions & { remoteCode?: string } = {}) {
    super('ERR_QUEUE_THREAD', message, options);
    this.remoteCode = options.remoteCode;
  }
}
