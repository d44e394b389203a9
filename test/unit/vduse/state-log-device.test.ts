// VduseDevice with a state log, over FakeBinding + MockDriver: the log follows the handshake, and a new process
// (reconnect) takes over at the logged state: in-flight requests first, an interrupt per queue, re-sent
// messages answered, a log that does not match the rings refused before anything changes.
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';

import type { DeviceContext, VirtioDevice } from '../../../src/devices/device.js';
import { FakeBinding } from '../../../src/testing/fake-binding.js';
import { MockDriver } from '../../../src/testing/mock-driver.js';
import {
  VDUSE_DEV_GET_FEATURES,
  VDUSE_IOTLB_GET_FD,
  VDUSE_VQ_GET_INFO,
  VDUSE_VQ_INJECT_IRQ,
  VDUSE_VQ_SETUP,
  VDUSE_VQ_SETUP_KICKFD,
  decodeVduseResponse,
  decodeVduseVqEventfd,
  decodeVduseVqInfo,
  encodeVduseIotlbEntry,
  encodeVduseRequest,
  encodeVduseVqInfo,
  type VduseDevRequest,
} from '../../../src/uapi/vduse.js';
import { VduseDevice } from '../../../src/transports/vduse/device.js';
import { logIdentity } from '../../../src/transports/vduse/recovery/reconnect.js';
import { StateLog, stateLogSize } from '../../../src/transports/vduse/recovery/state-log.js';
import type { DescriptorChain } from '../../../src/virtio/virtqueue.js';
import { until } from './helpers.js';

const FEATURES = (1n << 32n) | (1n << 33n) | (1n << 29n);

/** Pops everything and holds it until told to complete. */
class HoldDevice implements VirtioDevice {
  readonly deviceId = 2;
  readonly vendorId = 0;
  readonly numQueues = 1;
  readonly maxQueueSize = 16;
  readonly features = FEATURES;
  context: DeviceContext | null = null;
  held: DescriptorChain[] = [];
  config(): Uint8Array {
    return new Uint8Array([7, 7]);
  }
  bind(): void {}
  negotiate(): boolean {
    return true;
  }
  activate(context: DeviceContext): void {
    this.context = context;
    this.queueNotify(0);
  }
  queueNotify(index: number): void {
    const q = this.context?.queues[index];
    if (!q) return;
    for (let c = q.pop(); c; c = q.pop()) this.held.push(c);
  }
  complete(n: number): void {
    const q = this.context!.queues[0]!;
    for (const c of this.held.splice(0, n)) {
      c.writable[0]?.fill(0x55);
      q.addUsed(c, c.writableBytes);
    }
    q.publish();
  }
  reset(): Promise<void> {
    this.context = null;
    this.held = [];
    return Promise.resolve();
  }
}

const opened: VduseDevice[] = [];
afterEach(async () => {
  for (const dev of opened.splice(0)) await dev.close();
});

type Req = VduseDevRequest extends infer R ? (R extends unknown ? Omit<R, 'request_id'> : never) : never;

/** A fake /dev/vduse/NAME over `drv`'s rings; `pending` requests are delivered first (re-queued ones). */
function kernel(binding: FakeBinding, drv: MockDriver, options: { moveRing?: boolean } = {}) {
  const heap = drv.memory.hostView(0x100000, 1 << 20);
  binding.mmap = () => heap.buffer as ArrayBuffer;
  binding.munmap = () => undefined;
  const requests: Uint8Array[] = [];
  const responses: ReturnType<typeof decodeVduseResponse>[] = [];
  const ioctls: number[] = [];
  const kickfds = new Map<number, number>();
  const irqs: number[] = [];
  let nextId = 1;
  const fd = binding.openDevice({
    read(buffer) {
      const r = requests.shift();
      if (!r) {
        binding.setReadable(fd, false);
        return -1;
      }
      buffer.set(r);
      return r.length;
    },
    write(buffer) {
      responses.push(decodeVduseResponse(buffer));
      return buffer.length;
    },
    ioctl(request, arg) {
      ioctls.push(request);
      const bytes = arg as Uint8Array;
      switch (request) {
        case VDUSE_DEV_GET_FEATURES:
          new DataView(bytes.buffer, bytes.byteOffset).setBigUint64(0, FEATURES, true);
          return 0;
        case VDUSE_VQ_GET_INFO: {
          const { index } = decodeVduseVqInfo(bytes);
          const c = drv.config;
          bytes.set(
            encodeVduseVqInfo({
              index,
              num: 16,
              desc_addr: c.descAddr + (options.moveRing ? 0x1000 : 0),
              driver_addr: c.driverAddr,
              device_addr: c.deviceAddr,
              ready: 1,
            }),
          );
          return 0;
        }
        case VDUSE_VQ_SETUP_KICKFD: {
          const e = decodeVduseVqEventfd(bytes);
          kickfds.set(e.index, e.fd);
          return 0;
        }
        case VDUSE_VQ_INJECT_IRQ:
          irqs.push(new DataView(bytes.buffer, bytes.byteOffset).getUint32(0, true));
          return 0;
        case VDUSE_IOTLB_GET_FD:
          bytes.set(encodeVduseIotlbEntry({ start: 0x100000, last: 0x1fffff, offset: 0, perm: 3 }));
          return binding.eventfd(0, 0);
        default:
          return 0;
      }
    },
  });
  const queue = (...reqs: Req[]): void => {
    for (const r of reqs)
      requests.push(encodeVduseRequest({ ...r, request_id: nextId++ } as VduseDevRequest));
  };
  const send = async (...reqs: Req[]): Promise<void> => {
    const want = responses.length + reqs.length;
    queue(...reqs);
    binding.setReadable(fd, true);
    await until(`${reqs.length} responses`, () => responses.length >= want);
  };
  const status = (s: number): Req => ({ kind: 'set_status', type: 1, status: s });
  return { fd, requests, responses, ioctls, kickfds, irqs, queue, send, status };
}

