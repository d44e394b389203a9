/**
 * Seeded fuzz test: random well-formed and malformed virtio-blk requests, several in flight on two queues, in
 * every descriptor layout and both ring formats. Checks that the device never throws, answers every chain,
 * gives each request the status an independent model of the spec predicts, returns the data a shadow copy
 * predicts, and that the backend never sees an access outside the disk or misaligned.
 *
 * A second case plays a hostile driver: valid requests mixed with chains re-offered while in flight and ids
 * outside the ring (or a ring larger than the device's maximum), with and without polling, over a state log of
 * the device's maximum size. Checked: nothing throws, the backend never holds more requests than the ring has
 * entries, one ring error at most, and never a device fault (everything the driver did is a ring error).
 *
 * VDUSE_FUZZ_ITERATIONS (default 400) sets the number of requests per ring format; VDUSE_FUZZ_SEED the seed.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { MemoryBackend } from '../../../src/backends/memory-backend.js';
import type { MockChain } from '../../../src/testing/mock-driver.js';
import {
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_GET_LIFETIME,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_SECURE_ERASE,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from '../../../src/uapi/virtio-blk.js';
import { VirtqueueError } from '../../../src/virtio/virtqueue.js';
import {
  BlkHarness,
  TestBackend,
  pushPackedRequest,
  queueLog,
  segments,
  type Layout,
  type RequestSpec,
} from './harness.js';

const ITERATIONS = Number(process.env.VDUSE_FUZZ_ITERATIONS ?? 400);
const SEED = Number(process.env.VDUSE_FUZZ_SEED ?? 0x5eed);

/** mulberry32: small, seedable, good enough for test inputs. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Limits {
  capacity: number;
  lbs: number;
  readOnly: boolean;
  segMax: number;
  maxSeg: Record<number, number>;
  maxSectors: Record<number, number>;
}

interface Planned {
  spec: RequestSpec | null;
  /** A raw chain (no model): only generic checks. */
  raw: { readable: Uint8Array[]; writable: number[] } | null;
  status: number;
  len: number;
  /** Byte range this request changes (OK writes, discards...), and how. */
  mutation: { offset: number; data: Uint8Array | null; length: number } | null;
  /** Byte range an OK read returns. */
  read: { offset: number; length: number } | null;
}

const TYPES = [
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_BLK_T_SECURE_ERASE,
  VIRTIO_BLK_T_GET_LIFETIME,
];
const LAYOUTS: Layout[] = ['separate', 'merged', 'fragmented', 'indirect'];

function dataViews(layout: Layout, length: number): number {
  return layout === 'fragmented' ? Math.ceil(length / 512) : 1;
}

/** The status the spec (and our limits) give a well-formed-chain request. */
function model(spec: RequestSpec, limits: Limits): Omit<Planned, 'spec' | 'raw'> {
  const fail = (status: number) => ({ status, len: 1, mutation: null, read: null });
  const sector = BigInt(spec.sector ?? 0);
  const out = spec.out ?? new Uint8Array(0);
  const inLength = spec.inLength ?? 0;
  const layout = spec.layout ?? 'separate';
  switch (spec.type) {
    case VIRTIO_BLK_T_IN:
    case VIRTIO_BLK_T_OUT: {
      const write = spec.type === VIRTIO_BLK_T_OUT;
      if (write && limits.readOnly) return fail(VIRTIO_BLK_S_IOERR);
      const length = write ? out.length : inLength;
      const offset = sector * 512n;
      if (offset % BigInt(limits.lbs) !== 0n || length % limits.lbs !== 0) return fail(VIRTIO_BLK_S_IOERR);
      if (offset + BigInt(length) > BigInt(limits.capacity)) return fail(VIRTIO_BLK_S_IOERR);
      if (length === 0) return { status: VIRTIO_BLK_S_OK, len: 1, mutation: null, read: null };
      if (dataViews(layout, length) > limits.segMax) return fail(VIRTIO_BLK_S_IOERR);
      const at = Number(offset);
      return write
        ? { status: 0, len: 1, mutation: { offset: at, data: out, length }, read: null }
        : { status: 0, len: length + 1, mutation: null, read: { offset: at, length } };
    }
    case VIRTIO_BLK_T_FLUSH:
      return fail(VIRTIO_BLK_S_OK);
    case VIRTIO_BLK_T_GET_ID:
      return { status: 0, len: Math.min(20, inLength) + 1, mutation: null, read: null };
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES:
    case VIRTIO_BLK_T_SECURE_ERASE: {
      if (limits.readOnly) return fail(VIRTIO_BLK_S_IOERR);
      if (out.length === 0 || out.length % 16 !== 0) return fail(VIRTIO_BLK_S_IOERR);
      const count = out.length / 16;
      if (count > limits.maxSeg[spec.type]!) return fail(VIRTIO_BLK_S_UNSUPP);
      const view = new DataView(out.buffer, out.byteOffset, out.length);
      let low = Infinity;
      let high = 0;
      for (let i = 0; i < count; i++) {
        const start = view.getBigUint64(16 * i, true);
        const sectors = view.getUint32(16 * i + 8, true);
        const flags = view.getUint32(16 * i + 12, true);
        const allowed = spec.type === VIRTIO_BLK_T_WRITE_ZEROES ? 1 : 0;
        if ((flags & ~allowed) !== 0) return fail(VIRTIO_BLK_S_UNSUPP);
        if (sectors > limits.maxSectors[spec.type]!) return fail(VIRTIO_BLK_S_IOERR);
        if ((start + BigInt(sectors)) * 512n > BigInt(limits.capacity)) return fail(VIRTIO_BLK_S_IOERR);
        if ((Number(start) * 512) % limits.lbs !== 0 || (sectors * 512) % limits.lbs !== 0) {
          return fail(VIRTIO_BLK_S_IOERR);
        }
        if (sectors > 0) {
          low = Math.min(low, Number(start) * 512);
          high = Math.max(high, (Number(start) + sectors) * 512);
        }
      }
      // Zeroed ranges: model them as one zeroing mutation per range (applied below by the caller).
      return {
        status: 0,
        len: 1,
        mutation: low < high ? { offset: low, data: null, length: high - low } : null,
        read: null,
      };
    }
    default:
      return fail(VIRTIO_BLK_S_UNSUPP);
  }
}

