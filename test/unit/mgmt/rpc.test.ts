import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { UsageError, VduseTsError } from '../../../src/common/errors.js';
import {
  RpcCallError,
  RpcError,
  RpcServer,
  handleRequestLine,
  rpcCall,
  type RpcMethods,
  type RpcServerOptions,
} from '../../../src/mgmt/daemon/rpc.js';
import { MgmtError } from '../../../src/mgmt/daemon/errors.js';

const methods: RpcMethods = {
  echo: (p) => p,
  fail: () => {
    throw new RpcError('ERR_RPC_INVALID_PARAMS', 'params.x: bad');
  },
  busy: () => {
    throw new MgmtError('ERR_MGMT_DEVICE_BUSY', 'device d0 is busy');
  },
  usage: () => {
    throw new UsageError('backend spec: bad', { code: 'ERR_SOMETHING_ASKED_WRONGLY' });
  },
  failed: () => {
    throw new VduseTsError('ERR_SOMETHING_FAILED', 'it failed');
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
  assert.deepEqual(a.error, {
    code: -32601,
    message: 'method not found: toString',
    data: { code: 'ERR_RPC_METHOD_NOT_FOUND' },
  });
  const b = (await answer('{"jsonrpc":"2.0","id":2,"method":"fail"}')) as { error: unknown };
  assert.deepEqual(b.error, {
    code: -32602,
    message: 'params.x: bad',
    data: { code: 'ERR_RPC_INVALID_PARAMS' },
  });
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
  options: RpcServerOptions = {},
) {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vduse-rpc-'));
    const path = join(dir, 'sub', 'api.sock');
    const server = new RpcServer(m, { maxLineBytes: 1024, ...options });
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
      (err: unknown) =>
        err instanceof UsageError && err.code === 'ERR_RPC_INVALID_PARAMS' && err.message === 'params.x: bad',
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
    await assert.rejects(
      other.listen(path),
      (err: unknown) =>
        err instanceof MgmtError &&
        err.code === 'ERR_MGMT_PATH' &&
        /another daemon is listening there/.test(err.message),
    );
  }),
);

test('rpcCall: no daemon is a clear one-line error', async () => {
  await assert.rejects(
    rpcCall('/nonexistent/vduse.sock', 'x'),
    (err: unknown) =>
      err instanceof RpcError &&
      err.code === 'ERR_RPC_UNREACHABLE' &&
      err.errno === 'ENOENT' &&
      /^cannot reach \/nonexistent\/vduse\.sock: no daemon is listening/.test(err.message),
  );
});

test('stable codes become JSON-RPC numbers at the edge (error.data.code keeps the code); the client maps back', async () => {
  const e = async (method: string): Promise<unknown> =>
    ((await answer(`{"jsonrpc":"2.0","id":1,"method":"${method}"}`)) as { error: unknown }).error;
  assert.deepEqual(await e('busy'), {
    code: -32004,
    message: 'device d0 is busy',
    data: { code: 'ERR_MGMT_DEVICE_BUSY' },
  });
  assert.deepEqual(await e('usage'), {
    code: -32602,
    message: 'backend spec: bad',
    data: { code: 'ERR_SOMETHING_ASKED_WRONGLY' },
  });
  assert.deepEqual(await e('failed'), {
    code: -32000,
    message: 'it failed',
    data: { code: 'ERR_SOMETHING_FAILED' },
  });
  assert.deepEqual(await e('nope'), {
    code: -32601,
    message: 'method not found: nope',
    data: { code: 'ERR_RPC_METHOD_NOT_FOUND' },
  });
  await withServer(async (path) => {
    await assert.rejects(
      rpcCall(path, 'busy'),
      (err: unknown) =>
        err instanceof RpcCallError &&
        err.code === 'ERR_MGMT_DEVICE_BUSY' &&
        err.rpcCode === -32004 &&
        err.message === 'device d0 is busy',
    );
    await assert.rejects(
      rpcCall(path, 'usage'),
      (err: unknown) => err instanceof UsageError && err.code === 'ERR_SOMETHING_ASKED_WRONGLY',
    );
    await assert.rejects(
      rpcCall(path, 'crash'),
      (err: unknown) => err instanceof RpcCallError && err.code === 'ERR_RPC_CALL' && err.rpcCode === -32000,
    );
  })();
});

