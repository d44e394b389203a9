// Issue #14.1 with the real addon: a backend read still running in the thread pool when the device is reset or
// its IOTLB mapping is dropped must not complete into a mapping created after that (a canary), and the old
// region is unmapped once the read has settled. The read waits on a FIFO, so the test decides when it lands.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { NullBackend } from '../../../src/backends/null-backend.js';
import { nullLogger } from '../../../src/common/logger.js';
import { VirtioBlkDevice } from '../../../src/devices/blk/device.js';
import { IotlbMemory, type IotlbSource } from '../../../src/memory/iotlb-memory.js';
import {
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  MAP_SHARED,
  MFD_CLOEXEC,
  PROT_READ,
  PROT_WRITE,
  type SysBinding,
} from '../../../src/sys/binding.js';
import { loadNativeBinding } from '../../../src/sys/native.js';
import { QueueSet } from '../../../src/transports/engine/queue-set.js';

let sys: SysBinding | null = null;
try {
  sys = loadNativeBinding();
} catch {
  sys = null;
}
const skip = sys === null ? 'the native addon is not built' : false;

// VERSION_1 | ACCESS_PLATFORM
const VERSION_1 = (1n << 32n) | (1n << 33n);
const BASE = 0x100000;
const SIZE = 1 << 20;
const DESC = BASE;
const AVAIL = BASE + 0x100;
const USED = BASE + 0x200;
const HDR = BASE + 0x1000;
const DATA = BASE + 0x2000;
const STATUS = BASE + 0x3000;
const LEN = 4096;

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vduse-unmap-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A disk whose reads wait in the thread pool until the test writes their bytes into a FIFO. */
class FifoBackend extends NullBackend {
  readonly fd: number;
  readonly reads: (readonly Uint8Array[])[] = [];
  constructor(fifo: string) {
    super({ size: 1 << 20 });
    // O_RDWR on a FIFO does not wait for a writer; a read blocks (in the pool) until data comes.
    this.fd = fs.openSync(fifo, fs.constants.O_RDWR);
  }
  override read(_offset: number, buffers: readonly Uint8Array[]): Promise<void> {
    this.reads.push([...buffers]); // the request reuses its array
    return new Promise((resolve, reject) =>
      fs.readv(this.fd, buffers as Uint8Array[], (err) => (err === null ? resolve() : reject(err))),
    );
  }
}

function setup() {
  const b = sys!;
  const guestFd = b.memfdCreate('vduse-ts-guest', MFD_CLOEXEC);
  fs.ftruncateSync(guestFd, SIZE);
  // The driver's own view of guest memory (a separate mapping of the same pages).
  const guest = new Uint8Array(b.mmap(guestFd, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, 0));
  const at = (iova: number): number => iova - BASE;
  const dv = new DataView(guest.buffer);
  // A split ring of 4 with one blk read: header, 4 KiB data, status.
  const desc = (i: number, addr: number, len: number, flags: number, next: number): void => {
    const o = at(DESC) + i * 16;
    dv.setUint32(o, addr, true);
    dv.setUint32(o + 4, 0, true);
    dv.setUint32(o + 8, len, true);
    dv.setUint16(o + 12, flags, true);
    dv.setUint16(o + 14, next, true);
  };
  desc(0, HDR, 16, 1, 1);
  desc(1, DATA, LEN, 1 | 2, 2);
  desc(2, STATUS, 1, 2, 0);
  dv.setUint32(at(HDR), 0, true); // VIRTIO_BLK_T_IN, sector 0
  guest[at(STATUS)] = 0xff;
  dv.setUint16(at(AVAIL) + 4, 0, true); // ring[0] = head 0
  dv.setUint16(at(AVAIL) + 2, 1, true); // idx = 1
  const lookups: number[] = [];
  const source: IotlbSource = {
    lookup(iova) {
      lookups.push(iova);
      if (iova < BASE || iova >= BASE + SIZE) return null;
      return {
        entry: { start: BASE, last: BASE + SIZE - 1, offset: 0, perm: 3 },
        fd: fs.openSync(`/proc/self/fd/${guestFd}`, 'r+'),
      };
    },
  };
  const memory = new IotlbMemory(b, source);
  const fifo = path.join(dir, `fifo-${lookups.length}-${Math.random().toString(16).slice(2)}`);
  assert.equal(spawnSync('mkfifo', [fifo]).status, 0, 'mkfifo');
  const backend = new FifoBackend(fifo);
  const device = new VirtioBlkDevice({ backend, numQueues: 1, queueSize: 4 });
  let signals = 0;
  const resets: Error[] = [];
  const set = new QueueSet({
    binding: b,
    device,
    transport: {
      memory,
      openKick: () => b.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC),
      signal: () => void signals++,
      inflightLog: () => undefined,
    },
    numQueues: 1,
    logger: nullLogger,
    onNeedsReset: (reason) => resets.push(reason),
  });
  device.bind({ configChanged: () => undefined, needsReset: (r) => set.fail(r) });
  assert.ok(device.negotiate(VERSION_1));
  const start = (): number =>
    set.start({
      features: VERSION_1,
      packed: false,
      eventIdx: false,
      indirect: false,
      recover: false,
      queues: [
        { index: 0, size: 4, descAddr: DESC, driverAddr: AVAIL, deviceAddr: USED, state: { nextAvail: 0 } },
      ],
    });
  /** Fresh mappings of other memory, filled with 0xaa: the kernel places them where a hole is. */
  const canaries: Uint8Array[] = [];
  const mapCanaries = (): void => {
    for (let k = 0; k < 8; k++) {
      const fd = b.memfdCreate('vduse-ts-canary', MFD_CLOEXEC);
      fs.ftruncateSync(fd, SIZE);
      const c = new Uint8Array(b.mmap(fd, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, 0));
      fs.closeSync(fd);
      c.fill(0xaa);
      canaries.push(c);
    }
  };
  let completed = false;
  const complete = (): void => {
    completed = true;
    fs.writeSync(backend.fd, new Uint8Array(LEN).fill(0x5a));
  };
  const landed = (): boolean => guest.subarray(at(DATA), at(DATA) + LEN).every((x) => x === 0x5a);
  const canariesIntact = (): boolean => canaries.every((c) => c.every((x) => x === 0xaa));
  const cleanup = async (): Promise<void> => {
    // a failed assertion before the read was let through: let it finish, or nothing settles
    if (!completed && backend.reads.length > 0) complete();
    await set.close();
    for (const c of canaries) b.munmap(c.buffer as ArrayBuffer);
    b.munmap(guest.buffer as ArrayBuffer);
    fs.closeSync(guestFd);
    fs.closeSync(backend.fd);
  };
  return {
    set,
    memory,
    backend,
    device,
    guest,
    dv,
    at,
    start,
    mapCanaries,
    complete,
    landed,
    canariesIntact,
    cleanup,
    signals: () => signals,
    resets,
  };
}

