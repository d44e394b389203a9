import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_SEND_FLUSH,
  NBD_INFO_BLOCK_SIZE,
  NBD_OPTS_MAGIC,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_ERROR_OFFSET,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_REP_ACK,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REQUEST_MAGIC,
  NbdClientProtocol,
  type NbdRequest,
} from '../../../src/backends/nbd/protocol.js';
import {
  Recorder,
  chunk,
  concat,
  dataPayload,
  errorPayload,
  greeting,
  holePayload,
  infoBlockSize,
  infoExport,
  optionReply,
  readyProtocol,
  simpleReply,
} from './helpers/bytes.js';

const FLAGS = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_CAN_MULTI_CONN;
const DONE = NBD_REPLY_FLAG_DONE;

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/** Splits the client's sent bytes into option requests: [option, data]. */
function parseOptions(bytes: Uint8Array, skip: number): Array<[number, Uint8Array]> {
  const out: Array<[number, Uint8Array]> = [];
  let p = skip;
  while (p < bytes.length) {
    const v = view(bytes.subarray(p));
    assert.equal(v.getBigUint64(0), NBD_OPTS_MAGIC);
    const len = v.getUint32(12);
    out.push([v.getUint32(8), bytes.subarray(p + 16, p + 16 + len)]);
    p += 16 + len;
  }
  return out;
}

function pattern(n: number, seed = 1): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + seed) & 0xff;
  return out;
}

