import assert from 'node:assert/strict';

import type { DeviceContext, DeviceHost, VirtioDevice } from '../../../src/devices/device.js';
import type { MockDriver } from '../../../src/testing/mock-driver.js';
import type { DataPathStart, QueueSetup } from '../../../src/transports/engine/data-path.js';

/** One turn of the event loop (fake watchers fire from setImmediate). */
export const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

/**
 * Turns the event loop until `cond` holds; fails after 200 turns and at least 2 s (a KickLoop's interrupts for
 * completions made outside its callback are injected by the fake loop's 1 ms "prepare" timer, which 200 quick
 * turns can outrun).
 */
export async function until(what: string, cond: () => boolean): Promise<void> {
  const deadline = Date.now() + 2000;
  for (let i = 0; i < 200 || Date.now() < deadline; i++) {
    if (cond()) return;
    if (i < 200) await tick();
    else await new Promise((r) => setTimeout(r, 1));
  }
  if (cond()) return;
  assert.fail(`timed out waiting for ${what}`);
}

/** A device that records what the transport does and echoes each readable buffer into the writable one. */
export class EchoDevice implements VirtioDevice {
  readonly deviceId = 2;
  readonly vendorId = 0;
  readonly numQueues = 2;
  readonly maxQueueSize = 64;
  /** VERSION_1 | ACCESS_PLATFORM | EVENT_IDX */
  readonly features = (1n << 32n) | (1n << 33n) | (1n << 29n);
  host: DeviceHost | null = null;
  negotiated: bigint[] = [];
  accept = true;
  context: DeviceContext | null = null;
  notified: number[] = [];
  resets = 0;
  configBytes = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]);
  config(): Uint8Array {
    return this.configBytes;
  }
  bind(host: DeviceHost): void {
    this.host = host;
  }
  negotiate(features: bigint): boolean {
    this.negotiated.push(features);
    return this.accept;
  }
  activate(context: DeviceContext): void {
    this.context = context;
  }
  queueNotify(index: number): void {
    this.notified.push(index);
    const q = this.context?.queues[index];
    if (!q) return;
    for (let chain = q.pop(); chain; chain = q.pop()) {
      let n = 0;
      const src = chain.readable[0];
      const dst = chain.writable[0];
      if (src && dst) {
        n = Math.min(src.length, dst.length);
        dst.set(src.subarray(0, n));
      }
      q.addUsed(chain, n);
    }
    q.publish();
  }
  reset(): Promise<void> {
    this.resets++;
    this.context = null;
    return Promise.resolve();
  }
}

/** Queue `index` as a data path starts it: the mock driver's split ring of 16 entries, from the start. */
export const ringSetup = (drv: MockDriver, index: number): QueueSetup => ({
  index,
  size: 16,
  descAddr: drv.config.descAddr,
  driverAddr: drv.config.driverAddr,
  deviceAddr: drv.config.deviceAddr,
  state: { nextAvail: 0 },
});

/** A DRIVER_OK of split rings, VERSION_1 only, no recovery, for the mock drivers' rings `drivers[i]` as queue i. */
export const splitStart = (...drivers: MockDriver[]): DataPathStart => ({
  features: 1n << 32n,
  packed: false,
  eventIdx: false,
  indirect: false,
  recover: false,
  queues: drivers.map((drv, i) => ringSetup(drv, i)),
});
