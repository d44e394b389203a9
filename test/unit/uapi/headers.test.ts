/**
 * Checks every TypeScript uAPI layout table and constant against the kernel uapi headers installed on this machine
 * (linux-libc-dev), through gcc: test/unit/uapi/c/layout.c is compiled at test time with an "items.h" generated
 * from the TS tables, and prints sizeof/offsetof/values. One test per struct size, field, and constant.
 *
 * What the installed header lacks (API-1 VDUSE fields, the zoned virtio-blk tail, bits newer than the header) is
 * checked against literal values from /work/shared/reference/vduse-uapi.md (REFERENCE below, with the section);
 * whenever the installed header does have an item, the header wins.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import * as uapi from '../../../src/uapi/index.js';
import type { StructLayout } from '../../../src/uapi/index.js';

const V1 = 'defined(VDUSE_API_VERSION_1)';
const NOT_V1 = '!defined(VDUSE_API_VERSION_1)';
const ZONED = 'defined(VIRTIO_BLK_F_ZONED)';
const NOT_ZONED = '!defined(VIRTIO_BLK_F_ZONED)';
const LINUX_6_12 = 'LINUX_VERSION_CODE >= KERNEL_VERSION(6, 12, 0)';
const LINUX_6_1 = 'LINUX_VERSION_CODE < KERNEL_VERSION(6, 2, 0)';

// ------------------------------------------------------------------------------------------------------------
// Tables

type Expect = number | readonly [offset: number, size: number];
interface Ref {
  /** C preprocessor condition under which the installed header has the item. */
  guard: string;
  /** Value (const, struct size) or [offset, size] (field) from the reference, used when the header lacks it. */
  expect: Expect;
  /** Where `expect` comes from (section of /work/shared/reference/vduse-uapi.md, or the spec). */
  source: string;
}

/** Keys: `struct <name>`, `field <struct>.<key>`, `const <NAME>`. */
const REFERENCE: Record<string, Ref> = {};
function ref(guard: string, source: string, items: Record<string, Expect>): void {
  for (const [key, expect] of Object.entries(items)) REFERENCE[key] = { guard, expect, source };
}

// vhost-user is no kernel header (guard 0: never printed by gcc): the literals of QEMU docs/interop/vhost-user.rst
// (header, payload sizes with the C padding, the flags and feature bits, the split inflight region layout).
ref('0', 'QEMU docs/interop/vhost-user.rst', {
  'const VHOST_USER_HEADER_SIZE': 12,
  'const VHOST_USER_MAX_PAYLOAD': 0x1000,
  'const VHOST_USER_CONFIG_SPACE_MAX': 256,
  'const VHOST_USER_VERSION': 1,
  'const VHOST_USER_VERSION_MASK': 3,
  'const VHOST_USER_REPLY_MASK': 4,
  'const VHOST_USER_NEED_REPLY_MASK': 8,
  'const VHOST_USER_F_PROTOCOL_FEATURES': 30,
  'const VHOST_USER_VRING_IDX_MASK': 0xff,
  'const VHOST_USER_VRING_NOFD_MASK': 0x100,
  'const VHOST_USER_INFLIGHT_SIZE': 24,
  'const VHOST_MEMORY_BASELINE_NREGIONS': 8,
  'const VHOST_MEMORY_REGION_SIZE': 32,
  'const VHOST_VRING_ADDR_SIZE': 40,
  'const INFLIGHT_QUEUE_HEADER': 16,
  'const INFLIGHT_DESC_SIZE': 16,
  'const INFLIGHT_VERSION': 1,
  'const INFLIGHT_ALIGN': 64,
  'const INFLIGHT_Q_FEATURES': 0,
  'const INFLIGHT_Q_VERSION': 8,
  'const INFLIGHT_Q_DESC_NUM': 10,
  'const INFLIGHT_Q_LAST_BATCH_HEAD': 12,
  'const INFLIGHT_Q_USED_IDX': 14,
  'const INFLIGHT_D_INFLIGHT': 0,
  'const INFLIGHT_D_NEXT': 6,
  'const INFLIGHT_D_COUNTER': 8,
});

