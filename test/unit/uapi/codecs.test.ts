/**
 * Codec behaviour of the uAPI module: round trips of every layout, zeroed reserved bytes, VDUSE request/response
 * messages built by hand at literal offsets, the 2^53 limit on addresses, vring_need_event against a brute-force
 * reading of the spec, ioctl helpers and the nlattr helpers.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import * as uapi from '../../../src/uapi/index.js';
import type { FieldSpec, StructLayout } from '../../../src/uapi/index.js';
import {
  bit,
  decodeStruct,
  decodeVduseDevConfig,
  decodeVduseRequest,
  decodeVduseResponse,
  decodeVduseVqInfo,
  decodeVirtioBlkConfig,
  decodeVirtioBlkDiscardWriteZeroes,
  decodeVirtioBlkOuthdr,
  encodeStruct,
  encodeVduseConfigData,
  encodeVduseDevConfig,
  encodeVduseName,
  encodeVduseRequest,
  encodeVduseResponse,
  encodeVduseVqInfo,
  encodeVirtioBlkConfig,
  encodeVirtioBlkDiscardWriteZeroes,
  encodeVirtioBlkOuthdr,
  hasFeature,
  IOC,
  iocDecode,
  IOR,
  IOWR,
  nlaAlign,
  nlaGetString,
  nlaGetU16,
  nlaGetU32,
  nlaGetU64,
  nlaGetU8,
  nlaPutBinary,
  nlaPutNested,
  nlaPutString,
  nlaPutU16,
  nlaPutU32,
  nlaPutU64,
  nlaPutU8,
  concatBytes,
  parseGenlMessageAttrs,
  parseNlAttrList,
  parseNlAttrs,
  readAddr,
  VDUSE_GET_VQ_STATE,
  VDUSE_REQ_RESULT_FAILED,
  VDUSE_REQ_RESULT_OK,
  VDUSE_SET_STATUS,
  VDUSE_SET_VQ_GROUP_ASID,
  VDUSE_UPDATE_IOTLB,
  vduse_dev_config,
  vduse_iotlb_entry,
  vduse_vq_info,
  vringAvailSize,
  vringDescTableSize,
  vringNeedEvent,
  vring_need_event,
  vringUsedSize,
  VIRTIO_F_ACCESS_PLATFORM,
  VIRTIO_F_VERSION_1,
  NLA_F_NESTED,
} from '../../../src/uapi/index.js';

const layouts = Object.values(uapi as unknown as Record<string, unknown>).filter(
  (v): v is StructLayout =>
    typeof v === 'object' && v !== null && 'name' in v && 'fields' in v && 'size' in v,
);

/** A distinctive value for a field (never zero), derived from its offset. */
function sample(f: FieldSpec, seed: number): unknown {
  const n = seed + f.offset + 1;
  switch (f.type) {
    case 'u8':
      return n & 0xff || 1;
    case 'u16':
      return (n * 0x101) & 0xffff || 1;
    case 'u32':
      return (n * 0x1010101) >>> 0 || 1;
    case 'i32':
      return -n;
    case 'u64':
      return (BigInt(n & 0xff) << 56n) | BigInt(n);
    case 'addr':
      return 2 ** 52 + n;
    case 'bytes':
      return Uint8Array.from({ length: f.size }, (_, i) => (n + i) & 0xff || 1);
    case 'cstr':
      return 'x'.repeat(Math.min(f.size - 1, 10 + (n % 7)));
    case 'zero':
      return undefined;
  }
}

/** Value fields of a layout that do not overlap an earlier field (unions keep their first member). */
function independentFields(l: StructLayout): [string, FieldSpec][] {
  const used = new Uint8Array(l.size);
  const out: [string, FieldSpec][] = [];
  for (const [k, f] of Object.entries(l.fields)) {
    if (f.type === 'zero') continue;
    if (used.subarray(f.offset, f.offset + f.size).some((b) => b !== 0)) continue;
    used.fill(1, f.offset, f.offset + f.size);
    out.push([k, f]);
  }
  return out;
}

