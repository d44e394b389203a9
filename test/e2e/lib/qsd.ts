/**
 * Debian's qemu-storage-daemon as a reference VDUSE daemon (vduse-blk export).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { STEP_TIMEOUT_MS } from './env.js';
import { sleep, waitFor } from './wait.js';
import { vduseDevExists } from './vdpa.js';

/** A QEMU --blockdev description (QAPI BlockdevOptions as JSON). */
export type BlockdevOptions = { driver: string; 'node-name': string } & Record<string, unknown>;

/** null-co: discards writes; with read-zeroes (set here) reads return zeroes. `sizeBytes` is in bytes. */
export function nullBlockdev(nodeName: string, sizeBytes: number): BlockdevOptions {
  return { driver: 'null-co', 'node-name': nodeName, size: sizeBytes, 'read-zeroes': true };
}

/** A raw file (the "file" protocol driver, no format layer). */
export function fileBlockdev(nodeName: string, filename: string): BlockdevOptions {
  return { driver: 'file', 'node-name': nodeName, filename };
}

export interface QsdOptions {
  /** Name of the VDUSE device (/dev/vduse/NAME) and of the vdpa device to add. */
  name: string;
  blockdev: BlockdevOptions;
  writable?: boolean;
  /** Default 2. */
  numQueues?: number;
  /** Default 128. */
  queueSize?: number;
  /** Extra vduse-blk export options (QAPI BlockExportOptionsVduseBlk), e.g. { 'logical-block-size': 4096 }. */
  exportOptions?: Record<string, unknown>;
  /** How long to wait for /dev/vduse/NAME; default {@link STEP_TIMEOUT_MS}. */
  readyTimeoutMs?: number;
}

/**
 * A running `qemu-storage-daemon --blockdev ... --export type=vduse-blk,...`. {@link QemuStorageDaemon.start}
 * resolves once /dev/vduse/NAME exists, i.e. the device can be added to the vdpa bus.
 */
export class QemuStorageDaemon {
  private output = '';
  private exitInfo: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  private readonly exited: Promise<void>;

  private constructor(
    readonly name: string,
    readonly args: readonly string[],
    private readonly child: ChildProcess,
  ) {
    const collect = (d: Buffer) => {
      if (this.output.length < 1 << 20) this.output += d.toString();
    };
    child.stdout?.on('data', collect);
    child.stderr?.on('data', collect);
    this.exited = new Promise((resolve) => {
      child.once('error', (e) => {
        this.output += `spawn error: ${e.message}\n`;
        this.exitInfo ??= { code: null, signal: null };
        resolve();
      });
      child.once('exit', (code, signal) => {
        this.exitInfo = { code, signal };
        resolve();
      });
    });
  }

  static async start(opts: QsdOptions): Promise<QemuStorageDaemon> {
    const exp = {
      type: 'vduse-blk',
      id: opts.name,
      'node-name': opts.blockdev['node-name'],
      name: opts.name,
      writable: opts.writable ?? true,
      'num-queues': opts.numQueues ?? 2,
      'queue-size': opts.queueSize ?? 128,
      ...opts.exportOptions,
    };
    const args = ['--blockdev', JSON.stringify(opts.blockdev), '--export', JSON.stringify(exp)];
    const child = spawn('qemu-storage-daemon', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const qsd = new QemuStorageDaemon(opts.name, args, child);
    try {
      await waitFor(
        `/dev/vduse/${opts.name} from qemu-storage-daemon`,
        () => {
          if (qsd.exitInfo) throw new Error(`qemu-storage-daemon exited early: ${qsd.describeExit()}`);
          return vduseDevExists(opts.name);
        },
        { timeoutMs: opts.readyTimeoutMs ?? STEP_TIMEOUT_MS },
      );
    } catch (e) {
      await qsd.stop();
      throw e;
    }
    return qsd;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Whether the process is still running. */
  get running(): boolean {
    return this.exitInfo === null;
  }

  /** Everything the daemon printed so far (stdout and stderr). */
  get log(): string {
    return this.output;
  }

  private describeExit(): string {
    const e = this.exitInfo;
    const how = !e ? 'running' : e.signal ? `killed by ${e.signal}` : `exit ${e.code}`;
    return `${how}${this.output.trim() ? `: ${this.output.trim()}` : ''}`;
  }

  /**
   * SIGTERM, then SIGKILL if it has not exited after `timeoutMs`. Resolves once it is gone (or after the
   * SIGKILL grace period: a daemon stuck in the kernel may not die). Remove the vdpa device first: killing the
   * daemon of an attached device leaves I/O to it hanging.
   */
  async stop(timeoutMs = STEP_TIMEOUT_MS): Promise<void> {
    if (!this.running) return;
    this.child.kill('SIGTERM');
    // unref'd: a pending timer would keep the test process alive after the daemon exited
    const t = sleep(timeoutMs, undefined, { ref: false }).then(() => 'timeout' as const);
    if ((await Promise.race([this.exited.then(() => 'exited' as const), t])) === 'exited') return;
    this.child.kill('SIGKILL');
    await Promise.race([this.exited, sleep(5_000, undefined, { ref: false })]);
    throw new Error(`qemu-storage-daemon ${this.name} did not exit on SIGTERM within ${timeoutMs} ms`);
  }

  /** Stops the daemon and checks it exited 0 after SIGTERM (QEMU exits 0 on SIGTERM). */
  async stopClean(timeoutMs = STEP_TIMEOUT_MS): Promise<void> {
    await this.stop(timeoutMs);
    const e = this.exitInfo;
    if (e && (e.code !== 0 || e.signal)) {
      throw new Error(`qemu-storage-daemon ${this.name} did not exit cleanly: ${this.describeExit()}`);
    }
  }
}