// VDUSE API version 1 (Linux 7.0, vduse.h@079212f6): vduse-uapi.md §1.2, §1.3, §1.4.
ref(V1, 'vduse-uapi.md §1.3', {
  'field vduse_dev_config.ngroups': [280, 4],
  'field vduse_dev_config.nas': [284, 4],
  'field vduse_dev_config.reserved': [288, 44],
  'field vduse_vq_config.reserved1': [6, 2],
  'field vduse_vq_config.group': [8, 4],
  'field vduse_vq_config.reserved2': [12, 20],
  'field vduse_iova_umem.asid': [24, 4],
  'field vduse_iova_umem.reserved': [28, 20],
  'field vduse_iova_info.asid': [24, 4],
  'field vduse_iova_info.reserved': [28, 20],
  'struct vduse_iotlb_entry_v2': 88,
  'field vduse_iotlb_entry_v2.offset': [0, 8],
  'field vduse_iotlb_entry_v2.start': [8, 8],
  'field vduse_iotlb_entry_v2.last': [16, 8],
  'field vduse_iotlb_entry_v2.perm': [24, 1],
  'field vduse_iotlb_entry_v2.asid': [32, 4],
  'field vduse_iotlb_entry_v2.reserved': [36, 48],
  'struct vduse_iova_range_v2': 24,
  'field vduse_iova_range_v2.start': [0, 8],
  'field vduse_iova_range_v2.last': [8, 8],
  'field vduse_iova_range_v2.asid': [16, 4],
  'struct vduse_vq_group_asid': 8,
  'field vduse_vq_group_asid.group': [0, 4],
  'field vduse_vq_group_asid.asid': [4, 4],
  'field vduse_dev_request.iova_v2.start': [24, 8],
  'field vduse_dev_request.iova_v2.last': [32, 8],
  'field vduse_dev_request.iova_v2.asid': [40, 4],
  'field vduse_dev_request.vq_group_asid.group': [24, 4],
  'field vduse_dev_request.vq_group_asid.asid': [28, 4],
});
ref(V1, 'vduse-uapi.md §1.2/§1.4', {
  'const VDUSE_API_VERSION_1': 1,
  'const VDUSE_SET_VQ_GROUP_ASID': 3,
  'const VDUSE_IOTLB_GET_FD2': 0xc058811b,
});

// virtio-blk zoned tail (spec v1.3, Linux 6.12 uapi): vduse-uapi.md §4.4.
ref(ZONED, 'vduse-uapi.md §4.4', {
  'struct virtio_blk_config': 96,
  'field virtio_blk_config.zone_sectors': [72, 4],
  'field virtio_blk_config.max_open_zones': [76, 4],
  'field virtio_blk_config.max_active_zones': [80, 4],
  'field virtio_blk_config.max_append_sectors': [84, 4],
  'field virtio_blk_config.write_granularity': [88, 4],
  'field virtio_blk_config.model': [92, 1],
  'field virtio_blk_config.unused2': [93, 3],
  'const VIRTIO_BLK_CONFIG_SIZE': 96,
});
ref(NOT_ZONED, 'vduse-uapi.md §4.4 (the packed 6.1 struct is 72 B)', {
  'const VIRTIO_BLK_CONFIG_SIZE_NO_ZONED': 72,
});

