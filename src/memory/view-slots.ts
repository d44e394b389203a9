/**
 * ViewSlots: the views a memory's gather() made, kept by guest address, length and access, so that the same
 * buffer translated again gets the same Uint8Array instead of a new one.
 *
 * Drivers reuse their data buffers' addresses: behind VDUSE every data segment is a bounce-buffer IOVA, and the
 * kernel's IOVA allocator hands the freed ones out again first, so a few hundred page-sized ranges carry all the
 * data of a busy queue. A typed array per segment (32 per 128 KiB request) is the largest allocation of the
 * request path and, with the scavenges and fresh new-space pages it brings, costs about as much as the rest of a
 * descriptor (measured under TCG: `Builtins_CreateTypedArray` with its page faults 6 % of the daemon at 128 KiB
 * sequential reads).
 *
 * A view is the same window onto guest memory whoever holds it, so handing it out twice is what a second
 * translation would answer, as long as the mapping it was made from is still current: the owner clears the slots
 * whenever its generation changes (any mapping dropped) and stores only views of ranges one region holds, after
 * the permission check for that access. Direct-mapped: a miss costs one hash and two comparisons and replaces the
 * slot's entry.
 */
import type { Access } from './guest-memory.js';

/** Entries (a power of 2): more than the page-sized segments of a full 256-entry queue of 128 KiB requests. */
const SLOTS = 1024;
const SHIFT = 32 - Math.log2(SLOTS);
const NO_VIEW = new Uint8Array(0);

/** Multiplicative hash of the address in 512-byte units (its low 32 bits: any safe integer works). */
function slotOf(addr: number): number {
  return Math.imul(addr >>> 9, 0x9e3779b1) >>> SHIFT;
}

export class ViewSlots {
  /** Per slot: the address, and length * 4 + access (both exact in a double); -1: empty. */
  readonly #keys = new Float64Array(SLOTS * 2).fill(-1);
  readonly #views: Uint8Array[] = new Array<Uint8Array>(SLOTS).fill(NO_VIEW);
  #used = false;

  /** The view stored for exactly [addr, addr + len) with `access`, or null. */
  get(addr: number, len: number, access: Access): Uint8Array | null {
    const slot = slotOf(addr);
    const k = slot << 1;
    const keys = this.#keys;
    if (keys[k] === addr && keys[k + 1] === len * 4 + access) return this.#views[slot] as Uint8Array;
    return null;
  }

  /** Remember `view` for [addr, addr + len) with `access` (replacing what the slot held). */
  set(addr: number, len: number, access: Access, view: Uint8Array): void {
    const slot = slotOf(addr);
    const k = slot << 1;
    this.#keys[k] = addr;
    this.#keys[k + 1] = len * 4 + access;
    this.#views[slot] = view;
    this.#used = true;
  }

  /** Forget every entry (a mapping was dropped). */
  clear(): void {
    if (!this.#used) return;
    this.#keys.fill(-1);
    this.#views.fill(NO_VIEW);
    this.#used = false;
  }
}
