/**
 * The NBD backend against real nbdkit servers on 127.0.0.1 / Unix sockets: round trips, block size limits,
 * multi-conn, pipelining, TLS, injected errors, and a server killed and restarted under load.
 */
import assert from 'node:assert/strict';
import { readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, afterEach, before, describe, it } from 'node:test';

import { BackendError } from '../../../src/backends/backend.js';
import { NbdBackend, type NbdBackendOptions } from '../../../src/backends/nbd/backend.js';
import { NBD_FLAG_READ_ONLY, NBD_FLAG_SEND_FUA } from '../../../src/backends/nbd/protocol.js';
import '../../../src/backends/nbd/index.js';
import { parseNbdSpec } from '../../../src/backends/nbd/uri.js';
import { backendKinds, openBackend, parseBackendSpec } from '../../../src/backends/spec.js';
import {
  freePort,
  makeTempDir,
  makeTlsCertificates,
  missingBinaries,
  removeDir,
  startNbdkit,
  type ServerHandle,
} from './helpers/servers.js';

const skip = missingBinaries('nbdkit');
const tlsSkip = skip ?? missingBinaries('openssl');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Waits for `p` at most `ms` (the timer does not outlive `p`). */
async function bounded(p: Promise<void>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([p, new Promise<void>((r) => (timer = setTimeout(r, ms)))]);
  clearTimeout(timer);
}

function pattern(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** Expects a BackendError with errno `errno` (and a stable code: ERR_BACKEND_* or ERR_NBD_*, or `code`). */
async function expectBackendError(
  p: Promise<unknown>,
  errno: string,
  message?: RegExp,
  code?: string,
): Promise<BackendError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof BackendError, `expected BackendError, got ${String(err)}`);
    assert.equal(err.errno, errno, err.message);
    if (code !== undefined) assert.equal(err.code, code, err.message);
    else assert.match(err.code, /^ERR_(BACKEND|NBD)_[A-Z_]+$/, err.message);
    if (message) assert.match(err.message, message);
    return err;
  }
  assert.fail(`expected BackendError ${errno}`);
}

