/**
 * A minimal scripted NBD server on 127.0.0.1 for tests that need behaviour real servers do not offer on
 * demand (a server that never answers, a server that sends garbage once). Fixed newstyle handshake with
 * STRUCTURED_REPLY and GO; then every request is handed to `onRequest`, which answers through the helpers.
 * Data lives in `disk`.
 */
import * as net from 'node:net';

import {
  NBD_CMD_DISC,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_OPT_GO,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REP_ACK,
  NBD_REP_ERR_UNSUP,
  NBD_REQUEST_MAGIC,
} from '../../../../src/backends/nbd/protocol.js';
import {
  chunk,
  concat,
  dataPayload,
  greeting,
  infoBlockSize,
  infoExport,
  optionReply,
  simpleReply,
} from './bytes.js';

export interface FakeRequest {
  type: number;
  flags: number;
  cookie: number;
  offset: number;
  length: number;
  data: Uint8Array | undefined;
}

export interface FakeConnection {
  /** 1 for the first connection the server accepted, 2 for the next, ... */
  readonly index: number;
  send(bytes: Uint8Array): void;
  /** Answers a request the normal way (reads with one OFFSET_DATA chunk, writes applied to `disk`). */
  answer(req: FakeRequest): void;
  destroy(): void;
}

export interface FakeServer {
  port: number;
  uri: string;
  disk: Uint8Array;
  /** Connections accepted so far. */
  readonly accepted: number;
  close(): Promise<void>;
}

export interface FakeServerOptions {
  /** Send NBD_INFO_BLOCK_SIZE with these (minimum, preferred, maximum) in reply to NBD_OPT_GO. */
  blockSize?: readonly [number, number, number];
  /** Called when a connection enters the transmission phase (e.g. to send garbage at once). */
  onReady?: (conn: FakeConnection) => void;
}

export async function startFakeServer(
  size: number,
  transmissionFlags: number,
  onRequest: (conn: FakeConnection, req: FakeRequest) => void,
  options: FakeServerOptions = {},
): Promise<FakeServer> {
  const disk = new Uint8Array(size);
  const sockets = new Set<net.Socket>();
  let accepted = 0;
  const srv = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    const index = ++accepted;
    let buf: Uint8Array = new Uint8Array(0);
    let phase: 'flags' | 'options' | 'transmission' = 'flags';
    const conn: FakeConnection = {
      index,
      send: (bytes) => {
        if (!socket.destroyed) socket.write(bytes);
      },
      answer: (req) => {
        if (req.type === NBD_CMD_READ) {
          conn.send(
            chunk(
              req.cookie,
              NBD_REPLY_FLAG_DONE,
              NBD_REPLY_TYPE_OFFSET_DATA,
              dataPayload(req.offset, disk.slice(req.offset, req.offset + req.length)),
            ),
          );
        } else {
          if (req.type === NBD_CMD_WRITE && req.data) disk.set(req.data, req.offset);
          conn.send(simpleReply(req.cookie));
        }
      },
      destroy: () => socket.destroy(),
    };
    socket.write(greeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES));
    socket.on('data', (d: Buffer) => {
      buf = concat(buf, d);
      for (;;) {
        const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
        if (phase === 'flags') {
          if (buf.length < 4) return;
          buf = buf.slice(4);
          phase = 'options';
        } else if (phase === 'options') {
          if (buf.length < 16) return;
          const option = v.getUint32(8);
          const len = v.getUint32(12);
          if (buf.length < 16 + len) return;
          buf = buf.slice(16 + len);
          if (option === NBD_OPT_STRUCTURED_REPLY) socket.write(optionReply(option, NBD_REP_ACK));
          else if (option === NBD_OPT_GO) {
            const block = options.blockSize;
            socket.write(
              concat(
                infoExport(size, transmissionFlags),
                ...(block ? [infoBlockSize(block[0], block[1], block[2])] : []),
                optionReply(NBD_OPT_GO, NBD_REP_ACK),
              ),
            );
            phase = 'transmission';
            options.onReady?.(conn);
          } else socket.write(optionReply(option, NBD_REP_ERR_UNSUP));
        } else {
          if (buf.length < 28) return;
          if (v.getUint32(0) !== NBD_REQUEST_MAGIC) {
            socket.destroy();
            return;
          }
          const type = v.getUint16(6);
          const length = v.getUint32(24);
          const payload = type === NBD_CMD_WRITE ? length : 0;
          if (buf.length < 28 + payload) return;
          const req: FakeRequest = {
            type,
            flags: v.getUint16(4),
            cookie: Number(v.getBigUint64(8)),
            offset: Number(v.getBigUint64(16)),
            length,
            data: payload > 0 ? buf.slice(28, 28 + payload) : undefined,
          };
          buf = buf.slice(28 + payload);
          if (type === NBD_CMD_DISC) {
            socket.end();
            return;
          }
          onRequest(conn, req);
        }
      }
    });
  });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const addr = srv.address();
  const port = typeof addr === 'object' && addr ? addr.port : 0;
  return {
    port,
    uri: `nbd://127.0.0.1:${port}/`,
    disk,
    get accepted() {
      return accepted;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        srv.close(() => resolve());
      }),
  };
}
