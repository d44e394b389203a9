/**
 * NbdBackend against a scripted in-process NBD server (helpers/fake-server.ts): behaviour real servers do not
 * show on demand — replies out of order, a broken reply stream, ESHUTDOWN, a server that never answers.
 */
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';

import { BackendError } from '../../../src/backends/backend.js';
import { NbdBackend } from '../../../src/backends/nbd/backend.js';
import {
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_ESHUTDOWN,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_SEND_FLUSH,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
} from '../../../src/backends/nbd/protocol.js';
import { parseNbdSpec } from '../../../src/backends/nbd/uri.js';
import { chunk, dataPayload, simpleReply } from './helpers/bytes.js';
import {
  startFakeServer,
  type FakeConnection,
  type FakeRequest,
  type FakeServer,
} from './helpers/fake-server.js';

const FLAGS = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_CAN_MULTI_CONN;
const fast = { backoffInitialMs: 20, backoffMaxMs: 100 };

function pattern(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 13 + seed * 7) & 0xff;
  return out;
}

describe('NbdBackend with a scripted server', { timeout: 60_000 }, () => {
  const servers: FakeServer[] = [];
  const backends: NbdBackend[] = [];
  afterEach(async () => {
    for (const b of backends.splice(0)) await b.close();
    for (const s of servers.splice(0)) await s.close();
  });

  async function setup(
    spec: string,
    onRequest: (conn: FakeConnection, req: FakeRequest) => void,
  ): Promise<{ s: FakeServer; b: NbdBackend; logs: string[] }> {
    const s = await startFakeServer(1 << 20, FLAGS, onRequest);
    servers.push(s);
    const logs: string[] = [];
    const b = await NbdBackend.open({
      ...parseNbdSpec(`${s.uri}${spec}`),
      log: (m) => logs.push(m),
      ...fast,
    });
    backends.push(b);
    return { s, b, logs };
  }

  it('matches replies that come back in reverse order to their requests', async () => {
    const held: Array<[FakeConnection, FakeRequest]> = [];
    const { s, b } = await setup('', (conn, req) => {
      held.push([conn, req]);
      if (held.length === 8) for (const [c, r] of held.splice(0).reverse()) c.answer(r);
    });
    for (let i = 0; i < 8; i++) s.disk.set(pattern(4096, i), i * 4096);
    const outs = Array.from({ length: 8 }, () => new Uint8Array(4096));
    await Promise.all(outs.map((o, i) => b.read(i * 4096, [o])));
    outs.forEach((o, i) => assert.deepEqual(o, pattern(4096, i)));
  });

  it('drops a connection whose replies are malformed, reconnects and resends: the caller gets the right data', async () => {
    const { s, b, logs } = await setup('', (conn, req) => {
      if (conn.index === 1 && req.type === NBD_CMD_READ) {
        // A data chunk outside the request's range: a protocol violation.
        conn.send(
          chunk(
            req.cookie,
            NBD_REPLY_FLAG_DONE,
            NBD_REPLY_TYPE_OFFSET_DATA,
            dataPayload(req.offset + 512, new Uint8Array(req.length)),
          ),
        );
        return;
      }
      conn.answer(req);
    });
    s.disk.set(pattern(8192, 3), 8192);
    const out = new Uint8Array(8192).fill(0xcc);
    await b.read(8192, [out]);
    assert.deepEqual(out, pattern(8192, 3));
    assert.equal(s.accepted, 2);
    assert.ok(
      logs.some((l) => /lost \(chunk outside the range of the request\)/.test(l)),
      logs.join('\n'),
    );
  });

  it('resends a request answered with ESHUTDOWN on a new connection', async () => {
    const { s, b } = await setup('', (conn, req) => {
      if (conn.index === 1 && req.type === NBD_CMD_WRITE) {
        conn.send(simpleReply(req.cookie, NBD_ESHUTDOWN));
        return;
      }
      conn.answer(req);
    });
    await b.write(0, [pattern(4096, 4)]);
    assert.deepEqual(s.disk.subarray(0, 4096), pattern(4096, 4));
    assert.equal(s.accepted, 2);
  });

  it('completes a write only after the server acknowledged it', async () => {
    let release: (() => void) | undefined;
    const { b } = await setup('', (conn, req) => {
      if (req.type === NBD_CMD_WRITE) release = () => conn.answer(req);
      else conn.answer(req);
    });
    let done = false;
    const w = b.write(0, [pattern(512, 5)]).then(() => (done = true));
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(done, false);
    assert.ok(release);
    release();
    await w;
    assert.equal(done, true);
  });

  it('gives up on requests the server never answers after the retry window, logging once', async () => {
    const { b, logs } = await setup(',timeout=150ms,retry=600ms', (conn, req) => {
      if (req.type !== NBD_CMD_READ) conn.answer(req);
    });
    const start = Date.now();
    await Promise.all(
      Array.from({ length: 4 }, (_, i) =>
        assert.rejects(
          b.read(i * 512, [new Uint8Array(512)]),
          (err: unknown) =>
            err instanceof BackendError &&
            err.errno === 'EIO' &&
            err.code === 'ERR_NBD_RETRIES_EXHAUSTED' &&
            /no reply for 150 ms/.test(err.message),
        ),
      ),
    );
    const elapsed = Date.now() - start;
    assert.ok(elapsed >= 550 && elapsed < 5000, `gave up after ${elapsed} ms`);
    assert.equal(logs.filter((l) => /failed on every connection/.test(l)).length, 1, logs.join('\n'));
    // The server answers writes: the backend still works.
    await b.write(0, [pattern(512, 6)]);
  });

  it('fails in-flight requests with EIO when closed while the server does not answer', async () => {
    const s = await startFakeServer(1 << 20, FLAGS, () => {});
    servers.push(s);
    const b = await NbdBackend.open({ ...parseNbdSpec(s.uri), log: () => {}, closeTimeoutMs: 200, ...fast });
    const r = b.read(0, [new Uint8Array(512)]);
    const closing = b.close();
    await assert.rejects(
      r,
      (err: unknown) =>
        err instanceof BackendError && err.errno === 'EIO' && err.code === 'ERR_BACKEND_CLOSED',
    );
    await closing;
  });
});
