/**
 * The NBD backend against qemu-nbd serving a qcow2 image made with qemu-img: what the backend wrote is checked
 * through a second connection while the server runs, and in the image file itself (converted to raw) after.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { NbdBackend } from '../../../src/backends/nbd/backend.js';
import { parseNbdSpec } from '../../../src/backends/nbd/uri.js';
import {
  makeTempDir,
  missingBinaries,
  qemuImgCreate,
  qemuImgToRaw,
  removeDir,
  startQemuNbd,
  type ServerHandle,
} from './helpers/servers.js';

const skip = missingBinaries('qemu-nbd', 'qemu-img');
const SIZE = 16 << 20;

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

describe('NBD backend against qemu-nbd (qcow2)', { skip, timeout: 120_000 }, () => {
  let dir = '';
  let image = '';
  let server: ServerHandle | undefined;
  const backends: NbdBackend[] = [];
  const model = new Uint8Array(SIZE);

  before(async () => {
    dir = makeTempDir();
    image = join(dir, 'disk.qcow2');
    qemuImgCreate(image, 'qcow2', '16M');
    server = await startQemuNbd(dir, image, 'qcow2', { exportName: 'disk' });
  });
  after(async () => {
    for (const b of backends.splice(0)) await b.close().catch(() => {});
    await server?.kill();
    removeDir(dir);
  });

  async function open(spec: string): Promise<NbdBackend> {
    const b = await NbdBackend.open({ ...parseNbdSpec(spec), log: () => {} });
    backends.push(b);
    return b;
  }

  it('negotiates GO with block sizes and structured replies', async () => {
    const b = await open(`${server!.uri},connections=2`);
    assert.equal(server!.uri.endsWith('/disk'), true);
    assert.equal(b.size, SIZE);
    assert.equal(b.info.structuredReplies, true);
    assert.equal(b.info.usedExportName, false);
    assert.equal(b.info.blockSizeAdvertised, true);
    assert.ok(b.capabilities.flush && b.capabilities.discard && b.capabilities.writeZeroes);
    // qemu-nbd 7.2 does not offer multi-conn for a writable export: one connection.
    assert.ok(b.connectionCount >= 1);
  });

  it('writes, zeroes, trims and flushes; a second connection reads the same data (holes included)', async () => {
    const b = await open(server!.uri);
    const writes: Array<[number, number, number]> = [
      [0, 65536, 1],
      [1 << 20, 3 * 65536 + 4096, 2],
      [(4 << 20) + 512, 1536, 3],
      [SIZE - 8192, 8192, 4],
      [8 << 20, 2 << 20, 5],
    ];
    await Promise.all(
      writes.map(async ([off, len, seed]) => {
        const data = pattern(len, seed);
        model.set(data, off);
        await b.write(off, [data.subarray(0, len >> 1), data.subarray(len >> 1)], { fua: seed === 3 });
      }),
    );
    await b.writeZeroes((1 << 20) + 4096, 65536);
    model.fill(0, (1 << 20) + 4096, (1 << 20) + 4096 + 65536);
    await b.writeZeroes((8 << 20) + 65536, 131072, { unmap: true });
    model.fill(0, (8 << 20) + 65536, (8 << 20) + 65536 + 131072);
    // qcow2 reads discarded clusters as zeroes.
    await b.discard((8 << 20) + (1 << 20), 1 << 20);
    model.fill(0, (8 << 20) + (1 << 20), (8 << 20) + (2 << 20));
    await b.flush();

    const other = await open(server!.uri);
    const out = new Uint8Array(SIZE);
    // Several reads spanning allocated data and holes (qemu-nbd answers holes with OFFSET_HOLE chunks).
    const parts = 8;
    await Promise.all(
      Array.from({ length: parts }, (_, i) =>
        other.read((i * SIZE) / parts, [out.subarray((i * SIZE) / parts, ((i + 1) * SIZE) / parts)]),
      ),
    );
    assert.ok(Buffer.from(out).equals(Buffer.from(model)), 'second connection sees what was written');
  });

  it('leaves the same bytes in the qcow2 image after the server stops', async () => {
    for (const b of backends.splice(0)) await b.close();
    await server!.stop();
    server = undefined;
    const raw = qemuImgToRaw(image, 'qcow2', join(dir, 'disk.raw'));
    assert.equal(raw.length, SIZE);
    assert.ok(raw.equals(Buffer.from(model)), 'image content matches');
  });
});
