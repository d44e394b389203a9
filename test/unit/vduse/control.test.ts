import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import type { SysBinding } from '../../../src/sys/binding.js';
import { systemError } from '../../../src/sys/errors.js';
import {
  VDUSE_CREATE_DEV,
  VDUSE_DESTROY_DEV,
  VDUSE_SET_API_VERSION,
  decodeU64,
  decodeVduseDevConfig,
} from '../../../src/uapi/vduse.js';
import { VduseControl, listVduseDevices } from '../../../src/transports/vduse/control.js';
import { VduseError } from '../../../src/transports/vduse/errors.js';

const FEATURES = (1n << 32n) | (1n << 33n);

/** A stand-in for /dev/vduse/control: a real file to open, ioctls answered by `handler`. */
function setup(handler: (request: number, arg: Uint8Array) => number) {
  const dir = mkdtempSync(join(tmpdir(), 'vduse-control-'));
  const path = join(dir, 'control');
  writeFileSync(path, '');
  const calls: { request: number; arg: Uint8Array }[] = [];
  const binding = {
    ioctl(_fd: number, request: number, arg: Uint8Array | number) {
      const bytes = arg as Uint8Array;
      calls.push({ request, arg: bytes.slice() });
      return handler(request, bytes);
    },
  } as unknown as SysBinding;
  return { binding, path, calls, done: () => rmSync(dir, { recursive: true, force: true }) };
}

const versions = (calls: { request: number; arg: Uint8Array }[]): bigint[] =>
  calls.filter((c) => c.request === VDUSE_SET_API_VERSION).map((c) => decodeU64(c.arg));

