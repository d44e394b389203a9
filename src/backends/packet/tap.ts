/**
 * A TAP interface (/dev/net/tun) as a packet backend: one read() is one frame from the host's stack to the
 * guest, one write() is one frame from the guest to the host's stack.
 *
 * The fd is non-blocking and read on the event loop with the fd watcher (never on the thread pool): readable()
 * fires while frames wait and receiving is on; the device reads them straight into the guest's receive buffers
 * (readv) until -1 (EAGAIN). Frames are written straight from the guest's descriptors (writev, through
 * preadv2/pwritev2 at offset -1, which is readv/writev). A write that would block (EAGAIN) returns false and the
 * watcher waits for UV_WRITABLE. While the device has no receive buffers, the watcher does not look for readable
 * at all: frames stay in the tap's kernel queue (txqueuelen frames; the kernel drops beyond that, as for any
 * slow interface).
 *
 * With `vnetHeader` (the default), the tap is opened with IFF_VNET_HDR and TUNSETVNETHDRSZ 12, so each frame
 * carries the same 12-byte header as virtio-net (linux writes its first 10 bytes; the device sets num_buffers):
 * checksum and segmentation offloads pass through both ways; TUNSETOFFLOAD enables the receive offloads the
 * guest accepted. linux/if_tun.h values are below (checked by the unit test against the ioctl encoding).
 */
import { closeSync, openSync, constants as fsConstants } from 'node:fs';

import { messageOf } from '../../common/errors.js';
import { IOR, IOW } from '../../uapi/ioctl.js';
import { UV_READABLE, UV_WRITABLE, type FdWatcher, type SysBinding } from '../../sys/binding.js';
import { loadNativeBinding } from '../../sys/native.js';
import { BackendError } from '../backend.js';
import type { PacketBackend, PacketBackendEvents, PacketOffloads } from './backend.js';

// linux/if_tun.h
export const TUNSETIFF = IOW(0x54, 202, 4);
export const TUNSETOFFLOAD = IOW(0x54, 208, 4);
export const TUNGETIFF = IOR(0x54, 210, 4);
export const TUNSETVNETHDRSZ = IOW(0x54, 216, 4);
export const TUNSETCARRIER = IOW(0x54, 226, 4);
export const IFF_TUN = 0x0001;
export const IFF_TAP = 0x0002;
export const IFF_NO_PI = 0x1000;
export const IFF_VNET_HDR = 0x4000;
export const TUN_F_CSUM = 0x01;
export const TUN_F_TSO4 = 0x02;
export const TUN_F_TSO6 = 0x04;
export const TUN_F_TSO_ECN = 0x08;
/** sizeof(struct ifreq) on 64-bit Linux; the name is IFNAMSIZ (16) bytes with its NUL. */
export const IFREQ_SIZE = 40;
export const IFNAMSIZ = 16;
/** The vnet header size the tap is told to use: struct virtio_net_hdr_v1 (VERSION_1). */
export const TAP_VNET_HDR_SIZE = 12;

export interface TapBackendOptions {
  /** Interface name (at most 15 bytes); an existing persistent tap is attached, else a new one is created. */
  name: string;
  /** Open with IFF_VNET_HDR so that offloads pass through (default true). */
  vnetHeader?: boolean;
  /** The syscall binding (default: the native addon). */
  binding?: SysBinding;
  /** Path of the clone device (default /dev/net/tun). */
  path?: string;
}

/** struct ifreq for TUNSETIFF: ifr_name and ifr_flags (a short at offset 16). */
export function encodeTunIfreq(name: string, flags: number): Uint8Array {
  const bytes = new TextEncoder().encode(name);
  if (bytes.length === 0 || bytes.length >= IFNAMSIZ || bytes.includes(0) || /[/\s:]/.test(name)) {
    throw new BackendError(
      `tap: interface name '${name}' must be 1 to ${IFNAMSIZ - 1} bytes, without '/', ':' or spaces`,
      'EINVAL',
    );
  }
  const ifr = new Uint8Array(IFREQ_SIZE);
  ifr.set(bytes, 0);
  new DataView(ifr.buffer).setUint16(IFNAMSIZ, flags, true);
  return ifr;
}

/** The interface name the kernel wrote back into an ifreq. */
export function decodeIfreqName(ifr: Uint8Array): string {
  const end = ifr.subarray(0, IFNAMSIZ).indexOf(0);
  return new TextDecoder().decode(ifr.subarray(0, end < 0 ? IFNAMSIZ : end));
}

/** TUNSETOFFLOAD flags for receive offloads (TSO needs CSUM: the kernel ignores TSO bits without it). */
export function tunOffloadFlags(offloads: Readonly<PacketOffloads>): number {
  if (!offloads.csum) return 0;
  let flags = TUN_F_CSUM;
  if (offloads.tso4) flags |= TUN_F_TSO4;
  if (offloads.tso6) flags |= TUN_F_TSO6;
  if (offloads.ecn && (offloads.tso4 || offloads.tso6)) flags |= TUN_F_TSO_ECN;
  return flags;
}

function tapError(what: string, cause: unknown): BackendError {
  return new BackendError(`tap: ${what}: ${messageOf(cause)}`, { cause });
}

export class TapBackend implements PacketBackend {
  readonly description: string;
  readonly vnetHeader: boolean;
  readonly offloads: Readonly<PacketOffloads>;
  /** The interface name the kernel gave the tap. */
  readonly name: string;
  readonly #binding: SysBinding;
  #fd: number;
  #watcher: FdWatcher | null = null;
  #events: PacketBackendEvents | null = null;
  #wantRead = false;
  #wantWrite = false;
  #mask = 0;
  #closed = false;
  readonly #int = new Uint8Array(4);

