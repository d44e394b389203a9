/**
 * A virtio device as the framework runs it. A device sees queues and guest memory, never fds or ioctls: the
 * transport (src/vduse, or the mock driver in src/testing) does the rest.
 */
import type { GuestMemory } from '../memory/guest-memory.js';
import type { Virtqueue } from '../virtio/virtqueue.js';

/** What the transport offers to a device it serves. */
export interface DeviceHost {
  /** The config space changed (e.g. capacity after a resize): the transport re-reads config() and tells the driver. */
  configChanged(): void;
  /** The device hit an unrecoverable error: the transport sets DEVICE_NEEDS_RESET. */
  needsReset(reason: Error): void;
}

/** Everything a device needs between DRIVER_OK and reset. */
export interface DeviceContext {
  /** The negotiated features. */
  features: bigint;
  memory: GuestMemory;
  /** One entry per device queue; null for queues the driver did not enable. */
  queues: readonly (Virtqueue | null)[];
}

export interface VirtioDevice {
  /** virtio device id (VIRTIO_ID_BLOCK = 2, ...). */
  readonly deviceId: number;
  readonly vendorId: number;
  readonly numQueues: number;
  /**
   * The engine may poll this device's rings between requests (spin over idle rings before it sleeps, where
   * that measures faster; src/transports/engine/poll-control.ts). Absent: no. A device that polls its rings
   * itself says no.
   */
  readonly ringPolling?: boolean;
  /** Largest queue size the device accepts (what VDUSE_VQ_SETUP's max_size gets). */
  readonly maxQueueSize: number;
  /** Every feature bit the device offers, device and transport bits alike (VERSION_1, ACCESS_PLATFORM, ...). */
  readonly features: bigint;
  /** The config space as the driver reads it now. */
  config(): Uint8Array;
  /** Called once by the transport before anything else. */
  bind(host: DeviceHost): void;
  /** The driver's feature set at FEATURES_OK. Return false to refuse it (the driver sees FEATURES_OK not set). */
  negotiate(features: bigint): boolean;
  /** DRIVER_OK: start serving. */
  activate(context: DeviceContext): void;
  /** The driver kicked queue `index`. */
  queueNotify(index: number): void;
  /**
   * Reset: stop touching queues and memory at once. Requests still running in the backend finish in the
   * background and their results are dropped. The returned promise resolves when none is left.
   */
  reset(): Promise<void>;
  /**
   * Chains of queue `index` the device holds with nothing to do for them: receive buffers waiting for a packet
   * that may never come. A drain (a stop for a successor, a safe remove) does not wait for these; they are
   * dropped at the reset (or handed to the successor through the in-flight log). Absent: none, every chain
   * the device holds is work in progress.
   */
  idleChains?(index: number): number;
}