describe('generic struct codec, every layout', () => {
  for (const l of layouts) {
    it(`${l.name}: round trip, reserved and padding bytes zeroed`, () => {
      const fields = independentFields(l);
      const value = Object.fromEntries(fields.map(([k, f]) => [k, sample(f, l.size)]));
      const target = new Uint8Array(l.size + 8).fill(0xff);
      encodeStruct(l, value as never, target, 4);
      assert.equal(target[3], 0xff, 'wrote before the struct');
      assert.equal(target[l.size + 4], 0xff, 'wrote past the struct');
      const bytes = target.subarray(4, 4 + l.size);
      const valueBytes = new Uint8Array(l.size);
      for (const [, f] of fields) valueBytes.fill(1, f.offset, f.offset + f.size);
      bytes.forEach((b, i) => {
        if (valueBytes[i] === 0) assert.equal(b, 0, `byte ${i} (reserved/padding) is not zero`);
      });
      const decoded = decodeStruct(l, target, 4) as Record<string, unknown>;
      for (const [k] of fields) assert.deepEqual(decoded[k], value[k], k);
      assert.throws(() => decodeStruct(l, new Uint8Array(l.size - 1)), RangeError);
    });
  }

  it('rejects out-of-range values', () => {
    assert.throws(() => encodeStruct(vduse_dev_config, { vq_num: 2 ** 32 }), RangeError);
    assert.throws(() => encodeStruct(vduse_dev_config, { vq_num: -1 }), RangeError);
    assert.throws(() => encodeStruct(vduse_dev_config, { vq_num: 1.5 }), RangeError);
    assert.throws(() => encodeStruct(vduse_dev_config, { features: 1n << 64n }), RangeError);
    assert.throws(() => encodeStruct(vduse_dev_config, { name: 'a'.repeat(256) }), RangeError);
    assert.throws(() => encodeStruct(vduse_dev_config, { name: 'a\0b' }), RangeError);
    assert.doesNotThrow(() => encodeStruct(vduse_dev_config, { name: 'a'.repeat(255) }));
  });
});

describe('addresses as numbers', () => {
  it('decoding a u64 address >= 2^53 throws RangeError; 2^53 - 1 is fine', () => {
    const b = new Uint8Array(48);
    const v = new DataView(b.buffer);
    v.setBigUint64(8, 2n ** 53n - 1n, true);
    assert.equal(decodeVduseVqInfo(b).desc_addr, Number.MAX_SAFE_INTEGER);
    v.setBigUint64(16, 2n ** 53n, true);
    assert.throws(() => decodeVduseVqInfo(b), RangeError);
    v.setBigUint64(16, 0xffffffffffffffffn, true);
    assert.throws(() => decodeVduseVqInfo(b), /driver_addr/);
    assert.throws(() => readAddr(v, 16), RangeError);
  });
  it('encoding a non-safe or negative address throws RangeError', () => {
    assert.throws(() => encodeVduseVqInfo({ desc_addr: 2 ** 53 }), RangeError);
    assert.throws(() => encodeVduseVqInfo({ desc_addr: -1 }), RangeError);
    assert.throws(() => encodeStruct(vduse_iotlb_entry, { start: 0.5 }), RangeError);
  });
});

