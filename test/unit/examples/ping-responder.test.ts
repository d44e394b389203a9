import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { PingResponder } from '../../../examples/ping-responder.js';
import { NetHarness, settle } from '../net/harness.js';
import { arpRequest, ethernet, etherType, icmpEcho, ipv4, sum16 } from '../net/packets.js';

const GUEST = { mac: [0x02, 0, 0, 0, 0, 0x22], ip: [10, 0, 0, 2] };
const RESPONDER_IP = [10, 0, 0, 1];
const RESPONDER_MAC = [0x02, 0, 0, 0, 0, 0x01];

function ping(seq: number): Uint8Array {
  const data = new TextEncoder().encode(`ping ${seq} `.repeat(8));
  return ethernet(RESPONDER_MAC, GUEST.mac, 0x0800, ipv4(GUEST.ip, RESPONDER_IP, 1, icmpEcho(7, seq, data)));
}

describe('examples/ping-responder.ts behind a virtio-net device', () => {
  it('answers ARP and ping with valid checksums, ignores the rest, and pushes back when its outbox is full', async () => {
    const backend = new PingResponder({ ip: '10.0.0.1', outbox: 2 });
    const h = new NetHarness({ backend, name: 'example' });
    h.activate();

    h.postRx(2, 2048);
    h.transmit(arpRequest(GUEST, RESPONDER_IP));
    h.transmit(ping(1));
    h.transmit(new Uint8Array(60)); // not for us: ignored
    await settle();
    const [arp, echo] = h.rxUsed().map((u) => u.written.subarray(12));
    assert.equal(etherType(arp!), 0x0806);
    assert.equal(arp![21], 2);
    assert.deepEqual([...arp!.subarray(22, 32)], [...RESPONDER_MAC, ...RESPONDER_IP]);
    assert.deepEqual([...echo!.subarray(0, 6)], GUEST.mac);
    assert.equal(echo![34], 0, 'echo reply');
    assert.equal(sum16(echo!.subarray(14, 34)), 0xffff, 'IP checksum');
    assert.equal(sum16(echo!.subarray(34)), 0xffff, 'ICMP checksum still valid after the rewrite');
    assert.deepEqual(echo!.subarray(42), ping(1).subarray(42));
    assert.deepEqual(backend.counters, { arp: 1, echo: 1, ignored: 1 });

    // No receive buffers: replies pile up to the outbox size, then the responder refuses more pings and the
    // device stops taking them from the guest; posting buffers lets everything through, nothing lost.
    for (let seq = 2; seq < 8; seq++) h.transmit(ping(seq));
    await settle();
    assert.equal(h.txUsed().length, 3 + 2);
    h.postRx(16, 2048);
    for (let i = 0; i < 10; i++) await settle();
    const replies = h.rxUsed().map((u) => u.written.subarray(12));
    assert.deepEqual(
      replies.map((r) => (r[40]! << 8) | r[41]!),
      [2, 3, 4, 5, 6, 7],
    );
    assert.equal(h.txUsed().length, 4);
    assert.equal(h.device.stats.txDropped, 0);
    assert.equal(h.device.stats.rxDropped, 0);
  });
});
