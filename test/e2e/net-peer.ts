// The two ends of a TCP test, in node (the guest has no nc or socat), run inside a network namespace:
//   node net-peer.js recv PORT                one connection: hash what arrives; prints {"bytes","sha256","seconds"}
//   node net-peer.js send HOST PORT BYTES     send BYTES random bytes; prints the same for what was sent
//   node net-peer.js sink PORT                one connection: count what arrives; prints {"bytes","seconds"}
//   node net-peer.js stream HOST PORT SECS    send as fast as TCP takes it for SECS seconds; prints the same
//   node net-peer.js echo PORT                one connection: send back every byte (for rr)
//   node net-peer.js rr HOST PORT COUNT       COUNT 1-byte round trips; prints {"count","medianUs","p99Us"}
// recv, sink and echo print "listening" on stdout once they accept connections; every result is one JSON line.
import { createHash, randomFillSync } from 'node:crypto';
import { createConnection, createServer, type Socket } from 'node:net';

const [mode, ...args] = process.argv.slice(2);
const out = (o: unknown): void => void process.stdout.write(`${JSON.stringify(o)}\n`);

function serveOnce(port: number, onSocket: (s: Socket) => void): void {
  const server = createServer((s) => {
    server.close();
    onSocket(s);
  });
  server.listen(port, '0.0.0.0', () => process.stdout.write('listening\n'));
}

function recv(port: number): void {
  serveOnce(port, (s) => {
    const hash = createHash('sha256');
    let bytes = 0;
    const t0 = performance.now();
    s.on('data', (d: Buffer) => {
      bytes += d.length;
      hash.update(d);
    });
    s.on('end', () => {
      out({ bytes, sha256: hash.digest('hex'), seconds: (performance.now() - t0) / 1000 });
      s.end();
    });
  });
}

function send(host: string, port: number, total: number): void {
  const hash = createHash('sha256');
  const chunk = Buffer.alloc(1 << 20);
  let sent = 0;
  const t0 = performance.now();
  const s = createConnection({ host, port }, () => {
    const pump = (): void => {
      while (sent < total) {
        const n = Math.min(chunk.length, total - sent);
        randomFillSync(chunk, 0, n);
        const piece = Buffer.from(chunk.subarray(0, n));
        hash.update(piece);
        sent += n;
        if (!s.write(piece)) {
          s.once('drain', pump);
          return;
        }
      }
      s.end();
    };
    pump();
  });
  s.on('close', () =>
    out({ bytes: sent, sha256: hash.digest('hex'), seconds: (performance.now() - t0) / 1000 }),
  );
  s.on('error', (e) => {
    process.stderr.write(`net-peer send: ${e.message}\n`);
    process.exitCode = 1;
  });
  s.resume();
}

function sink(port: number): void {
  serveOnce(port, (s) => {
    let bytes = 0;
    let t0 = 0;
    s.on('data', (d: Buffer) => {
      if (bytes === 0) t0 = performance.now();
      bytes += d.length;
    });
    s.on('end', () => {
      out({ bytes, seconds: (performance.now() - t0) / 1000 });
      s.end();
    });
  });
}

function stream(host: string, port: number, seconds: number): void {
  const chunk = randomFillSync(Buffer.alloc(256 << 10));
  let sent = 0;
  let t0 = 0;
  const s = createConnection({ host, port }, () => {
    t0 = performance.now();
    const end = t0 + seconds * 1000;
    const pump = (): void => {
      while (performance.now() < end) {
        sent += chunk.length;
        if (!s.write(chunk)) {
          s.once('drain', pump);
          return;
        }
      }
      s.end();
    };
    pump();
  });
  s.on('close', () => out({ bytes: sent, seconds: (performance.now() - t0) / 1000 }));
  s.on('error', (e) => {
    process.stderr.write(`net-peer stream: ${e.message}\n`);
    process.exitCode = 1;
  });
  s.resume();
}

function echo(port: number): void {
  serveOnce(port, (s) => {
    s.setNoDelay(true);
    s.on('data', (d: Buffer) => s.write(d));
    s.on('end', () => s.end());
  });
}

function rr(host: string, port: number, count: number): void {
  const times: number[] = [];
  const one = Buffer.from([0x5a]);
  let t0 = 0;
  const s = createConnection({ host, port }, () => {
    s.setNoDelay(true);
    t0 = performance.now();
    s.write(one);
  });
  s.on('data', (d: Buffer) => {
    for (let i = 0; i < d.length; i++) {
      times.push((performance.now() - t0) * 1000);
      if (times.length >= count) {
        s.end();
        return;
      }
      t0 = performance.now();
      s.write(one);
    }
  });
  s.on('close', () => {
    const sorted = [...times].sort((a, b) => a - b);
    const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
    out({ count: times.length, medianUs: at(0.5), p99Us: at(0.99) });
  });
  s.on('error', (e) => {
    process.stderr.write(`net-peer rr: ${e.message}\n`);
    process.exitCode = 1;
  });
}

const num = (v: string | undefined, what: string): number => {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0)
    throw new Error(`net-peer: ${what} must be a whole number, got ${v}`);
  return n;
};

if (mode === 'recv') recv(num(args[0], 'PORT'));
else if (mode === 'sink') sink(num(args[0], 'PORT'));
else if (mode === 'stream') stream(args[0] ?? '', num(args[1], 'PORT'), num(args[2], 'SECS'));
else if (mode === 'send') send(args[0] ?? '', num(args[1], 'PORT'), num(args[2], 'BYTES'));
else if (mode === 'echo') echo(num(args[0], 'PORT'));
else if (mode === 'rr') rr(args[0] ?? '', num(args[1], 'PORT'), num(args[2], 'COUNT'));
else {
  process.stderr.write(
    'usage: net-peer recv PORT | send HOST PORT BYTES | sink PORT | stream HOST PORT SECS | echo PORT | rr HOST PORT COUNT\n',
  );
  process.exitCode = 2;
}
