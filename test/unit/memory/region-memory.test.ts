// RegionMemory: the vhost-user region table over real memfds (the addon's mmap), refusals, bounds, pins.

import assert from 'node:assert/strict';
import { closeSync } from 'node:fs';
import { test } from 'node:test';

import {
  ACCESS_READ,
  ACCESS_WRITE,
  GuestMemoryError,
  RegionMemory,
  RegionTableError,
} from '../../../src/memory/index.js';
import { MFD_CLOEXEC, loadNativeBinding } from '../../../src/sys/index.js';

const sys = loadNativeBinding();

function memfd(size: number): number {
  const fd = sys.memfdCreate('region-test', MFD_CLOEXEC);
  sys.fallocate(fd, 0, 0, size);
  return fd;
}

test('two regions: guest-physical views, user-address translation, mmap offsets honoured', () => {
  const fd = memfd(3 * 65536);
  try {
    const m = new RegionMemory(sys);
    m.setTable([
      { guestPhysAddr: 0, size: 65536, userAddr: 0x7000_0000, mmapOffset: 0, fd },
      { guestPhysAddr: 0x100000, size: 65536, userAddr: 0x7100_0000, mmapOffset: 2 * 65536 + 0, fd },
    ]);
    assert.equal(m.mappedRegions, 2);
    m.view(0x100010, 4, ACCESS_WRITE).set([1, 2, 3, 4]);
    // the same bytes through a second mapping of the fd at the region's offset
    const whole = new Uint8Array(sys.mmap(fd, 3 * 65536, 3, 1, 0));
    assert.deepEqual([...whole.subarray(2 * 65536 + 0x10, 2 * 65536 + 0x14)], [1, 2, 3, 4]);
    sys.munmap(whole.buffer as ArrayBuffer);
    assert.equal(m.userToGuest(0x7100_0010, 4), 0x100010);
    assert.throws(() => m.userToGuest(0x7200_0000, 4), /in no memory region/);
    assert.throws(() => m.userToGuest(0x7000_fffe, 4), /crosses a region end/);
    assert.throws(() => m.view(0x20000, 1, ACCESS_READ), GuestMemoryError);
    assert.throws(() => m.view(0xfffe, 4, ACCESS_READ), /crosses the end/);
    assert.throws(() => m.view(-1, 1, ACCESS_READ), GuestMemoryError);
    const out: Uint8Array[] = [];
    m.gather(0x100010, 4, ACCESS_READ, out);
    assert.deepEqual(
      out.map((b) => [...b]),
      [[1, 2, 3, 4]],
    );
    out.length = 0;
    assert.throws(() => m.gather(0x20000, 4, ACCESS_READ, out), /in no memory region/);
    assert.throws(() => m.gather(0xfff0, 0x20, ACCESS_READ, out), /in no memory region/);
    assert.equal(out.length, 0, 'nothing appended on failure');
    m.clear();
    assert.throws(() => m.view(0, 1, ACCESS_READ), GuestMemoryError);
  } finally {
    closeSync(fd);
  }
});

test('tables refused whole: overlap, zero, oversized, past the fd, too many', () => {
  const fd = memfd(65536);
  try {
    const m = new RegionMemory(sys);
    const r = { guestPhysAddr: 0, size: 65536, userAddr: 0x7000_0000, mmapOffset: 0, fd };
    m.setTable([r]);
    assert.throws(
      () => m.setTable([r, { ...r, guestPhysAddr: 0x8000, userAddr: 0x8000_0000 }]),
      /overlap in guest-physical/,
    );
    assert.throws(() => m.setTable([r, { ...r, guestPhysAddr: 0x100000 }]), /overlap in user/);
    assert.throws(() => m.setTable([{ ...r, size: 0 }]), /size 0/);
    assert.throws(() => m.setTable([{ ...r, size: 2 ** 41 }]), /over/);
    assert.throws(() => m.setTable([{ ...r, mmapOffset: 4096 }]), /past the end of its fd/);
    assert.throws(() => m.setTable([{ ...r, guestPhysAddr: 2 ** 60 }]), RegionTableError);
    const nine = Array.from({ length: 9 }, (_, k) => ({
      ...r,
      guestPhysAddr: k * 65536,
      userAddr: k * 65536,
      size: 4096,
    }));
    assert.throws(() => m.setTable(nine), /at most 8/);
    // the old table still serves
    assert.equal(m.mappedRegions, 1);
    m.view(0, 1, ACCESS_READ);
  } finally {
    closeSync(fd);
  }
});

test('a replaced table stays mapped while a request pinned in it is in flight', async () => {
  const fd = memfd(65536);
  try {
    const m = new RegionMemory(sys);
    const r = { guestPhysAddr: 0, size: 65536, userAddr: 0, mmapOffset: 0, fd };
    m.setTable([r]);
    const gen = m.pin();
    const held = m.view(0, 16, ACCESS_WRITE);
    m.setTable([{ ...r, guestPhysAddr: 0x10000 }]);
    assert.equal(m.retiredRegions, 1);
    held[0] = 7; // still mapped: no detach
    assert.equal(held.length, 16);
    let drained = false;
    void m.drained().then(() => (drained = true));
    await new Promise((r2) => setImmediate(r2));
    assert.equal(drained, false);
    m.unpin(gen);
    await new Promise((r2) => setImmediate(r2));
    assert.equal(drained, true);
    assert.equal(m.retiredRegions, 0);
    assert.equal(held.length, 0, 'unmapped (detached) once the pin is gone');
    // unpinned replacement unmaps at once
    m.clear();
    assert.equal(m.retiredRegions, 0);
  } finally {
    closeSync(fd);
  }
});
