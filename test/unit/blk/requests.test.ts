import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { BackendError } from '../../../src/backends/backend.js';
import { MemoryBackend } from '../../../src/backends/memory-backend.js';
import { NullBackend } from '../../../src/backends/null-backend.js';
import {
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_FLUSH,
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
  VIRTIO_BLK_T_ZONE_REPORT,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
  encodeVirtioBlkOuthdr,
} from '../../../src/uapi/virtio-blk.js';
import { bit } from '../../../src/uapi/virtio-config.js';
import { BlkHarness, TestBackend, pattern, segments, type Layout } from './harness.js';

const MiB = 1024 * 1024;
const RINGS = [
  { name: 'split', packed: false },
  { name: 'packed', packed: true },
] as const;
const LAYOUTS: Layout[] = ['separate', 'merged', 'fragmented', 'indirect'];

function memoryHarness(
  options: { packed?: boolean; flush?: boolean; size?: number } & Record<string, unknown> = {},
) {
  const { packed = false, flush = true, size = 4 * MiB, ...rest } = options;
  const backend = new TestBackend(new MemoryBackend({ size }), { capabilities: { flush } });
  const harness = new BlkHarness({ backend, packed, ...rest });
  return { backend, harness };
}

for (const ring of RINGS) {
  describe(`virtio-blk requests (${ring.name} ring)`, () => {
    for (const layout of LAYOUTS) {
      it(`writes and reads back data (${layout} layout)`, async () => {
        const { harness, backend } = memoryHarness({ packed: ring.packed });
        const data = pattern(4096, 7);
        const written = await harness.run(0, { type: VIRTIO_BLK_T_OUT, sector: 8, out: data, layout });
        assert.equal(written.status, VIRTIO_BLK_S_OK);
        assert.equal(written.len, 1, 'an OUT request writes only the status byte');
        const read = await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: 8, inLength: 4096, layout });
        assert.equal(read.status, VIRTIO_BLK_S_OK);
        assert.equal(read.len, 4097, 'an IN request writes the data and the status byte');
        assert.deepEqual(read.writable.subarray(0, 4096), data);
        assert.deepEqual(
          backend.calls.map((c) => [c.op, c.offset, c.length]),
          [
            ['write', 4096, 4096],
            ['read', 4096, 4096],
          ],
        );
      });
    }

    it('passes the data views to the backend without copying, sliced around header and status', async () => {
      const { harness, backend } = memoryHarness({ packed: ring.packed });
      let seen: readonly Uint8Array[] = [];
      const inner = backend.inner;
      backend.inner.read = (offset, buffers) => {
        seen = [...buffers];
        return MemoryBackend.prototype.read.call(inner, offset, buffers);
      };
      await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: 0, inLength: 1024, layout: 'merged' });
      assert.equal(seen.length, 1);
      assert.equal(seen[0]!.length, 1024, 'the status byte is not part of the data');
      const memory = harness.drivers[0]!.memory;
      const region = memory.hostView(0x100000, 16);
      assert.equal(seen[0]!.buffer, region.buffer, 'the backend sees a view of guest memory, not a copy');
    });

    it('FLUSH reaches the backend', async () => {
      const { harness, backend } = memoryHarness({ packed: ring.packed });
      const done = await harness.run(0, { type: VIRTIO_BLK_T_FLUSH });
      assert.equal(done.status, VIRTIO_BLK_S_OK);
      assert.equal(done.len, 1);
      assert.deepEqual(
        backend.calls.map((c) => c.op),
        ['flush'],
      );
    });

    it('GET_ID answers the 20-byte serial', async () => {
      const { harness } = memoryHarness({ packed: ring.packed, serial: 'disk-0001' });
      const done = await harness.run(0, { type: VIRTIO_BLK_T_GET_ID, inLength: 20 });
      assert.equal(done.status, VIRTIO_BLK_S_OK);
      assert.equal(done.len, 21);
      const expected = new Uint8Array(20);
      expected.set(new TextEncoder().encode('disk-0001'));
      assert.deepEqual(done.writable.subarray(0, 20), expected);
      // A serial of exactly 20 characters has no NUL.
      const full = memoryHarness({ packed: ring.packed, serial: 'ABCDEFGHIJKLMNOPQRST' }).harness;
      const all = await full.run(0, { type: VIRTIO_BLK_T_GET_ID, inLength: 20 });
      assert.equal(new TextDecoder().decode(all.writable.subarray(0, 20)), 'ABCDEFGHIJKLMNOPQRST');
      // A short buffer gets what fits.
      const short = await full.run(0, { type: VIRTIO_BLK_T_GET_ID, inLength: 5 });
      assert.equal(short.len, 6);
      assert.equal(new TextDecoder().decode(short.writable.subarray(0, 5)), 'ABCDE');
      assert.equal(short.status, VIRTIO_BLK_S_OK);
    });

    it('DISCARD with several ranges calls the backend per range and the data reads back as zeroes', async () => {
      const { harness, backend } = memoryHarness({ packed: ring.packed });
      await harness.write(0, pattern(256 * 1024, 3));
      const out = segments({ sector: 0, sectors: 128 }, { sector: 256, sectors: 128 });
      const done = await harness.run(0, { type: VIRTIO_BLK_T_DISCARD, out });
      assert.equal(done.status, VIRTIO_BLK_S_OK);
      assert.equal(done.len, 1);
      assert.deepEqual(
        backend.calls.filter((c) => c.op === 'discard').map((c) => [c.offset, c.length]),
        [
          [0, 65536],
          [131072, 65536],
        ],
      );
      const data = await harness.read(0, 256 * 1024);
      assert.ok(data.subarray(0, 65536).every((b) => b === 0));
      assert.deepEqual(data.subarray(65536, 131072), pattern(256 * 1024, 3).subarray(65536, 131072));
      assert.ok(data.subarray(131072, 196608).every((b) => b === 0));
    });

    it('WRITE_ZEROES passes the UNMAP flag and zeroes the data', async () => {
      const { harness, backend } = memoryHarness({ packed: ring.packed });
      await harness.write(0, pattern(8192, 5));
      const out = segments(
        { sector: 0, sectors: 4, flags: VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP },
        { sector: 8, sectors: 2 },
      );
      const done = await harness.run(0, { type: VIRTIO_BLK_T_WRITE_ZEROES, out });
      assert.equal(done.status, VIRTIO_BLK_S_OK);
      assert.deepEqual(
        backend.calls.filter((c) => c.op === 'writeZeroes').map((c) => [c.offset, c.length, c.unmap]),
        [
          [0, 2048, true],
          [4096, 1024, false],
        ],
      );
      const data = await harness.read(0, 8192);
      const expected = pattern(8192, 5);
      expected.fill(0, 0, 2048);
      expected.fill(0, 4096, 5120);
      assert.deepEqual(data, expected);
    });

    it('SECURE_ERASE works when the backend can, and is UNSUPP when it cannot', async () => {
      const { harness, backend } = memoryHarness({ packed: ring.packed });
      await harness.write(0, pattern(4096, 9));
      const done = await harness.run(0, {
        type: VIRTIO_BLK_T_SECURE_ERASE,
        out: segments({ sector: 0, sectors: 8 }),
      });
      assert.equal(done.status, VIRTIO_BLK_S_OK);
      assert.deepEqual(
        backend.calls.filter((c) => c.op === 'secureErase').map((c) => [c.offset, c.length]),
        [[0, 4096]],
      );
      assert.ok((await harness.read(0, 4096)).every((b) => b === 0));

      const onNull = new BlkHarness({ backend: new NullBackend({ size: MiB }), packed: ring.packed });
      const refused = await onNull.run(0, {
        type: VIRTIO_BLK_T_SECURE_ERASE,
        out: segments({ sector: 0, sectors: 8 }),
      });
      assert.equal(refused.status, VIRTIO_BLK_S_UNSUPP);
    });

    it('answers UNSUPP with len 1 for GET_LIFETIME, zoned and unknown types', async () => {
      const { harness, backend } = memoryHarness({ packed: ring.packed });
      for (const type of [VIRTIO_BLK_T_GET_LIFETIME, VIRTIO_BLK_T_ZONE_REPORT, 2, 99, 0x80000001]) {
        const done = await harness.run(0, { type, inLength: 16 });
        assert.equal(done.status, VIRTIO_BLK_S_UNSUPP, `type ${type}`);
        assert.equal(done.len, 1);
      }
      assert.equal(backend.calls.length, 0);
      assert.equal(harness.device.stats.unsupported, 5);
      assert.equal(harness.device.stats.driverErrors, 0, 'an unsupported type is not a driver error');
    });

    it('a zero-length read or write completes OK without the backend', async () => {
      const { harness, backend } = memoryHarness({ packed: ring.packed });
      assert.equal((await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: 0 })).status, VIRTIO_BLK_S_OK);
      assert.equal((await harness.run(0, { type: VIRTIO_BLK_T_OUT, sector: 0 })).status, VIRTIO_BLK_S_OK);
      assert.equal(backend.calls.length, 0);
    });
  });
}

