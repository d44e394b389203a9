// VhostUserProtocol sans I/O: every message's reply and effects, negotiation, REPLY_ACK, and hostile input
// (bad sizes, unknown requests, too many fds, indexes past the queues, oversized rings) -> a disconnect reason
// with nothing applied and every fd closed.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  MessageReader,
  OFFERED_PROTOCOL_FEATURES,
  VhostUserProtocol,
  type VhostUserContext,
  type VhostUserMessage,
} from '../../../src/transports/vhost-user/protocol.js';
import type { RegionSpec } from '../../../src/memory/region-memory.js';
import {
  VHOST_USER_NEED_REPLY_MASK,
  VHOST_USER_REPLY_MASK,
  VHOST_USER_VERSION,
  VhostUserProtocolFeature as PF,
  VhostUserRequest as R,
  decodeConfig,
  decodeHeader,
  decodeInflight,
  decodePayloadU64,
  decodeVringState,
  encodeConfig,
  encodeInflight,
  encodeMemoryTable,
  encodeMessage,
  encodePayloadU64,
  encodeVringAddr,
  encodeVringState,
} from '../../../src/uapi/vhost-user.js';

const PROTOCOL_BIT = 1n << 30n;
const DEVICE_FEATURES = (1n << 32n) | (1n << 9n);

function context(): VhostUserContext & {
  closed: number[];
  tables: RegionSpec[][];
  logs: string[];
  refuse: boolean;
} {
  const ctx = {
    closed: [] as number[],
    tables: [] as RegionSpec[][],
    logs: [] as string[],
    refuse: false,
    deviceFeatures: DEVICE_FEATURES,
    numQueues: 2,
    maxQueueSize: 256,
    config: () => Uint8Array.from({ length: 60 }, (_, i) => i),
    negotiate: () => !ctx.refuse,
    setMemTable: (r: RegionSpec[]) => {
      if (r.some((x) => x.size === 0)) throw new Error('size 0');
      ctx.tables.push(r);
    },
    getInflight: (numQueues: number, queueSize: number) => ({
      fd: 900,
      payload: { mmapSize: 4096n, mmapOffset: 0n, numQueues, queueSize },
    }),
    setInflight: () => undefined,
    closeFd: (fd: number) => void ctx.closed.push(fd),
    log: (m: string) => void ctx.logs.push(m),
  };
  return ctx;
}

function msg(
  request: number,
  payload: Uint8Array = new Uint8Array(0),
  fds: number[] = [],
  flags = VHOST_USER_VERSION,
): VhostUserMessage {
  return { header: { request, flags, size: payload.length }, payload, fds };
}

function negotiated(features = OFFERED_PROTOCOL_FEATURES): {
  p: VhostUserProtocol;
  ctx: ReturnType<typeof context>;
} {
  const p = new VhostUserProtocol(2);
  const ctx = context();
  assert.equal(p.handle(msg(R.SET_PROTOCOL_FEATURES, encodePayloadU64(features)), ctx).disconnect, undefined);
  assert.equal(
    p.handle(msg(R.SET_FEATURES, encodePayloadU64(DEVICE_FEATURES | PROTOCOL_BIT)), ctx).disconnect,
    undefined,
  );
  return { p, ctx };
}

test('GET_FEATURES adds PROTOCOL_FEATURES; GET_PROTOCOL_FEATURES offers MQ, REPLY_ACK, BACKEND_REQ, CONFIG, INFLIGHT_SHMFD', () => {
  const p = new VhostUserProtocol(2);
  const ctx = context();
  const r = p.handle(msg(R.GET_FEATURES), ctx);
  assert.ok(r.reply);
  const h = decodeHeader(r.reply);
  assert.equal(h.flags, VHOST_USER_VERSION | VHOST_USER_REPLY_MASK);
  assert.equal(decodePayloadU64(r.reply.subarray(12)), DEVICE_FEATURES | PROTOCOL_BIT);
  const pf = decodePayloadU64(p.handle(msg(R.GET_PROTOCOL_FEATURES), ctx).reply!.subarray(12));
  for (const b of [PF.MQ, PF.REPLY_ACK, PF.BACKEND_REQ, PF.CONFIG, PF.INFLIGHT_SHMFD])
    assert.ok((pf & (1n << BigInt(b))) !== 0n);
  assert.equal(decodePayloadU64(p.handle(msg(R.GET_QUEUE_NUM), ctx).reply!.subarray(12)), 2n);
  // features not offered, a device refusal, protocol features not offered: disconnect
  assert.match(p.handle(msg(R.SET_FEATURES, encodePayloadU64(1n << 40n)), ctx).disconnect!, /not offered/);
  ctx.refuse = true;
  assert.match(p.handle(msg(R.SET_FEATURES, encodePayloadU64(DEVICE_FEATURES)), ctx).disconnect!, /refuses/);
  assert.match(
    p.handle(msg(R.SET_PROTOCOL_FEATURES, encodePayloadU64(1n << 1n)), ctx).disconnect!,
    /not offered/,
  );
  assert.equal(p.featuresSet, false);
});

