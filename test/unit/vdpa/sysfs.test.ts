import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import {
  boundDriver,
  findBlockDevice,
  findNetInterface,
  findVhostDevice,
  rebindVdpaDevice,
  waitFor,
  waitForDevNode,
} from '../../../src/transports/vdpa/sysfs.js';

const root = mkdtempSync(join(tmpdir(), 'vduse-sysfs-'));
after(() => rmSync(root, { recursive: true, force: true }));

/** A fake /sys/bus/vdpa with device `name` bound to `driver`. */
function bus(name: string, driver: string | null): string {
  const b = mkdtempSync(join(root, 'bus-'));
  for (const d of ['virtio_vdpa', 'vhost_vdpa']) {
    mkdirSync(join(b, 'drivers', d), { recursive: true });
    writeFileSync(join(b, 'drivers', d, 'bind'), '');
    writeFileSync(join(b, 'drivers', d, 'unbind'), '');
  }
  mkdirSync(join(b, 'devices', name), { recursive: true });
  writeFileSync(join(b, 'devices', name, 'driver_override'), '');
  if (driver) symlinkSync(join(b, 'drivers', driver), join(b, 'devices', name, 'driver'));
  return b;
}

describe('sysfs lookups', () => {
  it('finds the block device under virtio*/block and the bound driver', () => {
    const b = bus('d0', 'virtio_vdpa');
    assert.equal(findBlockDevice('d0', { vdpaBus: b }), null);
    mkdirSync(join(b, 'devices', 'd0', 'virtio3', 'block', 'vdc'), { recursive: true });
    assert.equal(findBlockDevice('d0', { vdpaBus: b }), 'vdc');
    assert.equal(boundDriver('d0', { vdpaBus: b }), 'virtio_vdpa');
    assert.equal(findBlockDevice('nope', { vdpaBus: b }), null);
    assert.equal(boundDriver('nope', { vdpaBus: b }), null);
  });

  it('finds the net interface under virtio*/net (and not a block device there)', () => {
    const b = bus('n0', 'virtio_vdpa');
    assert.equal(findNetInterface('n0', { vdpaBus: b }), null);
    mkdirSync(join(b, 'devices', 'n0', 'virtio1', 'net', 'eth7'), { recursive: true });
    assert.equal(findNetInterface('n0', { vdpaBus: b }), 'eth7');
    assert.equal(findBlockDevice('n0', { vdpaBus: b }), null);
    assert.equal(findNetInterface('nope', { vdpaBus: b }), null);
  });

  it('finds the vhost-vdpa char device', () => {
    const b = bus('d1', 'vhost_vdpa');
    assert.equal(findVhostDevice('d1', { vdpaBus: b }), null);
    mkdirSync(join(b, 'devices', 'd1', 'vhost-vdpa-2'));
    assert.equal(findVhostDevice('d1', { vdpaBus: b }), 'vhost-vdpa-2');
  });

  it('rebinds: driver_override, unbind from the old driver, bind to the new one', async () => {
    const b = bus('d2', 'virtio_vdpa');
    await rebindVdpaDevice('d2', 'vhost_vdpa', { vdpaBus: b });
    assert.equal(readFileSync(join(b, 'devices', 'd2', 'driver_override'), 'utf8'), 'vhost_vdpa');
    assert.equal(readFileSync(join(b, 'drivers', 'virtio_vdpa', 'unbind'), 'utf8'), 'd2');
    assert.equal(readFileSync(join(b, 'drivers', 'vhost_vdpa', 'bind'), 'utf8'), 'd2');
  });

  it('rebinding to a driver that is not loaded says which module to load', async () => {
    const b = bus('d3', null);
    rmSync(join(b, 'drivers', 'vhost_vdpa'), { recursive: true });
    await assert.rejects(rebindVdpaDevice('d3', 'vhost_vdpa', { vdpaBus: b }), /modprobe vhost_vdpa/);
  });

  it('waits for a device node, and gives up after the timeout', async () => {
    const dev = mkdtempSync(join(root, 'dev-'));
    setTimeout(() => writeFileSync(join(dev, 'vdz'), ''), 30);
    assert.equal(await waitForDevNode('vdz', 2000, { dev }), join(dev, 'vdz'));
    assert.equal(await waitFor(() => null, 60), null);
  });
});
