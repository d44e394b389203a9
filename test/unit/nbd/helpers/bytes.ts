/** Hand-made NBD server byte streams for the protocol unit tests (built from the NBD protocol document). */
import type { NbdProtocolError } from '../../../../src/backends/nbd/protocol.js';
import {
  NBD_CMD_READ,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_INIT_MAGIC,
  NBD_OPTS_MAGIC,
  NBD_OPT_GO,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_INFO,
  NBD_REP_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  NbdClientProtocol,
  type NbdExportInfo,
  type NbdHandshakeOptions,
  type NbdReplyError,
} from '../../../../src/backends/nbd/protocol.js';

export function concat(...parts: Uint8Array[]): Uint8Array {
  const n = parts.reduce((a, p) => a + p.length, 0);
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function build(size: number, fill: (v: DataView) => void): Uint8Array {
  const out = new Uint8Array(size);
  fill(new DataView(out.buffer));
  return out;
}

export function greeting(flags = NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES): Uint8Array {
  return build(18, (v) => {
    v.setBigUint64(0, NBD_INIT_MAGIC);
    v.setBigUint64(8, NBD_OPTS_MAGIC);
    v.setUint16(16, flags);
  });
}

export function optionReply(
  option: number,
  type: number,
  payload: Uint8Array = new Uint8Array(0),
): Uint8Array {
  return concat(
    build(20, (v) => {
      v.setBigUint64(0, NBD_REP_MAGIC);
      v.setUint32(8, option);
      v.setUint32(12, type);
      v.setUint32(16, payload.length);
    }),
    payload,
  );
}

export function infoExport(size: number, flags: number): Uint8Array {
  return optionReply(
    NBD_OPT_GO,
    NBD_REP_INFO,
    build(12, (v) => {
      v.setUint16(0, NBD_INFO_EXPORT);
      v.setBigUint64(2, BigInt(size));
      v.setUint16(10, flags);
    }),
  );
}

export function infoBlockSize(min: number, pref: number, max: number): Uint8Array {
  return optionReply(
    NBD_OPT_GO,
    NBD_REP_INFO,
    build(14, (v) => {
      v.setUint16(0, NBD_INFO_BLOCK_SIZE);
      v.setUint32(2, min);
      v.setUint32(6, pref);
      v.setUint32(10, max);
    }),
  );
}

export function simpleReply(cookie: number, error = 0, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  return concat(
    build(16, (v) => {
      v.setUint32(0, NBD_SIMPLE_REPLY_MAGIC);
      v.setUint32(4, error);
      v.setBigUint64(8, BigInt(cookie));
    }),
    payload,
  );
}

export function chunk(
  cookie: number,
  flags: number,
  type: number,
  payload: Uint8Array,
  length = payload.length,
): Uint8Array {
  return concat(
    build(20, (v) => {
      v.setUint32(0, NBD_STRUCTURED_REPLY_MAGIC);
      v.setUint16(4, flags);
      v.setUint16(6, type);
      v.setBigUint64(8, BigInt(cookie));
      v.setUint32(16, length);
    }),
    payload,
  );
}

export function dataPayload(offset: number, data: Uint8Array): Uint8Array {
  return concat(
    build(8, (v) => v.setBigUint64(0, BigInt(offset))),
    data,
  );
}

export function holePayload(offset: number, size: number): Uint8Array {
  return build(12, (v) => {
    v.setBigUint64(0, BigInt(offset));
    v.setUint32(8, size);
  });
}

export function errorPayload(
  error: number,
  message: string,
  offset?: number,
  msgLenOverride?: number,
): Uint8Array {
  const msg = new TextEncoder().encode(message);
  const tail = offset === undefined ? 0 : 8;
  return build(6 + msg.length + tail, (v) => {
    v.setUint32(0, error);
    v.setUint16(4, msgLenOverride ?? msg.length);
    new Uint8Array(v.buffer).set(msg, 6);
    if (offset !== undefined) v.setBigUint64(6 + msg.length, BigInt(offset));
  });
}

/** Records everything a protocol instance emits. */
export class Recorder {
  sent: Uint8Array[] = [];
  tlsRequests = 0;
  info: NbdExportInfo | undefined;
  replies: Array<{ cookie: number; error: NbdReplyError | undefined }> = [];
  failures: NbdProtocolError[] = [];
  readonly protocol: NbdClientProtocol;

  constructor(options: NbdHandshakeOptions = { exportName: 'disk' }) {
    this.protocol = new NbdClientProtocol(
      {
        send: (chunks) => this.sent.push(concat(...chunks)),
        startTls: () => this.tlsRequests++,
        ready: (info) => (this.info = info),
        reply: (cookie, error) => this.replies.push({ cookie, error }),
        failed: (error) => this.failures.push(error),
      },
      options,
    );
  }

  /** All bytes sent so far, as one array, and forgets them. */
  takeSent(): Uint8Array {
    const all = concat(...this.sent);
    this.sent = [];
    return all;
  }

  /** Feeds `data` in pieces of `step` bytes. */
  feed(data: Uint8Array, step = data.length): void {
    for (let i = 0; i < data.length; i += step) this.protocol.receive(data.slice(i, i + step));
  }
}

/** Runs the usual handshake (structured replies accepted, GO with INFO_EXPORT) and returns the recorder. */
export function readyProtocol(flags: number, size = 1 << 20, structured = true): Recorder {
  const r = new Recorder();
  r.feed(greeting());
  r.feed(optionReply(NBD_OPT_STRUCTURED_REPLY, structured ? NBD_REP_ACK : 0x80000001));
  r.feed(concat(infoExport(size, flags), optionReply(NBD_OPT_GO, NBD_REP_ACK)));
  r.takeSent();
  if (!r.info) throw new Error(`handshake did not finish: ${r.failures.map((f) => f.message).join('; ')}`);
  return r;
}

export { NBD_CMD_READ };