  /** Open (or create) the tap. Throws a BackendError with the errno (EPERM without CAP_NET_ADMIN, ...). */
  static open(options: TapBackendOptions): TapBackend {
    const binding = options.binding ?? loadNativeBinding();
    const vnetHeader = options.vnetHeader ?? true;
    const ifr = encodeTunIfreq(options.name, IFF_TAP | IFF_NO_PI | (vnetHeader ? IFF_VNET_HDR : 0));
    const path = options.path ?? '/dev/net/tun';
    let fd: number;
    try {
      fd = openSync(path, fsConstants.O_RDWR | fsConstants.O_NONBLOCK);
    } catch (e) {
      throw tapError(`cannot open ${path}`, e);
    }
    try {
      try {
        binding.ioctl(fd, TUNSETIFF, ifr);
      } catch (e) {
        throw tapError(`TUNSETIFF ${options.name}`, e);
      }
      if (vnetHeader) {
        const size = new Uint8Array(4);
        new DataView(size.buffer).setInt32(0, TAP_VNET_HDR_SIZE, true);
        try {
          binding.ioctl(fd, TUNSETVNETHDRSZ, size);
          // Nothing but plain frames towards the guest until the driver accepts offloads.
          binding.ioctl(fd, TUNSETOFFLOAD, 0);
        } catch (e) {
          throw tapError(`cannot set up the vnet header of ${options.name}`, e);
        }
      }
      return new TapBackend(binding, fd, decodeIfreqName(ifr), vnetHeader);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  private constructor(binding: SysBinding, fd: number, name: string, vnetHeader: boolean) {
    this.#binding = binding;
    this.#fd = fd;
    this.name = name;
    this.description = `tap:${name}`;
    this.vnetHeader = vnetHeader;
    // Linux taps take any checksum/GSO frame on write and produce them on read when TUNSETOFFLOAD says so.
    this.offloads = Object.freeze({ csum: vnetHeader, tso4: vnetHeader, tso6: vnetHeader, ecn: vnetHeader });
  }

  get fd(): number {
    return this.#fd;
  }

  attach(events: PacketBackendEvents): void {
    this.#events = events;
  }

  setReceiving(on: boolean): void {
    this.#wantRead = on;
    this.#update();
  }

  receive(buffers: readonly Uint8Array[]): number {
    if (this.#closed) throw new BackendError(`${this.description}: closed`, 'EBADF');
    try {
      return buffers.length === 1
        ? this.#binding.read(this.#fd, buffers[0]!)
        : this.#binding.preadv2(this.#fd, buffers, -1, 0);
    } catch (e) {
      throw tapError(`read from ${this.name}`, e);
    }
  }

  send(frame: readonly Uint8Array[]): boolean {
    if (this.#closed) throw new BackendError(`${this.description}: closed`, 'EBADF');
    let n: number;
    try {
      n =
        frame.length === 1
          ? this.#binding.write(this.#fd, frame[0]!)
          : this.#binding.pwritev2(this.#fd, frame, -1, 0);
    } catch (e) {
      // EIO: the interface is down; EINVAL: the kernel refused the frame or its header. This frame only.
      throw tapError(`write to ${this.name}`, e);
    }
    if (n >= 0) return true;
    this.#wantWrite = true;
    this.#update();
    return false;
  }

  setOffloads(offloads: Readonly<PacketOffloads>): void {
    if (!this.vnetHeader || this.#closed) return;
    try {
      this.#binding.ioctl(this.#fd, TUNSETOFFLOAD, tunOffloadFlags(offloads));
    } catch (e) {
      throw tapError(`TUNSETOFFLOAD on ${this.name}`, e);
    }
  }

  setLinkUp(up: boolean): void {
    if (this.#closed) return;
    new DataView(this.#int.buffer).setInt32(0, up ? 1 : 0, true);
    try {
      this.#binding.ioctl(this.#fd, TUNSETCARRIER, this.#int);
    } catch {
      // Kernels before 4.15 have no TUNSETCARRIER: the tap's carrier simply stays up.
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#watcher?.close();
    this.#watcher = null;
    this.#events = null;
    closeSync(this.#fd);
    this.#fd = -1;
  }

  #update(): void {
    if (this.#closed) return;
    const mask = (this.#wantRead ? UV_READABLE : 0) | (this.#wantWrite ? UV_WRITABLE : 0);
    if (mask === this.#mask) return;
    this.#mask = mask;
    if (mask === 0) {
      this.#watcher?.stop();
      return;
    }
    this.#watcher ??= this.#binding.createFdWatcher(this.#fd, (status, events) =>
      this.#onReady(status, events),
    );
    this.#watcher.start(mask);
  }

  #onReady(status: number, events: number): void {
    const sink = this.#events;
    if (this.#closed || sink === null) return;
    if (status < 0) {
      this.#wantRead = this.#wantWrite = false;
      this.#update();
      sink.failed(new BackendError(`${this.description}: the fd watcher failed (status ${status})`));
      return;
    }
    if ((events & UV_WRITABLE) !== 0 && this.#wantWrite) {
      this.#wantWrite = false;
      this.#update();
      sink.writable();
    }
    if ((events & UV_READABLE) !== 0 && this.#wantRead) sink.readable();
  }
}