function plan(random: () => number, limits: Limits): Planned {
  const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)]!;
  const int = (n: number) => Math.floor(random() * n);
  if (random() < 0.08) {
    // Raw chaos: random buffers, maybe no header, maybe no status byte.
    const readable = Array.from({ length: int(4) }, () => {
      const bytes = new Uint8Array(int(40));
      for (let i = 0; i < bytes.length; i++) bytes[i] = int(256);
      if (bytes.length >= 4 && random() < 0.5) bytes[0] = pick(TYPES);
      return bytes;
    });
    const writable = Array.from({ length: int(3) }, () => int(4));
    if (readable.length === 0 && writable.length === 0) readable.push(new Uint8Array(1 + int(20)));
    return { spec: null, raw: { readable, writable }, status: -2, len: -2, mutation: null, read: null };
  }
  const capacitySectors = limits.capacity / 512;
  const type = random() < 0.05 ? int(2 ** 32) : pick(TYPES);
  let layout = pick(LAYOUTS);
  const sectorChoice = random();
  let sector: bigint;
  if (sectorChoice < 0.7) sector = BigInt(int(capacitySectors / 8) * 8);
  else if (sectorChoice < 0.8) sector = BigInt(capacitySectors - int(16));
  else if (sectorChoice < 0.9) sector = BigInt(int(capacitySectors));
  else sector = pick([2n ** 63n, 2n ** 64n - 1n, BigInt(capacitySectors), 2n ** 44n]);
  const lengthChoice = random();
  let length: number;
  if (lengthChoice < 0.7) length = (1 + int(8)) * limits.lbs;
  else if (lengthChoice < 0.85) length = int(9) * 512;
  else length = int(3000);
  // Keep fragmented chains short enough for the ring (one descriptor per 512 bytes).
  if (layout === 'fragmented' && length > 4096) layout = 'separate';
  const spec: RequestSpec = { type, sector, layout };
  if (type === VIRTIO_BLK_T_OUT) {
    const data = new Uint8Array(length);
    for (let i = 0; i < length; i += 64) data[i] = int(256);
    spec.out = data;
  } else if (type === VIRTIO_BLK_T_IN || type === VIRTIO_BLK_T_GET_ID || random() < 0.3) {
    spec.inLength = type === VIRTIO_BLK_T_GET_ID ? int(30) : length;
  }
  if (
    type === VIRTIO_BLK_T_DISCARD ||
    type === VIRTIO_BLK_T_WRITE_ZEROES ||
    type === VIRTIO_BLK_T_SECURE_ERASE
  ) {
    const list = Array.from({ length: int(5) }, () => ({
      sector: random() < 0.9 ? int(capacitySectors) & ~7 : int(capacitySectors + 64),
      sectors: random() < 0.9 ? (1 + int(64)) * (limits.lbs / 512) : int(1024),
      flags:
        random() < 0.8 ? (random() < 0.5 ? 1 : 0) & (type === VIRTIO_BLK_T_WRITE_ZEROES ? 1 : 0) : int(4),
    }));
    spec.out = segments(...list);
    if (random() < 0.05) spec.out = spec.out.subarray(0, int(spec.out.length + 1));
  }
  return { spec, raw: null, ...model(spec, limits) };
}

