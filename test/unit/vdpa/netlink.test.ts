import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { nlaPutString, nlaPutU16, nlaPutU32, nlaPutU64, concatBytes } from '../../../src/uapi/netlink.js';
import { VdpaError } from '../../../src/transports/vdpa/errors.js';
import {
  ReplyCollector,
  VdpaNetlink,
  decodeDevice,
  decodeMgmtdev,
  encodeDevDel,
  encodeDevNew,
  encodeGetFamily,
  parseNetlinkMessages,
  vdpaError,
} from '../../../src/transports/vdpa/netlink.js';
import type { SysBinding } from '../../../src/sys/binding.js';

/** A kernel-style message: nlmsghdr, genlmsghdr, attributes. */
function message(type: number, flags: number, seq: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(16 + body.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, out.length, true);
  v.setUint16(4, type, true);
  v.setUint16(6, flags, true);
  v.setUint32(8, seq, true);
  out.set(body, 16);
  return out;
}
const genl = (cmd: number, attrs: Uint8Array[]): Uint8Array =>
  concatBytes([new Uint8Array([cmd, 1, 0, 0]), ...attrs]);
function errorMessage(seq: number, errno: number): Uint8Array {
  const body = new Uint8Array(20);
  new DataView(body.buffer).setInt32(0, -errno, true);
  return message(2, 0x100 /* CAPPED */, seq, body);
}

describe('vdpa netlink codec', () => {
  it('encodes DEV_NEW with NUL-terminated mgmtdev and device names and no bus name', () => {
    const m = encodeDevNew(0x1b, 42, 'blk0');
    const v = new DataView(m.buffer);
    assert.equal(v.getUint32(0, true), m.length);
    assert.equal(v.getUint16(4, true), 0x1b);
    assert.equal(v.getUint16(6, true), 0x5, 'REQUEST | ACK');
    assert.equal(v.getUint32(8, true), 42);
    assert.deepEqual([...m.subarray(16, 20)], [3, 1, 0, 0], 'VDPA_CMD_DEV_NEW, version 1');
    // attr 2 "vduse\0" (len 10, padded to 12), then attr 4 "blk0\0" (len 9, padded to 12)
    assert.deepEqual([...m.subarray(20, 24)], [10, 0, 2, 0]);
    assert.equal(Buffer.from(m.subarray(24, 30)).toString('latin1'), 'vduse\0');
    assert.deepEqual([...m.subarray(32, 36)], [9, 0, 4, 0]);
    assert.equal(Buffer.from(m.subarray(36, 41)).toString('latin1'), 'blk0\0');
    assert.equal(m.length, 44);
  });

  it('encodes DEV_DEL and the family lookup', () => {
    const del = encodeDevDel(0x1b, 7, 'x');
    assert.equal(del[16], 4);
    const fam = encodeGetFamily('vdpa', 1);
    const v = new DataView(fam.buffer);
    assert.equal(v.getUint16(4, true), 0x10, 'GENL_ID_CTRL');
    assert.equal(fam[16], 3, 'CTRL_CMD_GETFAMILY');
    assert.equal(Buffer.from(fam.subarray(24, 29)).toString('latin1'), 'vdpa\0');
  });

  it('collects a dump until NLMSG_DONE and ignores other sequence numbers', () => {
    const c = new ReplyCollector(5, true);
    const dev = message(
      0x1b,
      2,
      5,
      genl(5, [nlaPutString(4, 'blk0'), nlaPutString(2, 'vduse'), nlaPutU32(5, 2)]),
    );
    const other = message(0x1b, 2, 6, genl(5, [nlaPutString(4, 'zzz')]));
    assert.equal(c.feed(concatBytes([dev, other])), false);
    assert.equal(c.feed(message(3, 2, 5, new Uint8Array(4))), true);
    assert.equal(c.replies.length, 1);
    assert.deepEqual(decodeDevice(c.replies[0]!), { name: 'blk0', mgmtdev: 'vduse', deviceId: 2 });
  });

  it('reports an NLMSG_ERROR as the positive errno', () => {
    const c = new ReplyCollector(9, false);
    assert.equal(c.feed(errorMessage(9, 17)), true);
    assert.deepEqual(c.error, { errno: 17 });
    const ack = new ReplyCollector(9, false);
    ack.feed(errorMessage(9, 0));
    assert.equal(ack.error, null);
    assert.equal(ack.done, true);
  });

  it('decodes management devices', () => {
    const [m] = parseNetlinkMessages(
      message(0x1b, 2, 1, genl(1, [nlaPutString(2, 'vduse'), nlaPutU64(3, 6n)])),
    );
    assert.deepEqual(decodeMgmtdev(m!), { name: 'vduse', supportedClasses: 6n });
  });

  it('rejects a message whose length runs past the datagram', () => {
    const bad = message(0x1b, 0, 1, new Uint8Array(8));
    new DataView(bad.buffer).setUint32(0, 100, true);
    assert.throws(() => parseNetlinkMessages(bad), RangeError);
  });

  it('turns errors into system errors with a clear message', () => {
    const e = vdpaError('add', 'blk0', 17) as NodeJS.ErrnoException;
    assert.equal(e.code, 'EEXIST');
    assert.equal(e.syscall, 'netlink');
    assert.match(e.message, /attaching "blk0".*already attached/);
    assert.match(vdpaError('add', 'b', 1).message, /CAP_NET_ADMIN/);
  });
});

