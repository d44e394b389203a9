import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  VDUSE_REQ_RESULT_FAILED,
  VDUSE_REQ_RESULT_OK,
  decodeVduseRequest,
  decodeVduseResponse,
  encodeVduseResponse,
} from '../../../src/uapi/vduse.js';
import { VduseProtocol, type ProtocolContext } from '../../../src/transports/vduse/protocol.js';
import type { PackedQueueState, SplitQueueState } from '../../../src/virtio/virtqueue.js';

/** A 152-byte vduse_dev_request as the kernel lays it out (type @0, request_id @4, union @24). */
function request(type: number, id: number, fill: (v: DataView) => void = () => {}): Uint8Array {
  const b = new Uint8Array(152);
  const v = new DataView(b.buffer);
  v.setUint32(0, type, true);
  v.setUint32(4, id, true);
  fill(v);
  return b;
}
const setStatus = (id: number, status: number): Uint8Array => request(1, id, (v) => v.setUint8(24, status));
const getVqState = (id: number, index: number): Uint8Array =>
  request(0, id, (v) => v.setUint32(24, index, true));
const updateIotlb = (id: number, start: bigint, last: bigint): Uint8Array =>
  request(2, id, (v) => {
    v.setBigUint64(24, start, true);
    v.setBigUint64(32, last, true);
  });

function context(
  overrides: Partial<ProtocolContext> = {},
): ProtocolContext & { logs: string[]; asked: number } {
  const logs: string[] = [];
  const ctx = {
    logs,
    asked: 0,
    acceptFeatures(): boolean {
      ctx.asked++;
      return true;
    },
    queueState(): SplitQueueState | PackedQueueState {
      return { nextAvail: 0 };
    },
    log: (m: string) => void logs.push(m),
    ...overrides,
  };
  return ctx;
}

