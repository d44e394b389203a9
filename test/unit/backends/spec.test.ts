import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';

import type { BlockBackend } from '../../../src/backends/backend.js';
import { UsageError } from '../../../src/common/errors.js';
import { FileBackend } from '../../../src/backends/file-backend.js';
import { MemoryBackend } from '../../../src/backends/memory-backend.js';
import { NullBackend } from '../../../src/backends/null-backend.js';
import { formatSize, parseSize } from '../../../src/backends/size.js';
import {
  backendHelp,
  backendKinds,
  openBackend,
  parseBackendSpec,
  registerBackend,
  specSize,
  splitSpecOptions,
  type BackendSpec,
} from '../../../src/backends/spec.js';

function usage(spec: string, message: string): void {
  assert.throws(
    () => parseBackendSpec(spec),
    (e: unknown) => {
      assert.ok(e instanceof UsageError, `a UsageError for '${spec}'`);
      assert.equal(e.code, 'ERR_BACKEND_SPEC');
      assert.equal(e.message, message);
      assert.ok(!e.message.includes('\n'));
      return true;
    },
  );
}

describe('sizes', () => {
  it('parses binary suffixes', () => {
    assert.equal(parseSize('512'), 512);
    assert.equal(parseSize('4K'), 4096);
    assert.equal(parseSize('4k'), 4096);
    assert.equal(parseSize('4KiB'), 4096);
    assert.equal(parseSize('1M'), 2 ** 20);
    assert.equal(parseSize('1MiB'), 2 ** 20);
    assert.equal(parseSize('3G'), 3 * 2 ** 30);
    assert.equal(parseSize('2GiB'), 2 * 2 ** 30);
    assert.equal(parseSize('1T'), 2 ** 40);
    assert.equal(parseSize('1TiB'), 2 ** 40);
    for (const bad of ['', 'K', '12Q', '1.5G', '-1', '1 GB', '0x10', '99999999999T']) {
      assert.equal(parseSize(bad), null, bad);
    }
    assert.equal(formatSize(2 ** 30), '1 GiB');
    assert.equal(formatSize(1536), '1536 B');
  });

  it('requires a multiple of 512 above 0 in specs', () => {
    assert.equal(specSize('x', '1M'), 2 ** 20);
    assert.throws(() => specSize('memory:1000', '1000'), /size 1000 is not a multiple of 512 bytes/);
    assert.throws(() => specSize('memory:0', '0'), /size must be more than 0/);
  });
});

