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
import { BlkClient } from '../../../src/testing/vhost-vdpa/blk.js';
import type { MockDriver } from '../../../src/testing/mock-driver.js';
import { GatedBackend } from './gated.js';

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
  const { logger, lines } = captureLogger();
  const device = new VirtioBlkDevice({
    backend: storage,
    numQueues: options.numQueues ?? 2,
    queueSize: options.queueSize ?? 64,
    serial: 'vu-test',
    logger,
  });
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

/** What the VMM keeps after its first back-end died with writes in flight. */
export interface DeadBackend {
  first: Rig;
  gated: GatedBackend;
  mem: SharedGuestMemory;
  inflight: Awaited<ReturnType<VhostUserFrontend['getInflight']>>;
  drivers: MockDriver[];
}

/**
 * A back-end over `storage` (writes held by a GatedBackend) takes six 4 KiB writes (patterns seed..seed+5, four
 * on ring 0, two on ring 1, at sectors 0, 8, 16, ...) and dies with all six in flight, as a SIGKILLed daemon: the
 * VMM keeps its rings, memory and the inflight region for the next back-end.
 */
export async function dieWithSixWrites(storage: BlockBackend, seed: number): Promise<DeadBackend> {
  const gated = new GatedBackend(storage);
  const first = makeBackend({ storage: gated, drainMs: 50 });
  const mem = guestMemory();
  const vmm = connect(first.backend);
  await vmm.negotiate();
  await vmm.setMemory(mem);
  const inflight = await vmm.getInflight(2, 64);
  await vmm.setInflight(inflight.fd, inflight.payload);
  const queues = await vmm.setupQueues({ count: 2, size: 64 });
  const drivers = queues.map((q) => q.driver);
  await waitFor(() => first.backend.servingRings.length === 2, 'rings served');
  const blk = new BlkClient(queues, { watch: false });
  for (let k = 0; k < 6; k++) {
    blk.write(k * 8, pattern(4096, k + seed), { queue: k < 4 ? 0 : 1 }).catch(() => undefined);
  }
  await waitFor(() => gated.pending.length === 6, 'six writes in the backend');
  blk.close();
  vmm.close();
  await waitFor(() => !first.backend.connected, 'the first back-end is gone');
  return { first, gated, mem, inflight, drivers };
}

/** The ids each of `drivers`' rings completes, once `total` have come back. */
export async function usedIds(drivers: MockDriver[], total: number, ms: number): Promise<number[][]> {
  const used = drivers.map(() => [] as number[]);
  await waitFor(
    () => {
      drivers.forEach((d, i) => used[i]!.push(...d.usedEntries().map((u) => u.id)));
      return used.reduce((s, u) => s + u.length, 0) === total;
    },
    `${total} completions`,
    ms,
  );
  return used;
}

/**
 * The VMM of `dead` reconnects to `backend` as QEMU does after a crash (same memory and inflight region, the
 * rings' bases at the used index the guest saw: 0), and waits until the six writes were resubmitted and have
 * completed. Returns the front-end (the caller closes it) and the ids each ring completed.
 */
export async function resumeOn(
  backend: VhostUserBackend,
  dead: DeadBackend,
  ms: number,
): Promise<{ vmm: VhostUserFrontend; used: number[][] }> {
  const started: number[] = [];
  backend.on('started', (_rings, resubmitted) => started.push(resubmitted));
  const vmm = connect(backend);
  try {
    await vmm.negotiate();
    await vmm.setMemory(dead.mem);
    await vmm.setInflight(dead.inflight.fd, dead.inflight.payload);
    await vmm.setupQueues({ count: 2, size: 64, drivers: dead.drivers, bases: [0, 0] });
    await waitFor(() => started.reduce((s, n) => s + n, 0) >= 6, 'resubmission', ms);
    return { vmm, used: await usedIds(dead.drivers, 6, ms) };
  } catch (err) {
    vmm.close();
    throw err;
  }
}
