import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { BackendCapabilities } from '../../../src/backends/backend.js';
import { MemoryBackend } from '../../../src/backends/memory-backend.js';
import { NullBackend } from '../../../src/backends/null-backend.js';
import { UsageError } from '../../../src/common/errors.js';
import { VirtioBlkDevice } from '../../../src/devices/blk/device.js';
import {
  VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_CONFIG_WCE,
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_GEOMETRY,
  VIRTIO_BLK_F_MQ,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_SECURE_ERASE,
  VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_F_SIZE_MAX,
  VIRTIO_BLK_F_TOPOLOGY,
  VIRTIO_BLK_F_WRITE_ZEROES,
  VIRTIO_BLK_T_IN,
  decodeVirtioBlkConfig,
} from '../../../src/uapi/virtio-blk.js';
import {
  VIRTIO_F_ACCESS_PLATFORM,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
  VIRTIO_ID_BLOCK,
  bit,
  hasFeature,
} from '../../../src/uapi/virtio-config.js';
import { VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../../../src/uapi/virtio-ring.js';
import { BlkHarness, TestBackend } from './harness.js';

const MiB = 1024 * 1024;

function withCaps(caps: Partial<BackendCapabilities>, size = 64 * MiB): TestBackend {
  return new TestBackend(new MemoryBackend({ size }), { capabilities: caps });
}

describe('virtio-blk config space', () => {
  it('encodes every field at its offset', () => {
    const backend = withCaps({
      minIoSize: 4096,
      optIoSize: 1024 * 1024,
      discardAlignment: 65536,
      flush: true,
    });
    const device = new VirtioBlkDevice({
      backend,
      numQueues: 4,
      queueSize: 128,
      sizeMax: 65536,
      geometry: { cylinders: 1000, heads: 16, sectors: 63 },
      maxDiscardSectors: 1000,
      maxDiscardSeg: 7,
      maxWriteZeroesSectors: 2000,
      maxWriteZeroesSeg: 9,
      maxSecureEraseSectors: 3000,
      maxSecureEraseSeg: 11,
    });
    const bytes = device.config();
    assert.equal(bytes.length, 72);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
    assert.equal(view.getBigUint64(0, true), BigInt((64 * MiB) / 512), 'capacity');
    assert.equal(view.getUint32(8, true), 65536, 'size_max');
    assert.equal(view.getUint32(12, true), 126, 'seg_max = queue size - 2');
    assert.equal(view.getUint16(16, true), 1000, 'cylinders');
    assert.equal(view.getUint8(18), 16, 'heads');
    assert.equal(view.getUint8(19), 63, 'sectors');
    assert.equal(view.getUint32(20, true), 512, 'blk_size');
    assert.equal(view.getUint8(24), 3, 'physical_block_exp: 4096 / 512 = 2^3');
    assert.equal(view.getUint8(25), 0, 'alignment_offset');
    assert.equal(view.getUint16(26, true), 8, 'min_io_size in logical blocks');
    assert.equal(view.getUint32(28, true), 2048, 'opt_io_size in logical blocks');
    assert.equal(view.getUint8(32), 0, 'writeback');
    assert.equal(view.getUint8(33), 0, 'unused0');
    assert.equal(view.getUint16(34, true), 4, 'num_queues');
    assert.equal(view.getUint32(36, true), 1000, 'max_discard_sectors');
    assert.equal(view.getUint32(40, true), 7, 'max_discard_seg');
    assert.equal(view.getUint32(44, true), 128, 'discard_sector_alignment (65536 / 512)');
    assert.equal(view.getUint32(48, true), 2000, 'max_write_zeroes_sectors');
    assert.equal(view.getUint32(52, true), 9, 'max_write_zeroes_seg');
    assert.equal(view.getUint8(56), 1, 'write_zeroes_may_unmap');
    assert.deepEqual([...bytes.subarray(57, 60)], [0, 0, 0], 'unused1');
    assert.equal(view.getUint32(60, true), 3000, 'max_secure_erase_sectors');
    assert.equal(view.getUint32(64, true), 11, 'max_secure_erase_seg');
    assert.equal(view.getUint32(68, true), 128, 'secure_erase_sector_alignment');
  });

  it('leaves fields of features not offered at zero', () => {
    const backend = new NullBackend({ size: MiB });
    const device = new VirtioBlkDevice({ backend, discard: false, writeZeroes: false });
    const config = decodeVirtioBlkConfig(device.config());
    assert.equal(config.capacity, 2048n);
    assert.equal(config.size_max, 0);
    assert.equal(config.cylinders, 0);
    assert.equal(config.num_queues, 0);
    assert.equal(config.max_discard_sectors, 0);
    assert.equal(config.max_write_zeroes_sectors, 0);
    assert.equal(config.max_secure_erase_sectors, 0);
    assert.equal(config.seg_max, 254);
    assert.equal(config.blk_size, 512);
  });

  it('counts capacity in 512-byte sectors, rounded down to whole logical blocks', () => {
    const device = new VirtioBlkDevice({
      backend: new NullBackend({ size: 3 * 4096 + 1024 }),
      logicalBlockSize: 4096,
    });
    const config = decodeVirtioBlkConfig(device.config());
    assert.equal(config.capacity, 24n);
    assert.equal(config.blk_size, 4096);
    assert.equal(config.physical_block_exp, 0);
    assert.equal(config.min_io_size, 1);
    assert.equal(device.capacityBytes, 3 * 4096);
  });

  it('rejects bad options with a one-line UsageError (ERR_BLK_OPTION)', () => {
    const backend = new NullBackend({ size: MiB });
    const optionError = (e: unknown): boolean =>
      e instanceof UsageError &&
      e.code === 'ERR_BLK_OPTION' &&
      e.message.startsWith('virtio-blk: ') &&
      !e.message.includes('\n');
    assert.throws(() => new VirtioBlkDevice({ backend, logicalBlockSize: 1000 }), optionError);
    assert.throws(() => new VirtioBlkDevice({ backend, logicalBlockSize: 8192 }), optionError);
    assert.throws(() => new VirtioBlkDevice({ backend, queueSize: 100 }), optionError);
    assert.throws(() => new VirtioBlkDevice({ backend, queueSize: 65536 }), optionError);
    assert.throws(() => new VirtioBlkDevice({ backend, numQueues: 0 }), optionError);
    assert.throws(() => new VirtioBlkDevice({ backend, serial: 'x'.repeat(21) }), /serial/);
    assert.throws(() => new VirtioBlkDevice({ backend, serial: 'd\u00e9j\u00e0' }), /serial/);
    assert.throws(() => new VirtioBlkDevice({ backend, serial: 'x'.repeat(21) }), optionError);
    assert.throws(() => new VirtioBlkDevice({ backend, segMax: 0 }), optionError);
  });

  it('derives the serial from the name', async () => {
    const backend = new NullBackend({ size: MiB });
    const device = new VirtioBlkDevice({ backend, name: 'a-rather-long-device-name-\u00e9' });
    assert.equal(new TextDecoder().decode(device.options.serial), 'a-rather-long-device');
    const harness = new BlkHarness({ backend, name: 'vduse0' });
    const done = await harness.run(0, { type: 8, inLength: 20 });
    assert.equal(new TextDecoder().decode(done.writable.subarray(0, 6)), 'vduse0');
    assert.equal(done.writable[6], 0);
  });
});

describe('virtio-blk features', () => {
  it('offers the expected set for a memory disk', () => {
    const device = new VirtioBlkDevice({ backend: new MemoryBackend({ size: MiB }) });
    const f = device.features;
    assert.equal(device.deviceId, VIRTIO_ID_BLOCK);
    for (const n of [
      VIRTIO_F_VERSION_1,
      VIRTIO_F_ACCESS_PLATFORM,
      VIRTIO_BLK_F_BLK_SIZE,
      VIRTIO_BLK_F_TOPOLOGY,
      VIRTIO_BLK_F_SEG_MAX,
      VIRTIO_BLK_F_DISCARD,
      VIRTIO_BLK_F_WRITE_ZEROES,
      VIRTIO_BLK_F_SECURE_ERASE,
      VIRTIO_RING_F_EVENT_IDX,
      VIRTIO_RING_F_INDIRECT_DESC,
    ]) {
      assert.ok(hasFeature(f, n), `bit ${n} offered`);
    }
    for (const n of [
      VIRTIO_BLK_F_RO,
      VIRTIO_BLK_F_FLUSH,
      VIRTIO_BLK_F_MQ,
      VIRTIO_BLK_F_SIZE_MAX,
      VIRTIO_BLK_F_GEOMETRY,
      VIRTIO_BLK_F_CONFIG_WCE,
      VIRTIO_F_RING_PACKED,
    ]) {
      assert.ok(!hasFeature(f, n), `bit ${n} not offered`);
    }
  });

  it('follows the options and the backend capabilities', () => {
    const backend = withCaps({ flush: true, secureErase: false, discard: false });
    const device = new VirtioBlkDevice({
      backend,
      numQueues: 2,
      packed: true,
      eventIdx: false,
      indirect: false,
      readOnly: true,
    });
    const f = device.features;
    assert.ok(hasFeature(f, VIRTIO_BLK_F_FLUSH));
    assert.ok(hasFeature(f, VIRTIO_BLK_F_MQ));
    assert.ok(hasFeature(f, VIRTIO_F_RING_PACKED));
    assert.ok(hasFeature(f, VIRTIO_BLK_F_RO));
    assert.ok(!hasFeature(f, VIRTIO_BLK_F_DISCARD));
    assert.ok(
      !hasFeature(f, VIRTIO_BLK_F_SECURE_ERASE),
      'TestBackend has secureErase() but the capability is off',
    );
    assert.ok(!hasFeature(f, VIRTIO_RING_F_EVENT_IDX));
    assert.ok(!hasFeature(f, VIRTIO_RING_F_INDIRECT_DESC));
    assert.throws(() => new VirtioBlkDevice({ backend, discard: true }), /cannot discard/);
  });

  it('negotiate() accepts subsets with VERSION_1 and ACCESS_PLATFORM only', () => {
    const device = new VirtioBlkDevice({ backend: new MemoryBackend({ size: MiB }) });
    const required = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_ACCESS_PLATFORM);
    assert.equal(device.negotiate(device.features), true);
    assert.equal(device.negotiate(required), true);
    assert.equal(device.negotiate(required | bit(VIRTIO_BLK_F_DISCARD)), true);
    assert.equal(device.negotiate(device.features & ~bit(VIRTIO_F_VERSION_1)), false);
    assert.equal(device.negotiate(device.features & ~bit(VIRTIO_F_ACCESS_PLATFORM)), false);
    assert.equal(
      device.negotiate(device.features | bit(VIRTIO_F_RING_PACKED)),
      false,
      'packed was not offered',
    );
    assert.equal(device.negotiate(device.features | bit(VIRTIO_BLK_F_CONFIG_WCE)), false);
    assert.equal(device.negotiate(required | (1n << 50n)), false);
  });
});