// Constants newer than (or absent from) the installed header; guard = the macro itself.
function refMacros(source: string, items: Record<string, number>): void {
  for (const [name, v] of Object.entries(items)) ref(`defined(${name})`, source, { [`const ${name}`]: v });
}
refMacros('vduse-uapi.md §4.4', {
  VIRTIO_BLK_F_ZONED: 17,
  VIRTIO_BLK_F_LIFETIME: 15,
  VIRTIO_BLK_T_GET_LIFETIME: 10,
  VIRTIO_BLK_T_ZONE_APPEND: 15,
  VIRTIO_BLK_T_ZONE_REPORT: 16,
  VIRTIO_BLK_T_ZONE_OPEN: 18,
  VIRTIO_BLK_T_ZONE_CLOSE: 20,
  VIRTIO_BLK_T_ZONE_FINISH: 22,
  VIRTIO_BLK_T_ZONE_RESET: 24,
  VIRTIO_BLK_T_ZONE_RESET_ALL: 26,
  VIRTIO_BLK_S_ZONE_INVALID_CMD: 3,
  VIRTIO_BLK_S_ZONE_UNALIGNED_WP: 4,
  VIRTIO_BLK_S_ZONE_OPEN_RESOURCE: 5,
  VIRTIO_BLK_S_ZONE_ACTIVE_RESOURCE: 6,
  VIRTIO_BLK_Z_NONE: 0,
  VIRTIO_BLK_Z_HM: 1,
  VIRTIO_BLK_Z_HA: 2,
  VIRTIO_BLK_SECTOR_SIZE: 512,
  VIRTIO_BLK_SECTOR_SHIFT: 9,
});
refMacros('vduse-uapi.md §4.3', { VIRTIO_F_NOTIFICATION_DATA: 38, VIRTIO_F_NOTIF_CONFIG_DATA: 39 });
refMacros('vduse-uapi.md §4.1 (spec §2.7: Queue Size at most 32768)', { VIRTQUEUE_MAX_SIZE: 32768 });
refMacros('vduse-uapi.md §4.5', { VIRTIO_NET_F_HOST_USO: 56, VIRTIO_NET_F_GUEST_HDRLEN: 59 });
refMacros('virtio spec v1.2 §5.1.6 (VIRTIO_NET_HDR_GSO_UDP_L4)', { VIRTIO_NET_HDR_GSO_UDP_L4: 5 });

// vdpa attributes and commands of Linux 6.2+ (6.12): vduse-uapi.md §3.
ref(LINUX_6_12, 'vduse-uapi.md §3', {
  'const VDPA_CMD_DEV_ATTR_SET': 8,
  'const VDPA_ATTR_MAX': 37,
  ...Object.fromEntries(
    [
      'CAPACITY',
      'SIZE_MAX',
      'BLK_SIZE',
      'SEG_MAX',
      'NUM_QUEUES',
      'PHY_BLK_EXP',
      'ALIGN_OFFSET',
      'MIN_IO_SIZE',
      'OPT_IO_SIZE',
      'MAX_DISCARD_SEC',
      'MAX_DISCARD_SEG',
      'DISCARD_SEC_ALIGN',
      'MAX_WRITE_ZEROES_SEC',
      'MAX_WRITE_ZEROES_SEG',
    ].map((n, i) => [`const VDPA_ATTR_DEV_BLK_CFG_${n}`, 21 + i]),
  ),
  'const VDPA_ATTR_DEV_BLK_READ_ONLY': 35,
  'const VDPA_ATTR_DEV_BLK_FLUSH': 36,
});
ref(LINUX_6_1, 'vduse-uapi.md §3 (6.1 vdpa_attr)', {
  'const VDPA_ATTR_6_1_VDPA_DEV_SUPPORTED_FEATURES': 21,
  'const VDPA_ATTR_6_1_MAX': 22,
});