/** A fake kernel on a netlink socket: answers each sent message through `reply`. */
function fakeNetlink(reply: (msg: Uint8Array, seq: number) => Uint8Array[]): {
  binding: SysBinding;
  sent: Uint8Array[];
} {
  const queue: Uint8Array[] = [];
  const sent: Uint8Array[] = [];
  const binding = {
    netlinkSocket: () => 1000,
    send(_fd: number, b: Uint8Array) {
      sent.push(b.slice());
      queue.push(...reply(b, new DataView(b.buffer, b.byteOffset).getUint32(8, true)));
      return b.length;
    },
    recv(_fd: number, buf: Uint8Array) {
      const m = queue.shift();
      if (!m) throw new Error('recv would block for ever');
      buf.set(m);
      return m.length;
    },
  } as unknown as SysBinding;
  return { binding, sent };
}

describe('VdpaNetlink', () => {
  it('resolves the family, then attaches with the family id', () => {
    const { binding, sent } = fakeNetlink((m, seq) => {
      if (m[16] === 3 && new DataView(m.buffer).getUint16(4, true) === 0x10) {
        return [
          message(0x10, 0, seq, genl(1, [nlaPutU16(1, 0x1b), nlaPutString(2, 'vdpa')])),
          errorMessage(seq, 0),
        ];
      }
      return [errorMessage(seq, 0)];
    });
    const nl = VdpaNetlink.open(binding);
    assert.equal(nl.family, 0x1b);
    nl.addDevice('blk0');
    assert.equal(new DataView(sent[1]!.buffer).getUint16(4, true), 0x1b);
    assert.equal(sent[1]![16], 3);
  });

  it('says to load the modules when the family is missing', () => {
    const { binding } = fakeNetlink((_m, seq) => [errorMessage(seq, 2)]);
    assert.throws(
      () => VdpaNetlink.open(binding),
      (e: unknown) =>
        e instanceof VdpaError &&
        e.code === 'ERR_VDPA_FAMILY' &&
        /load the vdpa and vduse modules/.test(e.message),
    );
  });

  it('throws the kernel error of DEV_NEW as a system error', () => {
    let first = true;
    const { binding } = fakeNetlink((_m, seq) => {
      if (first) {
        first = false;
        return [message(0x10, 0, seq, genl(1, [nlaPutU16(1, 0x1b)])), errorMessage(seq, 0)];
      }
      return [errorMessage(seq, 22)];
    });
    const nl = VdpaNetlink.open(binding);
    assert.throws(() => nl.addDevice('nope'), { code: 'EINVAL', errno: -22 });
  });
});