function overlaps(a: { offset: number; length: number }, b: { offset: number; length: number }): boolean {
  return a.offset < b.offset + b.length && b.offset < a.offset + a.length;
}

for (const packed of [false, true]) {
  describe(`virtio-blk fuzz (${packed ? 'packed' : 'split'} ring)`, () => {
    it(`${ITERATIONS} random requests, seed ${SEED}`, async (t) => {
      const seen = new Map<string, number>();
      const count = (key: string) => seen.set(key, (seen.get(key) ?? 0) + 1);
      const random = rng(SEED + (packed ? 1 : 0));
      for (const lbs of [512, 4096]) {
        const capacity = 1024 * 1024;
        const readOnly = false;
        const backend = new TestBackend(new MemoryBackend({ size: capacity }), {
          alignment: lbs,
          capabilities: { flush: true },
        });
        const harness = new BlkHarness({
          backend,
          packed,
          numQueues: 2,
          queueSize: 256,
          logicalBlockSize: lbs,
          segMax: 6,
          maxDiscardSeg: 3,
          maxWriteZeroesSeg: 2,
          maxSecureEraseSeg: 1,
          maxDiscardSectors: 256,
          maxWriteZeroesSectors: 512,
          maxSecureEraseSectors: 128,
        });
        const limits: Limits = {
          capacity,
          lbs,
          readOnly,
          segMax: 6,
          maxSeg: {
            [VIRTIO_BLK_T_DISCARD]: 3,
            [VIRTIO_BLK_T_WRITE_ZEROES]: 2,
            [VIRTIO_BLK_T_SECURE_ERASE]: 1,
          },
          maxSectors: {
            [VIRTIO_BLK_T_DISCARD]: 256,
            [VIRTIO_BLK_T_WRITE_ZEROES]: 512,
            [VIRTIO_BLK_T_SECURE_ERASE]: 128,
          },
        };
        backend.delay = () => (random() < 0.3 ? 1 : 0);
        const shadow = new Uint8Array(capacity);
        let done = 0;
        while (done < ITERATIONS / 2) {
          // One batch: several requests in flight; at most one changes data, and no read in the batch overlaps it.
          const batch: { planned: Planned; chain: MockChain; queue: number }[] = [];
          let mutation: Planned['mutation'] = null;
          const size = 1 + Math.floor(random() * 8);
          for (let k = 0; k < size; k++) {
            const planned = plan(random, limits);
            if (planned.mutation !== null) {
              if (
                mutation !== null ||
                batch.some((b) => b.planned.read && overlaps(b.planned.read, planned.mutation!))
              ) {
                continue;
              }
              mutation = planned.mutation;
            }
            if (planned.read !== null && mutation !== null && overlaps(planned.read, mutation)) continue;
            const queue = Math.floor(random() * 2);
            const chain =
              planned.raw !== null
                ? harness.drivers[queue]!.addChain({
                    readable: planned.raw.readable,
                    writable: planned.raw.writable,
                  })
                : harness.add(queue, planned.spec!);
            batch.push({ planned, chain, queue });
          }
          harness.kick(0);
          harness.kick(1);
          for (const { planned, chain } of batch) {
            const result = await harness.wait(chain);
            const what = `request ${done} (${JSON.stringify(planned.spec, (_k, v: unknown) =>
              typeof v === 'bigint' ? v.toString() : v instanceof Uint8Array ? `<${v.length} bytes>` : v,
            )})`;
            count(planned.raw !== null ? 'raw' : `status ${result.status}`);
            if (planned.read !== null) count('read checked');
            if (planned.raw !== null) {
              const writableTotal = planned.raw.writable.reduce((s, n) => s + n, 0);
              if (writableTotal === 0) assert.equal(result.len, 0, what);
              else {
                assert.ok([0, 1, 2].includes(result.status), `${what}: status ${result.status}`);
                assert.ok(result.len >= 1 && result.len <= writableTotal, `${what}: len ${result.len}`);
              }
            } else {
              assert.equal(result.status, planned.status, `${what}: status`);
              assert.equal(result.len, planned.len, `${what}: used length`);
              if (planned.read !== null) {
                const { offset, length } = planned.read;
                assert.deepEqual(
                  result.writable.subarray(0, length),
                  shadow.subarray(offset, offset + length),
                  what,
                );
              }
            }
            done++;
          }
          // Apply the batch's change to the shadow copy.
          for (const { planned } of batch) {
            const change = planned.mutation;
            if (change === null) continue;
            if (change.data !== null) shadow.set(change.data, change.offset);
            else {
              // Discard / write-zeroes / secure-erase: zero each of its ranges.
              const out = planned.spec!.out!;
              const view = new DataView(out.buffer, out.byteOffset, out.length);
              for (let i = 0; i + 16 <= out.length; i += 16) {
                const start = Number(view.getBigUint64(i, true)) * 512;
                shadow.fill(0, start, start + view.getUint32(i + 8, true) * 512);
              }
            }
          }
          assert.deepEqual(backend.violations, []);
        }
        for (const driver of harness.drivers) assert.deepEqual(driver.errors, [], 'no ring errors');
        // A last full read-back against the shadow copy.
        backend.delay = null;
        for (let offset = 0; offset < capacity; offset += 64 * 1024) {
          const data = await harness.read(offset / 512, 64 * 1024);
          assert.ok(
            data.every((b, i) => b === shadow[offset + i]),
            `data at ${offset} matches the model`,
          );
        }
        assert.ok(
          shadow.some((b) => b !== 0),
          'some data was written',
        );
      }
      t.diagnostic(JSON.stringify(Object.fromEntries(seen)));
      // The mix must cover every outcome, or the test proves little.
      if (ITERATIONS >= 200) {
        for (const key of ['status 0', 'status 1', 'status 2', 'raw', 'read checked']) {
          assert.ok((seen.get(key) ?? 0) > 0, `no '${key}' among the requests`);
        }
      }
    });
  });
}