test('REPLY_ACK: a NEED_REPLY message without a reply of its own gets u64 0, only once negotiated', () => {
  const plain = new VhostUserProtocol(2);
  const ctx = context();
  assert.equal(
    plain.handle(msg(R.SET_OWNER, undefined, [], VHOST_USER_VERSION | VHOST_USER_NEED_REPLY_MASK), ctx).reply,
    null,
  );
  const { p } = negotiated();
  const r = p.handle(msg(R.SET_OWNER, undefined, [], VHOST_USER_VERSION | VHOST_USER_NEED_REPLY_MASK), ctx);
  assert.ok(r.reply);
  assert.equal(decodeHeader(r.reply).request, R.SET_OWNER);
  assert.equal(decodePayloadU64(r.reply.subarray(12)), 0n);
  // a GET answers itself: no extra ack
  const g = p.handle(
    msg(R.GET_QUEUE_NUM, undefined, [], VHOST_USER_VERSION | VHOST_USER_NEED_REPLY_MASK),
    ctx,
  );
  assert.equal(decodeHeader(g.reply!).size, 8);
  // SET_CONFIG is refused (read-only config): ack 1, the connection goes on
  const c = p.handle(
    msg(
      R.SET_CONFIG,
      encodeConfig({ offset: 0, size: 4, flags: 0, data: new Uint8Array(4) }),
      [],
      VHOST_USER_VERSION | VHOST_USER_NEED_REPLY_MASK,
    ),
    ctx,
  );
  assert.equal(c.disconnect, undefined);
  assert.equal(decodePayloadU64(c.reply!.subarray(12)), 1n);
});

test('rings: NUM/ADDR/BASE/KICK/CALL/ERR/ENABLE make a ring ready; GET_VRING_BASE stops it; fds owned and closed', () => {
  const { p, ctx } = negotiated();
  const table = encodeMemoryTable([
    { guestPhysAddr: 0n, memorySize: 1n << 20n, userspaceAddr: 0x7f00_0000_0000n, mmapOffset: 0n },
  ]);
  const m = p.handle(msg(R.SET_MEM_TABLE, table, [50]), ctx);
  assert.deepEqual(m.effects, [{ kind: 'rings-changed' }]);
  assert.equal(ctx.tables[0]![0]!.fd, 50);
  assert.ok(ctx.closed.includes(50), 'region fds are closed once mapped');
  p.handle(msg(R.SET_VRING_NUM, encodeVringState({ index: 1, num: 128 })), ctx);
  p.handle(msg(R.SET_VRING_BASE, encodeVringState({ index: 1, num: 7 })), ctx);
  p.handle(
    msg(R.SET_VRING_ADDR, encodeVringAddr({ index: 1, flags: 0, desc: 1n, used: 2n, avail: 3n, log: 0n })),
    ctx,
  );
  p.handle(msg(R.SET_VRING_KICK, encodePayloadU64(1n), [60]), ctx);
  p.handle(msg(R.SET_VRING_CALL, encodePayloadU64(1n), [61]), ctx);
  p.handle(msg(R.SET_VRING_ERR, encodePayloadU64(1n), [62]), ctx);
  assert.deepEqual(p.readyRings(), [], 'disabled until SET_VRING_ENABLE with protocol features');
  p.handle(msg(R.SET_VRING_ENABLE, encodeVringState({ index: 1, num: 1 })), ctx);
  assert.deepEqual(p.readyRings(), [1]);
  assert.equal(p.rings[1]!.base, 7);
  assert.ok(![60, 61, 62].some((fd) => ctx.closed.includes(fd)), 'ring fds kept');
  // a new call fd closes the old one at once
  p.handle(msg(R.SET_VRING_CALL, encodePayloadU64(1n), [63]), ctx);
  assert.ok(ctx.closed.includes(61));
  // call without an fd (bit 8)
  p.handle(msg(R.SET_VRING_CALL, encodePayloadU64(1n | 0x100n)), ctx);
  assert.equal(p.rings[1]!.callFd, -1);
  const g = p.handle(msg(R.GET_VRING_BASE, encodeVringState({ index: 1, num: 0 })), ctx);
  assert.deepEqual(g.effects, [{ kind: 'stop-ring', index: 1 }]);
  assert.equal(g.reply, null, 'the runtime replies once stopped');
  const reply = p.vringBaseReply(1, 42);
  assert.deepEqual(decodeVringState(reply.subarray(12)), { index: 1, num: 42 });
  assert.deepEqual(p.readyRings(), [], 'a stopped ring needs a new kick');
  assert.deepEqual(p.takeRetiredFds(), [60], 'the old kick fd is handed back for closing');
  p.closeAll(ctx.closeFd);
  assert.ok(ctx.closed.includes(62));
  assert.equal(p.featuresSet, false);
});

