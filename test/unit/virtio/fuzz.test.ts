/**
 * Seeded fuzzing of both queue formats. Each case builds a queue of random size and features, then for a few
 * rounds the driver adds valid chains, raw random descriptors, random indirect tables, or scribbles over the ring
 * memory, and the device pops, writes, completes (in random order), publishes and toggles notifications, while
 * memory is sometimes remapped (generation change). Checked for every case:
 * - no exception escapes the device side (pop/addUsed/publish/enable/disable/getState/setState);
 * - every device access lies inside mapped memory with the right permission (HeapMemory access log);
 * - no hang: at most 2·size + 1 chains per round without new driver activity;
 * - bounded work: never more than `size` chains in flight, however often the driver re-offers heads / buffer ids
 *   that are still in flight or offers ids outside the ring;
 * - at most one onError call, and pop() returns null once an error is recorded;
 * - cases with only well-formed chains end without error and every chain comes back.
 *
 * `npm test` runs a fixed seed; VDUSE_FUZZ_ITERATIONS and VDUSE_FUZZ_SEED run more / others.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { ACCESS_READ, ACCESS_WRITE } from '../../../src/memory/index.js';
import { MockDriver } from '../../../src/testing/index.js';
import {
  VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE,
  VRING_PACKED_DESC_F_AVAIL,
  VRING_PACKED_DESC_F_USED,
} from '../../../src/uapi/virtio-ring.js';
import { writeStatus, writeToChain } from '../../../src/virtio/index.js';
import type { DescriptorChain } from '../../../src/virtio/index.js';
import { rng } from './helpers.js';

const ITERATIONS = Number(process.env.VDUSE_FUZZ_ITERATIONS ?? 3000);
const SEED = Number(process.env.VDUSE_FUZZ_SEED ?? 0x5eed);

interface CaseStats {
  errors: number;
  kind: string | null;
  pops: number;
  wellFormed: boolean;
}

/** Run driver-side code that may legitimately refuse (ring full, unknown used id after scribbling). */
function driver(fn: () => void): void {
  try {
    fn();
  } catch {
    // The mock driver is not under test here.
  }
}

