/**
 * Network namespaces and the two ends of a TCP test, for the net scenarios: the VDUSE NIC in one namespace, its
 * TAP in another, so that traffic between them goes through our device and not the loopback.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';

import type { Cleanup } from './cleanup.js';
import { exec, execOk, type ExecResult } from './exec.js';
import { waitFor } from './wait.js';

/** The compiled TCP helper (test/e2e/net-peer.ts). */
export const NET_PEER = fileURLToPath(new URL('../net-peer.js', import.meta.url));

/** `ip netns add NAME`, deleted at cleanup (whatever is still in it goes back or goes away). */
export async function addNetns(cleanup: Cleanup, name: string): Promise<string> {
  if (fs.existsSync(`/run/netns/${name}`)) await exec('ip', ['netns', 'del', name]);
  await execOk('ip', ['netns', 'add', name]);
  cleanup.add(`ip netns del ${name}`, async () => {
    if (fs.existsSync(`/run/netns/${name}`)) await execOk('ip', ['netns', 'del', name]);
  });
  await inNetns(name, 'ip', ['link', 'set', 'lo', 'up']);
  return name;
}

/** Run `cmd args` in namespace `ns` (rejects on a non-zero exit, with the output). */
export function inNetns(
  ns: string,
  cmd: string,
  args: readonly string[],
  timeoutMs = 60_000,
): Promise<ExecResult> {
  return execOk('ip', ['netns', 'exec', ns, cmd, ...args], { timeoutMs });
}

/** The same, resolving with the result whatever the exit status. */
export function tryInNetns(
  ns: string,
  cmd: string,
  args: readonly string[],
  timeoutMs = 60_000,
): Promise<ExecResult> {
  return exec('ip', ['netns', 'exec', ns, cmd, ...args], { timeoutMs });
}

/** Move interface `ifname` (of this namespace) into `ns`, give it `cidr` and bring it up. */
export async function moveInterface(ifname: string, ns: string, cidr: string, mtu?: number): Promise<void> {
  await execOk('ip', ['link', 'set', ifname, 'netns', ns]);
  await inNetns(ns, 'ip', ['addr', 'add', cidr, 'dev', ifname]);
  if (mtu !== undefined) await inNetns(ns, 'ip', ['link', 'set', ifname, 'mtu', String(mtu)]);
  await inNetns(ns, 'ip', ['link', 'set', ifname, 'up']);
}

/** A sysfs attribute of `ifname` as seen from `ns` (operstate, carrier, mtu); null when unreadable. */
export async function linkAttr(ns: string, ifname: string, attr: string): Promise<string | null> {
  const r = await tryInNetns(ns, 'cat', [`/sys/class/net/${ifname}/${attr}`]);
  return r.code === 0 ? r.stdout.trim() : null;
}

/** Wait until `ping -c 1` from `ns` to `addr` answers. */
export async function waitForPing(ns: string, addr: string, timeoutMs = 30_000): Promise<void> {
  await waitFor(
    `ping ${addr} from ${ns}`,
    async () => (await tryInNetns(ns, 'ping', ['-c', '1', '-W', '1', addr], 5000)).code === 0,
    { timeoutMs, intervalMs: 200 },
  );
}

export interface PeerResult {
  bytes: number;
  sha256: string;
  seconds: number;
}

/** A net-peer process in `ns` (recv/echo wait for "listening" before this resolves). */
export class NetPeer {
  stdout = '';
  stderr = '';
  readonly done: Promise<number | null>;
  private constructor(readonly child: ChildProcess) {
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (this.stdout += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.stderr += d));
    this.done = new Promise((resolve) => child.on('exit', (code) => setImmediate(() => resolve(code))));
  }

  static async start(cleanup: Cleanup, ns: string, args: readonly string[]): Promise<NetPeer> {
    const p = new NetPeer(
      spawn('ip', ['netns', 'exec', ns, process.execPath, NET_PEER, ...args], {
        stdio: ['ignore', 'pipe', 'pipe'],
      }),
    );
    cleanup.add(`stop net-peer ${args.join(' ')}`, () => {
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    });
    if (args[0] === 'recv' || args[0] === 'sink' || args[0] === 'echo') {
      await waitFor(`net-peer ${args[0]} listening in ${ns}`, () => {
        if (p.child.exitCode !== null) throw new Error(`net-peer exited: ${p.stderr}`);
        return p.stdout.includes('listening');
      });
    }
    return p;
  }

  /** The JSON line it printed at the end (rejects when it failed or took longer than `timeoutMs`). */
  async result<T = PeerResult>(timeoutMs = 120_000): Promise<T> {
    const timer = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    const code = await this.done;
    clearTimeout(timer);
    const line = this.stdout
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .pop();
    if (code !== 0 || line === undefined) throw new Error(`net-peer exited ${code}: ${this.stderr.trim()}`);
    return JSON.parse(line) as T;
  }
}
