// The inflight region: what GET_INFLIGHT_FD creates, what SET_INFLIGHT_FD accepts, and the log a queue keeps in
// it (pop order by counter, completion clears, used_idx follows the ring).
import assert from 'node:assert/strict';
import { closeSync, ftruncateSync } from 'node:fs';
import { test } from 'node:test';

import { InflightRegion } from '../../../src/transports/vhost-user/inflight.js';
import { MFD_CLOEXEC } from '../../../src/sys/binding.js';
import { INFLIGHT_Q_DESC_NUM, inflightQueueStride } from '../../../src/uapi/vhost-user.js';
import { sys } from './helpers.js';

test('a created region is handed back as it was, with the pops in flight oldest first', () => {
  const made = InflightRegion.create(sys, 2, 16);
  assert.equal(Number(made.payload.mmapSize), 2 * inflightQueueStride(16));
  const q = made.region.queues[1]!;
  q.popped(5, 1);
  q.popped(2, 2);
  q.popped(9, 3);
  q.completed([2], 1, 1);
  made.region.close();
  const back = InflightRegion.open(sys, made.fd, made.payload, 2);
  const q1 = back.queues[1]!;
  assert.deepEqual(q1.inflightIds(), [5, 9]);
  assert.equal(q1.usedPosition, 1);
  assert.deepEqual(back.queues[0]!.inflightIds(), []);
  // the sequence goes on after the highest counter found
  q1.clear(5);
  q1.popped(5, 4);
  assert.deepEqual(q1.inflightIds(), [9, 5]);
  q1.settle(3);
  assert.equal(q1.usedPosition, 3);
  back.close();
  closeSync(made.fd);
});

test('SET_INFLIGHT_FD refuses a region that does not fit', () => {
  const made = InflightRegion.create(sys, 2, 16);
  made.region.close();
  const p = made.payload;
  assert.throws(() => InflightRegion.open(sys, made.fd, { ...p, mmapSize: 64n }, 2), /needs/);
  assert.throws(() => InflightRegion.open(sys, made.fd, { ...p, mmapOffset: 100n }, 2), /page-aligned/);
  assert.throws(() => InflightRegion.open(sys, made.fd, p, 1), /for 2 queues \(the device has 1\)/);
  assert.throws(() => InflightRegion.open(sys, made.fd, { ...p, queueSize: 0 }, 2), /of 0/);
  assert.throws(
    () => InflightRegion.open(sys, made.fd, { ...p, mmapOffset: 4096n }, 2),
    /past the end of its fd/,
  );
  // a queue part written for another size
  const mapped = new DataView(sys.mmap(made.fd, Number(p.mmapSize), 3, 1, 0));
  mapped.setUint16(INFLIGHT_Q_DESC_NUM, 32, true);
  assert.throws(() => InflightRegion.open(sys, made.fd, p, 2), /queue 0: desc_num 32 \(expected 16\)/);
  sys.munmap(mapped.buffer as ArrayBuffer);
  // a region never written (all zero, e.g. the VMM's own memfd) is taken and initialised
  const zero = sys.memfdCreate('zero', MFD_CLOEXEC);
  ftruncateSync(zero, Number(p.mmapSize));
  InflightRegion.open(sys, zero, p, 2).close();
  closeSync(zero);
  closeSync(made.fd);
});