/** TS constants that are not header macros of the same name: the C expression that gives them (and a guard). */
const DERIVED: Record<string, { expr: string; guard?: string }> = {
  IOC_NRBITS: { expr: '_IOC_NRBITS' },
  IOC_TYPEBITS: { expr: '_IOC_TYPEBITS' },
  IOC_SIZEBITS: { expr: '_IOC_SIZEBITS' },
  IOC_DIRBITS: { expr: '_IOC_DIRBITS' },
  IOC_NRSHIFT: { expr: '_IOC_NRSHIFT' },
  IOC_TYPESHIFT: { expr: '_IOC_TYPESHIFT' },
  IOC_SIZESHIFT: { expr: '_IOC_SIZESHIFT' },
  IOC_DIRSHIFT: { expr: '_IOC_DIRSHIFT' },
  IOC_NONE: { expr: '_IOC_NONE' },
  IOC_WRITE: { expr: '_IOC_WRITE' },
  IOC_READ: { expr: '_IOC_READ' },
  VDUSE_DEV_CONFIG_CONFIG_OFFSET: { expr: 'offsetof(struct vduse_dev_config, config)' },
  VDUSE_CONFIG_DATA_BUFFER_OFFSET: { expr: 'offsetof(struct vduse_config_data, buffer)' },
  VDUSE_MSG_SIZE: { expr: 'sizeof(struct vduse_dev_request)' },
  VHOST_VDPA_CONFIG_BUF_OFFSET: { expr: 'offsetof(struct vhost_vdpa_config, buf)' },
  VRING_DESC_SIZE: { expr: 'sizeof(struct vring_desc)' },
  VRING_DESC_ADDR_OFFSET: { expr: 'offsetof(struct vring_desc, addr)' },
  VRING_DESC_LEN_OFFSET: { expr: 'offsetof(struct vring_desc, len)' },
  VRING_DESC_FLAGS_OFFSET: { expr: 'offsetof(struct vring_desc, flags)' },
  VRING_DESC_NEXT_OFFSET: { expr: 'offsetof(struct vring_desc, next)' },
  VRING_AVAIL_FLAGS_OFFSET: { expr: 'offsetof(struct vring_avail, flags)' },
  VRING_AVAIL_IDX_OFFSET: { expr: 'offsetof(struct vring_avail, idx)' },
  VRING_AVAIL_RING_OFFSET: { expr: 'offsetof(struct vring_avail, ring)' },
  VRING_AVAIL_ELEM_SIZE: { expr: 'sizeof(((struct vring_avail *)0)->ring[0])' },
  VRING_USED_FLAGS_OFFSET: { expr: 'offsetof(struct vring_used, flags)' },
  VRING_USED_IDX_OFFSET: { expr: 'offsetof(struct vring_used, idx)' },
  VRING_USED_RING_OFFSET: { expr: 'offsetof(struct vring_used, ring)' },
  VRING_USED_ELEM_SIZE: { expr: 'sizeof(struct vring_used_elem)' },
  VRING_USED_ELEM_ID_OFFSET: { expr: 'offsetof(struct vring_used_elem, id)' },
  VRING_USED_ELEM_LEN_OFFSET: { expr: 'offsetof(struct vring_used_elem, len)' },
  VRING_PACKED_DESC_SIZE: { expr: 'sizeof(struct vring_packed_desc)' },
  VRING_PACKED_DESC_ADDR_OFFSET: { expr: 'offsetof(struct vring_packed_desc, addr)' },
  VRING_PACKED_DESC_LEN_OFFSET: { expr: 'offsetof(struct vring_packed_desc, len)' },
  VRING_PACKED_DESC_ID_OFFSET: { expr: 'offsetof(struct vring_packed_desc, id)' },
  VRING_PACKED_DESC_FLAGS_OFFSET: { expr: 'offsetof(struct vring_packed_desc, flags)' },
  PVIRTQ_EVENT_SUPPRESS_SIZE: { expr: 'sizeof(struct vring_packed_desc_event)' },
  PVIRTQ_EVENT_SUPPRESS_DESC_OFFSET: { expr: 'offsetof(struct vring_packed_desc_event, off_wrap)' },
  PVIRTQ_EVENT_SUPPRESS_FLAGS_OFFSET: { expr: 'offsetof(struct vring_packed_desc_event, flags)' },
  VIRTIO_BLK_CONFIG_SIZE: { expr: 'sizeof(struct virtio_blk_config)', guard: ZONED },
  VIRTIO_BLK_CONFIG_SIZE_NO_ZONED: { expr: 'sizeof(struct virtio_blk_config)', guard: NOT_ZONED },
  VIRTIO_BLK_OUTHDR_SIZE: { expr: 'sizeof(struct virtio_blk_outhdr)' },
  VIRTIO_BLK_DISCARD_WRITE_ZEROES_SIZE: { expr: 'sizeof(struct virtio_blk_discard_write_zeroes)' },
  VIRTIO_NET_CONFIG_SIZE: { expr: 'sizeof(struct virtio_net_config)' },
  VIRTIO_NET_HDR_V1_SIZE: { expr: 'sizeof(struct virtio_net_hdr_v1)' },
  VIRTIO_NET_HDR_V1_HASH_SIZE: { expr: 'sizeof(struct virtio_net_hdr_v1_hash)' },
  VDPA_ATTR_6_1_VDPA_DEV_SUPPORTED_FEATURES: {
    expr: 'VDPA_ATTR_VDPA_DEV_SUPPORTED_FEATURES',
    guard: LINUX_6_1,
  },
  VDPA_ATTR_6_1_MAX: { expr: 'VDPA_ATTR_MAX', guard: LINUX_6_1 },
};