describe('virtio-blk request validation (the backend is never touched)', () => {
  async function expectStatus(
    harness: BlkHarness,
    backend: TestBackend,
    spec: Parameters<BlkHarness['run']>[1],
    status: number,
    len = 1,
  ): Promise<void> {
    const before = backend.calls.length;
    const done = await harness.run(0, spec);
    assert.equal(done.status, status);
    assert.equal(done.len, len);
    assert.equal(backend.calls.length, before, 'the backend must not be called');
  }

  it('refuses sectors out of range with IOERR', async () => {
    const { harness, backend } = memoryHarness({ size: MiB });
    const capacity = MiB / 512;
    await expectStatus(
      harness,
      backend,
      { type: VIRTIO_BLK_T_IN, sector: capacity, inLength: 512 },
      VIRTIO_BLK_S_IOERR,
    );
    await expectStatus(
      harness,
      backend,
      { type: VIRTIO_BLK_T_IN, sector: capacity - 1, inLength: 1024 },
      VIRTIO_BLK_S_IOERR,
    );
    await expectStatus(
      harness,
      backend,
      { type: VIRTIO_BLK_T_OUT, sector: 2n ** 63n, out: new Uint8Array(512) },
      VIRTIO_BLK_S_IOERR,
    );
    await expectStatus(
      harness,
      backend,
      { type: VIRTIO_BLK_T_OUT, sector: 2n ** 64n - 1n, out: new Uint8Array(512) },
      VIRTIO_BLK_S_IOERR,
    );
    // The last sector itself is fine.
    assert.equal(
      (await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: capacity - 1, inLength: 512 })).status,
      0,
    );
  });

  it('refuses data lengths that are not a multiple of 512', async () => {
    const { harness, backend } = memoryHarness();
    await expectStatus(harness, backend, { type: VIRTIO_BLK_T_OUT, sector: 0, out: new Uint8Array(100) }, 1);
    await expectStatus(harness, backend, { type: VIRTIO_BLK_T_IN, sector: 0, inLength: 513 }, 1);
  });

  it('refuses requests misaligned for a 4096-byte logical block', async () => {
    const { harness, backend } = memoryHarness({ logicalBlockSize: 4096 });
    await expectStatus(
      harness,
      backend,
      { type: VIRTIO_BLK_T_IN, sector: 1, inLength: 4096 },
      VIRTIO_BLK_S_IOERR,
    );
    await expectStatus(
      harness,
      backend,
      { type: VIRTIO_BLK_T_IN, sector: 8, inLength: 512 },
      VIRTIO_BLK_S_IOERR,
    );
    await expectStatus(
      harness,
      backend,
      { type: VIRTIO_BLK_T_WRITE_ZEROES, out: segments({ sector: 4, sectors: 8 }) },
      VIRTIO_BLK_S_IOERR,
    );
    assert.equal((await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: 8, inLength: 8192 })).status, 0);
  });

  it('refuses writes, discards and write-zeroes on a read-only device with IOERR; reads and flushes work', async () => {
    const { harness, backend } = memoryHarness({ readOnly: true });
    assert.equal(harness.device.readOnly, true);
    await expectStatus(harness, backend, { type: VIRTIO_BLK_T_OUT, sector: 0, out: new Uint8Array(512) }, 1);
    await expectStatus(
      harness,
      backend,
      { type: VIRTIO_BLK_T_DISCARD, out: segments({ sector: 0, sectors: 1 }) },
      1,
    );
    await expectStatus(
      harness,
      backend,
      { type: VIRTIO_BLK_T_WRITE_ZEROES, out: segments({ sector: 0, sectors: 1 }) },
      VIRTIO_BLK_S_IOERR,
    );
    assert.equal((await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: 0, inLength: 512 })).status, 0);
    assert.equal((await harness.run(0, { type: VIRTIO_BLK_T_FLUSH })).status, 0);
  });

  it('is read-only when the backend is', async () => {
    const backend = new TestBackend(new MemoryBackend({ size: MiB, readOnly: true }));
    const harness = new BlkHarness({ backend });
    assert.equal(harness.device.readOnly, true);
    assert.notEqual(harness.device.features & bit(5), 0n, 'VIRTIO_BLK_F_RO offered');
    await expectStatus(harness, backend, { type: VIRTIO_BLK_T_OUT, sector: 0, out: new Uint8Array(512) }, 1);
  });

  it('answers IOERR for a header that is too short or device-writable', async () => {
    const { harness, backend } = memoryHarness();
    const driver = harness.drivers[0]!;
    const short = driver.addChain({ readable: [new Uint8Array(8)], writable: [1] });
    harness.kick(0);
    const a = await harness.wait(short);
    assert.equal(a.status, VIRTIO_BLK_S_IOERR);
    assert.equal(a.len, 1);
    // The header in a writable buffer: the device sees no readable header at all.
    const header = encodeVirtioBlkOuthdr({ type: VIRTIO_BLK_T_IN, ioprio: 0, sector: 0n });
    const wrong = driver.addChain({ writable: [header, 512, 1] });
    harness.kick(0);
    const b = await harness.wait(wrong);
    assert.equal(b.status, VIRTIO_BLK_S_IOERR);
    assert.equal(b.len, 1);
    assert.equal(backend.calls.length, 0);
  });

  it('gives a chain without a writable status byte back with len 0 and does not crash', async () => {
    const { harness, backend } = memoryHarness();
    const driver = harness.drivers[0]!;
    const header = encodeVirtioBlkOuthdr({ type: VIRTIO_BLK_T_OUT, ioprio: 0, sector: 0n });
    const chain = driver.addChain({ readable: [header, new Uint8Array(512), new Uint8Array(1)] });
    harness.kick(0);
    const done = await harness.wait(chain);
    assert.equal(done.len, 0);
    assert.equal(done.status, -1);
    assert.equal(harness.device.stats.driverErrors, 1);
    assert.equal(backend.calls.length, 0);
    // The device goes on serving.
    assert.equal((await harness.run(0, { type: VIRTIO_BLK_T_FLUSH })).status, 0);
  });

  it('refuses more data segments than seg_max with IOERR', async () => {
    const { harness, backend } = memoryHarness({ segMax: 2 });
    await expectStatus(
      harness,
      backend,
      { type: VIRTIO_BLK_T_OUT, sector: 0, out: new Uint8Array(1536), layout: 'fragmented' },
      VIRTIO_BLK_S_IOERR,
    );
    await expectStatus(
      harness,
      backend,
      { type: VIRTIO_BLK_T_IN, sector: 0, inLength: 1536, layout: 'fragmented' },
      VIRTIO_BLK_S_IOERR,
    );
    const ok = await harness.run(0, {
      type: VIRTIO_BLK_T_IN,
      sector: 0,
      inLength: 1024,
      layout: 'fragmented',
    });
    assert.equal(ok.status, VIRTIO_BLK_S_OK);
  });

  it('checks discard and write-zeroes segments', async () => {
    const { harness, backend } = memoryHarness({
      size: MiB,
      maxDiscardSeg: 2,
      maxWriteZeroesSeg: 1,
      maxDiscardSectors: 64,
    });
    const cases: [number, Uint8Array, number][] = [
      // Too many segments: UNSUPP.
      [
        VIRTIO_BLK_T_DISCARD,
        segments({ sector: 0, sectors: 1 }, { sector: 1, sectors: 1 }, { sector: 2, sectors: 1 }),
        2,
      ],
      [VIRTIO_BLK_T_WRITE_ZEROES, segments({ sector: 0, sectors: 1 }, { sector: 1, sectors: 1 }), 2],
      // UNMAP on a discard, unknown flags: UNSUPP.
      [
        VIRTIO_BLK_T_DISCARD,
        segments({ sector: 0, sectors: 1, flags: VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP }),
        2,
      ],
      [VIRTIO_BLK_T_WRITE_ZEROES, segments({ sector: 0, sectors: 1, flags: 2 }), 2],
      [VIRTIO_BLK_T_DISCARD, segments({ sector: 0, sectors: 1, flags: 0x80000000 }), 2],
      // Out of range, too long, malformed list: IOERR.
      [VIRTIO_BLK_T_DISCARD, segments({ sector: 2047, sectors: 2 }), 1],
      [VIRTIO_BLK_T_DISCARD, segments({ sector: 2n ** 64n - 1n, sectors: 2 }), 1],
      [VIRTIO_BLK_T_DISCARD, segments({ sector: 0, sectors: 65 }), 1],
      [VIRTIO_BLK_T_WRITE_ZEROES, new Uint8Array(20), 1],
      [VIRTIO_BLK_T_DISCARD, new Uint8Array(0), 1],
    ];
    for (const [type, out, status] of cases) {
      await expectStatus(harness, backend, { type, out }, status);
    }
    // A later bad segment fails the whole request before any range is touched.
    await expectStatus(
      harness,
      backend,
      { type: VIRTIO_BLK_T_DISCARD, out: segments({ sector: 0, sectors: 1 }, { sector: 4096, sectors: 1 }) },
      VIRTIO_BLK_S_IOERR,
    );
    // The limits themselves are fine.
    const ok = await harness.run(0, {
      type: VIRTIO_BLK_T_DISCARD,
      out: segments({ sector: 2047, sectors: 1 }),
    });
    assert.equal(ok.status, VIRTIO_BLK_S_OK);
  });

  it('answers UNSUPP for features the driver did not accept', async () => {
    const backend = new TestBackend(new MemoryBackend({ size: MiB }), { capabilities: { flush: true } });
    const harness = new BlkHarness({
      backend,
      accept: (offered) => offered & ~bit(VIRTIO_BLK_F_DISCARD) & ~bit(VIRTIO_BLK_F_FLUSH),
    });
    await expectStatus(
      harness,
      backend,
      { type: VIRTIO_BLK_T_DISCARD, out: segments({ sector: 0, sectors: 1 }) },
      2,
    );
    await expectStatus(harness, backend, { type: VIRTIO_BLK_T_FLUSH }, VIRTIO_BLK_S_UNSUPP);
  });

  it('FLUSH is UNSUPP when the backend has nothing to flush (FLUSH is not offered)', async () => {
    const { harness, backend } = memoryHarness({ flush: false });
    assert.equal(harness.device.features & bit(VIRTIO_BLK_F_FLUSH), 0n);
    await expectStatus(harness, backend, { type: VIRTIO_BLK_T_FLUSH }, VIRTIO_BLK_S_UNSUPP);
  });
});