test('GET_CONFIG replies the same size; GET/SET_INFLIGHT_FD; SET_BACKEND_REQ_FD', () => {
  const { p, ctx } = negotiated();
  const r = p.handle(
    msg(R.GET_CONFIG, encodeConfig({ offset: 8, size: 16, flags: 0, data: new Uint8Array(16) })),
    ctx,
  );
  const c = decodeConfig(r.reply!.subarray(12));
  assert.equal(c.size, 16);
  assert.deepEqual(
    [...c.data],
    Array.from({ length: 16 }, (_, i) => i + 8),
  );
  const past = p.handle(
    msg(R.GET_CONFIG, encodeConfig({ offset: 58, size: 8, flags: 0, data: new Uint8Array(8) })),
    ctx,
  );
  assert.deepEqual([...decodeConfig(past.reply!.subarray(12)).data], [58, 59, 0, 0, 0, 0, 0, 0]);
  const gi = p.handle(
    msg(R.GET_INFLIGHT_FD, encodeInflight({ mmapSize: 0n, mmapOffset: 0n, numQueues: 2, queueSize: 128 })),
    ctx,
  );
  assert.deepEqual(gi.replyFds, [900]);
  assert.equal(decodeInflight(gi.reply!.subarray(12)).queueSize, 128);
  assert.match(
    p.handle(
      msg(R.GET_INFLIGHT_FD, encodeInflight({ mmapSize: 0n, mmapOffset: 0n, numQueues: 3, queueSize: 128 })),
      ctx,
    ).disconnect!,
    /3 queues/,
  );
  const si = p.handle(
    msg(
      R.SET_INFLIGHT_FD,
      encodeInflight({ mmapSize: 4096n, mmapOffset: 0n, numQueues: 2, queueSize: 128 }),
      [70],
    ),
    ctx,
  );
  assert.equal(si.disconnect, undefined);
  assert.ok(ctx.closed.includes(70));
  p.handle(msg(R.SET_BACKEND_REQ_FD, new Uint8Array(0), [71]), ctx);
  assert.equal(p.backendFd, 71);
  assert.ok(!ctx.closed.includes(71));
});

