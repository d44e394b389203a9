/**
 * The rbd backend against a real one-node Ceph cluster started here (./cluster.ts; memstore, a few seconds).
 * The fault tests (OSD and monitor killed and restarted) are in faults.test.ts.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { BackendError } from '../../../src/backends/backend.js';
import { openBackend } from '../../../src/backends/index.js';
import { RbdBackend, RbdError } from '../../../src/backends/rbd/index.js';
import { UsageError } from '../../../src/common/errors.js';
import { CephCluster, cephSkip, pattern } from './cluster.js';

const skip = cephSkip();
const MiB = 1024 * 1024;

/** `rbd diff` extents of an image: [offset, length] pairs of allocated data. */
async function allocated(cluster: CephCluster, image: string): Promise<[number, number][]> {
  const out = JSON.parse(await cluster.rbd('diff', '--format', 'json', image)) as {
    offset: number;
    length: number;
  }[];
  return out.map((e) => [e.offset, e.length]);
}

describe('rbd backend (one-node cluster)', { skip, timeout: 180_000 }, () => {
  let cluster: CephCluster;
  let spec: (image: string, extra?: string) => string;

  before(async () => {
    cluster = await CephCluster.start({ store: 'memstore' });
    spec = (image, extra = '') => `rbd:rbd/${image},conf=${cluster.conf}${extra}`;
  });
  after(async () => {
    await cluster?.stop();
  });

  it('opens an image with its size and reads/writes scattered buffers in place', async () => {
    await cluster.rbd('create', '--size', '32M', 'rbd/rw');
    const backend = await openBackend(spec('rw'));
    try {
      assert.ok(backend instanceof RbdBackend);
      assert.equal(backend.size, 32 * MiB);
      assert.equal(backend.readOnly, false);
      assert.equal(backend.capabilities.flush, true);
      assert.equal(backend.capabilities.discard, true);
      assert.equal(backend.capabilities.writeZeroes, true);
      const data = pattern(3 * 4096, 1);
      // three views of one buffer, written at once, read back into other views
      await backend.write(8192, [data.subarray(0, 4096), data.subarray(4096, 4608), data.subarray(4608)]);
      const into = new Uint8Array(3 * 4096 + 100);
      const views = [into.subarray(50, 50 + 512), into.subarray(50 + 512, 50 + 3 * 4096)];
      await backend.read(8192, views);
      assert.deepEqual(into.subarray(50, 50 + 3 * 4096), data);
      assert.equal(into[49], 0);
      await backend.flush();
      // what another client reads (rbd export) is what was written
      const exported = await cluster.rbdExport('rbd/rw');
      assert.deepEqual(new Uint8Array(exported.subarray(8192, 8192 + data.length)), data);
    } finally {
      await backend.close();
    }
  });

  it('keeps many requests in flight and completes each', async () => {
    await cluster.rbd('create', '--size', '16M', 'rbd/deep');
    const backend = (await openBackend(spec('deep'))) as RbdBackend;
    try {
      const writes: Promise<void>[] = [];
      for (let i = 0; i < 256; i++) writes.push(backend.write(i * 4096, [pattern(4096, i + 10)]));
      assert.ok(backend.inFlight > 1, `in flight ${backend.inFlight}`);
      await Promise.all(writes);
      assert.equal(backend.inFlight, 0);
      const reads = [];
      for (let i = 0; i < 256; i++) {
        const buf = new Uint8Array(4096);
        reads.push(Promise.resolve(backend.read(i * 4096, [buf])).then(() => buf));
      }
      const got = await Promise.all(reads);
      got.forEach((buf, i) => assert.deepEqual(buf, pattern(4096, i + 10), `block ${i}`));
    } finally {
      await backend.close();
    }
  });

  it('discard and write-zeroes deallocate whole objects (rbd diff) and read back as zeroes', async () => {
    await cluster.rbd('create', '--size', '16M', 'rbd/trim');
    const backend = await openBackend(spec('trim'));
    try {
      await backend.write(0, [pattern(4 * MiB, 2)]);
      await backend.write(4 * MiB, [pattern(4 * MiB, 3)]);
      await backend.flush();
      assert.deepEqual(await allocated(cluster, 'rbd/trim'), [
        [0, 4 * MiB],
        [4 * MiB, 4 * MiB],
      ]);
      await backend.discard(0, 4 * MiB);
      await backend.writeZeroes(4 * MiB, 4 * MiB, { unmap: true });
      await backend.flush();
      assert.deepEqual(await allocated(cluster, 'rbd/trim'), []);
      const buf = new Uint8Array(8 * MiB).fill(7);
      await backend.read(0, [buf]);
      assert.ok(buf.every((b) => b === 0));
      // without unmap the zeroes are written and the object stays allocated
      await backend.writeZeroes(8 * MiB, 4 * MiB, { unmap: false });
      await backend.flush();
      assert.deepEqual(await allocated(cluster, 'rbd/trim'), [[8 * MiB, 4 * MiB]]);
      // a partial write-zeroes zeroes exactly its range
      await backend.write(0, [pattern(8192, 4)]);
      await backend.writeZeroes(512, 1024);
      const small = new Uint8Array(8192);
      await backend.read(0, [small]);
      const want = pattern(8192, 4);
      want.fill(0, 512, 1536);
      assert.deepEqual(small, want);
    } finally {
      await backend.close();
    }
  });

  it('serves a snapshot read-only, with the data as it was', async () => {
    await cluster.rbd('create', '--size', '8M', 'rbd/snapped');
    const head = await openBackend(spec('snapped'));
    try {
      await head.write(0, [pattern(4096, 5)]);
      await head.flush();
      await cluster.rbd('snap', 'create', 'rbd/snapped@s1');
      await head.write(0, [pattern(4096, 6)]);
      await head.flush();
    } finally {
      await head.close();
    }
    const snap = await openBackend(spec('snapped@s1'));
    try {
      assert.equal(snap.readOnly, true);
      const buf = new Uint8Array(4096);
      await snap.read(0, [buf]);
      assert.deepEqual(buf, pattern(4096, 5));
      // the device never sends a write to a read-only backend; librbd refuses one anyway
      await assert.rejects(Promise.resolve(snap.write(0, [buf])), BackendError);
    } finally {
      await snap.close();
    }
    const ro = await openBackend(spec('snapped', ',readonly=on'));
    try {
      assert.equal(ro.readOnly, true);
      const buf = new Uint8Array(4096);
      await ro.read(0, [buf]);
      assert.deepEqual(buf, pattern(4096, 6));
    } finally {
      await ro.close();
    }
  });

  it('follows a resize made by another client (update watch), and resizes the image itself', async () => {
    await cluster.rbd('create', '--size', '8M', 'rbd/grow');
    const backend = (await openBackend(spec('grow'))) as RbdBackend;
    try {
      const seen = new Promise<number>((resolve) => backend.onSizeChange(resolve));
      await cluster.rbd('resize', '--size', '24M', 'rbd/grow');
      const size = await Promise.race([
        seen,
        new Promise<number>((_, reject) =>
          setTimeout(() => reject(new Error('no size change seen')), 20_000),
        ),
      ]);
      assert.equal(size, 24 * MiB);
      assert.equal(backend.size, 24 * MiB);
      // the new space is usable at once
      await backend.write(20 * MiB, [pattern(4096, 7)]);
      await backend.resize(32 * MiB);
      assert.equal(backend.size, 32 * MiB);
      const info = JSON.parse(await cluster.rbd('info', '--format', 'json', 'rbd/grow')) as { size: number };
      assert.equal(info.size, 32 * MiB);
      // the size it already has (the watch-driven path): nothing to do
      await backend.resize(32 * MiB);
      assert.equal(backend.size, 32 * MiB);
    } finally {
      await backend.close();
    }
  });

  it('fails a request librbd refuses without harm to the next one', async () => {
    await cluster.rbd('create', '--size', '4M', 'rbd/edge');
    const backend = await openBackend(spec('edge'));
    try {
      // past the end: librbd answers with an error; the device never sends this, but nothing breaks
      await assert.rejects(Promise.resolve(backend.read(8 * MiB, [new Uint8Array(4096)])), (e: unknown) => {
        return (
          e instanceof BackendError &&
          e.code.startsWith('ERR_BACKEND_') &&
          /^E[A-Z]+$/.test(e.errno ?? '') &&
          e.message.endsWith(`librbd: ${e.errno}`)
        );
      });
      const buf = new Uint8Array(4096);
      await backend.read(0, [buf]);
    } finally {
      await backend.close();
    }
    await assert.rejects(Promise.resolve(backend.read(0, [new Uint8Array(512)])), /closed/);
  });

  it('names a missing image or pool, a refused user and unreachable monitors in one line', async () => {
    const oneLine = (re: RegExp, type: new (...a: never[]) => Error) => (e: unknown) =>
      e instanceof type && re.test((e as Error).message) && !(e as Error).message.includes('\n');
    await assert.rejects(openBackend(spec('nosuch')), oneLine(/no image 'nosuch' in pool 'rbd'/, UsageError));
    await assert.rejects(
      openBackend(`rbd:nopool/x,conf=${cluster.conf}`),
      oneLine(/no pool 'nopool'/, UsageError),
    );
    await assert.rejects(
      openBackend(spec('rw', ',id=nobody,keyring=/dev/null')),
      (e: unknown) => e instanceof Error && !e.message.includes('\n') && /rbd:rbd\/rw: /.test(e.message),
    );
    // nothing listens there: a bounded wait, then one line
    const started = Date.now();
    await assert.rejects(
      openBackend(`rbd:rbd/rw,mon=127.0.0.1:1,keyring=${cluster.keyring},connect-timeout=2`),
      oneLine(/cannot reach the Ceph cluster \(127\.0\.0\.1:1\) within 2 s/, RbdError),
    );
    assert.ok(Date.now() - started < 15_000, `took ${Date.now() - started} ms`);
  });

  it('connects with mon= and a keyring, without a conf file', async () => {
    await cluster.rbd('create', '--size', '32M', 'rbd/noconf');
    const backend = await openBackend(
      `rbd:rbd/noconf,mon=${cluster.monHost},keyring=${cluster.keyring},id=admin,cache=off`,
    );
    try {
      assert.equal(backend.size, 32 * MiB);
    } finally {
      await backend.close();
    }
  });
});