function fuzzCase(seed: number): CaseStats {
  const r = rng(seed);
  const packed = r.next() < 0.5;
  const size = packed ? r.pick([1, 2, 3, 5, 8, 16, 31, 64, 256]) : r.pick([1, 2, 4, 8, 16, 64, 256]);
  const eventIdx = r.next() < 0.5;
  const indirect = r.next() < 0.6;
  const wellFormed = r.next() < 0.3;
  const drv = new MockDriver({ size, packed, eventIdx, indirect, memorySize: 32 * size + 256 * 1024 });
  const main = drv.memory.regionList[0]!;
  const mainEnd = main.addr + main.size;
  // A read-only region right after the main one, and a write-only one far away.
  drv.memory.addRegion({ addr: mainEnd, size: 4096, access: ACCESS_READ });
  drv.memory.addRegion({ addr: 2 ** 40, size: 4096, access: ACCESS_WRITE });
  const log = drv.memory.trackAccesses(true);
  let errors = 0;
  const q = drv.createDeviceQueue({ onError: () => errors++ });
  const inFlight: DescriptorChain[] = [];
  /** An id the driver may offer: mostly inside the ring, sometimes one in flight, sometimes anything. */
  const id = (): number => {
    const x = r.next();
    if (x < 0.2 && inFlight.length > 0) return r.pick(inFlight).id;
    return x < 0.9 ? r.int(size) : r.int(0x10000);
  };

  const addr = (): number => {
    switch (r.int(10)) {
      case 0:
        return r.int(0x1000); // unmapped low memory
      case 1:
        return mainEnd - r.int(64); // crossing into the read-only region
      case 2:
        return mainEnd + r.int(4200); // read-only region and beyond
      case 3:
        return 2 ** 40 + r.int(4200); // write-only region and beyond
      case 4:
        return 2 ** 53 - r.int(2) + r.int(3) * 2 ** 32; // the 2^53 edge
      case 5:
        return r.int(2 ** 21) * 2 ** 32 + r.int(2 ** 32); // any address below 2^53
      case 6:
        return r.int(2 ** 32);
      default:
        return main.addr + r.int(main.size); // somewhere in the main region (the rings too)
    }
  };
  const len = (): number => r.pick([0, 1, 2, 16, 17, 64, 4096, r.int(512), r.int(2 ** 32), 2 ** 32 - 1]);
  const flags = (): number => {
    let f = 0;
    if (r.next() < 0.5) f |= VRING_DESC_F_NEXT;
    if (r.next() < 0.4) f |= VRING_DESC_F_WRITE;
    if (r.next() < 0.15) f |= VRING_DESC_F_INDIRECT;
    if (r.next() < 0.05) f |= r.int(0x10000);
    return f;
  };

  const addValid = (): void => {
    const nr = r.int(3);
    const nw = (nr === 0 ? 1 : 0) + r.int(3);
    const useIndirect = indirect && r.next() < 0.4;
    if (drv.freeDescriptors < (useIndirect ? 1 : nr + nw)) return;
    drv.addChain({
      readable: Array.from({ length: nr }, () => r.int(40)),
      writable: Array.from({ length: nw }, () => r.int(40)),
      indirect: useIndirect,
    });
  };

  const addRaw = (): void => {
    const n = 1 + r.int(4);
    if (packed) {
      drv.pushRaw(Array.from({ length: n }, () => ({ addr: addr(), len: len(), flags: flags(), id: id() })));
    } else {
      for (let k = 0; k < n; k++) {
        drv.writeDescriptor(r.int(size), { addr: addr(), len: len(), flags: flags(), next: r.int(size + 2) });
      }
      drv.pushAvail(id());
    }
  };

  /** Offer a chain that is in flight again, unchanged (split: its head; packed: a copy of it with its id). */
  const reoffer = (): void => {
    const c = inFlight.length > 0 ? r.pick(inFlight) : null;
    if (c === null) return;
    if (packed) drv.pushRaw([{ addr: main.addr + r.int(main.size - 64), len: 16, flags: 0, id: c.id }]);
    else drv.pushAvail(c.id);
  };

  const addIndirect = (): void => {
    const n = 1 + r.int(6);
    const t = drv.buildIndirectTable(
      Array.from({ length: n }, () => ({ addr: addr(), len: len(), flags: flags(), next: r.int(n + 1) })),
    );
    const tableLen = r.next() < 0.8 ? t.len : len();
    const f = VRING_DESC_F_INDIRECT | (r.next() < 0.1 ? VRING_DESC_F_NEXT : 0);
    if (packed) drv.pushRaw([{ addr: t.addr, len: tableLen, flags: f, id: id() }]);
    else {
      const head = r.int(size);
      drv.writeDescriptor(head, { addr: t.addr, len: tableLen, flags: f, next: 0 });
      drv.pushAvail(head);
    }
  };

  const scribble = (): void => {
    const { descAddr, driverAddr, deviceAddr } = drv.config;
    const target = r.pick([descAddr, driverAddr, deviceAddr]);
    const area = target === descAddr ? 16 * size : packed ? 4 : 8 + 8 * size;
    const bytes = drv.memory.hostView(target, Math.min(area, mainEnd - target));
    for (let k = 1 + r.int(8); k > 0; k--) bytes[r.int(bytes.length)] = r.int(256);
    if (packed && r.next() < 0.5) {
      // Make a random slot look available in the current or the other lap.
      const slot = r.int(size);
      const d = drv.readDescriptor(slot);
      const w = r.int(2);
      drv.writeDescriptor(slot, {
        ...d,
        flags: (flags() & 0x7f) | (w << VRING_PACKED_DESC_F_AVAIL) | ((w ^ 1) << VRING_PACKED_DESC_F_USED),
      });
    }
    if (!packed && r.next() < 0.3) drv.setAvailIdx(r.int(0x10000));
  };

  let pops = 0;
  const rounds = 1 + r.int(6);
  for (let round = 0; round < rounds; round++) {
    // Driver.
    const adds = 1 + r.int(Math.min(size, 8));
    for (let k = 0; k < adds; k++) {
      // Mostly valid chains even in hostile cases, so that damage hits a queue with history.
      const mode = wellFormed || r.next() < 0.7 ? 0 : 1 + r.int(4);
      driver(() => [addValid, addRaw, addIndirect, scribble, reoffer][mode]!());
    }
    driver(() => drv.kick());
    if (r.next() < 0.1) drv.memory.remapRegion(main.addr);

    // Device.
    let popped = 0;
    for (let c = q.pop(); c !== null; c = q.pop()) {
      popped++;
      assert.ok(popped <= 2 * size + 1, `seed ${seed}: more than 2·size+1 chains without driver activity`);
      assert.ok(q.inFlight <= size, `seed ${seed}: ${q.inFlight} chains in flight on a ring of ${size}`);
      assert.ok(c.readableBytes + c.writableBytes <= 2 ** 32);
      for (const v of c.readable) assert.ok(v.length > 0);
      for (const v of c.writable) assert.ok(v.length > 0);
      if (r.next() < 0.7) {
        writeToChain(c, r.int(64), new Uint8Array(r.int(64)).fill(0xa5));
        writeStatus(c, 0);
      }
      inFlight.push(c);
    }
    pops += popped;
    if (q.error !== null) assert.equal(q.pop(), null);
    // Complete a random subset, in random order.
    for (let k = r.int(inFlight.length + 1); k > 0; k--) {
      const [c] = inFlight.splice(r.int(inFlight.length), 1);
      q.addUsed(c!, r.next() < 0.8 ? c!.writableBytes : r.int(2 ** 32));
    }
    if (r.next() < 0.3) q.disableNotification();
    if (r.next() < 0.3) q.enableNotification();
    q.publish();
    if (r.next() < 0.05 && (inFlight.length === 0 || !wellFormed)) {
      q.setState(q.getState()); // like a reconnect: chains in flight are forgotten
      inFlight.length = 0;
    }
    driver(() => drv.usedEntries());
  }

  // Every device access stayed inside memory with the right permission.
  drv.memory.trackAccesses(false);
  for (const a of log) {
    assert.ok(
      drv.memory.isMapped(a.addr, a.len, a.access),
      `seed ${seed}: access ${JSON.stringify(a)} outside memory`,
    );
  }
  assert.ok(errors <= 1, `seed ${seed}: onError called ${errors} times`);
  if (wellFormed) {
    assert.equal(q.error, null, `seed ${seed}: ${q.error?.message}`);
    for (const c of inFlight) q.addUsed(c, 0);
    q.publish();
    drv.usedEntries();
    assert.equal(drv.inFlight, 0, `seed ${seed}: chains lost`);
  }
  return { errors, kind: q.error?.kind ?? null, pops, wellFormed };
}