describe('virtio-blk online resize', () => {
  it('resizes the backend, updates the capacity and tells the host', async () => {
    const backend = new TestBackend(new MemoryBackend({ size: MiB }));
    const harness = new BlkHarness({ backend });
    const device = harness.device;
    const capacity = MiB / 512;
    assert.equal(
      (await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: capacity, inLength: 512 })).status,
      1,
    );
    await device.resize(2 * MiB);
    assert.equal(harness.configChanges, 1);
    assert.equal(decodeVirtioBlkConfig(device.config()).capacity, BigInt(2 * capacity));
    assert.equal(backend.size, 2 * MiB);
    assert.equal(
      (await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: capacity, inLength: 512 })).status,
      0,
    );
    await device.resize(MiB / 2);
    assert.equal(decodeVirtioBlkConfig(device.config()).capacity, BigInt(capacity / 2));
    assert.equal(
      (await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: capacity / 2, inLength: 512 })).status,
      1,
    );
    await assert.rejects(
      device.resize(1000),
      (e: unknown) =>
        e instanceof UsageError && e.code === 'ERR_BLK_RESIZE' && /multiple of 512/.test(e.message),
    );
  });

  it('without backend.resize it can only shrink the visible capacity', async () => {
    const device = new VirtioBlkDevice({ backend: new NullBackend({ size: MiB }) });
    let changes = 0;
    device.bind({ configChanged: () => changes++, needsReset: () => {} });
    await device.resize(MiB / 2);
    assert.equal(device.capacityBytes, MiB / 2);
    await assert.rejects(
      device.resize(2 * MiB),
      (e: unknown) => e instanceof UsageError && e.code === 'ERR_BLK_RESIZE' && /cannot grow/.test(e.message),
    );
    assert.equal(changes, 1);
  });
});