describe('virtio-blk backend failures', () => {
  it('answers IOERR for a failed read or write, UNSUPP for BackendError ENOTSUP', async () => {
    const logged: string[] = [];
    const { harness, backend } = memoryHarness({ logger: { warn: (m: string) => logged.push(m) } });
    backend.failWith = new BackendError('disk on fire');
    const read = await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: 0, inLength: 512 });
    assert.equal(read.status, VIRTIO_BLK_S_IOERR);
    assert.equal(read.len, 1);
    assert.equal((await harness.write(0, new Uint8Array(512))).status, VIRTIO_BLK_S_IOERR);
    backend.failWith = new BackendError('cannot', 'ENOTSUP');
    const zero = await harness.run(0, {
      type: VIRTIO_BLK_T_WRITE_ZEROES,
      out: segments({ sector: 0, sectors: 1 }),
    });
    assert.equal(zero.status, VIRTIO_BLK_S_UNSUPP);
    assert.equal(harness.device.stats.backendErrors, 3);
    assert.ok(logged.some((line) => line.includes('disk on fire')));
  });

  it('a backend that throws synchronously gives IOERR, not a crash', async () => {
    const backend = new NullBackend({ size: MiB });
    backend.read = () => {
      throw new Error('sync throw');
    };
    const harness = new BlkHarness({ backend });
    const done = await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: 0, inLength: 512 });
    assert.equal(done.status, VIRTIO_BLK_S_IOERR);
  });

  it('a synchronous backend result is answered and published before queueNotify returns', () => {
    const backend = new MemoryBackend({ size: MiB });
    const harness = new BlkHarness({ backend });
    harness.submit(0, { type: VIRTIO_BLK_T_OUT, sector: 8, out: pattern(1024, 3) });
    harness.submit(0, { type: VIRTIO_BLK_T_IN, sector: 8, inLength: 1024 });
    // No await: the used entries are already in the ring.
    const entries = harness.drivers[0]!.usedEntries();
    assert.equal(entries.length, 2);
    assert.equal(harness.device.inFlight, 0);
    assert.equal(harness.device.stats.bytesRead, 1024);
  });

  it('a synchronous throw in a batch fails only its own request', () => {
    const backend = new MemoryBackend({ size: MiB });
    let calls = 0;
    backend.read = () => {
      if (++calls === 2) throw new BackendError('second read fails');
    };
    const harness = new BlkHarness({ backend });
    for (let i = 0; i < 3; i++) harness.add(0, { type: VIRTIO_BLK_T_IN, sector: i, inLength: 512 });
    harness.kick(0);
    harness.collect();
    const statuses = harness.completionOrder.map((chain) => {
      const status = chain.writable[chain.writable.length - 1]!;
      return harness.drivers[0]!.read(status.addr + status.len - 1, 1)[0];
    });
    assert.deepEqual(statuses, [VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK]);
    assert.equal(harness.device.stats.backendErrors, 1);
  });
});
