// Shared set-up of the vhost-user tests: a VirtioBlkDevice behind a VhostUserBackend on one end of a
// socketpair, the userspace front-end (src/testing/vhost-user) on the other, guest RAM in a memfd.
import type { BlockBackend } from '../../../src/backends/backend.js';
import { MemoryBackend } from '../../../src/backends/memory-backend.js';
import { VirtioBlkDevice } from '../../../src/devices/blk/device.js';
import { createLogger, type Logger } from '../../../src/common/logger.js';
import { loadNativeBinding } from '../../../src/sys/native.js';
import { VhostUserBackend } from '../../../src/transports/vhost-user/index.js';
import { VhostUserFrontend } from '../../../src/testing/vhost-user/index.js';
import { SharedGuestMemory } from '../../../src/testing/vhost-vdpa/shared-memory.js';

export const sys = loadNativeBinding();
export const GUEST_BASE = 0x100000;

/** Log lines, kept for assertions. */
export function captureLogger(): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  return { logger: createLogger({ level: 'debug', write: (l) => void lines.push(l.trimEnd()) }), lines };
}

export interface Rig {
  backend: VhostUserBackend;
  device: VirtioBlkDevice;
  storage: BlockBackend;
  lines: string[];
}

export function makeBackend(
  options: { storage?: BlockBackend; numQueues?: number; queueSize?: number; drainMs?: number } = {},
): Rig {
  const storage = options.storage ?? new MemoryBackend({ size: 8 << 20 });
  const device = new VirtioBlkDevice({
    backend: storage,
    numQueues: options.numQueues ?? 2,
    queueSize: options.queueSize ?? 64,
    serial: 'vu-test',
  });
  const { logger, lines } = captureLogger();
  const backend = new VhostUserBackend({ binding: sys, device, logger, drainMs: options.drainMs ?? 2000 });
  return { backend, device, storage, lines };
}

/** Connect a new front-end to `backend` over a socketpair. */
export function connect(backend: VhostUserBackend): VhostUserFrontend {
  const [ours, theirs] = sys.socketPair();
  backend.attach(theirs);
  return new VhostUserFrontend(sys, ours);
}

export function guestMemory(size = 4 << 20): SharedGuestMemory {
  return new SharedGuestMemory(sys, { size, iova: GUEST_BASE, tag: 'vu-test' });
}

export function pattern(len: number, seed: number): Uint8Array {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = (i * 31 + seed * 7) & 0xff;
  return b;
}

export async function waitFor(cond: () => boolean, what: string, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}