test('a batch of more than 128 requests is refused whole', async () => {
  const one = '{"jsonrpc":"2.0","id":1,"method":"echo"}';
  const ok = JSON.parse(
    (await handleRequestLine(`[${Array(128).fill(one).join(',')}]`, methods))!,
  ) as unknown[];
  assert.equal(ok.length, 128);
  let calls = 0;
  const counted: RpcMethods = { echo: () => ++calls };
  const a = JSON.parse((await handleRequestLine(`[${Array(129).fill(one).join(',')}]`, counted))!) as {
    error: { code: number; message: string };
  };
  assert.equal(a.error.code, -32600);
  assert.equal(a.error.message, 'invalid request: a batch of 129 requests; at most 128');
  assert.equal(calls, 0);
});

test('a client that sends requests and never reads its answers is not read from any more', async () => {
  let calls = 0;
  const big: RpcMethods = { big: () => (++calls, 'x'.repeat(64 << 10)) };
  await withServer(
    async (path) => {
      const s = createConnection(path);
      await new Promise((r) => s.on('connect', r));
      s.on('error', () => undefined);
      s.pause(); // never reads
      const line = '{"jsonrpc":"2.0","id":1,"method":"big"}\n';
      const text = line.repeat(5000); // 5000 answers of 64 KiB: 320 MiB if all were made
      s.write(text);
      await new Promise((r) => setTimeout(r, 1500));
      const made = calls;
      s.destroy();
      // the socket buffers hold a few answers; the rest waits unread (and unanswered) in the client's socket
      assert.ok(made < 200, `${made} of 5000 requests were answered to a client that reads nothing`);
      assert.deepEqual(await rpcCall(path, 'echo', [1]), [1], 'others are still served');
    },
    { ...methods, ...big },
    { maxLineBytes: 1 << 20 },
  )();
});

test(
  'connections beyond the limit get one error line and are closed; a freed slot is usable again',
  withServer(
    async (path, server) => {
      const open = await Promise.all(
        [0, 1].map(
          () =>
            new Promise<ReturnType<typeof createConnection>>((resolve) => {
              const s = createConnection(path);
              s.on('connect', () => resolve(s));
            }),
        ),
      );
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(server.connections, 2);
      const third = await raw(path, '', 500);
      assert.equal(third.closed, true);
      const a = JSON.parse(third.data.trim()) as { error: { code: number; message: string } };
      assert.equal(a.error.code, -32005);
      assert.equal(a.error.message, 'too many connections: at most 2 at once; try again later');
      open[0]!.destroy();
      await new Promise((r) => setTimeout(r, 50));
      assert.deepEqual(await rpcCall(path, 'echo', { again: true }), { again: true });
      open[1]!.destroy();
    },
    methods,
    { maxConnections: 2 },
  ),
);

test('an idle connection is closed after the timeout; one waiting for a slow answer is not', async () => {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const slow: RpcMethods = { ...methods, slow: async () => (await gate, 'done') };
  await withServer(
    async (path) => {
      const idle = await raw(path, '', 1000);
      assert.equal(idle.closed, true, 'a silent client is dropped');
      const s = createConnection(path);
      let data = '';
      let closed = false;
      s.setEncoding('utf8').on('data', (d: string) => (data += d));
      s.on('close', () => (closed = true));
      await new Promise((r) => s.on('connect', r));
      s.write('{"jsonrpc":"2.0","id":1,"method":"slow"}\n');
      await new Promise((r) => setTimeout(r, 600));
      assert.equal(closed, false, 'kept while its call runs');
      release();
      await new Promise((r) => setTimeout(r, 50));
      assert.match(data, /"result":"done"/);
      await new Promise((r) => setTimeout(r, 600));
      assert.equal(closed, true, 'dropped once idle again');
    },
    slow,
    { idleTimeoutMs: 200 },
  )();
});
