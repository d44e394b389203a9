import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { UsageError } from '../../../src/common/errors.js';

import { createPacketPair } from '../../../src/backends/packet/index.js';
import {
  NET_CONFIG_SPACE_SIZE,
  VirtioNetDevice,
  formatMac,
  macFromName,
  parseMac,
} from '../../../src/devices/net/index.js';
import { bit, VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1 } from '../../../src/uapi/virtio-config.js';
import {
  VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_CTRL_VQ,
  VIRTIO_NET_F_GUEST_CSUM,
  VIRTIO_NET_F_GUEST_TSO4,
  VIRTIO_NET_F_HOST_TSO4,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MQ,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_MTU,
  VIRTIO_NET_F_STATUS,
  VIRTIO_NET_HDR_F_DATA_VALID,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_GSO_TCPV4,
  VIRTIO_NET_HDR_GSO_UDP,
  VIRTIO_NET_S_LINK_UP,
  decodeVirtioNetConfig,
  decodeVirtioNetHdr,
  encodeVirtioNetHdr,
} from '../../../src/uapi/virtio-net.js';
import { NetHarness, frame, settle } from './harness.js';

const has = (features: bigint, b: number): boolean => (features & bit(b)) !== 0n;
const without =
  (...bits: number[]) =>
  (offered: bigint) =>
    bits.reduce((f, b) => f & ~bit(b), offered);

describe('virtio-net features and config space', () => {
  it('offers VERSION_1, ACCESS_PLATFORM, MAC, STATUS, MTU, MRG_RXBUF; offloads only with a vnet-header backend', () => {
    const [plain] = createPacketPair();
    const f = new VirtioNetDevice({ backend: plain, name: 'n0' }).features;
    for (const b of [
      VIRTIO_F_VERSION_1,
      VIRTIO_F_ACCESS_PLATFORM,
      VIRTIO_NET_F_MAC,
      VIRTIO_NET_F_STATUS,
      VIRTIO_NET_F_MTU,
      VIRTIO_NET_F_MRG_RXBUF,
    ])
      assert.ok(has(f, b), `bit ${b}`);
    for (const b of [
      VIRTIO_NET_F_CSUM,
      VIRTIO_NET_F_GUEST_CSUM,
      VIRTIO_NET_F_HOST_TSO4,
      VIRTIO_NET_F_CTRL_VQ,
      VIRTIO_NET_F_MQ,
    ])
      assert.ok(!has(f, b), `bit ${b}`);
    const [vnet] = createPacketPair({ vnetHeader: true, offloads: { csum: true, tso4: true, tso6: true } });
    const g = new VirtioNetDevice({ backend: vnet, name: 'n0' }).features;
    for (const b of [
      VIRTIO_NET_F_CSUM,
      VIRTIO_NET_F_GUEST_CSUM,
      VIRTIO_NET_F_HOST_TSO4,
      VIRTIO_NET_F_GUEST_TSO4,
    ])
      assert.ok(has(g, b), `bit ${b}`);
    assert.ok(!has(g, VIRTIO_NET_F_CTRL_VQ));
    const h = new VirtioNetDevice({ backend: vnet, offloads: false }).features;
    assert.ok(!has(h, VIRTIO_NET_F_CSUM));
    const m = new VirtioNetDevice({ backend: plain, mergeableRxBuffers: false }).features;
    assert.ok(!has(m, VIRTIO_NET_F_MRG_RXBUF));
  });

  it('refuses feature sets without the required bits, with extra bits, or breaking dependencies', () => {
    const [vnet] = createPacketPair({ vnetHeader: true, offloads: { csum: true, tso4: true, tso6: true } });
    const d = new VirtioNetDevice({ backend: vnet });
    assert.equal(d.negotiate(d.features & ~bit(VIRTIO_F_ACCESS_PLATFORM)), false);
    assert.equal(d.negotiate(d.features | bit(VIRTIO_NET_F_CTRL_VQ)), false);
    assert.equal(
      d.negotiate(d.features & ~bit(VIRTIO_NET_F_GUEST_CSUM)),
      false,
      'GUEST_TSO4 needs GUEST_CSUM',
    );
    assert.equal(d.negotiate(d.features & ~bit(VIRTIO_NET_F_CSUM)), false, 'HOST_TSO4 needs CSUM');
    assert.equal(d.negotiate(d.features), true);
  });

  it('config space: mac, status, max_virtqueue_pairs 1, mtu; the whole 24-byte struct', () => {
    const [a] = createPacketPair();
    const d = new VirtioNetDevice({ backend: a, mac: '52:54:00:12:34:56', mtu: 9000 });
    const c = d.config();
    assert.equal(c.length, NET_CONFIG_SPACE_SIZE);
    assert.equal(c.length, 24);
    const v = decodeVirtioNetConfig(c);
    assert.equal(formatMac(v.mac), '52:54:00:12:34:56');
    assert.equal(v.status, VIRTIO_NET_S_LINK_UP);
    assert.equal(v.max_virtqueue_pairs, 1);
    assert.equal(v.mtu, 9000);
    assert.equal(d.numQueues, 2);
    assert.equal(d.deviceId, 1);
  });

  it('MACs: parsed and checked; the default is stable per name, locally administered and unicast', () => {
    assert.deepEqual([...parseMac('02-00-00-aa-bb-cc')], [2, 0, 0, 0xaa, 0xbb, 0xcc]);
    assert.throws(() => parseMac('01:00:5e:00:00:01'), /multicast/);
    assert.throws(
      () => parseMac('zz'),
      (e: unknown) => e instanceof UsageError && e.code === 'ERR_NET_OPTION' && !e.message.includes('\n'),
    );
    assert.throws(() => parseMac('00:00:00:00:00:00'), /not an address/);
    assert.throws(() => parseMac('52:54:00:12:34'), /six hex pairs/);
    const m = macFromName('vm0');
    assert.deepEqual(m, macFromName('vm0'));
    assert.notDeepEqual(m, macFromName('vm1'));
    assert.equal(m[0]! & 3, 2);
    assert.equal(macFromName(undefined)[0]! & 3, 2);
    const [a] = createPacketPair();
    assert.throws(() => new VirtioNetDevice({ backend: a, mtu: 67 }), /mtu/);
    assert.throws(() => new VirtioNetDevice({ backend: a, queueSize: 100 }), /queueSize/);
  });
});

