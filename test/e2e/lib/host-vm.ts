/**
 * Host-side scenarios (test/e2e/*.host.test.ts) run on the host, not in the test VM: they start servers here and
 * boot the test VM themselves (scripts/vm/vm.mjs, with extra QEMU devices), then drive the guest through a
 * small agent ({@link ./guest-agent.ts}) on a virtio-serial port: {@link HostVm.run} runs a command in the
 * guest and resolves with its exit code and output, like {@link exec} does on the host.
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { STEP_TIMEOUT_MS, scaled } from './env.js';
import { CommandError, type ExecResult } from './exec.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));

/** Name of the virtio-serial port the guest agent talks on. */
export const AGENT_PORT_NAME = 'vm.agent';

/** The project root: the directory above dist/ that holds scripts/vm/vm.mjs. */
export function projectRoot(): string {
  let dir = HERE;
  for (;;) {
    if (
      fs.existsSync(path.join(dir, 'scripts', 'vm', 'vm.mjs')) &&
      fs.existsSync(path.join(dir, 'package.json'))
    )
      return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`no scripts/vm/vm.mjs above ${HERE}`);
    dir = up;
  }
}

export interface HostVmOptions {
  /** Extra QEMU arguments (devices, chardevs). */
  qemuArgs?: string[];
  /** Guest RAM in MiB (default 1024); always a shared memfd, as vhost-user needs. */
  memMiB?: number;
  cpus?: number;
  /** QEMU -accel (default VDUSE_VM_ACCEL, else tcg,thread=single). */
  accel?: string;
  /** Time limit of the whole boot in seconds (default 1200). */
  timeoutSec?: number;
  /** How long to wait for the agent (default 180 s, scaled). */
  readyTimeoutMs?: number;
}

type VmModule = {
  runInVm(opts: Record<string, unknown>): Promise<number>;
};

interface AgentReply {
  id?: number;
  ready?: boolean;
  result?: (Omit<ExecResult, 'error'> & { error?: string }) | null;
  error?: string;
}

/** A booted test VM with the guest agent answering. */
export class HostVm {
  private nextId = 1;
  private readonly waiting = new Map<number, (r: AgentReply) => void>();
  private exitCode: number | null = null;

  private constructor(
    private readonly sock: net.Socket,
    private readonly finished: Promise<number>,
    private readonly dir: string,
    private readonly output: { text: string },
    private readonly abort: AbortController,
  ) {}

  /** Guest stdout/stderr of the agent and the runner's lines so far (for failure messages). */
  get log(): string {
    return this.output.text;
  }

