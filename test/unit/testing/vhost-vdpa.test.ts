// The userspace vhost-vdpa driver (src/testing/vhost-vdpa) against a fake /dev/vhost-vdpa-N on FakeBinding: the
// order and content of its ioctls and IOTLB messages, and requests carried to a device queue and back.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { FakeBinding } from '../../../src/testing/fake-binding.js';
import {
  BlkClient,
  VhostVdpaDriver,
  findMapping,
  initialVringBase,
} from '../../../src/testing/vhost-vdpa/index.js';
import * as uapi from '../../../src/uapi/index.js';

const bit = (n: number): bigint => 1n << BigInt(n);
const OFFERED =
  bit(uapi.VIRTIO_F_VERSION_1) |
  bit(uapi.VIRTIO_F_ACCESS_PLATFORM) |
  bit(uapi.VIRTIO_F_RING_PACKED) |
  bit(uapi.VIRTIO_RING_F_EVENT_IDX) |
  bit(uapi.VIRTIO_BLK_F_FLUSH) |
  bit(uapi.VIRTIO_BLK_F_MQ);
const UADDR = 0x7f12_3400_0000;

/** The ioctl names, by number, from the uapi module. */
const NAMES = new Map<number, string>(
  Object.entries(uapi)
    .filter(([k, v]) => /^VHOST_/.test(k) && typeof v === 'number' && v > 0xffff)
    .map(([k, v]) => [v as number, k]),
);
NAMES.set(uapi.VHOST_SET_OWNER, 'VHOST_SET_OWNER');

function fakeDevice(options: { refuseFeaturesOk?: boolean } = {}) {
  const fb = new FakeBinding();
  const calls: { name: string; arg: Uint8Array | number }[] = [];
  const msgs: uapi.VhostMsgV2[] = [];
  const statuses: number[] = [];
  let status = 0;
  let features = 0n;
  const u64 = (a: Uint8Array | number, v?: bigint): bigint => {
    const d = new DataView((a as Uint8Array).buffer, (a as Uint8Array).byteOffset, 8);
    if (v !== undefined) d.setBigUint64(0, v, true);
    return d.getBigUint64(0, true);
  };
  const fd = fb.openDevice({
    write(buf) {
      msgs.push(uapi.decodeVhostMsgV2(buf));
      return buf.length;
    },
    ioctl(request, arg) {
      const name = NAMES.get(request) ?? `0x${request.toString(16)}`;
      calls.push({ name, arg: typeof arg === 'number' ? arg : arg.slice() });
      const a = arg as Uint8Array;
      const dv = typeof arg === 'number' ? null : new DataView(a.buffer, a.byteOffset, a.byteLength);
      switch (request) {
        case uapi.VHOST_GET_BACKEND_FEATURES:
          u64(arg, 0x6n | 0x8n);
          break;
        case uapi.VHOST_VDPA_GET_DEVICE_ID:
          dv!.setUint32(0, 2, true);
          break;
        case uapi.VHOST_VDPA_GET_VQS_COUNT:
          dv!.setUint32(0, 2, true);
          break;
        case uapi.VHOST_VDPA_GET_CONFIG_SIZE:
          dv!.setUint32(0, 60, true);
          break;
        case uapi.VHOST_VDPA_GET_VRING_NUM:
          dv!.setUint16(0, 256, true);
          break;
        case uapi.VHOST_VDPA_GET_IOVA_RANGE:
          uapi.encodeStruct(uapi.vhost_vdpa_iova_range, { first: 0n, last: (1n << 64n) - 1n }, a);
          break;
        case uapi.VHOST_GET_FEATURES:
          u64(arg, OFFERED);
          break;
        case uapi.VHOST_SET_FEATURES:
          features = u64(arg);
          break;
        case uapi.VHOST_VDPA_GET_STATUS:
          a[0] = status;
          break;
        case uapi.VHOST_VDPA_SET_STATUS: {
          const s = a[0] as number;
          statuses.push(s);
          if (!(options.refuseFeaturesOk && s & uapi.VIRTIO_CONFIG_S_FEATURES_OK)) status = s;
          break;
        }
        case uapi.VHOST_GET_VRING_BASE:
          dv!.setUint32(4, 0x1234 + dv!.getUint32(0, true), true);
          break;
        case uapi.VHOST_VDPA_GET_CONFIG: {
          const off = dv!.getUint32(0, true);
          a.fill(0x40 + off, 8);
          break;
        }
      }
      return 0;
    },
  });
  const host = { open: () => fd, closeFd: (f: number) => fb.close(f), locate: () => UADDR };
  return { fb, fd, calls, msgs, statuses, host, features: () => features };
}