describe('virtio-net transmit', () => {
  it('hands the backend every frame byte for byte, whatever the descriptor split', async () => {
    const [dev, wire] = createPacketPair();
    const h = new NetHarness({ backend: dev });
    h.activate();
    const frames = [frame(60, 1), frame(1514, 2), frame(1000, 3)];
    h.transmit(frames[0]!);
    h.transmit(frames[1]!, {}, 101); // header and frame split over 101-byte descriptors
    h.transmitParts([new Uint8Array(12), frames[2]!.subarray(0, 3), frames[2]!.subarray(3)]); // header alone
    await settle();
    for (const f of frames) assert.deepEqual(wire.take(), f);
    assert.equal(wire.take(), null);
    const used = h.txUsed();
    assert.equal(used.length, 3);
    assert.ok(used.every((u) => u.len === 0));
    assert.equal(h.device.stats.txPackets, 3);
    assert.equal(h.device.stats.txBytes, 60 + 1514 + 1000);
    assert.equal(h.device.stats.txDropped, 0);
  });

  it('passes the guest header through to a vnet-header backend (checksum and TSO offloads)', async () => {
    const [dev, wire] = createPacketPair({
      vnetHeader: true,
      offloads: { csum: true, tso4: true, tso6: true },
    });
    const h = new NetHarness({ backend: dev });
    h.activate();
    const big = frame(20000);
    const hdr = {
      flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
      gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
      hdr_len: 54,
      gso_size: 1448,
      csum_start: 34,
      csum_offset: 16,
    };
    h.transmit(big, hdr, 4096);
    await settle();
    const got = wire.take()!;
    assert.equal(got.length, 12 + big.length);
    const g = decodeVirtioNetHdr(got);
    assert.equal(g.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM);
    assert.equal(g.gso_type, VIRTIO_NET_HDR_GSO_TCPV4);
    assert.equal(g.gso_size, 1448);
    assert.equal(g.csum_start, 34);
    assert.equal(g.csum_offset, 16);
    assert.deepEqual(got.subarray(12), big);
    assert.equal(h.device.stats.txBytes, 20000);
  });

  it('drops (and counts) runts, oversized frames and offloads that were not negotiated; the ring keeps going', async () => {
    const [dev, wire] = createPacketPair({
      vnetHeader: true,
      offloads: { csum: true, tso4: true, tso6: true },
    });
    const h = new NetHarness(
      { backend: dev, mtu: 1500 },
      { features: without(VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_GUEST_TSO4, 12, 8) },
    );
    h.activate();
    h.transmit(frame(13)); // shorter than an Ethernet header
    h.transmit(frame(1519)); // MTU + 18 + 1
    h.transmit(frame(100), { gso_type: VIRTIO_NET_HDR_GSO_TCPV4, flags: VIRTIO_NET_HDR_F_NEEDS_CSUM }); // not negotiated
    h.transmit(frame(100), { gso_type: VIRTIO_NET_HDR_GSO_UDP, flags: VIRTIO_NET_HDR_F_NEEDS_CSUM }); // never offered
    h.transmit(frame(1518)); // fine: MTU + Ethernet + VLAN
    await settle();
    assert.equal(h.txUsed().length, 5);
    const only = wire.take()!;
    assert.deepEqual(only.subarray(12), frame(1518));
    assert.equal(wire.take(), null);
    assert.equal(h.device.stats.txDropped, 4);
    assert.equal(h.device.stats.driverErrors, 4);
    assert.equal(h.device.stats.txPackets, 1);
    assert.equal(h.host.resets.length, 0);
    assert.ok(h.warnings.some((w) => /shorter than an Ethernet header/.test(w)));
  });

  it('checksum offload without CSUM negotiated is dropped (plain backend)', async () => {
    const [dev, wire] = createPacketPair();
    const h = new NetHarness({ backend: dev });
    h.activate();
    h.transmit(frame(100), { flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start: 34, csum_offset: 6 });
    await settle();
    assert.equal(wire.take(), null);
    assert.equal(h.device.stats.txDropped, 1);
  });

  it('a transmit chain shorter than the header is a driver error: needs reset, both queues stop', async () => {
    const [dev, wire] = createPacketPair();
    const h = new NetHarness({ backend: dev });
    h.activate();
    h.transmitRaw(new Uint8Array(11));
    h.transmit(frame(64));
    await settle();
    assert.equal(h.host.resets.length, 1);
    assert.equal((h.host.resets[0] as { code?: string }).code, 'ERR_NET_DRIVER');
    assert.match(h.host.resets[0]!.message, /11 readable bytes/);
    assert.equal(wire.take(), null, 'nothing is sent after the error');
    h.postRx(1, 2048);
    wire.inject(frame(64));
    await settle();
    assert.equal(h.rxUsed().length, 0, 'nothing is received either');
  });

  it('back-pressure: a full backend stops the ring, nothing is dropped, writable() resumes', async () => {
    const [dev, wire] = createPacketPair({ capacity: 2 });
    const h = new NetHarness({ backend: dev });
    h.activate();
    for (let i = 0; i < 6; i++) h.transmit(frame(100, i));
    await settle();
    assert.equal(wire.pending, 2);
    assert.equal(h.txUsed().length, 2, 'only the frames the backend took are completed');
    // The wire takes frames: the device goes on with the one it held, in order.
    const got: Uint8Array[] = [];
    for (let round = 0; round < 10 && got.length < 6; round++) {
      let f: Uint8Array | null;
      while ((f = wire.take()) !== null) got.push(f);
      await settle();
    }
    assert.equal(got.length, 6);
    got.forEach((f, i) => assert.deepEqual(f, frame(100, i)));
    assert.equal(h.device.stats.txDropped, 0);
    assert.equal(h.device.stats.txPackets, 6);
  });

  it('link down drops transmitted frames (counted)', async () => {
    const [dev, wire] = createPacketPair();
    const h = new NetHarness({ backend: dev });
    h.activate();
    h.device.setLinkUp(false);
    h.transmit(frame(100));
    await settle();
    assert.equal(wire.take(), null);
    assert.equal(h.device.stats.txDropped, 1);
    assert.equal(h.txUsed().length, 1);
  });
});

