/**
 * The VDUSE message protocol as plain code (sans-I/O): decoded `vduse_dev_request`s in, responses and effects
 * out. The runtime (./device.ts) reads requests from /dev/vduse/NAME, feeds them here, carries out the effects
 * (start or stop the data path, drop IOTLB mappings) and writes the responses back, all in one go.
 *
 * Two decisions need the outside world and come in through `ProtocolContext`: whether the driver's features are
 * acceptable (FEATURES_OK) and the progress of a live queue (GET_VQ_STATE).
 */
import {
  VDUSE_REQ_RESULT_FAILED,
  VDUSE_REQ_RESULT_OK,
  type VduseDevRequest,
  type VduseDevResponse,
} from '../../uapi/vduse.js';
import {
  VIRTIO_CONFIG_S_DRIVER_OK,
  VIRTIO_CONFIG_S_FAILED,
  VIRTIO_CONFIG_S_FEATURES_OK,
} from '../../uapi/virtio-config.js';
import type { PackedQueueState, SplitQueueState } from '../../virtio/virtqueue.js';

/** What the runtime must do, in order, before it writes the response. */
export type ProtocolEffect =
  /** DRIVER_OK was set: map the rings, install kick eventfds, activate the device. */
  | { kind: 'start' }
  /** DRIVER_OK was cleared without a reset (e.g. FAILED): stop the data path. */
  | { kind: 'stop' }
  /** Status 0: reset the device, drop kick eventfds and every IOTLB mapping. */
  | { kind: 'reset' }
  /** Drop the IOTLB mappings overlapping [start, last]. */
  | { kind: 'invalidate'; start: number; last: number };

export interface ProtocolResult {
  response: VduseDevResponse;
  effects: ProtocolEffect[];
}

export interface ProtocolContext {
  /** FEATURES_OK: fetch the driver's features and ask the device. False refuses (the response is FAILED). */
  acceptFeatures(): boolean;
  /** GET_VQ_STATE: the progress of queue `index` (live, or saved at the last stop). */
  queueState(index: number): SplitQueueState | PackedQueueState;
  /** Requests the protocol does not know, and refusals, are reported here (one line each). */
  log?(message: string): void;
}

export class VduseProtocol {
  /** The status byte the kernel holds after our last answer. */
  #status = 0;
  #running = false;

  constructor(readonly numQueues: number) {}

  get status(): number {
    return this.#status;
  }

  /** The data path was started (DRIVER_OK accepted) and not stopped since. */
  get running(): boolean {
    return this.#running;
  }

  /**
   * Reconnect: take up the status a previous process accepted (from its state log). The data path counts as
   * running when it has DRIVER_OK and not FAILED; the runtime restarts it.
   */
  restore(status: number): void {
    this.#status = status & 0xff;
    this.#running =
      (this.#status & VIRTIO_CONFIG_S_DRIVER_OK) !== 0 && (this.#status & VIRTIO_CONFIG_S_FAILED) === 0;
  }

  /** The runtime could not start the data path: forget DRIVER_OK was accepted. */
  startFailed(): void {
    this.#running = false;
  }

  handle(request: VduseDevRequest, ctx: ProtocolContext): ProtocolResult {
    const id = request.request_id;
    const ok: VduseDevResponse = { request_id: id, result: VDUSE_REQ_RESULT_OK };
    const failed: VduseDevResponse = { request_id: id, result: VDUSE_REQ_RESULT_FAILED };
    switch (request.kind) {
      case 'set_status':
        return this.#setStatus(request.status, ok, failed, ctx);
      case 'get_vq_state': {
        if (request.index >= this.numQueues) {
          ctx.log?.(`GET_VQ_STATE for queue ${request.index} of ${this.numQueues}: refused`);
          return { response: failed, effects: [] };
        }
        const state = ctx.queueState(request.index);
        const vq_state =
          'nextAvail' in state
            ? { index: request.index, split: { avail_index: state.nextAvail & 0xffff } }
            : {
                index: request.index,
                packed: {
                  last_avail_counter: state.lastAvailCounter & 1,
                  last_avail_idx: state.lastAvailIdx & 0x7fff,
                  last_used_counter: state.lastUsedCounter & 1,
                  last_used_idx: state.lastUsedIdx & 0x7fff,
                },
              };
        return { response: { ...ok, vq_state }, effects: [] };
      }
      case 'update_iotlb': {
        if (request.start > request.last) {
          ctx.log?.('UPDATE_IOTLB with start > last: refused');
          return { response: failed, effects: [] };
        }
        if (request.asid !== 0) {
          ctx.log?.(
            `UPDATE_IOTLB for address space ${request.asid}: refused (only address space 0 is served)`,
          );
          return { response: failed, effects: [] };
        }
        return {
          response: ok,
          effects: [{ kind: 'invalidate', start: toAddress(request.start), last: toAddress(request.last) }],
        };
      }
      default:
        ctx.log?.(`unsupported VDUSE request type ${request.type}: answered FAILED`);
        return { response: failed, effects: [] };
    }
  }

  #setStatus(
    status: number,
    ok: VduseDevResponse,
    failed: VduseDevResponse,
    ctx: ProtocolContext,
  ): ProtocolResult {
    status &= 0xff;
    if (status === 0) {
      this.#status = 0;
      this.#running = false;
      return { response: ok, effects: [{ kind: 'reset' }] };
    }
    const effects: ProtocolEffect[] = [];
    const before = this.#status;
    const setting = (bit: number): boolean => (status & bit) !== 0 && (before & bit) === 0;

    if (setting(VIRTIO_CONFIG_S_FEATURES_OK)) {
      let accepted: boolean;
      try {
        accepted = ctx.acceptFeatures();
      } catch (err) {
        ctx.log?.(`FEATURES_OK: ${(err as Error).message}`);
        accepted = false;
      }
      if (!accepted) {
        ctx.log?.('FEATURES_OK refused: the device does not accept the driver features');
        return { response: failed, effects };
      }
    }
    if (
      (status & VIRTIO_CONFIG_S_DRIVER_OK) !== 0 &&
      !this.#running &&
      (status & VIRTIO_CONFIG_S_FAILED) === 0
    ) {
      if ((status & VIRTIO_CONFIG_S_FEATURES_OK) === 0 && (before & VIRTIO_CONFIG_S_FEATURES_OK) === 0) {
        // Legacy-style start without FEATURES_OK: features were never checked. Check them now.
        let accepted = false;
        try {
          accepted = ctx.acceptFeatures();
        } catch (err) {
          ctx.log?.(`DRIVER_OK: ${(err as Error).message}`);
        }
        if (!accepted) return { response: failed, effects };
      }
      this.#running = true;
      effects.push({ kind: 'start' });
    } else if (
      this.#running &&
      ((status & VIRTIO_CONFIG_S_DRIVER_OK) === 0 || (status & VIRTIO_CONFIG_S_FAILED) !== 0)
    ) {
      this.#running = false;
      effects.push({ kind: 'stop' });
    }
    this.#status = status;
    return { response: ok, effects };
  }
}

/** An IOVA as a number; anything at or above 2^53 (the kernel sends last = 2^64 - 1) becomes the largest one. */
function toAddress(value: bigint): number {
  return value > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(value);
}
