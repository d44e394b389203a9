/**
 * NbdBackend against hostile or odd scripted servers (helpers/fake-server.ts): a server that completes the
 * handshake and then sends garbage (reconnects back off across sessions, the log stays short), block size limits
 * (a maximum below 512 is honoured, a minimum above 512 is never violated), and hostile replies.
 */
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';

import { BackendError } from '../../../src/backends/backend.js';
import { NbdBackend } from '../../../src/backends/nbd/backend.js';
import {
  NBD_CMD_READ,
  NBD_EIO,
  NBD_OPT_GO,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_REP_ACK,
  NBD_REP_ERR_UNKNOWN,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
} from '../../../src/backends/nbd/protocol.js';
import { parseNbdSpec } from '../../../src/backends/nbd/uri.js';
import {
  Recorder,
  chunk,
  concat,
  dataPayload,
  errorPayload,
  greeting,
  holePayload,
  optionReply,
  readyProtocol,
} from './helpers/bytes.js';
import {
  startFakeServer,
  type FakeConnection,
  type FakeRequest,
  type FakeServer,
  type FakeServerOptions,
} from './helpers/fake-server.js';

const FLAGS = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** Four bytes that are no reply magic. */
const GARBAGE = new Uint8Array([0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);

function pattern(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 7 + seed * 31) & 0xff;
  return out;
}

