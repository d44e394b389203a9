import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { UsageError, isVduseTsError } from '../../../src/common/errors.js';
import { RpcCallError, RpcServer, rpcCall, type RpcMethods } from '../../../src/mgmt/daemon/rpc.js';
import { RpcThreadServer } from '../../../src/mgmt/daemon/rpc-thread.js';
import { MgmtError } from '../../../src/mgmt/daemon/errors.js';

const methods: RpcMethods = {
  'device.list': () => ['from the main thread'],
  echo: (p) => p,
  busy: () => {
    throw new MgmtError('ERR_MGMT_DEVICE_BUSY', 'device d0 is busy');
  },
  usage: () => {
    throw new UsageError('params.x: bad', { code: 'ERR_RPC_INVALID_PARAMS' });
  },
};

async function withThread(fn: (path: string, server: RpcThreadServer) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vduse-rpct-'));
  const server = new RpcThreadServer(methods);
  try {
    await server.listen(join(dir, 'run', 'api.sock'));
    await fn(join(dir, 'run', 'api.sock'), server);
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

test('the RPC thread: published answers from the thread, other calls (and their errors) from the main thread', () =>
  withThread(async (path, server) => {
    assert.equal(statSync(path).mode & 0o777, 0o600);
    assert.deepEqual(await rpcCall(path, 'device.list'), ['from the main thread'], 'nothing published yet');
    server.publish('device.list', [{ name: 'd0' }]);
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(await rpcCall(path, 'device.list'), [{ name: 'd0' }]);
    assert.deepEqual(await rpcCall(path, 'echo', { a: [1, 2] }), { a: [1, 2] });
    await assert.rejects(
      rpcCall(path, 'busy'),
      (e: unknown) => e instanceof RpcCallError && e.code === 'ERR_MGMT_DEVICE_BUSY' && e.rpcCode === -32004,
    );
    await assert.rejects(
      rpcCall(path, 'usage'),
      (e: unknown) => e instanceof UsageError && e.message === 'params.x: bad',
    );
    await assert.rejects(rpcCall(path, 'nope'), (e: unknown) =>
      isVduseTsError(e, 'ERR_RPC_METHOD_NOT_FOUND'),
    );
  }));

test('the RPC thread refuses a socket under /proc', async () => {
  const server = new RpcThreadServer(methods);
  try {
    await assert.rejects(server.listen('/proc/nope/x.sock'), (e: unknown) =>
      isVduseTsError(e, 'ERR_MGMT_BAD_PATH'),
    );
  } finally {
    await server.close();
  }
});

/** A client in another process times device.list round trips for `ms`; resolves with the slowest (ms). */
function timeRoundTrips(path: string, ms: number): { slowest: Promise<number>; connected: Promise<void> } {
  const script = `
    const net = require('node:net');
    const s = net.createConnection(${JSON.stringify(path)});
    let max = 0, t0 = 0, buf = '';
    const send = () => { t0 = performance.now(); s.write('{"jsonrpc":"2.0","id":1,"method":"device.list"}\\n'); };
    s.on('connect', () => { process.stdout.write('connected\\n'); send(); });
    s.setEncoding('utf8');
    s.on('data', (d) => {
      buf += d;
      if (!buf.includes('\\n')) return;
      buf = '';
      max = Math.max(max, performance.now() - t0);
      setTimeout(send, 20);
    });
    setTimeout(() => { process.stdout.write(String(max) + '\\n'); process.exit(0); }, ${ms});
  `;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  let onConnect!: () => void;
  const connected = new Promise<void>((r) => (onConnect = r));
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    out += d;
    if (out.includes('connected')) onConnect();
  });
  const slowest = new Promise<number>((resolve) =>
    child.on('close', () => resolve(Number(out.trim().split('\n').pop()))),
  );
  return { slowest, connected };
}

const busyFor = (ms: number): void => {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    // the data path keeping the main thread busy
  }
};

test('device.list is answered promptly while the main thread is busy (it is not, on the main-thread server)', async () => {
  await withThread(async (path, server) => {
    server.publish('device.list', [{ name: 'd0' }]);
    const c = timeRoundTrips(path, 1500);
    await c.connected;
    await new Promise((r) => setTimeout(r, 200));
    busyFor(800);
    const slowest = await c.slowest;
    assert.ok(
      slowest < 300,
      `slowest device.list round trip ${slowest.toFixed(0)} ms with the main thread busy`,
    );
  });
  // the same on the main-thread server: the answer waits for the main thread
  const dir = mkdtempSync(join(tmpdir(), 'vduse-rpcm-'));
  const plain = new RpcServer(methods);
  try {
    await plain.listen(join(dir, 'api.sock'));
    const c = timeRoundTrips(join(dir, 'api.sock'), 1500);
    await c.connected;
    await new Promise((r) => setTimeout(r, 200));
    busyFor(800);
    assert.ok((await c.slowest) >= 500, 'the main-thread server is as slow as its thread');
  } finally {
    await plain.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