const until = async (what: string, cond: () => boolean): Promise<void> => {
  const deadline = Date.now() + 10_000;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
};

describe(
  'guest memory outlives the requests in flight (real mmap, a read waiting in the thread pool)',
  { skip },
  () => {
    it('reset while a read is in flight: the read lands in the old mapping, never in a canary; unmapped after it settles', async () => {
      const t = setup();
      try {
        t.start();
        await until('the read in the backend', () => t.backend.reads.length === 1);
        assert.equal(t.memory.pins, 1, 'the popped chain pins its generation');
        t.set.stop(true);
        const mapped = t.memory.mappedRegions;
        const retired = t.memory.retiredRegions;
        t.mapCanaries();
        t.complete();
        await t.set.settled;
        assert.ok(t.canariesIntact(), 'no canary mapping was written');
        assert.ok(t.landed(), 'the read completed into the memory it was given');
        assert.equal(mapped, 0, 'no new views after the reset');
        assert.equal(retired, 1, 'the region waited for the read');
        assert.equal(t.memory.retiredRegions, 0, 'the old region is unmapped once the read has settled');
        assert.equal(t.memory.pins, 0);
        assert.equal(t.backend.reads[0]![0]!.byteLength, 0, "the request's views are detached by the munmap");
      } finally {
        await t.cleanup();
      }
    });

    it('UPDATE_IOTLB while a read is in flight: the request completes into its mapping, then the region goes', async () => {
      const t = setup();
      try {
        t.start();
        await until('the read in the backend', () => t.backend.reads.length === 1);
        t.set.invalidate(0, Number.MAX_SAFE_INTEGER);
        const mapped = t.memory.mappedRegions;
        const retired = t.memory.retiredRegions;
        t.mapCanaries();
        t.complete();
        await until('the request settled', () => t.device.inFlight === 0);
        assert.ok(t.canariesIntact(), 'no canary mapping was written');
        assert.ok(t.landed(), 'the read completed into the memory it was given');
        assert.equal(mapped, 0);
        assert.equal(retired, 1, 'the region waited for the request');
        await until('the used entry', () => t.dv.getUint16(t.at(USED) + 2, true) === 1);
        assert.equal(t.guest[t.at(STATUS)], 0, 'VIRTIO_BLK_S_OK');
        assert.equal(t.dv.getUint32(t.at(USED) + 4, true), 0, 'used id');
        assert.equal(t.dv.getUint32(t.at(USED) + 8, true), LEN + 1, 'used len');
        assert.equal(t.memory.retiredRegions, 0, 'unmapped once the request was given back');
        assert.equal(t.memory.pins, 0);
        assert.equal(t.resets.length, 0);
      } finally {
        await t.cleanup();
      }
    });
  },
);
