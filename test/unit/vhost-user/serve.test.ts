// End to end over a socketpair: the userspace front-end sets up two rings in a memfd and sends virtio-blk
// requests; the VhostUserBackend serves them with the unchanged VirtioBlkDevice.
import assert from 'node:assert/strict';
import { closeSync } from 'node:fs';
import { test } from 'node:test';

import { VIRTIO_BLK_S_OK } from '../../../src/uapi/virtio-blk.js';
import {
  VHOST_USER_F_PROTOCOL_FEATURES,
  VhostUserProtocolFeature as PF,
} from '../../../src/uapi/vhost-user.js';
import { VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1 } from '../../../src/uapi/virtio-config.js';
import { BlkClient, withTimeout } from '../../../src/testing/vhost-vdpa/blk.js';
import { VhostQueue } from '../../../src/testing/vhost-vdpa/driver.js';
import { EFD_CLOEXEC, EFD_NONBLOCK } from '../../../src/sys/binding.js';
import { VhostUserRequest as R, encodePayloadU64 } from '../../../src/uapi/vhost-user.js';
import { connect, guestMemory, makeBackend, pattern, sys, waitFor } from './helpers.js';

test('two rings: writes and reads on both, config, resize notification, stop, reconnect', async () => {
  const rig = makeBackend();
  const { backend } = rig;
  const mem = guestMemory();
  let vmm = connect(backend);
  try {
    await vmm.negotiate();
    assert.ok((vmm.deviceFeatures & (1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES))) !== 0n);
    assert.ok((vmm.deviceFeatures & (1n << BigInt(VIRTIO_F_VERSION_1))) !== 0n);
    assert.equal(
      vmm.deviceFeatures & (1n << BigInt(VIRTIO_F_ACCESS_PLATFORM)),
      0n,
      'no IOTLB over vhost-user',
    );
    assert.ok(vmm.has(PF.CONFIG) && vmm.has(PF.MQ) && vmm.has(PF.REPLY_ACK) && vmm.has(PF.INFLIGHT_SHMFD));
    assert.equal(vmm.queueNum, 2);
    const config = await vmm.getConfig(0, 60);
    assert.equal(new DataView(config.buffer).getBigUint64(0, true), BigInt((8 << 20) / 512), 'capacity');
    assert.equal(await vmm.openBackendChannel(), 0n);
    assert.equal(await vmm.setMemory(mem), 0n, 'SET_MEM_TABLE acked');
    const inflight = await vmm.getInflight(2, 64);
    assert.equal(await vmm.setInflight(inflight.fd, inflight.payload), 0n);
    const queues = await vmm.setupQueues({ count: 2, size: 64 });
    await waitFor(() => backend.servingRings.length === 2, 'both rings served');
    const blk = new BlkClient(queues);
    const writes = [];
    for (let k = 0; k < 8; k++) writes.push(blk.write(k * 8, pattern(4096, k), { queue: k % 2 }));
    for (const w of await withTimeout(Promise.all(writes), 3000, 'writes'))
      assert.equal(w.status, VIRTIO_BLK_S_OK);
    for (let k = 0; k < 8; k++) {
      const r = await withTimeout(blk.read(k * 8, 4096, { queue: (k + 1) % 2 }), 3000, 'read');
      assert.deepEqual(r.data, pattern(4096, k));
    }
    const id = await blk.getId();
    assert.equal(Buffer.from(id.data).toString('latin1').replace(/\0+$/, ''), 'vu-test');
    assert.ok(backend.counters[0]! > 0 && backend.counters[1]! > 0, 'kicks on both rings');
    // resize: CONFIG_CHANGE_MSG on the backend channel, the new capacity in GET_CONFIG
    await rig.device.resize(16 << 20);
    await waitFor(() => vmm.configChanges === 1, 'CONFIG_CHANGE_MSG');
    const after = await vmm.getConfig(0, 8);
    assert.equal(new DataView(after.buffer).getBigUint64(0, true), BigInt((16 << 20) / 512));
    // stop: GET_VRING_BASE per ring returns the avail index (everything completed first)
    const bases = await vmm.stop();
    assert.equal(bases[0]! + bases[1]!, 17);
    await waitFor(() => backend.servingRings.length === 0, 'rings stopped');
    blk.close();
    vmm.close();
    await waitFor(() => !backend.connected, 'disconnect seen');
    closeSync(inflight.fd);
    // a second VMM on the same backend, no restart
    vmm = connect(backend);
    await vmm.negotiate({ protocolFeatures: (1n << BigInt(PF.CONFIG)) | (1n << BigInt(PF.MQ)) });
    await vmm.setMemory(mem);
    const q2 = await vmm.setupQueues({ count: 1, size: 32 });
    await waitFor(() => backend.servingRings.length === 1, 'one ring served');
    const blk2 = new BlkClient(q2);
    const r = await withTimeout(blk2.read(8, 4096), 3000, 'read after reconnect');
    assert.deepEqual(r.data, pattern(4096, 1));
    blk2.close();
    assert.equal(backend.connections, 2);
  } finally {
    vmm.close();
    await backend.close();
    mem.close();
  }
});

test('without REPLY_ACK nothing is acked; with it, a refused SET_CONFIG is acked as a failure', async () => {
  const { backend, lines } = makeBackend();
  const mem = guestMemory();
  const vmm = connect(backend);
  try {
    await vmm.negotiate();
    const { VhostUserRequest: R, encodeConfig } = await import('../../../src/uapi/vhost-user.js');
    const ack = await vmm.acked(
      R.SET_CONFIG,
      encodeConfig({ offset: 32, size: 1, flags: 0, data: new Uint8Array([1]) }),
    );
    assert.equal(ack, 1n);
    assert.ok(lines.some((l) => /SET_CONFIG .* refused/.test(l)));
    assert.ok(backend.connected, 'a refused SET_CONFIG keeps the connection');
  } finally {
    vmm.close();
    await backend.close();
    mem.close();
  }
});

test('a new kick fd for a served ring: the ring is restarted on it and goes on serving', async () => {
  const { backend } = makeBackend({ numQueues: 1 });
  const mem = guestMemory();
  const vmm = connect(backend);
  try {
    await vmm.negotiate();
    await vmm.setMemory(mem);
    const [q] = await vmm.setupQueues({ count: 1, size: 32 });
    const blk = new BlkClient([q!]);
    await withTimeout(blk.write(0, pattern(512, 3)), 3000, 'write');
    blk.close();
    let starts = 0;
    backend.on('started', () => starts++);
    const kick2 = sys.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    vmm.send(R.SET_VRING_KICK, encodePayloadU64(0n), [kick2]);
    await waitFor(() => starts === 1, 'the restart on the new kick');
    const q2 = new VhostQueue(0, q!.driver, kick2, q!.callFd, sys, () => undefined);
    const blk2 = new BlkClient([q2]);
    const r = await withTimeout(blk2.read(0, 512), 3000, 'read kicked through the new fd');
    assert.deepEqual(r.data, pattern(512, 3));
    blk2.close();
    closeSync(kick2);
  } finally {
    vmm.close();
    await backend.close();
    mem.close();
  }
});
