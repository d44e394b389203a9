import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import {
  INVALID_PARAMS,
  RpcCallError,
  RpcError,
  RpcServer,
  handleRequestLine,
  rpcCall,
  type RpcMethods,
} from '../../../src/mgmt/daemon/rpc.js';

const methods: RpcMethods = {
  echo: (p) => p,
  fail: () => {
    throw new RpcError(INVALID_PARAMS, 'params.x: bad');
  },
  crash: () => {
    throw new Error('boom');
  },
  nothing: () => undefined,
};

async function answer(line: string): Promise<unknown> {
  const text = await handleRequestLine(line, methods);
  return text === null ? null : JSON.parse(text);
}

test('a call and its result; a notification gets no answer', async () => {
  assert.deepEqual(await answer('{"jsonrpc":"2.0","id":7,"method":"echo","params":{"a":1}}'), {
    jsonrpc: '2.0',
    id: 7,
    result: { a: 1 },
  });
  assert.deepEqual(await answer('{"jsonrpc":"2.0","id":"x","method":"nothing"}'), {
    jsonrpc: '2.0',
    id: 'x',
    result: null,
  });
  assert.equal(await answer('{"jsonrpc":"2.0","method":"echo"}'), null);
  assert.equal(await answer('{"jsonrpc":"2.0","method":"no.such"}'), null);
});

test('malformed JSON is -32700 with id null', async () => {
  const a = (await answer('{"jsonrpc":"2.0",')) as { id: null; error: { code: number; message: string } };
  assert.equal(a.id, null);
  assert.equal(a.error.code, -32700);
  assert.match(a.error.message, /^parse error: /);
});

test('invalid requests are -32600 with a reason', async () => {
  const code = async (line: string): Promise<[number, string]> => {
    const a = (await answer(line)) as { error: { code: number; message: string } };
    return [a.error.code, a.error.message];
  };
  assert.deepEqual(await code('5'), [-32600, 'invalid request: expected a JSON object']);
  assert.deepEqual(await code('{"id":1,"method":"echo"}'), [
    -32600,
    'invalid request: "jsonrpc" must be "2.0"',
  ]);
  assert.deepEqual(await code('{"jsonrpc":"2.0","id":1,"method":5}'), [
    -32600,
    'invalid request: "method" must be a string',
  ]);
  assert.deepEqual(await code('{"jsonrpc":"2.0","id":{},"method":"echo"}'), [
    -32600,
    'invalid request: "id" must be a string, number or null',
  ]);
  assert.deepEqual(await code('{"jsonrpc":"2.0","id":1,"method":"echo","params":3}'), [
    -32600,
    'invalid request: "params" must be an object or array',
  ]);
  assert.deepEqual(await code('[]'), [-32600, 'invalid request: empty batch']);
});

test('unknown methods are -32601 (no prototype lookups); method errors keep their code; others are -32000', async () => {
  const a = (await answer('{"jsonrpc":"2.0","id":1,"method":"toString"}')) as {
    error: { code: number; message: string };
  };
  assert.deepEqual(a.error, { code: -32601, message: 'method not found: toString' });
  const b = (await answer('{"jsonrpc":"2.0","id":2,"method":"fail"}')) as { error: unknown };
  assert.deepEqual(b.error, { code: -32602, message: 'params.x: bad' });
  const c = (await answer('{"jsonrpc":"2.0","id":3,"method":"crash"}')) as { error: unknown };
  assert.deepEqual(c.error, { code: -32000, message: 'boom' });
});

test('batches answer each call, in order, and leave notifications out', async () => {
  const a = (await answer(
    '[{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]},{"jsonrpc":"2.0","method":"echo"},7,{"jsonrpc":"2.0","id":2,"method":"nope"}]',
  )) as { id: unknown; result?: unknown; error?: { code: number } }[];
  assert.equal(a.length, 3);
  assert.deepEqual(a[0], { jsonrpc: '2.0', id: 1, result: [1] });
  assert.equal(a[1]!.error!.code, -32600);
  assert.equal(a[2]!.error!.code, -32601);
});