describe('VDUSE codecs', () => {
  it('dev_config with its config space', () => {
    const features = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_ACCESS_PLATFORM) | (1n << 63n);
    const config = Uint8Array.from([1, 2, 3, 4, 5]);
    const b = encodeVduseDevConfig(
      { name: 'blk0', vendor_id: 0x1af4, device_id: 2, features, vq_num: 4, vq_align: 4096 },
      config,
    );
    assert.equal(b.length, 341);
    const v = new DataView(b.buffer);
    assert.equal(new TextDecoder().decode(b.subarray(0, 5)), 'blk0\0');
    assert.equal(v.getUint32(256, true), 0x1af4);
    assert.equal(v.getBigUint64(264, true), features);
    assert.equal(v.getUint32(332, true), 5);
    assert.deepEqual(b.subarray(280, 332), new Uint8Array(52));
    assert.deepEqual(b.subarray(336), config);
    const d = decodeVduseDevConfig(b);
    assert.equal(d.cfg.name, 'blk0');
    assert.equal(d.cfg.features, features);
    assert.deepEqual(d.config, config);
    assert.throws(() => decodeVduseDevConfig(b.subarray(0, 340)), RangeError);
    assert.throws(() => encodeVduseDevConfig({ ...d.cfg, name: '' }, config), RangeError);
  });
  it('name buffer and config data', () => {
    const n = encodeVduseName('dev');
    assert.equal(n.length, 256);
    assert.deepEqual([...n.subarray(0, 4)], [100, 101, 118, 0]);
    assert.throws(() => encodeVduseName(''), RangeError);
    assert.throws(() => encodeVduseName('x'.repeat(256)), RangeError);
    const c = encodeVduseConfigData(8, Uint8Array.from([9, 9]));
    assert.deepEqual([...c], [8, 0, 0, 0, 2, 0, 0, 0, 9, 9]);
  });

  /** A 152-byte request written at literal offsets (vduse-uapi.md §1.3). */
  function rawRequest(type: number, id: number, fill: (v: DataView) => void): Uint8Array {
    const b = new Uint8Array(152);
    const v = new DataView(b.buffer);
    v.setUint32(0, type, true);
    v.setUint32(4, id, true);
    fill(v);
    return b;
  }
  it('decodes GET_VQ_STATE', () => {
    const r = decodeVduseRequest(rawRequest(VDUSE_GET_VQ_STATE, 7, (v) => v.setUint32(24, 3, true)));
    assert.deepEqual(r, { kind: 'get_vq_state', type: 0, request_id: 7, index: 3 });
  });
  it('decodes SET_STATUS', () => {
    const r = decodeVduseRequest(rawRequest(VDUSE_SET_STATUS, 0xffffffff, (v) => v.setUint8(24, 0x0f)));
    assert.deepEqual(r, { kind: 'set_status', type: 1, request_id: 0xffffffff, status: 0x0f });
  });
  it('decodes UPDATE_IOTLB with last = 2^64 - 1 (API 0: asid 0) and with an asid (API 1)', () => {
    const r = decodeVduseRequest(
      rawRequest(VDUSE_UPDATE_IOTLB, 9, (v) => v.setBigUint64(32, 0xffffffffffffffffn, true)),
    );
    assert.deepEqual(r, {
      kind: 'update_iotlb',
      type: 2,
      request_id: 9,
      start: 0n,
      last: 2n ** 64n - 1n,
      asid: 0,
    });
    const r2 = decodeVduseRequest(
      rawRequest(VDUSE_UPDATE_IOTLB, 10, (v) => {
        v.setBigUint64(24, 0x1000n, true);
        v.setBigUint64(32, 0x1fffn, true);
        v.setUint32(40, 1, true);
      }),
    );
    assert.deepEqual(r2, {
      kind: 'update_iotlb',
      type: 2,
      request_id: 10,
      start: 0x1000n,
      last: 0x1fffn,
      asid: 1,
    });
  });
  it('decodes SET_VQ_GROUP_ASID', () => {
    const r = decodeVduseRequest(
      rawRequest(VDUSE_SET_VQ_GROUP_ASID, 11, (v) => {
        v.setUint32(24, 2, true);
        v.setUint32(28, 5, true);
      }),
    );
    assert.deepEqual(r, { kind: 'set_vq_group_asid', type: 3, request_id: 11, group: 2, asid: 5 });
  });
  it('decodes an unknown type with its payload, and rejects short buffers', () => {
    const r = decodeVduseRequest(rawRequest(42, 1, (v) => v.setUint8(151, 0xaa)));
    assert.equal(r.kind, 'unknown');
    assert.equal(r.type, 42);
    assert.ok(r.kind === 'unknown' && r.payload.length === 128 && r.payload[127] === 0xaa);
    assert.throws(() => decodeVduseRequest(new Uint8Array(151)), RangeError);
  });
  it('encodeVduseRequest inverts decodeVduseRequest', () => {
    const reqs = [
      rawRequest(VDUSE_GET_VQ_STATE, 1, (v) => v.setUint32(24, 3, true)),
      rawRequest(VDUSE_SET_STATUS, 2, (v) => v.setUint8(24, 0x8f)),
      rawRequest(VDUSE_UPDATE_IOTLB, 3, (v) => v.setBigUint64(32, 2n ** 64n - 1n, true)),
      rawRequest(VDUSE_SET_VQ_GROUP_ASID, 4, (v) => v.setUint32(28, 1, true)),
      rawRequest(99, 5, (v) => v.setUint32(100, 0xdeadbeef, true)),
    ];
    for (const raw of reqs) assert.deepEqual(encodeVduseRequest(decodeVduseRequest(raw)), raw);
  });
  it('encodes responses at the literal offsets with reserved bytes zero', () => {
    const ok = encodeVduseResponse({ request_id: 7, result: VDUSE_REQ_RESULT_OK });
    assert.equal(ok.length, 152);
    assert.deepEqual([...ok.subarray(0, 8)], [7, 0, 0, 0, 0, 0, 0, 0]);
    assert.ok(ok.subarray(8).every((b) => b === 0));
    const split = encodeVduseResponse({
      request_id: 8,
      result: VDUSE_REQ_RESULT_FAILED,
      vq_state: { index: 2, split: { avail_index: 0xbeef } },
    });
    const v = new DataView(split.buffer);
    assert.equal(v.getUint32(4, true), 1);
    assert.equal(v.getUint32(24, true), 2);
    assert.equal(v.getUint16(28, true), 0xbeef);
    assert.ok(split.subarray(8, 24).every((b) => b === 0));
    assert.ok(split.subarray(30).every((b) => b === 0));
    const packed = { last_avail_counter: 1, last_avail_idx: 0x7ffe, last_used_counter: 0, last_used_idx: 5 };
    const p = encodeVduseResponse({ request_id: 9, result: 0, vq_state: { index: 1, packed } });
    const pv = new DataView(p.buffer);
    assert.deepEqual(
      [28, 30, 32, 34].map((o) => pv.getUint16(o, true)),
      [1, 0x7ffe, 0, 5],
    );
    assert.deepEqual(decodeVduseResponse(p).vq_state.packed, packed);
    assert.throws(
      () =>
        encodeVduseResponse({
          request_id: 1,
          result: 0,
          vq_state: { index: 0, split: { avail_index: 0 }, packed },
        }),
      RangeError,
    );
    const bad = encodeVduseResponse({ request_id: 1, result: 0 });
    bad[8] = 1;
    assert.throws(() => decodeVduseResponse(bad), /reserved/);
  });
  it('vq_info decodes both views of the state union', () => {
    const b = new Uint8Array(48);
    const v = new DataView(b.buffer);
    v.setUint32(0, 1, true);
    v.setUint32(4, 256, true);
    v.setBigUint64(8, 0x10000n, true);
    v.setUint16(32, 1, true);
    v.setUint16(34, 7, true);
    b[40] = 1;
    const i = decodeVduseVqInfo(b);
    assert.equal(i.num, 256);
    assert.equal(i.desc_addr, 0x10000);
    assert.equal(i.avail_index, 1);
    assert.equal(i.last_avail_counter, 1);
    assert.equal(i.last_avail_idx, 7);
    assert.equal(i.ready, 1);
    assert.equal(vduse_vq_info.size, 48);
  });
});

