import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { createStructuredLogger, defaultLogFormat } from '../../../src/mgmt/daemon/log.js';
import { removePidFile, sdNotify, writePidFile } from '../../../src/mgmt/daemon/notify.js';

test('JSON lines carry level, time, msg and the fields of child loggers', () => {
  const lines: string[] = [];
  const log = createStructuredLogger({ format: 'json', write: (l) => lines.push(l), now: () => new Date(0) });
  log.info('hello');
  log.child({ device: 'd0' }).warn('slow "quote"');
  log.debug('hidden at info');
  assert.deepEqual(
    lines.map((l) => JSON.parse(l) as unknown),
    [
      { level: 'info', time: '1970-01-01T00:00:00.000Z', msg: 'hello' },
      { level: 'warn', time: '1970-01-01T00:00:00.000Z', msg: 'slow "quote"', device: 'd0' },
    ],
  );
  assert.ok(lines.every((l) => l.endsWith('\n') && !l.slice(0, -1).includes('\n')));
});

test('text lines for a terminal', () => {
  const lines: string[] = [];
  const log = createStructuredLogger({ format: 'text', level: 'debug', write: (l) => lines.push(l) });
  log.info('a');
  log.child({ device: 'd0' }).error('b');
  log.debug('c');
  assert.deepEqual(lines, ['vduse: a\n', 'vduse: error: [d0] b\n', 'vduse: debug: c\n']);
});

test('default format: JSON only under the journal without a terminal', () => {
  assert.equal(defaultLogFormat({ JOURNAL_STREAM: '8:1234' }, false), 'json');
  assert.equal(defaultLogFormat({ JOURNAL_STREAM: '8:1234' }, true), 'text');
  assert.equal(defaultLogFormat({}, false), 'text');
});

test('sd_notify: nothing without NOTIFY_SOCKET; otherwise systemd-notify --pid=PID with the assignments', async () => {
  assert.deepEqual(await sdNotify(['READY=1'], {}), { result: 'no-socket' });
  const dir = mkdtempSync(join(tmpdir(), 'vduse-notify-'));
  try {
    const record = join(dir, 'record');
    const fake = join(dir, 'systemd-notify');
    writeFileSync(fake, `#!/bin/sh\necho "$NOTIFY_SOCKET $*" > ${record}\n`);
    chmodSync(fake, 0o755);
    const env = { ...process.env, NOTIFY_SOCKET: '/run/x/notify' };
    assert.deepEqual(await sdNotify(['READY=1', 'STATUS=serving 2 device(s)'], env, fake), {
      result: 'sent',
    });
    assert.equal(
      readFileSync(record, 'utf8'),
      `/run/x/notify --pid=${process.pid} READY=1 STATUS=serving 2 device(s)\n`,
    );
    const failing = join(dir, 'failing');
    writeFileSync(failing, '#!/bin/sh\necho nope >&2\nexit 3\n');
    chmodSync(failing, 0o755);
    assert.deepEqual(await sdNotify(['READY=1'], env, failing), {
      result: 'failed',
      detail: `${failing} exited with 3: nope`,
    });
    const missing = await sdNotify(['READY=1'], env, join(dir, 'absent'));
    assert.equal(missing.result, 'failed');
    assert.match(missing.detail ?? '', /ENOENT/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('pid file: written whole, removed', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vduse-pid-'));
  try {
    const p = join(dir, 'vduse.pid');
    writePidFile(p, 1234);
    assert.equal(readFileSync(p, 'utf8'), '1234\n');
    removePidFile(p);
    assert.equal(existsSync(p), false);
    removePidFile(p);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
