/** Shared bits for the virtqueue tests: a seeded PRNG and small drivers of the device side. */
import type { MockDriver } from '../../../src/testing/index.js';
import type { DescriptorChain, Virtqueue } from '../../../src/virtio/index.js';

/** mulberry32: a small, fast, seeded 32-bit PRNG. */
export function rng(seed: number): { next(): number; int(n: number): number; pick<T>(xs: readonly T[]): T } {
  let a = seed >>> 0;
  const next = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (n: number) => Math.floor(next() * n),
    pick: <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)] as T,
  };
}

/** Pop until the queue is empty (at most `limit` chains). */
export function popAll(q: Virtqueue, limit = 1 << 20): DescriptorChain[] {
  const out: DescriptorChain[] = [];
  for (let c = q.pop(); c !== null && out.length < limit; c = q.pop()) out.push(c);
  return out;
}

/**
 * Put a raw chain in the ring: split: descriptors at table indexes `at`, `at + 1`, ... linked as given by each
 * `next` (absolute), head `at` pushed to the avail ring; packed: at the driver's next slots. Then kick.
 */
export function rawChain(
  drv: MockDriver,
  descs: readonly { addr: number; len: number; flags: number; next?: number; id?: number }[],
  at = 0,
): void {
  if (drv.packed) {
    drv.pushRaw(descs.map((d, k) => ({ addr: d.addr, len: d.len, flags: d.flags, id: d.id ?? k })));
  } else {
    descs.forEach((d, k) =>
      drv.writeDescriptor(at + k, { addr: d.addr, len: d.len, flags: d.flags, next: d.next ?? at + k + 1 }),
    );
    drv.pushAvail(at);
  }
  drv.kick();
}
