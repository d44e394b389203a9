/**
 * The guest agent of a host-side scenario (*.host.test.ts): runs INSIDE the test VM as its command and executes
 * what the host asks, over the virtio-serial port named `vm.agent` (see {@link ./host-vm.ts}).
 *
 * Protocol: one JSON object per line each way. The agent first sends `{"ready":true}`. A request is
 * `{"id":N,"cmd":"fio","args":[...],"timeoutMs":M,"input":"..."}`, answered (in any order: requests run
 * concurrently) by `{"id":N,"result":ExecResult}`. `{"id":N,"exit":true}` is answered, then the agent exits 0
 * and the VM powers off.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { exec } from './exec.js';
import { AGENT_PORT_NAME } from './host-vm.js';

interface Request {
  id: number;
  cmd?: string;
  args?: string[];
  timeoutMs?: number;
  input?: string;
  exit?: boolean;
}

function findPort(): string {
  const dir = '/sys/class/virtio-ports';
  for (const p of fs.readdirSync(dir)) {
    let name = '';
    try {
      name = fs.readFileSync(path.join(dir, p, 'name'), 'utf8').trim();
    } catch {
      continue;
    }
    if (name === AGENT_PORT_NAME) return `/dev/${p}`;
  }
  throw new Error(`no virtio-serial port named ${AGENT_PORT_NAME}`);
}

function main(): void {
  const port = findPort();
  // Replies are short and the host always reads them: plain blocking writes. Requests are read by a `cat`
  // child (the port, opened once: it admits one opener, is its stdin) over a pipe, not by fs reads on libuv's
  // thread pool: node's exit waits for its pool threads, and one blocked in read() on the port never returns.
  const fd = fs.openSync(port, 'r+');
  const send = (msg: object) => fs.writeSync(fd, JSON.stringify(msg) + '\n');
  const reader = spawn('cat', [], { stdio: [fd, 'pipe', 'inherit'] });
  let pending = '';
  const handle = (req: Request) => {
    if (req.exit) {
      send({ id: req.id, result: null });
      reader.kill('SIGKILL');
      process.exit(0);
    }
    if (typeof req.cmd !== 'string' || !Array.isArray(req.args)) {
      send({ id: req.id, error: 'bad request' });
      return;
    }
    const opts: { timeoutMs?: number; input?: string } = {};
    if (typeof req.timeoutMs === 'number') opts.timeoutMs = req.timeoutMs;
    if (typeof req.input === 'string') opts.input = req.input;
    void exec(req.cmd, req.args, opts).then((r) =>
      send({ id: req.id, result: { ...r, error: r.error?.message } }),
    );
  };
  reader.on('exit', (code, signal) => {
    process.stderr.write(`guest-agent: the port reader ended (${code ?? signal})\n`);
    process.exit(1);
  });
  reader
    .stdout!.setEncoding('utf8')
    .on('data', (d: string) => {
      pending += d;
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) {
        if (!line.trim()) continue;
        try {
          handle(JSON.parse(line) as Request);
        } catch (e) {
          process.stderr.write(`guest-agent: bad line: ${e instanceof Error ? e.message : String(e)}\n`);
        }
      }
    })
    .on('error', (e) => {
      process.stderr.write(`guest-agent: ${e.message}\n`);
      process.exit(1);
    });
  send({ ready: true });
}

main();
