/**
 * O_DIRECT I/O on block devices for scenarios, through GNU dd (oflag/iflag=direct: dd aligns its buffers,
 * which Node cannot guarantee), plus patterns that make misplaced data easy to spot.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execOk, type ExecOptions } from './exec.js';

/** Offsets and lengths of direct I/O must be multiples of this (the usual logical block size). */
export const SECTOR = 512;

function checkAligned(what: string, n: number, align: number): void {
  if (!Number.isSafeInteger(n) || n < 0 || n % align !== 0) {
    throw new RangeError(`${what} ${n} is not a multiple of ${align} (O_DIRECT needs aligned I/O)`);
  }
}

/**
 * `size` bytes of random data in which every 512-byte sector starts with a readable stamp
 * "vduse-ts <tag> @<byte offset>", so a read-back mismatch tells which data landed where.
 * `baseOffset` is the device offset the pattern is meant for. Any size works; direct I/O needs multiples of 512.
 */
export function makePattern(size: number, tag: string, baseOffset = 0): Buffer {
  if (!Number.isSafeInteger(size) || size < 0)
    throw new RangeError(`pattern size ${size} is not a byte count`);
  const buf = randomBytes(size);
  for (let off = 0; off < size; off += SECTOR) {
    buf.write(`vduse-ts ${tag} @${baseOffset + off}\n`, off, 'latin1');
  }
  return buf;
}

/** The first differing byte of `actual` vs `expected` (or the length mismatch), or null when equal. */
export function firstDifference(
  expected: Buffer,
  actual: Buffer,
): { offset: number; expected: string; actual: string } | null {
  if (expected.equals(actual)) return null;
  const n = Math.min(expected.length, actual.length);
  let i = 0;
  while (i < n && expected[i] === actual[i]) i++;
  const show = (b: Buffer) => {
    const s = i - (i % SECTOR);
    return JSON.stringify(b.subarray(s, Math.min(s + 48, b.length)).toString('latin1'));
  };
  if (i === n) return { offset: i, expected: `length ${expected.length}`, actual: `length ${actual.length}` };
  return { offset: i, expected: show(expected), actual: show(actual) };
}

/** Throws an Error describing the first difference unless the buffers are equal. */
export function assertSameData(expected: Buffer, actual: Buffer, what: string): void {
  const d = firstDifference(expected, actual);
  if (d) {
    throw new Error(
      `${what}: data differs at byte ${d.offset} (sector starting ${d.offset - (d.offset % SECTOR)}): ` +
        `expected ${d.expected}, got ${d.actual}`,
    );
  }
}

function scratchFile(): { file: string; remove: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'e2e-io-'));
  return { file: path.join(dir, 'data'), remove: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

const ddBlock = (offset: number, length: number) => {
  // the largest power of two up to 1 MiB dividing both, so dd issues few, aligned requests
  let bs = 1 << 20;
  while (bs > SECTOR && (offset % bs !== 0 || length % bs !== 0)) bs >>= 1;
  return bs;
};

/** Writes `data` to `device` at byte `offset` with O_DIRECT, then fsync (dd conv=fsync). */
export async function writeDirect(
  device: string,
  offset: number,
  data: Buffer,
  opts: ExecOptions = {},
): Promise<void> {
  checkAligned('offset', offset, SECTOR);
  checkAligned('length', data.length, SECTOR);
  const tmp = scratchFile();
  try {
    fs.writeFileSync(tmp.file, data);
    const bs = ddBlock(offset, data.length);
    await execOk(
      'dd',
      [
        `if=${tmp.file}`,
        `of=${device}`,
        `bs=${bs}`,
        `seek=${offset / bs}`,
        `count=${data.length / bs}`,
        'oflag=direct',
        'conv=fsync,notrunc',
        'status=none',
      ],
      opts,
    );
  } finally {
    tmp.remove();
  }
}

/** Reads `length` bytes of `device` at byte `offset` with O_DIRECT. */
export async function readDirect(
  device: string,
  offset: number,
  length: number,
  opts: ExecOptions = {},
): Promise<Buffer> {
  checkAligned('offset', offset, SECTOR);
  checkAligned('length', length, SECTOR);
  const tmp = scratchFile();
  try {
    const bs = ddBlock(offset, length);
    await execOk(
      'dd',
      [
        `if=${device}`,
        `of=${tmp.file}`,
        `bs=${bs}`,
        `skip=${offset / bs}`,
        `count=${length / bs}`,
        'iflag=direct',
        'status=none',
      ],
      opts,
    );
    const data = fs.readFileSync(tmp.file);
    if (data.length !== length)
      throw new Error(`short read from ${device}: ${data.length} of ${length} bytes at ${offset}`);
    return data;
  } finally {
    tmp.remove();
  }
}

/**
 * Writes a fresh {@link makePattern} of `length` bytes at `offset` with O_DIRECT, reads it back with O_DIRECT
 * and compares. Returns the pattern (e.g. to check the backing store afterwards).
 */
export async function writeReadVerify(
  device: string,
  offset: number,
  length: number,
  tag: string,
  opts: ExecOptions = {},
): Promise<Buffer> {
  const pattern = makePattern(length, tag, offset);
  await writeDirect(device, offset, pattern, opts);
  const back = await readDirect(device, offset, length, opts);
  assertSameData(pattern, back, `${device} read-back at ${offset}`);
  return pattern;
}

/** Reads `length` bytes at `offset` of a regular file (e.g. a daemon's backing file). */
export function readFileRange(file: string, offset: number, length: number): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const n = fs.readSync(fd, buf, done, length - done, offset + done);
      if (n === 0) break;
      done += n;
    }
    return buf.subarray(0, done);
  } finally {
    fs.closeSync(fd);
  }
}

/** Writes `data` at `offset` of a regular file (e.g. to seed a backing file before the daemon starts). */
export function writeFileRange(file: string, offset: number, data: Buffer): void {
  const fd = fs.openSync(file, 'r+');
  try {
    let done = 0;
    while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done, offset + done);
  } finally {
    fs.closeSync(fd);
  }
}
