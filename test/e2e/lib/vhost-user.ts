/**
 * vhost-user-blk servers for host-side scenarios: qemu-storage-daemon's `--export type=vhost-user-blk` (the
 * reference) and this project's `vduse blk --vhost-user PATH`, behind one interface, so that every scenario runs
 * against either; plus the QEMU arguments that attach such a server to the test VM.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { STEP_TIMEOUT_MS } from './env.js';
import { projectRoot } from './host-vm.js';
import { sleep, waitFor } from './wait.js';

export type VhostUserKind = 'qsd' | 'ours';

export interface VhostUserBlkSpec {
  /** Short id: the export/device name, and part of the QEMU ids. */
  id: string;
  /** Unix socket the server listens on (QEMU connects to it). */
  socket: string;
  /** A raw file (created by the caller), or a null device of `nullBytes` bytes. */
  file?: string;
  nullBytes?: number;
  queues?: number;
  readonly?: boolean;
  logicalBlockSize?: number;
  /** Ours only (qemu-storage-daemon 7.2 answers GET_ID with a fixed string). */
  serial?: string;
  /** Ours only: serve the queues on this many worker threads (--queue-threads). */
  queueThreads?: number;
}

/** One vhost-user-blk server process; restartable with the same arguments. */
export interface VhostUserServer {
  readonly kind: VhostUserKind;
  readonly spec: VhostUserBlkSpec;
  /** stdout/stderr of every run so far. */
  readonly log: string;
  readonly pid: number | undefined;
  /** Starts (or starts again, same arguments); resolves once it listens on the socket. */
  start(): Promise<void>;
  /** Sends `signal` and waits for the exit. */
  kill(signal: NodeJS.Signals): Promise<void>;
  /** SIGTERM, then SIGKILL after 10 s. */
  stop(): Promise<void>;
  /** Grows the device to `bytes` while it runs (the guest gets a config-change interrupt). */
  resize(bytes: number): Promise<void>;
}

/** Identity of the socket at `p` (null: none): inode numbers alone are reused after an unlink. */
function socketId(p: string): string | null {
  try {
    const st = fs.statSync(p);
    return st.isSocket() ? `${st.ino}:${st.birthtimeMs}:${st.ctimeMs}` : null;
  } catch {
    return null;
  }
}

abstract class ServerProcess implements VhostUserServer {
  abstract readonly kind: VhostUserKind;
  private child: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();
  private text = '';

  constructor(readonly spec: VhostUserBlkSpec) {}

  get log(): string {
    return this.text;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  protected abstract command(): { cmd: string; args: string[] };

  /** Called before each start (qsd: the QMP socket must not be stale). */
  protected beforeStart(): void {}

  async start(): Promise<void> {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null)
      throw new Error(`${this.kind} ${this.spec.id} is already running`);
    this.beforeStart();
    const before = socketId(this.spec.socket);
    const { cmd, args } = this.command();
    this.text += `--- start: ${cmd} ${args.join(' ')}\n`;
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    const collect = (d: Buffer) => {
      if (this.text.length < 1 << 20) this.text += d.toString();
    };
    child.stdout?.on('data', collect);
    child.stderr?.on('data', collect);
    this.exited = new Promise((resolve) => {
      child.once('error', (e) => {
        this.text += `spawn error: ${e.message}\n`;
        resolve();
      });
      child.once('exit', (code, signal) => {
        this.text += `--- exit ${code ?? signal}\n`;
        resolve();
      });
    });
    // listening = a socket at the path that was not there before this start (a SIGKILLed server leaves its
    // socket file behind)
    const how = await waitFor(
      `${this.kind} ${this.spec.id} listening on ${this.spec.socket}`,
      () => {
        if (child.exitCode !== null || child.signalCode !== null) return 'exited';
        const now = socketId(this.spec.socket);
        return now !== null && now !== before && 'listening';
      },
      { timeoutMs: STEP_TIMEOUT_MS, intervalMs: 20 },
    ).catch((e: unknown) => {
      throw new Error(`${e instanceof Error ? e.message : String(e)}\n${this.text.slice(-2000)}`);
    });
    if (how === 'exited')
      throw new Error(`${this.kind} ${this.spec.id} exited at start:\n${this.text.slice(-2000)}`);
  }

  async kill(signal: NodeJS.Signals): Promise<void> {
    const c = this.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    c.kill(signal);
    await this.exited;
  }

  async stop(): Promise<void> {
    const c = this.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    c.kill('SIGTERM');
    const t = setTimeout(() => c.kill('SIGKILL'), 10_000);
    await this.exited;
    clearTimeout(t);
  }

  abstract resize(bytes: number): Promise<void>;
}

class QsdServer extends ServerProcess {
  readonly kind = 'qsd' as const;
  private readonly qmp: string;

  constructor(spec: VhostUserBlkSpec) {
    super(spec);
    this.qmp = `${spec.socket}.qmp`;
  }