describe('VhostVdpaDriver', () => {
  it('opens as a VMM does: SET_OWNER first, IOTLB_MSG_V2 + BATCH, then the queries', () => {
    const dev = fakeDevice();
    const drv = VhostVdpaDriver.open('/dev/vhost-vdpa-9', { binding: dev.fb, host: dev.host });
    assert.equal(dev.calls[0]?.name, 'VHOST_SET_OWNER');
    const set = dev.calls.find((c) => c.name === 'VHOST_SET_BACKEND_FEATURES');
    assert.ok(set);
    assert.equal(
      new DataView((set.arg as Uint8Array).buffer).getBigUint64(0, true),
      0x6n,
      'only what it needs',
    );
    assert.deepEqual(
      [drv.deviceId, drv.vqCount, drv.configSize, drv.maxQueueSize, drv.deviceFeatures],
      [2, 2, 60, 256, OFFERED],
    );
    drv.close();
    assert.equal(dev.fb.isOpen(dev.fd), false, 'the device fd is closed');
  });

  it('negotiates: reset, ACK, DRIVER, features (offered & wanted, plus VERSION_1 and ACCESS_PLATFORM), FEATURES_OK', () => {
    const dev = fakeDevice();
    const drv = VhostVdpaDriver.open('/x', { binding: dev.fb, host: dev.host });
    const f = drv.negotiate(bit(uapi.VIRTIO_RING_F_EVENT_IDX) | bit(uapi.VIRTIO_RING_F_INDIRECT_DESC));
    const want =
      bit(uapi.VIRTIO_F_VERSION_1) | bit(uapi.VIRTIO_F_ACCESS_PLATFORM) | bit(uapi.VIRTIO_RING_F_EVENT_IDX);
    assert.equal(f, want, 'INDIRECT_DESC is not offered, so not taken');
    assert.equal(dev.features(), want);
    assert.deepEqual(dev.statuses, [0, 1, 3, 11]);
    drv.close();
  });

  it('fails with a typed error when the device does not keep FEATURES_OK', () => {
    const dev = fakeDevice({ refuseFeaturesOk: true });
    const drv = VhostVdpaDriver.open('/x', { binding: dev.fb, host: dev.host });
    assert.throws(() => drv.negotiate(0n), { code: 'ERR_TESTING_VHOST_VDPA' });
    drv.close();
  });

  it('maps its memfd in one IOTLB batch, sets up the rings by IOVA, and carries a request to the device and back', async () => {
    const dev = fakeDevice();
    const drv = VhostVdpaDriver.open('/x', { binding: dev.fb, host: dev.host });
    drv.negotiate(bit(uapi.VIRTIO_F_RING_PACKED) | bit(uapi.VIRTIO_RING_F_EVENT_IDX));
    const mem = drv.allocMemory(1 << 20);
    assert.deepEqual(
      dev.msgs.map((m) => [m.type, m.asid, m.iotlb_type, m.iova, m.size, m.uaddr, m.perm]),
      [
        [uapi.VHOST_IOTLB_MSG_V2, 0, uapi.VHOST_IOTLB_BATCH_BEGIN, 0, 0, 0, 0],
        [
          uapi.VHOST_IOTLB_MSG_V2,
          0,
          uapi.VHOST_IOTLB_UPDATE,
          0x4000_0000,
          1 << 20,
          UADDR,
          uapi.VHOST_ACCESS_RW,
        ],
        [uapi.VHOST_IOTLB_MSG_V2, 0, uapi.VHOST_IOTLB_BATCH_END, 0, 0, 0, 0],
      ],
    );
    const before = dev.calls.length;
    const [q] = drv.setupQueues({ count: 1, size: 64, eventIdx: true });
    assert.ok(q);
    const names = dev.calls.slice(before).map((c) => c.name);
    assert.deepEqual(names, [
      'VHOST_SET_VRING_NUM',
      'VHOST_SET_VRING_ADDR',
      'VHOST_SET_VRING_BASE',
      'VHOST_SET_VRING_KICK',
      'VHOST_SET_VRING_CALL',
      'VHOST_VDPA_SET_VRING_ENABLE',
    ]);
    const arg = (n: string) => dev.calls.slice(before).find((c) => c.name === n)!.arg as Uint8Array;
    const addr = uapi.decodeStruct(uapi.vhost_vring_addr, arg('VHOST_SET_VRING_ADDR'));
    const c = q.driver.config;
    assert.equal(q.driver.packed, true, 'packed because negotiated');
    assert.deepEqual(
      [addr.desc_user_addr, addr.avail_user_addr, addr.used_user_addr],
      [c.descAddr, c.driverAddr, c.deviceAddr],
    );
    assert.ok(c.descAddr >= mem.iova && c.descAddr < mem.iova + mem.size, 'ring addresses are IOVAs');
    assert.equal(
      uapi.decodeStruct(uapi.vhost_vring_state, arg('VHOST_SET_VRING_BASE')).num,
      initialVringBase(true),
    );
    assert.equal(uapi.decodeStruct(uapi.vhost_vring_file, arg('VHOST_SET_VRING_CALL')).fd, q.callFd);
    drv.driverOk();

    // The device side: a virtqueue over the same memory; its used-buffer notification is the call eventfd.
    const devq = q.driver.createDeviceQueue({ signal: () => dev.fb.eventfdWrite(q.callFd, 1) });
    const blk = new BlkClient([q]);
    const data = new Uint8Array(512).fill(7);
    const done = blk.write(3, data);
    assert.equal(dev.fb.eventfdCounter(q.kickFd), 1, 'kicked');
    const chain = devq.pop();
    assert.ok(chain);
    assert.equal(
      new DataView(chain.readable[0]!.buffer, chain.readable[0]!.byteOffset).getUint32(0, true),
      uapi.VIRTIO_BLK_T_OUT,
    );
    assert.deepEqual(chain.readable[1], data);
    chain.writable[0]![0] = uapi.VIRTIO_BLK_S_OK;
    devq.addUsed(chain, 1);
    devq.publish();
    const r = await done;
    assert.equal(r.status, 0);
    assert.deepEqual(blk.errors, []);
    blk.close();

    const stopAt = dev.calls.length;
    assert.deepEqual(drv.stop(), [0x1234]);
    assert.deepEqual(
      dev.calls.slice(stopAt).map((x) => x.name),
      ['VHOST_GET_VRING_BASE', 'VHOST_VDPA_SET_STATUS', 'VHOST_VDPA_GET_STATUS'],
    );
    drv.close();
    assert.deepEqual(dev.fb.openFds(), [], 'every fd closed (device, memfd, kick, call)');
  });
});

describe('findMapping', () => {
  const maps = [
    '55d000000000-55d000001000 r--p 00000000 08:01 123   /usr/bin/node',
    '7f0000000000-7f0000100000 rw-s 00000000 00:01 42     /memfd:vhost-vdpa-7-1 (deleted)',
    '7f0000200000-7f0000400000 rw-s 00000000 00:01 43     /memfd:vhost-vdpa-7-2 (deleted)',
  ].join('\n');
  it('finds a memfd mapping by name and size', () => {
    assert.equal(findMapping('/memfd:vhost-vdpa-7-2', 0x200000, maps), 0x7f0000200000);
  });
  it('returns null for another size or name', () => {
    assert.equal(findMapping('/memfd:vhost-vdpa-7-1', 0x200000, maps), null);
    assert.equal(findMapping('/memfd:vhost-vdpa-7-3', 0x100000, maps), null);
  });
});