describe('VduseDevice with a state log', () => {
  it('logs the handshake, then a new process takes over: in-flight first, IRQ, re-sent DRIVER_OK answered', async () => {
    const binding = new FakeBinding();
    const drv = new MockDriver({ size: 16, eventIdx: true, memorySize: 1 << 20 });
    const device = new HoldDevice();
    const buffer = new ArrayBuffer(stateLogSize(1, 16));
    StateLog.format(buffer, logIdentity('t', device));
    const log = new StateLog(buffer);
    const k = kernel(binding, drv);
    const dev = VduseDevice.open({
      binding,
      name: 't',
      device,
      fd: k.fd,
      closeFd: (x) => binding.close(x),
      stateLog: log,
    });
    opened.push(dev);
    await k.send(k.status(0xb));
    assert.equal(log.status, 0xb);
    assert.equal(log.features, FEATURES);
    await k.send(k.status(0xf));
    assert.equal(log.status, 0xf);
    assert.equal(log.queue(0).valid, true);
    const chains = [0, 1, 2, 3].map((i) => drv.addChain({ readable: [new Uint8Array([i])], writable: [8] }));
    drv.kick();
    binding.eventfdWrite(k.kickfds.get(0)!, 1);
    await until('4 chains held', () => device.held.length === 4);
    device.complete(1); // chain 0 done
    assert.deepEqual(log.queue(0).inflightIds(), [chains[1]!.id, chains[2]!.id, chains[3]!.id]);

    // The process dies (no reset, no answer). A DRIVER_OK it had read is re-sent to the next one.
    const image = buffer.slice(0);
    const binding2 = new FakeBinding();
    const device2 = new HoldDevice();
    const k2 = kernel(binding2, drv);
    k2.queue(k2.status(0xf));
    const dev2 = VduseDevice.open({
      binding: binding2,
      name: 't',
      device: device2,
      fd: k2.fd,
      closeFd: (x) => binding2.close(x),
      stateLog: new StateLog(image),
      reconnect: true,
    });
    opened.push(dev2);
    assert.equal(k2.ioctls.includes(VDUSE_VQ_SETUP), false, 'no VQ_SETUP on reconnect');
    assert.equal(dev2.resubmitted, 3);
    assert.deepEqual(
      device2.held.map((c) => c.id),
      [chains[1]!.id, chains[2]!.id, chains[3]!.id],
      'the in-flight chains, in order',
    );
    assert.deepEqual(k2.irqs, [0], 'an interrupt after recovery');
    binding2.setReadable(k2.fd, true);
    await until('the re-sent DRIVER_OK answered', () => k2.responses.length === 1);
    assert.equal(k2.responses[0]!.result, 0);
    assert.equal(device2.held.length, 3, 'not restarted by the re-sent DRIVER_OK');
    // a new chain is served after the resubmitted ones
    const late = drv.addChain({ readable: [new Uint8Array([9])], writable: [8] });
    drv.kick();
    binding2.eventfdWrite(k2.kickfds.get(0)!, 1);
    await until('the new chain', () => device2.held.length === 4);
    assert.equal(device2.held[3]!.id, late.id);
    device2.complete(4);
    const used = drv.usedEntries().map((e) => e.id);
    assert.deepEqual(
      used.sort((a, b) => a - b),
      [...chains, late].map((c) => c.id).sort((a, b) => a - b),
      'every chain completed once',
    );
    await dev.close().catch(() => undefined);
  });

  it('refuses to reconnect when the rings are not where the log has them (nothing applied)', async () => {
    const binding = new FakeBinding();
    const drv = new MockDriver({ size: 16, eventIdx: true, memorySize: 1 << 20 });
    const device = new HoldDevice();
    const buffer = new ArrayBuffer(stateLogSize(1, 16));
    StateLog.format(buffer, logIdentity('t', device));
    const k = kernel(binding, drv);
    const dev = VduseDevice.open({
      binding,
      name: 't',
      device,
      fd: k.fd,
      closeFd: (x) => binding.close(x),
      stateLog: new StateLog(buffer),
    });
    opened.push(dev);
    await k.send(k.status(0xb), k.status(0xf));
    const image = buffer.slice(0);
    const binding2 = new FakeBinding();
    const k2 = kernel(binding2, drv, { moveRing: true });
    assert.throws(
      () =>
        VduseDevice.open({
          binding: binding2,
          name: 't',
          device: new HoldDevice(),
          fd: k2.fd,
          closeFd: (x) => binding2.close(x),
          stateLog: new StateLog(image),
          reconnect: true,
        }),
      /queue 0: the rings are not where the state log has them/,
    );
    assert.equal(k2.kickfds.size, 0, 'no kick eventfd installed');
    assert.deepEqual(new Uint8Array(image), new Uint8Array(buffer), 'the log is untouched');
  });
});
