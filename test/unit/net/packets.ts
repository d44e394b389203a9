/** Building and checking the few packets the net tests exchange (Ethernet, ARP, IPv4, ICMP echo, UDP). */

export interface Endpoint {
  mac: number[];
  ip: number[];
}

export const BROADCAST = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];

/** The 16-bit ones' complement sum of `bytes` (folded), added to `start`. */
export function sum16(bytes: Uint8Array, start = 0): number {
  let s = start;
  for (let i = 0; i + 1 < bytes.length; i += 2) s += (bytes[i]! << 8) | bytes[i + 1]!;
  if (bytes.length % 2 === 1) s += bytes[bytes.length - 1]! << 8;
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}

export const checksum = (bytes: Uint8Array): number => ~sum16(bytes) & 0xffff;

export function put16(b: Uint8Array, at: number, v: number): void {
  b[at] = v >>> 8;
  b[at + 1] = v & 0xff;
}

export const etherType = (f: Uint8Array): number => (f[12]! << 8) | f[13]!;

export function ethernet(dst: number[], src: number[], type: number, payload: Uint8Array): Uint8Array {
  const f = new Uint8Array(14 + payload.length);
  f.set(dst, 0);
  f.set(src, 6);
  put16(f, 12, type);
  f.set(payload, 14);
  return f;
}

export function arpRequest(from: Endpoint, targetIp: number[]): Uint8Array {
  const a = new Uint8Array(28);
  a.set([0, 1, 0x08, 0, 6, 4, 0, 1]);
  a.set(from.mac, 8);
  a.set(from.ip, 14);
  a.set(targetIp, 24);
  return ethernet(BROADCAST, from.mac, 0x0806, a);
}

export function ipv4(src: number[], dst: number[], proto: number, payload: Uint8Array): Uint8Array {
  const p = new Uint8Array(20 + payload.length);
  p.set([0x45, 0]);
  put16(p, 2, p.length);
  put16(p, 4, 0x1234);
  p[8] = 64;
  p[9] = proto;
  p.set(src, 12);
  p.set(dst, 16);
  put16(p, 10, checksum(p.subarray(0, 20)));
  p.set(payload, 20);
  return p;
}

export function icmpEcho(id: number, seq: number, data: Uint8Array): Uint8Array {
  const m = new Uint8Array(8 + data.length);
  m[0] = 8;
  put16(m, 4, id);
  put16(m, 6, seq);
  m.set(data, 8);
  put16(m, 2, checksum(m));
  return m;
}

/** A UDP datagram with a partial checksum (for NEEDS_CSUM): the pseudo-header sum in the checksum field. */
export function udpPartial(
  src: number[],
  dst: number[],
  srcPort: number,
  dstPort: number,
  data: Uint8Array,
): Uint8Array {
  const u = new Uint8Array(8 + data.length);
  put16(u, 0, srcPort);
  put16(u, 2, dstPort);
  put16(u, 4, u.length);
  u.set(data, 8);
  const pseudo = new Uint8Array(12);
  pseudo.set(src, 0);
  pseudo.set(dst, 4);
  pseudo[9] = 17;
  put16(pseudo, 10, u.length);
  put16(u, 6, sum16(pseudo));
  return u;
}