test('hostile messages: a one-line reason, nothing applied, every fd closed', () => {
  const cases: [string, VhostUserMessage, RegExp][] = [
    ['unknown request', msg(99), /request 99: not supported/],
    ['log fd (not offered)', msg(R.SET_LOG_FD, new Uint8Array(0), [80]), /SET_LOG_FD: not supported/],
    ['short payload', msg(R.SET_VRING_NUM, new Uint8Array(4)), /vring state: 4 bytes/],
    [
      'index past the queues',
      msg(R.SET_VRING_NUM, encodeVringState({ index: 2, num: 64 })),
      /ring 2 is past/,
    ],
    [
      'ring larger than the maximum',
      msg(R.SET_VRING_NUM, encodeVringState({ index: 0, num: 512 })),
      /size 512/,
    ],
    [
      'ring size not a power of two',
      msg(R.SET_VRING_NUM, encodeVringState({ index: 0, num: 100 })),
      /size 100/,
    ],
    ['base not a u16', msg(R.SET_VRING_BASE, encodeVringState({ index: 0, num: 0x10000 })), /not a u16/],
    ['kick index past the queues', msg(R.SET_VRING_KICK, encodePayloadU64(5n), [81]), /ring 5 is past/],
    ['kick with two fds', msg(R.SET_VRING_KICK, encodePayloadU64(0n), [82, 83]), /2 fds/],
    ['kick without an fd', msg(R.SET_VRING_KICK, encodePayloadU64(0x100n)), /polling/],
    ['unexpected fds', msg(R.GET_FEATURES, new Uint8Array(0), [84]), /1 unexpected fds/],
    [
      'regions vs fds',
      msg(
        R.SET_MEM_TABLE,
        encodeMemoryTable([{ guestPhysAddr: 0n, memorySize: 4096n, userspaceAddr: 0n, mmapOffset: 0n }]),
        [],
      ),
      /1 regions with 0 fds/,
    ],
    [
      'a region the memory refuses',
      msg(
        R.SET_MEM_TABLE,
        encodeMemoryTable([{ guestPhysAddr: 0n, memorySize: 0n, userspaceAddr: 0n, mmapOffset: 0n }]),
        [85],
      ),
      /size 0/,
    ],
    [
      'an address past 2^53',
      msg(
        R.SET_MEM_TABLE,
        encodeMemoryTable([
          { guestPhysAddr: 1n << 60n, memorySize: 4096n, userspaceAddr: 0n, mmapOffset: 0n },
        ]),
        [86],
      ),
      /too large/,
    ],
    [
      'oversized config',
      msg(
        R.GET_CONFIG,
        (() => {
          const b = new Uint8Array(12 + 300);
          new DataView(b.buffer).setUint32(4, 300, true);
          return b;
        })(),
      ),
      /at most 256/,
    ],
  ];
  for (const [what, m, reason] of cases) {
    const { p, ctx } = negotiated();
    const r = p.handle(m, ctx);
    assert.match(r.disconnect ?? '', reason, what);
    assert.equal(r.reply, null, what);
    assert.deepEqual(r.effects, [], what);
    for (const fd of m.fds) assert.ok(ctx.closed.includes(fd), `${what}: fd ${fd} closed`);
    assert.equal(ctx.tables.length, 0, what);
  }
});

test('MessageReader: reads stop at the message end; bad version, oversized payload and too many fds throw and close fds', () => {
  const closed: number[] = [];
  const reader = new MessageReader((fd) => void closed.push(fd));
  const a = encodeMessage(R.SET_OWNER, VHOST_USER_VERSION);
  const b = encodeMessage(R.SET_FEATURES, VHOST_USER_VERSION, encodePayloadU64(1n));
  assert.equal(reader.wanted, 12);
  assert.deepEqual(reader.feed(a, []).length, 1);
  assert.equal(reader.wanted, 12);
  assert.equal(reader.feed(b.subarray(0, 12), [5]).length, 0);
  assert.equal(reader.wanted, 8, 'the payload of the message in progress');
  const [m] = reader.feed(b.subarray(12), []);
  assert.deepEqual(m!.fds, [5]);
  assert.throws(() => reader.feed(encodeMessage(1, 0x2), [6]), /version 2/);
  assert.ok(closed.includes(6));
  const big = encodeMessage(1, VHOST_USER_VERSION);
  new DataView(big.buffer).setUint32(8, 0x2000, true);
  assert.throws(() => reader.feed(big, []), /at most 4096/);
  assert.throws(() => reader.feed(a, [1, 2, 3, 4, 5, 6, 7, 8, 9]), /9 fds/);
  assert.ok([1, 9].every((fd) => closed.includes(fd)));
});
