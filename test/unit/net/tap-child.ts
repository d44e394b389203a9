/**
 * The TAP scenario of tap.test.ts, run INSIDE a network namespace of its own (`ip netns exec`): it does nothing
 * unless VTS_TAP_CHILD=1. A virtio-net device on the mock driver talks through a real TAP to the namespace's
 * kernel: ARP and ICMP echo both ways, and a UDP datagram each way with checksum offload. Prints one JSON line.
 */
import { execFileSync } from 'node:child_process';
import { createSocket } from 'node:dgram';

import { TapBackend } from '../../../src/backends/packet/tap.js';
import { decodeVirtioNetHdr, VIRTIO_NET_HDR_F_NEEDS_CSUM } from '../../../src/uapi/virtio-net.js';
import { NetHarness, settle } from './harness.js';
import { arpRequest, ethernet, icmpEcho, ipv4, put16, udpPartial } from './packets.js';

const GUEST_MAC = [0x02, 0, 0, 0, 0, 0x02];
const HOST_IP = [10, 77, 0, 1];
const GUEST_IP = [10, 77, 0, 2];
const GUEST = { mac: GUEST_MAC, ip: GUEST_IP };

async function until<T>(what: string, probe: () => T | null, ms = 5000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = probe();
    if (v !== null) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await settle(1);
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function scenario(name: string, vnetHeader: boolean): Promise<Record<string, unknown>> {
  const tap = TapBackend.open({ name, vnetHeader });
  const ip = (...args: string[]): void => void execFileSync('ip', args, { stdio: 'ignore' });
  ip('link', 'set', 'lo', 'up');
  ip('addr', 'add', `${HOST_IP.join('.')}/24`, 'dev', name);
  ip('link', 'set', name, 'up');
  const h = new NetHarness(
    { backend: tap, mac: GUEST_MAC.map((b) => b.toString(16).padStart(2, '0')).join(':') },
    { size: 256 },
  );
  h.activate();
  h.postRx(128, 2048);
  // Every frame the device delivered, as [header, frame].
  const rx: [ReturnType<typeof decodeVirtioNetHdr>, Uint8Array][] = [];
  const collect = (): void => {
    for (const u of h.rxUsed()) {
      rx.push([decodeVirtioNetHdr(u.written), u.written.slice(12)]);
      h.postRx(1, 2048);
    }
  };
  const find = (
    match: (f: Uint8Array) => boolean,
  ): [ReturnType<typeof decodeVirtioNetHdr>, Uint8Array] | null => {
    collect();
    const i = rx.findIndex(([, f]) => match(f));
    return i < 0 ? null : rx.splice(i, 1)[0]!;
  };
  const type = (f: Uint8Array): number => (f[12]! << 8) | f[13]!;

  h.transmit(arpRequest(GUEST, HOST_IP));
  const [, arp] = await until('the ARP reply', () => find((f) => type(f) === 0x0806 && f[21] === 2));
  const hostMac = Array.from(arp.subarray(6, 12));

  const data = new TextEncoder().encode('vduse-ts tap ping '.repeat(20));
  h.transmit(ethernet(hostMac, GUEST_MAC, 0x0800, ipv4(GUEST_IP, HOST_IP, 1, icmpEcho(0x4242, 7, data))));
  const [, reply] = await until('the echo reply', () =>
    find((f) => type(f) === 0x0800 && f[23] === 1 && f[34] === 0 && f[38] === 0x42 && f[39] === 0x42),
  );
  const echoOk = Buffer.from(reply.subarray(42)).equals(Buffer.from(data));

  // UDP host -> guest: with GUEST_CSUM (vnet header) the tap hands over a partial checksum.
  const sock = createSocket('udp4');
  await new Promise<void>((r) => sock.bind(0, HOST_IP.join('.'), () => r()));
  const port = sock.address().port;
  const got = new Promise<Buffer>((r) => sock.once('message', (m) => r(m)));
  sock.send(Buffer.from('to the guest'), 9999, GUEST_IP.join('.'));
  const [udpHdr, udp] = await until('the UDP datagram', () =>
    find((f) => type(f) === 0x0800 && f[23] === 17 && f[36] === 0x27 && f[37] === 0x0f),
  );
  // UDP guest -> host, with a partial checksum when offloads are on.
  const payload = new TextEncoder().encode('to the host');
  const udpOut = udpPartial(GUEST_IP, HOST_IP, 4000, port, payload);
  // Plain backend (no checksum offload): no checksum at all (0, legal for UDP over IPv4).
  if (!vnetHeader) put16(udpOut, 6, 0);
  const out = ethernet(hostMac, GUEST_MAC, 0x0800, ipv4(GUEST_IP, HOST_IP, 17, udpOut));
  h.transmit(out, vnetHeader ? { flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start: 34, csum_offset: 6 } : {});
  let timer: NodeJS.Timeout | undefined;
  const received = await Promise.race([
    got,
    new Promise<null>((r) => (timer = setTimeout(() => r(null), 3000))),
  ]);
  clearTimeout(timer);
  sock.close();
  const result = {
    name,
    vnetHeader,
    arp: hostMac.length === 6,
    echoOk,
    udpToGuest: Buffer.from(udp.subarray(42)).toString(),
    udpToGuestNeedsCsum: (udpHdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0,
    udpToGuestCsumStart: udpHdr.csum_start,
    udpToHost: received?.toString() ?? null,
    stats: { ...h.device.stats },
    resets: h.host.resets.length,
  };
  await h.device.reset();
  await tap.close();
  return result;
}

if (process.env.VTS_TAP_CHILD === '1') {
  const results = [await scenario('vtsvnet0', true), await scenario('vtsplain0', false)];
  process.stdout.write(JSON.stringify(results) + '\n');
}
