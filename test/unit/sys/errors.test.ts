import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { isSystemError, systemError } from '../../../src/sys/index.js';

test('systemError builds the same shape as Node and the addon', () => {
  const e = systemError('ENOTTY', 'ioctl');
  assert.ok(e instanceof Error);
  assert.equal(e.message, 'ENOTTY: inappropriate ioctl for device, ioctl');
  assert.equal(e.code, 'ENOTTY');
  assert.equal(e.errno, -25);
  assert.equal(e.syscall, 'ioctl');
  assert.throws(() => systemError('ENOTACODE', 'x'), TypeError);
});

test('isSystemError recognises Node fs errors and checks the code', () => {
  let fsError: unknown;
  try {
    readFileSync('/nonexistent/vduse-ts');
  } catch (e) {
    fsError = e;
  }
  assert.ok(isSystemError(fsError));
  assert.ok(isSystemError(fsError, 'ENOENT'));
  assert.ok(!isSystemError(fsError, 'EBADF'));
  assert.ok(!isSystemError(new Error('plain')));
  assert.ok(!isSystemError({ code: 'ENOENT', errno: -2, syscall: 'open' }), 'not an Error');
  assert.ok(!isSystemError(Object.assign(new Error('x'), { code: 'ERR_X' })), 'a code alone is not enough');
});
