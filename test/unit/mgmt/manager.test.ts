import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { test } from 'node:test';

import { createApi, type DaemonInfo } from '../../../src/mgmt/api.js';
import { BLK_DEFAULTS, Teardown, type BlkRunner, type StopMode } from '../../../src/mgmt/blk/runner.js';
import type { BlkDeviceConfig } from '../../../src/mgmt/blk/options.js';
import { handleRequestLine } from '../../../src/mgmt/daemon/rpc.js';
import { BlkDeviceManager } from '../../../src/mgmt/manager.js';
import { nullLogger } from '../../../src/common/logger.js';
import type { SysBinding } from '../../../src/sys/binding.js';
import type { VdpaClient } from '../../../src/transports/vdpa/client.js';

/** A runner without a kernel: its teardown is one step that takes `ms` and counts how often it ran. */
class FakeRunner extends EventEmitter {
  state: 'running' | 'stopping' | 'stopped' = 'running';
  inFlight = 0;
  teardowns = 0;
  stops: StopMode[] = [];
  readonly path = '/dev/vduse/x';
  readonly vduse = { features: 0n };
  readonly device = { capacityBytes: 1 << 20 };
  readonly #teardown = new Teardown(nullLogger);
  constructor(
    readonly config: BlkDeviceConfig,
    ms: number,
    fail = false,
  ) {
    super();
    this.#teardown.add('the one step', async () => {
      this.teardowns++;
      await new Promise((r) => setTimeout(r, ms));
      this.inFlight = 0;
      if (fail) throw new Error('DESTROY failed');
    });
  }
  get name(): string {
    return this.config.name;
  }
  currentPath(): string {
    return this.path;
  }
  stop(mode: StopMode = 'auto'): Promise<void> {
    this.stops.push(mode);
    this.state = 'stopping';
    return this.#teardown.run().finally(() => (this.state = 'stopped'));
  }
}

function manager(runners: FakeRunner[], options: { drainTimeoutMs?: number; fail?: boolean } = {}) {
  return new BlkDeviceManager({
    binding: {} as SysBinding,
    logger: nullLogger,
    vdpa: {} as VdpaClient,
    drainTimeoutMs: options.drainTimeoutMs ?? 5000,
    start: (config) => {
      const r = new FakeRunner(config, 50, options.fail);
      runners.push(r);
      return Promise.resolve(r as unknown as BlkRunner);
    },
  });
}

const config = (name: string): BlkDeviceConfig => ({ ...BLK_DEFAULTS, name, backend: 'null:1M' });

const info: DaemonInfo = {
  version: '0',
  pid: 1,
  uptimeSeconds: 0,
  socket: null,
  metrics: null,
  user: null,
  privileged: true,
  devices: 0,
};

test('two device.remove calls in one batch run one teardown; both get its result', async () => {
  const runners: FakeRunner[] = [];
  const m = manager(runners);
  await m.add(config('d0'));
  const api = createApi(m, () => info);
  const req = (id: number) => ({ jsonrpc: '2.0', id, method: 'device.remove', params: { name: 'd0' } });
  const text = await handleRequestLine(JSON.stringify([req(1), req(2)]), api);
  const answers = JSON.parse(text!) as { id: number; result?: unknown; error?: unknown }[];
  assert.equal(runners[0]!.teardowns, 1, 'the teardown ran once');
  assert.deepEqual(
    answers.map((a) => [a.id, a.result]),
    [
      [1, { removed: 'd0' }],
      [2, { removed: 'd0' }],
    ],
  );
  assert.deepEqual(m.list(), []);
});

test('a failed teardown is the result of every caller that waited for it', async () => {
  const runners: FakeRunner[] = [];
  const m = manager(runners, { fail: true });
  await m.add(config('d0'));
  const results = await Promise.allSettled([m.remove('d0'), m.remove('d0')]);
  assert.equal(runners[0]!.teardowns, 1);
  assert.deepEqual(
    results.map((r) => (r.status === 'rejected' ? (r.reason as Error).message : 'ok')),
    ['DESTROY failed', 'DESTROY failed'],
  );
});

test('vduse del, then the daemon stops while it drains: one teardown, the removal completes', async () => {
  const runners: FakeRunner[] = [];
  const m = manager(runners);
  await m.add(config('d0'));
  await m.add(config('d1'));
  const r0 = runners[0]!;
  r0.inFlight = 3; // del waits for these to finish
  const removal = m.remove('d0');
  await new Promise((r) => setTimeout(r, 30));
  await m.removeAll(); // SIGTERM
  await removal;
  assert.equal(r0.teardowns, 1, 'd0 torn down once');
  assert.equal(r0.stops[0], 'destroy', 'a device being removed is destroyed even if it would persist');
  assert.equal(runners[1]!.teardowns, 1);
  assert.deepEqual(runners[1]!.stops, ['auto']);
  assert.deepEqual(m.list(), []);
});

test('Teardown: steps newest first, once, whoever asks; the first error is every caller’s', async () => {
  const order: string[] = [];
  const t = new Teardown(nullLogger);
  t.add('a', () => void order.push('a'));
  t.add('b', async () => {
    await new Promise((r) => setTimeout(r, 20));
    order.push('b');
    throw new Error('b failed');
  });
  t.add('c', () => void order.push('c'));
  assert.equal(t.started, false);
  const both = await Promise.allSettled([t.run(), t.run()]);
  assert.equal(t.started, true);
  assert.deepEqual(order, ['c', 'b', 'a'], 'every step once, the later ones despite the failure');
  assert.deepEqual(
    both.map((r) => r.status === 'rejected' && (r.reason as Error).message),
    ['b failed', 'b failed'],
  );
  await assert.rejects(t.run(), /b failed/, 'a later caller gets the same result');
  assert.deepEqual(order, ['c', 'b', 'a']);
});