describe('virtio-blk codecs', () => {
  it('config: literal offsets, truncation to 72 bytes, short decode', () => {
    const c = encodeVirtioBlkConfig({
      capacity: 0x123456789n,
      seg_max: 126,
      cylinders: 0x1234,
      heads: 7,
      blk_size: 4096,
      num_queues: 4,
      write_zeroes_may_unmap: 1,
      model: 2,
    });
    assert.equal(c.length, 96);
    const v = new DataView(c.buffer);
    assert.equal(v.getBigUint64(0, true), 0x123456789n);
    assert.equal(v.getUint32(12, true), 126);
    assert.equal(v.getUint16(16, true), 0x1234);
    assert.equal(c[18], 7);
    assert.equal(v.getUint32(20, true), 4096);
    assert.equal(v.getUint16(34, true), 4);
    assert.equal(c[56], 1);
    assert.equal(c[92], 2);
    const short = encodeVirtioBlkConfig({ capacity: 8n, model: 2 }, 72);
    assert.equal(short.length, 72);
    const d = decodeVirtioBlkConfig(short);
    assert.equal(d.capacity, 8n);
    assert.equal(d.model, 0);
    assert.throws(() => encodeVirtioBlkConfig({}, 97), RangeError);
  });
  it('request header and discard/write-zeroes segment', () => {
    const h = encodeVirtioBlkOuthdr({ type: 1, ioprio: 3, sector: 2n ** 60n });
    assert.deepEqual([...h.subarray(0, 8)], [1, 0, 0, 0, 3, 0, 0, 0]);
    assert.deepEqual(decodeVirtioBlkOuthdr(h), { type: 1, ioprio: 3, sector: 2n ** 60n });
    const buf = new Uint8Array(20);
    buf.set(h, 4);
    assert.equal(decodeVirtioBlkOuthdr(buf, 4).sector, 2n ** 60n);
    const s = encodeVirtioBlkDiscardWriteZeroes({ sector: 100n, num_sectors: 8, flags: 1 });
    assert.deepEqual([...s], [100, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0]);
    assert.deepEqual(decodeVirtioBlkDiscardWriteZeroes(s), { sector: 100n, num_sectors: 8, flags: 1 });
  });
});

