/**
 * Launchers for real NBD servers used by the NBD backend tests: nbdkit and qemu-nbd, on 127.0.0.1 (a free port)
 * or on a Unix socket in a temp dir. Every server is started in the foreground and tied to this process
 * (--exit-with-parent for nbdkit); tests stop them in `after` hooks and every wait is bounded.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';

/** Finds an executable in PATH (and the sbin dirs). */
export function findBinary(name: string): string | undefined {
  const dirs = (process.env.PATH ?? '').split(delimiter).concat(['/usr/sbin', '/sbin', '/usr/bin']);
  for (const d of dirs) {
    if (d === '') continue;
    const p = join(d, name);
    if (existsSync(p)) return p;
  }
  return undefined;
}

/**
 * Returns a skip reason when one of `names` is missing (undefined when all are there). Under CI=true a missing
 * binary is an error: this throws with a clear message instead.
 */
export function missingBinaries(...names: string[]): string | undefined {
  const missing = names.filter((n) => findBinary(n) === undefined);
  if (missing.length === 0) return undefined;
  const text = `missing ${missing.join(', ')} (Debian packages: nbdkit, qemu-utils, openssl)`;
  if (process.env.CI === 'true') throw new Error(`NBD tests need ${text}`);
  return text;
}

export function makeTempDir(prefix = 'vduse-nbd-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface ServerHandle {
  proc: ChildProcess;
  /** TCP port (0 for Unix sockets). */
  port: number;
  socketPath: string | undefined;
  /** URI for the backend (nbd://127.0.0.1:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH). */
  uri: string;
  /** Output the server printed (for failure messages). */
  output(): string;
  /** SIGTERM, then SIGKILL after 3 s; resolves when the process is gone. */
  stop(): Promise<void>;
  /** SIGKILL at once; resolves when the process is gone. */
  kill(): Promise<void>;
}

export interface ListenOptions {
  /** TCP port on 127.0.0.1 (default: a free one), or a Unix socket path. */
  port?: number;
  socketPath?: string;
  exportName?: string;
  /** Bound on waiting for the server to listen (default 10 s). */
  readyTimeoutMs?: number;
}

function waitExit(proc: ChildProcess, ms: number): Promise<boolean> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    proc.once('exit', () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

function probe(port: number, socketPath: string | undefined): Promise<boolean> {
  return new Promise((resolve) => {
    const s =
      socketPath !== undefined ? net.connect({ path: socketPath }) : net.connect({ host: '127.0.0.1', port });
    const done = (ok: boolean): void => {
      s.destroy();
      resolve(ok);
    };
    // Wait for the server's first bytes (the NBD greeting): then it is really serving.
    s.once('data', () => done(true));
    s.once('error', () => done(false));
    s.setTimeout(1000, () => done(false));
  });
}

async function launch(
  command: string,
  args: string[],
  port: number,
  socketPath: string | undefined,
  exportName: string,
  pidFile: string,
  readyTimeoutMs: number,
): Promise<ServerHandle> {
  let out = '';
  const proc = spawn(findBinary(command) ?? command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const handle: ServerHandle = {
    proc,
    port,
    socketPath,
    uri:
      socketPath !== undefined
        ? `nbd+unix:///${encodeURIComponent(exportName)}?socket=${encodeURIComponent(socketPath)}`
        : `nbd://127.0.0.1:${port}/${encodeURIComponent(exportName)}`,
    output: () => out,
    stop: async () => {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGTERM');
      if (!(await waitExit(proc, 3000))) {
        proc.kill('SIGKILL');
        await waitExit(proc, 3000);
      }
    },
    kill: async () => {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGKILL');
      await waitExit(proc, 3000);
    },
  };
  const deadline = Date.now() + readyTimeoutMs;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      throw new Error(`${command} exited early (${proc.exitCode ?? proc.signalCode}): ${out.trim()}`);
    }
    if (
      existsSync(pidFile) &&
      readFileSync(pidFile, 'utf8').trim() !== '' &&
      (await probe(port, socketPath))
    ) {
      return handle;
    }
    await sleep(25);
  }
  await handle.kill();
  throw new Error(`${command} did not start listening within ${readyTimeoutMs} ms: ${out.trim()}`);
}

/**
 * Starts nbdkit in the foreground: `nbdkit [filters/flags] PLUGIN [plugin args]`. `args` go before the
 * listening options are added, e.g. ['--filter=error', 'memory', '64M', 'error-rate=100%'].
 */
