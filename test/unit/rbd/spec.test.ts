import { test } from 'node:test';
import assert from 'node:assert/strict';

import { backendKinds, parseBackendSpec, type BackendSpec } from '../../../src/backends/index.js';
import type { RbdBackendSpec } from '../../../src/backends/rbd/index.js';
import { UsageError } from '../../../src/common/errors.js';

function rbd(spec: string): RbdBackendSpec {
  const parsed: BackendSpec = parseBackendSpec(spec);
  assert.equal(parsed.kind, 'rbd');
  return parsed as RbdBackendSpec;
}

test('rbd is a registered backend kind', () => {
  assert.ok(backendKinds().includes('rbd'));
});

test('rbd:POOL/IMAGE with defaults', () => {
  const s = rbd('rbd:rbd/img');
  assert.equal(s.pool, 'rbd');
  assert.equal(s.image, 'img');
  assert.equal(s.namespace, undefined);
  assert.equal(s.snap, undefined);
  assert.equal(s.readOnly, false);
  assert.equal(s.timeout, 0);
  assert.equal(s.connectTimeout, 30);
  assert.equal(s.cache, undefined);
  assert.equal(s.mon, undefined);
});

test('rbd: namespace, snapshot (read-only), every option', () => {
  const s = rbd(
    'rbd:pool/ns/img@snap1,conf=/etc/ceph/x.conf,id=client.vm,keyring=/k,mon=10.0.0.1:3300;[::1]:6789;host,' +
      'cache=off,timeout=5,connect-timeout=2.5',
  );
  assert.equal(s.pool, 'pool');
  assert.equal(s.namespace, 'ns');
  assert.equal(s.image, 'img');
  assert.equal(s.snap, 'snap1');
  assert.equal(s.readOnly, true);
  assert.equal(s.conf, '/etc/ceph/x.conf');
  assert.equal(s.id, 'vm');
  assert.equal(s.keyring, '/k');
  assert.equal(s.mon, '10.0.0.1:3300,[::1]:6789,host');
  assert.equal(s.cache, false);
  assert.equal(s.timeout, 5);
  assert.equal(s.connectTimeout, 2.5);
  assert.equal(rbd('rbd:p/i,readonly=on').readOnly, true);
  assert.equal(rbd('rbd:p/i,cache=on').cache, true);
});

test('rbd: bad specs are one-line usage errors', () => {
  const bad: [string, RegExp][] = [
    ['rbd:', /missing POOL\/IMAGE/],
    ['rbd:img', /expected POOL\/IMAGE/],
    ['rbd:a/b/c/d', /expected POOL\/IMAGE/],
    ['rbd:p/', /expected POOL\/IMAGE/],
    ['rbd:p/i@', /bad snapshot name/],
    ['rbd:p/i,mon=a b', /bad monitor address/],
    ['rbd:p/i,mon=h:1;', /bad monitor address/],
    ['rbd:p/i,timeout=-1', /timeout=-1 is not a number of seconds/],
    ['rbd:p/i,connect-timeout=0', /connect-timeout=0/],
    ['rbd:p/i,cache=maybe', /cache=maybe is not on or off/],
    ['rbd:p/i,size=1G', /unknown option 'size'/],
    ['rbd:p/i,conf=', /conf= needs a path/],
    ['rbd:p/i,id=a b', /bad user name/],
  ];
  for (const [spec, re] of bad) {
    assert.throws(
      () => parseBackendSpec(spec),
      (e: unknown) => e instanceof UsageError && re.test(e.message) && !e.message.includes('\n'),
      spec,
    );
  }
});