/** Enumerators (not macros, so `#ifdef` cannot see them): guard '1' unless REFERENCE gives one. */
const ENUM =
  /^(CTRL_CMD_|CTRL_ATTR_|NLMSGERR_ATTR_|VDPA_CMD_|VDPA_ATTR_|VDUSE_(GET_VQ_STATE|SET_STATUS|UPDATE_IOTLB|SET_VQ_GROUP_ASID)$)/;

/**
 * Members of older headers that the newer layout split up (pre-API-1 reserved areas, reference §1.3): on such a
 * header, check the old member, and that the TS fields replacing it tile exactly the same bytes.
 */
const OLD_MEMBERS = [
  { struct: 'vduse_dev_config', member: 'reserved', at: [280, 52], by: ['ngroups', 'nas', 'reserved'] },
  { struct: 'vduse_vq_config', member: 'reserved', at: [6, 26], by: ['reserved1', 'group', 'reserved2'] },
  { struct: 'vduse_iova_umem', member: 'reserved', at: [24, 24], by: ['asid', 'reserved'] },
  { struct: 'vduse_iova_info', member: 'reserved', at: [24, 24], by: ['asid', 'reserved'] },
] as const;

/** ioctl numbers as literals (vduse-uapi.md §1.2), independent of both ioctl.ts and the header. */
const IOCTL_LITERALS: Record<string, number> = {
  VDUSE_GET_API_VERSION: 0x80088100,
  VDUSE_SET_API_VERSION: 0x40088101,
  VDUSE_CREATE_DEV: 0x41508102,
  VDUSE_DESTROY_DEV: 0x41008103,
  VDUSE_IOTLB_GET_FD: 0xc0208110,
  VDUSE_DEV_GET_FEATURES: 0x80088111,
  VDUSE_DEV_SET_CONFIG: 0x40088112,
  VDUSE_DEV_INJECT_CONFIG_IRQ: 0x00008113,
  VDUSE_VQ_SETUP: 0x40208114,
  VDUSE_VQ_GET_INFO: 0xc0308115,
  VDUSE_VQ_SETUP_KICKFD: 0x40088116,
  VDUSE_VQ_INJECT_IRQ: 0x40048117,
  VDUSE_IOTLB_REG_UMEM: 0x40308118,
  VDUSE_IOTLB_DEREG_UMEM: 0x40308119,
  VDUSE_IOTLB_GET_INFO: 0xc030811a,
  VDUSE_IOTLB_GET_FD2: 0xc058811b,
  // vhost.h (vhost.md §1)
  VHOST_SET_OWNER: 0xaf01,
  VHOST_GET_BACKEND_FEATURES: 0x8008af26,
  VHOST_SET_BACKEND_FEATURES: 0x4008af25,
  VHOST_VDPA_GET_DEVICE_ID: 0x8004af70,
  VHOST_VDPA_GET_VRING_NUM: 0x8002af76,
  VHOST_VDPA_GET_VQS_COUNT: 0x8004af80,
  VHOST_VDPA_GET_CONFIG_SIZE: 0x8004af79,
  VHOST_VDPA_GET_STATUS: 0x8001af71,
  VHOST_VDPA_SET_STATUS: 0x4001af72,
  VHOST_GET_FEATURES: 0x8008af00,
  VHOST_SET_FEATURES: 0x4008af00,
  VHOST_VDPA_GET_CONFIG: 0x8008af73,
  VHOST_SET_VRING_NUM: 0x4008af10,
  VHOST_SET_VRING_ADDR: 0x4028af11,
  VHOST_SET_VRING_BASE: 0x4008af12,
  VHOST_GET_VRING_BASE: 0xc008af12,
  VHOST_SET_VRING_KICK: 0x4008af20,
  VHOST_SET_VRING_CALL: 0x4008af21,
  VHOST_VDPA_SET_VRING_ENABLE: 0x4008af75,
};