export async function startNbdkit(
  dir: string,
  args: string[],
  options: ListenOptions = {},
): Promise<ServerHandle> {
  const socketPath = options.socketPath;
  const port = socketPath !== undefined ? 0 : (options.port ?? (await freePort()));
  const exportName = options.exportName ?? '';
  const pidFile = join(dir, `nbdkit-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}.pid`);
  const listen = socketPath !== undefined ? ['-U', socketPath] : ['-i', '127.0.0.1', '-p', String(port)];
  const full = ['-f', '--exit-with-parent', '-P', pidFile, ...listen, ...args];
  return launch('nbdkit', full, port, socketPath, exportName, pidFile, options.readyTimeoutMs ?? 10000);
}

/** Starts qemu-nbd serving `image` (format `format`) with export name `exportName` and up to 8 clients. */
export async function startQemuNbd(
  dir: string,
  image: string,
  format: string,
  options: ListenOptions = {},
): Promise<ServerHandle> {
  const socketPath = options.socketPath;
  const port = socketPath !== undefined ? 0 : (options.port ?? (await freePort()));
  const exportName = options.exportName ?? 'disk';
  const pidFile = join(dir, `qemu-nbd-${process.pid}-${Date.now()}.pid`);
  const listen = socketPath !== undefined ? ['-k', socketPath] : ['-b', '127.0.0.1', '-p', String(port)];
  const full = [
    ...listen,
    '-f',
    format,
    '-x',
    exportName,
    '-e',
    '8',
    '-t',
    '--discard=unmap',
    '--pid-file',
    pidFile,
    image,
  ];
  return launch('qemu-nbd', full, port, socketPath, exportName, pidFile, options.readyTimeoutMs ?? 10000);
}

/** Creates an image with qemu-img (e.g. qcow2 of `size` like '64M'); throws with qemu-img's output on failure. */
export function qemuImgCreate(path: string, format: string, size: string): void {
  const r = spawnSync(findBinary('qemu-img') ?? 'qemu-img', ['create', '-q', '-f', format, path, size], {
    encoding: 'utf8',
    timeout: 20000,
  });
  if (r.status !== 0) throw new Error(`qemu-img create failed: ${r.stderr || r.stdout}`);
}

/** Converts an image to raw with qemu-img and returns its bytes (to check what a server wrote). */
export function qemuImgToRaw(image: string, format: string, rawPath: string): Buffer {
  const r = spawnSync(
    findBinary('qemu-img') ?? 'qemu-img',
    ['convert', '-f', format, '-O', 'raw', image, rawPath],
    {
      encoding: 'utf8',
      timeout: 30000,
    },
  );
  if (r.status !== 0) throw new Error(`qemu-img convert failed: ${r.stderr || r.stdout}`);
  return readFileSync(rawPath);
}

/**
 * Makes a throwaway CA, a server certificate for 127.0.0.1 / localhost and a client certificate with the openssl
 * CLI, in the file names nbdkit expects in --tls-certificates=DIR (ca-cert.pem, server-cert.pem,
 * server-key.pem); the client pair is client-cert.pem / client-key.pem.
 */
export function makeTlsCertificates(dir: string): {
  dir: string;
  caCert: string;
  clientCert: string;
  clientKey: string;
} {
  const run = (args: string[]): void => {
    const r = spawnSync(findBinary('openssl') ?? 'openssl', args, {
      cwd: dir,
      encoding: 'utf8',
      timeout: 30000,
    });
    if (r.status !== 0) throw new Error(`openssl ${args[0]} failed: ${r.stderr}`);
  };
  const days = ['-days', '2'];
  run([
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    'ca-key.pem',
    '-out',
    'ca-cert.pem',
    ...days,
    '-subj',
    '/CN=vduse-ts test CA',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  const issue = (name: string, subject: string, extensions: string): void => {
    run([
      'req',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      `${name}-key.pem`,
      '-out',
      `${name}.csr`,
      '-subj',
      subject,
    ]);
    const ext = join(dir, `${name}.ext`);
    writeFileSync(ext, extensions);
    run([
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      'ca-cert.pem',
      '-CAkey',
      'ca-key.pem',
      '-CAcreateserial',
      '-out',
      `${name}-cert.pem`,
      ...days,
      '-extfile',
      ext,
    ]);
  };
  issue(
    'server',
    '/CN=localhost',
    'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n',
  );
  issue('client', '/CN=vduse-ts test client', 'extendedKeyUsage=clientAuth\n');
  return {
    dir,
    caCert: join(dir, 'ca-cert.pem'),
    clientCert: join(dir, 'client-cert.pem'),
    clientKey: join(dir, 'client-key.pem'),
  };
}
