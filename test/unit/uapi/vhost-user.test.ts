// The vhost-user wire format: header, payload codecs (sizes checked), request names, the inflight layout.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  VHOST_USER_HEADER_SIZE,
  VHOST_USER_NEED_REPLY_MASK,
  VHOST_USER_VERSION,
  VhostUserRequest,
  decodeConfig,
  decodeHeader,
  decodeInflight,
  decodeMemoryTable,
  decodePayloadU64,
  decodeVringAddr,
  decodeVringState,
  encodeConfig,
  encodeInflight,
  encodeMemoryTable,
  encodeMessage,
  encodePayloadU64,
  encodeVringAddr,
  encodeVringState,
  inflightQueueStride,
  vhostUserRequestName,
} from '../../../src/uapi/vhost-user.js';

test('header: 12 bytes, little-endian request/flags/size', () => {
  const m = encodeMessage(
    VhostUserRequest.SET_FEATURES,
    VHOST_USER_VERSION | VHOST_USER_NEED_REPLY_MASK,
    encodePayloadU64(5n),
  );
  assert.equal(m.length, VHOST_USER_HEADER_SIZE + 8);
  assert.deepEqual([...m.subarray(0, 12)], [2, 0, 0, 0, 9, 0, 0, 0, 8, 0, 0, 0]);
  assert.deepEqual(decodeHeader(m), { request: 2, flags: 9, size: 8 });
  assert.equal(decodePayloadU64(m.subarray(12)), 5n);
  assert.throws(() => decodeHeader(new Uint8Array(11)), RangeError);
  assert.equal(vhostUserRequestName(5), 'SET_MEM_TABLE');
  assert.equal(vhostUserRequestName(99), 'request 99');
});

test('vring state, address, inflight round-trip; short payloads are RangeErrors', () => {
  assert.deepEqual(decodeVringState(encodeVringState({ index: 1, num: 256 })), { index: 1, num: 256 });
  const addr = {
    index: 1,
    flags: 0,
    desc: 0x7f0000001000n,
    used: 0x7f0000003000n,
    avail: 0x7f0000002000n,
    log: 0n,
  };
  const a = encodeVringAddr(addr);
  assert.equal(a.length, 40);
  assert.deepEqual(decodeVringAddr(a), addr);
  const inflight = { mmapSize: 8192n, mmapOffset: 0n, numQueues: 2, queueSize: 128 };
  const i = encodeInflight(inflight);
  assert.equal(i.length, 24);
  assert.deepEqual(decodeInflight(i), inflight);
  assert.throws(() => decodeVringState(new Uint8Array(7)), RangeError);
  assert.throws(() => decodeVringAddr(new Uint8Array(39)), RangeError);
  assert.throws(() => decodeInflight(new Uint8Array(19)), RangeError);
  assert.throws(() => decodePayloadU64(new Uint8Array(4)), RangeError);
});

test('memory table: up to 8 regions, count checked against the payload', () => {
  const regions = Array.from({ length: 8 }, (_, k) => ({
    guestPhysAddr: BigInt(k) << 30n,
    memorySize: 1n << 30n,
    userspaceAddr: 0x7f0000000000n + (BigInt(k) << 30n),
    mmapOffset: 0n,
  }));
  const b = encodeMemoryTable(regions);
  assert.equal(b.length, 8 + 8 * 32);
  assert.deepEqual(decodeMemoryTable(b), regions);
  const nine = encodeMemoryTable([...regions, regions[0]!]);
  assert.throws(() => decodeMemoryTable(nine), /9 regions \(at most 8\)/);
  assert.throws(() => decodeMemoryTable(b.subarray(0, 8 + 7 * 32)), RangeError);
});

test('config: at most 256 bytes, size checked against the payload', () => {
  const data = Uint8Array.from({ length: 60 }, (_, k) => k);
  const c = encodeConfig({ offset: 0, size: 60, flags: 0, data });
  assert.equal(c.length, 72);
  const back = decodeConfig(c);
  assert.equal(back.size, 60);
  assert.deepEqual([...back.data], [...data]);
  const big = new Uint8Array(12 + 300);
  new DataView(big.buffer).setUint32(4, 257, true);
  assert.throws(() => decodeConfig(big), /at most 256/);
  assert.throws(() => decodeConfig(c.subarray(0, 40)), RangeError);
});

test('inflight queue stride: 16-byte header + 16 per descriptor, 64-aligned', () => {
  assert.equal(inflightQueueStride(128), 16 + 16 * 128 + 48);
  assert.equal(inflightQueueStride(1) % 64, 0);
  assert.equal(inflightQueueStride(1), 64);
});