describe('virtio rings and features', () => {
  it('vringNeedEvent agrees with the spec rule, brute force over every event index and wrap case', () => {
    // Spec §2.7.7.2/§2.7.10: notify iff the event index is one of the indices published by this update, i.e.
    // one of old, old+1, ..., new-1 (mod 2^16).
    const olds = [0, 1, 2, 100, 0x7fff, 0x8000, 0xfffe, 0xffff];
    const deltas = [0, 1, 2, 3, 17, 0x7fff, 0x8000, 0xfffe, 0xffff];
    for (const oldIdx of olds) {
      for (const delta of deltas) {
        const newIdx = (oldIdx + delta) & 0xffff;
        const published = new Uint8Array(0x10000);
        for (let k = 0; k < delta; k++) published[(oldIdx + k) & 0xffff] = 1;
        for (let event = 0; event < 0x10000; event++) {
          if (vringNeedEvent(event, newIdx, oldIdx) !== (published[event] === 1)) {
            assert.fail(`vringNeedEvent(${event}, ${newIdx}, ${oldIdx}) is wrong`);
          }
        }
      }
    }
    assert.equal(vring_need_event, vringNeedEvent);
  });
  it('split ring sizes', () => {
    assert.equal(vringDescTableSize(256), 4096);
    // The spec's sizes (§2.7: 6 + 2·N and 6 + 8·N) include the event fields.
    assert.equal(vringAvailSize(256, false), 516);
    assert.equal(vringAvailSize(256, true), 518);
    assert.equal(vringUsedSize(256, false), 2052);
    assert.equal(vringUsedSize(256, true), 2054);
  });
  it('bit and hasFeature', () => {
    assert.equal(bit(0), 1n);
    assert.equal(bit(63), 2n ** 63n);
    assert.throws(() => bit(64), RangeError);
    assert.throws(() => bit(-1), RangeError);
    assert.ok(hasFeature(bit(33) | bit(32), 33));
    assert.ok(!hasFeature(bit(33), 32));
  });
});

describe('ioctl helpers', () => {
  it('computes unsigned numbers and decodes them', () => {
    assert.equal(IOR(0x81, 0, 8), 0x80088100);
    assert.equal(IOWR(0x81, 0x15, 48), 0xc0308115);
    assert.ok(IOWR(0x81, 0x15, 48) > 0);
    assert.deepEqual(iocDecode(0xc0308115), { dir: 3, type: 0x81, nr: 0x15, size: 48 });
    assert.throws(() => IOC(0, 0x81, 0, 1 << 14), RangeError);
    assert.throws(() => IOC(4, 0x81, 0, 0), RangeError);
    assert.throws(() => IOC(0, 0x100, 0, 0), RangeError);
  });
});

