import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { LatencyRamBackend } from '../../../examples/latency-backend.js';
import {
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_IN,
} from '../../../src/uapi/virtio-blk.js';
import type { MockChain } from '../../../src/testing/mock-driver.js';
import { BlkHarness, pattern, segments } from '../blk/harness.js';

describe('examples/latency-backend.ts behind a virtio-blk device', () => {
  it('stores data, flushes, discards, and serves requests concurrently', async () => {
    const backend = new LatencyRamBackend({ size: 4 * 1024 * 1024, latencyMs: 20 });
    const harness = new BlkHarness({ backend, name: 'example' });
    assert.equal((await harness.write(8, pattern(8192, 1))).status, 0);
    assert.deepEqual(await harness.read(8, 8192), pattern(8192, 1));
    assert.equal((await harness.run(0, { type: VIRTIO_BLK_T_FLUSH })).status, 0);
    assert.equal(
      (await harness.run(0, { type: VIRTIO_BLK_T_DISCARD, out: segments({ sector: 8, sectors: 8 }) })).status,
      0,
    );
    const data = await harness.read(8, 8192);
    assert.ok(data.subarray(0, 4096).every((b) => b === 0));
    assert.deepEqual(data.subarray(4096), pattern(8192, 1).subarray(4096));

    // Sixteen reads of 20 ms each take about 20 ms together, not 320: they are all in flight at once.
    const start = Date.now();
    const chains: MockChain[] = [];
    for (let i = 0; i < 16; i++)
      chains.push(harness.add(0, { type: VIRTIO_BLK_T_IN, sector: i * 8, inLength: 4096 }));
    harness.kick(0);
    for (const chain of chains) assert.equal((await harness.wait(chain)).status, 0);
    assert.ok(Date.now() - start < 200, `took ${Date.now() - start} ms`);

    await backend.close();
    const failed = await harness.run(0, { type: VIRTIO_BLK_T_IN, sector: 0, inLength: 512 });
    assert.equal(failed.status, VIRTIO_BLK_S_IOERR);
  });
});
