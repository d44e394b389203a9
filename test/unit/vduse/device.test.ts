import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';

import { FakeBinding } from '../../../src/testing/fake-binding.js';
import { MockDriver } from '../../../src/testing/mock-driver.js';
import {
  VDUSE_DEV_GET_FEATURES,
  VDUSE_DEV_INJECT_CONFIG_IRQ,
  VDUSE_DEV_SET_CONFIG,
  VDUSE_IOTLB_GET_FD,
  VDUSE_REQ_RESULT_FAILED,
  VDUSE_REQ_RESULT_OK,
  VDUSE_VQ_GET_INFO,
  VDUSE_VQ_INJECT_IRQ,
  VDUSE_VQ_SETUP,
  VDUSE_VQ_SETUP_KICKFD,
  decodeVduseIotlbEntry,
  decodeVduseResponse,
  decodeVduseVqConfig,
  decodeVduseVqEventfd,
  decodeVduseVqInfo,
  encodeVduseIotlbEntry,
  encodeVduseRequest,
  encodeVduseVqInfo,
  type VduseDevRequest,
} from '../../../src/uapi/vduse.js';
import { VduseDevice } from '../../../src/transports/vduse/device.js';
import { EchoDevice, tick, until } from './helpers.js';

const VERSION_1 = 1n << 32n;
const ACCESS_PLATFORM = 1n << 33n;
const EVENT_IDX = 1n << 29n;
const FEATURES = VERSION_1 | ACCESS_PLATFORM | EVENT_IDX;

/** A request without its id (the fake kernel numbers them). */
type Req = VduseDevRequest extends infer R ? (R extends unknown ? Omit<R, 'request_id'> : never) : never;

const opened: VduseDevice[] = [];
afterEach(async () => {
  // close what a failed test left open, so that no watcher keeps the process alive
  for (const dev of opened.splice(0)) await dev.close();
});

/** A fake kernel side of /dev/vduse/NAME, with queue 0 laid out by a MockDriver and queue 1 not ready. */
function setup(options: { driverFeatures?: bigint } = {}) {
  const binding = new FakeBinding();
  const drv = new MockDriver({ size: 16, eventIdx: true, memorySize: 1 << 20 });
  const base = drv.config.descAddr & ~0xfffff;
  const heap = drv.memory.hostView(0x100000, 1 << 20);
  const ioctls: { request: number; arg: Uint8Array | number }[] = [];
  const requests: Uint8Array[] = [];
  const responses: ReturnType<typeof decodeVduseResponse>[] = [];
  const kickfds = new Map<number, number>();
  const vqSetups: { index: number; max_size: number }[] = [];
  let unmaps = 0;
  // IOTLB fds map the driver's heap memory: one entry [0x100000, 0x1fffff].
  binding.mmap = () => heap.buffer as ArrayBuffer;
  binding.munmap = () => void unmaps++;
  let nextId = 100;
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
      ioctls.push({ request, arg });
      const bytes = arg as Uint8Array;
      switch (request) {
        case VDUSE_VQ_SETUP:
          vqSetups.push(decodeVduseVqConfig(bytes));
          return 0;
        case VDUSE_DEV_GET_FEATURES:
          new DataView(bytes.buffer, bytes.byteOffset).setBigUint64(
            0,
            options.driverFeatures ?? FEATURES,
            true,
          );
          return 0;
        case VDUSE_VQ_GET_INFO: {
          const { index } = decodeVduseVqInfo(bytes);
          const info =
            index === 0
              ? {
                  index,
                  num: 16,
                  desc_addr: drv.config.descAddr,
                  driver_addr: drv.config.driverAddr,
                  device_addr: drv.config.deviceAddr,
                  ready: 1,
                }
              : { index, ready: 0 };
          bytes.set(encodeVduseVqInfo(info));
          return 0;
        }
        case VDUSE_VQ_SETUP_KICKFD: {
          const e = decodeVduseVqEventfd(bytes);
          kickfds.set(e.index, e.fd);
          return 0;
        }
        case VDUSE_IOTLB_GET_FD: {
          const e = decodeVduseIotlbEntry(bytes);
          assert.ok(e.start >= 0x100000 && e.start < 0x200000, `lookup of 0x${e.start.toString(16)}`);
          bytes.set(encodeVduseIotlbEntry({ start: 0x100000, last: 0x1fffff, offset: 0, perm: 3 }));
          return binding.eventfd(0, 0);
        }
        default:
          return 0;
      }
    },
  });
  void base;
  const send = async (...reqs: Req[]): Promise<void> => {
    const want = responses.length + reqs.length;
    for (const r of reqs)
      requests.push(encodeVduseRequest({ ...r, request_id: nextId++ } as VduseDevRequest));
    binding.setReadable(fd, true);
    await until(`${reqs.length} responses`, () => responses.length >= want);
  };
  const status = (s: number): Req => ({ kind: 'set_status', type: 1, status: s });
  const device = new EchoDevice();
  const dev = VduseDevice.open({ binding, name: 't', device, fd, closeFd: (x) => binding.close(x) });
  opened.push(dev);
  return {
    binding,
    drv,
    dev,
    device,
    ioctls,
    responses,
    kickfds,
    vqSetups,
    send,
    status,
    fd,
    unmaps: () => unmaps,
  };
}

