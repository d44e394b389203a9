// The library surface (src/index.ts): what users' own devices, backends and tests need, and nothing internal.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import * as lib from '../../src/index.js';

describe('library surface', () => {
  it('exports what its own options need', () => {
    for (const name of [
      'VduseTsError',
      'UsageError',
      'createLogger',
      'HeapMemory',
      'IotlbMemory',
      'createVirtqueue',
      'VirtqueueError',
      'VirtioBlkDevice',
      'BackendError',
      'FileBackend',
      'VduseControl',
      'VduseDevice',
      'StateLog',
      'createOrReconnect',
      'QueueThreadError',
      'VdpaClient',
      'VdpaError',
      'VhostUserBackend',
      'VhostUserError',
      'RegionMemory',
      'listenUnix',
    ]) {
      assert.equal(typeof (lib as Record<string, unknown>)[name], 'function', `${name} is exported`);
    }
    assert.equal(typeof lib.testing.MockDriver, 'function');
    assert.equal(typeof lib.testing.FakeBinding, 'function');
    assert.equal(typeof lib.testing.vhostUser.VhostUserFrontend, 'function');
    assert.equal(typeof lib.uapi, 'object');
  });

  it('keeps the engine and the protocol internals out', () => {
    for (const name of [
      'VduseProtocol',
      'VhostUserProtocol',
      'MessageReader',
      'QueueSet',
      'ServedQueue',
      'QueueThreads',
      'DeviceManager',
    ]) {
      assert.equal((lib as Record<string, unknown>)[name], undefined, `${name} is not exported`);
    }
  });
});