// ------------------------------------------------------------------------------------------------------------
// Introspection of the TS module

const exported = uapi as unknown as Record<string, unknown>;
const isLayout = (v: unknown): v is StructLayout =>
  typeof v === 'object' && v !== null && 'name' in v && 'size' in v && 'fields' in v;
const layouts = Object.values(exported).filter(isLayout);
const numConsts = Object.entries(exported).filter(
  (e): e is [string, number] => /^[A-Z][A-Z0-9_]*$/.test(e[0]) && typeof e[1] === 'number',
);
const strConsts = Object.entries(exported).filter(
  (e): e is [string, string] => /^[A-Z][A-Z0-9_]*$/.test(e[0]) && typeof e[1] === 'string',
);

function guardOf(key: string, fallback: string): string {
  return REFERENCE[key]?.guard ?? fallback;
}

function itemsHeader(): string {
  const out: string[] = [];
  const emit = (guard: string, line: string): void => void out.push(`#if ${guard}`, `\t${line};`, '#endif');
  for (const l of layouts) {
    const structGuard = guardOf(`struct ${l.name}`, '1');
    // A struct that only newer headers have: its fields share its guard.
    const fieldFallback = structGuard === V1 ? V1 : '1';
    emit(structGuard, `STRUCT(${l.name})`);
    for (const [key, f] of Object.entries(l.fields)) {
      if (f.c === null) continue;
      emit(guardOf(`field ${l.name}.${key}`, fieldFallback), `FIELD(${l.name}, "${key}", ${f.c ?? key})`);
    }
  }
  for (const o of OLD_MEMBERS) emit(NOT_V1, `OLDFIELD(${o.struct}, ${o.member})`);
  for (const [name] of numConsts) {
    const d = DERIVED[name];
    const guard =
      d !== undefined
        ? (d.guard ?? '1')
        : guardOf(`const ${name}`, ENUM.test(name) ? '1' : `defined(${name})`);
    emit(guard, `CONST("${name}", ${d?.expr ?? name})`);
  }
  for (const [name] of strConsts) emit(`defined(${name})`, `STR("${name}", ${name})`);
  return out.join('\n') + '\n';
}

function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const p = join(dir, 'package.json');
    if (existsSync(p) && (JSON.parse(readFileSync(p, 'utf8')) as { name?: string }).name === 'vduse-ts')
      return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error('package root (package.json named vduse-ts) not found');
    dir = up;
  }
}