describe('nlattr helpers', () => {
  it('align', () => {
    assert.deepEqual([0, 1, 2, 3, 4, 5, 8, 9].map(nlaAlign), [0, 4, 4, 4, 4, 8, 8, 12]);
  });
  it('put: header, payload, zero padding', () => {
    assert.deepEqual([...nlaPutU8(3, 0xab)], [5, 0, 3, 0, 0xab, 0, 0, 0]);
    assert.deepEqual([...nlaPutU16(1, 0x1234)], [6, 0, 1, 0, 0x34, 0x12, 0, 0]);
    assert.deepEqual([...nlaPutU32(5, 0x01020304)], [8, 0, 5, 0, 4, 3, 2, 1]);
    assert.deepEqual([...nlaPutU64(3, 0x0102030405060708n)], [12, 0, 3, 0, 8, 7, 6, 5, 4, 3, 2, 1]);
    assert.deepEqual([...nlaPutString(2, 'vdpa')], [9, 0, 2, 0, 118, 100, 112, 97, 0, 0, 0, 0]);
    assert.deepEqual(
      [...nlaPutBinary(10, Uint8Array.from([1, 2, 3, 4, 5, 6]))],
      [10, 0, 10, 0, 1, 2, 3, 4, 5, 6, 0, 0],
    );
    assert.deepEqual([...nlaPutNested(7, [nlaPutU8(1, 1)])], [12, 0, 7, 0x80, 5, 0, 1, 0, 1, 0, 0, 0]);
    assert.throws(() => nlaPutString(1, 'a\0'), RangeError);
    assert.throws(() => nlaPutBinary(1, new Uint8Array(0xfffc)), RangeError);
  });
  it('parse: list, map, nested flag, getters', () => {
    const stream = concatBytes([
      nlaPutString(2, 'vduse'),
      nlaPutU16(1, 0x1e),
      nlaPutU64(3, 2n ** 63n),
      nlaPutNested(7, [nlaPutU32(1, 9)]),
      nlaPutU8(11, 1),
    ]);
    const list = parseNlAttrList(stream);
    assert.deepEqual(
      list.map((a) => [a.type, a.nested, a.data.length]),
      [
        [2, false, 6],
        [1, false, 2],
        [3, false, 8],
        [7, true, 8],
        [11, false, 1],
      ],
    );
    const m = parseNlAttrs(stream);
    assert.equal(nlaGetString(m.get(2) ?? new Uint8Array()), 'vduse');
    assert.equal(nlaGetU16(m.get(1) ?? new Uint8Array()), 0x1e);
    assert.equal(nlaGetU64(m.get(3) ?? new Uint8Array()), 2n ** 63n);
    assert.equal(nlaGetU8(m.get(11) ?? new Uint8Array()), 1);
    assert.equal(nlaGetU32(parseNlAttrs(m.get(7) ?? new Uint8Array()).get(1) ?? new Uint8Array()), 9);
    assert.equal(nlaGetString(Uint8Array.from([104, 105])), 'hi');
    assert.throws(() => nlaGetU32(Uint8Array.from([1, 2])), RangeError);
    assert.equal(NLA_F_NESTED, 0x8000);
  });
  it('parse rejects malformed streams and ignores a short tail', () => {
    assert.throws(() => parseNlAttrList(Uint8Array.from([3, 0, 1, 0])), RangeError);
    assert.throws(() => parseNlAttrList(Uint8Array.from([9, 0, 1, 0, 0, 0, 0, 0])), RangeError);
    assert.deepEqual(parseNlAttrList(Uint8Array.from([5, 0, 1, 0, 7, 0, 0, 0, 1, 2])).length, 1);
  });
  it('parses the attributes of a whole generic netlink message', () => {
    const attrs = concatBytes([nlaPutU16(1, 0x1f), nlaPutString(2, 'vdpa')]);
    const msg = new Uint8Array(16 + 4 + attrs.length + 8);
    const v = new DataView(msg.buffer);
    v.setUint32(0, 20 + attrs.length, true);
    v.setUint16(4, 0x10, true);
    msg[16] = 1; // CTRL_CMD_NEWFAMILY
    msg.set(attrs, 20);
    msg.set(nlaPutU8(9, 9), 20 + attrs.length); // the next message's bytes: not part of this one
    const m = parseGenlMessageAttrs(msg);
    assert.deepEqual([...m.keys()], [1, 2]);
    assert.equal(nlaGetU16(m.get(1) ?? new Uint8Array()), 0x1f);
    v.setUint32(0, 1000, true);
    assert.throws(() => parseGenlMessageAttrs(msg), RangeError);
  });
});