describe('VduseDevice (over FakeBinding)', () => {
  it('sets up every queue with the device maximum, then serves the status handshake', async () => {
    const t = setup();
    assert.deepEqual(
      t.vqSetups.map((v) => [v.index, v.max_size]),
      [
        [0, 64],
        [1, 64],
      ],
    );
    await t.send(t.status(0), t.status(1), t.status(3), t.status(0xb), t.status(0xf));
    assert.deepEqual(
      t.responses.map((r) => r.result),
      [0, 0, 0, 0, 0],
    );
    assert.deepEqual(
      t.responses.map((r) => r.request_id),
      [100, 101, 102, 103, 104],
    );
    assert.deepEqual(t.device.negotiated, [FEATURES]);
    assert.ok(t.device.context, 'activated');
    assert.equal(t.device.context.features, FEATURES);
    assert.equal(t.device.context.queues.length, 2);
    assert.ok(t.device.context.queues[0], 'queue 0 ready');
    assert.equal(t.device.context.queues[1], null, 'queue 1 not ready');
    assert.deepEqual([...t.kickfds.keys()], [0], 'a kick eventfd for the ready queue only');
    assert.equal(t.dev.running, true);
    assert.equal(t.dev.dataPath.running, true);
    assert.equal(t.dev.stats.messages, 5, 'one counter per control message');
    assert.deepEqual(t.dev.controlStats, { messages: 5, worstAnswerMs: t.dev.stats.messageMaxMs });
    await t.dev.close();
  });

  it('serves a kick: the device pops, completes, and the interrupt is injected', async () => {
    const t = setup();
    await t.send(t.status(0xb), t.status(0xf));
    const payload = new Uint8Array([9, 8, 7, 6]);
    t.drv.addChain({ readable: [payload], writable: [4] });
    t.drv.kick();
    t.binding.eventfdWrite(t.kickfds.get(0)!, 1);
    let entries: ReturnType<typeof t.drv.usedEntries> = [];
    await until('the used entry', () => (entries = t.drv.usedEntries()).length === 1);
    assert.deepEqual(t.device.notified, [0]);
    const [used] = entries;
    assert.equal(used!.len, 4);
    assert.deepEqual([...used!.written], [9, 8, 7, 6]);
    assert.ok(
      t.ioctls.some(
        (c) =>
          c.request === VDUSE_VQ_INJECT_IRQ &&
          new DataView((c.arg as Uint8Array).buffer).getUint32(0, true) === 0,
      ),
      'VDUSE_VQ_INJECT_IRQ(0)',
    );
    assert.equal(t.binding.eventfdCounter(t.kickfds.get(0)!), 0, 'the kick was consumed');
    await t.dev.close();
  });

  it('refuses FEATURES_OK when the device says no, and features never offered', async () => {
    const t = setup();
    t.device.accept = false;
    await t.send(t.status(3), t.status(0xb));
    assert.equal(t.responses[1]!.result, VDUSE_REQ_RESULT_FAILED);
    const u = setup({ driverFeatures: FEATURES | (1n << 40n) });
    await u.send(u.status(0xb));
    assert.equal(u.responses[0]!.result, VDUSE_REQ_RESULT_FAILED);
    assert.deepEqual(u.device.negotiated, [], 'the device is not even asked');
    await t.dev.close();
    await u.dev.close();
  });

  it('resets on status 0: device reset, kick eventfds closed, mappings dropped; restarts cleanly', async () => {
    const t = setup();
    await t.send(t.status(0xb), t.status(0xf));
    const kick = t.kickfds.get(0)!;
    t.drv.addChain({ readable: [new Uint8Array(1)], writable: [1] });
    t.drv.kick();
    t.binding.eventfdWrite(kick, 1);
    await until('the kick', () => t.device.notified.length === 1);
    assert.ok(t.dev.memory.mappedRegions > 0, 'rings mapped');
    await t.send(t.status(0));
    assert.equal(t.device.resets, 1);
    assert.equal(t.binding.isOpen(kick), false, 'kick eventfd closed');
    assert.equal(t.dev.memory.mappedRegions, 0);
    assert.ok(t.unmaps() > 0);
    assert.equal(t.dev.running, false);
    await t.send(t.status(0xb), t.status(0xf));
    assert.equal(t.dev.running, true);
    assert.notEqual(t.kickfds.get(0), kick, 'a new kick eventfd');
    await t.dev.close();
    assert.equal(t.binding.isOpen(t.fd), false, 'dev fd closed');
    assert.equal(t.binding.activeWatchers(), 0, 'no watcher left');
    assert.deepEqual(t.binding.openFds(), [], 'no fd left');
  });

  it('answers GET_VQ_STATE from the live queue', async () => {
    const t = setup();
    await t.send(t.status(0xb), t.status(0xf));
    t.drv.addChain({ readable: [new Uint8Array(4)], writable: [4] });
    t.drv.addChain({ readable: [new Uint8Array(4)], writable: [4] });
    t.drv.kick();
    t.binding.eventfdWrite(t.kickfds.get(0)!, 1);
    let used = 0;
    await until('two used entries', () => (used += t.drv.usedEntries().length) === 2);
    await t.send({ kind: 'get_vq_state', type: 0, index: 0 });
    const r = t.responses.at(-1)!;
    assert.equal(r.result, VDUSE_REQ_RESULT_OK);
    assert.equal(r.vq_state.index, 0);
    assert.equal(r.vq_state.split?.avail_index, 2);
    await t.dev.close();
  });

  it('UPDATE_IOTLB drops the overlapping mappings', async () => {
    const t = setup();
    await t.send(t.status(0xb), t.status(0xf));
    const g = t.dev.memory.generation;
    await t.send({ kind: 'update_iotlb', type: 2, start: 0n, last: (1n << 64n) - 1n, asid: 0 });
    assert.equal(t.responses.at(-1)!.result, VDUSE_REQ_RESULT_OK);
    assert.equal(t.dev.memory.mappedRegions, 0);
    assert.ok(t.dev.memory.generation > g);
    await t.dev.close();
  });

  it('an effect that throws is answered FAILED; the process and the device carry on', async () => {
    const t = setup();
    await t.send(t.status(0xb), t.status(0xf));
    t.drv.addChain({ readable: [new Uint8Array(1)], writable: [1] });
    t.drv.kick();
    t.binding.eventfdWrite(t.kickfds.get(0)!, 1);
    await until('the kick', () => t.device.notified.length === 1);
    assert.ok(t.dev.memory.mappedRegions > 0, 'rings mapped');
    const munmap = t.binding.munmap;
    t.binding.munmap = () => {
      throw new Error('munmap failed');
    };
    await t.send({ kind: 'update_iotlb', type: 2, start: 0n, last: (1n << 64n) - 1n, asid: 0 });
    assert.equal(t.responses.at(-1)!.result, VDUSE_REQ_RESULT_FAILED);
    t.binding.munmap = munmap;
    await t.send({ kind: 'get_vq_state', type: 0, index: 0 });
    assert.equal(t.responses.at(-1)!.result, VDUSE_REQ_RESULT_OK, 'still answering');
    await t.dev.close();
  });

  it('needsReset stops the data path (kicks are ignored) until the driver resets', async () => {
    const t = setup();
    const reasons: Error[] = [];
    t.dev.on('needs-reset', (e) => reasons.push(e));
    await t.send(t.status(0xb), t.status(0xf));
    t.device.host!.needsReset(new Error('backend gone'));
    t.device.host!.needsReset(new Error('again'));
    assert.equal(reasons.length, 1, 'reported once');
    t.binding.eventfdWrite(t.kickfds.get(0)!, 1);
    for (let i = 0; i < 5; i++) await tick();
    assert.deepEqual(t.device.notified, [], 'the kick did not reach the device');
    await t.send(t.status(0), t.status(0xb), t.status(0xf));
    t.drv.addChain({ readable: [new Uint8Array(2)], writable: [2] });
    t.drv.kick();
    t.binding.eventfdWrite(t.kickfds.get(0)!, 1);
    await until('the kick after the reset', () => t.device.notified.length === 1);
    await t.dev.close();
  });

  it('config changes: SET_CONFIG always, the config interrupt only after DRIVER_OK', async () => {
    const t = setup();
    t.device.host!.configChanged();
    const set = t.ioctls.filter((c) => c.request === VDUSE_DEV_SET_CONFIG);
    assert.equal(set.length, 1);
    const arg = set[0]!.arg as Uint8Array;
    assert.deepEqual([...arg.subarray(8)], [1, 2, 3, 4, 5, 6, 7, 8]);
    assert.equal(new DataView(arg.buffer, arg.byteOffset).getUint32(4, true), 8, 'length');
    assert.equal(t.ioctls.filter((c) => c.request === VDUSE_DEV_INJECT_CONFIG_IRQ).length, 0);
    await t.send(t.status(0xb), t.status(0xf));
    t.device.host!.configChanged();
    assert.equal(t.ioctls.filter((c) => c.request === VDUSE_DEV_INJECT_CONFIG_IRQ).length, 1);
    await t.dev.close();
  });
});