/** Compiles and runs the layout printer; returns its output lines as a map, or an error message. */
function runLayoutPrinter(): Map<string, string> | string {
  try {
    execFileSync('gcc', ['--version'], { stdio: 'ignore' });
  } catch {
    return 'gcc not found: the uAPI header test needs gcc and linux-libc-dev (apt-get install gcc linux-libc-dev)';
  }
  const tmp = mkdtempSync(join(tmpdir(), 'vduse-ts-uapi-'));
  try {
    writeFileSync(join(tmp, 'items.h'), itemsHeader());
    const src = join(packageRoot(), 'test/unit/uapi/c/layout.c');
    const exe = join(tmp, 'layout');
    try {
      execFileSync('gcc', ['-std=gnu11', '-Wall', '-I', tmp, '-o', exe, src], { stdio: 'pipe' });
    } catch (e) {
      const err = e as { stderr?: Buffer };
      return `gcc failed to build ${src}:\n${err.stderr?.toString() ?? String(e)}`;
    }
    const lines = execFileSync(exe, { encoding: 'utf8' }).trim().split('\n');
    const map = new Map<string, string>();
    for (const line of lines) {
      const m = /^(\S+ \S+) (?:size )?(.*)$/.exec(line);
      if (m?.[1] !== undefined && m[2] !== undefined) map.set(m[1], m[2]);
    }
    return map;
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

// ------------------------------------------------------------------------------------------------------------
// Tests

const printed = runLayoutPrinter();

/** Expected value for an item: the header's when it has it, else the reference literal; or a reason to fail. */
function expected(c: Map<string, string>, key: string, kind: 'num' | 'pair'): Expect | string {
  const raw = c.get(key);
  if (raw !== undefined) {
    const nums = raw.split(' ').map(Number);
    return kind === 'pair' ? [nums[0] ?? NaN, nums[1] ?? NaN] : (nums[0] ?? NaN);
  }
  const r = REFERENCE[key];
  if (r !== undefined) return r.expect;
  return `"${key}" is neither in the installed headers nor in the test's REFERENCE table: it is unverified`;
}

describe('uAPI tables match the kernel headers (gcc)', () => {
  if (typeof printed === 'string') {
    it('builds the layout printer', () => assert.fail(printed));
    return;
  }
  const c = printed;
  it('reports where the expectations came from', (t) => {
    const fromRef = Object.keys(REFERENCE).filter((k) => !c.has(k)).length;
    t.diagnostic(`${c.size} items printed from the installed headers, ${fromRef} checked against REFERENCE`);
    assert.ok(c.size > 300, 'the layout printer printed suspiciously few items');
  });

  for (const l of layouts) {
    describe(`struct ${l.name}`, () => {
      it('size', () => {
        const e = expected(c, `struct ${l.name}`, 'num');
        if (typeof e === 'string') assert.fail(e);
        assert.equal(l.size, e);
      });
      for (const [key, f] of Object.entries(l.fields)) {
        if (f.c === null) continue;
        it(`${key}: offset and size`, () => {
          const e = expected(c, `field ${l.name}.${key}`, 'pair');
          if (typeof e === 'string') assert.fail(e);
          assert.deepEqual([f.offset, f.size], e);
        });
      }
      it('fields cover every byte and stay inside the struct', () => {
        const covered = new Uint8Array(l.size);
        for (const [key, f] of Object.entries(l.fields)) {
          assert.ok(f.offset >= 0 && f.offset + f.size <= l.size, `${key} is outside the struct`);
          covered.fill(1, f.offset, f.offset + f.size);
        }
        assert.equal(covered.indexOf(0), -1, `byte ${covered.indexOf(0)} is not described by any field`);
      });
    });
  }

  describe('pre-API-1 reserved members', () => {
    for (const o of OLD_MEMBERS) {
      it(`${o.struct}.${o.member} is tiled by ${o.by.join(', ')}`, (t) => {
        const raw = c.get(`oldfield ${o.struct}.${o.member}`);
        if (raw === undefined) return t.skip('installed header has API version 1');
        assert.deepEqual(raw.split(' ').map(Number), o.at, 'old member (reference §1.3, 6.1 column)');
        const l = layouts.find((x) => x.name === o.struct);
        assert.ok(l);
        const parts = o.by.map((k) => l.fields[k]).sort((a, b) => (a?.offset ?? 0) - (b?.offset ?? 0));
        let at: number = o.at[0];
        for (const p of parts) {
          assert.ok(p);
          assert.equal(p.offset, at);
          at += p.size;
        }
        assert.equal(at, o.at[0] + o.at[1]);
      });
    }
  });

  describe('constants', () => {
    for (const [name, value] of numConsts) {
      it(name, () => {
        const e = expected(c, `const ${name}`, 'num');
        if (typeof e === 'string') assert.fail(e);
        assert.equal(value, e);
      });
    }
    for (const [name, value] of strConsts) {
      it(name, () => assert.equal(value, c.get(`str ${name}`)));
    }
  });
});

describe('ioctl numbers equal the literal values of the reference', () => {
  for (const [name, value] of Object.entries(IOCTL_LITERALS)) {
    it(name, () => assert.equal(exported[name], value));
  }
});

describe('the REFERENCE table', () => {
  it('names only items the TS module has', () => {
    const known = new Set<string>([
      ...layouts.map((l) => `struct ${l.name}`),
      ...layouts.flatMap((l) => Object.keys(l.fields).map((k) => `field ${l.name}.${k}`)),
      ...numConsts.map(([n]) => `const ${n}`),
    ]);
    assert.deepEqual(
      Object.keys(REFERENCE).filter((k) => !known.has(k)),
      [],
    );
  });
});