function withServer(
  fn: (path: string, server: RpcServer) => Promise<void>,
  m: RpcMethods = methods,
  maxLineBytes = 1024,
) {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vduse-rpc-'));
    const path = join(dir, 'sub', 'api.sock');
    const server = new RpcServer(m, { maxLineBytes });
    await server.listen(path);
    try {
      await fn(path, server);
    } finally {
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

/** Send raw text, collect what comes back until the server closes or `ms` pass. */
function raw(path: string, text: string, ms = 300): Promise<{ data: string; closed: boolean }> {
  return new Promise((resolve) => {
    const s = createConnection(path);
    let data = '';
    let closed = false;
    s.setEncoding('utf8');
    s.on('data', (d: string) => (data += d));
    s.on('error', () => undefined);
    s.on('close', () => {
      closed = true;
      resolve({ data, closed });
    });
    s.on('connect', () => s.write(text));
    setTimeout(() => {
      s.destroy();
      resolve({ data, closed });
    }, ms);
  });
}

test(
  'socket: mode 0600, several lines in one write and one line in pieces, rpcCall',
  withServer(async (path) => {
    assert.equal(statSync(path).mode & 0o777, 0o600);
    const r = await raw(
      path,
      '{"jsonrpc":"2.0","id":1,"method":"echo","params":{"n":1}}\n\n{"jsonrpc":"2.0","id":2,"method":"echo","params":{"n":2}}\n',
    );
    const lines = r.data
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { id: number });
    assert.deepEqual(
      lines.map((l) => l.id),
      [1, 2],
    );
    assert.deepEqual(await rpcCall(path, 'echo', { hello: 'world' }), { hello: 'world' });
    await assert.rejects(
      rpcCall(path, 'fail'),
      (err: unknown) => err instanceof RpcCallError && err.code === -32602 && err.message === 'params.x: bad',
    );
  }),
);

test(
  'a line over the limit gets -32600 and the connection is closed; the server keeps serving',
  withServer(async (path) => {
    const r = await raw(path, `{"jsonrpc":"2.0","id":1,"method":"echo","params":"${'x'.repeat(5000)}`, 1000);
    assert.equal(r.closed, true);
    const a = JSON.parse(r.data.trim()) as { error: { code: number; message: string } };
    assert.equal(a.error.code, -32600);
    assert.equal(a.error.message, 'invalid request: line longer than 1024 bytes; connection closed');
    // a complete line that is too long, too
    const r2 = await raw(path, `${'y'.repeat(2000)}\n`, 1000);
    assert.equal(r2.closed, true);
    assert.match(r2.data, /line longer than 1024 bytes/);
    assert.deepEqual(await rpcCall(path, 'echo', [1]), [1]);
  }),
);

test('a client that disconnects mid-request harms nothing: the call finishes, the server keeps serving', async () => {
  let finished = 0;
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const slow: RpcMethods = {
    slow: async () => {
      await gate;
      finished++;
      return 'done';
    },
    echo: (p) => p,
  };
  await withServer(async (path) => {
    const s = createConnection(path);
    await new Promise((r) => s.on('connect', r));
    s.write('{"jsonrpc":"2.0","id":1,"method":"slow"}\n{"jsonrpc":"2.0","id":2,"method":"sl');
    await new Promise((r) => setTimeout(r, 50));
    s.destroy();
    await new Promise((r) => setTimeout(r, 50));
    release();
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(finished, 1);
    assert.deepEqual(await rpcCall(path, 'echo', { still: 'here' }), { still: 'here' });
  }, slow)();
});

test(
  'a second daemon on a live socket is refused; a stale socket file is replaced',
  withServer(async (path) => {
    const other = new RpcServer(methods);
    await assert.rejects(other.listen(path), /another daemon is listening there/);
  }),
);

test('rpcCall: no daemon is a clear one-line error', async () => {
  await assert.rejects(
    rpcCall('/nonexistent/vduse.sock', 'x'),
    /^Error: cannot reach \/nonexistent\/vduse\.sock: no daemon is listening/,
  );
});