  static async boot(opts: HostVmOptions = {}): Promise<HostVm> {
    const root = projectRoot();
    const vm = (await import(pathToFileURL(path.join(root, 'scripts', 'vm', 'vm.mjs')).href)) as VmModule;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vduse-hostvm-'));
    const agentPath = path.join(dir, 'agent.sock');
    const server = net.createServer();
    // The agent's socket is the connection that says ready. Every QEMU connects at its start, so a guest that
    // died at boot (vm.mjs then boots once more) leaves a connection that never does.
    const connected = new Promise<net.Socket>((resolve) => {
      server.on('connection', (sock) => {
        let head = '';
        const onData = (d: Buffer) => {
          head += d.toString('utf8');
          const nl = head.indexOf('\n');
          if (nl < 0) return;
          sock.removeListener('data', onData);
          let ready = false;
          try {
            ready = (JSON.parse(head.slice(0, nl)) as AgentReply).ready === true;
          } catch {
            // not the agent
          }
          if (ready) resolve(sock);
          else sock.destroy();
        };
        sock.on('data', onData);
        sock.on('error', () => {});
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(agentPath, resolve);
    });
    const out = new PassThrough();
    const output = { text: '' };
    out.on('data', (d: Buffer) => {
      if (output.text.length < 1 << 20) output.text += d.toString();
    });
    const abort = new AbortController();
    const finished = vm.runInVm({
      signal: abort.signal,
      command: [process.execPath, path.join(HERE, 'guest-agent.js')],
      workDir: root,
      cwd: root,
      timeoutSec: opts.timeoutSec ?? 1200,
      memMiB: opts.memMiB ?? 1024,
      cpus: opts.cpus ?? 2,
      accel: opts.accel,
      sharedMemory: true,
      qemuArgs: [
        '-chardev',
        `socket,id=vmagent,path=${agentPath.replace(/,/g, ',,')}`,
        '-device',
        `virtserialport,bus=vser0.0,chardev=vmagent,name=${AGENT_PORT_NAME}`,
        ...(opts.qemuArgs ?? []),
      ],
      stdout: out,
      stderr: out,
      log: (m: string) => {
        output.text += `vm: ${m}\n`;
      },
    });
    const exited = finished.then((code) => {
      throw new Error(`the test VM exited (${code}) before its agent answered:\n${output.text.slice(-4000)}`);
    });
    const readyMs = opts.readyTimeoutMs ?? scaled(180_000);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`no guest agent after ${readyMs} ms:\n${output.text.slice(-4000)}`)),
        readyMs,
      );
    });
    try {
      const sock = await Promise.race([connected, exited, timeout]);
      server.close();
      const vmh = new HostVm(sock, finished, dir, output, abort);
      vmh.listen();
      void finished.then((c) => (vmh.exitCode = c));
      return vmh;
    } catch (e) {
      server.close();
      abort.abort();
      await finished;
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  private listen(): void {
    let pending = '';
    this.sock.setEncoding('utf8');
    this.sock.on('data', (d: string) => {
      pending += d;
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) {
        if (!line.trim()) continue;
        let msg: AgentReply;
        try {
          msg = JSON.parse(line) as AgentReply;
        } catch {
          continue;
        }
        const id = msg.id;
        if (id === undefined) continue;
        const w = this.waiting.get(id);
        this.waiting.delete(id);
        w?.(msg);
      }
    });
    this.sock.on('error', () => {});
    this.sock.on('close', () => {
      for (const [id, w] of this.waiting) {
        this.waiting.delete(id);
        w({ id, error: 'the guest agent went away' });
      }
    });
  }

  /** Runs `cmd args...` in the guest (as root); never rejects on the command's failure, like exec(). */
  async run(
    cmd: string,
    args: readonly string[] = [],
    opts: { timeoutMs?: number; input?: string } = {},
  ): Promise<ExecResult> {
    if (this.sock.destroyed) throw new Error(`the guest agent is gone (VM exit ${this.exitCode})`);
    const id = this.nextId++;
    const timeoutMs = opts.timeoutMs ?? STEP_TIMEOUT_MS;
    const reply = new Promise<AgentReply>((resolve) => this.waiting.set(id, resolve));
    this.sock.write(JSON.stringify({ id, cmd, args, timeoutMs, input: opts.input }) + '\n');
    // the guest's own timeout kills the command; this one covers a guest that stopped answering
    let timer: NodeJS.Timeout | undefined;
    const lost = new Promise<AgentReply>((resolve) => {
      timer = setTimeout(
        () => resolve({ id, error: `no answer from the guest within ${timeoutMs + 30_000} ms` }),
        timeoutMs + 30_000,
      );
    });
    const r = await Promise.race([reply, lost]);
    clearTimeout(timer);
    this.waiting.delete(id);
    if (!r.result) throw new Error(`guest: ${cmd} ${args.join(' ')}: ${r.error ?? 'no result'}`);
    const { error, ...rest } = r.result;
    const res: ExecResult = { ...rest };
    if (error) res.error = new Error(error);
    return res;
  }

  /** Like {@link run}, but rejects with a CommandError unless the command exited 0. */
  async runOk(cmd: string, args: readonly string[] = [], opts: { timeoutMs?: number; input?: string } = {}) {
    const r = await this.run(cmd, args, opts);
    if (r.code !== 0 || r.timedOut) throw new CommandError({ ...r, command: `(guest) ${r.command}` });
    return r;
  }

  /** `sh -c script` in the guest; resolves with its stdout, rejects unless it exited 0. */
  async sh(script: string, timeoutMs?: number): Promise<string> {
    return (await this.runOk('sh', ['-c', script], timeoutMs === undefined ? {} : { timeoutMs })).stdout;
  }

  /**
   * Asks the agent to exit (the VM powers off) and waits for the runner; resolves with its exit code. A guest
   * that does not power off in time (I/O stuck on a dead server) is killed: then -1.
   */
  async shutdown(timeoutMs = scaled(30_000)): Promise<number> {
    if (!this.sock.destroyed) {
      const id = this.nextId++;
      const reply = new Promise<AgentReply>((resolve) => this.waiting.set(id, resolve));
      this.sock.write(JSON.stringify({ id, exit: true }) + '\n');
      await Promise.race([reply, new Promise((r) => setTimeout(r, 5_000))]);
    }
    let timer: NodeJS.Timeout | undefined;
    const code = await Promise.race([
      this.finished,
      new Promise<number>((resolve) => {
        timer = setTimeout(() => resolve(-1), timeoutMs);
      }),
    ]);
    clearTimeout(timer);
    if (code === -1) {
      this.abort.abort();
      await this.finished;
    }
    this.sock.destroy();
    fs.rmSync(this.dir, { recursive: true, force: true });
    return code;
  }
}