for (const packed of [false, true]) {
  describe(`virtio-blk fuzz, hostile driver (${packed ? 'packed' : 'split'} ring)`, () => {
    it(`${Math.max(20, ITERATIONS / 10)} runs of re-offered in-flight chains and out-of-range ids`, async () => {
      const random = rng(SEED + 7 + (packed ? 1 : 0));
      const int = (n: number) => Math.floor(random() * n);
      const outcomes = new Map<string, number>();
      for (let run = 0; run < Math.max(20, ITERATIONS / 10); run++) {
        const queueSize = [8, 16, 64][int(3)]!;
        const ringSize = random() < 0.15 ? queueSize * 2 : queueSize;
        const backend = new TestBackend(new MemoryBackend({ size: 1024 * 1024 }));
        backend.delay = () => (random() < 0.5 ? 1 : 0);
        const log = queueLog(queueSize);
        const harness = new BlkHarness({
          backend,
          packed,
          queueSize,
          ringSize,
          pollUs: random() < 0.5 ? 0 : 500,
          inflight: () => log,
        });
        const drv = harness.drivers[0]!;
        const inFlight: MockChain[] = [];
        let most = 0;
        for (let step = 0; step < 40; step++) {
          const what = random();
          try {
            if (what < 0.5) {
              inFlight.push(harness.add(0, { type: VIRTIO_BLK_T_IN, sector: int(2048), inLength: 512 }));
            } else if (what < 0.75 && inFlight.length > 0) {
              const id = inFlight[int(inFlight.length)]!.id;
              if (packed) pushPackedRequest(drv, id);
              else drv.pushAvail(id);
            } else if (what < 0.85) {
              const id = ringSize + int(0x10000 - ringSize);
              if (packed) pushPackedRequest(drv, id);
              else drv.pushAvail(id);
            }
          } catch (e) {
            // The mock's ring is full: only the driver side refused.
            if (!(e instanceof RangeError)) throw e;
          }
          if (random() < 0.5) harness.kick(0);
          if (random() < 0.2) harness.device.queueNotify(0);
          await BlkHarness.idle(int(3));
          most = Math.max(most, backend.running, harness.device.inFlight);
          try {
            for (const entry of drv.usedEntries()) {
              const k = inFlight.indexOf(entry.chain!);
              if (k >= 0) inFlight.splice(k, 1);
            }
          } catch {
            // A raw re-offer the mock cannot account for: not under test here.
          }
        }
        await BlkHarness.idle(3);
        const seed = `run ${run} (queue ${queueSize}, ring ${ringSize}, seed ${SEED})`;
        assert.ok(most <= ringSize, `${seed}: ${most} requests in the backend of a ${ringSize}-entry ring`);
        assert.ok(drv.errors.length <= 1, `${seed}: ${drv.errors.length} ring errors`);
        for (const reason of harness.resetReasons) {
          assert.ok(reason instanceof VirtqueueError, `${seed}: device fault ${String(reason)}`);
        }
        assert.ok(log.inflightIds().every((id) => id < queueSize));
        const kind = drv.errors[0]?.kind ?? 'none';
        outcomes.set(kind, (outcomes.get(kind) ?? 0) + 1);
        await harness.device.reset();
      }
      // The runs must reach the errors they are about.
      const want = packed ? ['inflight-id', 'buffer-id', 'ring-size'] : ['inflight-id', 'descriptor-index'];
      for (const kind of want)
        assert.ok(outcomes.has(kind), `no '${kind}' among ${[...outcomes.keys()].join(', ')}`);
    });
  });
}