describe('virtqueue fuzz', () => {
  it(`${ITERATIONS} random and malicious rings (seed ${SEED})`, () => {
    const kinds = new Map<string, number>();
    let failed = 0;
    let pops = 0;
    let wellFormed = 0;
    for (let i = 0; i < ITERATIONS; i++) {
      const seed = (SEED + i * 0x9e3779b1) >>> 0;
      let stats: CaseStats;
      try {
        stats = fuzzCase(seed);
      } catch (e) {
        // Re-throw with the seed so the case can be replayed (VDUSE_FUZZ_SEED=... VDUSE_FUZZ_ITERATIONS=1).
        if (e instanceof assert.AssertionError) throw e;
        throw new Error(`seed ${seed} (case ${i}): ${(e as Error).stack ?? String(e)}`);
      }
      failed += stats.errors;
      if (stats.kind !== null) kinds.set(stats.kind, (kinds.get(stats.kind) ?? 0) + 1);
      pops += stats.pops;
      if (stats.wellFormed) wellFormed++;
    }
    // The generator must reach both outcomes and most error kinds, or the test proves little.
    assert.ok(failed > ITERATIONS / 10, `too few broken rings (${failed})`);
    assert.ok(pops > ITERATIONS, `too few chains popped (${pops})`);
    assert.ok(wellFormed > 0);
    if (ITERATIONS >= 1000) {
      assert.ok(kinds.size >= 8, `error kinds reached: ${[...kinds.keys()].join(', ')}`);
      for (const kind of ['inflight-id', 'buffer-id', 'descriptor-index'])
        assert.ok(kinds.has(kind), `no '${kind}' error among: ${[...kinds.keys()].join(', ')}`);
    }
    if (process.env.VDUSE_FUZZ_VERBOSE) console.log(Object.fromEntries(kinds), { failed, pops, wellFormed });
  });
});
