// The state log file: format, identity checks, and a real memory-mapped file that survives its writer.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';

import { loadNativeBinding } from '../../../src/sys/native.js';
import {
  StateLog,
  stateLogPath,
  stateLogSize,
  type StateLogIdentity,
} from '../../../src/transports/vduse/recovery/state-log.js';

const SIZE = 16;
const identity: StateLogIdentity = {
  name: 'crash',
  deviceId: 2,
  features: 0x3_0000_0000n,
  numQueues: 1,
  maxQueueSize: SIZE,
  config: new Uint8Array([1, 2, 3]),
};

function newLog(): { buffer: ArrayBuffer; log: StateLog } {
  const buffer = new ArrayBuffer(stateLogSize(1, SIZE));
  StateLog.format(buffer, identity);
  return { buffer, log: new StateLog(buffer) };
}

describe('state log', () => {
  it('format: magic, version, layout, identity; positions and in-flight survive a reopen', () => {
    const { buffer, log } = newLog();
    const h = new Uint32Array(buffer);
    assert.equal(h[0], 0x4c535456);
    assert.equal(h[1], 1);
    assert.equal(h[2], 4096);
    assert.equal(log.numQueues, 1);
    assert.equal(log.maxQueueSize, SIZE);
    assert.equal(log.mismatch(identity), null);
    log.setFeatures(0x1_2345_6789n);
    log.setStatus(0xf);
    const q = log.queue(0);
    q.start({ size: SIZE, packed: false, descAddr: 2 ** 40, driverAddr: 0x2000, deviceAddr: 0x3000 }, 5, 5);
    q.popped(3, 6);
    q.popped(1, 7);
    const again = new StateLog(buffer.slice(0));
    assert.equal(again.status, 0xf);
    assert.equal(again.features, 0x1_2345_6789n);
    const q2 = again.queue(0);
    assert.equal(q2.valid, true);
    assert.deepEqual(q2.ring, {
      size: SIZE,
      packed: false,
      descAddr: 2 ** 40,
      driverAddr: 0x2000,
      deviceAddr: 0x3000,
    });
    assert.deepEqual(q2.inflightIds(), [3, 1], 'pop order');
    assert.equal(q2.usedPosition, 5);
    again.reset();
    assert.equal(again.status, 0);
    assert.equal(again.features, 0n);
    assert.equal(again.queue(0).valid, false);
  });

  it('refuses a log of another device, another shape or another program', () => {
    const { log, buffer } = newLog();
    assert.match(log.mismatch({ ...identity, name: 'other' })!, /device "crash"/);
    assert.match(log.mismatch({ ...identity, features: 1n << 34n })!, /features/);
    assert.match(log.mismatch({ ...identity, numQueues: 2 })!, /queue/);
    assert.match(log.mismatch({ ...identity, maxQueueSize: 32 })!, /queue size/);
    assert.match(log.mismatch({ ...identity, config: new Uint8Array([1, 2, 4]) })!, /configuration/);
    assert.match(log.mismatch({ ...identity, deviceId: 1 })!, /device id/);
    const bad = buffer.slice(0);
    new Uint32Array(bad)[0] = 0;
    assert.throws(() => new StateLog(bad), /not a state log/);
    const v2 = buffer.slice(0);
    new Uint32Array(v2)[1] = 2;
    assert.throws(() => new StateLog(v2), /version 2/);
    const layout = buffer.slice(0);
    new Uint32Array(layout)[3] = 12;
    assert.throws(() => new StateLog(layout), /layout/);
    assert.throws(() => new StateLog(buffer.slice(0, 1000)), /too short/);
  });
});

describe('state log file', () => {
  it('is created in the state directory, written through mmap, read back by a new mapping, removed', () => {
    const binding = loadNativeBinding();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'state-log-'));
    try {
      const file = stateLogPath(path.join(dir, 'sub'), 'dev0');
      const log = StateLog.create(binding, file, { ...identity, name: 'dev0', numQueues: 2 });
      assert.equal(fs.statSync(file).size, stateLogSize(2, SIZE));
      log.setStatus(0xf);
      log
        .queue(1)
        .start({ size: 8, packed: true, descAddr: 0x1000, driverAddr: 0x2000, deviceAddr: 0x3000 }, 3, 1);
      log.queue(1).popped(5, 4);
      // the writer "dies": nothing is flushed or closed, a second mapping sees the stores
      const again = StateLog.open(binding, file);
      assert.equal(again.status, 0xf);
      assert.deepEqual(again.queue(1).inflightIds(), [5]);
      assert.equal(again.mismatch({ ...identity, name: 'dev0', numQueues: 2 }), null);
      again.close();
      log.remove();
      assert.equal(fs.existsSync(file), false);
      fs.writeFileSync(file, 'garbage'.repeat(1000));
      assert.throws(() => StateLog.open(binding, file), /not a state log/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('never writes through a symlink planted at its temporary name', () => {
    const binding = loadNativeBinding();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'state-log-'));
    try {
      const victim = path.join(dir, 'victim');
      fs.writeFileSync(victim, 'precious');
      const file = stateLogPath(dir, 'dev1');
      fs.symlinkSync(victim, `${file}.new`);
      const log = StateLog.create(binding, file, { ...identity, name: 'dev1', numQueues: 1 });
      assert.equal(fs.readFileSync(victim, 'utf8'), 'precious');
      assert.equal(fs.lstatSync(file).isSymbolicLink(), false);
      assert.equal(fs.statSync(file).size, stateLogSize(1, SIZE));
      assert.equal(fs.existsSync(`${file}.new`), false);
      log.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
