/** Each backend behind a VirtioBlkDevice, driven by the mock driver on both ring formats. */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import type { BlockBackend } from '../../../src/backends/backend.js';
import { FileBackend } from '../../../src/backends/file-backend.js';
import { openBackend } from '../../../src/backends/spec.js';
import {
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
} from '../../../src/uapi/virtio-blk.js';
import { BlkHarness, TestBackend, pattern, segments } from '../blk/harness.js';

let dir = '';
before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vduse-ts-dev-'));
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

const MiB = 1024 * 1024;

const BACKENDS: { name: string; stores: boolean; open: () => Promise<BlockBackend> }[] = [
  { name: 'null', stores: false, open: () => openBackend('null:8M') },
  { name: 'memory', stores: true, open: () => openBackend('memory:8M') },
  {
    name: 'file',
    stores: true,
    open: () => openBackend(`file:${path.join(dir, `f${Math.random()}.img`)},size=8M`),
  },
  {
    name: 'file (O_DIRECT)',
    stores: true,
    open: () => openBackend(`file:${path.join(dir, `d${Math.random()}.img`)},size=8M,direct=on`),
  },
];

for (const { name, stores, open } of BACKENDS) {
  for (const packed of [false, true]) {
    describe(`virtio-blk over the ${name} backend (${packed ? 'packed' : 'split'} ring)`, () => {
      it('serves reads, writes, flush, discard, write-zeroes and GET_ID', async (t) => {
        const fdatasync = t.mock.method(fs, 'fdatasync');
        const inner = await open();
        const backend = new TestBackend(inner);
        const harness = new BlkHarness({ backend, packed, numQueues: 2, serial: 'vduse-ts' });
        try {
          const data = pattern(64 * 1024, 11);
          assert.equal((await harness.write(2048, data)).status, 0);
          assert.equal((await harness.write(0, pattern(4096, 12), 1)).status, 0);
          const back = await harness.read(2048, 64 * 1024, 1);
          if (stores) assert.deepEqual(back, data);
          else assert.ok(back.every((b) => b === 0));
          if (inner.capabilities.flush) {
            assert.equal((await harness.run(0, { type: VIRTIO_BLK_T_FLUSH })).status, 0);
          }
          if (inner instanceof FileBackend) {
            assert.equal(fdatasync.mock.callCount(), 1, 'FLUSH is an fdatasync');
            // What the guest wrote is in the file.
            const onDisk = new Uint8Array(fs.readFileSync(inner.path)).subarray(
              2048 * 512,
              2048 * 512 + data.length,
            );
            assert.deepEqual(onDisk, data);
          }
          const discard = await harness.run(0, {
            type: VIRTIO_BLK_T_DISCARD,
            out: segments({ sector: 2048, sectors: 16 }),
          });
          assert.equal(discard.status, 0);
          const zero = await harness.run(1, {
            type: VIRTIO_BLK_T_WRITE_ZEROES,
            out: segments(
              { sector: 2048 + 32, sectors: 16, flags: VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP },
              { sector: 2048 + 64, sectors: 8 },
            ),
          });
          assert.equal(zero.status, 0);
          const after = await harness.read(2048, 64 * 1024);
          if (stores) {
            const expected = data.slice();
            expected.fill(0, 0, 16 * 512);
            expected.fill(0, 32 * 512, 48 * 512);
            expected.fill(0, 64 * 512, 72 * 512);
            assert.deepEqual(after, expected);
          }
          if (inner instanceof FileBackend) {
            assert.deepEqual(
              new Uint8Array(fs.readFileSync(inner.path)).subarray(2048 * 512, 2048 * 512 + data.length),
              after,
              'the file holds the zeroed ranges too',
            );
            // A discard through the device punches a hole in the file.
            assert.equal((await harness.write(8192, pattern(MiB, 13))).status, 0);
            assert.equal((await harness.run(0, { type: VIRTIO_BLK_T_FLUSH })).status, 0);
            const full = fs.statSync(inner.path).blocks;
            const hole = await harness.run(0, {
              type: VIRTIO_BLK_T_DISCARD,
              out: segments({ sector: 8192, sectors: MiB / 512 }),
            });
            assert.equal(hole.status, 0);
            assert.ok(
              fs.statSync(inner.path).blocks <= full - MiB / 512,
              'st_blocks dropped by the discarded MiB',
            );
          }
          const id = await harness.run(0, { type: VIRTIO_BLK_T_GET_ID, inLength: 20 });
          assert.equal(new TextDecoder().decode(id.writable.subarray(0, 8)), 'vduse-ts');
          assert.deepEqual(backend.violations, []);
          if (inner instanceof FileBackend && inner.direct) {
            // Mock guest memory is an ordinary heap buffer: the kernel may refuse it, then it is bounced.
            const stats = inner.directStats;
            assert.ok(stats.direct + stats.bounced > 0);
          }
        } finally {
          await harness.device.reset();
          await inner.close();
        }
      });
    });
  }
}
