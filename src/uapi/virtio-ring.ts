/**
 * Split and packed virtqueue formats (uapi linux/virtio_ring.h; virtio spec v1.2 §2.7, §2.8). Flag constants named
 * `*_F_*` in the kernel header are masks for split rings and bit NUMBERS for packed rings, exactly as there.
 */
import { defineStruct } from './layout.js';

// Split ring descriptor flags (masks, §2.7.5).
export const VRING_DESC_F_NEXT = 1;
export const VRING_DESC_F_WRITE = 2;
export const VRING_DESC_F_INDIRECT = 4;
// Packed ring descriptor flags (bit NUMBERS, §2.8.1): mask = 1 << n.
export const VRING_PACKED_DESC_F_AVAIL = 7;
export const VRING_PACKED_DESC_F_USED = 15;
// Split ring suppression flags (masks, §2.7.7, §2.7.10).
export const VRING_USED_F_NO_NOTIFY = 1;
export const VRING_AVAIL_F_NO_INTERRUPT = 1;
// Packed ring event suppression (§2.8.10): flags values, and the wrap counter bit NUMBER in `off_wrap`.
export const VRING_PACKED_EVENT_FLAG_ENABLE = 0x0;
export const VRING_PACKED_EVENT_FLAG_DISABLE = 0x1;
export const VRING_PACKED_EVENT_FLAG_DESC = 0x2;
export const VRING_PACKED_EVENT_F_WRAP_CTR = 15;
// Ring feature bit numbers.
export const VIRTIO_RING_F_INDIRECT_DESC = 28;
export const VIRTIO_RING_F_EVENT_IDX = 29;
// Alignment of the three split ring areas.
export const VRING_AVAIL_ALIGN_SIZE = 2;
export const VRING_USED_ALIGN_SIZE = 4;
export const VRING_DESC_ALIGN_SIZE = 16;

/** Largest queue size the spec allows (§2.7: Queue Size is at most 32768). */
export const VIRTQUEUE_MAX_SIZE = 32768;

/** struct vring_desc: split ring descriptor, 16 bytes. */
export const vring_desc = defineStruct({
  name: 'vring_desc',
  size: 16,
  fields: {
    addr: { offset: 0, size: 8, type: 'u64' },
    len: { offset: 8, size: 4, type: 'u32' },
    flags: { offset: 12, size: 2, type: 'u16' },
    next: { offset: 14, size: 2, type: 'u16' },
  },
});

/** struct vring_avail header (`ring[]` follows at 4). */
export const vring_avail = defineStruct({
  name: 'vring_avail',
  size: 4,
  fields: {
    flags: { offset: 0, size: 2, type: 'u16' },
    idx: { offset: 2, size: 2, type: 'u16' },
  },
});

/** struct vring_used_elem, 8 bytes. */
export const vring_used_elem = defineStruct({
  name: 'vring_used_elem',
  size: 8,
  fields: {
    id: { offset: 0, size: 4, type: 'u32' },
    len: { offset: 4, size: 4, type: 'u32' },
  },
});

/** struct vring_used header (`ring[]` follows at 4). */
export const vring_used = defineStruct({
  name: 'vring_used',
  size: 4,
  fields: {
    flags: { offset: 0, size: 2, type: 'u16' },
    idx: { offset: 2, size: 2, type: 'u16' },
  },
});

/** struct vring_packed_desc: packed ring descriptor, 16 bytes. */
export const vring_packed_desc = defineStruct({
  name: 'vring_packed_desc',
  size: 16,
  fields: {
    addr: { offset: 0, size: 8, type: 'u64' },
    len: { offset: 8, size: 4, type: 'u32' },
    id: { offset: 12, size: 2, type: 'u16' },
    flags: { offset: 14, size: 2, type: 'u16' },
  },
});

/** struct vring_packed_desc_event (spec: pvirtq_event_suppress), 4 bytes. */
export const vring_packed_desc_event = defineStruct({
  name: 'vring_packed_desc_event',
  size: 4,
  fields: {
    off_wrap: { offset: 0, size: 2, type: 'u16' },
    flags: { offset: 2, size: 2, type: 'u16' },
  },
});

// Sizes and offsets as named constants.
export const VRING_DESC_SIZE = 16;
export const VRING_DESC_ADDR_OFFSET = 0;
export const VRING_DESC_LEN_OFFSET = 8;
export const VRING_DESC_FLAGS_OFFSET = 12;
export const VRING_DESC_NEXT_OFFSET = 14;
export const VRING_AVAIL_FLAGS_OFFSET = 0;
export const VRING_AVAIL_IDX_OFFSET = 2;
export const VRING_AVAIL_RING_OFFSET = 4;
export const VRING_AVAIL_ELEM_SIZE = 2;
export const VRING_USED_FLAGS_OFFSET = 0;
export const VRING_USED_IDX_OFFSET = 2;
export const VRING_USED_RING_OFFSET = 4;
export const VRING_USED_ELEM_SIZE = 8;
export const VRING_USED_ELEM_ID_OFFSET = 0;
export const VRING_USED_ELEM_LEN_OFFSET = 4;
export const VRING_PACKED_DESC_SIZE = 16;
export const VRING_PACKED_DESC_ADDR_OFFSET = 0;
export const VRING_PACKED_DESC_LEN_OFFSET = 8;
export const VRING_PACKED_DESC_ID_OFFSET = 12;
export const VRING_PACKED_DESC_FLAGS_OFFSET = 14;
export const PVIRTQ_EVENT_SUPPRESS_SIZE = 4;
export const PVIRTQ_EVENT_SUPPRESS_DESC_OFFSET = 0;
export const PVIRTQ_EVENT_SUPPRESS_FLAGS_OFFSET = 2;

/** Bytes of the split descriptor table for `n` entries: 16·n. */
export function vringDescTableSize(n: number): number {
  return VRING_DESC_SIZE * n;
}

/**
 * Bytes of the split available ring for `n` entries that the device reads: flags, idx and ring[n] (4 + 2·n),
 * plus used_event with EVENT_IDX. The spec's 6 + 2·n (§2.7) is the size with used_event.
 */
export function vringAvailSize(n: number, eventIdx: boolean): number {
  return VRING_AVAIL_RING_OFFSET + VRING_AVAIL_ELEM_SIZE * n + (eventIdx ? 2 : 0);
}

/**
 * Bytes of the split used ring for `n` entries that the device touches: flags, idx and ring[n] (4 + 8·n), plus
 * avail_event with EVENT_IDX. The spec's 6 + 8·n (§2.7) is the size with avail_event.
 */
export function vringUsedSize(n: number, eventIdx: boolean): number {
  return VRING_USED_RING_OFFSET + VRING_USED_ELEM_SIZE * n + (eventIdx ? 2 : 0);
}

/** Offset of `used_event` in the available ring (after ring[n]). */
export function vringUsedEventOffset(n: number): number {
  return VRING_AVAIL_RING_OFFSET + VRING_AVAIL_ELEM_SIZE * n;
}

/** Offset of `avail_event` in the used ring (after ring[n]). */
export function vringAvailEventOffset(n: number): number {
  return VRING_USED_RING_OFFSET + VRING_USED_ELEM_SIZE * n;
}

/**
 * The EVENT_IDX rule (uapi virtio_ring.h `vring_need_event`): notify iff `eventIdx` lies in the window
 * `[oldIdx, newIdx)` of free-running u16 indices, i.e. `(u16)(new - event - 1) < (u16)(new - old)`.
 */
export function vringNeedEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}

/** Snake-case alias of vringNeedEvent, as named in the kernel header. */
export const vring_need_event = vringNeedEvent;