describe('NbdBackend with hostile servers', { timeout: 60_000 }, () => {
  const servers: FakeServer[] = [];
  const backends: NbdBackend[] = [];
  afterEach(async () => {
    for (const b of backends.splice(0)) await b.close();
    for (const s of servers.splice(0)) await s.close();
  });

  async function serve(
    onRequest: (conn: FakeConnection, req: FakeRequest) => void,
    options: FakeServerOptions = {},
    size = 1 << 20,
  ): Promise<FakeServer> {
    const s = await startFakeServer(size, FLAGS, onRequest, options);
    servers.push(s);
    return s;
  }

  /**
   * Options the base version of NbdBackendOptions may not know, passed by spreading (no excess-property check),
   * so that this file compiles against it and its assertions show what it did.
   */
  async function open(
    s: FakeServer,
    logs: string[],
    extra: Record<string, unknown> = {},
    spec = '',
  ): Promise<NbdBackend> {
    const b = await NbdBackend.open({
      ...parseNbdSpec(`${s.uri}${spec}`),
      log: (m) => logs.push(m),
      ...extra,
    });
    backends.push(b);
    return b;
  }

  it('backs off across sessions that die right after the handshake, and logs the first lines then a summary', async () => {
    // Completes the handshake, then sends garbage at once: every session dies within milliseconds.
    let hostile = true;
    const s = await serve((conn, req) => conn.answer(req), {
      onReady: (conn) => {
        if (hostile) conn.send(GARBAGE);
      },
    });
    const logs: string[] = [];
    // Default backoff (100 ms doubling to 2 s); summaries every second so that the window shows one.
    const b = await open(s, logs, { logSummaryMs: 1000 });
    const windowMs = 3000;
    await sleep(windowMs);
    const connections = s.accepted;
    const lines = [...logs];
    // Without the backoff across sessions: a connection every ~100 ms (about 30 here) and two lines each.
    // With it: 0, 0.1, 0.3, 0.7, 1.5, 3.1 s (at most 7 allowing for timer slack).
    assert.ok(
      connections >= 3 && connections <= 7,
      `${connections} connections in ${windowMs} ms:\n${lines.join('\n')}`,
    );
    assert.ok(lines.length <= 5, `${lines.length} log lines in ${windowMs} ms:\n${lines.join('\n')}`);
    assert.match(lines[0]!, /connection lost \(bad reply magic 0xdeadbeef\); reconnecting/);
    assert.ok(
      lines.some((l) => /lost again \d+ ms after it was established .*repeats summarised every 1 s/.test(l)),
      lines.join('\n'),
    );
    assert.ok(
      lines.some((l) =>
        /lost \d+ more time\(s\) soon after reconnecting in the last 1(\.\d)? s \(last error: bad reply magic/.test(
          l,
        ),
      ),
      lines.join('\n'),
    );
    // The server behaves again: the next session serves, the data path works.
    hostile = false;
    const out = new Uint8Array(4096);
    s.disk.set(pattern(4096, 1), 0);
    await b.read(0, [out]);
    assert.deepEqual(out, pattern(4096, 1));
  });

  it('resets the backoff after a session that served well', async () => {
    let drop = false;
    const s = await serve((conn, req) => {
      conn.answer(req);
      if (drop) setTimeout(() => conn.destroy(), 5);
    });
    const logs: string[] = [];
    const b = await open(s, logs, { backoffInitialMs: 20, backoffMaxMs: 2000, stableSessionMs: 50 });
    // Three sessions in a row, each up for more than stableSessionMs and answering a read, then dropped: every
    // reconnect comes after the first backoff step again (not 20, 40, 80 ms...).
    for (let i = 0; i < 3; i++) {
      await sleep(80);
      drop = true;
      await b.read(0, [new Uint8Array(512)]);
      drop = false;
      const before = logs.length;
      while (logs.slice(before).every((l) => !/reconnected after/.test(l))) await sleep(5);
    }
    const delays = logs.flatMap((l) => /reconnected after (\d+) ms/.exec(l)?.[1] ?? []).map(Number);
    assert.equal(delays.length, 3, logs.join('\n'));
    for (const d of delays) assert.ok(d < 200, `reconnect delays ${delays.join(', ')} ms`);
    assert.ok(
      logs.every((l) => !/again|more time/.test(l)),
      logs.join('\n'),
    );
  });

  it('honours a maximum block size below 512: no request is longer, and the data is right', async () => {
    const lengths: number[] = [];
    const s = await serve(
      (conn, req) => {
        lengths.push(req.length);
        conn.answer(req);
      },
      { blockSize: [1, 4096, 256] },
    );
    const b = await open(s, []);
    assert.equal(b.maxIo, 256);
    assert.ok(b.capabilities.optIoSize <= 256, `opt_io_size ${b.capabilities.optIoSize}`);
    await b.write(512, [pattern(4096, 2)]);
    assert.deepEqual(s.disk.subarray(512, 512 + 4096), pattern(4096, 2));
    const out = new Uint8Array(4096);
    await b.read(512, [out.subarray(0, 1000), out.subarray(1000)]);
    assert.deepEqual(out, pattern(4096, 2));
    await b.writeZeroes(0, 2048);
    await b.discard(0, 2048);
    assert.ok(lengths.length >= 2 * 16 + 2 * 8, `${lengths.length} requests`);
    assert.ok(
      lengths.every((n) => n > 0 && n <= 256),
      `request lengths: ${[...new Set(lengths)].join(', ')}`,
    );
  });

  it('never sends a request below the server minimum block size, and tells the device its block size', async () => {
    const seen: FakeRequest[] = [];
    const s = await serve(
      (conn, req) => {
        seen.push(req);
        conn.answer(req);
      },
      { blockSize: [4096, 4096, 1 << 20] },
    );
    const b = await open(s, []);
    assert.equal(b.capabilities.minIoSize, 4096);
    assert.equal(b.capabilities.logicalBlockSize, 4096);
    assert.equal(b.capabilities.discardAlignment, 4096);
    const unaligned = (err: unknown): boolean =>
      err instanceof BackendError &&
      err.code === 'ERR_NBD_UNALIGNED' &&
      err.errno === 'EINVAL' &&
      /not aligned to the server's minimum block size 4096/.test(err.message);
    await assert.rejects(b.read(512, [new Uint8Array(512)]), unaligned);
    await assert.rejects(b.write(4096, [new Uint8Array(512)]), unaligned);
    await assert.rejects(b.discard(512, 4096), unaligned);
    await assert.rejects(b.writeZeroes(0, 1024), unaligned);
    assert.equal(seen.length, 0, 'nothing unaligned reached the server');
    await b.write(8192, [pattern(8192, 3)]);
    const out = new Uint8Array(8192);
    await b.read(8192, [out]);
    assert.deepEqual(out, pattern(8192, 3));
    assert.ok(seen.every((r) => r.offset % 4096 === 0 && r.length % 4096 === 0));
  });

  it('refuses with one line a minimum block size above 4096 and an export smaller than one block', async () => {
    const big = await serve((conn, req) => conn.answer(req), { blockSize: [8192, 8192, 1 << 20] });
    await assert.rejects(open(big, []), (err: unknown) => {
      assert.ok(err instanceof BackendError, String(err));
      assert.equal(err.code, 'ERR_NBD_BLOCK_SIZE');
      assert.match(err.message, /minimum block size 8192 is more than 4096 bytes/);
      assert.doesNotMatch(err.message, /\n/);
      return true;
    });
    const empty = await serve((conn, req) => conn.answer(req), {}, 0);
    await assert.rejects(open(empty, []), (err: unknown) => {
      assert.ok(err instanceof BackendError, String(err));
      assert.equal(err.code, 'ERR_NBD_EMPTY_EXPORT');
      assert.match(err.message, /the export is empty \(0 bytes\)/);
      return true;
    });
  });
});

/** Any C0 control character or DEL. */
function hasControl(text: string): boolean {
  return [...text].some((c) => c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f);
}

describe('NBD server text in our messages', () => {
  const hostileText = `disk\non fire\x1b[31m ${'x'.repeat(5000)}\r\nFAKE LOG LINE`;

  it('keeps an oversized error message with control characters to one bounded line', () => {
    const r = readyProtocol(NBD_FLAG_HAS_FLAGS);
    const cookie = r.protocol.request({
      type: NBD_CMD_READ,
      offset: 0,
      length: 512,
      dest: [new Uint8Array(512)],
    });
    r.feed(chunk(cookie, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, errorPayload(NBD_EIO, hostileText)));
    assert.deepEqual(r.failures, []);
    const message = r.replies[0]!.error!.message;
    assert.ok(!hasControl(message), JSON.stringify(message));
    // At most 200 characters of it, and '...'.
    assert.ok(message.length <= 203, `${message.length} characters`);
    assert.match(message, /^disk on fire \[31m x+\.\.\.$/);
    // Whole, short and clean messages pass unchanged.
    const c2 = r.protocol.request({
      type: NBD_CMD_READ,
      offset: 0,
      length: 512,
      dest: [new Uint8Array(512)],
    });
    r.feed(chunk(c2, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, errorPayload(NBD_EIO, 'no space left')));
    assert.equal(r.replies[1]!.error!.message, 'no space left');
  });

  it('keeps a handshake refusal with a hostile message to one bounded line', () => {
    const r = new Recorder();
    r.feed(greeting());
    r.feed(optionReply(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK));
    r.feed(
      optionReply(NBD_OPT_GO, NBD_REP_ERR_UNKNOWN, new TextEncoder().encode(hostileText.slice(0, 4000))),
    );
    const message = r.failures[0]!.message;
    assert.match(message, /^export not found on the server \(NBD_REP_ERR_UNKNOWN: disk on fire/);
    assert.ok(!hasControl(message), JSON.stringify(message));
    assert.ok(message.length < 300, `${message.length} characters`);
    assert.equal(r.failures[0]!.code, 'ERR_NBD_EXPORT');
  });
});

describe('many chunks in one reply', () => {
  it('accepts disjoint chunks in any order and refuses one that overlaps a neighbour (sorted ranges)', () => {
    const r = readyProtocol(NBD_FLAG_HAS_FLAGS);
    const n = 256;
    const out = new Uint8Array(n * 512).fill(0xee);
    const cookie = r.protocol.request({ type: NBD_CMD_READ, offset: 4096, length: n * 512, dest: [out] });
    // A fixed shuffle of the blocks: odd ones as data, even ones as holes.
    const order = Array.from({ length: n }, (_, i) => (i * 97) % n);
    const parts = order.map((i, k) =>
      chunk(
        cookie,
        k === n - 1 ? NBD_REPLY_FLAG_DONE : 0,
        i % 2 === 1 ? NBD_REPLY_TYPE_OFFSET_DATA : NBD_REPLY_TYPE_OFFSET_HOLE,
        i % 2 === 1 ? dataPayload(4096 + i * 512, pattern(512, i)) : holePayload(4096 + i * 512, 512),
      ),
    );
    r.feed(concat(...parts));
    assert.deepEqual(r.failures, []);
    assert.equal(r.replies.length, 1);
    assert.equal(r.replies[0]!.error, undefined);
    for (let i = 0; i < n; i++) {
      const block = out.subarray(i * 512, (i + 1) * 512);
      assert.deepEqual(block, i % 2 === 1 ? pattern(512, i) : new Uint8Array(512), `block ${i}`);
    }

    // Blocks 0..9 and 20..29 first, then one chunk that reaches from block 9 into block 10: it overlaps the range
    // before its place in the sorted list.
    const q = readyProtocol(NBD_FLAG_HAS_FLAGS);
    const c2 = q.protocol.request({
      type: NBD_CMD_READ,
      offset: 0,
      length: 40 * 512,
      dest: [new Uint8Array(40 * 512)],
    });
    q.feed(chunk(c2, 0, NBD_REPLY_TYPE_OFFSET_HOLE, holePayload(20 * 512, 10 * 512)));
    q.feed(chunk(c2, 0, NBD_REPLY_TYPE_OFFSET_HOLE, holePayload(0, 10 * 512)));
    q.feed(chunk(c2, 0, NBD_REPLY_TYPE_OFFSET_HOLE, holePayload(9 * 512, 2 * 512)));
    assert.match(q.failures[0]?.message ?? '', /chunk overlaps an earlier chunk/);

    // And one that reaches into the range after its place.
    const s = readyProtocol(NBD_FLAG_HAS_FLAGS);
    const c3 = s.protocol.request({
      type: NBD_CMD_READ,
      offset: 0,
      length: 40 * 512,
      dest: [new Uint8Array(40 * 512)],
    });
    s.feed(chunk(c3, 0, NBD_REPLY_TYPE_OFFSET_HOLE, holePayload(20 * 512, 10 * 512)));
    s.feed(chunk(c3, 0, NBD_REPLY_TYPE_OFFSET_HOLE, holePayload(0, 10 * 512)));
    s.feed(chunk(c3, 0, NBD_REPLY_TYPE_OFFSET_DATA, dataPayload(15 * 512, new Uint8Array(6 * 512))));
    assert.match(s.failures[0]?.message ?? '', /chunk overlaps an earlier chunk/);
  });
});