describe('parseBackendSpec', () => {
  it('parses the built-in kinds', () => {
    assert.deepEqual(parseBackendSpec('null:1G'), {
      kind: 'null',
      source: 'null:1G',
      size: 2 ** 30,
      readOnly: false,
      readZeroes: true,
    });
    assert.deepEqual(parseBackendSpec('null:4K,readonly=on,read-zeroes=off'), {
      kind: 'null',
      source: 'null:4K,readonly=on,read-zeroes=off',
      size: 4096,
      readOnly: true,
      readZeroes: false,
    });
    assert.deepEqual(parseBackendSpec('memory:64M,chunk=1M,readonly'), {
      kind: 'memory',
      source: 'memory:64M,chunk=1M,readonly',
      size: 64 * 2 ** 20,
      readOnly: true,
      chunkSize: 2 ** 20,
    });
    assert.deepEqual(parseBackendSpec('file:/path/img,direct=on,size=1G'), {
      kind: 'file',
      source: 'file:/path/img,direct=on,size=1G',
      path: '/path/img',
      direct: true,
      readOnly: false,
      nowait: true,
      size: 2 ** 30,
    });
    assert.equal(
      (parseBackendSpec('file:/path/img,nowait=off') as unknown as { nowait: boolean }).nowait,
      false,
    );
    assert.equal(
      (parseBackendSpec('file:/images/a,,b.img,readonly=yes') as unknown as { path: string }).path,
      '/images/a,b.img',
    );
  });

  it('says in one line what is wrong', () => {
    usage(
      'memory:12Q',
      "backend spec 'memory:12Q': bad size '12Q' (use a number with an optional K, M, G or T suffix)",
    );
    usage('memory:1000', "backend spec 'memory:1000': size 1000 is not a multiple of 512 bytes");
    usage(
      'memory',
      "backend spec 'memory': expected KIND:ARGUMENT (kinds: " + backendKinds().join(', ') + ')',
    );
    usage('disk:1G', `backend spec 'disk:1G': unknown kind 'disk' (kinds: ${backendKinds().join(', ')})`);
    usage('null:', "backend spec 'null:': missing SIZE after 'null:'");
    usage('file:', "backend spec 'file:': missing PATH after 'file:'");
    usage(
      'file:/x,direct=maybe',
      "backend spec 'file:/x,direct=maybe': option direct=maybe is not on or off",
    );
    usage(
      'file:/x,cache=none',
      "backend spec 'file:/x,cache=none': unknown option 'cache' (options: direct, readonly, size, nowait)",
    );
    usage('file:/x,size=1G,size=2G', "backend spec 'file:/x,size=1G,size=2G': option 'size' given twice");
  });

  it('rejects more mistakes', () => {
    assert.throws(() => parseBackendSpec('file:/x,readonly=on,size=1G'), /not with readonly=on/);
    assert.throws(() => parseBackendSpec('memory:1G,chunk=3K'), /chunk size 3K is not a power of two/);
    assert.throws(() => parseBackendSpec('memory:1G,'), /empty option/);
    assert.throws(() => parseBackendSpec('null:1G,chunk=4K'), /unknown option 'chunk'/);
  });

  it('lists help for each kind', () => {
    const help = backendHelp();
    assert.ok(help.some((line) => line.startsWith('null:SIZE')));
    assert.ok(help.some((line) => line.startsWith('memory:SIZE')));
    assert.ok(help.some((line) => line.startsWith('file:PATH')));
  });
});

describe('openBackend', () => {
  it('opens each built-in kind', async () => {
    const nul = await openBackend('null:1M');
    assert.ok(nul instanceof NullBackend);
    assert.equal(nul.size, 2 ** 20);
    const memory = await openBackend(parseBackendSpec('memory:2M,chunk=4K'));
    assert.ok(memory instanceof MemoryBackend);
    assert.equal((memory as MemoryBackend).chunkSize, 4096);
    const forced = await openBackend('memory:2M', { readOnly: true });
    assert.equal(forced.readOnly, true);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vduse-ts-spec-'));
    try {
      const file = path.join(dir, 'a,b.img');
      const backend = await openBackend(`file:${file.replace(',', ',,')},size=1M`);
      assert.ok(backend instanceof FileBackend);
      assert.equal(fs.statSync(file).size, 2 ** 20);
      await backend.close();
      await assert.rejects(openBackend(`file:${path.join(dir, 'none.img')}`), UsageError);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('takes new kinds through registerBackend', async () => {
    interface EchoSpec extends BackendSpec {
      kind: 'echo';
      size: number;
    }
    registerBackend<EchoSpec>('echo', {
      help: 'echo:SIZE  a test kind',
      parse(text) {
        const { argument } = splitSpecOptions(text, [], 'SIZE');
        return { kind: 'echo', source: text.source, size: specSize(text.source, argument) };
      },
      open(spec): Promise<BlockBackend> {
        return Promise.resolve(new NullBackend({ size: spec.size }));
      },
    });
    assert.ok(backendKinds().includes('echo'));
    const backend = await openBackend('echo:8K');
    assert.equal(backend.size, 8192);
    assert.throws(() => parseBackendSpec('echo:8K,x=1'), /unknown option 'x' \(echo takes no options\)/);
    assert.throws(
      () =>
        registerBackend('Bad Name', {
          help: '',
          parse: () => ({ kind: 'x', source: '' }),
          open: () => Promise.reject(new Error()),
        }),
      RangeError,
    );
  });
});