describe('VduseControl', () => {
  it('sets API version 0 explicitly by default', () => {
    const t = setup(() => 0);
    const c = VduseControl.open(t.binding, { path: t.path });
    assert.equal(c.apiVersion, 0);
    assert.deepEqual(versions(t.calls), [0n]);
    c.close();
    t.done();
  });

  it('asks for version 1 only when told to, and falls back to 0 on EINVAL', () => {
    const t = setup((request, arg) => {
      if (request === VDUSE_SET_API_VERSION && decodeU64(arg) === 1n) throw systemError('EINVAL', 'ioctl');
      return 0;
    });
    const c = VduseControl.open(t.binding, { path: t.path, apiVersion: 1 });
    assert.equal(c.apiVersion, 0);
    assert.deepEqual(versions(t.calls), [1n, 0n]);
    c.close();
    const u = setup(() => 0);
    const d = VduseControl.open(u.binding, { path: u.path, apiVersion: 1 });
    assert.equal(d.apiVersion, 1);
    assert.deepEqual(versions(u.calls), [1n]);
    d.close();
    t.done();
    u.done();
  });

  it('says to load the module when the control device is missing', () => {
    assert.throws(
      () => VduseControl.open({} as SysBinding, { path: '/nonexistent/vduse/control' }),
      (e: unknown) =>
        e instanceof VduseError && e.code === 'ERR_VDUSE_UNAVAILABLE' && /modprobe vduse/.test(e.message),
    );
  });

  it('creates a device: name, ids, features, queues, vq_align 4096 and the config space', () => {
    const t = setup(() => 0);
    const c = VduseControl.open(t.binding, { path: t.path });
    c.createDevice({
      name: 'blk0',
      deviceId: 2,
      vendorId: 0x1af4,
      features: FEATURES,
      numQueues: 4,
      config: new Uint8Array([1, 2, 3]),
    });
    const create = t.calls.find((x) => x.request === VDUSE_CREATE_DEV)!;
    const { cfg, config } = decodeVduseDevConfig(create.arg);
    assert.equal(cfg.name, 'blk0');
    assert.equal(cfg.device_id, 2);
    assert.equal(cfg.vendor_id, 0x1af4);
    assert.equal(cfg.features, FEATURES);
    assert.equal(cfg.vq_num, 4);
    assert.equal(cfg.vq_align, 4096);
    assert.equal(cfg.ngroups, 0);
    assert.deepEqual([...config], [1, 2, 3]);
    c.close();
    t.done();
  });

  it('refuses what the kernel would refuse, before asking it', () => {
    const t = setup(() => 0);
    const c = VduseControl.open(t.binding, { path: t.path });
    const desc = {
      name: 'x',
      deviceId: 2,
      vendorId: 0,
      features: FEATURES,
      numQueues: 1,
      config: new Uint8Array(8),
    };
    assert.throws(() => c.createDevice({ ...desc, features: 1n << 32n }), /ACCESS_PLATFORM/);
    assert.throws(() => c.createDevice({ ...desc, name: '' }), { code: 'ERR_VDUSE_NAME' });
    assert.throws(() => c.createDevice({ ...desc, name: 'a/b' }), { code: 'ERR_VDUSE_NAME' });
    assert.throws(() => c.createDevice({ ...desc, numQueues: 0 }), { code: 'ERR_VDUSE_CONFIG' });
    assert.throws(() => c.createDevice({ ...desc, config: new Uint8Array(4097) }), {
      code: 'ERR_VDUSE_CONFIG',
    });
    assert.equal(t.calls.filter((x) => x.request === VDUSE_CREATE_DEV).length, 0);
    c.close();
    t.done();
  });

  it('maps kernel errors of CREATE_DEV to clear one-line errors', () => {
    for (const [code, expected, re] of [
      ['EEXIST', 'ERR_VDUSE_EXISTS', /already exists/],
      ['EPERM', 'ERR_VDUSE_PERMISSION', /not permitted/],
      ['EINVAL', 'ERR_VDUSE_CONFIG', /refused the configuration/],
    ] as const) {
      const t = setup((request) => {
        if (request === VDUSE_CREATE_DEV) throw systemError(code, 'ioctl');
        return 0;
      });
      const c = VduseControl.open(t.binding, { path: t.path });
      assert.throws(
        () =>
          c.createDevice({
            name: 'd',
            deviceId: 2,
            vendorId: 0,
            features: FEATURES,
            numQueues: 1,
            config: new Uint8Array(8),
          }),
        (e: unknown) =>
          e instanceof VduseError && e.code === expected && re.test(e.message) && !e.message.includes('\n'),
      );
      c.close();
      t.done();
    }
  });

  it('destroy retries EBUSY briefly, then reports it clearly', async () => {
    let busy = 3;
    const t = setup((request, arg) => {
      if (request === VDUSE_DESTROY_DEV) {
        assert.equal(arg.length, 256, 'a full 256-byte name buffer');
        if (busy-- > 0) throw systemError('EBUSY', 'ioctl');
      }
      return 0;
    });
    const c = VduseControl.open(t.binding, { path: t.path });
    await c.destroyDevice('d0');
    assert.equal(t.calls.filter((x) => x.request === VDUSE_DESTROY_DEV).length, 4);
    busy = 1000;
    await assert.rejects(c.destroyDevice('d0', { busyRetryMs: 120 }), {
      code: 'ERR_VDUSE_BUSY',
      message: /still attached/,
    });
    c.close();
    t.done();
  });

  it('destroy of an unknown name is ERR_VDUSE_NOT_FOUND', async () => {
    const t = setup((request) => {
      if (request === VDUSE_DESTROY_DEV) throw systemError('EINVAL', 'ioctl');
      return 0;
    });
    const c = VduseControl.open(t.binding, { path: t.path });
    await assert.rejects(c.destroyDevice('nope'), { code: 'ERR_VDUSE_NOT_FOUND' });
    c.close();
    assert.throws(
      () =>
        c.createDevice({
          name: 'x',
          deviceId: 2,
          vendorId: 0,
          features: FEATURES,
          numQueues: 1,
          config: new Uint8Array(0),
        }),
      { code: 'ERR_VDUSE_CLOSED' },
    );
    t.done();
  });

  it('lists devices from the class directory, without "control"', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vduse-class-'));
    for (const n of ['control', 'b', 'a']) mkdirSync(join(dir, n));
    assert.deepEqual(listVduseDevices({ sysClassDir: dir, devDir: '/nonexistent' }), ['a', 'b']);
    assert.deepEqual(listVduseDevices({ sysClassDir: '/nonexistent', devDir: '/nonexistent2' }), []);
    rmSync(dir, { recursive: true });
  });
});