describe('virtio-net receive', () => {
  it('fills posted buffers: a zero header with num_buffers 1 and the frame, used length = 12 + frame', async () => {
    const [dev, wire] = createPacketPair();
    const h = new NetHarness({ backend: dev }, { features: without(VIRTIO_NET_F_MRG_RXBUF) });
    h.activate();
    h.postRx(4, 1526 + 4);
    const frames = [frame(60, 1), frame(1514, 2)];
    for (const f of frames) wire.inject(f);
    await settle();
    const used = h.rxUsed();
    assert.equal(used.length, 2);
    used.forEach((u, i) => {
      assert.equal(u.len, 12 + frames[i]!.length);
      const hdr = decodeVirtioNetHdr(u.written);
      assert.deepEqual(hdr, {
        flags: 0,
        gso_type: 0,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
        num_buffers: 1,
      });
      assert.deepEqual(u.written.subarray(12), frames[i]);
    });
    assert.equal(h.device.stats.rxPackets, 2);
    assert.equal(h.device.stats.rxBytes, 60 + 1514);
  });

  it('works with buffers split at any byte, the header too', async () => {
    const [dev, wire] = createPacketPair();
    const h = new NetHarness({ backend: dev }, { features: without(VIRTIO_NET_F_MRG_RXBUF) });
    h.activate();
    h.postRx(1, [5, 9, 100, 2000]);
    wire.inject(frame(1500, 9));
    await settle();
    const [u] = h.rxUsed();
    assert.equal(u!.len, 1512);
    assert.equal(decodeVirtioNetHdr(u!.written).num_buffers, 1);
    assert.deepEqual(u!.written.subarray(12), frame(1500, 9));
  });

  it('MRG_RXBUF: a frame spans several buffers, num_buffers in the first header, lengths per buffer', async () => {
    const [dev, wire] = createPacketPair();
    const h = new NetHarness({ backend: dev, mtu: 9000 });
    h.activate();
    h.postRx(16, 1024);
    const f = frame(4000, 5);
    wire.inject(f);
    wire.inject(frame(100, 6));
    await settle();
    const used = h.rxUsed();
    assert.deepEqual(
      used.map((u) => u.len),
      [1024, 1024, 1024, 940, 112],
    );
    const all = new Uint8Array(4012);
    let off = 0;
    for (const u of used.slice(0, 4)) {
      all.set(u.written, off);
      off += u.len;
    }
    assert.equal(decodeVirtioNetHdr(all).num_buffers, 4);
    assert.deepEqual(all.subarray(12), f);
    assert.equal(decodeVirtioNetHdr(used[4]!.written).num_buffers, 1);
    assert.deepEqual(used[4]!.written.subarray(12), frame(100, 6));
  });

  it('MRG_RXBUF: a frame longer than the posted buffers waits in the overflow area for more, then lands whole', async () => {
    const [dev, wire] = createPacketPair();
    const h = new NetHarness({ backend: dev, mtu: 9000 });
    h.activate();
    h.postRx(2, 1024);
    const f = frame(5000, 7);
    wire.inject(f);
    await settle();
    assert.equal(h.rxUsed().length, 0, 'not delivered while it does not fit');
    assert.equal(h.device.stats.rxDropped, 0);
    h.postRx(4, 1024);
    await settle();
    const used = h.rxUsed();
    assert.equal(used.length, 5);
    const all = new Uint8Array(5012);
    let off = 0;
    for (const u of used) {
      all.set(u.written, off);
      off += u.len;
    }
    assert.equal(off, 5012);
    assert.equal(decodeVirtioNetHdr(all).num_buffers, 5);
    assert.deepEqual(all.subarray(12), f);
  });

  it('without MRG_RXBUF a frame that does not fit its buffer is dropped; the buffer is used for the next frame', async () => {
    const [dev, wire] = createPacketPair();
    const h = new NetHarness({ backend: dev }, { features: without(VIRTIO_NET_F_MRG_RXBUF) });
    h.activate();
    h.postRx(1, 512);
    wire.inject(frame(1000, 1));
    wire.inject(frame(400, 2));
    await settle();
    const used = h.rxUsed();
    assert.equal(used.length, 1);
    assert.deepEqual(used[0]!.written.subarray(12), frame(400, 2));
    assert.equal(h.device.stats.rxDropped, 1);
    assert.ok(h.warnings.some((w) => /does not fit the receive buffer/.test(w)));
  });

  it('frames longer than the MTU allows are dropped, not cut', async () => {
    const [dev, wire] = createPacketPair();
    const h = new NetHarness({ backend: dev, mtu: 1500 });
    h.activate();
    h.postRx(8, 4096);
    wire.inject(frame(1519));
    wire.inject(frame(1518));
    await settle();
    const used = h.rxUsed();
    assert.equal(used.length, 1);
    assert.equal(used[0]!.len, 12 + 1518);
    assert.equal(h.device.stats.rxDropped, 1);
  });

  it('with receive TSO: a frame without gso longer than the MTU is dropped; a gso frame of that size is not', async () => {
    const [dev, wire] = createPacketPair({
      vnetHeader: true,
      offloads: { csum: true, tso4: true, tso6: true },
    });
    const h = new NetHarness({ backend: dev, mtu: 1400 });
    h.activate();
    h.postRx(8, 70000);
    await settle();
    const hdrOf = (hdr: Parameters<typeof encodeVirtioNetHdr>[0], f: Uint8Array): Uint8Array => {
      const bytes = new Uint8Array(12 + f.length);
      encodeVirtioNetHdr(hdr, bytes);
      bytes.set(f, 12);
      return bytes;
    };
    wire.inject(hdrOf({}, frame(1419))); // MTU + 18 + 1, no gso
    wire.inject(hdrOf({}, frame(1418)));
    wire.inject(
      hdrOf(
        {
          flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
          gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
          gso_size: 1348,
          hdr_len: 54,
          csum_start: 34,
          csum_offset: 16,
        },
        frame(9000),
      ),
    );
    await settle();
    assert.deepEqual(
      h.rxUsed().map((u) => u.len),
      [12 + 1418, 12 + 9000],
    );
    assert.equal(h.device.stats.rxDropped, 1);
    assert.ok(h.warnings.some((w) => /1419 bytes without gso, longer than the MTU allows/.test(w)));
  });

  it('a receive chain with less room than the header, or readable descriptors, needs a reset', async () => {
    for (const spec of [{ writable: [11] }, { readable: [16], writable: [2048] }]) {
      const [dev, wire] = createPacketPair();
      const h = new NetHarness({ backend: dev });
      h.activate();
      h.rx.addChain(spec);
      if (h.rx.kick()) h.device.queueNotify(0);
      wire.inject(frame(64));
      await settle();
      assert.equal(h.host.resets.length, 1, JSON.stringify(spec));
      assert.equal(h.rxUsed().length, 0);
      assert.equal(dev.receiving, false);
    }
  });

  it('back-pressure: no buffers, no reading (nothing dropped); posting buffers resumes it', async () => {
    const [dev, wire] = createPacketPair({ capacity: 8 });
    const h = new NetHarness({ backend: dev });
    h.activate();
    assert.equal(dev.receiving, false, 'no buffers yet: the backend is not read');
    for (let i = 0; i < 5; i++) assert.ok(wire.inject(frame(100, i)));
    await settle();
    assert.equal(wire.peer!.pending, 5, 'frames wait in the backend');
    assert.equal(h.device.stats.rxDropped, 0);
    h.postRx(2, 2048);
    await settle();
    assert.equal(h.rxUsed().length, 2);
    assert.equal(dev.receiving, false, 'out of buffers again');
    assert.equal(wire.peer!.pending, 3);
    h.postRx(8, 2048);
    await settle();
    const used = h.rxUsed();
    assert.equal(used.length, 3);
    used.forEach((u, i) => assert.deepEqual(u.written.subarray(12), frame(100, i + 2)));
    assert.equal(dev.receiving, true, 'buffers left: waiting for frames');
    assert.equal(h.device.stats.rxDropped, 0);
    // The sender was blocked while the device had no buffers only if the wire was full; here it never was.
    assert.equal(h.device.stats.rxPackets, 5);
  });

  it('vnet-header backend: offload headers reach the guest as negotiated; num_buffers set by the device', async () => {
    const [dev, wire] = createPacketPair({
      vnetHeader: true,
      offloads: { csum: true, tso4: true, tso6: true },
    });
    const h = new NetHarness({ backend: dev });
    h.activate();
    await settle();
    assert.deepEqual(dev.enabledOffloads, { csum: true, tso4: true, tso6: true, ecn: false });
    h.postRx(64, 1536);
    const payload = frame(30000, 3);
    const hdr = encodeVirtioNetHdr({
      flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
      gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
      hdr_len: 54,
      gso_size: 1448,
      csum_start: 34,
      csum_offset: 16,
      num_buffers: 0x7777, // whatever the backend left there: the device owns it
    });
    const withHdr = new Uint8Array(12 + payload.length);
    withHdr.set(hdr);
    withHdr.set(payload, 12);
    wire.inject(withHdr);
    await settle();
    const used = h.rxUsed();
    const total = used.reduce((s, u) => s + u.len, 0);
    assert.equal(total, 12 + 30000);
    assert.equal(used.length, Math.ceil((12 + 30000) / 1536));
    const all = new Uint8Array(total);
    let off = 0;
    for (const u of used) {
      all.set(u.written, off);
      off += u.len;
    }
    const g = decodeVirtioNetHdr(all);
    assert.equal(g.num_buffers, used.length);
    assert.equal(g.gso_type, VIRTIO_NET_HDR_GSO_TCPV4);
    assert.equal(g.gso_size, 1448);
    assert.equal(g.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM);
    assert.deepEqual(all.subarray(12), payload);
  });

  it('activate() makes no backend control call itself (TUNSETOFFLOAD takes rtnl, held by virtio_net while it waits for DRIVER_OK)', async () => {
    const [dev] = createPacketPair({ vnetHeader: true, offloads: { csum: true, tso4: true, tso6: true } });
    const calls: string[] = [];
    let inside = false;
    dev.setOffloads = () => void calls.push(inside ? 'inside' : 'later');
    const h = new NetHarness({ backend: dev });
    inside = true;
    h.activate();
    inside = false;
    await settle();
    assert.deepEqual(calls, ['later']);
    // A reset before the deferred call: nothing for the old activation.
    h.activate();
    await h.device.reset();
    await settle();
    assert.deepEqual(calls, ['later']);
  });

  it('vnet-header backend without GUEST_CSUM: receive offloads off, DATA_VALID cleared, partial checksums dropped', async () => {
    const [dev, wire] = createPacketPair({
      vnetHeader: true,
      offloads: { csum: true, tso4: true, tso6: true },
    });
    const h = new NetHarness(
      { backend: dev },
      { features: without(VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, 8, 9) },
    );
    h.activate();
    await settle();
    assert.deepEqual(dev.enabledOffloads, { csum: false, tso4: false, tso6: false, ecn: false });
    h.postRx(8, 2048);
    const mk = (flags: number): Uint8Array => {
      const b = new Uint8Array(12 + 100);
      encodeVirtioNetHdr({ flags }, b);
      b.set(frame(100), 12);
      return b;
    };
    wire.inject(mk(VIRTIO_NET_HDR_F_DATA_VALID));
    wire.inject(mk(VIRTIO_NET_HDR_F_NEEDS_CSUM));
    await settle();
    const used = h.rxUsed();
    assert.equal(used.length, 1);
    assert.equal(decodeVirtioNetHdr(used[0]!.written).flags, 0);
    assert.equal(h.device.stats.rxDropped, 1);
  });

  it('link down: frames stay in the backend; up again: they arrive', async () => {
    const [dev, wire] = createPacketPair();
    const h = new NetHarness({ backend: dev });
    h.activate();
    h.postRx(4, 2048);
    h.device.setLinkUp(false);
    wire.inject(frame(80));
    await settle();
    assert.equal(h.rxUsed().length, 0);
    assert.equal(dev.receiving, false);
    h.device.setLinkUp(true);
    await settle();
    assert.equal(h.rxUsed().length, 1);
  });

  it('more frames than the budget are delivered over several event-loop turns', async () => {
    const [dev, wire] = createPacketPair({ capacity: 1000 });
    const h = new NetHarness({ backend: dev }, { size: 512 });
    h.activate();
    h.postRx(400, 256);
    for (let i = 0; i < 300; i++) wire.inject(frame(60, i));
    await settle(20);
    const used = h.rxUsed();
    assert.equal(used.length, 300);
    used.forEach((u, i) => assert.deepEqual(u.written.subarray(12), frame(60, i)));
  });

  it('packed rings work both ways', async () => {
    const [dev, wire] = createPacketPair();
    const h = new NetHarness({ backend: dev, packed: true }, { packed: true });
    h.activate();
    h.postRx(4, 2048);
    wire.inject(frame(200, 4));
    h.transmit(frame(300, 5));
    await settle();
    assert.deepEqual(h.rxUsed()[0]!.written.subarray(12), frame(200, 4));
    assert.deepEqual(wire.take(), frame(300, 5));
  });
});