describe('VduseProtocol', () => {
  it('walks the status handshake of a virtio driver and starts the data path once at DRIVER_OK', () => {
    const p = new VduseProtocol(2);
    const ctx = context();
    const steps = [0, 1, 3, 0xb, 0xf];
    const effects = steps.map((status, i) => {
      const r = p.handle(decodeVduseRequest(setStatus(i + 10, status)), ctx);
      assert.equal(r.response.request_id, i + 10);
      assert.equal(r.response.result, VDUSE_REQ_RESULT_OK);
      return r.effects.map((e) => e.kind);
    });
    assert.deepEqual(effects, [['reset'], [], [], [], ['start']]);
    assert.equal(ctx.asked, 1, 'features are checked once, at FEATURES_OK');
    assert.equal(p.status, 0xf);
    assert.equal(p.running, true);
    // The same status again does not start twice.
    assert.deepEqual(p.handle(decodeVduseRequest(setStatus(20, 0xf)), ctx).effects, []);
  });

  it('refuses FEATURES_OK with FAILED when the device rejects the features, and keeps the old status', () => {
    const p = new VduseProtocol(1);
    const ctx = context({ acceptFeatures: () => false });
    p.handle(decodeVduseRequest(setStatus(1, 3)), ctx);
    const r = p.handle(decodeVduseRequest(setStatus(2, 0xb)), ctx);
    assert.equal(r.response.result, VDUSE_REQ_RESULT_FAILED);
    assert.deepEqual(r.effects, []);
    assert.equal(p.status, 3);
    assert.ok(ctx.logs.some((l) => l.includes('FEATURES_OK refused')));
  });

  it('treats a throwing feature check as a refusal', () => {
    const p = new VduseProtocol(1);
    const ctx = context({
      acceptFeatures: () => {
        throw new Error('GET_FEATURES: EPERM');
      },
    });
    const r = p.handle(decodeVduseRequest(setStatus(2, 0xb)), ctx);
    assert.equal(r.response.result, VDUSE_REQ_RESULT_FAILED);
    assert.ok(ctx.logs.some((l) => l.includes('EPERM')));
  });

  it('resets on status 0 and stops on FAILED after DRIVER_OK', () => {
    const p = new VduseProtocol(1);
    const ctx = context();
    p.handle(decodeVduseRequest(setStatus(1, 0xf)), ctx);
    assert.deepEqual(
      p.handle(decodeVduseRequest(setStatus(2, 0x8f)), ctx).effects.map((e) => e.kind),
      ['stop'],
    );
    assert.equal(p.running, false);
    assert.deepEqual(
      p.handle(decodeVduseRequest(setStatus(3, 0)), ctx).effects.map((e) => e.kind),
      ['reset'],
    );
    assert.equal(p.status, 0);
    // After the reset a new handshake starts again.
    p.handle(decodeVduseRequest(setStatus(4, 0xb)), ctx);
    assert.deepEqual(
      p.handle(decodeVduseRequest(setStatus(5, 0xf)), ctx).effects.map((e) => e.kind),
      ['start'],
    );
  });

  it('answers GET_VQ_STATE with the split state, masked to 16 bits', () => {
    const p = new VduseProtocol(2);
    const ctx = context({ queueState: (i) => ({ nextAvail: 0x10005 + i }) });
    const r = p.handle(decodeVduseRequest(getVqState(7, 1)), ctx);
    assert.equal(r.response.result, VDUSE_REQ_RESULT_OK);
    const bytes = encodeVduseResponse(r.response);
    const v = new DataView(bytes.buffer);
    assert.equal(v.getUint32(0, true), 7);
    assert.equal(v.getUint32(24, true), 1);
    assert.equal(v.getUint16(28, true), 6);
  });

  it('answers GET_VQ_STATE with the packed state (counters 1 bit, indexes 15 bits)', () => {
    const p = new VduseProtocol(1);
    const ctx = context({
      queueState: () => ({ lastAvailCounter: 1, lastAvailIdx: 0x8003, lastUsedCounter: 0, lastUsedIdx: 2 }),
    });
    const r = p.handle(decodeVduseRequest(getVqState(8, 0)), ctx);
    const back = decodeVduseResponse(encodeVduseResponse(r.response));
    assert.deepEqual(back.vq_state.packed, {
      last_avail_counter: 1,
      last_avail_idx: 3,
      last_used_counter: 0,
      last_used_idx: 2,
    });
  });

  it('refuses GET_VQ_STATE for a queue that does not exist', () => {
    const p = new VduseProtocol(1);
    const r = p.handle(decodeVduseRequest(getVqState(9, 4)), context());
    assert.equal(r.response.result, VDUSE_REQ_RESULT_FAILED);
  });

  it('turns UPDATE_IOTLB into an invalidation; last = 2^64-1 becomes the largest address', () => {
    const p = new VduseProtocol(1);
    const r = p.handle(decodeVduseRequest(updateIotlb(11, 0n, (1n << 64n) - 1n)), context());
    assert.equal(r.response.result, VDUSE_REQ_RESULT_OK);
    assert.deepEqual(r.effects, [{ kind: 'invalidate', start: 0, last: Number.MAX_SAFE_INTEGER }]);
    const bad = p.handle(decodeVduseRequest(updateIotlb(12, 0x2000n, 0x1000n)), context());
    assert.equal(bad.response.result, VDUSE_REQ_RESULT_FAILED);
    assert.deepEqual(bad.effects, []);
  });

  it('answers unknown request types FAILED, echoing the id, with zero reserved bytes', () => {
    const p = new VduseProtocol(1);
    const ctx = context();
    const r = p.handle(decodeVduseRequest(request(99, 0xfffffffe)), ctx);
    const bytes = encodeVduseResponse(r.response);
    assert.equal(new DataView(bytes.buffer).getUint32(0, true), 0xfffffffe);
    assert.equal(new DataView(bytes.buffer).getUint32(4, true), VDUSE_REQ_RESULT_FAILED);
    assert.ok(bytes.subarray(8, 24).every((b) => b === 0));
    assert.equal(ctx.logs.length, 1);
  });
});
