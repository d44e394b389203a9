import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { createLoopback, createPacketPair } from '../../../src/backends/packet/index.js';
import { settle } from './harness.js';

describe('packet pair', () => {
  it('carries frames both ways, copied at send, whole or cut (the full length reported)', () => {
    const [a, b] = createPacketPair();
    const src = new Uint8Array([1, 2, 3, 4, 5, 6]);
    assert.equal(a.send([src.subarray(0, 2), src.subarray(2)]), true);
    src.fill(0); // the sender's buffers may be reused at once
    const small = new Uint8Array(4);
    assert.equal(b.receive([small]), 6);
    assert.deepEqual([...small], [1, 2, 3, 4]);
    assert.equal(b.receive([new Uint8Array(10)]), -1);
    b.inject(new Uint8Array([9]));
    assert.deepEqual(a.take(), new Uint8Array([9]));
  });

  it('a full direction refuses the frame and calls writable() when the receiver makes room', async () => {
    const [a, b] = createPacketPair({ capacity: 1 });
    let writable = 0;
    a.attach({ readable: () => {}, writable: () => writable++, failed: () => {} });
    assert.equal(a.inject(new Uint8Array(20)), true);
    assert.equal(a.inject(new Uint8Array(20)), false);
    await settle();
    assert.equal(writable, 0);
    assert.notEqual(b.take(), null);
    await settle();
    assert.equal(writable, 1);
    assert.equal(a.inject(new Uint8Array(20)), true);
  });

  it('readable() only while receiving is on, from the event loop', async () => {
    const [a, b] = createPacketPair();
    let readable = 0;
    b.attach({ readable: () => readable++, writable: () => {}, failed: () => {} });
    a.inject(new Uint8Array(20));
    await settle();
    assert.equal(readable, 0);
    b.setReceiving(true);
    assert.equal(readable, 0, 'not inside the call');
    await settle();
    assert.equal(readable, 1);
  });

  it('loopback: what is sent comes back; closed ends throw', async () => {
    const lo = createLoopback();
    lo.inject(new Uint8Array([7, 7]));
    assert.deepEqual(lo.take(), new Uint8Array([7, 7]));
    await lo.close();
    assert.throws(() => lo.inject(new Uint8Array(1)), { code: 'ERR_BACKEND_CLOSED' });
    assert.throws(() => createPacketPair({ capacity: 0 }), RangeError);
  });
});