  protected override beforeStart(): void {
    fs.rmSync(this.qmp, { force: true });
  }

  protected command() {
    const s = this.spec;
    const node = `${s.id}-node`;
    const blockdev = s.file
      ? { driver: 'file', 'node-name': node, filename: s.file, discard: 'unmap', 'read-only': !!s.readonly }
      : { driver: 'null-co', 'node-name': node, size: s.nullBytes, 'read-zeroes': true };
    const exp: Record<string, unknown> = {
      type: 'vhost-user-blk',
      id: s.id,
      'node-name': node,
      addr: { type: 'unix', path: s.socket },
      writable: !s.readonly,
      'num-queues': s.queues ?? 2,
    };
    if (s.logicalBlockSize) exp['logical-block-size'] = s.logicalBlockSize;
    return {
      cmd: 'qemu-storage-daemon',
      args: [
        '--blockdev',
        JSON.stringify(blockdev),
        '--export',
        JSON.stringify(exp),
        '--chardev',
        `socket,id=qmp0,path=${this.qmp},server=on,wait=off`,
        '--monitor',
        'chardev=qmp0',
      ],
    };
  }

  async resize(bytes: number): Promise<void> {
    await qmpCommand(this.qmp, 'block_resize', { 'node-name': `${this.spec.id}-node`, size: bytes });
  }
}

class OurServer extends ServerProcess {
  readonly kind = 'ours' as const;

  protected command() {
    const s = this.spec;
    const backend = s.file ? `file:${s.file}${s.readonly ? ',readonly=on' : ''}` : `null:${s.nullBytes}`;
    const args = [
      path.join(projectRoot(), 'dist', 'src', 'cli', 'main.js'),
      'blk',
      '--name',
      s.id,
      '--backend',
      backend,
      '--vhost-user',
      s.socket,
      '--queues',
      String(s.queues ?? 2),
    ];
    if (s.readonly) args.push('--readonly');
    if (s.logicalBlockSize) args.push('--logical-block-size', String(s.logicalBlockSize));
    if (s.serial) args.push('--serial', s.serial);
    if (s.queueThreads) args.push('--queue-threads', String(s.queueThreads));
    return { cmd: process.execPath, args };
  }

  async resize(bytes: number): Promise<void> {
    if (!this.spec.file) throw new Error('resize needs a file backend');
    fs.truncateSync(this.spec.file, bytes);
    await this.kill('SIGHUP').catch(() => {});
  }

  override async kill(signal: NodeJS.Signals): Promise<void> {
    if (signal !== 'SIGHUP') return super.kill(signal);
    if (this.pid === undefined) throw new Error('not running');
    process.kill(this.pid, 'SIGHUP');
  }
}

export function vhostUserServer(kind: VhostUserKind, spec: VhostUserBlkSpec): VhostUserServer {
  return kind === 'qsd' ? new QsdServer(spec) : new OurServer(spec);
}

/** The QEMU arguments of a vhost-user-blk-pci device on `socket`, at PCI slot `slot` of pcie.0. */
export function vhostUserBlkQemuArgs(id: string, socket: string, slot: number, queues = 2): string[] {
  return [
    '-chardev',
    `socket,id=vu-${id},path=${socket.replace(/,/g, ',,')},reconnect=1`,
    '-device',
    `vhost-user-blk-pci,chardev=vu-${id},num-queues=${queues},addr=0x${slot.toString(16)}`,
  ];
}

/** Runs one QMP command on the monitor socket `sock`; resolves with its "return", rejects with its "error". */
export async function qmpCommand(
  sock: string,
  command: string,
  args: Record<string, unknown>,
): Promise<unknown> {
  const s = net.connect(sock);
  try {
    let buf = '';
    const lines: Record<string, unknown>[] = [];
    let wake: (() => void) | null = null;
    s.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        if (line) lines.push(JSON.parse(line) as Record<string, unknown>);
      }
      wake?.();
    });
    const next = async (): Promise<Record<string, unknown>> => {
      const deadline = Date.now() + STEP_TIMEOUT_MS;
      for (;;) {
        const m = lines.shift();
        if (m && !('event' in m)) return m;
        if (m) continue;
        if (Date.now() > deadline || s.destroyed) throw new Error(`no QMP answer on ${sock}`);
        await Promise.race([new Promise<void>((r) => (wake = r)), sleep(200)]);
      }
    };
    await new Promise<void>((resolve, reject) => {
      s.once('connect', resolve);
      s.once('error', reject);
    });
    await next(); // greeting
    s.write(JSON.stringify({ execute: 'qmp_capabilities' }) + '\n');
    await next();
    s.write(JSON.stringify({ execute: command, arguments: args }) + '\n');
    const r = await next();
    if ('error' in r) throw new Error(`QMP ${command}: ${JSON.stringify(r.error)}`);
    return r.return;
  } finally {
    s.destroy();
  }
}