describe('NBD handshake', () => {
  it('does fixed newstyle, STRUCTURED_REPLY, then GO with the export name and an NBD_INFO_BLOCK_SIZE request', () => {
    const r = new Recorder({ exportName: 'disk' });
    r.feed(greeting(), 1); // byte by byte
    const sent = r.takeSent();
    assert.equal(view(sent).getUint32(0), NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    assert.deepEqual(
      parseOptions(sent, 4).map(([o]) => o),
      [NBD_OPT_STRUCTURED_REPLY],
    );
    r.feed(optionReply(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK));
    const go = parseOptions(r.takeSent(), 0);
    assert.equal(go.length, 1);
    assert.equal(go[0]![0], NBD_OPT_GO);
    const data = go[0]![1];
    const dv = view(data);
    assert.equal(dv.getUint32(0), 4);
    assert.equal(new TextDecoder().decode(data.subarray(4, 8)), 'disk');
    assert.equal(dv.getUint16(8), 1);
    assert.equal(dv.getUint16(10), NBD_INFO_BLOCK_SIZE);
    r.feed(
      concat(
        infoBlockSize(512, 4096, 1 << 20),
        infoExport(1 << 30, FLAGS),
        optionReply(NBD_OPT_GO, NBD_REP_ACK),
      ),
      7,
    );
    assert.deepEqual(r.failures, []);
    assert.ok(r.info);
    assert.equal(r.info.size, 1 << 30);
    assert.equal(r.info.flags, FLAGS);
    assert.equal(r.info.minBlockSize, 512);
    assert.equal(r.info.preferredBlockSize, 4096);
    assert.equal(r.info.maxBlockSize, 1 << 20);
    assert.equal(r.info.structuredReplies, true);
    assert.equal(r.info.usedExportName, false);
    assert.ok(r.protocol.isReady);
  });

  it('leaves NO_ZEROES out when the server does not offer it, and reads the 124 zero bytes after EXPORT_NAME', () => {
    const r = new Recorder({ exportName: 'x' });
    r.feed(greeting(NBD_FLAG_FIXED_NEWSTYLE));
    assert.equal(view(r.takeSent()).getUint32(0), NBD_FLAG_C_FIXED_NEWSTYLE);
    r.feed(optionReply(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ERR_UNSUP));
    r.takeSent();
    // Old server: no NBD_OPT_GO, fall back to NBD_OPT_EXPORT_NAME.
    r.feed(optionReply(NBD_OPT_GO, NBD_REP_ERR_UNSUP));
    const opts = parseOptions(r.takeSent(), 0);
    assert.equal(opts[0]![0], NBD_OPT_EXPORT_NAME);
    assert.equal(new TextDecoder().decode(opts[0]![1]), 'x');
    const reply = new Uint8Array(10 + 124);
    view(reply).setBigUint64(0, 4096n);
    view(reply).setUint16(8, NBD_FLAG_HAS_FLAGS);
    r.feed(reply.subarray(0, 133));
    assert.equal(r.protocol.isReady, false);
    r.feed(reply.subarray(133));
    assert.ok(r.info);
    assert.equal(r.info.size, 4096);
    assert.equal(r.info.usedExportName, true);
    assert.equal(r.info.structuredReplies, false);
  });

  it('uses EXPORT_NAME straight away with a non-fixed newstyle server', () => {
    const r = new Recorder({ exportName: '' });
    r.feed(greeting(0));
    const sent = r.takeSent();
    assert.equal(view(sent).getUint32(0), 0);
    assert.equal(parseOptions(sent, 4)[0]![0], NBD_OPT_EXPORT_NAME);
  });

  it('signals STARTTLS to the I/O layer and continues only after tlsStarted()', () => {
    const r = new Recorder({ exportName: 'disk', tls: true });
    r.feed(greeting());
    assert.equal(parseOptions(r.takeSent(), 4)[0]![0], NBD_OPT_STARTTLS);
    r.feed(optionReply(NBD_OPT_STARTTLS, NBD_REP_ACK));
    assert.equal(r.tlsRequests, 1);
    assert.equal(r.sent.length, 0);
    r.protocol.tlsStarted();
    assert.equal(parseOptions(r.takeSent(), 0)[0]![0], NBD_OPT_STRUCTURED_REPLY);
    r.feed(optionReply(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK));
    r.feed(concat(infoExport(8192, NBD_FLAG_HAS_FLAGS), optionReply(NBD_OPT_GO, NBD_REP_ACK)));
    assert.equal(r.info?.tls, true);
  });

  it('fails (fatal) when TLS is wanted and the server refuses it', () => {
    const r = new Recorder({ exportName: 'disk', tls: true });
    r.feed(greeting());
    r.feed(optionReply(NBD_OPT_STARTTLS, NBD_REP_ERR_POLICY, new TextEncoder().encode('no certificates')));
    assert.equal(r.failures.length, 1);
    assert.equal(r.failures[0]!.fatal, true);
    assert.match(r.failures[0]!.message, /refused TLS.*NBD_REP_ERR_POLICY.*no certificates/);
  });

  it('reports an unknown export and a TLS-only server as fatal errors with the reason', () => {
    const a = new Recorder();
    a.feed(greeting());
    a.feed(optionReply(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK));
    a.feed(optionReply(NBD_OPT_GO, NBD_REP_ERR_UNKNOWN, new TextEncoder().encode('no such export')));
    assert.equal(a.failures.length, 1);
    assert.ok(a.failures[0]!.fatal);
    assert.match(a.failures[0]!.message, /export not found.*no such export/);

    const b = new Recorder();
    b.feed(greeting());
    b.feed(optionReply(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ERR_TLS_REQD));
    assert.match(b.failures[0]!.message, /requires TLS/);
  });

  it('rejects a non-NBD peer, oldstyle servers, wrong option replies and GO without NBD_INFO_EXPORT', () => {
    const a = new Recorder();
    a.feed(new TextEncoder().encode('HTTP/1.1 400 Bad Request\r\n\r\n'));
    assert.match(a.failures[0]!.message, /not an NBD server/);

    const b = new Recorder();
    const old = greeting();
    view(old).setBigUint64(8, 0x00420281861253n);
    b.feed(old);
    assert.match(b.failures[0]!.message, /oldstyle/);

    const c = new Recorder();
    c.feed(greeting());
    c.feed(optionReply(NBD_OPT_GO, NBD_REP_ACK)); // reply for an option not sent
    assert.match(c.failures[0]!.message, /option reply for option 7/);

    const d = new Recorder();
    d.feed(greeting());
    d.feed(optionReply(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK));
    d.feed(optionReply(NBD_OPT_GO, NBD_REP_ACK));
    assert.match(d.failures[0]!.message, /without sending NBD_INFO_EXPORT/);

    const e = new Recorder();
    e.feed(greeting());
    const huge = optionReply(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK);
    view(huge).setUint32(16, 1 << 30);
    e.feed(huge);
    assert.match(e.failures[0]!.message, /option reply too long/);
  });

  it('reports a connection closed in the middle of the handshake', () => {
    const r = new Recorder();
    r.feed(greeting().subarray(0, 10));
    r.protocol.connectionClosed();
    assert.match(r.failures[0]!.message, /during the handshake/);
  });
});

describe('NBD transmission', () => {
  it('encodes requests: magic, flags, type, cookie, offset, length, then the write payload views', () => {
    const r = readyProtocol(FLAGS);
    const a = new Uint8Array([1, 2, 3]);
    const b = new Uint8Array([4, 5]);
    const cookie = r.protocol.request({
      type: NBD_CMD_WRITE,
      flags: NBD_CMD_FLAG_FUA,
      offset: 2 ** 40 + 7,
      length: 5,
      data: [a, b],
    });
    const sent = r.takeSent();
    assert.equal(sent.length, 28 + 5);
    const v = view(sent);
    assert.equal(v.getUint32(0), NBD_REQUEST_MAGIC);
    assert.equal(v.getUint16(4), NBD_CMD_FLAG_FUA);
    assert.equal(v.getUint16(6), NBD_CMD_WRITE);
    assert.equal(Number(v.getBigUint64(8)), cookie);
    assert.equal(Number(v.getBigUint64(16)), 2 ** 40 + 7);
    assert.equal(v.getUint32(24), 5);
    assert.deepEqual([...sent.subarray(28)], [1, 2, 3, 4, 5]);
  });

  it('completes pipelined requests out of order with simple replies', () => {
    const r = readyProtocol(FLAGS);
    const c1 = r.protocol.request({ type: NBD_CMD_FLUSH, offset: 0, length: 0 });
    const c2 = r.protocol.request({ type: NBD_CMD_WRITE, offset: 0, length: 1, data: [new Uint8Array(1)] });
    assert.equal(r.protocol.inFlightCount, 2);
    r.feed(concat(simpleReply(c2), simpleReply(c1, NBD_ENOSPC)));
    assert.deepEqual(
      r.replies.map((x) => [x.cookie, x.error?.name]),
      [
        [c2, undefined],
        [c1, 'ENOSPC'],
      ],
    );
    assert.equal(r.protocol.inFlightCount, 0);
  });

  it('writes a simple-reply read payload straight into the destination views, fed in small pieces', () => {
    const r = readyProtocol(FLAGS, 1 << 20, false);
    const views = [new Uint8Array(3), new Uint8Array(100), new Uint8Array(29)];
    const other = new Uint8Array(132);
    const cookie = r.protocol.request({ type: NBD_CMD_READ, offset: 512, length: 132, dest: views });
    const data = pattern(132);
    r.feed(simpleReply(cookie, 0, data), 5);
    assert.deepEqual(r.replies, [{ cookie, error: undefined }]);
    assert.deepEqual(concat(...views), data);
    assert.ok(other.every((x) => x === 0));
  });

  it('reassembles structured data and hole chunks in any order into the destination', () => {
    const r = readyProtocol(FLAGS);
    const dest = [new Uint8Array(1000).fill(0xee), new Uint8Array(24).fill(0xee)];
    const cookie = r.protocol.request({ type: NBD_CMD_READ, offset: 4096, length: 1024, dest });
    const data = pattern(1024);
    const stream = concat(
      chunk(cookie, 0, NBD_REPLY_TYPE_OFFSET_DATA, dataPayload(4096 + 512, data.subarray(512, 1020))),
      chunk(cookie, 0, NBD_REPLY_TYPE_OFFSET_HOLE, holePayload(4096 + 256, 256)),
      chunk(cookie, 0, NBD_REPLY_TYPE_OFFSET_DATA, dataPayload(4096, data.subarray(0, 256))),
      chunk(cookie, DONE, NBD_REPLY_TYPE_OFFSET_DATA, dataPayload(4096 + 1020, data.subarray(1020))),
    );
    r.feed(stream, 13);
    assert.deepEqual(r.failures, []);
    assert.deepEqual(r.replies, [{ cookie, error: undefined }]);
    const expect = data.slice();
    expect.fill(0, 256, 512);
    assert.deepEqual(concat(...dest), expect);
  });

  it('completes a structured reply ended by NBD_REPLY_TYPE_NONE, and a write answered by a NONE chunk', () => {
    const r = readyProtocol(FLAGS);
    const dest = [new Uint8Array(512)];
    const c1 = r.protocol.request({ type: NBD_CMD_READ, offset: 0, length: 512, dest });
    const c2 = r.protocol.request({
      type: NBD_CMD_WRITE,
      offset: 0,
      length: 512,
      data: [new Uint8Array(512)],
    });
    r.feed(
      concat(
        chunk(c1, 0, NBD_REPLY_TYPE_OFFSET_DATA, dataPayload(0, pattern(512))),
        chunk(c2, DONE, NBD_REPLY_TYPE_NONE, new Uint8Array(0)),
        chunk(c1, DONE, NBD_REPLY_TYPE_NONE, new Uint8Array(0)),
      ),
    );
    assert.deepEqual(
      r.replies.map((x) => x.cookie),
      [c2, c1],
    );
    assert.deepEqual(dest[0], pattern(512));
  });

  it('turns error chunks into request errors with their message and offset, and keeps the connection', () => {
    const r = readyProtocol(FLAGS);
    const c1 = r.protocol.request({
      type: NBD_CMD_READ,
      offset: 1024,
      length: 1024,
      dest: [new Uint8Array(1024)],
    });
    const c2 = r.protocol.request({ type: NBD_CMD_WRITE, offset: 0, length: 1, data: [new Uint8Array(1)] });
    const c3 = r.protocol.request({ type: NBD_CMD_FLUSH, offset: 0, length: 0 });
    r.feed(
      concat(
        chunk(c1, 0, NBD_REPLY_TYPE_ERROR_OFFSET, errorPayload(NBD_EIO, 'bad sector', 1536)),
        chunk(c1, DONE, NBD_REPLY_TYPE_NONE, new Uint8Array(0)),
        chunk(c2, DONE, NBD_REPLY_TYPE_ERROR, errorPayload(NBD_ENOSPC, 'full')),
        // Unknown error type (bit 15 set): the request is errored, the stream goes on.
        chunk(c3, DONE, 0x8000 + 77, errorPayload(NBD_EIO, '')),
      ),
    );
    assert.deepEqual(r.failures, []);
    assert.deepEqual(r.replies[0], {
      cookie: c1,
      error: { value: NBD_EIO, name: 'EIO', message: 'bad sector', offset: 1536 },
    });
    assert.deepEqual(r.replies[1], {
      cookie: c2,
      error: { value: NBD_ENOSPC, name: 'ENOSPC', message: 'full' },
    });
    assert.equal(r.replies[2]!.error?.name, 'EIO');
    assert.ok(r.protocol.isReady);
  });

  it('sends NBD_CMD_DISC and then refuses requests', () => {
    const r = readyProtocol(FLAGS);
    r.protocol.disconnect();
    const v = view(r.takeSent());
    assert.equal(v.getUint32(0), NBD_REQUEST_MAGIC);
    assert.equal(v.getUint16(6), 2);
    assert.throws(() => r.protocol.request({ type: NBD_CMD_FLUSH, offset: 0, length: 0 }));
    r.protocol.connectionClosed();
    assert.deepEqual(r.failures, []);
  });
});

describe('NBD request slots and input buffers', () => {
  it('reuses a slot for a new request under a new cookie, and refuses a second reply to the old cookie', () => {
    const r = readyProtocol(FLAGS);
    const c1 = r.protocol.request({ type: NBD_CMD_FLUSH, offset: 0, length: 0 });
    r.feed(simpleReply(c1));
    const c2 = r.protocol.request({ type: NBD_CMD_FLUSH, offset: 0, length: 0 });
    assert.notEqual(c2, c1);
    // same slot (low word), next generation (high word)
    assert.equal(c2 % 2 ** 32, c1 % 2 ** 32);
    r.feed(simpleReply(c1));
    assert.equal(r.replies.length, 1);
    assert.match(r.failures[0]!.message, /unknown cookie/);
  });

  it('hands the request object back with its reply', () => {
    const replies: unknown[] = [];
    const protocol = new NbdClientProtocol<NbdRequest & { tag: string }>(
      {
        send: () => {},
        startTls: () => {},
        ready: () => {},
        reply: (_cookie, _error, req) => replies.push(req.tag),
        failed: () => {},
      },
      { exportName: '' },
    );
    protocol.receive(concat(greeting(), optionReply(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK)));
    protocol.receive(concat(infoExport(1 << 20, FLAGS), optionReply(NBD_OPT_GO, NBD_REP_ACK)));
    assert.ok(protocol.isReady);
    const a = protocol.request({ type: NBD_CMD_FLUSH, offset: 0, length: 0, tag: 'a' });
    const b = protocol.request({ type: NBD_CMD_FLUSH, offset: 0, length: 0, tag: 'b' });
    protocol.receive(concat(simpleReply(b), simpleReply(a)));
    assert.deepEqual(replies, ['b', 'a']);
  });

  it('parses a stream fed through one reused buffer (a byte count per read), split anywhere', () => {
    const r = new Recorder();
    // a Buffer, as a socket gives: its slice() is a view, not a copy
    const shared = Buffer.alloc(64);
    const feed = (bytes: Uint8Array, step: number): void => {
      for (let i = 0; i < bytes.length; i += step) {
        const piece = bytes.subarray(i, i + step);
        shared.fill(0xaa);
        shared.set(piece);
        r.protocol.receive(shared, piece.length);
      }
    };
    feed(greeting(), 7);
    feed(optionReply(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK), 13);
    feed(concat(infoBlockSize(512, 4096, 1 << 20), infoExport(1 << 20, FLAGS)), 20);
    feed(optionReply(NBD_OPT_GO, NBD_REP_ACK), 3);
    assert.deepEqual(r.failures, []);
    assert.ok(r.protocol.isReady);
    const dest = [new Uint8Array(700), new Uint8Array(324)];
    const rd = r.protocol.request({ type: NBD_CMD_READ, offset: 8192, length: 1024, dest });
    const wr = r.protocol.request({ type: NBD_CMD_WRITE, offset: 0, length: 1, data: [new Uint8Array(1)] });
    const data = pattern(1024, 9);
    feed(
      concat(
        chunk(wr, DONE, NBD_REPLY_TYPE_NONE, new Uint8Array(0)),
        chunk(rd, DONE, NBD_REPLY_TYPE_OFFSET_DATA, dataPayload(8192, data)),
      ),
      23,
    );
    assert.deepEqual(r.failures, []);
    assert.deepEqual(
      r.replies.map((x) => x.cookie),
      [wr, rd],
    );
    assert.deepEqual(concat(...dest), data);
  });
});

describe('NBD reply parser robustness: each malformed stream is one clean connection error', () => {
  interface Case {
    name: string;
    structured?: boolean;
    /** Builds the server bytes given the cookies of a 512-byte READ at 4096 (dest) and a 512-byte WRITE. */
    bytes: (read: number, write: number) => Uint8Array;
    error: RegExp;
  }
  const cases: Case[] = [
    { name: 'unknown cookie (simple)', bytes: () => simpleReply(999), error: /unknown cookie/ },
    {
      name: 'unknown cookie (structured)',
      bytes: () => chunk(12345, DONE, NBD_REPLY_TYPE_NONE, new Uint8Array(0)),
      error: /unknown cookie/,
    },
    {
      name: 'cookie far beyond any sent',
      bytes: () => chunk(2 ** 62, DONE, NBD_REPLY_TYPE_NONE, new Uint8Array(0)),
      error: /unknown cookie/,
    },
    {
      name: 'unknown reply magic',
      bytes: () => new Uint8Array([0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
      error: /bad reply magic 0xdeadbeef/,
    },
    {
      name: 'data chunk longer than the request',
      bytes: (rd) => chunk(rd, DONE, NBD_REPLY_TYPE_OFFSET_DATA, dataPayload(4096, pattern(600))),
      error: /longer than the request/,
    },
    {
      name: 'oversized chunk length (4 GiB - 1)',
      bytes: (rd) => chunk(rd, DONE, NBD_REPLY_TYPE_OFFSET_DATA, new Uint8Array(0), 0xffffffff),
      error: /longer than the request/,
    },
    {
      name: 'oversized error chunk',
      bytes: (rd) => chunk(rd, DONE, NBD_REPLY_TYPE_ERROR, new Uint8Array(0), 0x7fffffff),
      error: /error chunk too long/,
    },
    {
      name: 'data chunk before the request range',
      bytes: (rd) => chunk(rd, DONE, NBD_REPLY_TYPE_OFFSET_DATA, dataPayload(4000, pattern(100))),
      error: /outside the range/,
    },
    {
      name: 'data chunk past the request range',
      bytes: (rd) => chunk(rd, DONE, NBD_REPLY_TYPE_OFFSET_DATA, dataPayload(4096 + 500, pattern(100))),
      error: /outside the range/,
    },
    {
      name: 'hole past the request range',
      bytes: (rd) => chunk(rd, DONE, NBD_REPLY_TYPE_OFFSET_HOLE, holePayload(4096, 513)),
      error: /outside the range/,
    },
    {
      name: 'hole with zero size',
      bytes: (rd) => chunk(rd, DONE, NBD_REPLY_TYPE_OFFSET_HOLE, holePayload(4096, 0)),
      error: /zero size/,
    },
    {
      name: 'overlapping chunks',
      bytes: (rd) =>
        concat(
          chunk(rd, 0, NBD_REPLY_TYPE_OFFSET_DATA, dataPayload(4096, pattern(300))),
          chunk(rd, DONE, NBD_REPLY_TYPE_OFFSET_HOLE, holePayload(4096 + 200, 312)),
        ),
      error: /overlaps/,
    },
    {
      name: 'read finished without data for the whole range',
      bytes: (rd) => chunk(rd, DONE, NBD_REPLY_TYPE_OFFSET_DATA, dataPayload(4096, pattern(256))),
      error: /without data for the whole range/,
    },
    {
      name: 'truncated data chunk (length < 9)',
      bytes: (rd) => chunk(rd, DONE, NBD_REPLY_TYPE_OFFSET_DATA, dataPayload(4096, new Uint8Array(0))),
      error: /OFFSET_DATA chunk too short/,
    },
    {
      name: 'truncated hole chunk (length 10)',
      bytes: (rd) => chunk(rd, DONE, NBD_REPLY_TYPE_OFFSET_HOLE, holePayload(4096, 512).subarray(0, 10)),
      error: /OFFSET_HOLE chunk with length 10/,
    },
    {
      name: 'truncated error chunk (length 4)',
      bytes: (rd) => chunk(rd, DONE, NBD_REPLY_TYPE_ERROR, new Uint8Array(4)),
      error: /error chunk too short/,
    },
    {
      name: 'truncated error-offset chunk (length 10)',
      bytes: (rd) => chunk(rd, DONE, NBD_REPLY_TYPE_ERROR_OFFSET, errorPayload(NBD_EIO, 'abcd')),
      error: /error chunk too short/,
    },
    {
      name: 'error message length past the chunk',
      bytes: (rd) => chunk(rd, DONE, NBD_REPLY_TYPE_ERROR, errorPayload(NBD_EIO, 'abc', undefined, 40)),
      error: /message length does not fit/,
    },
    {
      name: 'error-offset message length eating the offset',
      bytes: (rd) => chunk(rd, DONE, NBD_REPLY_TYPE_ERROR_OFFSET, errorPayload(NBD_EIO, 'abc', 4096, 7)),
      error: /message length does not fit/,
    },
    {
      name: 'unknown error type with a bad message length',
      bytes: (rd) => chunk(rd, DONE, 0x8000 + 9, errorPayload(NBD_EIO, 'abc', undefined, 9)),
      error: /message length does not fit/,
    },
    {
      name: 'error chunk with error value 0',
      bytes: (rd) => chunk(rd, DONE, NBD_REPLY_TYPE_ERROR, errorPayload(0, '')),
      error: /error value 0/,
    },
    {
      name: 'error offset outside the request',
      bytes: (rd) => chunk(rd, DONE, NBD_REPLY_TYPE_ERROR_OFFSET, errorPayload(NBD_EIO, '', 0)),
      error: /error offset outside/,
    },
    {
      name: 'data for a write',
      bytes: (_rd, wr) => chunk(wr, DONE, NBD_REPLY_TYPE_OFFSET_DATA, dataPayload(0, pattern(512))),
      error: /data chunk in reply to a non-read/,
    },
    {
      name: 'hole for a write',
      bytes: (_rd, wr) => chunk(wr, DONE, NBD_REPLY_TYPE_OFFSET_HOLE, holePayload(0, 512)),
      error: /hole chunk in reply to a non-read/,
    },
    {
      name: 'NONE chunk with a payload',
      bytes: (rd) => chunk(rd, DONE, NBD_REPLY_TYPE_NONE, new Uint8Array(4)),
      error: /NONE with a payload/,
    },
    {
      name: 'NONE chunk without DONE',
      bytes: (rd) => chunk(rd, 0, NBD_REPLY_TYPE_NONE, new Uint8Array(0)),
      error: /without NBD_REPLY_FLAG_DONE/,
    },
    {
      name: 'unknown non-error chunk type (block status, never negotiated)',
      bytes: (rd) => chunk(rd, DONE, 5, new Uint8Array(12)),
      error: /unknown structured reply chunk type 5/,
    },
    {
      name: 'simple reply without error to a read when structured replies are on',
      bytes: (rd) => simpleReply(rd, 0, pattern(512)),
      error: /simple reply with data to a read/,
    },
    {
      name: 'structured chunk when structured replies were not negotiated',
      structured: false,
      bytes: (rd) => chunk(rd, DONE, NBD_REPLY_TYPE_NONE, new Uint8Array(0)),
      error: /structured reply without negotiation/,
    },
    {
      name: 'simple reply after structured chunks of the same request',
      bytes: (rd) =>
        concat(chunk(rd, 0, NBD_REPLY_TYPE_OFFSET_DATA, dataPayload(4096, pattern(512))), simpleReply(rd)),
      error: /simple reply to a request with structured chunks/,
    },
  ];

  for (const c of cases) {
    it(c.name, () => {
      for (const step of [1, 7, 1 << 20]) {
        const r = readyProtocol(FLAGS, 1 << 20, c.structured ?? true);
        const dest = new Uint8Array(512).fill(0xaa);
        const canary = new Uint8Array(64).fill(0x55);
        const rd = r.protocol.request({ type: NBD_CMD_READ, offset: 4096, length: 512, dest: [dest] });
        const wr = r.protocol.request({
          type: NBD_CMD_WRITE,
          offset: 0,
          length: 512,
          data: [new Uint8Array(512)],
        });
        const bytes = c.bytes(rd, wr);
        assert.doesNotThrow(() => r.feed(bytes, step));
        assert.equal(r.failures.length, 1, `step ${step}: one failure event`);
        assert.match(r.failures[0]!.message, c.error);
        assert.equal(r.failures[0]!.fatal, false);
        assert.ok(r.protocol.isFailed);
        assert.ok(canary.every((x) => x === 0x55));
        // After the failure, more input is ignored and nothing else is emitted.
        r.feed(simpleReply(wr));
        r.protocol.connectionClosed();
        assert.equal(r.failures.length, 1);
        assert.ok(r.replies.every((x) => x.cookie !== rd || c.name.startsWith('unknown error type')));
        assert.throws(() => r.protocol.request({ type: NBD_CMD_FLUSH, offset: 0, length: 0 }));
      }
    });
  }

  it('a stream cut in the middle of a data chunk is a connection error and completes nothing', () => {
    const r = readyProtocol(FLAGS);
    const dest = new Uint8Array(512);
    const rd = r.protocol.request({ type: NBD_CMD_READ, offset: 0, length: 512, dest: [dest] });
    const bytes = chunk(rd, DONE, NBD_REPLY_TYPE_OFFSET_DATA, dataPayload(0, pattern(512)));
    r.feed(bytes.subarray(0, 100));
    r.protocol.connectionClosed();
    assert.equal(r.replies.length, 0);
    assert.equal(r.failures.length, 1);
    assert.match(r.failures[0]!.message, /requests in flight/);
  });

  it('never writes outside the destination views, whatever the chunk offsets', () => {
    // A buffer with guard bytes around the destination view.
    for (const [off, len] of [
      [4096 - 8, 16],
      [4096 + 511, 2],
      [4096 + 256, 257],
      [2 ** 52, 10],
    ] as const) {
      const r = readyProtocol(FLAGS);
      const backing = new Uint8Array(512 + 64).fill(0x77);
      const dest = backing.subarray(32, 32 + 512);
      const rd = r.protocol.request({ type: NBD_CMD_READ, offset: 4096, length: 512, dest: [dest] });
      r.feed(chunk(rd, DONE, NBD_REPLY_TYPE_OFFSET_DATA, dataPayload(off, new Uint8Array(len).fill(1))));
      assert.equal(r.failures.length, 1);
      assert.ok(backing.subarray(0, 32).every((x) => x === 0x77));
      assert.ok(backing.subarray(32 + 512).every((x) => x === 0x77));
    }
  });
});