describe('virtio-net link state', () => {
  it('setLinkUp rewrites status and sends a config change; the backend follows', async () => {
    const [dev] = createPacketPair();
    const h = new NetHarness({ backend: dev });
    h.activate();
    h.device.setLinkUp(false);
    assert.equal(decodeVirtioNetConfig(h.device.config()).status, 0);
    assert.equal(h.host.configChanges, 1);
    assert.equal(dev.linkUp, null, 'the backend is told from the event loop, not inside the call');
    await settle();
    assert.equal(dev.linkUp, false);
    h.device.setLinkUp(false);
    assert.equal(h.host.configChanges, 1, 'no change, no notification');
    h.device.setLinkUp(true);
    assert.equal(decodeVirtioNetConfig(h.device.config()).status, VIRTIO_NET_S_LINK_UP);
    assert.equal(h.host.configChanges, 2);
    await settle();
    assert.equal(dev.linkUp, true);
  });

  it('a failed backend takes the link down', async () => {
    const [dev] = createPacketPair();
    const h = new NetHarness({ backend: dev, linkUp: true });
    h.activate();
    await dev.close();
    h.postRx(1, 2048);
    await settle();
    assert.equal(h.device.linkUp, false);
    assert.equal(h.host.configChanges, 1);
  });

  it('reset forgets held buffers and stops reading', async () => {
    const [dev, wire] = createPacketPair();
    const h = new NetHarness({ backend: dev });
    h.activate();
    h.postRx(4, 2048);
    await settle();
    assert.equal(dev.receiving, true);
    assert.ok(h.device.heldRxBuffers > 0);
    assert.equal(h.device.idleChains(0), h.device.heldRxBuffers, 'buffers waiting for a frame are idle');
    assert.equal(h.device.idleChains(1), 0);
    assert.equal(h.device.inFlight, 0, 'nothing to wait for at a drain');
    await h.device.reset();
    assert.equal(dev.receiving, false);
    assert.equal(h.device.heldRxBuffers, 0);
    wire.inject(frame(64));
    h.device.queueNotify(0);
    await settle();
    assert.equal(h.rxUsed().length, 0);
  });
});

describe('virtio-net receive: a ring too small for a frame', () => {
  it('MRG_RXBUF: a frame larger than every buffer the ring can hold is dropped, not waited for forever', async () => {
    const [dev, wire] = createPacketPair();
    const h = new NetHarness({ backend: dev, mtu: 9000 }, { size: 4 });
    h.activate();
    h.postRx(4, 1024);
    wire.inject(frame(8000, 1));
    wire.inject(frame(500, 2));
    await settle();
    const used = h.rxUsed();
    assert.equal(used.length, 1);
    assert.deepEqual(used[0]!.written.subarray(12), frame(500, 2));
    assert.equal(h.device.stats.rxDropped, 1);
    assert.ok(h.warnings.some((w) => /larger than the whole receive ring/.test(w)));
  });
});
