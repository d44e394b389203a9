// Restart with the inflight region: a back-end dies with writes in flight (its backend never answers them); a new
// back-end takes the VMM's inflight region over and resubmits them in order, and the guest gets every completion.
// And hostile set-ups over a real socket: a clean disconnect, then the next VMM is served.
import assert from 'node:assert/strict';
import { closeSync } from 'node:fs';
import { test } from 'node:test';

import { MemoryBackend } from '../../../src/backends/memory-backend.js';
import { VIRTIO_BLK_S_OK } from '../../../src/uapi/virtio-blk.js';
import { encodeMemoryTable, VhostUserRequest as R } from '../../../src/uapi/vhost-user.js';
import { BlkClient, withTimeout } from '../../../src/testing/vhost-vdpa/blk.js';
import { GatedBackend } from './gated.js';
import {
  connect,
  dieWithSixWrites,
  guestMemory,
  makeBackend,
  pattern,
  resumeOn,
  waitFor,
} from './helpers.js';

test('a new back-end takes over the inflight region and resubmits the writes in flight, in order', async () => {
  const storage = new MemoryBackend({ size: 8 << 20 });
  // the daemon dies: the VMM keeps its rings, memory and the inflight region
  const dead = await dieWithSixWrites(storage, 10);
  const { first: a, gated, mem, inflight } = dead;

  const b = makeBackend({ storage });
  // as QEMU after a crash
  const { vmm: vmm2, used } = await resumeOn(b.backend, dead, 3000);
  try {
    for (let k = 0; k < 6; k++) {
      const back = [new Uint8Array(4096)];
      await storage.read(k * 8 * 512, back);
      assert.deepEqual(back[0], pattern(4096, k + 10), `write ${k} landed`);
    }
    // every write came back on the ring it was sent on
    assert.equal(used[0]!.length, 4);
    assert.equal(used[1]!.length, 2);
    // and the rings go on serving new requests
    const blk2 = new BlkClient(vmm2.queues);
    const r = await withTimeout(blk2.read(8, 4096, { queue: 1 }), 3000, 'read after the restart');
    assert.equal(r.status, VIRTIO_BLK_S_OK);
    assert.deepEqual(r.data, pattern(4096, 11));
    blk2.close();
  } finally {
    gated.release();
    vmm2.close();
    await b.backend.close();
    await a.backend.close();
    closeSync(inflight.fd);
    mem.close();
  }
});

test('hostile set-ups over a socket: a clean disconnect with one line, then the next VMM is served', async () => {
  const { backend, lines } = makeBackend();
  const mem = guestMemory();
  try {
    // ring addresses outside every region
    let vmm = connect(backend);
    await vmm.negotiate();
    await vmm.setMemory(mem);
    await vmm
      .setupQueues({ count: 1, size: 64, addr: (_i, a) => ({ ...a, used: a.used + (64 << 20) }) })
      .catch(() => undefined);
    await vmm.waitClosed();
    assert.ok(
      lines.some((l) => /ring 0: user address 0x[0-9a-f]+ is in no memory region; disconnecting/.test(l)),
      lines.join('\n'),
    );
    vmm.close();
    // overlapping regions
    vmm = connect(backend);
    await vmm.negotiate();
    const m = mem.mapping;
    const table = encodeMemoryTable([
      { guestPhysAddr: 0n, memorySize: 1n << 20n, userspaceAddr: BigInt(m.uaddr), mmapOffset: 0n },
      {
        guestPhysAddr: 1n << 19n,
        memorySize: 1n << 20n,
        userspaceAddr: BigInt(m.uaddr) + (2n << 20n),
        mmapOffset: 0n,
      },
    ]);
    await vmm.acked(R.SET_MEM_TABLE, table, [m.fd, m.fd]).catch(() => undefined);
    await vmm.waitClosed();
    assert.ok(lines.some((l) => /SET_MEM_TABLE: memory regions overlap in guest-physical addresses/.test(l)));
    vmm.close();
    // a region past the end of its fd
    vmm = connect(backend);
    await vmm.negotiate();
    const past = encodeMemoryTable([
      { guestPhysAddr: 0n, memorySize: BigInt(mem.size), userspaceAddr: 0n, mmapOffset: 4096n },
    ]);
    await vmm.acked(R.SET_MEM_TABLE, past, [m.fd]).catch(() => undefined);
    await vmm.waitClosed();
    assert.ok(lines.some((l) => /past the end of its fd/.test(l)));
    vmm.close();
    // garbage bytes
    vmm = connect(backend);
    vmm.sendRaw(Uint8Array.from([1, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]));
    await vmm.waitClosed();
    assert.ok(lines.some((l) => /version 3/.test(l)));
    vmm.close();
    // a VMM that accepts too few features (no VERSION_1)
    vmm = connect(backend);
    await vmm.negotiate({ features: ~(1n << 32n) }).catch(() => undefined);
    await vmm.waitClosed();
    assert.ok(
      lines.some((l) => /did not accept the required features \(0x100000000\)/.test(l)),
      lines.join('\n'),
    );
    vmm.close();
    // a ring whose descriptor table is not 16-byte aligned: the device stops with one line, the VMM may leave
    vmm = connect(backend);
    await vmm.negotiate();
    await vmm.setMemory(mem);
    await vmm.setupQueues({ count: 1, size: 64, addr: (_i, a) => ({ ...a, desc: a.desc + 2 }) });
    await waitFor(
      () => lines.some((l) => /queue 0: ring areas are not aligned/.test(l)),
      'the alignment line',
    );
    vmm.close();
    await waitFor(() => !backend.connected, 'the VMM with the misaligned ring is gone');
    // and a good VMM after all that
    vmm = connect(backend);
    await vmm.negotiate();
    await vmm.setMemory(mem);
    const q = await vmm.setupQueues({ count: 1, size: 64 });
    const blk = new BlkClient(q);
    assert.equal((await withTimeout(blk.write(0, pattern(512, 1)), 3000, 'write')).status, VIRTIO_BLK_S_OK);
    blk.close();
    vmm.close();
    assert.equal(backend.connections, 7);
  } finally {
    await backend.close();
    mem.close();
  }
});

test('a new memory table while a write is in flight: the write completes first, then the rings restart over it', async () => {
  const storage = new MemoryBackend({ size: 8 << 20 });
  const gated = new GatedBackend(storage);
  const { backend } = makeBackend({ storage: gated, numQueues: 1 });
  const mem = guestMemory();
  const vmm = connect(backend);
  try {
    await vmm.negotiate();
    await vmm.setMemory(mem);
    const blk = new BlkClient(await vmm.setupQueues({ count: 1, size: 32 }));
    const write = blk.write(0, pattern(512, 5));
    await waitFor(() => gated.pending.length === 1, 'the write in the backend');
    const ack = vmm.setMemory(mem);
    await new Promise((r) => setTimeout(r, 30));
    assert.equal(backend.servingRings.length, 1, 'still serving while the write is in flight');
    // the backend answers only now: the write comes back, then the table is taken
    const released = setTimeout(() => gated.release(), 20);
    assert.equal((await withTimeout(write, 3000, 'the write in flight')).status, VIRTIO_BLK_S_OK);
    assert.equal(await ack, 0n);
    clearTimeout(released);
    await waitFor(() => backend.servingRings.length === 1, 'serving again');
    const r = await withTimeout(blk.read(0, 512), 3000, 'read over the new table');
    assert.deepEqual(r.data, pattern(512, 5));
    blk.close();
  } finally {
    gated.release();
    vmm.close();
    await backend.close();
    mem.close();
  }
});
