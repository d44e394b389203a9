/**
 * The rbd backend when the cluster goes away under load: one bluestore cluster (memstore would lose everything
 * on a SIGKILL), the OSD and the monitor killed with SIGKILL and started again.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { BackendError } from '../../../src/backends/backend.js';
import { openBackend } from '../../../src/backends/index.js';
import type { RbdBackend } from '../../../src/backends/rbd/index.js';
import { CephCluster, cephSkip, pattern } from './cluster.js';

const skip = cephSkip();
const BLOCKS = 64;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('rbd backend: faults (bluestore cluster)', { skip, timeout: 300_000 }, () => {
  let cluster: CephCluster;

  before(async () => {
    cluster = await CephCluster.start({ store: 'bluestore' });
    await cluster.rbd('create', '--size', '16M', 'rbd/wait');
    await cluster.rbd('create', '--size', '16M', 'rbd/fail');
  });
  after(async () => {
    await cluster?.stop();
  });

  it('requests wait while the OSD restarts (SIGKILL), fail after timeout=, and recover', async () => {
    const waiting = (await openBackend(`rbd:rbd/wait,conf=${cluster.conf}`)) as RbdBackend;
    const failing = (await openBackend(`rbd:rbd/fail,conf=${cluster.conf},timeout=3`)) as RbdBackend;
    try {
      // load on both images, then the OSD goes away
      let round = 0;
      let stop = false;
      let written = 0;
      const load = (async () => {
        while (!stop) {
          round++;
          const batch = [];
          for (let i = 0; i < BLOCKS; i++)
            batch.push(waiting.write(i * 4096, [pattern(4096, round * 1000 + i)]));
          await Promise.all(batch);
          written = round;
        }
      })();
      await failing.write(0, [pattern(4096, 1)]);
      await sleep(500);
      await cluster.stopOsd('SIGKILL');
      const before = written;
      // with timeout=3 a request fails (EIO) once the cluster has not answered for 3 s
      const started = Date.now();
      await assert.rejects(Promise.resolve(failing.write(4096, [pattern(4096, 2)])), (e: unknown) => {
        return e instanceof BackendError && e.code === 'ERR_BACKEND_IO' && e.errno === 'ETIMEDOUT';
      });
      const took = Date.now() - started;
      assert.ok(took >= 2500 && took < 30_000, `failed after ${took} ms`);
      // without a timeout, the writes wait
      await sleep(1000);
      assert.equal(written, before, 'no write completed while the OSD was down');
      assert.ok(waiting.inFlight > 0);
      await cluster.startOsd();
      // the monitor restarts too (SIGKILL): I/O goes on without it
      stop = true;
      await load;
      assert.ok(written > before, 'the writes that waited for the OSD completed');
      await cluster.stopMon('SIGKILL');
      await waiting.write(0, [pattern(4096, 77)]);
      await cluster.startMon();
      // nothing lost: the last round everywhere, as another client reads it
      await waiting.flush();
      const image = await cluster.rbdExport('rbd/wait');
      for (let i = 1; i < BLOCKS; i++) {
        assert.deepEqual(
          new Uint8Array(image.subarray(i * 4096, (i + 1) * 4096)),
          pattern(4096, written * 1000 + i),
          `block ${i}`,
        );
      }
      assert.deepEqual(new Uint8Array(image.subarray(0, 4096)), pattern(4096, 77));
      // the failing image works again
      await failing.write(4096, [pattern(4096, 3)]);
      const buf = new Uint8Array(8192);
      await failing.read(0, [buf]);
      assert.deepEqual(buf.subarray(0, 4096), pattern(4096, 1));
      assert.deepEqual(buf.subarray(4096), pattern(4096, 3));
    } finally {
      await waiting.close();
      await failing.close();
    }
  });
});
