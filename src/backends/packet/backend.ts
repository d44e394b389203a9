/**
 * Frames behind a network device: implement PacketBackend to connect a virtio-net device (src/devices/net) to
 * something that carries Ethernet frames (a TAP interface, an AF_PACKET socket, a userspace switch, a test
 * wire). ./tap.ts and ./pair.ts are complete ones; examples/ has a short custom one.
 *
 * The model is pull, one frame per call, with back-pressure both ways and no queue in between:
 * - Receive (towards the guest): the device asks for readable() callbacks with setReceiving(true) only while it
 *   holds receive buffers the driver posted. On readable() (or whenever it likes) it calls receive(buffers)
 *   with views of those guest buffers, and the backend writes one frame straight into them. When the driver has
 *   posted nothing, the device calls setReceiving(false): the backend stops reading (a TAP leaves the frames in
 *   the kernel's queue, which is bounded and drops by its own policy), it never queues without bound.
 * - Transmit (from the guest): send(frame) hands over one frame as a list of views of guest memory; the backend
 *   must be done with them when send() returns (copy if it keeps anything). When it cannot take a frame now it
 *   returns false and calls writable() once it can; the device stops taking frames from the guest until then
 *   and retries the same frame, so nothing the guest handed over is dropped.
 *
 * Headers: with `vnetHeader` true every frame both ways starts with the 12-byte struct virtio_net_hdr_v1 (the
 * offload information: checksum needed, GSO type and size); the device passes the guest's header through on
 * transmit and lets the backend write it on receive (the device fixes num_buffers). With `vnetHeader` false
 * frames are plain Ethernet frames and the device offers no offloads.
 */

/** Checksum and segmentation offloads, as the guest and the backend agree on them (virtio-net GUEST_* bits). */
export interface PacketOffloads {
  /** Frames may carry a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM). */
  csum: boolean;
  /** TCPv4 segmentation offload (frames larger than the MTU, VIRTIO_NET_HDR_GSO_TCPV4). */
  tso4: boolean;
  /** TCPv6 segmentation offload. */
  tso6: boolean;
  /** TSO with ECN (VIRTIO_NET_HDR_GSO_ECN). */
  ecn: boolean;
}

export const NO_OFFLOADS: Readonly<PacketOffloads> = Object.freeze({
  csum: false,
  tso4: false,
  tso6: false,
  ecn: false,
});

/** What a backend calls back with; the device passes these to attach(). */
export interface PacketBackendEvents {
  /** A frame is waiting: call receive(). Only called while receiving is on. */
  readable(): void;
  /** A send() that returned false may be retried now. */
  writable(): void;
  /** The backend failed for good (its fd broke, its peer went away); no more frames either way. */
  failed(error: Error): void;
}

export interface PacketBackend {
  /** A short description for logs ('tap:vts0'). */
  readonly description: string;
  /** Frames carry a leading 12-byte virtio_net_hdr_v1 both ways (see the module comment). */
  readonly vnetHeader: boolean;
  /**
   * With vnetHeader: the offloads this backend accepts on transmit (what the device may offer as
   * VIRTIO_NET_F_CSUM / HOST_TSO4 / HOST_TSO6 / HOST_ECN) and can produce on receive when setOffloads()
   * enables them (GUEST_CSUM / GUEST_TSO4 / ...). Ignored without vnetHeader.
   */
  readonly offloads: Readonly<PacketOffloads>;
  /** Called once, before anything else. */
  attach(events: PacketBackendEvents): void;
  /** Watch for frames (readable() callbacks) or stop watching. Off until first turned on. */
  setReceiving(on: boolean): void;
  /**
   * Write the next waiting frame into `buffers` in order. Returns the frame's FULL length (with the vnet header
   * when vnetHeader), which is larger than the buffers hold when the frame did not fit (the bytes beyond are
   * lost: the device drops such a frame), or -1 when no frame is waiting. A frame is never split over calls.
   * Throws (a BackendError) only when the backend is broken.
   */
  receive(buffers: readonly Uint8Array[]): number;
  /**
   * Transmit one frame made of `frame` in order (with the vnet header when vnetHeader). Returns true when the
   * frame was taken, false when the backend cannot take it now (writable() follows; the same frame comes again).
   * Throws (a BackendError) when this frame was refused (e.g. a TAP whose interface is down answers EIO): the
   * device counts it as dropped and goes on.
   */
  send(frame: readonly Uint8Array[]): boolean;
  /** With vnetHeader: the receive offloads the guest accepted; the backend must not produce others. */
  setOffloads?(offloads: Readonly<PacketOffloads>): void;
  /** The device's link went up or down (e.g. a TAP follows it with its carrier). */
  setLinkUp?(up: boolean): void;
  /** Stop for good and release what the backend holds. */
  close(): Promise<void>;
}
