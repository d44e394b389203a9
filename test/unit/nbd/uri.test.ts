import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { UsageError } from '../../../src/common/errors.js';
import { parseDuration, parseNbdSpec } from '../../../src/backends/nbd/uri.js';

describe('NBD spec parsing', () => {
  it('parses nbd://host:port/export with options after commas, with or without the nbd: prefix', () => {
    for (const text of [
      'nbd:nbd://127.0.0.1:10810/disk,connections=2,timeout=30s,retry=60s',
      'nbd://127.0.0.1:10810/disk,connections=2,timeout=30s,retry=60s',
    ]) {
      const s = parseNbdSpec(text);
      assert.deepEqual(s.target, { exportName: 'disk', host: '127.0.0.1', port: 10810 });
      assert.equal(s.connections, 2);
      assert.equal(s.timeoutMs, 30_000);
      assert.equal(s.retryMs, 60_000);
      assert.equal(s.readOnly, false);
    }
  });

  it('defaults: port 10809, default export, one connection, 30 s timeout, 60 s retry window', () => {
    const s = parseNbdSpec('nbd://localhost');
    assert.deepEqual(s.target, { exportName: '', host: 'localhost', port: 10809 });
    assert.equal(s.connections, 1);
    assert.equal(s.timeoutMs, 30_000);
    assert.equal(s.retryMs, 60_000);
  });

  it('decodes percent-encoded export names and IPv6 hosts', () => {
    const s = parseNbdSpec('nbd://[::1]:9000/a%2Cb%20c');
    assert.equal(s.target.host, '::1');
    assert.equal(s.target.port, 9000);
    assert.equal(s.target.exportName, 'a,b c');
  });

  it('parses nbd+unix:///export?socket=PATH and nbds+unix', () => {
    const s = parseNbdSpec('nbd:nbd+unix:///vol?socket=/run/nbd.sock,readonly=on');
    assert.deepEqual(s.target, { exportName: 'vol', socketPath: '/run/nbd.sock' });
    assert.equal(s.readOnly, true);
    const t = parseNbdSpec('nbds+unix:///?socket=/s,ca=/c.pem,servername=srv');
    assert.equal(t.target.socketPath, '/s');
    assert.deepEqual(t.target.tls, { servername: 'srv' });
    assert.deepEqual(t.tlsFiles, { ca: '/c.pem' });
  });

  it('parses nbds:// with TLS options', () => {
    const s = parseNbdSpec('nbds://h/e,ca=/ca.pem,cert=/c.pem,key=/k.pem,insecure');
    assert.equal(parseNbdSpec('nbds://h/e,insecure=off').target.tls?.insecure, false);
    assert.deepEqual(s.target.tls, { insecure: true });
    assert.deepEqual(s.tlsFiles, { ca: '/ca.pem', cert: '/c.pem', key: '/k.pem' });
  });

  it('reads a doubled comma as a literal comma, and takes the nbds:/nbd+unix: kinds as URI schemes', () => {
    assert.equal(parseNbdSpec('nbd://h/a,,b,connections=2').target.exportName, 'a,b');
    assert.deepEqual(parseNbdSpec('nbd+unix:///e?socket=/s').target, { exportName: 'e', socketPath: '/s' });
    assert.ok(parseNbdSpec('nbd:nbds://h/e').target.tls);
    assert.ok(parseNbdSpec('nbds://h/e').target.tls);
  });

  it('parses durations', () => {
    assert.equal(parseDuration('500ms'), 500);
    assert.equal(parseDuration('2'), 2000);
    assert.equal(parseDuration('1.5s'), 1500);
    assert.equal(parseDuration('2m'), 120_000);
    assert.equal(parseDuration('1h'), 3_600_000);
    assert.equal(parseDuration('soon'), null);
  });

  it('rejects bad specs with a one-line UsageError', () => {
    for (const [text, re] of [
      ['nbd:foo', /expected a URI/],
      ['http://x/y', /expected a URI/],
      ['nbd://h/e,connections=0', /connections must be a whole number from 1 to 16/],
      ['nbd://h/e,connections=99', /connections/],
      ['nbd://h/e,timeout=fast', /not a duration/],
      ['nbd://h/e,bogus=1', /unknown option 'bogus'/],
      ['nbd://h/e,ca=/x', /need an nbds:\/\/ URI/],
      ['nbds://h/e,cert=/x', /cert= and key= go together/],
      ['nbd+unix:///e', /needs a socket path/],
      ['nbd+unix://host/e?socket=/s', /have no host/],
      ['nbd://h/e?socket=/s', /only for nbd\+unix/],
      ['nbd://h/e?tls-certificates=/d', /not supported/],
      ['nbd://h/%zz', /percent-encoding/],
      ['nbd://h/e,readonly=maybe', /not on or off/],
      ['nbd://h/e,retry=1s,retry=2s', /given twice/],
      ['nbd://h/e,socket=/x', /only for nbd\+unix/],
      ['nbd+unix:///e?socket=/a,socket=/b', /socket given twice/],
      ['nbd://h/e,ca', /TLS options|needs a value/],
      ['nbd:', /missing URI|expected a URI/],
    ] as const) {
      assert.throws(
        () => parseNbdSpec(text),
        (err: unknown) =>
          err instanceof UsageError &&
          re.test(err.message) &&
          !err.message.includes('\n') &&
          err.message.includes(text),
        text,
      );
    }
  });
});