describe('NBD backend against nbdkit', { skip, timeout: 120_000 }, () => {
  let dir = '';
  const servers: ServerHandle[] = [];
  const backends: NbdBackend[] = [];

  before(() => {
    dir = makeTempDir();
  });
  afterEach(async () => {
    await Promise.all(backends.splice(0).map((b) => bounded(b.close(), 6000)));
    await Promise.all(servers.splice(0).map((s) => s.kill()));
  });
  after(async () => {
    await Promise.all(servers.splice(0).map((s) => s.kill()));
    removeDir(dir);
  });

  async function server(
    args: string[],
    options: Parameters<typeof startNbdkit>[2] = {},
  ): Promise<ServerHandle> {
    const s = await startNbdkit(dir, args, options);
    servers.push(s);
    return s;
  }

  async function open(
    spec: string,
    extra: Partial<NbdBackendOptions> = {},
  ): Promise<{ b: NbdBackend; logs: string[] }> {
    const logs: string[] = [];
    const b = await NbdBackend.open({ ...parseNbdSpec(spec), log: (m) => logs.push(m), ...extra });
    backends.push(b);
    return { b, logs };
  }

  /** Reads through a new, independent backend (its own connection) and closes it. */
  async function readBack(spec: string, offset: number, length: number): Promise<Uint8Array> {
    const b = await NbdBackend.open({ ...parseNbdSpec(spec), log: () => {} });
    try {
      const out = new Uint8Array(length);
      await b.read(offset, [out]);
      return out;
    } finally {
      await b.close();
    }
  }

  it('reads, writes (with FUA), flushes, trims and zeroes; the data checks out over another connection', async () => {
    const s = await server(['memory', '64M']);
    const { b } = await open(s.uri);
    assert.equal(b.size, 64 * 2 ** 20);
    assert.equal(b.readOnly, false);
    assert.equal(b.info.structuredReplies, true);
    assert.ok(b.capabilities.flush && b.capabilities.discard && b.capabilities.writeZeroes);

    const data = pattern(3 * 65536 + 512, 1);
    // Scatter-gather source: three uneven views.
    await b.write(1 << 20, [
      data.subarray(0, 1000 * 512),
      data.subarray(1000 * 512, 1001 * 512),
      data.subarray(1001 * 512),
    ]);
    await b.write(8 << 20, [pattern(4096, 2)], { fua: true });
    await b.flush();
    const dests = [new Uint8Array(512), new Uint8Array(data.length - 512)];
    await b.read(1 << 20, dests);
    assert.deepEqual(Buffer.concat(dests), Buffer.from(data));
    assert.deepEqual(await readBack(s.uri, 1 << 20, data.length), data);
    assert.deepEqual(await readBack(s.uri, 8 << 20, 4096), pattern(4096, 2));

    await b.writeZeroes((1 << 20) + 4096, 8192);
    await b.discard((1 << 20) + 65536, 65536); // the memory plugin reads trimmed space as zeroes
    await b.writeZeroes((1 << 20) + 3 * 65536, 512, { unmap: true });
    const expect = data.slice();
    expect.fill(0, 4096, 4096 + 8192);
    expect.fill(0, 65536, 2 * 65536);
    expect.fill(0, 3 * 65536, 3 * 65536 + 512);
    assert.deepEqual(await readBack(s.uri, 1 << 20, data.length), expect);
  });

  it('opens through the backend registry: nbd:URI, nbds:, nbd+unix: kinds', async () => {
    for (const kind of ['nbd', 'nbds', 'nbd+unix', 'nbds+unix'])
      assert.ok(backendKinds().includes(kind), kind);
    const sock = join(dir, 'registry.sock');
    const s = await server(['memory', '8M'], { socketPath: sock });
    const tcp = await server(['memory', '8M']);
    const spec = parseBackendSpec(`nbd:nbd://127.0.0.1:${tcp.port}/,connections=2,timeout=30s,retry=60s`);
    assert.equal(spec.kind, 'nbd');
    for (const text of [`nbd:${s.uri},readonly=on`, `${s.uri},readonly=on`]) {
      const b = await openBackend(text, { log: () => {} });
      assert.ok(b instanceof NbdBackend);
      backends.push(b);
      assert.equal(b.size, 8 << 20);
      assert.equal(b.readOnly, true);
    }
    const b = await openBackend(spec, { log: () => {} });
    assert.ok(b instanceof NbdBackend);
    backends.push(b);
    assert.equal(b.connectionCount, 2);
  });

  it('talks to old-style servers: simple replies only (--no-sr), and EXPORT_NAME with non-fixed newstyle', async () => {
    const s1 = await server(['--no-sr', 'memory', '8M']);
    const { b: b1 } = await open(s1.uri);
    assert.equal(b1.info.structuredReplies, false);
    assert.equal(b1.info.usedExportName, false);
    await b1.write(512, [pattern(70000 - (70000 % 512), 20)]);
    const out1 = new Uint8Array(70000 - (70000 % 512));
    await b1.read(512, [out1.subarray(0, 1000), out1.subarray(1000)]);
    assert.deepEqual(out1, pattern(out1.length, 20));

    // Handshake flags masked to 0: no fixed newstyle, no NO_ZEROES: NBD_OPT_EXPORT_NAME and 124 zero bytes.
    const s2 = await server(['--mask-handshake=0', 'memory', '8M']);
    const { b: b2 } = await open(s2.uri);
    assert.equal(b2.info.usedExportName, true);
    assert.equal(b2.info.structuredReplies, false);
    assert.equal(b2.size, 8 << 20);
    await b2.write(0, [pattern(4096, 21)]);
    assert.deepEqual(await readBack(s2.uri, 0, 4096), pattern(4096, 21));

    const s3 = await server(['--oldstyle', 'memory', '8M']);
    await assert.rejects(
      NbdBackend.open({ ...parseNbdSpec(s3.uri), log: () => {} }),
      (err: unknown) => err instanceof BackendError && /oldstyle/.test(err.message),
    );
  });

  it('writes zeroes as data when the server has no WRITE_ZEROES, and emulates FUA with a flush', async () => {
    const s = await server(['-v', '--filter=nozero', '--filter=fua', 'memory', '8M', 'zeromode=none']);
    const { b } = await open(s.uri);
    assert.equal(b.capabilities.writeZeroes, false);
    assert.equal(b.info.flags & NBD_FLAG_SEND_FUA, 0);
    await b.write(0, [pattern(3 << 20, 30)]);
    await b.writeZeroes(4096, (2 << 20) + 8192);
    const expect = pattern(3 << 20, 30);
    expect.fill(0, 4096, 4096 + (2 << 20) + 8192);
    assert.deepEqual(await readBack(s.uri, 0, 3 << 20), expect);
    const flushes = (): number => (s.output().match(/flush/gi) ?? []).length;
    const flushesBefore = flushes();
    await b.write(0, [pattern(512, 32)]);
    await sleep(100);
    assert.equal(flushes(), flushesBefore, 'a plain write sends no flush');
    await b.write(0, [pattern(512, 31)], { fua: true });
    const deadline = Date.now() + 2000;
    while ((s.output().match(/flush/gi) ?? []).length === flushesBefore && Date.now() < deadline)
      await sleep(20);
    assert.ok(
      (s.output().match(/flush/gi) ?? []).length > flushesBefore,
      'a FUA write without SEND_FUA is followed by a flush',
    );
  });

  it('works over a Unix socket', async () => {
    const sock = join(dir, 'nbd.sock');
    const s = await server(['memory', '8M'], { socketPath: sock });
    assert.match(s.uri, /^nbd\+unix:\/\/\/\?socket=/);
    const { b } = await open(s.uri);
    await b.write(4096, [pattern(8192, 3)]);
    assert.deepEqual(await readBack(s.uri, 4096, 8192), pattern(8192, 3));
  });

  it('obeys the server block size limits: splits reads, writes, trims and zeroes at the maximum', async () => {
    const s = await server([
      '--filter=blocksize-policy',
      'memory',
      '16M',
      'blocksize-minimum=4096',
      'blocksize-preferred=65536',
      'blocksize-maximum=65536',
      'blocksize-error-policy=error',
    ]);
    const { b } = await open(s.uri);
    assert.equal(b.info.blockSizeAdvertised, true);
    assert.equal(b.capabilities.minIoSize, 4096);
    assert.equal(b.capabilities.optIoSize, 65536);
    assert.equal(b.maxIo, 65536);
    const data = pattern(1 << 20, 4);
    await b.write(65536, [data]);
    const out = new Uint8Array(1 << 20);
    await b.read(65536, [out]);
    assert.deepEqual(out, data);
    await b.writeZeroes(65536, 1 << 20);
    await b.read(65536, [out]);
    assert.ok(out.every((x) => x === 0));
    await b.discard(0, 4 << 20);
    // The minimum (4096) is what the device must use as its logical block size; a 512-byte request is refused
    // here, never sent (nbdkit's error policy would answer EINVAL, and log it).
    assert.equal(b.capabilities.logicalBlockSize, 4096);
    assert.equal(b.capabilities.discardAlignment, 4096);
    await expectBackendError(
      b.read(512, [new Uint8Array(512)]),
      'EINVAL',
      /minimum block size 4096/,
      'ERR_NBD_UNALIGNED',
    );
    await expectBackendError(b.write(4096, [new Uint8Array(512)]), 'EINVAL', undefined, 'ERR_NBD_UNALIGNED');
    await b.read(4096, [new Uint8Array(4096)]);
    assert.doesNotMatch(s.output(), /EINVAL|not aligned|blocksize-policy.*error/i);
  });

  it('spreads requests over several connections when the server allows multi-conn', async () => {
    const s = await server(['memory', '64M']);
    const { b } = await open(`${s.uri},connections=4`);
    assert.equal(b.connectionCount, 4);
    assert.equal(b.liveConnections, 4);
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 64; i++) writes.push(b.write(i * 65536, [pattern(65536, 100 + i)]));
    await Promise.all(writes);
    await b.flush();
    const counts = b.requestsPerConnection;
    assert.equal(counts.length, 4);
    assert.ok(
      counts.every((c) => c > 0),
      `every connection used: ${counts.join(',')}`,
    );
    const back = await readBack(s.uri, 0, 64 * 65536);
    for (let i = 0; i < 64; i++)
      assert.deepEqual(back.subarray(i * 65536, (i + 1) * 65536), pattern(65536, 100 + i));
  });

  it('uses one connection when the server does not allow multi-conn', async () => {
    const s = await server(['--filter=multi-conn', 'memory', '16M', 'multi-conn-mode=disable']);
    const { b, logs } = await open(`${s.uri},connections=4`);
    assert.equal(b.connectionCount, 1);
    assert.ok(logs.some((l) => /does not allow multi-conn/.test(l)));
  });

  it('pipelines requests on one connection (16 reads against a 300 ms server delay)', async () => {
    const s = await server(['--filter=delay', 'memory', '16M', 'delay-read=300ms']);
    const { b } = await open(s.uri);
    const start = Date.now();
    await Promise.all(Array.from({ length: 16 }, (_, i) => b.read(i * 4096, [new Uint8Array(4096)])));
    const elapsed = Date.now() - start;
    assert.ok(elapsed >= 290, `took ${elapsed} ms`);
    assert.ok(elapsed < (16 * 300) / 2, `took ${elapsed} ms: requests were not pipelined`);
  });

  it('reports injected server errors as BackendError EIO (and the next requests work again)', async () => {
    const inject = join(dir, 'inject-eio');
    rmSync(inject, { force: true });
    const s = await server(['--filter=error', 'memory', '16M', 'error-rate=100%', `error-file=${inject}`]);
    const { b } = await open(s.uri);
    await b.write(0, [pattern(4096, 5)]);
    writeFileSync(inject, '');
    await expectBackendError(b.read(0, [new Uint8Array(4096)]), 'EIO', /read at 0\+4096/);
    await expectBackendError(b.write(0, [new Uint8Array(4096)]), 'EIO', /write/);
    await expectBackendError(b.writeZeroes(0, 4096), 'EIO', /write zeroes/);
    await expectBackendError(b.discard(0, 4096), 'EIO', /trim/);
    rmSync(inject);
    const out = new Uint8Array(4096);
    await b.read(0, [out]);
    assert.deepEqual(out, pattern(4096, 5));
    assert.equal(b.liveConnections, 1);
  });

  it('passes other server errors through by name (ENOSPC)', async () => {
    const s = await server([
      '--filter=error',
      'memory',
      '16M',
      'error-pwrite=ENOSPC',
      'error-pwrite-rate=100%',
    ]);
    const { b } = await open(s.uri);
    await expectBackendError(b.write(0, [new Uint8Array(512)]), 'ENOSPC', undefined, 'ERR_BACKEND_NO_SPACE');
    await b.read(0, [new Uint8Array(512)]);
  });

  it('opens a read-only export read-only and refuses writes', async () => {
    const s = await server(['-r', 'memory', '1M']);
    const { b } = await open(s.uri);
    assert.equal(b.readOnly, true);
    assert.ok((b.info.flags & NBD_FLAG_READ_ONLY) !== 0);
    await expectBackendError(b.write(0, [new Uint8Array(512)]), 'EROFS', undefined, 'ERR_BACKEND_READ_ONLY');
    await b.read(0, [new Uint8Array(512)]);
  });

  it('sends NBD_CMD_DISC on close()', async () => {
    const s = await server(['-v', 'memory', '1M']);
    const { b } = await open(s.uri);
    await b.read(0, [new Uint8Array(512)]);
    await b.close();
    const deadline = Date.now() + 3000;
    while (!/client sent NBD_CMD_DISC/.test(s.output()) && Date.now() < deadline) await sleep(20);
    assert.match(s.output(), /client sent NBD_CMD_DISC/);
    await expectBackendError(b.read(0, [new Uint8Array(512)]), 'EIO', /closed/, 'ERR_BACKEND_CLOSED');
  });

  it('refuses to open with a clear error when nothing listens, the export is unknown, or TLS is required', async () => {
    const port = await freePort();
    await assert.rejects(
      NbdBackend.open({ ...parseNbdSpec(`nbd://127.0.0.1:${port}/x`), log: () => {} }),
      (err: unknown) =>
        err instanceof BackendError &&
        err.code === 'ERR_NBD_CONNECTION' &&
        err.errno === 'ECONNREFUSED' &&
        /cannot connect.*ECONNREFUSED/.test(err.message),
    );
    const s = await server([
      '--filter=exportname',
      'memory',
      '1M',
      'exportname-strict=true',
      'exportname=only',
    ]);
    await assert.rejects(
      NbdBackend.open({ ...parseNbdSpec(`nbd://127.0.0.1:${s.port}/other`), log: () => {} }),
      (err: unknown) =>
        err instanceof BackendError &&
        err.code === 'ERR_NBD_EXPORT' &&
        /export not found|refused the export/.test(err.message),
    );
  });

  describe('TLS', { skip: tlsSkip }, () => {
    let certs = { dir: '', caCert: '', clientCert: '', clientKey: '' };
    before(() => {
      certs = makeTlsCertificates(makeTempDir('vduse-nbd-tls-'));
    });
    after(() => removeDir(certs.dir));

    it('connects with nbds:// and a throwaway CA (STARTTLS), and round-trips data', async () => {
      const s = await server(['--tls=require', `--tls-certificates=${certs.dir}`, 'memory', '16M']);
      const uri = `nbds://127.0.0.1:${s.port}/,ca=${certs.caCert}`;
      const { b } = await open(uri);
      assert.equal(b.info.tls, true);
      await b.write(512, [pattern(65536, 7)]);
      assert.deepEqual(await readBack(uri, 512, 65536), pattern(65536, 7));
      // servername=localhost checks the DNS name in the certificate.
      const { b: b2 } = await open(`${uri},servername=localhost`);
      await b2.read(0, [new Uint8Array(512)]);
    });

    it('presents a client certificate (cert=, key=) to a server that verifies peers', async () => {
      const s = await server([
        '--tls=require',
        `--tls-certificates=${certs.dir}`,
        '--tls-verify-peer',
        'memory',
        '16M',
      ]);
      const base = `nbds://127.0.0.1:${s.port}/,ca=${certs.caCert}`;
      const { b } = await open(`${base},cert=${certs.clientCert},key=${certs.clientKey}`);
      await b.write(0, [pattern(4096, 8)]);
      const out = new Uint8Array(4096);
      await b.read(0, [out]);
      assert.deepEqual(out, pattern(4096, 8));
      await assert.rejects(
        NbdBackend.open({ ...parseNbdSpec(base), log: () => {} }),
        (err: unknown) => err instanceof BackendError && /cannot connect/.test(err.message),
      );
    });

    it('refuses a plain connection to a TLS-only server, and an unknown CA', async () => {
      const s = await server(['--tls=require', `--tls-certificates=${certs.dir}`, 'memory', '16M']);
      await assert.rejects(
        NbdBackend.open({ ...parseNbdSpec(`nbd://127.0.0.1:${s.port}/`), log: () => {} }),
        (err: unknown) =>
          err instanceof BackendError && err.code === 'ERR_NBD_TLS' && /requires TLS/.test(err.message),
      );
      await assert.rejects(
        NbdBackend.open({ ...parseNbdSpec(`nbds://127.0.0.1:${s.port}/`), log: () => {} }),
        (err: unknown) => err instanceof BackendError && /TLS/.test(err.message),
      );
      // insecure skips verification.
      const { b } = await open(`nbds://127.0.0.1:${s.port}/,insecure`);
      await b.read(0, [new Uint8Array(512)]);
    });
  });

  describe('faults', () => {
    const fast = { backoffInitialMs: 50, backoffMaxMs: 200 };

    function makeDisk(name: string, size: number): string {
      const path = join(dir, name);
      writeFileSync(path, '');
      truncateSync(path, size);
      return path;
    }

    it('loses nothing when the server is killed and restarted in the middle of a write stream', async () => {
      const disk = makeDisk('restart.img', 16 << 20);
      const port = await freePort();
      let s = await server(['file', disk], { port });
      const { b, logs } = await open(`${s.uri},connections=2,retry=30s`, fast);
      const N = 192;
      const SIZE = 32768;
      let done = 0;
      let killed = false;
      let inFlightAtKill = 0;
      let notStartedAtKill = 0;
      let next = 0;
      const restart = (async () => {
        while (done < 48) await sleep(1);
        inFlightAtKill = next - done;
        notStartedAtKill = N - next;
        await s.kill();
        killed = true;
        await sleep(300);
        s = await server(['file', disk], { port });
      })();
      const worker = async (): Promise<void> => {
        while (next < N) {
          const i = next++;
          await b.write(i * SIZE, [pattern(SIZE, 1000 + i)]);
          done++;
        }
      };
      await Promise.all([restart, ...Array.from({ length: 16 }, worker)]);
      assert.ok(killed);
      assert.ok(inFlightAtKill > 0, `writes in flight when the server died: ${inFlightAtKill}`);
      assert.ok(notStartedAtKill > 0, `writes issued after the server died: ${notStartedAtKill}`);
      await b.flush();
      await b.close();
      const file = readFileSync(disk);
      for (let i = 0; i < N; i++) {
        assert.ok(
          Buffer.from(pattern(SIZE, 1000 + i)).equals(file.subarray(i * SIZE, (i + 1) * SIZE)),
          `block ${i} intact`,
        );
      }
      assert.ok(
        logs.some((l) => /connection( \d+\/\d+)? lost/.test(l)),
        logs.join('\n'),
      );
      assert.ok(
        logs.some((l) => /reconnected/.test(l)),
        logs.join('\n'),
      );
    });

    it('refuses a server that comes back with another size, failing pending and later requests', async () => {
      const disk = makeDisk('resize.img', 4 << 20);
      const port = await freePort();
      const s = await server(['file', disk], { port });
      const { b, logs } = await open(`${s.uri},retry=30s`, fast);
      await b.write(0, [pattern(4096, 9)]);
      await s.kill();
      const pending = expectBackendError(
        b.write(4096, [pattern(4096, 10)]),
        'EIO',
        /size changed from 4194304 to 8388608/,
      );
      truncateSync(disk, 8 << 20);
      await sleep(100);
      await server(['file', disk], { port });
      await pending;
      await expectBackendError(
        b.read(0, [new Uint8Array(512)]),
        'EIO',
        /size changed/,
        'ERR_NBD_EXPORT_CHANGED',
      );
      assert.equal(logs.filter((l) => /refusing/.test(l)).length, 1, logs.join('\n'));
    });

    it('refuses a server that comes back read-only when it was writable', async () => {
      const disk = makeDisk('ro.img', 4 << 20);
      const port = await freePort();
      const s = await server(['file', disk], { port });
      const { b } = await open(`${s.uri},retry=30s`, fast);
      await s.kill();
      const pending = expectBackendError(b.write(0, [pattern(4096, 11)]), 'EIO', /read-only/);
      await server(['-r', 'file', disk], { port });
      await pending;
    });

    it('fails waiting requests with EIO after the retry window, logs once, and recovers when the server returns', async () => {
      const disk = makeDisk('window.img', 4 << 20);
      const port = await freePort();
      const s = await server(['file', disk], { port });
      const { b, logs } = await open(`${s.uri},retry=700ms`, fast);
      await b.write(0, [pattern(4096, 12)]);
      await s.kill();
      const start = Date.now();
      await Promise.all(
        [b.read(0, [new Uint8Array(4096)]), b.read(4096, [new Uint8Array(4096)])].map((r) =>
          expectBackendError(r, 'EIO', /unreachable/, 'ERR_NBD_UNREACHABLE'),
        ),
      );
      const elapsed = Date.now() - start;
      assert.ok(elapsed >= 500 && elapsed < 5000, `failed after ${elapsed} ms`);
      const failLines = logs.filter((l) => /failing 2 pending request/.test(l));
      assert.equal(failLines.length, 1, logs.join('\n'));
      assert.match(failLines[0]!, /ECONNREFUSED|closed/);
      // During the outage new requests fail at once.
      await expectBackendError(b.read(0, [new Uint8Array(512)]), 'EIO');
      await server(['file', disk], { port });
      const deadline = Date.now() + 5000;
      const out = new Uint8Array(4096);
      for (;;) {
        try {
          await b.read(0, [out]);
          break;
        } catch (err) {
          if (Date.now() > deadline) throw err;
          await sleep(50);
        }
      }
      assert.deepEqual(out, pattern(4096, 12));
      assert.ok(logs.some((l) => /reconnected/.test(l)));
    });
  });
});
