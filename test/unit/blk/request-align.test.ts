/**
 * parseBlkRequest's alignment checks on IN/OUT requests, for every logical block size and for byte offsets far
 * above 2^32 (the check works on the low bits of a number below 2^53): a request is refused as misaligned exactly
 * when offset or length is not a multiple of the block, and an aligned one past the end as beyond the capacity.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { negotiatedBlkFeatures } from '../../../src/devices/blk/features.js';
import {
  BLK_RUN,
  BlkRequest,
  parseBlkRequest,
  type BlkRequestLimits,
} from '../../../src/devices/blk/request.js';
import type { DescriptorChain } from '../../../src/virtio/index.js';

const VIRTIO_BLK_T_IN = 0;
const VIRTIO_BLK_S_IOERR = 1;

function limits(lbs: number, capacityBytes: number): BlkRequestLimits {
  return {
    capacityBytes,
    logicalBlockSize: lbs,
    readOnly: false,
    negotiated: negotiatedBlkFeatures(0n),
    segMax: 128,
    maxDiscardSectors: 0,
    maxDiscardSeg: 1,
    maxWriteZeroesSectors: 0,
    maxWriteZeroesSeg: 1,
    maxSecureEraseSectors: 0,
    maxSecureEraseSeg: 1,
    writeZeroesMayUnmap: false,
    serial: new Uint8Array(20),
  };
}

function read(sector: number, dataBytes: number): DescriptorChain {
  const header = new Uint8Array(16);
  const dv = new DataView(header.buffer);
  dv.setUint32(0, VIRTIO_BLK_T_IN, true);
  dv.setUint32(8, sector % 2 ** 32, true);
  dv.setUint32(12, Math.floor(sector / 2 ** 32), true);
  const writable = dataBytes > 0 ? [new Uint8Array(dataBytes), new Uint8Array(1)] : [new Uint8Array(1)];
  return { id: 0, readable: [header], writable, readableBytes: 16, writableBytes: dataBytes + 1 };
}

function parse(sector: number, dataBytes: number, l: BlkRequestLimits): { verdict: number; problem: string } {
  const request = new BlkRequest(() => {});
  const verdict = parseBlkRequest(request, read(sector, dataBytes), l);
  return { verdict, problem: request.problem ?? '' };
}

describe('blk requests: logical block alignment', () => {
  for (const lbs of [512, 1024, 2048, 4096]) {
    it(`lbs ${lbs}: offsets and lengths are checked exactly, also above 2^32 bytes`, () => {
      const perBlock = lbs / 512;
      const big = limits(lbs, 2 ** 52);
      for (const base of [0, 2 ** 23, 2 ** 33, 2 ** 42]) {
        for (let k = 0; k < 2 * perBlock; k++) {
          const sector = base + k;
          const r = parse(sector, lbs, big);
          if (k % perBlock === 0) assert.equal(r.verdict, BLK_RUN, `sector ${sector}: ${r.problem}`);
          else {
            assert.equal(r.verdict, VIRTIO_BLK_S_IOERR, `sector ${sector}`);
            assert.match(r.problem, /not aligned/);
          }
        }
      }
      for (const len of [512, 1024, 2048, 4096, 3 * 4096, 4096 + 512]) {
        const r = parse(0, len, big);
        if (len % lbs === 0) assert.equal(r.verdict, BLK_RUN, `length ${len}: ${r.problem}`);
        else assert.match(r.problem, /not a multiple/, `length ${len}`);
      }
      // Aligned but past the end: the capacity check answers, not the alignment check.
      const past = parse(2 ** 43, lbs, limits(lbs, 2 ** 30));
      assert.equal(past.verdict, VIRTIO_BLK_S_IOERR);
      assert.match(past.problem, /beyond the capacity/);
    });
  }

  it('a sector beyond 2^53 bytes is refused', () => {
    const r = parse(2 ** 45, 512, limits(512, 2 ** 52));
    assert.equal(r.verdict, VIRTIO_BLK_S_IOERR);
    assert.match(r.problem, /too large/);
  });
});
